//! `pgmux demo`: the problem and the fix side by side. A throwaway
//! PostgreSQL with 20 connection slots, pgmux in front with a pool of 15,
//! and a burst of short-lived clients (connect, query, disconnect) sent
//! first straight at PostgreSQL, then through pgmux.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::app::Proxy;
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::Config;

const APP_USER: &str = "app";
const APP_PASSWORD: &str = "app-secret";

/// Outcome of one burst.
#[derive(Debug, Default)]
pub struct BurstResult {
    /// Client sessions that connected, queried and closed.
    pub ok: u64,
    /// Sessions that failed anywhere.
    pub failed: u64,
    /// Wall time of the burst.
    pub elapsed: Duration,
    /// First error message seen, as a sample.
    pub sample_error: Option<String>,
}

impl BurstResult {
    fn rate(&self) -> f64 {
        let total = self.ok + self.failed;
        if total == 0 {
            0.0
        } else {
            100.0 * self.ok as f64 / total as f64
        }
    }
}

/// Runs `clients` concurrent loops of connect → query → disconnect against
/// `url` for `duration`.
pub async fn burst(url: &str, clients: usize, duration: Duration) -> BurstResult {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sample = Arc::new(parking_lot::Mutex::new(None));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (url, ok, failed, sample) =
            (url.to_owned(), ok.clone(), failed.clone(), sample.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match one_session(&url).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let msg = e
                            .as_db_error()
                            .map(|d| format!("{} ({})", d.message(), d.code().code()));
                        sample
                            .lock()
                            .get_or_insert_with(|| msg.unwrap_or_else(|| e.to_string()));
                        // A refused client retries after a pause, as a driver would.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sample_error = sample.lock().take();
    BurstResult {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        sample_error,
    }
}

async fn one_session(url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let res = client.simple_query("SELECT count(*) FROM pg_class").await;
    drop(client);
    let _ = driver.await;
    res.map(|_| ())
}

/// Demo configuration: pool of 15 in transaction mode, room for the burst.
pub fn demo_config(pg_port: u16, clients: usize) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
pool_mode = "transaction"
default_pool_size = 15
max_client_conn = {max}
query_wait_timeout = "30s"

[databases.demo]
host = "127.0.0.1"
port = {pg_port}

[users.{APP_USER}]
password = "{APP_PASSWORD}"
"#,
        max = clients * 2 + 100
    );
    Ok(Config::parse(&text)?)
}

/// Creates the demo role and database on a fresh cluster.
pub async fn prepare_cluster(cluster: &Cluster) -> anyhow::Result<()> {
    let (client, conn) =
        tokio_postgres::connect(&cluster.superuser_url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the throwaway PostgreSQL")?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"
        ))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE demo OWNER {APP_USER}"))
        .await?;
    Ok(())
}

/// The whole demo, printed to stdout.
pub async fn run(clients: usize, duration: Duration) -> anyhow::Result<()> {
    println!("Starting a throwaway PostgreSQL (max_connections = 20)...");
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(&ClusterOptions {
            max_connections: 20,
            ..Default::default()
        })
    })
    .await??;
    prepare_cluster(&cluster).await?;
    let proxy = Proxy::start(demo_config(cluster.port(), clients)?).await?;
    println!(
        "PostgreSQL on 127.0.0.1:{}, pgmux on {} (transaction mode, pool of 15)",
        cluster.port(),
        proxy.addr()
    );
    let url = |port: u16| {
        format!("host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname=demo connect_timeout=10")
    };
    println!("Burst: {clients} concurrent clients, each connecting, querying and disconnecting, for {duration:?}\n");
    let direct = burst(&url(cluster.port()), clients, duration).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pooled = burst(&url(proxy.addr().port()), clients, duration).await;
    println!(
        "{:<22} {:>10} {:>10} {:>12} {:>14}",
        "target", "sessions", "failed", "success", "sessions/s"
    );
    for (name, r) in [("PostgreSQL directly", &direct), ("through pgmux", &pooled)] {
        println!(
            "{:<22} {:>10} {:>10} {:>11.1}% {:>14.0}",
            name,
            r.ok + r.failed,
            r.failed,
            r.rate(),
            r.ok as f64 / r.elapsed.as_secs_f64()
        );
    }
    if let Some(e) = &direct.sample_error {
        println!("\nA direct client's error: {e}");
    }
    if let Some(e) = &pooled.sample_error {
        println!("A pgmux client's error: {e}");
    }
    proxy.shutdown().await;
    drop(cluster);
    println!("\nCleaned up.");
    Ok(())
}
