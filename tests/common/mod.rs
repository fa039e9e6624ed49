//! Test harness: one real PostgreSQL per test binary, a database and role
//! per test, and an in-process pgmux in front of it.

#![allow(dead_code)]

pub mod raw;

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
    connect(&cluster.superuser_url("postgres"))
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
