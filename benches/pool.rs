//! Micro-benchmarks of the pool: `cargo bench --bench pool`.
//!
//! The pool lends real server connections, so this starts a throwaway
//! PostgreSQL and opens the connections once; what is timed is only the
//! hand-over: checkout and checkin of an idle connection on one task, and
//! many tasks on two worker threads contending for a pool smaller than
//! their number (the queue, the wake-ups and the lock).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pgmux::cluster::{Cluster, ClusterOptions, SUPERUSER, SUPERUSER_PASSWORD};
use pgmux::config::Config;
use pgmux::context::Context;
use pgmux::pool::{Pool, PoolKey};

const SIZE: usize = 4;
const TASKS: usize = 16;

/// A pool of `SIZE` open connections to `cluster`.
fn warm_pool(rt: &tokio::runtime::Runtime, cluster: &Cluster) -> (Context, Pool) {
    let text = format!(
        "[pgmux]\ndefault_pool_size = {SIZE}\n[databases.postgres]\nport = {}\n\
         [users.{SUPERUSER}]\npassword = \"{SUPERUSER_PASSWORD}\"\n",
        cluster.port()
    );
    let cfg = Config::parse(&text).expect("valid config");
    let ctx = Context::new(cfg, None).expect("context");
    let key = PoolKey {
        database: "postgres".into(),
        user: SUPERUSER.into(),
    };
    // The pool starts its upkeep task on the runtime.
    let _inside = rt.enter();
    let pool = ctx
        .pools
        .get(&ctx.config(), &ctx.metrics, &key)
        .expect("pool");
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..SIZE {
            held.push(pool.get().await.expect("server connection"));
        }
        for c in held {
            c.release();
        }
    });
    (ctx, pool)
}

fn pool(c: &mut Criterion) {
    let cluster = Cluster::start(&ClusterOptions::default()).expect("PostgreSQL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (_ctx, pool) = warm_pool(&rt, &cluster);
    let mut g = c.benchmark_group("pool");
    g.bench_function("checkout_checkin_idle", |b| {
        b.iter_custom(|iters| {
            let pool = pool.clone();
            rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    if let Some(s) = pool.try_get() {
                        s.release();
                    }
                }
                start.elapsed()
            })
        })
    });
    // Each iteration: every task takes and returns a connection once, with
    // TASKS tasks sharing SIZE connections (so most hand-overs go through
    // the wait queue).
    g.bench_function("contended_16_tasks_4_servers", |b| {
        b.iter_custom(|iters| {
            let pool = pool.clone();
            rt.block_on(async move {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                let s = pool.get().await.expect("no timeout");
                                tokio::task::yield_now().await;
                                s.release();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed() / TASKS as u32
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = pool
}
criterion_main!(benches);
