//! Session state in transaction mode: a client's state follows it from
//! server to server and never reaches another client. Every scenario runs
//! the same steps on direct PostgreSQL connections (the model) and through
//! pgmux, and compares every answer.

mod common;

use common::raw::{error_code, Raw};
use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// One step of a scenario: which client runs what.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A simple Query (may hold several statements).
    Simple(usize, &'static str),
    /// An extended-protocol query with text parameters.
    Extended(usize, &'static str, &'static [&'static str]),
}

/// What a step answered: its rows as text, or its SQLSTATE.
async fn answer(clients: &[Client], step: Step) -> String {
    match step {
        Step::Simple(i, sql) => match clients[i].simple_query(sql).await {
            Ok(msgs) => {
                let rows: Vec<Vec<Option<&str>>> = msgs
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|c| r.get(c)).collect())
                        }
                        _ => None,
                    })
                    .collect();
                format!("{rows:?}")
            }
            Err(e) => match sqlstate(&e) {
                Some(s) => format!("ERROR {s:?}"),
                None => format!("ERROR {e}"),
            },
        },
        Step::Extended(i, sql, params) => {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            match clients[i].query(sql, &params).await {
                Ok(rows) => {
                    let rows: Vec<Vec<Option<String>>> = rows
                        .iter()
                        .map(|r| (0..r.len()).map(|c| r.get(c)).collect())
                        .collect();
                    format!("{rows:?}")
                }
                Err(e) => match sqlstate(&e) {
                    Some(s) => format!("ERROR {s:?}"),
                    None => format!("ERROR {e}"),
                },
            }
        }
    }
}

/// Runs `steps` on `n` direct connections and on `n` connections through
/// pgmux with each pool size in `sizes`, and asserts that every answer is
/// the same.
async fn same_as_direct(name: &str, n: usize, sizes: &[u32], steps: &[Step]) {
    same_as_direct_with(name, n, sizes, steps, "", "").await;
}

/// [`same_as_direct`] with extra connection-string keys for every client
/// (`options=...`, say) and extra `[pgmux]` lines (`pool_mode`, say).
async fn same_as_direct_with(
    name: &str,
    n: usize,
    sizes: &[u32],
    steps: &[Step],
    conn_extra: &str,
    pgmux_extra: &str,
) {
    let model_url = format!("{} {conn_extra}", direct_url(name));
    let mut model = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..n {
        direct.push(connect(&model_url).await.expect("direct connection"));
    }
    for s in steps {
        model.push(answer(&direct, *s).await);
    }
    drop(direct);
    for &size in sizes {
        let p = pgmux::app::Proxy::start(config(cluster(), name, size, pgmux_extra))
            .await
            .expect("start pgmux");
        let mut clients = Vec::new();
        for _ in 0..n {
            let url = format!("{} {conn_extra}", url(&p, name));
            clients.push(connect(&url).await.expect("connect through pgmux"));
        }
        for (i, s) in steps.iter().enumerate() {
            let got = answer(&clients, *s).await;
            assert_eq!(
                got, model[i],
                "pool of {size}, step {i} {s:?}: pgmux answered {got}, PostgreSQL {}",
                model[i]
            );
        }
        drop(clients);
        p.shutdown().await;
    }
}

/// Runs `sql` on a direct connection to the test's database, as its owner.
async fn direct_setup(name: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    connect(&direct_url(name)).await?.batch_execute(sql).await
}

/// Creates the test's database and runs `sql` in it as its owner.
async fn db_with(name: &str, sql: &str) {
    create_db(cluster(), name).await;
    direct_setup(name, sql).await.expect("the test's objects");
}

/// Creates the test's database with a superuser login role `name`, and the
/// plain roles `<name>_low` and `<name>_reader` (the first a member of the
/// second).
async fn superuser_db(name: &str) {
    create_db(cluster(), name).await;
    let su = superuser(cluster()).await;
    su.batch_execute(&format!(
        "ALTER ROLE {name} SUPERUSER; CREATE ROLE {name}_low; CREATE ROLE {name}_reader; \
         GRANT {name}_reader TO {name}_low"
    ))
    .await
    .expect("roles");
}

