//! Shared limits on server connections, as PgBouncer's: max_db_connections
//! across users, max_user_connections across databases, and the reserve
//! pool that opens only after reserve_pool_timeout.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgmux::app::Proxy;
use pgmux::config::Config;

/// Backends PostgreSQL has for database `name`.
async fn backends(su: &tokio_postgres::Client, name: &str) -> usize {
    server_states_with(su, name).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_is_shared_by_two_users() {
    let name = "t_limit_db";
    let c = cluster();
    create_db(c, name).await;
    let su = superuser(c).await;
    su.batch_execute(&format!(
        "CREATE ROLE {name}_b LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON DATABASE {name} TO {name}_b"
    ))
    .await
    .unwrap();
    let cfg = Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
default_pool_size = 3
query_wait_timeout = "20s"
[databases.{name}]
port = {port}
max_db_connections = 3
[users.{name}]
password = "{PASSWORD}"
[users.{name}_b]
password = "{PASSWORD}"
"#,
        port = c.port()
    ))
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        tokio::spawn(async move {
            let su = superuser(cluster()).await;
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(backends(&su, name).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for user in [name.to_owned(), format!("{name}_b")] {
        for _ in 0..8 {
            let url = format!(
                "host=127.0.0.1 port={} user={user} password={PASSWORD} dbname={name}",
                proxy.addr().port()
            );
            clients.push(tokio::spawn(async move {
                let c = connect(&url).await.expect("connect");
                for _ in 0..15 {
                    c.simple_query("SELECT pg_sleep(0.01)")
                        .await
                        .expect("query");
                }
            }));
        }
    }
    for cl in clients {
        cl.await.expect("every client of both users finishes");
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 3,
        "PostgreSQL saw {most} connections with max_db_connections = 3"
    );
    assert!(most >= 2, "both users' pools ran ({most})");
    // SHOW DATABASES and the metrics say so.
    let (used, limit) = proxy.context().pools.database_usage(name);
    assert!(used <= 3 && limit == 3, "{used}/{limit}");
    let text = proxy.context().render_metrics();
    assert!(
        text.contains(&format!(
            "pgmux_server_connection_limit{{scope=\"database\",name=\"{name}\"}} 3"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_pool_opens_only_after_its_timeout() {
    let name = "t_limit_reserve";
    let p = setup(
        name,
        1,
        "reserve_pool_size = 1\nreserve_pool_timeout = \"1s\"",
    )
    .await;
    let su = superuser(cluster()).await;
    let holder = client(&p, name).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = client(&p, name).await;
    let asked = Instant::now();
    let served = tokio::spawn(async move {
        waiter.simple_query("SELECT 2").await.unwrap();
        asked.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backends(&su, name).await,
        1,
        "no reserve before the timeout"
    );
    let waited = served.await.unwrap();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(4),
        "served by the reserve after about 1 s ({waited:?})"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let shrunk = eventually(Duration::from_secs(3), || async {
        backends(&su, name).await == 1
    })
    .await;
    assert!(shrunk, "the reserve connection closes once nobody waits");
}
