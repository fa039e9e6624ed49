//! Named prepared statements in transaction mode, with real drivers and
//! more clients than servers.

mod common;

use std::time::Duration;

use common::raw::{error_code, tags, Raw};
use common::*;
use futures_util::future::join_all;

fn dsn(port: u16, name: &str) -> String {
    format!("host=127.0.0.1 port={port} user={name} dbname={name}")
}

/// pgmux in front of a fresh pgbench database; returns it and its dsn.
async fn pgbench_db(name: &str, size: u32, extra: &str) -> (pgmux::app::Proxy, String) {
    let p = setup(name, size, extra).await;
    let (ok, text) = pgbench(&["-i", "-q", "-s", "1"], &dsn(cluster().port(), name));
    assert!(ok, "{text}");
    let url = dsn(p.addr().port(), name);
    (p, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_many_clients_few_servers() {
    let (_p, url) = pgbench_db("t_pgbench", 4, "").await;
    for (script, jobs) in [("-S", "2"), ("-S", "64"), ("-b", "2"), ("-b", "64")] {
        let script_arg = if script == "-b" {
            vec!["-b", "tpcb-like"]
        } else {
            vec!["-S"]
        };
        let mut args = vec!["-n", "-M", "prepared", "-c", "64", "-j", jobs, "-t", "30"];
        args.extend(script_arg);
        let (ok, text) = tokio::task::block_in_place(|| pgbench(&args, &url));
        assert!(ok, "pgbench {args:?} failed:\n{text}");
        assert!(
            text.contains("number of transactions actually processed: 1920/1920"),
            "{text}"
        );
        assert!(
            !text.contains("number of failed transactions: ")
                || text.contains("number of failed transactions: 0 "),
            "{text}"
        );
    }
}

/// `pgbench -M extended` (a Parse of the unnamed statement in every
/// transaction) with the unnamed statement shared: 32 clients on 2 servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_with_shared_unnamed_statements() {
    let cfg = "track_unnamed_statements = true";
    let (_p, url) = pgbench_db("t_pgbench_unnamed", 2, cfg).await;
    for script in ["select-only", "tpcb-like"] {
        let args = [
            "-n", "-M", "extended", "-c", "32", "-j", "2", "-t", "30", "-b", script,
        ];
        let (ok, text) = tokio::task::block_in_place(|| pgbench(&args, &url));
        assert!(ok, "pgbench {args:?} failed:\n{text}");
        assert!(
            text.contains("number of transactions actually processed: 960/960"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_with_statement_cache_many_tasks() {
    use sqlx::{Connection, Row};
    let p = setup("t_sqlx", 4, "").await;
    let admin = client(&p, "t_sqlx").await;
    admin
        .batch_execute(
            "CREATE TABLE posts (id serial PRIMARY KEY, title text, views int DEFAULT 0)",
        )
        .await
        .unwrap();
    let url = format!(
        "postgres://t_sqlx:{PASSWORD}@127.0.0.1:{}/t_sqlx",
        p.addr().port()
    );
    let tasks = (0..100).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            // One connection per task, as each serverless instance has its own.
            let mut conn = sqlx::PgConnection::connect(&url)
                .await
                .expect("sqlx connect");
            for j in 0..5i32 {
                let v: i32 = sqlx::query_scalar("SELECT $1::int4 + 1")
                    .bind(i * 100 + j)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(v, i * 100 + j + 1);
                let s: String = sqlx::query_scalar("SELECT $1::text || '!'")
                    .bind(format!("t{i}"))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(s, format!("t{i}!"));
                let mut tx = conn.begin().await.unwrap();
                let id: i32 =
                    sqlx::query_scalar("INSERT INTO posts (title) VALUES ($1) RETURNING id")
                        .bind(format!("post {i}/{j}"))
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                sqlx::query("UPDATE posts SET views = views + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let row = sqlx::query("SELECT title, views FROM posts WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                assert_eq!(row.get::<String, _>(0), format!("post {i}/{j}"));
                assert_eq!(row.get::<i32, _>(1), 1);
                tx.commit().await.unwrap();
            }
            conn.close().await.unwrap();
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
    let n: i64 = admin
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statements_survive_pool_churn() {
    let p = setup("t_tpg", 2, "").await;
    let c = client(&p, "t_tpg").await;
    let stmt = c.prepare("SELECT $1::int8 * 3").await.unwrap();
    let churn = (0..8).map(|k| {
        let url = url(&p, "t_tpg");
        tokio::spawn(async move {
            let other = connect(&url).await.unwrap();
            for i in 0..30i64 {
                let s = other.prepare("SELECT $1::int8 + 1000").await.unwrap();
                let v: i64 = other.query_one(&s, &[&(i + k)]).await.unwrap().get(0);
                assert_eq!(v, i + k + 1000);
            }
        })
    });
    let churn = tokio::spawn(join_all(churn));
    for i in 0..100i64 {
        let v: i64 = c.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i * 3);
    }
    // Pipelined uses of two statements at once.
    let s2 = c.prepare("SELECT $1::text").await.unwrap();
    let futs = (0..40i64).map(|i| {
        let (c, stmt, s2) = (&c, &stmt, &s2);
        async move {
            if i % 2 == 0 {
                let v: i64 = c.query_one(stmt, &[&i]).await.unwrap().get(0);
                assert_eq!(v, i * 3);
            } else {
                let v: String = c.query_one(s2, &[&i.to_string()]).await.unwrap().get(0);
                assert_eq!(v, i.to_string());
            }
        }
    });
    join_all(futs).await;
    for r in churn.await.unwrap() {
        r.unwrap();
    }
}

async fn raw(p: &pgmux::app::Proxy, name: &str) -> Raw {
    Raw::connect(p.addr().port(), name, PASSWORD, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_keep_order_and_state() {
    let p = setup("t_perr", 1, "").await;
    let mut c = raw(&p, "t_perr").await;
    // A syntax error in the middle of a pipeline: the server skips to Sync.
    let r = c
        .parse("a", "SELECT 1")
        .bind("", "a", &[])
        .execute("")
        .parse("b", "SELEC 2")
        .bind("", "b", &[])
        .execute("")
        .parse("c", "SELECT 3")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "12DCEZ");
    assert_eq!(error_code(&r).as_deref(), Some("42601"));
    // The failed Parse registered nothing; the one after it never ran.
    let r = c.bind("", "b", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
    let r = c.bind("", "c", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
    let r = c
        .parse("b", "SELECT 2")
        .bind("", "b", &[])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "12DCZ");
    // Re-using a name is an error, as in PostgreSQL.
    let r = c.parse("a", "SELECT 9").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("42P05"));
    // Closing a never-prepared name succeeds; closing a real one frees the name.
    let r = c.close("never").sync().round_trip().await;
    assert_eq!(tags(&r), "3Z");
    let r = c
        .close("a")
        .parse("a", "SELECT 10")
        .bind("", "a", &[])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "312DCZ");
    assert_eq!(r[3].1[6..], *b"10");
    // pgmux's own names are not reachable.
    let r = c
        .bind("", "pgmux_1", &[])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
    // Nor through SQL: EXECUTE would run another client's statement and
    // DEALLOCATE pull it from under its clients.
    for sql in [
        "EXECUTE pgmux_1",
        "EXPLAIN EXECUTE pgmux_1",
        "DEALLOCATE pgmux_1",
        "DEALLOCATE PREPARE \"pgmux_1\"",
    ] {
        let r = c.query(sql).round_trip().await;
        assert_eq!(tags(&r), "EZ", "{sql}");
        assert_eq!(error_code(&r).as_deref(), Some("26000"), "{sql}");
    }
    let r = c.bind("", "b", &[]).execute("").sync().round_trip().await;
    assert_eq!(tags(&r), "2DCZ", "the shared statement is still there");
    // Inside a transaction the server raises it: the transaction fails,
    // as it would directly.
    c.query("BEGIN").round_trip().await;
    let r = c.query("EXECUTE pgmux_1").round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
    assert_eq!(r.last().map(|m| m.1.clone()), Some(b"E".to_vec()));
    c.query("ROLLBACK").round_trip().await;
    // Pipelined behind a BEGIN the client has not seen answered yet: the
    // transaction still fails, and the COMMIT rolls back.
    c.query("BEGIN")
        .query("EXECUTE pgmux_1")
        .query("COMMIT")
        .flush()
        .await;
    let mut statuses = Vec::new();
    let mut tags_seen = Vec::new();
    while statuses.len() < 3 {
        let (tag, body) = c.read().await;
        match tag {
            b'Z' => statuses.push(body[0]),
            b'C' => tags_seen.push(String::from_utf8_lossy(&body).into_owned()),
            _ => {}
        }
    }
    assert_eq!(statuses, b"TEI", "{tags_seen:?}");
    assert_eq!(tags_seen, ["BEGIN\0", "ROLLBACK\0"]);
    // Describe + Flush (asyncpg's way) answers without a Sync.
    c.parse("d", "SELECT $1::int AS x")
        .describe("d")
        .flush_msg()
        .flush()
        .await;
    assert_eq!(c.read().await.0, b'1');
    assert_eq!(c.read().await.0, b't');
    assert_eq!(c.read().await.0, b'T');
    let r = c
        .bind("", "d", &["5"])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "2DCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_keep_everyone_consistent() {
    let p = setup("t_dealloc", 1, "").await;
    let mut a = raw(&p, "t_dealloc").await;
    let mut b = raw(&p, "t_dealloc").await;
    assert_eq!(
        tags(&a.parse("s", "SELECT 1").sync().round_trip().await),
        "1Z"
    );
    assert_eq!(
        tags(&b.parse("s", "SELECT 1").sync().round_trip().await),
        "1Z"
    );
    assert_eq!(tags(&a.query("DEALLOCATE ALL").round_trip().await), "CZ");
    let r = a.bind("", "s", &[]).execute("").sync().round_trip().await;
    assert_eq!(
        error_code(&r).as_deref(),
        Some("26000"),
        "a's names are gone"
    );
    let r = b.bind("", "s", &[]).execute("").sync().round_trip().await;
    assert_eq!(
        tags(&r),
        "2DCZ",
        "b's statement is prepared again on the server"
    );
    assert_eq!(tags(&b.query("DEALLOCATE s").round_trip().await), "CZ");
    let r = b.bind("", "s", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
    assert_eq!(
        tags(&a.parse("s", "SELECT 2").sync().round_trip().await),
        "1Z"
    );
    assert_eq!(tags(&a.query("DISCARD ALL").round_trip().await), "CZ");
    let r = a.bind("", "s", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_reprepares_after_one_error() {
    let p = setup("t_alter", 1, "").await;
    let admin = client(&p, "t_alter").await;
    admin
        .batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let mut c = raw(&p, "t_alter").await;
    let r = c
        .parse("q", "SELECT * FROM t")
        .bind("", "q", &[])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "12DCZ");
    admin
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let r = c.bind("", "q", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("0A000"));
    let r = c.bind("", "q", &[]).execute("").sync().round_trip().await;
    assert_eq!(tags(&r), "2DCZ", "the statement was prepared again: {r:?}");
    assert_eq!(r[1].1[..2], [0, 2], "the row has the new column");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_never_see_each_others_statements() {
    let p = setup("t_isolate", 1, "").await;
    let mut a = raw(&p, "t_isolate").await;
    let mut b = raw(&p, "t_isolate").await;
    // The same name means different statements for different clients.
    assert_eq!(
        tags(&a.parse("s1", "SELECT 'a'").sync().round_trip().await),
        "1Z"
    );
    assert_eq!(
        tags(&b.parse("s1", "SELECT 'b'").sync().round_trip().await),
        "1Z"
    );
    for _ in 0..3 {
        let ra = a.bind("", "s1", &[]).execute("").sync().round_trip().await;
        let rb = b.bind("", "s1", &[]).execute("").sync().round_trip().await;
        assert_eq!(ra[1].1[6..], *b"a");
        assert_eq!(rb[1].1[6..], *b"b");
    }
    let mut c = raw(&p, "t_isolate").await;
    let r = c.bind("", "s1", &[]).execute("").sync().round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"));
}

/// The unnamed statement is not shared by default: a client reaches the
/// server's unnamed statement only if it parsed it there during its current
/// hold of that server, never one another client left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_of_one_client_is_never_another_clients() {
    let p = setup("t_unnamed_iso", 1, "").await;
    let mut a = raw(&p, "t_unnamed_iso").await;
    let mut b = raw(&p, "t_unnamed_iso").await;
    a.parse("", "SELECT 'secret of a'")
        .bind("", "", &[])
        .execute("")
        .sync();
    assert_eq!(tags(&a.round_trip().await), "12DCZ");
    // Same server (pool of 1), which still has a's unnamed statement.
    b.bind("", "", &[]).execute("").sync();
    let got = b.round_trip().await;
    assert_eq!(error_code(&got).as_deref(), Some("26000"), "{}", tags(&got));
    // Inside a transaction the server stays held, and the unnamed
    // statement with it.
    a.query("BEGIN");
    assert_eq!(tags(&a.round_trip().await), "CZ");
    a.parse("", "SELECT 'still a'").sync();
    assert_eq!(tags(&a.round_trip().await), "1Z");
    a.bind("", "", &[]).execute("").sync();
    let got = a.round_trip().await;
    assert_eq!(tags(&got), "2DCZ");
    assert!(got
        .iter()
        .any(|(t, b)| *t == b'D' && b.ends_with(b"still a")));
    a.query("COMMIT");
    assert_eq!(tags(&a.round_trip().await), "CZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_statements_working() {
    let p = setup("t_evict", 1, "max_prepared_statements = 3").await;
    let mut c = raw(&p, "t_evict").await;
    for i in 0..10 {
        let r = c
            .parse(&format!("s{i}"), &format!("SELECT {i}"))
            .sync()
            .round_trip()
            .await;
        assert_eq!(tags(&r), "1Z");
    }
    for i in (0..10).rev() {
        let r = c
            .bind("", &format!("s{i}"), &[])
            .execute("")
            .sync()
            .round_trip()
            .await;
        assert_eq!(tags(&r), "2DCZ");
        assert_eq!(r[1].1[6..], *i.to_string().as_bytes());
    }
    let held: i64 = client(&p, "t_evict")
        .await
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        held <= 3 + 1,
        "the server holds at most max_prepared_statements ({held})"
    );
}

/// A tiny deterministic generator, so failures replay.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

// Errors here come from parameter input (always at Bind) or parsing, never
// from evaluation: whether `10 / $1` fails at Bind or Execute depends on
// custom versus generic plans, which shared statements legitimately change.
const QUERIES: &[&str] = &[
    "SELECT $1::int * 2",
    "SELECT $1::int4 - 1",
    "SELECT $1::text || 'x'",
    "SELEC oops",
];
const ARGS: &[&str] = &["0", "7", "x"];

/// One random batch of extended-protocol messages ending in Sync (or, with
/// `simple`, sometimes one simple Query); returns a description for failure
/// messages.
fn random_batch(rng: &mut Lcg, c: &mut Raw, names: &[&str; 3], simple: bool) -> String {
    let mut desc = String::new();
    if simple && rng.next(6) == 0 {
        c.query("SELECT 1");
        return "Q".into();
    }
    for _ in 0..=rng.next(5) {
        let name = names[rng.next(3) as usize];
        match rng.next(5) {
            0 => {
                let q = QUERIES[rng.next(4) as usize];
                desc.push_str(&format!("P({name},{q}) "));
                c.parse(name, q);
            }
            1 | 2 => {
                let arg = ARGS[rng.next(3) as usize];
                desc.push_str(&format!("BE({name},{arg}) "));
                c.bind("", name, &[arg]).execute("");
            }
            3 => {
                desc.push_str(&format!("C({name}) "));
                c.close(name);
            }
            _ => {
                desc.push_str(&format!("D({name}) "));
                c.describe(name);
            }
        }
    }
    c.sync();
    desc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_sequences_match_direct_postgres() {
    randomized_against_direct("t_random", "", ["a", "b", "c"], false).await;
}

/// The same with the unnamed statement shared too: it must behave as
/// PostgreSQL's own (replaced by the next Parse, destroyed by a simple
/// Query, kept between transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_unnamed_statements_match_direct_postgres() {
    let cfg = "track_unnamed_statements = true";
    randomized_against_direct("t_random_unnamed", cfg, ["", "a", "b"], true).await;
}

async fn randomized_against_direct(
    db: &'static str,
    cfg: &str,
    names: [&'static str; 3],
    simple: bool,
) {
    let p = setup(db, 2, cfg).await;
    let pg_port = cluster().port();
    // PGMUX_SEED replays or varies the run; the default is fixed.
    let seed: u64 = std::env::var("PGMUX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let tasks = (0..6u64).map(|client| {
        let port = p.addr().port();
        tokio::spawn(async move {
            let mut via = Raw::connect(port, db, PASSWORD, db).await;
            let mut direct = Raw::connect(pg_port, db, PASSWORD, db).await;
            let (mut r1, mut r2) = (Lcg(seed * 1000 + client), Lcg(seed * 1000 + client));
            let mut history = Vec::new();
            for batch in 0..100 {
                history.push(random_batch(&mut r1, &mut via, &names, simple));
                random_batch(&mut r2, &mut direct, &names, simple);
                let got = via.round_trip().await;
                let want = direct.round_trip().await;
                let strip = |v: &[(u8, Vec<u8>)]| -> Vec<(u8, Vec<u8>)> {
                    // Errors are compared by SQLSTATE; everything else byte for byte.
                    v.iter()
                        .map(|(t, b)| {
                            if *t == b'E' {
                                (
                                    *t,
                                    error_code(&[(*t, b.clone())])
                                        .unwrap_or_default()
                                        .into_bytes(),
                                )
                            } else {
                                (*t, b.clone())
                            }
                        })
                        .collect()
                };
                assert_eq!(
                    strip(&got),
                    strip(&want),
                    "client {client} batch {batch}: {} vs {}\nhistory:\n{}",
                    tags(&got),
                    tags(&want),
                    history.join("\n")
                );
                let last = history.len() - 1;
                history[last].push_str(&format!(" => {}", tags(&want)));
                tokio::time::sleep(Duration::from_millis(rng_pause(client, batch))).await;
            }
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
}

fn rng_pause(client: u64, batch: u64) -> u64 {
    (client * 7 + batch * 3) % 4
}

/// A simple Query destroys the unnamed statement whatever it runs, SQL
/// PREPARE and EXECUTE included (which pgmux rewrites): same answers as
/// directly, with the unnamed statement shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_and_execute_destroy_the_unnamed_statement() {
    let p = setup("t_unnamed_sql", 2, "track_unnamed_statements = true").await;
    let mut answers = Vec::new();
    for port in [cluster().port(), p.addr().port()] {
        let mut c = Raw::connect(port, "t_unnamed_sql", PASSWORD, "t_unnamed_sql").await;
        let mut got = Vec::new();
        for step in 0..6 {
            match step {
                0 | 3 => c.parse("", "SELECT 1").sync(),
                1 => c.query("PREPARE p AS SELECT 2"),
                4 => c.query("EXECUTE p"),
                _ => c.bind("", "", &[]).execute("").sync(),
            };
            let msgs = c.round_trip().await;
            got.push((tags(&msgs), error_code(&msgs)));
        }
        answers.push(got);
    }
    assert_eq!(answers[1], answers[0], "pgmux, then PostgreSQL");
}

/// Replies to a pipeline sent in one write, up to `readies` ReadyForQuery,
/// as tags with errors by SQLSTATE.
async fn pipeline(c: &mut Raw, readies: usize) -> String {
    c.flush().await;
    let mut seen = String::new();
    for _ in 0..readies {
        let r = tokio::time::timeout(Duration::from_secs(10), c.until_ready())
            .await
            .expect("every ReadyForQuery arrives");
        seen += &tags(&r);
        if let Some(code) = error_code(&r) {
            seen += &format!("({code})");
        }
    }
    seen
}

/// Clients that send their next requests before reading the replies
/// (pipelining): a COPY whose data and CopyDone follow the command at once,
/// with a batch behind it; DEALLOCATE ALL with the same statement
/// prepared and used again behind it, also behind a failed transaction's
/// ROLLBACK; DISCARD ALL behind such a ROLLBACK, and refused inside a
/// transaction block. Through pgmux the client sees what PostgreSQL
/// answers directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_copy_and_deallocate_match_direct_postgres() {
    let name = "t_pipeline";
    let p = setup(name, 1, "").await;
    let direct_port = cluster().port();
    let mut d = Raw::connect(direct_port, name, PASSWORD, name).await;
    d.query("CREATE TABLE IF NOT EXISTS t (a int)")
        .round_trip()
        .await;
    let mut answers = Vec::new();
    for port in [direct_port, p.addr().port()] {
        let mut c = Raw::connect(port, name, PASSWORD, name).await;
        let mut seen = Vec::new();
        c.query("COPY t FROM STDIN")
            .copy_data(b"1\n")
            .copy_done()
            .parse("", "SELECT count(*) FROM t")
            .bind("", "", &[])
            .execute("")
            .sync();
        seen.push(pipeline(&mut c, 2).await);
        c.parse("s1", "SELECT 1").sync();
        seen.push(pipeline(&mut c, 1).await);
        c.query("DEALLOCATE ALL")
            .parse("s1", "SELECT 1")
            .describe("s1")
            .bind("", "s1", &[])
            .execute("")
            .sync();
        seen.push(pipeline(&mut c, 2).await);
        // DEALLOCATE ALL behind the ROLLBACK of a failed transaction, and
        // the statement used again behind it.
        c.query("BEGIN")
            .query("SELECT 1/0")
            .query("ROLLBACK")
            .query("DEALLOCATE ALL")
            .parse("s1", "SELECT 1")
            .bind("", "s1", &[])
            .execute("")
            .sync();
        seen.push(pipeline(&mut c, 5).await);
        c.query("BEGIN")
            .query("SELECT 1/0")
            .query("ROLLBACK")
            .query("DISCARD ALL")
            .bind("", "s1", &[])
            .execute("")
            .sync();
        seen.push(pipeline(&mut c, 5).await);
        c.query("BEGIN")
            .query("DISCARD ALL")
            .query("ROLLBACK")
            .parse("s2", "SELECT 2")
            .bind("", "s2", &[])
            .execute("")
            .sync();
        seen.push(pipeline(&mut c, 4).await);
        answers.push(seen);
    }
    assert_eq!(answers[1], answers[0], "through pgmux, then directly");
    d.query("DROP TABLE t").round_trip().await;
}
