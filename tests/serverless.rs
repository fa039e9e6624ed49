//! Serverless clients: instances frozen inside a transaction or left idle
//! do not hold locks or client slots for ever.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::raw::{error_code, Raw};
use common::*;

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// Creates table `t` with row (1, 0) in the test's database, then starts a
/// psql through pgmux that runs `script` and stays connected; returns once
/// the server shows its backend in `state` (`idle in transaction`,
/// `active`).
async fn psql_inside_a_transaction(
    p: &pgmux::app::Proxy,
    name: &str,
    script: &[u8],
    state: &str,
) -> std::process::Child {
    let direct = direct_url(name);
    connect(&direct)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let mut psql = Command::new(cluster().bin_dir().join("psql"))
        .args(["-X", "-q"])
        .arg(url(p, name))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    stdin.write_all(script).unwrap();
    stdin.flush().unwrap();
    // Keep stdin open: psql would exit at its end.
    std::mem::forget(stdin);
    let su = superuser(cluster()).await;
    let in_tx = eventually(Duration::from_secs(10), || async {
        server_states_with(&su, name)
            .await
            .iter()
            .any(|s| s == state)
    })
    .await;
    assert!(in_tx, "the psql transaction is {state}");
    psql
}

/// A psql process frozen (SIGSTOP) right after an UPDATE inside a
/// transaction: another client updating the same row goes through once
/// `idle_transaction_timeout` passes, the frozen client's write is rolled
/// back, and no server is left idle in transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_client_in_a_transaction_releases_its_locks() {
    let p = setup("t_frozen", 2, "idle_transaction_timeout = \"1s\"").await;
    let mut psql = psql_inside_a_transaction(
        &p,
        "t_frozen",
        b"BEGIN;\nUPDATE t SET v = 1 WHERE id = 1;\n",
        "idle in transaction",
    )
    .await;
    let su = superuser(cluster()).await;
    signal(psql.id(), "-STOP");
    let b = client(&p, "t_frozen").await;
    let started = Instant::now();
    b.execute("UPDATE t SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    let waited = started.elapsed();
    eprintln!("blocked update waited {waited:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    let v: i32 = b
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "the frozen client's write was rolled back");
    let idle_in_tx = server_states_with(&su, "t_frozen")
        .await
        .iter()
        .filter(|s| s.starts_with("idle in transaction"))
        .count();
    assert_eq!(idle_in_tx, 0);
    assert_eq!(
        metric(
            &p,
            "pgmux_client_timeouts_total",
            &[("kind", "idle_transaction")]
        ),
        Some(1.0)
    );
    signal(psql.id(), "-CONT");
    let _ = psql.kill();
    let _ = psql.wait();
}

