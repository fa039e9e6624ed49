//! Test harness: one real PostgreSQL per test binary, a database and role
//! per test, and an in-process pgmux in front of it.

#![allow(dead_code)]

pub mod netns;
pub mod pgbouncer;
pub mod raw;
pub mod versions;

use std::sync::OnceLock;
use std::time::Duration;

use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};
use pgmux::config::Config;

/// Password of every per-test role.
pub const PASSWORD: &str = "test-secret";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The binary's shared PostgreSQL, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        Cluster::start(&ClusterOptions {
            max_connections: 100,
            ..Default::default()
        })
        .expect("start PostgreSQL")
    })
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A superuser connection straight to PostgreSQL.
pub async fn superuser(cluster: &Cluster) -> tokio_postgres::Client {
    connect(&cluster.socket_url("postgres"))
        .await
        .expect("superuser connection")
}

static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates a role and a database, both called `name`, owned by that role.
pub async fn create_db(cluster: &Cluster, name: &str) {
    // CREATE DATABASE copies template1 and fails if others touch it at once.
    let _guard = CREATE_LOCK.lock().await;
    let su = superuser(cluster).await;
    su.batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .expect("create role");
    su.batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
        .await
        .expect("create database");
}

/// Creates database `name` owned by the existing role `owner`.
pub async fn create_database(su: &tokio_postgres::Client, name: &str, owner: &str) {
    let _guard = CREATE_LOCK.lock().await;
    su.batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
        .await
        .expect("create database");
}

/// A config with one database and one user called `name`, pool `size`,
/// plus extra `[pgmux]` lines.
pub fn config(cluster: &Cluster, name: &str, size: u32, extra: &str) -> Config {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
default_pool_size = {size}
{wait}
{extra}

[databases.{name}]
host = "127.0.0.1"
port = {port}

[users.{name}]
password = "{PASSWORD}"
"#,
        port = cluster.port(),
        wait = if extra.contains("query_wait_timeout") {
            ""
        } else {
            "query_wait_timeout = \"20s\""
        },
    );
    Config::parse(&text).expect("valid test config")
}

/// Creates the test's database and starts pgmux in front of it.
pub async fn setup(name: &str, size: u32, extra: &str) -> Proxy {
    if std::env::var("PGMUX_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("pgmux=debug")
            .with_test_writer()
            .try_init();
    }
    let c = cluster();
    create_db(c, name).await;
    Proxy::start(config(c, name, size, extra))
        .await
        .expect("start pgmux")
}

/// Connection string through pgmux for the test's user.
pub fn url(proxy: &Proxy, name: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={name} password={PASSWORD} dbname={name} connect_timeout=30",
        proxy.addr().port()
    )
}

/// Connection string straight to PostgreSQL for the test's user: the model
/// the answers through pgmux are compared with.
pub fn direct_url(name: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={name} password={PASSWORD} dbname={name}",
        cluster().port()
    )
}

/// Connects through pgmux as the test's user.
pub async fn client(proxy: &Proxy, name: &str) -> tokio_postgres::Client {
    connect(&url(proxy, name))
        .await
        .expect("connect through pgmux")
}

/// Server connections PostgreSQL has for database `name`, by state.
pub async fn server_states(name: &str) -> Vec<String> {
    server_states_with(&superuser(cluster()).await, name).await
}

/// [`server_states`] over an existing superuser connection.
pub async fn server_states_with(su: &tokio_postgres::Client, name: &str) -> Vec<String> {
    su.query(
        "SELECT coalesce(state, '') FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
        &[&name],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pgmux) sent one.
/// The SQLSTATE of a login that must be refused (panics if it succeeds).
pub async fn refused(dsn: &str) -> Option<String> {
    match connect(dsn).await {
        Ok(_) => panic!("login with {dsn:?} was accepted"),
        Err(e) => sqlstate(&e),
    }
}

/// Runs `sql` (one row, one int4 column) on a task of its own, so a test
/// can see whether it waits.
pub fn spawn_int_query(
    c: tokio_postgres::Client,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<i32, tokio_postgres::Error>> {
    tokio::spawn(async move { c.query_one(sql, &[]).await.map(|r| r.get::<_, i32>(0)) })
}

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs a command; returns whether it succeeded and its stdout then stderr.
pub fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().expect("command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the cluster's pgbench against `url` with the test password.
pub fn pgbench(args: &[&str], url: &str) -> (bool, String) {
    let bin = cluster().bin_dir().join("pgbench");
    run(std::process::Command::new(bin)
        .args(args)
        .arg(url)
        .env("PGPASSWORD", PASSWORD))
}

/// A free port on 127.0.0.1 (for configs that must name a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fetches `path` from an HTTP endpoint; returns (status line, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// One sample of Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text exposition (samples only; comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').to_owned(), val);
            rest = &after[end..];
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value: value.parse().expect("numeric value"),
        });
    }
    out
}

/// The value of the sample `name` whose labels include all of `labels`.
/// The value of one metric of a running instance, read as a scrape would.
pub fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(
        &parse_prometheus(&proxy.context().render_metrics()),
        name,
        labels,
    )
}

pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}
