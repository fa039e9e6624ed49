//! PostgreSQL restarted under load: clients get errors while it is down,
//! and service resumes by itself. Uses its own cluster, since it restarts it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()).unwrap())
            .await
            .unwrap(),
    );
    create_db(&cluster, "t_restart").await;
    let proxy = Proxy::start(config(
        &cluster,
        "t_restart",
        4,
        "server_connect_timeout = \"1s\"\nquery_wait_timeout = \"3s\"",
    ))
    .await
    .unwrap();
    let url = url(&proxy, "t_restart");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        conn = connect(&url).await.ok();
                    }
                    let res = match &conn {
                        Some(c) => c.query_one("SELECT 1::int", &[]).await.map(|_| ()),
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    match res {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            conn = None;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "load runs before the restart"
    );
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.restart().unwrap())
        .await
        .unwrap();
    // Service resumes: a new client succeeds soon after PostgreSQL is back.
    let resumed = eventually(Duration::from_secs(15), || async {
        match connect(&url).await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(resumed, "pgmux serves again after the restart");
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "clients saw errors while PostgreSQL was down"
    );
    assert!(ok.load(Ordering::Relaxed) > before, "the load recovered");
}