/// Idle clients filling `max_client_conn`: a new client gets in once
/// `client_idle_timeout` has ended them (57P05 to each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_give_their_slots_back() {
    let p = setup(
        "t_idle_slots",
        2,
        "max_client_conn = 2\nclient_idle_timeout = \"1s\"",
    )
    .await;
    let a = client(&p, "t_idle_slots").await;
    assert_eq!(
        a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // The second on a raw connection, to read the FATAL pgmux sends it.
    let mut b = Raw::connect(p.addr().port(), "t_idle_slots", PASSWORD, "t_idle_slots").await;
    assert_eq!(
        refused(&url(&p, "t_idle_slots")).await.as_deref(),
        Some("53300")
    );
    let got_in = eventually(Duration::from_secs(10), || async {
        let url = url(&p, "t_idle_slots");
        match connect(&url).await {
            Ok(c) => c.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(got_in, "a new client got a slot");
    let err = a.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(
        err.is_closed() || sqlstate(&err).as_deref() == Some("57P05"),
        "{err}"
    );
    let fatal = b.read().await;
    assert_eq!(error_code(&[fatal]).as_deref(), Some("57P05"));
    let timeouts = metric(
        &p,
        "pgmux_client_timeouts_total",
        &[("kind", "client_idle")],
    );
    assert_eq!(timeouts, Some(2.0));
}

/// `query_timeout` cancels a request on the server with a real
/// CancelRequest (57014); the client keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_and_the_client_goes_on() {
    let p = setup("t_query_timeout", 2, "query_timeout = \"1s\"").await;
    let c = client(&p, "t_query_timeout").await;
    let started = Instant::now();
    let err = c.simple_query("SELECT pg_sleep(60)").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
    eprintln!("pg_sleep(60) cancelled after {took:?}");
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // A short request in the same session is not touched.
    c.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    assert_eq!(
        metric(&p, "pgmux_client_timeouts_total", &[("kind", "query")]),
        Some(1.0)
    );
}

/// A client killed (SIGKILL) inside a transaction: its server is rolled
/// back and reused rather than closed, and nothing it wrote survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_server_is_rolled_back_and_reused() {
    let p = setup("t_killed", 1, "").await;
    let script = b"BEGIN;\nUPDATE t SET v = 1 WHERE id = 1;\nINSERT INTO t VALUES (2, 2);\n";
    let mut psql = psql_inside_a_transaction(&p, "t_killed", script, "idle in transaction").await;
    let su = superuser(cluster()).await;
    let before = backends(&su, "t_killed").await;
    signal(psql.id(), "-KILL");
    let _ = psql.wait();
    let b = client(&p, "t_killed").await;
    b.execute("UPDATE t SET v = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    let rows: i64 = b
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the killed client's insert was rolled back");
    assert_eq!(
        backends(&su, "t_killed").await,
        before,
        "the same server connection serves on"
    );
    assert_eq!(
        metric(
            &p,
            "pgmux_abandoned_transactions_total",
            &[("outcome", "recovered")]
        ),
        Some(1.0)
    );
}

/// A client killed while its query runs inside a transaction: pgmux cancels
/// the query, reads its replies, rolls back and reuses the server (the same
/// backend serves the next client at once, nothing written survives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_query_is_cancelled_and_the_server_reused() {
    let p = setup("t_killed_q", 1, "").await;
    let script = b"BEGIN;\nINSERT INTO t VALUES (2, 2);\nSELECT pg_sleep(30);\n";
    let mut psql = psql_inside_a_transaction(&p, "t_killed_q", script, "active").await;
    let su = superuser(cluster()).await;
    let before = backends(&su, "t_killed_q").await;
    signal(psql.id(), "-KILL");
    let _ = psql.wait();
    let started = Instant::now();
    let b = client(&p, "t_killed_q").await;
    let rows: i64 = b
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    let took = started.elapsed();
    assert_eq!(rows, 1, "the killed client's insert was rolled back");
    assert!(
        took < Duration::from_secs(5),
        "the next client waited {took:?}"
    );
    assert_eq!(
        backends(&su, "t_killed_q").await,
        before,
        "the same server connection serves on"
    );
    assert_eq!(
        metric(
            &p,
            "pgmux_abandoned_transactions_total",
            &[("outcome", "recovered")]
        ),
        Some(1.0)
    );
}

/// The backend pids serving database `name`.
async fn backends(su: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    su.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
        &[&name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Ways a client ends or derails a COPY or a batch; each runs on a direct
/// connection (the model) and through a pool of one server.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// Terminate inside COPY FROM STDIN (simple protocol).
    TerminateInCopy,
    /// Terminate inside COPY FROM STDIN started by Execute.
    TerminateInExtendedCopy,
    /// Terminate behind Parse/Bind/Execute with no Sync.
    TerminateUnsynced,
    /// The socket closed behind Parse/Bind/Execute with no Sync.
    CloseUnsynced,
    /// A temporary table made, then Terminate behind a batch with no Sync
    /// (the transaction never ended, so its pin was never checked).
    TerminateAfterTempTable,
    /// An extended COPY the server rejects mid-data, then a Sync with no
    /// CopyDone; the client goes on.
    RejectedExtendedCopy,
    /// A Query sent in place of CopyDone.
    QueryInsteadOfCopyDone,
    /// The socket closed right behind a COPY command and its first data,
    /// before the server said the COPY started.
    CloseBeforeCopyStarts,
    /// The same with a COPY started by Execute (its Sync consumed by it).
    CloseBeforeExtendedCopyStarts,
    /// The socket closed while a DISCARD ALL waits behind a long query
    /// (sent in the same write): the query is cancelled at once.
    CloseWhileDiscardWaits,
}

impl Leaving {
    const ALL: [Leaving; 10] = [
        Leaving::TerminateInCopy,
        Leaving::TerminateInExtendedCopy,
        Leaving::TerminateUnsynced,
        Leaving::CloseUnsynced,
        Leaving::TerminateAfterTempTable,
        Leaving::RejectedExtendedCopy,
        Leaving::QueryInsteadOfCopyDone,
        Leaving::CloseBeforeCopyStarts,
        Leaving::CloseBeforeExtendedCopyStarts,
        Leaving::CloseWhileDiscardWaits,
    ];
}

/// Runs `how` on a connection to `port`, returning the tags the client saw
/// once it recovered (for those that go on).
async fn leave(port: u16, name: &str, how: Leaving) -> String {
    use Leaving::*;
    let mut c = Raw::connect(port, name, PASSWORD, name).await;
    let mut seen = String::new();
    match how {
        TerminateInCopy => {
            c.query("COPY t FROM STDIN").flush().await;
            c.until(b'G').await;
            c.copy_data(b"5\t5\n").terminate().flush().await;
        }
        TerminateInExtendedCopy => {
            c.extended("COPY t FROM STDIN").sync().flush().await;
            c.until(b'G').await;
            c.copy_data(b"5\t5\n").terminate().flush().await;
        }
        TerminateAfterTempTable => {
            c.query("CREATE TEMP TABLE tt (a int)").round_trip().await;
            c.extended("SELECT 1");
            c.terminate().flush().await;
        }
        TerminateUnsynced | CloseUnsynced => {
            c.extended("INSERT INTO t VALUES (7, 7)");
            if matches!(how, TerminateUnsynced) {
                c.terminate();
            }
            c.flush().await;
        }
        RejectedExtendedCopy => {
            c.extended("COPY t FROM STDIN").sync().flush().await;
            c.until(b'G').await;
            c.copy_data(b"not a number\tx\n").flush().await;
            seen += &common::raw::tags(&c.until(b'E').await);
            seen += &common::raw::tags(&c.sync().round_trip().await);
            seen += &common::raw::tags(&c.query("SELECT 1").round_trip().await);
        }
        CloseWhileDiscardWaits => {
            c.query("SELECT pg_sleep(3)")
                .query("DISCARD ALL")
                .flush()
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        CloseBeforeExtendedCopyStarts => {
            c.extended("COPY t FROM STDIN").sync().flush().await;
        }
        CloseBeforeCopyStarts => {
            c.query("COPY t FROM STDIN")
                .copy_data(b"8\t8\n")
                .flush()
                .await;
        }
        QueryInsteadOfCopyDone => {
            c.query("COPY t FROM STDIN").flush().await;
            c.until(b'G').await;
            c.copy_data(b"6\t6\n").query("SELECT 1").flush().await;
            // PostgreSQL fails the COPY, then ends the session (protocol
            // synchronization lost).
            seen += &format!("{:?}", error_code(&c.until(b'E').await));
        }
    }
    drop(c);
    seen
}

/// A client that says goodbye (or vanishes) inside COPY or inside a batch
/// with no Sync, or that derails a COPY: the server is not held, nothing
/// it sent is committed, the next client is served at once by the same
/// server, and what the client saw is what PostgreSQL shows directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_mid_copy_or_batch_holds_no_server() {
    let name = "t_leave_copy";
    let p = setup(name, 1, "").await;
    let su = superuser(cluster()).await;
    let direct = direct_url(name);
    connect(&direct)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int, v int)")
        .await
        .unwrap();
    let count = |c: tokio_postgres::Client| async move {
        let row = tokio::time::timeout(
            Duration::from_secs(10),
            c.query_one("SELECT count(*) FROM t", &[]),
        )
        .await
        .expect("the next client is served")
        .unwrap();
        row.get::<_, i64>(0)
    };
    for how in Leaving::ALL {
        let model = leave(cluster().port(), name, how).await;
        let model_rows = count(connect(&direct).await.unwrap()).await;
        let got = leave(p.addr().port(), name, how).await;
        assert_eq!(got, model, "{how:?}: what the client saw");
        let started = Instant::now();
        let rows = count(client(&p, name).await).await;
        // Well inside the 2 s that recovery may take before it closes the
        // server instead: nothing here needs that bound.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{how:?}: the next client waited {:?}",
            started.elapsed()
        );
        assert_eq!(rows, model_rows, "{how:?}: rows left behind");
        let temp: i64 = client(&p, name)
            .await
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(temp, 0, "{how:?}: a temporary table stayed behind");
        assert_eq!(rows, 0, "{how:?}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                let states = server_states(name).await;
                states.iter().all(|s| s == "idle")
            })
            .await,
            "{how:?}: a server is left busy: {:?}",
            server_states(name).await
        );
        // The pool's one server serves on (the model's own backend may
        // take a moment to exit).
        assert!(
            eventually(Duration::from_secs(5), || async {
                backends(&superuser(cluster()).await, name).await.len() <= 1
            })
            .await,
            "{how:?}: {:?}",
            backends(&su, name).await
        );
    }
}
