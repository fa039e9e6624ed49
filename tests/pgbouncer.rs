//! pgmux as a drop-in for PgBouncer: its admin console compared, command
//! by command, with Debian's PgBouncer run side by side.

mod common;

use common::pgbouncer::PgBouncer;
use common::*;
use pgmux::app::Proxy;
use pgmux::config::Config;

/// Every SHOW PgBouncer and pgmux both have.
const SHOWS: &str = "POOLS,STATS,STATS_TOTALS,STATS_AVERAGES,TOTALS,CLIENTS,SERVERS,DATABASES,USERS,LISTS,MEM,CONFIG,VERSION";

/// (column name, type OID) and the first column of the rows, per SHOW.
fn describe(dsn: &str) -> serde_json::Value {
    let script = format!(
        "{}/tests/drivers/show_columns.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dsn)
        .arg(SHOWS)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_columns_match_pgbouncer() {
    let name = "t_pgb_admin";
    create_db(cluster(), name).await;
    let port = cluster().port();
    let pgb = tokio::task::spawn_blocking(move || {
        PgBouncer::start(
            &format!(
                "[databases]\n{name} = host=127.0.0.1 port={port}\n[pgbouncer]\nauth_type = plain\nadmin_users = admin\n"
            ),
            &format!("\"admin\" \"{PASSWORD}\"\n\"{name}\" \"{PASSWORD}\"\n"),
        )
    })
    .await
    .unwrap();
    let cfg = Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
[admin]
users = ["admin"]
[databases.{name}]
port = {port}
[users.admin]
password = "{PASSWORD}"
[users.{name}]
password = "{PASSWORD}"
"#
    ))
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    // One client and one server on each side, so rows exist.
    let on_pgb = connect(&format!(
        "host=127.0.0.1 port={} user={name} password={PASSWORD} dbname={name}",
        pgb.port
    ))
    .await
    .unwrap();
    on_pgb.simple_query("SELECT 1").await.unwrap();
    let on_pgmux = client(&proxy, name).await;
    on_pgmux.simple_query("SELECT 1").await.unwrap();
    let admin = |port: u16| {
        format!("host=127.0.0.1 port={port} user=admin password={PASSWORD} dbname=pgbouncer")
    };
    let (a, b) = (admin(pgb.port), admin(proxy.addr().port()));
    let (theirs, ours) = tokio::task::spawn_blocking(move || (describe(&a), describe(&b)))
        .await
        .unwrap();
    for cmd in SHOWS.split(',') {
        let (t, o) = (&theirs[cmd], &ours[cmd]);
        assert!(t.get("error").is_none(), "PgBouncer: SHOW {cmd}: {t}");
        assert!(o.get("error").is_none(), "pgmux: SHOW {cmd}: {o}");
        let (tc, oc) = (
            t["columns"].as_array().unwrap(),
            o["columns"].as_array().unwrap(),
        );
        assert!(
            oc.len() >= tc.len() && oc[..tc.len()] == tc[..],
            "SHOW {cmd}: PgBouncer's columns (name, type) come first, in its order:\n PgBouncer {tc:?}\n pgmux     {oc:?}"
        );
    }
    // Name-per-row answers list the same names.
    for cmd in ["LISTS", "TOTALS"] {
        assert_eq!(theirs[cmd]["keys"], ours[cmd]["keys"], "SHOW {cmd} rows");
    }
}

/// A PgBouncer exporter process (installed from PyPI by the test
/// command); killed on drop.
struct Exporter(std::process::Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_exporter_reads_pgmux_while_clients_queue() {
    let name = "t_pgb_exporter";
    create_db(cluster(), name).await;
    let cfg = Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
default_pool_size = 1
[admin]
users = ["admin"]
[databases.{name}]
port = {port}
[users.admin]
password = "{PASSWORD}"
[users.{name}]
password = "{PASSWORD}"
"#,
        port = cluster().port()
    ))
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    // One client holds the only server inside a transaction, one waits.
    let holder = client(&proxy, name).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = client(&proxy, name).await;
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| ()) });
    let queued = eventually(std::time::Duration::from_secs(5), || async {
        proxy.context().pools.all()[0].1.counts().2 == 1
    })
    .await;
    assert!(queued, "a client waits for the server");

    let dir = pgmux::cluster::scratch_dir("exporter").unwrap();
    let port = free_port();
    let yml = dir.join("exporter.yml");
    std::fs::write(
        &yml,
        format!(
            "exporter_host: 127.0.0.1\nexporter_port: {port}\npgbouncers:\n  - dsn: postgresql://admin:{PASSWORD}@127.0.0.1:{}/pgbouncer\n    exclude_databases:\n      - pgbouncer\n",
            proxy.addr().port()
        ),
    )
    .unwrap();
    let _exporter = Exporter(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from prometheus_pgbouncer_exporter.cli import main; sys.exit(main())",
                "--config",
            ])
            .arg(&yml)
            .args(["--log-file", "stdout"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the exporter (pip install -r tests/drivers/requirements-exporter.txt)"),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter serves /metrics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let body = http_get(addr, "/metrics").await.1;
    let samples = parse_prometheus(&body);
    let value = |metric: &str| {
        samples
            .iter()
            .find(|s| s.name == metric && s.labels.get("database").is_none_or(|d| d == name))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{metric} missing from the exporter's output:\n{body}"))
    };
    assert_eq!(
        value("pgbouncer_up"),
        1.0,
        "every SHOW the exporter runs answered"
    );
    assert_eq!(value("pgbouncer_pools_client_waiting_connections"), 1.0);
    assert_eq!(value("pgbouncer_pools_client_active_connections"), 1.0);
    assert_eq!(value("pgbouncer_pools_server_active_connections"), 1.0);
    assert_eq!(value("pgbouncer_databases_database_pool_size"), 1.0);
    assert_eq!(
        value("pgbouncer_databases_database_current_connections"),
        1.0
    );
    assert!(value("pgbouncer_stats_queries_total") >= 1.0);
    assert!(value("pgbouncer_stats_received_bytes_total") > 0.0);
    assert_eq!(value("pgbouncer_config_max_client_conn"), 10000.0);
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
}
