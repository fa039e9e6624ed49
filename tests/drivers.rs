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
