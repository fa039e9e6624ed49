//! Core pooling behaviour against a real PostgreSQL: queries, multiplexing,
//! limits, authentication errors, parameters, COPY, cancel and shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let p = setup("t_queries", 2, "").await;
    let c = client(&p, "t_queries").await;
    let rows = c
        .simple_query("SELECT 1 AS one; SELECT 'two'")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["1", "two"]);
    let row = c.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let stmt = c.prepare("SELECT $1::text || 'x'").await.unwrap();
    for i in 0..20 {
        let r = c.query_one(&stmt, &[&i.to_string()]).await.unwrap();
        assert_eq!(r.get::<_, String>(0), format!("{i}x"));
    }
    let err = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    assert_eq!(
        c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_pgmux() {
    let p = setup("t_psql", 2, "").await;
    let out = std::process::Command::new(cluster().bin_dir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT 40 + 2",
            "-c",
            "SELECT current_user",
        ])
        .arg(url(&p, "t_psql"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec!["42", "t_psql"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_servers() {
    let p = setup("t_many", 5, "").await;
    let url = url(&p, "t_many");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max = 0;
            let su = superuser(cluster()).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(server_states_with(&su, "t_many").await.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        })
    };
    let tasks = (0..200).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            for j in 0..5 {
                let r = c
                    .query_one("SELECT $1::int * 2", &[&(i * 10 + j)])
                    .await
                    .unwrap();
                assert_eq!(r.get::<_, i32>(0), (i * 10 + j) * 2);
            }
            let tx_sum: i64 = c
                .query_one(
                    "SELECT sum(x)::int8 FROM generate_series(1, $1::int) x",
                    &[&i],
                )
                .await
                .unwrap()
                .get::<_, Option<i64>>(0)
                .unwrap_or(0);
            assert_eq!(tx_sum, (i as i64) * (i as i64 + 1) / 2);
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = watcher.await.unwrap();
    assert!(max <= 5, "saw {max} server connections for a pool of 5");
    assert!(max >= 1);
}

/// A server out of connection slots (53300; here the role's CONNECTION
/// LIMIT, as when another application holds the database's slots) is a
/// passing condition: directly a second connection is refused, through
/// pgmux the client waits for the server its pool has, as PgBouncer's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_out_of_slots_makes_clients_wait() {
    let name = "t_slots";
    let p = setup(name, 2, "query_wait_timeout = \"20s\"").await;
    let su = superuser(cluster()).await;
    su.batch_execute(&format!("ALTER ROLE {name} CONNECTION LIMIT 1"))
        .await
        .unwrap();
    let direct = direct_url(name);
    let first = connect(&direct).await.unwrap();
    assert_eq!(refused(&direct).await.as_deref(), Some("53300"));
    drop(first);
    // Through pgmux: the pool's one server holds a transaction, the pool
    // cannot open a second, and the second client waits for the first.
    let a = client(&p, name).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let b = client(&p, name).await;
    let waiter = spawn_int_query(b, "SELECT 2");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiter.is_finished(), "the second client waits, not fails");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_gives_53300() {
    let p = setup("t_wait", 1, "query_wait_timeout = \"300ms\"").await;
    let holder = client(&p, "t_wait").await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = client(&p, "t_wait").await;
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(
        msg.contains("t_wait") && msg.contains("query_wait_timeout"),
        "{msg}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let again = client(&p, "t_wait").await;
    again.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_gives_53300() {
    let p = setup("t_maxconn", 2, "max_client_conn = 2").await;
    let _a = client(&p, "t_maxconn").await;
    let _b = client(&p, "t_maxconn").await;
    let err = connect(&url(&p, "t_maxconn")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    drop(_a);
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect(&url(&p, "t_maxconn")).await.is_ok()
        })
        .await,
        "a slot frees up when a client leaves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_name_the_problem() {
    let p = setup("t_login", 2, "").await;
    let port = p.addr().port();
    let base = format!("host=127.0.0.1 port={port} connect_timeout=10");
    let err = connect(&format!(
        "{base} user=t_login password=wrong dbname=t_login"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "password authentication failed for user \"t_login\""
    );
    let err = connect(&format!(
        "{base} user=t_login password={PASSWORD} dbname=nope"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
    assert!(err.as_db_error().unwrap().message().contains("\"nope\""));
    // An unknown user is told what a wrong password is told (PostgreSQL's
    // answer too): the error does not say which users exist.
    let err = connect(&format!("{base} user=ghost password=x dbname=t_login"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "password authentication failed for user \"ghost\""
    );
    // The proxy still serves everyone else.
    client(&p, "t_login")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_trust_client_auth() {
    let p = setup("t_md5", 1, "auth_type = \"md5\"").await;
    client(&p, "t_md5")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=t_md5 password=bad dbname=t_md5",
        p.addr().port()
    );
    assert_eq!(refused(&dsn).await.as_deref(), Some("28P01"));
    let p = setup("t_trust", 1, "auth_type = \"trust\"").await;
    connect(&format!(
        "host=127.0.0.1 port={} user=t_trust dbname=t_trust",
        p.addr().port()
    ))
    .await
    .unwrap()
    .simple_query("SELECT 1")
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_their_own_parameters_on_one_server() {
    let p = setup("t_params", 1, "").await;
    let a = connect(&format!(
        "{} application_name=alpha options='-c TimeZone=Asia/Tokyo'",
        url(&p, "t_params")
    ))
    .await
    .unwrap();
    let b = connect(&format!("{} application_name=beta", url(&p, "t_params")))
        .await
        .unwrap();
    b.batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..5 {
        let (app, tz, pid_a) = get(&a).await;
        assert_eq!((app.as_str(), tz.as_str()), ("alpha", "Asia/Tokyo"));
        let (app, tz, pid_b) = get(&b).await;
        assert_eq!((app.as_str(), tz.as_str()), ("beta", "America/New_York"));
        pids.insert(pid_a);
        pids.insert(pid_b);
    }
    assert_eq!(pids.len(), 1, "both clients ran on the one server");
}

async fn get(c: &tokio_postgres::Client) -> (String, String, i32) {
    let r = c
        .query_one("SELECT current_setting('application_name'), current_setting('TimeZone'), pg_backend_pid()", &[])
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_protocol() {
    let p = setup("t_pipeline", 2, "").await;
    let c = client(&p, "t_pipeline").await;
    let s1 = c.prepare("SELECT $1::int").await.unwrap();
    let futs = (0..50).map(|i| {
        let c = &c;
        let s1 = &s1;
        async move {
            if i % 7 == 3 {
                // An error in the middle of the pipeline fails only its own query.
                assert!(c.query_one("SELECT 1/0", &[]).await.is_err());
                None
            } else {
                Some(c.query_one(s1, &[&i]).await.unwrap().get::<_, i32>(0))
            }
        }
    });
    let got = join_all(futs).await;
    for (i, v) in got.into_iter().enumerate() {
        if let Some(v) = v {
            assert_eq!(v, i as i32);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    let p = setup("t_copy", 1, "").await;
    let c = client(&p, "t_copy").await;
    c.batch_execute("CREATE TABLE t (id int, name text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for i in 0..1000 {
        sink.send(Bytes::from(format!("{i}\tname{i}\n")))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let stream = c.copy_out("COPY t TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 1000);
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_its_own_query() {
    let p = setup("t_cancel", 2, "").await;
    let a = client(&p, "t_cancel").await;
    let b = client(&p, "t_cancel").await;
    let token = a.cancel_token();
    let slow_b =
        tokio::spawn(async move { b.simple_query("SELECT pg_sleep(1.5)").await.map(|_| ()) });
    let slow_a =
        tokio::spawn(async move { a.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), slow_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    slow_b
        .await
        .unwrap()
        .expect("the other client's query is not cancelled");
    // A cancel for a client holding no server does nothing.
    let idle = client(&p, "t_cancel").await;
    idle.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_inside_transaction_leaves_nothing() {
    let p = setup("t_killed", 1, "").await;
    let c = client(&p, "t_killed").await;
    c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    // A raw client that vanishes mid-transaction.
    {
        let dead = client(&p, "t_killed").await;
        dead.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        drop(dead);
    }
    let ok = eventually(Duration::from_secs(5), || async {
        !server_states("t_killed")
            .await
            .iter()
            .any(|s| s.starts_with("idle in transaction"))
    })
    .await;
    assert!(ok, "no server is left idle in transaction");
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_server_gives_error_then_recovers() {
    let p = setup("t_term", 1, "").await;
    let slow = {
        let url = url(&p, "t_term");
        tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            let r = c.simple_query("SELECT pg_sleep(30)").await.map(|_| ());
            (r, c.simple_query("SELECT 1").await.map(|_| ()))
        })
    };
    // Terminate the server exactly while it runs the client's query.
    let su = superuser(cluster()).await;
    let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
               WHERE datname = 't_term' AND state = 'active' AND query = 'SELECT pg_sleep(30)'";
    let killed = eventually(Duration::from_secs(10), || async {
        !su.query(sql, &[]).await.unwrap().is_empty()
    })
    .await;
    assert!(killed, "the query was seen running");
    let (first, next) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    let err = first.expect_err("the query on the killed server fails");
    assert!(
        matches!(sqlstate(&err).as_deref(), Some("57P01") | Some("08006")),
        "{err:?}"
    );
    next.expect("the next query gets a fresh server");
    client(&p, "t_term")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// A pooled server that died while idle is noticed at checkout (from the
/// runtime's readiness flag, without a system call) and never reaches a
/// client: the next query just works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_terminated_is_replaced_unseen() {
    let p = setup("t_idle_term", 1, "").await;
    let c = client(&p, "t_idle_term").await;
    c.simple_query("SELECT 1").await.unwrap();
    let su = superuser(cluster()).await;
    let kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                WHERE datname = 't_idle_term' AND state = 'idle'";
    assert_eq!(su.query(kill, &[]).await.unwrap().len(), 1);
    let gone = eventually(Duration::from_secs(10), || async {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 't_idle_term'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(gone, "the backend exited");
    for _ in 0..3 {
        c.simple_query("SELECT 1")
            .await
            .expect("a fresh server, with no error for the client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_and_resets_state() {
    let p = setup("t_session", 1, "pool_mode = \"session\"").await;
    let a = client(&p, "t_session").await;
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    a.batch_execute("PREPARE q AS SELECT 1").await.unwrap();
    for _ in 0..3 {
        let v: String = a
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "1234ms");
    }
    a.batch_execute("EXECUTE q").await.unwrap();
    drop(a);
    let b = client(&p, "t_session").await;
    let v: String = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "0");
    assert!(
        b.batch_execute("EXECUTE q").await.is_err(),
        "prepared statements are reset too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_transaction_commit() {
    let p = setup("t_shutdown", 2, "shutdown_timeout = \"10s\"").await;
    let c = client(&p, "t_shutdown").await;
    c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    let idle = client(&p, "t_shutdown").await;
    idle.simple_query("SELECT 1").await.unwrap();
    // A client that has just logged in came for a transaction: it gets one
    // even when shutdown begins before it sends it.
    let fresh = client(&p, "t_shutdown").await;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let addr = p.addr();
    let shutdown = tokio::spawn(p.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New clients are turned away, idle ones are closed with 57P01 ...
    assert!(connect(&format!(
        "host=127.0.0.1 port={} user=t_shutdown password={PASSWORD}",
        addr.port()
    ))
    .await
    .is_err());
    assert!(idle.simple_query("SELECT 1").await.is_err());
    fresh.simple_query("SELECT 1").await.unwrap();
    assert!(
        fresh.simple_query("SELECT 1").await.is_err(),
        "one, then 57P01"
    );
    // ... and the open transaction finishes.
    c.batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    let direct = superuser(cluster()).await;
    drop(direct);
    let check = connect(&format!(
        "host=127.0.0.1 port={} user=t_shutdown password={PASSWORD} dbname=t_shutdown",
        cluster().port()
    ))
    .await
    .unwrap();
    let n: i64 = check
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn check_reports_bad_key_with_line() {
    let dir = pgmux::cluster::scratch_dir("check").unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[pgmux]\nlisten = \"127.0.0.1:6432\"\ndefault_pool_sise = 3\n",
    )
    .unwrap();
    let out = pgmux_check(&path, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:3:1: ") && err.contains("default_pool_sise"),
        "{err}"
    );
    std::fs::write(
        &path,
        "[pgmux]\n[users.a]\npassword = \"hunter2\"\n[databases.a]\n",
    )
    .unwrap();
    let out = pgmux_check(&path, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("default_pool_size = 20") && !text.contains("hunter2"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Idle-client memory: a session's task must stay small (the benchmark
/// measures RSS per idle client; this guards the biggest part of it).
#[tokio::test]
async fn session_future_stays_small() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let cfg = pgmux::config::Config::parse("[pgmux]\n").unwrap();
    let ctx = std::sync::Arc::new(pgmux::context::Context::new(cfg, None).unwrap());
    let peer = s.peer_addr().unwrap();
    let fut = pgmux::session::serve(pgmux::tls::Stream::Plain(s), peer, ctx);
    let size = std::mem::size_of_val(&fut);
    // 992 bytes after the login moved to a future of its own (1,456 before).
    assert!(size <= 1100, "session future is {size} bytes");
}

/// The README's `pgmux check --config config/pgmux.toml` works in a fresh
/// shell, and a file whose variables are unset names every one with its line.
#[test]
fn shipped_config_checks_in_a_fresh_shell() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgmux.toml");
    let out = pgmux_check(
        std::path::Path::new(shipped),
        &["PGMUX_ADMIN_PASSWORD", "APP_PASSWORD"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = pgmux::cluster::scratch_dir("check_env")
        .unwrap()
        .join("env.toml");
    std::fs::write(
        &path,
        "[pgmux]\n[users.a]\npassword = \"${PGMUX_T_UNSET_1}\"\n[users.b]\npassword = \"${PGMUX_T_UNSET_2}\"\n",
    )
    .unwrap();
    let out = pgmux_check(&path, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 3: environment variable PGMUX_T_UNSET_1")
            && err.contains("line 5: environment variable PGMUX_T_UNSET_2"),
        "{err}"
    );
}

#[test]
fn check_shows_no_secret_and_warns_about_readable_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = pgmux::cluster::scratch_dir("check_secrets").unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    // A misspelled key and a value of the wrong type next to a password:
    // the line and column are named, the password is not.
    let path = dir.join("typo.toml");
    for (text, at) in [
        (
            "[pgmux]\n\n[users.x]\npasword = \"hunter2-secret\"\n",
            "typo.toml:4:1: ",
        ),
        (
            "[users.x]\npassword = \"hunter2-secret\"\nquery_timeout = \"hunter2\"\n",
            "typo.toml:3:",
        ),
        (
            "[users.x]\npassword = [\"hunter2-secret\"]\n",
            "typo.toml:2:",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = pgmux_check(&path, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?}");
        assert!(err.contains(at), "{text:?}: {err}");
        assert!(!err.contains("hunter2"), "{text:?}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    }
    // A config file and a userlist others can read are warned about.
    let users = dir.join("userlist.txt");
    std::fs::write(&users, "\"app\" \"hunter2-secret\"\n").unwrap();
    let ini = dir.join("pgmux.ini");
    std::fs::write(
        &ini,
        "[databases]\napp = host=127.0.0.1 port=5432\n[pgbouncer]\nauth_file = userlist.txt\n",
    )
    .unwrap();
    mode(&users, 0o644);
    mode(&ini, 0o644);
    let out = pgmux_check(&ini, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: auth_file")
            && err.contains("userlist.txt is readable or writable by group or others (mode 0644)"),
        "{err}"
    );
    assert!(err.contains("warning: config file"), "{err}");
    mode(&users, 0o600);
    mode(&ini, 0o600);
    let out = pgmux_check(&ini, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("group or others"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `pgmux check --config path` with the named variables removed.
fn pgmux_check(path: &std::path::Path, unset: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgmux"));
    cmd.args(["check", "--config"]).arg(path);
    for v in unset {
        cmd.env_remove(v);
    }
    cmd.output().unwrap()
}
