//! Python drivers through pgmux: asyncpg and psycopg 3, each with many
//! connections over a pool of 4. The test command installs them with pip.

mod common;

use common::*;

fn run_python(script: &str, dsn: &str, connections: usize) {
    let path = format!("{}/tests/drivers/{script}", env!("CARGO_MANIFEST_DIR"));
    let (ok, text) = run(std::process::Command::new("python3")
        .arg(&path)
        .arg(dsn)
        .arg(connections.to_string()));
    if text.contains("ModuleNotFoundError") {
        panic!("{script}: Python driver missing; run .ci/run (or pip install -r tests/drivers/requirements.txt)\n{text}");
    }
    assert!(ok, "{script} failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_many_connections_pool_of_four() {
    let p = setup("t_asyncpg", 4, "").await;
    let dsn = format!(
        "postgresql://t_asyncpg:{PASSWORD}@127.0.0.1:{}/t_asyncpg",
        p.addr().port()
    );
    tokio::task::spawn_blocking(move || run_python("asyncpg_check.py", &dsn, 60))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_many_connections_pool_of_four() {
    let p = setup("t_psycopg", 4, "").await;
    let dsn = format!(
        "postgresql://t_psycopg:{PASSWORD}@127.0.0.1:{}/t_psycopg",
        p.addr().port()
    );
    tokio::task::spawn_blocking(move || run_python("psycopg_check.py", &dsn, 60))
        .await
        .unwrap();
}

/// libpq 18 (psycopg's wheel) asking for the newest protocol
/// (`max_protocol_version=latest`) gets 3.2 through pgmux, as from
/// PostgreSQL 18 (PostgreSQL 15 directly gives 3.0), and its cancel
/// reaches its query. pgmux once answered NegotiateProtocolVersion with a
/// bare minor version (0), which libpq 18 refuses as a downgrade below
/// 3.0: no such client could connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_18_asking_for_the_newest_protocol() {
    let p = setup("t_proto32", 2, "").await;
    let script = "import sys, threading, time, psycopg\n\
        c = psycopg.connect(sys.argv[1], autocommit=True)\n\
        def cancel():\n    time.sleep(0.3)\n    c.cancel_safe()\n\
        threading.Thread(target=cancel).start()\n\
        try:\n    c.execute('SELECT pg_sleep(5)')\n    r = 'not cancelled'\n\
        except psycopg.errors.QueryCanceled:\n    r = 'cancelled'\n\
        print(c.info.full_protocol_version, c.execute('SELECT 41 + 1').fetchone()[0], r)\n";
    let connect = |port: u16| {
        let dsn = format!(
            "host=127.0.0.1 port={port} user=t_proto32 password={PASSWORD} dbname=t_proto32 \
             max_protocol_version=latest"
        );
        run(std::process::Command::new("python3")
            .args(["-c", script])
            .arg(dsn))
    };
    let (port, direct) = (p.addr().port(), cluster().port());
    let (through, straight) = tokio::task::spawn_blocking(move || (connect(port), connect(direct)))
        .await
        .unwrap();
    assert!(straight.0, "directly: {}", straight.1);
    assert!(through.0, "through pgmux: {}", through.1);
    assert_eq!(straight.1.trim(), "30000 42 cancelled");
    assert_eq!(through.1.trim(), "30002 42 cancelled");
}
