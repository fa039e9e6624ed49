//! Servers that move and vanish: a primary crash with a standby promoted
//! (read-write and prefer-standby pools over both hosts), a network
//! partition in namespaces, a reload that moves a database, and the
//! backoff toward a host that refuses.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{Netns, CUT_ADDR, HEALTHY_ADDR};
use common::*;
use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};
use pgmux::config::Config;

/// A config serving `name` as database `rw` (read-write) and `ro`
/// (prefer-standby) over `hosts`, plus `[pgmux]` lines.
fn two_pools(name: &str, hosts: &[String], extra: &str) -> Config {
    let hosts = hosts
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
{extra}

[databases.rw]
dbname = "{name}"
hosts = [{hosts}]
target_session_attrs = "read-write"
pool_size = 10

[databases.ro]
dbname = "{name}"
hosts = [{hosts}]
target_session_attrs = "prefer-standby"
pool_size = 2

[users.{name}]
password = "{PASSWORD}"
"#
    ))
    .expect("valid config")
}

fn dsn(proxy: &Proxy, user: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={PASSWORD} dbname={db} connect_timeout=30",
        proxy.addr().port()
    )
}

/// What a load client saw: each failure's time and SQLSTATE, and the
/// server ports that answered after `since`.
#[derive(Default)]
struct Seen {
    failures: Vec<(Instant, String)>,
    ports_after: Vec<(Instant, i32)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_crash_and_promotion_under_write_load() {
    let primary = tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start primary");
    let name = "t_failover";
    create_db(&primary, name).await;
    let setup = connect(&primary.socket_url(name)).await.unwrap();
    setup
        .batch_execute(&format!(
            "CREATE TABLE t (id bigserial PRIMARY KEY, client int); ALTER TABLE t OWNER TO {name}"
        ))
        .await
        .unwrap();
    drop(setup);
    let primary = Arc::new(primary);
    let p = primary.clone();
    let standby = tokio::task::spawn_blocking(move || Cluster::standby_of(&p))
        .await
        .unwrap()
        .expect("start standby");
    let hosts = [
        format!("127.0.0.1:{}", primary.port()),
        format!("127.0.0.1:{}", standby.port()),
    ];
    let proxy = Proxy::start(two_pools(
        name,
        &hosts,
        "query_wait_timeout = \"20s\"\nserver_connect_timeout = \"2s\"",
    ))
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let promoted_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut writers = Vec::new();
    for client in 0..20i32 {
        let (url, stop, promoted_at) = (dsn(&proxy, name, "rw"), stop.clone(), promoted_at.clone());
        writers.push(tokio::spawn(async move {
            let c = connect(&url).await.expect("writer connects");
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                let sql = "INSERT INTO t (client) VALUES ($1) RETURNING inet_server_port()";
                match c.query_one(sql, &[&client]).await {
                    Ok(row) => {
                        if promoted_at.lock().unwrap().is_some() {
                            seen.ports_after.push((Instant::now(), row.get(0)));
                        }
                    }
                    Err(e) => {
                        let code = sqlstate(&e).unwrap_or_else(|| e.to_string());
                        seen.failures.push((Instant::now(), code));
                        assert!(!c.is_closed(), "the client keeps its connection: {e}");
                    }
                }
            }
            seen
        }));
    }
    let reads_failed = Arc::new(AtomicU64::new(0));
    let reads_ok = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (url, stop) = (dsn(&proxy, name, "ro"), stop.clone());
            let (failed, ok) = (reads_failed.clone(), reads_ok.clone());
            tokio::spawn(async move {
                let c = connect(&url).await.expect("reader connects");
                while !stop.load(Ordering::Relaxed) {
                    match c.query_one("SELECT count(*) FROM t", &[]).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = primary.clone();
    tokio::task::spawn_blocking(move || p.crash())
        .await
        .unwrap()
        .expect("crash the primary");
    let crashed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let standby = Arc::new(standby);
    let s = standby.clone();
    tokio::task::spawn_blocking(move || s.promote())
        .await
        .unwrap()
        .expect("promote the standby");
    let promoted = Instant::now();
    *promoted_at.lock().unwrap() = Some(promoted);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all_failures = Vec::new();
    let mut ports = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let seen = w.await.expect("writer ends");
        assert!(
            seen.failures.len() <= 1,
            "writer {i} failed more than once: {:?}",
            seen.failures
        );
        all_failures.extend(seen.failures);
        ports.extend(seen.ports_after);
    }
    for r in readers {
        r.await.unwrap();
    }
    for (at, code) in &all_failures {
        assert_eq!(code, "08006", "a request in flight on the crashed server");
        assert!(
            *at < promoted + Duration::from_secs(1),
            "a failure {:?} after the promote",
            at.duration_since(promoted)
        );
    }
    assert!(
        !ports.is_empty(),
        "writes succeeded after the promote (failures: {all_failures:?})"
    );
    assert!(
        ports.iter().all(|(_, p)| *p == i32::from(standby.port())),
        "every write after the promote landed on the new primary"
    );
    let first = ports.iter().map(|(t, _)| *t).min().unwrap();
    assert_eq!(
        reads_failed.load(Ordering::Relaxed),
        0,
        "the prefer-standby pool kept serving reads"
    );
    assert!(reads_ok.load(Ordering::Relaxed) > 0);
    eprintln!(
        "failover: {} client-visible failures (20 writers), first write on the new primary {:?} after the crash, {:?} after the promote",
        all_failures.len(),
        first.duration_since(crashed_at),
        first.duration_since(promoted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_every_client_to_the_new_host() {
    let name = "t_move";
    let old = cluster();
    create_db(old, name).await;
    let new = tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("second cluster");
    create_db(&new, name).await;
    let proxy = setup_on(old, name, 3).await;
    let clients = futures_util::future::join_all((0..3).map(|_| client(&proxy, name))).await;
    for c in &clients {
        assert_eq!(server_port(c).await, old.port());
    }
    // One client is inside a transaction when the reload lands.
    clients[0].batch_execute("BEGIN").await.unwrap();
    let mut cfg = config(old, name, 3, "");
    cfg.databases.get_mut(name).unwrap().port = new.port();
    let changes = pgmux::reload::apply(proxy.context(), cfg).expect("reload");
    assert!(
        changes.iter().any(|c| c.contains("server changed")),
        "{changes:?}"
    );
    // The open transaction finishes where it began.
    assert_eq!(server_port(&clients[0]).await, old.port());
    clients[0].batch_execute("COMMIT").await.unwrap();
    for c in &clients {
        assert_eq!(
            server_port(c).await,
            new.port(),
            "the next transaction runs on the new host (old: {})",
            old.port()
        );
    }
    let su = superuser(old).await;
    let gone = eventually(Duration::from_secs(2), || async {
        server_states_with(&su, name).await.is_empty()
    })
    .await;
    assert!(gone, "no connection to the old host is left");
    assert_eq!(
        proxy.context().pools.all().len(),
        1,
        "one pool, moved in place"
    );
}

/// Starts pgmux in front of `cluster` for the test's database (with an
/// admin user).
async fn setup_on(cluster: &Cluster, name: &str, size: u32) -> Proxy {
    if std::env::var("PGMUX_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("pgmux=debug")
            .with_test_writer()
            .try_init();
    }
    Proxy::start(config(cluster, name, size, ""))
        .await
        .expect("start pgmux")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_host_gets_a_bounded_number_of_attempts() {
    // A host that accepts and hangs up at once (a server restarting):
    // every attempt is counted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let cfg = Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
query_wait_timeout = "3s"
[databases.t_refuse]
host = "127.0.0.1"
port = {port}
[users.t_refuse]
password = "{PASSWORD}"
"#
    ))
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    let started = Instant::now();
    let tries = (0..10).map(|_| {
        let url = dsn(&proxy, "t_refuse", "t_refuse");
        async move {
            let t = Instant::now();
            let code = match connect(&url).await {
                Ok(_) => None,
                Err(e) => sqlstate(&e),
            };
            (code, t.elapsed())
        }
    });
    let results = futures_util::future::join_all(tries).await;
    let elapsed = started.elapsed();
    let n = attempts.load(Ordering::Relaxed);
    for (code, waited) in &results {
        assert_eq!(code.as_deref(), Some("08001"), "told why, after waiting");
        assert!(
            *waited >= Duration::from_millis(2900),
            "clients wait out a failover: {waited:?}"
        );
    }
    let per_second = n as f64 / elapsed.as_secs_f64();
    eprintln!("refusing host: {n} attempts in {elapsed:?} for 10 waiting clients");
    assert!(
        per_second <= 5.0,
        "{n} attempts in {elapsed:?}: the pool backs off"
    );
    assert!(n >= 2, "the pool kept trying ({n})");
}

#[test]
fn network_partition_ends_every_request_and_heals() {
    let ns = match Netns::create("part") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: this machine cannot create network namespaces: {e}");
            return;
        }
    };
    let cluster = Cluster::start(&ClusterOptions {
        netns: Some(ns.b.clone()),
        extra_conf: vec![format!("listen_addresses = '{CUT_ADDR},{HEALTHY_ADDR}'")],
        hba: Some("local all all scram-sha-256\nhost all all 10.0.0.0/8 scram-sha-256\n".into()),
        ..Default::default()
    })
    .expect("PostgreSQL in its namespace");
    let rt = ns.runtime_a();
    ns.enter_a();
    rt.block_on(partition(&ns, &cluster));
}

async fn partition(ns: &Netns, cluster: &Cluster) {
    let name = "t_partition";
    create_db(cluster, name).await;
    // Default keepalive and timeouts: what a user gets.
    let cfg = Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
[databases.cut]
dbname = "{name}"
host = "{CUT_ADDR}"
port = {port}
pool_size = 2
[databases.healthy]
dbname = "{name}"
host = "{HEALTHY_ADDR}"
port = {port}
[users.{name}]
password = "{PASSWORD}"
"#,
        port = cluster.port()
    ))
    .unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // (started, took, ok) of every request.
    let log: Arc<Mutex<Vec<(Instant, Duration, bool)>>> = Arc::default();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, log) = (dsn(&proxy, name, "cut"), stop.clone(), log.clone());
            tokio::spawn(async move {
                let mut conn: Option<tokio_postgres::Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = match &conn {
                        Some(c) if !c.is_closed() => c.simple_query("SELECT 1").await.is_ok(),
                        _ => {
                            conn = connect(&url).await.ok();
                            match &conn {
                                Some(c) => c.simple_query("SELECT 1").await.is_ok(),
                                None => false,
                            }
                        }
                    };
                    log.lock().unwrap().push((t, t.elapsed(), ok));
                    let pause = if ok { 20 } else { 200 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    let long = {
        let c = connect(&dsn(&proxy, name, "healthy")).await.unwrap();
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(12)").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    ns.set_path1(false);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    ns.set_path1(true);
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        tokio::time::timeout(Duration::from_secs(25), l)
            .await
            .expect("every client's last request ends")
            .unwrap();
    }
    long.await
        .unwrap()
        .expect("a healthy 12 s query on the other path is not cut");
    let log = log.lock().unwrap();
    let longest = log.iter().map(|(_, took, _)| *took).max().unwrap();
    assert!(
        longest <= Duration::from_secs(22),
        "every request ends within ~20 s of the cut (longest {longest:?})"
    );
    assert!(
        log.iter().any(|(t, _, ok)| !ok && *t >= cut),
        "the cut was felt"
    );
    let healed = log
        .iter()
        .filter(|(t, took, ok)| *ok && *t + *took >= restored)
        .map(|(t, took, _)| (*t + *took).duration_since(restored))
        .min()
        .expect("requests succeed after the link is back");
    assert!(
        healed <= Duration::from_secs(5),
        "service back {healed:?} after the link"
    );
    let tail_failures = log
        .iter()
        .filter(|(t, _, ok)| !ok && *t >= restored + Duration::from_secs(5))
        .count();
    assert_eq!(tail_failures, 0, "no failure once healed");
    eprintln!(
        "partition: longest request {longest:?}, healed {healed:?} after the link came back, {} requests",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sessions_and_servers_on_a_read_write_pool() {
    let name = "t_rwcheck";
    let c = cluster();
    create_db(c, name).await;
    let cfg = config(
        c,
        name,
        2,
        "query_wait_timeout = \"1s\"\nserver_login_retry = \"200ms\"",
    );
    let mut cfg = cfg;
    cfg.databases.get_mut(name).unwrap().target_session_attrs =
        pgmux::config::TargetSessionAttrs::ReadWrite;
    let proxy = Proxy::start(cfg.clone()).await.unwrap();
    let (a, b) = (client(&proxy, name).await, client(&proxy, name).await);
    // Two server connections open, both idle.
    let (ra, rb) = tokio::join!(
        a.simple_query("SELECT pg_sleep(0.2)"),
        b.simple_query("SELECT pg_sleep(0.2)")
    );
    ra.unwrap();
    rb.unwrap();
    let su = superuser(c).await;
    let before = backend_pids(&su, name).await;
    assert_eq!(before.len(), 2);
    // A client's own read-only session gives 25006 as on a direct
    // connection, and the server is not taken for a demoted primary.
    a.batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let err = a.batch_execute("CREATE TABLE nope ()").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    a.batch_execute("RESET default_transaction_read_only")
        .await
        .unwrap();
    let err = b
        .batch_execute("BEGIN READ ONLY; CREATE TABLE nope (); COMMIT")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    b.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("CREATE TABLE yes ()").await.unwrap();
    assert_eq!(
        backend_pids(&su, name).await,
        before,
        "no server connection was closed"
    );
    // A server whose new sessions are read-only does not qualify: the
    // pool keeps looking, and a client's wait ends with 08001 saying why.
    su.batch_execute(&format!(
        "ALTER ROLE {name} SET default_transaction_read_only = on"
    ))
    .await
    .unwrap();
    for p in proxy.context().pools.matching(None) {
        p.reconnect();
    }
    let err = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("read-only primary"), "{msg}");
    su.batch_execute(&format!(
        "ALTER ROLE {name} RESET default_transaction_read_only"
    ))
    .await
    .unwrap();
    let again = client(&proxy, name).await;
    again.batch_execute("CREATE TABLE again ()").await.unwrap();
}

/// Backend pids PostgreSQL has for database `name`, sorted.
async fn backend_pids(su: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    let sql =
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'";
    let mut v: Vec<i32> = su
        .query(sql, &[&name])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// pgmux run as its own process in a private mount namespace whose
/// `/etc/hosts` is a file the test rewrites; killed on drop.
struct PgmuxWithHosts {
    child: std::process::Child,
    hosts: std::path::PathBuf,
    port: u16,
}

impl PgmuxWithHosts {
    fn start(config: &str, hosts: &str) -> Self {
        let dir = pgmux::cluster::scratch_dir("dns").unwrap();
        let (hosts_path, cfg_path) = (dir.join("hosts"), dir.join("pgmux.toml"));
        std::fs::write(&hosts_path, hosts).unwrap();
        let port = free_port();
        std::fs::write(&cfg_path, config.replace("LISTEN_PORT", &port.to_string())).unwrap();
        let child = std::process::Command::new("setpriv")
            .args(["--pdeathsig=KILL", "--", "unshare", "-m", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" run --config "$3""#)
            .arg("sh")
            .arg(&hosts_path)
            .arg(env!("CARGO_BIN_EXE_pgmux"))
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgmux");
        Self {
            child,
            hosts: hosts_path,
            port,
        }
    }

    /// Rewrites the hosts file in place (the bind mount holds its inode).
    fn set_hosts(&self, text: &str) {
        std::fs::write(&self.hosts, text).unwrap();
    }
}

impl Drop for PgmuxWithHosts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_moves_takes_the_pool_with_it() {
    if !run(std::process::Command::new("unshare").args(["-m", "true"])).0 {
        eprintln!("skipped: this machine cannot create mount namespaces");
        return;
    }
    let name = "t_dns";
    let a = cluster();
    create_db(a, name).await;
    // A second server on another loopback address, same port: only the
    // name's address tells them apart, as with an endpoint that moves.
    let port = a.port();
    let b = tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            port: Some(port),
            extra_conf: vec!["listen_addresses = '127.0.0.2'".into()],
            hba: Some(
                "local all all scram-sha-256\nhost all all 127.0.0.0/8 scram-sha-256\n".into(),
            ),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("second server");
    create_db(&b, name).await;
    let pgmux = PgmuxWithHosts::start(
        &format!(
            r#"
[pgmux]
listen = "127.0.0.1:LISTEN_PORT"
dns_max_ttl = "1s"
[databases.{name}]
hosts = ["pgmux-db.test:{port}"]
[users.{name}]
password = "{PASSWORD}"
"#
        ),
        "127.0.0.1 pgmux-db.test\n",
    );
    let url = format!(
        "host=127.0.0.1 port={} user={name} password={PASSWORD} dbname={name}",
        pgmux.port
    );
    let up = eventually(Duration::from_secs(20), || async {
        connect(&url).await.is_ok()
    })
    .await;
    assert!(up, "pgmux starts");
    let clients = futures_util::future::join_all((0..3).map(|_| connect(&url))).await;
    let clients: Vec<_> = clients.into_iter().map(Result::unwrap).collect();
    for c in &clients {
        assert_eq!(server_addr(c).await, "127.0.0.1");
    }
    clients[0].batch_execute("BEGIN").await.unwrap();
    pgmux.set_hosts("127.0.0.2 pgmux-db.test\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server_addr(&clients[0]).await,
        "127.0.0.1",
        "a transaction stays where it began"
    );
    clients[0].batch_execute("COMMIT").await.unwrap();
    for c in &clients {
        assert_eq!(
            server_addr(c).await,
            "127.0.0.2",
            "the next transaction follows the name"
        );
    }
    let su = superuser(a).await;
    let gone = eventually(Duration::from_secs(3), || async {
        server_states_with(&su, name).await.is_empty()
    })
    .await;
    assert!(gone, "no connection to the old address is left");
}

/// The address of the server a client's next statement runs on.
async fn server_addr(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT host(inet_server_addr())", &[])
        .await
        .unwrap()
        .get(0)
}

/// The port of the server a client's next statement runs on.
async fn server_port(c: &tokio_postgres::Client) -> u16 {
    let p: i32 = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    p as u16
}