const WHO: &str = "SELECT session_user, current_user, current_setting('is_superuser')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_authorization_follows_its_client() {
    use Step::*;
    superuser_db("t_ident_sa").await;
    let steps = [
        Simple(0, "SET SESSION AUTHORIZATION t_ident_sa_low"),
        Simple(0, WHO),
        // Another client: its own login identity, whichever server it gets.
        Simple(1, WHO),
        Simple(2, WHO),
        // The first keeps the identity it chose in its next transactions.
        Simple(0, WHO),
        // Lowered privileges stay lowered: no superuser-only catalog.
        Simple(0, "SELECT count(*) FROM pg_authid"),
        Simple(0, "RESET SESSION AUTHORIZATION"),
        Simple(0, WHO),
        Simple(1, "SET SESSION AUTHORIZATION t_ident_sa_low; SELECT 1"),
        Simple(2, WHO),
        Simple(1, "SET SESSION AUTHORIZATION DEFAULT"),
        Simple(1, WHO),
    ];
    same_as_direct("t_ident_sa", 3, &[1, 3], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_privileges_stay_lowered_on_another_server() {
    use Step::*;
    superuser_db("t_ident_move").await;
    // Client 1 keeps the server client 0 lowered its privileges on, so
    // client 0's next transactions run on other servers.
    let steps = [
        Simple(0, "SET SESSION AUTHORIZATION t_ident_move_low"),
        Simple(1, "BEGIN"),
        Simple(1, WHO),
        Simple(0, WHO),
        Simple(0, "SELECT count(*) FROM pg_authid"),
        Simple(2, "BEGIN"),
        Simple(2, "SET LOCAL ROLE t_ident_move_reader"),
        Simple(0, WHO),
        Simple(2, "COMMIT"),
        Simple(1, "COMMIT"),
        Simple(0, "SET ROLE t_ident_move_reader"),
        Simple(1, "BEGIN"),
        Simple(0, WHO),
        Simple(2, WHO),
        Simple(1, "ROLLBACK"),
        Simple(0, WHO),
    ];
    same_as_direct("t_ident_move", 3, &[3], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_follows_its_client() {
    use Step::*;
    superuser_db("t_ident_role").await;
    let steps = [
        Simple(0, "SET ROLE t_ident_role_reader"),
        Simple(0, WHO),
        Simple(1, WHO),
        Simple(0, "SHOW role"),
        Simple(1, "SHOW role"),
        // Rolled back, and transaction-local: PostgreSQL's rules.
        Simple(1, "BEGIN; SET ROLE t_ident_role_low; ROLLBACK"),
        Simple(1, WHO),
        Simple(1, "BEGIN"),
        Simple(1, "SET LOCAL ROLE t_ident_role_low"),
        Simple(1, WHO),
        Simple(1, "COMMIT"),
        Simple(1, WHO),
        Simple(
            1,
            "BEGIN; SET ROLE t_ident_role_low; SAVEPOINT a; RESET ROLE; ROLLBACK TO a; COMMIT",
        ),
        Simple(1, WHO),
        Simple(0, WHO),
        // A failing statement in a transaction with a role change.
        Simple(2, "BEGIN; SET ROLE t_ident_role_low; SELECT 1/0"),
        Simple(2, "ROLLBACK"),
        Simple(2, WHO),
        // set_config in the extended protocol, name and value as parameters.
        Extended(
            2,
            "SELECT set_config($1, $2, false)",
            &["role", "t_ident_role_reader"],
        ),
        Simple(2, WHO),
        Simple(0, "RESET ROLE"),
        Simple(0, WHO),
        Simple(1, "RESET ROLE"),
        Simple(2, "SET ROLE NONE"),
        Simple(0, WHO),
        Simple(1, WHO),
        Simple(2, WHO),
    ];
    same_as_direct("t_ident_role", 3, &[1, 3], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_changed_inside_a_function_is_seen() {
    use Step::*;
    superuser_db("t_ident_fn").await;
    let su = connect(&format!(
        "host=127.0.0.1 port={} user=t_ident_fn password={PASSWORD} dbname=t_ident_fn",
        cluster().port()
    ))
    .await
    .unwrap();
    // Neither statement text names a role: only the server's own
    // ParameterStatus reports (session_authorization, is_superuser) tell.
    su.batch_execute(
        "CREATE FUNCTION lower_me() RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM set_config('session_' || 'authorization', 't_ident_fn_low', false); END $$; \
         CREATE FUNCTION become_reader() RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM set_config('ro' || 'le', 't_ident_fn_reader', false); END $$",
    )
    .await
    .unwrap();
    drop(su);
    let steps = [
        Simple(0, "SELECT lower_me()"),
        Simple(1, WHO),
        Simple(0, WHO),
        Simple(1, "SELECT become_reader()"),
        Simple(0, WHO),
        Simple(2, WHO),
        Simple(1, WHO),
    ];
    same_as_direct("t_ident_fn", 3, &[1], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_identity_statements_follow_their_client() {
    use Step::*;
    superuser_db("t_ident_prep").await;
    // tokio-postgres prepares a named statement for every extended query;
    // the same text from another client shares pgmux's server statement.
    let steps = [
        Extended(
            0,
            "SELECT set_config('role', $1, false)",
            &["t_ident_prep_reader"],
        ),
        Extended(1, "SELECT session_user::text, current_user::text", &[]),
        Extended(0, "SELECT session_user::text, current_user::text", &[]),
        Extended(
            1,
            "SELECT set_config('role', $1, false)",
            &["t_ident_prep_low"],
        ),
        Extended(2, "SELECT session_user::text, current_user::text", &[]),
        Extended(1, "SELECT session_user::text, current_user::text", &[]),
        Extended(0, "SELECT session_user::text, current_user::text", &[]),
    ];
    same_as_direct("t_ident_prep", 3, &[1, 2], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_never_passes_on_an_identity() {
    superuser_db("t_ident_sess").await;
    // A reset query that does not touch identity: pgmux restores it anyway.
    let p = setup_existing(
        "t_ident_sess",
        1,
        "pool_mode = \"session\"\nserver_reset_query = \"SELECT 1\"",
    )
    .await;
    let a = client(&p, "t_ident_sess").await;
    a.batch_execute("SET SESSION AUTHORIZATION t_ident_sess_low")
        .await
        .unwrap();
    drop(a);
    let b = client(&p, "t_ident_sess").await;
    let row = b
        .query_one("SELECT session_user::text, current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("t_ident_sess".to_owned(), "t_ident_sess".to_owned())
    );
}

/// Starts pgmux in front of a database the test already created.
async fn setup_existing(name: &str, size: u32, extra: &str) -> pgmux::app::Proxy {
    pgmux::app::Proxy::start(config(cluster(), name, size, extra))
        .await
        .expect("start pgmux")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_their_client() {
    use Step::*;
    create_db(cluster(), "t_set_follow").await;
    connect(&format!(
        "host=127.0.0.1 port={} user=t_set_follow password={PASSWORD} dbname=t_set_follow",
        cluster().port()
    ))
    .await
    .unwrap()
    .batch_execute("CREATE SCHEMA tenant_a; CREATE TABLE tenant_a.t (v text); INSERT INTO tenant_a.t VALUES ('a')")
    .await
    .unwrap();
    let steps = [
        Simple(0, "SET search_path TO tenant_a, public"),
        Simple(1, "SHOW search_path"),
        Simple(0, "SHOW search_path"),
        Simple(0, "SELECT v FROM t"),
        Simple(1, "SELECT count(*) FROM pg_tables WHERE tablename = 't' AND schemaname = current_schema()"),
        Simple(1, "SET statement_timeout = '50ms'"),
        Simple(0, "SELECT pg_sleep(0.2)::text"),
        Simple(1, "SELECT pg_sleep(0.2)::text"),
        Simple(1, "SHOW statement_timeout"),
        Simple(2, "SHOW statement_timeout"),
        // Several statements in one Query, the last one a SET.
        Simple(2, "SELECT 1; SET work_mem = '8MB'"),
        Simple(0, "SHOW work_mem"),
        Simple(2, "SHOW work_mem"),
        // set_config in the extended protocol.
        Extended(2, "SELECT set_config('search_path', $1, false)", &["pg_catalog"]),
        Simple(2, "SHOW search_path"),
        Simple(1, "SHOW search_path"),
        // RESET and RESET ALL.
        Simple(1, "RESET statement_timeout"),
        Simple(1, "SELECT pg_sleep(0.1)::text"),
        Simple(0, "RESET ALL"),
        Simple(0, "SHOW search_path"),
        Simple(2, "SHOW search_path"),
        Simple(2, "DISCARD ALL"),
        Simple(2, "SHOW work_mem"),
        // pg_settings' UPDATE rule sets the setting.
        Simple(
            1,
            "UPDATE pg_settings SET setting = 'pg_catalog' WHERE name = 'search_path'",
        ),
        Simple(1, "SHOW search_path"),
        Simple(2, "SHOW search_path"),
    ];
    same_as_direct("t_set_follow", 3, &[1, 3], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_keep_transaction_rules() {
    use Step::*;
    create_db(cluster(), "t_set_tx").await;
    let steps = [
        Simple(0, "BEGIN; SET search_path TO pg_catalog; ROLLBACK"),
        Simple(0, "SHOW search_path"),
        Simple(0, "BEGIN"),
        Simple(0, "SET LOCAL work_mem = '9MB'"),
        Simple(0, "SHOW work_mem"),
        Simple(0, "COMMIT"),
        Simple(0, "SHOW work_mem"),
        Simple(
            1,
            "BEGIN; SET work_mem = '7MB'; SAVEPOINT s; SET work_mem = '6MB'; ROLLBACK TO s; COMMIT",
        ),
        Simple(1, "SHOW work_mem"),
        Simple(0, "SHOW work_mem"),
        // A failed statement after a SET in the same transaction.
        Simple(0, "BEGIN; SET lock_timeout = '3s'; SELECT 1/0"),
        Simple(0, "ROLLBACK"),
        Simple(0, "SHOW lock_timeout"),
        Simple(1, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        Simple(1, "SHOW default_transaction_read_only"),
        Simple(0, "SHOW default_transaction_read_only"),
        Simple(1, "CREATE TABLE t_ro (a int)"),
    ];
    same_as_direct("t_set_tx", 2, &[1, 2], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_that_cannot_move_pins_its_client() {
    use Step::*;
    create_db(cluster(), "t_pin").await;
    let steps = [
        Simple(0, "CREATE TEMP TABLE tt (a int); INSERT INTO tt VALUES (1)"),
        Simple(0, "SELECT count(*) FROM tt"),
        Simple(1, "SELECT count(*) FROM tt"),
        Simple(0, "SELECT pg_advisory_lock(42)::text"),
        Simple(1, "SELECT pg_try_advisory_lock(42)"),
        Simple(0, "SELECT count(*) FROM tt"),
        Simple(0, "SELECT pg_advisory_unlock(42)"),
        Simple(1, "SELECT pg_try_advisory_lock(42)"),
        Simple(1, "SELECT pg_advisory_unlock_all()::text"),
        Simple(0, "PREPARE mine AS SELECT 7"),
        Simple(1, "EXECUTE mine"),
        Simple(0, "EXECUTE mine"),
        Simple(1, "PREPARE mine AS SELECT 8"),
        Simple(1, "EXECUTE mine"),
        Simple(1, "DEALLOCATE mine"),
        Simple(
            0,
            "DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
        ),
        Simple(0, "FETCH 1 FROM c"),
        Simple(0, "FETCH 1 FROM c"),
        Simple(1, "FETCH 1 FROM c"),
        Simple(0, "DISCARD ALL"),
        Simple(0, "SELECT count(*) FROM tt"),
        Simple(
            1,
            "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
        ),
    ];
    same_as_direct("t_pin", 2, &[2, 3], &steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_visible_and_end_with_the_state() {
    create_db(cluster(), "t_pin_seen").await;
    let p = setup_existing("t_pin_seen", 1, "").await;
    let pins = |p: &pgmux::app::Proxy| -> Vec<String> {
        p.context()
            .clients
            .all()
            .iter()
            .filter_map(|c| c.pin().map(str::to_owned))
            .collect()
    };
    // pgmux asks the server once the client has its answer: wait for it.
    let settled = |p: &pgmux::app::Proxy, want: f64| {
        let p = p.context().clone();
        async move {
            eventually(std::time::Duration::from_secs(5), || {
                let p = p.clone();
                async move {
                    let text = p.render_metrics();
                    sample(&parse_prometheus(&text), "pgmux_pinned_clients", &[]) == Some(want)
                }
            })
            .await
        }
    };
    let a = client(&p, "t_pin_seen").await;
    a.batch_execute("CREATE TEMP TABLE tt (a int)")
        .await
        .unwrap();
    assert!(settled(&p, 1.0).await);
    assert_eq!(
        metric(&p, "pgmux_pins_total", &[("reason", "temp_table")]).unwrap_or(0.0),
        1.0
    );
    assert_eq!(pins(&p), vec!["temp_table".to_owned()]);
    // The state is gone: the client lets its server go.
    a.batch_execute("DROP TABLE tt").await.unwrap();
    assert!(settled(&p, 0.0).await);
    assert!(pins(&p).is_empty());
    // A pinned client that leaves: its server is reset, then reused.
    a.batch_execute("SELECT pg_advisory_lock(7); CREATE TEMP TABLE t2 (a int)")
        .await
        .unwrap();
    assert!(settled(&p, 1.0).await);
    assert_eq!(pins(&p), vec!["temp_table".to_owned()]);
    drop(a);
    let b = client(&p, "t_pin_seen").await;
    let row = b
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
             pg_try_advisory_lock(7)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert!(
        row.get::<_, bool>(1),
        "the advisory lock went with the reset"
    );
    assert!(settled(&p, 1.0).await, "b holds the advisory lock now");
}

/// A small deterministic generator (the test needs no crate for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Random interleavings of three clients setting, resetting and reading
/// settings, and preparing, executing and deallocating SQL-level
/// statements, inside and outside transactions, over pools of one and two
/// servers, every answer compared with three direct connections. At most
/// as many clients are inside a transaction as there are servers, since a
/// client in a transaction keeps its server (a sequential script would
/// otherwise wait on itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_settings_interleavings_match_direct() {
    use Step::*;
    const SETS: &[&str] = &[
        "SET search_path TO pg_catalog, public",
        "SET search_path TO public",
        "SET work_mem = '5MB'",
        "SET SESSION work_mem = '6MB'",
        "SET statement_timeout = '9s'",
        "SET DateStyle = 'German'",
        "SET application_name = 'rnd'",
        "SELECT set_config('lock_timeout', '4s', false)",
        "RESET work_mem",
        "RESET search_path",
        "RESET statement_timeout",
        "RESET ALL",
        "SET LOCAL work_mem = '7MB'",
        "SELECT 1; SET lock_timeout = '2s'",
        "PREPARE s1 AS SELECT current_setting('work_mem')",
        "PREPARE s2 (int) AS SELECT $1 * 2",
        "EXECUTE s1",
        "EXECUTE s2(21)",
        "DEALLOCATE s1",
        "DEALLOCATE ALL",
    ];
    const READS: &str = "SELECT current_setting('search_path'), current_setting('work_mem'), \
         current_setting('statement_timeout'), current_setting('DateStyle'), \
         current_setting('lock_timeout'), current_setting('application_name')";
    let seed: u64 = std::env::var("PGMUX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let steps_per_pool: usize = std::env::var("PGMUX_INTERLEAVE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    create_db(cluster(), "t_set_random").await;
    for pool in [1usize, 2] {
        let mut r = Lcg(seed * 31 + pool as u64);
        let mut in_tx = [false; 3];
        let mut steps = Vec::new();
        while steps.len() < steps_per_pool {
            let c = r.below(3);
            let open = in_tx.iter().filter(|t| **t).count();
            if !in_tx[c] && open >= pool {
                continue;
            }
            let sql: &'static str = match r.below(10) {
                0 if !in_tx[c] => {
                    in_tx[c] = true;
                    "BEGIN"
                }
                1 if in_tx[c] => {
                    in_tx[c] = false;
                    if r.below(2) == 0 {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    }
                }
                2..=5 => READS,
                _ => SETS[r.below(SETS.len())],
            };
            steps.push(Simple(c, sql));
        }
        for (c, t) in in_tx.iter().enumerate() {
            if *t {
                steps.push(Simple(c, "COMMIT"));
            }
        }
        same_as_direct("t_set_random", 3, &[pool as u32], &steps).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_gives_back_the_startup_value() {
    use Step::*;
    create_db(cluster(), "t_reset_startup").await;
    let options = "options='-c DateStyle=German -c TimeZone=Europe/Paris \
                   -c IntervalStyle=iso_8601 -c search_path=pg_catalog'";
    const SHOW: &str = "SELECT current_setting('DateStyle'), current_setting('TimeZone'), \
         current_setting('IntervalStyle'), current_setting('search_path')";
    let steps = [
        Simple(0, SHOW),
        Simple(0, "SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'"),
        Simple(1, SHOW),
        Simple(0, SHOW),
        Simple(0, "RESET DateStyle"),
        Simple(0, SHOW),
        Simple(0, "RESET ALL"),
        Simple(0, SHOW),
        Simple(1, "SET search_path = public; SET IntervalStyle = postgres"),
        Simple(1, "RESET search_path"),
        Simple(1, SHOW),
        Simple(1, "BEGIN; RESET ALL; ROLLBACK"),
        Simple(1, SHOW),
        Simple(1, "DISCARD ALL"),
        Simple(1, SHOW),
        Simple(0, SHOW),
    ];
    same_as_direct_with("t_reset_startup", 2, &[1, 2], &steps, options, "").await;
    let session = "pool_mode = \"session\"";
    same_as_direct_with("t_reset_startup", 2, &[2], &steps, options, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_can_be_refused_instead_of_pinned() {
    create_db(cluster(), "t_pin_error").await;
    let p = setup_existing("t_pin_error", 1, "session_state = \"error\"").await;
    let c = client(&p, "t_pin_error").await;
    for sql in [
        "CREATE TEMP TABLE tt (a int)",
        "SELECT pg_advisory_lock(1)",
        "LISTEN jobs",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql}");
        let message = err.as_db_error().map(|d| d.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("session_state")),
            "{message:?}"
        );
        // The extended protocol too (tokio-postgres prepares first).
        let err = c.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql}");
    }
    // A CREATE that may make a temporary object is asked about, not
    // refused; a plain table leaves no state and no pin.
    c.batch_execute("CREATE TABLE plain (a int); SELECT 1 AS a INTO plain2")
        .await
        .unwrap();
    // SQL-level PREPARE follows the client instead: allowed.
    c.batch_execute("PREPARE q AS SELECT 1; ").await.unwrap();
    let rows = c.simple_query("EXECUTE q").await.unwrap();
    let one = rows.iter().any(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0) == Some("1"),
        _ => false,
    });
    assert!(one, "EXECUTE q answers 1");
    // The client goes on, and a second one shares the only server.
    let other = client(&p, "t_pin_error").await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    assert_eq!(
        other
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    assert_eq!(metric(&p, "pgmux_pinned_clients", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_are_their_clients_own() {
    use Step::*;
    create_db(cluster(), "t_sql_prep").await;
    let steps = [
        Simple(0, "PREPARE mine AS SELECT 1"),
        Simple(1, "EXECUTE mine"),
        Simple(1, "PREPARE mine AS SELECT 2"),
        Simple(0, "EXECUTE mine"),
        Simple(1, "EXECUTE mine"),
        Simple(2, "EXECUTE mine"),
        Simple(0, "PREPARE mine AS SELECT 3"),
        Simple(0, "DEALLOCATE mine"),
        Simple(1, "EXECUTE mine"),
        Simple(0, "EXECUTE mine"),
        Simple(2, "PREPARE add_one (int) AS SELECT $1 + 1"),
        Simple(2, "EXECUTE add_one(41)"),
        Simple(2, "execute ADD_ONE (1);"),
        Simple(0, "PREPARE \"Quoted\" AS SELECT 'q'"),
        Simple(0, "EXECUTE \"Quoted\""),
        Simple(0, "EXECUTE quoted"),
        // A duplicate inside a transaction aborts it, as directly.
        Simple(1, "BEGIN"),
        Simple(1, "PREPARE mine AS SELECT 4"),
        Simple(1, "SELECT 1"),
        Simple(1, "ROLLBACK"),
        Simple(1, "EXECUTE mine"),
        // Same text as another client's: shared on the server, still theirs.
        Simple(0, "PREPARE other AS SELECT 2"),
        Simple(0, "EXECUTE other"),
        Simple(2, "DEALLOCATE ALL"),
        Simple(2, "EXECUTE add_one(1)"),
        Simple(1, "EXECUTE mine"),
        Simple(0, "PREPARE bad AS SELECT * FROM no_such_table"),
        Simple(0, "EXECUTE bad"),
    ];
    same_as_direct("t_sql_prep", 3, &[1, 3], &steps).await;
}

/// Custom settings, the key of row-level security in multi-tenant
/// databases: however a client sets one (SET, set_config with the name in
/// the text or in a bound parameter, a DO block, an escaped name), no other
/// client ever reads its value, and it follows its own client. A setting
/// made on a server reads as an empty string, never as another client's
/// value, where a new connection reads NULL: the policy uses nullif, as
/// RLS policies for pooled connections do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_settings_never_reach_another_client() {
    use Step::*;
    let name = "t_custom_set";
    db_with(
        name,
        "CREATE TABLE docs (tenant text, body text); \
         INSERT INTO docs VALUES ('A', 'a1'), ('B', 'b1'); \
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs FORCE ROW LEVEL SECURITY; \
         CREATE POLICY by_tenant ON docs \
           USING (tenant = nullif(current_setting('app.tenant_id', true), ''))",
    )
    .await;
    const DOCS: &str = "SELECT coalesce(string_agg(body, ',' ORDER BY body), '-') FROM docs";
    const OTHER: &str = "SELECT nullif(current_setting('app.other', true), '')";
    const HIDDEN: &str = "SELECT nullif(current_setting('app.hidden', true), '')";
    let steps = [
        Simple(0, "SET app.tenant_id = 'A'"),
        Simple(0, DOCS),
        Simple(1, DOCS),
        Simple(0, DOCS),
        Extended(1, "SELECT set_config('app.tenant_id', $1, false)", &["B"]),
        Simple(0, DOCS),
        Simple(1, DOCS),
        // The name in a bound parameter.
        Extended(0, "SELECT set_config($1, $2, false)", &["app.other", "C"]),
        Simple(1, OTHER),
        Simple(0, OTHER),
        Extended(
            0,
            "SELECT set_config($1, $2, false)",
            &["app.tenant_id", "B"],
        ),
        Simple(0, DOCS),
        Simple(1, "RESET app.tenant_id"),
        Simple(1, DOCS),
        Simple(0, DOCS),
        // Code pgmux cannot read.
        Simple(
            1,
            "DO $$ BEGIN PERFORM set_config('app.tenant_id', 'A', false); END $$",
        ),
        Simple(1, DOCS),
        Simple(0, DOCS),
        Simple(2, DOCS),
        // A name pgmux cannot read from the text: never seen by another.
        Simple(2, "SELECT set_config(E'app\\x2ehidden', 'H', false)"),
        Simple(0, HIDDEN),
        Simple(1, HIDDEN),
        // SET LOCAL and a rolled-back SET leave nothing.
        Simple(2, "BEGIN; SET LOCAL app.tenant_id = 'A'; SELECT 1; COMMIT"),
        Simple(1, "BEGIN; SET app.tenant_id = 'B'; ROLLBACK"),
        Simple(1, DOCS),
        Simple(2, DOCS),
        Simple(0, "RESET ALL"),
        Simple(0, DOCS),
        Simple(1, DOCS),
    ];
    same_as_direct(name, 3, &[1, 2], &steps).await;
}

/// A startup setting named after a keyword (`select.x`) is reset on the
/// server with its name quoted: the next client's transaction runs, and
/// both clients read what they read on direct connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_named_startup_setting_does_not_break_the_next_client() {
    let name = "t_kw_option";
    create_db(cluster(), name).await;
    /// Client `a` started with `-c select.x=1`, then `b` without; the
    /// answers of both, in order.
    async fn answers(a_url: &str, b_url: &str) -> Vec<Option<String>> {
        const READ: &str = "SELECT nullif(current_setting('select.x', true), '')";
        let a = connect(&format!("{a_url} options='-c select.x=1'"))
            .await
            .unwrap();
        let b = connect(b_url).await.unwrap();
        let mut got = Vec::new();
        for (c, sql) in [
            (&a, READ),
            (&b, READ),
            (&a, READ),
            (&a, "RESET ALL"),
            (&a, READ),
        ] {
            let row = c
                .simple_query(sql)
                .await
                .expect("the transaction runs")
                .into_iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                    _ => None,
                });
            got.push(row.flatten());
        }
        got
    }
    let model = answers(&direct_url(name), &direct_url(name)).await;
    assert_eq!(
        model,
        [
            Some("1".into()),
            None,
            Some("1".into()),
            None,
            Some("1".into())
        ]
    );
    let p = setup_existing(name, 1, "").await;
    assert_eq!(answers(&url(&p, name), &url(&p, name)).await, model);
    p.shutdown().await;
}

/// Temporary relations made without the word TEMP pin their client just
/// as CREATE TEMP does: no other client reads them or is shadowed by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_objects_made_without_temp_pin_their_client() {
    use Step::*;
    let name = "t_pin_notemp";
    db_with(
        name,
        "CREATE TABLE shared (a int); INSERT INTO shared VALUES (0)",
    )
    .await;
    const MINE: &str = "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()";
    let steps = [
        Simple(
            0,
            "CREATE TABLE pg_temp.t1 (a int); INSERT INTO t1 VALUES (1)",
        ),
        Simple(1, "SELECT to_regclass('t1') IS NULL"),
        Simple(0, "SELECT count(*) FROM t1"),
        Simple(1, "SELECT 1 AS a INTO TEMP t2"),
        Simple(0, "SELECT to_regclass('t2') IS NULL"),
        Simple(1, "SELECT count(*) FROM t2"),
        // A table that shadows a shared one, made by SELECT ... INTO with
        // pg_temp first in the search path.
        Simple(2, "SET search_path = pg_temp, public"),
        Simple(2, "SELECT 5 AS a INTO shared"),
        Simple(0, "SELECT a FROM shared"),
        Simple(2, "SELECT a FROM shared"),
        Simple(0, "CREATE OR REPLACE TEMP VIEW v AS SELECT 1 AS x"),
        Simple(1, "SELECT to_regclass('v') IS NULL"),
        Simple(
            0,
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 42'",
        ),
        Simple(0, "SELECT pg_temp.f()"),
        Simple(0, "DISCARD TEMP"),
        Simple(0, MINE),
        Simple(1, "DISCARD ALL"),
        Simple(2, "DISCARD ALL"),
        Simple(2, "SELECT a FROM shared"),
        Simple(1, MINE),
        Simple(2, MINE),
    ];
    same_as_direct(name, 3, &[3, 4], &steps).await;
}

/// The application's own functions, called from a plain SELECT, may set
/// a custom setting (the usual row-level-security key), a built-in
/// setting or the role: pgmux cannot see their bodies, so such a
/// transaction counts as code it cannot read, and nothing reaches another
/// client, through text or bound parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_functions_never_pass_settings_on() {
    use Step::*;
    let name = "t_app_fn_set";
    superuser_db(name).await;
    direct_setup(
        name,
        &format!(
            "CREATE TABLE docs (tenant text, body text); \
             INSERT INTO docs VALUES ('A', 'a1'), ('B', 'b1'); \
             GRANT SELECT ON docs TO {name}_low; \
             ALTER TABLE docs ENABLE ROW LEVEL SECURITY; ALTER TABLE docs FORCE ROW LEVEL SECURITY; \
             CREATE POLICY by_tenant ON docs \
               USING (tenant = nullif(current_setting('app.tenant_id', true), '')); \
             CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE sql \
               AS $$ SELECT set_config('app.tenant_id', t, false) $$; \
             CREATE FUNCTION set_hidden(t text) RETURNS text LANGUAGE sql \
               AS $$ SELECT set_config('app.' || 'hidden', t, false) $$; \
             CREATE FUNCTION app_path() RETURNS text LANGUAGE plpgsql \
               AS $$ BEGIN SET search_path = pg_catalog; RETURN 'ok'; END $$; \
             CREATE FUNCTION lower_me() RETURNS text LANGUAGE plpgsql \
               AS $$ BEGIN SET ROLE {name}_low; RETURN 'ok'; END $$"
        ),
    )
    .await
    .unwrap();
    // The login is a superuser (to test SET ROLE), which row-level
    // security lets through: the setting itself is read too.
    const DOCS: &str = "SELECT coalesce(string_agg(body, ',' ORDER BY body), '-'), \
         nullif(current_setting('app.tenant_id', true), '') FROM docs";
    const PATH: &str = "SELECT current_setting('search_path')";
    const HIDDEN: &str = "SELECT nullif(current_setting('app.hidden', true), '')";
    const ROLE: &str = "SELECT current_user = session_user";
    let steps = [
        Simple(0, "SELECT set_tenant('A')"),
        Simple(0, DOCS),
        Simple(1, DOCS),
        Simple(2, DOCS),
        Extended(1, "SELECT public.set_tenant($1)", &["B"]),
        Simple(1, DOCS),
        Simple(0, DOCS),
        Simple(2, DOCS),
        Simple(2, "SELECT body FROM docs WHERE set_tenant('A') IS NULL"),
        Simple(2, DOCS),
        Simple(0, DOCS),
        // A name no text shows: reset rather than passed on.
        Simple(1, "SELECT set_hidden('H')"),
        Simple(0, HIDDEN),
        Simple(2, HIDDEN),
        Simple(0, "SELECT app_path()"),
        Simple(0, PATH),
        Simple(1, PATH),
        Simple(2, PATH),
        Simple(1, "SELECT lower_me()"),
        Simple(1, ROLE),
        Simple(0, ROLE),
        Simple(2, ROLE),
        Simple(1, "RESET ROLE"),
        Simple(1, ROLE),
        Simple(0, "RESET ALL"),
        Simple(0, DOCS),
        Simple(1, DOCS),
        Simple(2, DOCS),
    ];
    same_as_direct(name, 3, &[1, 2], &steps).await;
}

/// The application's own functions may also make state that cannot move:
/// a temporary table without the word TEMP, a session advisory lock,
/// LISTEN. Their client keeps its server, and no other client sees the
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_functions_that_make_session_state_pin_their_client() {
    use Step::*;
    let name = "t_app_fn_pin";
    db_with(name,
        "CREATE FUNCTION scratch() RETURNS int LANGUAGE plpgsql \
           AS $$ BEGIN CREATE TABLE pg_temp.scratch (x int); RETURN 1; END $$; \
         CREATE FUNCTION hold() RETURNS void LANGUAGE sql AS $$ SELECT pg_advisory_lock(4242) $$; \
         CREATE FUNCTION free() RETURNS boolean LANGUAGE sql AS $$ SELECT pg_advisory_unlock(4242) $$; \
         CREATE FUNCTION hear() RETURNS int LANGUAGE plpgsql AS $$ BEGIN LISTEN news; RETURN 1; END $$",
    )
    .await;
    const LOCKS: &str = "SELECT count(*) FROM pg_locks \
         WHERE locktype = 'advisory' AND pid = pg_backend_pid()";
    const HEARS: &str = "SELECT count(*) FROM pg_listening_channels()";
    let steps = [
        Simple(0, "SELECT scratch()"),
        Simple(1, "SELECT to_regclass('scratch') IS NULL"),
        Simple(0, "SELECT count(*) FROM scratch"),
        Simple(1, "SELECT hold()"),
        Simple(0, LOCKS),
        Simple(2, LOCKS),
        Simple(1, LOCKS),
        Simple(1, "SELECT free()"),
        Simple(1, LOCKS),
        Simple(2, "SELECT hear()"),
        Simple(0, HEARS),
        Simple(1, HEARS),
        Simple(2, HEARS),
        Simple(0, "DISCARD ALL"),
        Simple(2, "DISCARD ALL"),
        Simple(1, "SELECT to_regclass('scratch') IS NULL"),
        Simple(2, HEARS),
    ];
    same_as_direct(name, 3, &[3, 4], &steps).await;
}

/// A trigger (or a view, a column default, a policy) runs code no
/// statement text shows. With `server_reset_query_always`, every
/// transaction ends with the check that follows code pgmux cannot read:
/// what the trigger set stays its client's and reaches no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_query_always_covers_code_no_text_shows() {
    use Step::*;
    let name = "t_reset_always";
    db_with(
        name,
        "CREATE TABLE orders (tenant text); \
         CREATE FUNCTION note_tenant() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           PERFORM set_config('app.tenant_id', NEW.tenant, false); \
           PERFORM set_config('search_path', 'pg_catalog, public', false); \
           RETURN NEW; END $$; \
         CREATE TRIGGER note BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION note_tenant()",
    )
    .await;
    const SEEN: &str = "SELECT nullif(current_setting('app.tenant_id', true), ''), \
         current_setting('search_path')";
    let steps = [
        Simple(0, "INSERT INTO orders VALUES ('A')"),
        Simple(1, SEEN),
        Simple(0, SEEN),
        Extended(1, "INSERT INTO orders VALUES ($1)", &["B"]),
        Simple(0, SEEN),
        Simple(1, SEEN),
        Simple(2, SEEN),
    ];
    same_as_direct_with(
        name,
        3,
        &[1, 2],
        &steps,
        "",
        "server_reset_query_always = true",
    )
    .await;
}

/// The common case pays nothing: the statements of pgbench, sqlx and ORMs
/// (built-in functions, column lists, `IN`, `ANY`, casts with a type
/// modifier) end their transactions with no check of the server, while a
/// function of the application's own costs one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_statements_cost_no_check() {
    let name = "t_no_check";
    db_with(
        name,
        "CREATE TABLE accounts (aid int PRIMARY KEY, abalance int, filler text); \
         CREATE TABLE history (aid int, delta int, mtime timestamp); \
         INSERT INTO accounts SELECT g, 0, '' FROM generate_series(1, 10) AS g; \
         CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    .await;
    let p = pgmux::app::Proxy::start(config(cluster(), name, 1, ""))
        .await
        .expect("start pgmux");
    let c = connect(&url(&p, name))
        .await
        .expect("connect through pgmux");
    c.batch_execute(
        "BEGIN; UPDATE accounts SET abalance = abalance + 5 WHERE aid = 3; \
         SELECT abalance FROM accounts WHERE aid = 3; \
         INSERT INTO history (aid, delta, mtime) VALUES (3, 5, CURRENT_TIMESTAMP); END",
    )
    .await
    .unwrap();
    for sql in [
        "SELECT count(*), coalesce(max(abalance), 0), now() FROM accounts WHERE aid = ANY($1)",
        "SELECT aid FROM accounts WHERE aid IN (1, 2) AND lower(filler) = '' LIMIT 1 OFFSET 0",
        "SELECT CAST(abalance AS numeric(10, 2)), filler::varchar(20) FROM accounts \
         WHERE aid = $1::int4",
        "INSERT INTO history (aid, delta, mtime) VALUES ($1, 1, now()) RETURNING aid",
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE aid = $1)",
    ] {
        let stmt = c.prepare(sql).await.unwrap();
        let arg: Box<dyn tokio_postgres::types::ToSql + Sync> = if sql.contains("ANY") {
            Box::new(vec![1i32, 2])
        } else {
            Box::new(1i32)
        };
        let args = [arg.as_ref()];
        c.query(&stmt, &args[..stmt.params().len()]).await.unwrap();
    }
    let checks = |kind| metric(&p, "pgmux_session_checks_total", &[("kind", kind)]).unwrap_or(0.0);
    for kind in ["code", "settings", "identity", "pin"] {
        assert_eq!(checks(kind), 0.0, "{kind} checks after ordinary statements");
    }
    // Preparing runs nothing; running does.
    let stmt = c.prepare("SELECT mine()").await.unwrap();
    assert_eq!(checks("code"), 0.0, "no check after preparing");
    c.query(&stmt, &[]).await.unwrap();
    assert_eq!(
        checks("code"),
        1.0,
        "one check after a function pgmux does not know"
    );
    assert_eq!(checks("settings") + checks("identity") + checks("pin"), 0.0);
    drop(c);
    p.shutdown().await;
}

/// One entry of the session-state grammar: its text, and what it does to
/// the generator's view of which clients must keep a server.
struct Form {
    sql: &'static str,
    /// Bound text parameters (extended protocol) when not empty.
    params: &'static [&'static str],
    /// It may leave state that keeps the client on its server.
    pins: bool,
    /// Allowed only outside a transaction block.
    outside_tx: bool,
}

const fn form(sql: &'static str) -> Form {
    Form {
        sql,
        params: &[],
        pins: false,
        outside_tx: false,
    }
}

/// Every way the grammar changes session state: settings in all their
/// spellings (text, bound parameters, DO, functions of the database's own,
/// a computed name, SET LOCAL, RESET), the role (directly and in a
/// function), temporary tables (with and without TEMP, in a function),
/// advisory locks, LISTEN, WITH HOLD cursors, SQL PREPARE / EXECUTE /
/// DEALLOCATE, DISCARD ALL. (COPY that fails or is left has tests of its
/// own in tests/serverless.rs and tests/prepared.rs: tokio-postgres sends a
/// dropped sink's CopyFail whenever its connection task gets to it, so a
/// direct session is not a deterministic model for it.)
const GRAMMAR: &[Form] = &[
    form("SET app.tenant_id = 'A'"),
    form("SELECT set_config('app.tenant_id', 'C', false)"),
    Form {
        params: &["app.tenant_id", "D"],
        ..form("SELECT set_config($1, $2, false)")
    },
    Form {
        params: &["O"],
        ..form("SELECT set_config('app.other', $1, false)")
    },
    form("SELECT set_tenant('E')"),
    form("SELECT set_hidden('H')"),
    form("DO $$ BEGIN PERFORM set_config('app.other', 'F', false); END $$"),
    form("SET search_path TO pg_catalog, public"),
    form("SELECT app_path()"),
    form("SET LOCAL app.tenant_id = 'L'"),
    form("SET work_mem = '5MB'"),
    form("RESET app.tenant_id"),
    form("RESET ALL"),
    form("SET ROLE t_grammar_low"),
    form("SELECT lower_me()"),
    form("RESET ROLE"),
    Form {
        pins: true,
        ..form("CREATE TEMP TABLE IF NOT EXISTS tt (a int)")
    },
    Form {
        pins: true,
        ..form("CREATE TABLE IF NOT EXISTS pg_temp.t2 (a int)")
    },
    Form {
        pins: true,
        ..form("SELECT scratch()")
    },
    Form {
        pins: true,
        ..form("SELECT pg_try_advisory_lock(7)")
    },
    form("SELECT pg_advisory_unlock_all()"),
    Form {
        pins: true,
        ..form("LISTEN ch")
    },
    form("UNLISTEN *"),
    Form {
        pins: true,
        ..form("DECLARE cur CURSOR WITH HOLD FOR SELECT 1")
    },
    form("CLOSE ALL"),
    form("PREPARE p1 AS SELECT current_setting('work_mem')"),
    form("EXECUTE p1"),
    form("DEALLOCATE p1"),
    Form {
        outside_tx: true,
        ..form("DISCARD ALL")
    },
    form("SAVEPOINT s"),
    form("ROLLBACK TO SAVEPOINT s"),
    form("SELECT set_config('app.tenant_id', 'S', true)"),
    form("SET \"app.tenant_id\" = 'Q'"),
    form("UPDATE pg_settings SET setting = 'public' WHERE name = 'search_path'"),
    form("SET SESSION AUTHORIZATION t_grammar_low"),
    form("RESET SESSION AUTHORIZATION"),
    Form {
        params: &["G"],
        ..form("SELECT public.set_tenant($1)")
    },
    Form {
        params: &[],
        ..form("DO $$ BEGIN SET ROLE t_grammar_low; END $$")
    },
    Form {
        pins: true,
        ..form("SELECT 1 AS a INTO TEMP t3")
    },
    form("DISCARD TEMP"),
    form("SELECT pg_advisory_unlock(7)"),
    form("DEALLOCATE ALL"),
];

/// What a client reads back of its own session.
const GRAMMAR_READ: &str = "SELECT nullif(current_setting('app.tenant_id', true), ''), \
     nullif(current_setting('app.other', true), ''), current_setting('search_path'), \
     current_setting('work_mem'), current_user, to_regclass('tt') IS NOT NULL, \
     to_regclass('t2') IS NOT NULL, to_regclass('scratch') IS NOT NULL, \
     (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors), \
     (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())";

/// What a newly arriving client finds on a server: everything a session
/// can hold, which must be what a new direct connection finds (the census).
const CENSUS: &str = "SELECT nullif(current_setting('app.tenant_id', true), ''), \
     nullif(current_setting('app.other', true), ''), \
     nullif(current_setting('app.hidden', true), ''), current_setting('search_path'), \
     current_setting('work_mem'), current_user, session_user, \
     (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
     (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors), \
     (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
     (SELECT count(*) FROM pg_prepared_statements WHERE name NOT LIKE 'pgmux\\_%')";

/// Runs one step of the grammar test.
async fn grammar_answer(clients: &[Client], c: usize, f: &Form) -> String {
    let step = if f.params.is_empty() {
        Step::Simple(c, f.sql)
    } else {
        Step::Extended(c, f.sql, f.params)
    };
    answer(clients, step).await
}

/// The census: one probe client per server nobody holds, each inside a
/// transaction (so each keeps a server of its own while it reads), every
/// answer equal to a new direct connection's.
async fn census(p: &pgmux::app::Proxy, name: &str, idle: usize, clean: &str, at: usize) {
    let mut probes = Vec::new();
    for _ in 0..idle {
        let probe = connect(&url(p, name)).await.expect("probe");
        probe.batch_execute("BEGIN").await.expect("probe BEGIN");
        probes.push(probe);
    }
    for (i, probe) in probes.iter().enumerate() {
        let got = answer(std::slice::from_ref(probe), Step::Simple(0, CENSUS)).await;
        assert_eq!(
            got, clean,
            "step {at}: server {i} of {idle} idle ones is not clean"
        );
    }
    for probe in &probes {
        probe.batch_execute("COMMIT").await.expect("probe COMMIT");
    }
}

/// The differential test of isolation: random sequences drawn from a
/// grammar of session-state changes, from three clients through pools of
/// one, two and three servers, every answer compared with three direct
/// sessions; and after every step, the census of every server nobody holds
/// compared with a new direct connection. A client that is inside a
/// transaction or may keep its server (state that pins) counts as holding
/// one, and at most as many hold one as there are servers (a sequential
/// script would otherwise wait on itself). `PGMUX_SEED` and
/// `PGMUX_GRAMMAR_STEPS` run other and longer sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_session_state_matches_direct_and_leaves_servers_clean() {
    let name = "t_grammar";
    superuser_db(name).await;
    direct_setup(
        name,
        "CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE sql \
           AS $$ SELECT set_config('app.tenant_id', t, false) $$; \
         CREATE FUNCTION set_hidden(t text) RETURNS text LANGUAGE sql \
           AS $$ SELECT set_config('app.' || 'hidden', t, false) $$; \
         CREATE FUNCTION app_path() RETURNS text LANGUAGE plpgsql \
           AS $$ BEGIN SET search_path = pg_catalog; RETURN 'ok'; END $$; \
         CREATE FUNCTION lower_me() RETURNS text LANGUAGE plpgsql \
           AS $$ BEGIN SET ROLE t_grammar_low; RETURN 'ok'; END $$; \
         CREATE FUNCTION scratch() RETURNS int LANGUAGE plpgsql \
           AS $$ BEGIN CREATE TABLE IF NOT EXISTS pg_temp.scratch (x int); RETURN 1; END $$",
    )
    .await
    .unwrap();
    let seed: u64 = std::env::var("PGMUX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let steps_per_pool: usize = std::env::var("PGMUX_GRAMMAR_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let clean = {
        let fresh = connect(&direct_url(name)).await.unwrap();
        answer(std::slice::from_ref(&fresh), Step::Simple(0, CENSUS)).await
    };
    let step_timeout = std::time::Duration::from_secs(10);
    for pool in [1usize, 2, 3] {
        // The script: (client, form index or None for BEGIN/COMMIT/ROLLBACK/read).
        let mut r = Lcg(seed * 131 + pool as u64);
        let (mut in_tx, mut pinned) = ([false; 3], [false; 3]);
        let mut script: Vec<(usize, &'static str, Option<&Form>)> = Vec::new();
        while script.len() < steps_per_pool {
            let c = r.below(3);
            let holds = |t: &[bool; 3], p: &[bool; 3], i: usize| t[i] || p[i];
            let held = (0..3).filter(|&i| holds(&in_tx, &pinned, i)).count();
            if !holds(&in_tx, &pinned, c) && held >= pool {
                continue;
            }
            match r.below(12) {
                0 if !in_tx[c] => {
                    in_tx[c] = true;
                    script.push((c, "BEGIN", None));
                }
                1 if in_tx[c] => {
                    in_tx[c] = false;
                    let end = if r.below(2) == 0 {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    script.push((c, end, None));
                }
                2..=4 => script.push((c, GRAMMAR_READ, None)),
                _ => {
                    let f = &GRAMMAR[r.below(GRAMMAR.len())];
                    if f.outside_tx && in_tx[c] {
                        continue;
                    }
                    if f.sql == "DISCARD ALL" {
                        pinned[c] = false;
                    }
                    pinned[c] |= f.pins;
                    script.push((c, f.sql, Some(f)));
                }
            }
        }
        for (c, _) in in_tx.iter().enumerate().filter(|(_, open)| **open) {
            script.push((c, "COMMIT", None));
        }
        if std::env::var("PGMUX_GRAMMAR_PRINT").is_ok() {
            for (i, (c, sql, _)) in script.iter().enumerate() {
                eprintln!("pool {pool} step {i}: client {c}: {sql}");
            }
        }
        // The model: three direct sessions.
        let mut model = Vec::new();
        {
            let direct = [
                connect(&direct_url(name)).await.unwrap(),
                connect(&direct_url(name)).await.unwrap(),
                connect(&direct_url(name)).await.unwrap(),
            ];
            for (c, sql, f) in &script {
                model.push(match f {
                    Some(f) => grammar_answer(&direct, *c, f).await,
                    None => answer(&direct, Step::Simple(*c, sql)).await,
                });
            }
        }
        let p = pgmux::app::Proxy::start(config(cluster(), name, pool as u32, ""))
            .await
            .expect("start pgmux");
        let clients = [
            connect(&url(&p, name)).await.unwrap(),
            connect(&url(&p, name)).await.unwrap(),
            connect(&url(&p, name)).await.unwrap(),
        ];
        let (mut in_tx, mut pinned) = ([false; 3], [false; 3]);
        for (i, (c, sql, f)) in script.iter().enumerate() {
            let run = async {
                match f {
                    Some(f) => grammar_answer(&clients, *c, f).await,
                    None => answer(&clients, Step::Simple(*c, sql)).await,
                }
            };
            let got = tokio::time::timeout(step_timeout, run)
                .await
                .unwrap_or_else(|_| panic!("pool of {pool}, step {i} ({c}: {sql}) waited"));
            assert_eq!(
                got, model[i],
                "pool of {pool}, step {i} ({c}: {sql}): pgmux answered {got}, PostgreSQL {}",
                model[i]
            );
            match (*sql, f) {
                ("BEGIN", None) => in_tx[*c] = true,
                ("COMMIT" | "ROLLBACK", None) => in_tx[*c] = false,
                (_, Some(f)) if f.sql == "DISCARD ALL" => pinned[*c] = false,
                (_, Some(f)) => pinned[*c] |= f.pins,
                _ => {}
            }
            let held = (0..3).filter(|&k| in_tx[k] || pinned[k]).count();
            let idle = pool.saturating_sub(held);
            tokio::time::timeout(step_timeout, census(&p, name, idle, &clean, i))
                .await
                .unwrap_or_else(|_| panic!("pool of {pool}, census after step {i} waited"));
        }
        drop(clients);
        p.shutdown().await;
    }
}

/// The checks pgmux runs on a client's session name their operators with
/// their schema: a client whose `search_path` puts an `=` of its own
/// first (or whose database has an exact-match `=` in `public`) cannot
/// make them answer falsely, so its settings are still read back and
/// reset, and its temporary table still keeps its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_of_the_clients_own_do_not_fool_the_checks() {
    let name = "t_own_ops";
    db_with(
        name,
        "CREATE SCHEMA evil; \
         CREATE FUNCTION evil.never(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false'; \
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.never); \
         CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.never); \
         CREATE FUNCTION public.never(oid, regclass) RETURNS boolean LANGUAGE sql \
           AS 'SELECT false'; \
         CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.never)",
    )
    .await;
    let p = pgmux::app::Proxy::start(config(cluster(), name, 1, ""))
        .await
        .expect("start pgmux");
    let (a, b) = (
        connect(&url(&p, name)).await.unwrap(),
        connect(&url(&p, name)).await.unwrap(),
    );
    a.batch_execute("SET search_path = evil, pg_catalog, public; SET work_mem = '7MB'")
        .await
        .unwrap();
    let row = b
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('search_path')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("4MB".to_owned(), "\"$user\", public".to_owned())
    );
    let row = a
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('search_path')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "7MB", "a keeps its own settings");
    // With public's exact-match `=` for (oid, regclass) in the way.
    a.batch_execute("RESET ALL; CREATE TEMP TABLE shadow (a int)")
        .await
        .unwrap();
    let pinned = || {
        let p = p.context().clone();
        async move {
            eventually(std::time::Duration::from_secs(5), || {
                let p = p.clone();
                async move {
                    sample(
                        &parse_prometheus(&p.render_metrics()),
                        "pgmux_pinned_clients",
                        &[],
                    ) == Some(1.0)
                }
            })
            .await
        }
    };
    assert!(pinned().await, "the temporary table keeps a's server");
    drop((a, b));
    p.shutdown().await;
}

/// What a client reads of its tenant key (NULL when unset or reset).
const TENANT: &str = "SELECT nullif(current_setting('app.tenant_id', true), '')";

/// The test's database with `set_tenant(t)` (how an application sets its
/// row-level-security key, in a function of its own), and pgmux in front
/// with a pool of one and extra `[pgmux]` lines.
async fn tenant_db(name: &str, pgmux_extra: &str) -> pgmux::app::Proxy {
    db_with(
        name,
        "CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE sql \
           AS $$ SELECT set_config('app.tenant_id', t, false) $$",
    )
    .await;
    pgmux::app::Proxy::start(config(cluster(), name, 1, pgmux_extra))
        .await
        .expect("start pgmux")
}

/// Texts pgmux's lexer would read differently from PostgreSQL: a line
/// comment ended by a carriage return, and a client encoding (SJIS) whose
/// second byte of a character may be a backslash, which PostgreSQL
/// converts before it lexes. The function each hides still sets nothing
/// another client can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_the_lexer_could_misread_pass_nothing_on() {
    let name = "t_misread";
    let p = tenant_db(name, "").await;
    let other = connect(&url(&p, name)).await.unwrap();
    let seen = || async {
        other
            .query_one(TENANT, &[])
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };
    let mut raw = Raw::connect(p.addr().port(), name, PASSWORD, name).await;
    raw.query("SELECT 1 --\r, set_tenant('CR')");
    assert!(error_code(&raw.round_trip().await).is_none());
    assert_eq!(seen().await, None, "a carriage return ends a line comment");
    // A client of its own: the first one now holds app.tenant_id, which
    // the parameter sync resets for the next client whatever set it.
    let mut raw = Raw::connect(p.addr().port(), name, PASSWORD, name).await;
    raw.query("SET client_encoding = 'SJIS'");
    assert!(error_code(&raw.round_trip().await).is_none());
    // 0x95 0x5C is one SJIS character: the string ends at the quote after it.
    raw.query_bytes(b"SELECT E'\x95\x5c', set_tenant('SJIS') -- '");
    assert!(error_code(&raw.round_trip().await).is_none());
    assert_eq!(seen().await, None, "SJIS text is checked");
    drop(raw);
    drop(other);
    p.shutdown().await;
}

/// With statement tracking off (`max_prepared_statements = 0`), a
/// statement prepared on a server stays there under a name any client may
/// run, and its Binds carry no text: a server that holds one that calls
/// code pgmux cannot read ends every hold with the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_statements_that_call_unknown_code_are_checked_every_time() {
    let name = "t_untracked_code";
    let p = tenant_db(name, "max_prepared_statements = 0").await;
    let (a, b) = (
        connect(&url(&p, name)).await.unwrap(),
        connect(&url(&p, name)).await.unwrap(),
    );
    let set = a.prepare("SELECT set_tenant($1)").await.unwrap();
    for tenant in ["A", "B"] {
        a.query(&set, &[&tenant]).await.unwrap();
        let row = b.query_one(TENANT, &[]).await.unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0),
            None,
            "after tenant {tenant}"
        );
    }
    drop((a, b));
    p.shutdown().await;
}

/// Session mode is a direct connection: a server that ends the session
/// (`pg_terminate_backend` of its own process) is seen by the client as
/// directly, its FATAL error and then the close, with nothing of pgmux's
/// added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_server_ending_the_session_is_seen_as_directly() {
    let name = "t_sess_ended";
    create_db(cluster(), name).await;
    let p = pgmux::app::Proxy::start(config(cluster(), name, 2, "pool_mode = \"session\""))
        .await
        .expect("start pgmux");
    let mut seen = Vec::new();
    for port in [cluster().port(), p.addr().port()] {
        let mut raw = Raw::connect(port, name, PASSWORD, name).await;
        raw.query("SELECT pg_terminate_backend(pg_backend_pid())");
        let got = raw.until_closed(std::time::Duration::from_secs(5)).await;
        // The error messages' severities and codes, in order.
        let mut rest = &got[..];
        let mut errors = Vec::new();
        while rest.len() >= 5 {
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(body) = rest.get(5..1 + len) else {
                break;
            };
            if rest[0] == b'E' {
                errors.push(error_code(&[(b'E', body.to_vec())]));
            }
            rest = &rest[1 + len..];
        }
        seen.push(errors);
    }
    assert_eq!(seen[0], vec![Some("57P01".to_owned())], "directly");
    assert_eq!(seen[1], seen[0], "through pgmux");
    p.shutdown().await;
}

/// Session mode is a direct connection: the cancel key a client gets
/// carries its server's process id (so `pg_backend_pid()`,
/// `pg_stat_activity` and `pg_terminate_backend` agree with it), and its
/// secret, pgmux's, still cancels the client's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_cancel_key_carries_the_server_process_id() {
    let name = "t_sess_pid";
    create_db(cluster(), name).await;
    let p = pgmux::app::Proxy::start(config(cluster(), name, 2, "pool_mode = \"session\""))
        .await
        .expect("start pgmux");
    let mut raw = Raw::connect(p.addr().port(), name, PASSWORD, name).await;
    raw.query("SELECT pg_backend_pid()");
    let got = raw.round_trip().await;
    let row = got.iter().find(|m| m.0 == b'D').expect("a row");
    let pid: i32 = std::str::from_utf8(&row.1[6..]).unwrap().parse().unwrap();
    assert_eq!(raw.key.0, pid, "the key's process id is the server's");
    // The key cancels a query, through pgmux, with pgmux's secret.
    raw.query("SELECT pg_sleep(20)");
    raw.flush().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    pgmux::cancel::send_cancel(p.addr(), raw.key.0, raw.key.1).await;
    let got = raw.until_ready().await;
    assert_eq!(error_code(&got).as_deref(), Some("57014"));
    // A wrong secret cancels nothing.
    pgmux::cancel::send_cancel(p.addr(), raw.key.0, raw.key.1 ^ 1).await;
    raw.query("SELECT 1");
    assert!(error_code(&raw.round_trip().await).is_none());
    // Another session on another server has a key of its own.
    let other = Raw::connect(p.addr().port(), name, PASSWORD, name).await;
    assert_ne!(other.key.0, raw.key.0);
    drop((raw, other));
    p.shutdown().await;
}

/// psql's `\gdesc` prepares the unnamed statement (Parse, Sync) and then
/// describes it in a second round trip: nothing pgmux runs on its own may
/// come between them (a simple Query drops the unnamed statement). The
/// text `EXECUTE test` may do anything, yet preparing it runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gdesc_of_execute_matches_direct() {
    let name = "t_gdesc";
    create_db(cluster(), name).await;
    let script = "SELECT 1 AS x \\gdesc\nPREPARE test AS SELECT 1 AS first, 2 AS second;\n\
                  EXECUTE test \\gdesc\nEXPLAIN EXECUTE test \\gdesc\n";
    let psql = |port: u16| async move {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                name,
                "-d",
                name,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).await.expect("script");
        drop(stdin);
        let out = child.wait_with_output().await.expect("psql output");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let direct = psql(cluster().port()).await;
    assert!(direct.contains("second | integer"), "{direct}");
    let p = pgmux::app::Proxy::start(config(cluster(), name, 2, "pool_mode = \"session\""))
        .await
        .expect("start pgmux");
    assert_eq!(psql(p.addr().port()).await, direct, "session mode");
    p.shutdown().await;
}

/// A client's own setting of a startup parameter survives the checks
/// after code pgmux cannot read, however many: the reset on the server
/// brings back a value that merely equals the server's default, which is
/// not a RESET of the client's (found by PostgreSQL's regression suite:
/// brin_multi lost `SET datestyle TO iso` after two `EXPLAIN ANALYZE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_settings_survive_repeated_checks() {
    use Step::*;
    let name = "t_checks_twice";
    create_db(cluster(), name).await;
    const EXPLAIN: &str = "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF, SUMMARY OFF) SELECT 1";
    const TS: &str = "SELECT '2023-01-01'::timestamp::text, current_setting('DateStyle')";
    let steps = [
        Simple(0, "SET datestyle TO iso"),
        Simple(0, TS),
        Simple(0, EXPLAIN),
        Simple(0, TS),
        Simple(0, EXPLAIN),
        Simple(0, TS),
        Simple(0, "DO $$ BEGIN END $$"),
        Simple(0, TS),
        // A RESET of something else leaves it as it is.
        Simple(0, "RESET work_mem"),
        Simple(0, TS),
        Simple(0, "RESET datestyle"),
        Simple(0, TS),
    ];
    same_as_direct_with(
        name,
        1,
        &[1],
        &steps,
        "options='-c DateStyle=Postgres,MDY'",
        "",
    )
    .await;
}

/// A SQL-prepared statement used inside another statement (`EXPLAIN
/// EXECUTE`, `CREATE TABLE ... AS EXECUTE`, both under `EXPLAIN ANALYZE`)
/// is the client's own, as when executed alone: found on whichever
/// server, and a temporary table made that way pins its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_inside_other_statements() {
    use Step::*;
    let name = "t_inner_execute";
    create_db(cluster(), name).await;
    let steps = [
        Simple(0, "PREPARE q (int) AS SELECT $1 * 2 AS doubled"),
        Simple(0, "EXPLAIN (COSTS OFF) EXECUTE q(4)"),
        Simple(1, "EXPLAIN (COSTS OFF) EXECUTE q(4)"),
        Simple(0, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE q(5)"),
        Simple(0, "CREATE TABLE made AS EXECUTE q(6)"),
        Simple(0, "SELECT * FROM made"),
        Simple(1, "CREATE TEMP TABLE tmade AS EXECUTE q(7)"),
        Simple(0, "CREATE TEMP TABLE tmade AS EXECUTE q(7)"),
        Simple(0, "SELECT * FROM tmade"),
        Simple(1, "SELECT to_regclass('tmade') IS NULL"),
        Simple(0, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) CREATE TABLE made2 AS EXECUTE q(8)"),
        Simple(0, "SELECT * FROM made2"),
        // Each run (direct, then each pool) starts from the same tables.
        Simple(1, "DROP TABLE made, made2"),
    ];
    same_as_direct(name, 2, &[2, 3], &steps).await;
}

/// pgmux sends SQL `PREPARE` and `EXECUTE` to the server under its own
/// statement names: an error's position (which psql turns into `LINE 1:`
/// and a caret) still points into the client's own text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_positions_point_into_the_clients_text() {
    let name = "t_err_pos";
    create_db(cluster(), name).await;
    let texts = [
        "PREPARE p1 AS SELECT $1a",
        "PREPARE another_long_statement_name (int) AS SELECT $1 + 'x'::int",
        "EXECUTE q ('not a number')",
        "EXECUTE a_rather_long_statement_name ('nope')",
    ];
    let positions = |url: String| async move {
        let c = connect(&url).await.expect("connect");
        // One statement per Query: pgmux maps each name to its own.
        for prepare in [
            "PREPARE q (int) AS SELECT $1",
            "PREPARE a_rather_long_statement_name (int) AS SELECT $1",
        ] {
            c.batch_execute(prepare).await.expect("prepare");
        }
        let mut got = Vec::new();
        for t in texts {
            let e = c.batch_execute(t).await.expect_err("an error");
            let pos = e.as_db_error().and_then(|d| d.position().cloned());
            got.push(format!("{t}: {pos:?}"));
        }
        got
    };
    let direct = positions(direct_url(name)).await;
    assert!(direct.iter().all(|p| p.contains("Original")), "{direct:?}");
    let p = pgmux::app::Proxy::start(config(cluster(), name, 1, ""))
        .await
        .expect("start pgmux");
    assert_eq!(positions(url(&p, name)).await, direct);
    p.shutdown().await;
}

/// A SQL-prepared statement whose table is gone, executed on a server that
/// lacks it: pgmux's PREPARE there fails first, and the client hears that
/// one error (as a direct `EXECUTE` whose plan no longer holds), not a
/// second one for the statement pgmux could not make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_whose_table_is_gone_gives_one_error() {
    let name = "t_exec_gone";
    create_db(cluster(), name).await;
    let p = pgmux::app::Proxy::start(config(cluster(), name, 2, ""))
        .await
        .expect("start pgmux");
    let mut reprepares = None;
    for port in [cluster().port(), p.addr().port()] {
        let mut a = Raw::connect(port, name, PASSWORD, name).await;
        let mut b = Raw::connect(port, name, PASSWORD, name).await;
        for sql in [
            "CREATE TABLE gone (a int)",
            "PREPARE q AS SELECT * FROM gone",
            "EXECUTE q",
            "DROP TABLE gone",
        ] {
            a.query(sql);
            assert!(error_code(&a.round_trip().await).is_none(), "{sql}");
        }
        // b holds the server a just used: a's EXECUTE goes to the other
        // one, where pgmux must prepare q first.
        b.query("BEGIN");
        b.round_trip().await;
        a.query("EXECUTE q");
        let got = a.round_trip().await;
        let errors: Vec<_> = got
            .iter()
            .filter(|m| m.0 == b'E')
            .map(|m| error_code(std::slice::from_ref(m)))
            .collect();
        assert_eq!(errors, vec![Some("42P01".to_owned())], "port {port}");
        b.query("COMMIT");
        b.round_trip().await;
        reprepares = Some(metric(
            &p,
            "pgmux_prepared_statements_total",
            &[("outcome", "reprepare")],
        ));
    }
    assert!(
        reprepares.flatten().unwrap_or(0.0) >= 1.0,
        "pgmux prepared q on the other server: {reprepares:?}"
    );
    p.shutdown().await;
}
