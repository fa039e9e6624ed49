//! pgmux as a drop-in for PgBouncer: its admin console compared, command
//! by command, with Debian's PgBouncer run side by side.

mod common;

use common::pgbouncer::PgBouncer;
use common::*;
use pgmux::app::Proxy;
use pgmux::config::Config;

/// A config serving database and user `name` on the test cluster, with
/// an admin user `admin`, plus `[pgmux]` lines.
fn console_config(name: &str, pgmux_extra: &str) -> Config {
    Config::parse(&format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
{pgmux_extra}
[admin]
users = ["admin"]
[databases.{name}]
port = {port}
[users.admin]
password = "{PASSWORD}"
[users.{name}]
password = "{PASSWORD}"
"#,
        port = cluster().port()
    ))
    .expect("valid config")
}

/// Every SHOW PgBouncer and pgmux both have.
const SHOWS: &str = "POOLS,STATS,STATS_TOTALS,STATS_AVERAGES,TOTALS,CLIENTS,SERVERS,DATABASES,USERS,LISTS,MEM,CONFIG,VERSION";

/// (column name, type OID) and the first column of the rows, per SHOW.
fn describe(dsn: &str) -> serde_json::Value {
    let script = format!(
        "{}/tests/drivers/show_columns.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dsn)
        .arg(SHOWS)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_columns_match_pgbouncer() {
    let name = "t_pgb_admin";
    create_db(cluster(), name).await;
    let port = cluster().port();
    let pgb = tokio::task::spawn_blocking(move || {
        PgBouncer::start(
            &format!(
                "[databases]\n{name} = host=127.0.0.1 port={port}\n[pgbouncer]\nauth_type = plain\nadmin_users = admin\n"
            ),
            &format!("\"admin\" \"{PASSWORD}\"\n\"{name}\" \"{PASSWORD}\"\n"),
        )
    })
    .await
    .unwrap();
    let cfg = console_config(name, "");
    let proxy = Proxy::start(cfg).await.unwrap();
    // One client and one server on each side, so rows exist.
    let on_pgb = connect(&format!(
        "host=127.0.0.1 port={} user={name} password={PASSWORD} dbname={name}",
        pgb.port
    ))
    .await
    .unwrap();
    on_pgb.simple_query("SELECT 1").await.unwrap();
    let on_pgmux = client(&proxy, name).await;
    on_pgmux.simple_query("SELECT 1").await.unwrap();
    let admin = |port: u16| {
        format!("host=127.0.0.1 port={port} user=admin password={PASSWORD} dbname=pgbouncer")
    };
    let (a, b) = (admin(pgb.port), admin(proxy.addr().port()));
    let (theirs, ours) = tokio::task::spawn_blocking(move || (describe(&a), describe(&b)))
        .await
        .unwrap();
    for cmd in SHOWS.split(',') {
        let (t, o) = (&theirs[cmd], &ours[cmd]);
        assert!(t.get("error").is_none(), "PgBouncer: SHOW {cmd}: {t}");
        assert!(o.get("error").is_none(), "pgmux: SHOW {cmd}: {o}");
        let (tc, oc) = (
            t["columns"].as_array().unwrap(),
            o["columns"].as_array().unwrap(),
        );
        assert!(
            oc.len() >= tc.len() && oc[..tc.len()] == tc[..],
            "SHOW {cmd}: PgBouncer's columns (name, type) come first, in its order:\n PgBouncer {tc:?}\n pgmux     {oc:?}"
        );
    }
    // Name-per-row answers list the same names.
    for cmd in ["LISTS", "TOTALS"] {
        assert_eq!(theirs[cmd]["keys"], ours[cmd]["keys"], "SHOW {cmd} rows");
    }
}

/// A PgBouncer exporter process (installed from PyPI by the test
/// command); killed on drop.
struct Exporter(std::process::Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_exporter_reads_pgmux_while_clients_queue() {
    let name = "t_pgb_exporter";
    create_db(cluster(), name).await;
    let cfg = console_config(name, "default_pool_size = 1");
    let proxy = Proxy::start(cfg).await.unwrap();
    // One client holds the only server inside a transaction, one waits.
    let holder = client(&proxy, name).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = client(&proxy, name).await;
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| ()) });
    let queued = eventually(std::time::Duration::from_secs(5), || async {
        proxy.context().pools.all()[0].1.counts().2 == 1
    })
    .await;
    assert!(queued, "a client waits for the server");

    let dir = pgmux::cluster::scratch_dir("exporter").unwrap();
    let port = free_port();
    let yml = dir.join("exporter.yml");
    std::fs::write(
        &yml,
        format!(
            "exporter_host: 127.0.0.1\nexporter_port: {port}\npgbouncers:\n  - dsn: postgresql://admin:{PASSWORD}@127.0.0.1:{}/pgbouncer\n    exclude_databases:\n      - pgbouncer\n",
            proxy.addr().port()
        ),
    )
    .unwrap();
    let _exporter = Exporter(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from prometheus_pgbouncer_exporter.cli import main; sys.exit(main())",
                "--config",
            ])
            .arg(&yml)
            // Its log goes to a file in the test's scratch directory.
            .arg("--log-file")
            .arg(dir.join("exporter.log"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the exporter (pip install -r tests/drivers/requirements-exporter.txt)"),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter serves /metrics"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let body = http_get(addr, "/metrics").await.1;
    let samples = parse_prometheus(&body);
    let value = |metric: &str| {
        samples
            .iter()
            .find(|s| s.name == metric && s.labels.get("database").is_none_or(|d| d == name))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{metric} missing from the exporter's output:\n{body}"))
    };
    assert_eq!(
        value("pgbouncer_up"),
        1.0,
        "every SHOW the exporter runs answered"
    );
    assert_eq!(value("pgbouncer_pools_client_waiting_connections"), 1.0);
    assert_eq!(value("pgbouncer_pools_client_active_connections"), 1.0);
    assert_eq!(value("pgbouncer_pools_server_active_connections"), 1.0);
    assert_eq!(value("pgbouncer_databases_database_pool_size"), 1.0);
    assert_eq!(
        value("pgbouncer_databases_database_current_connections"),
        1.0
    );
    assert!(value("pgbouncer_stats_queries_total") >= 1.0);
    assert!(value("pgbouncer_stats_received_bytes_total") > 0.0);
    assert_eq!(value("pgbouncer_config_max_client_conn"), 10000.0);
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
}

/// Runs one statement with psql as `user` on `db` at `port`; returns
/// (succeeded, unaligned output).
fn psql(port: u16, user: &str, db: &str, sql: &str) -> (bool, String) {
    run(std::process::Command::new(cluster().bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", PASSWORD))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_pgbouncer_ini_runs_on_both() {
    let name = "t_pgb_ini";
    let other = "t_pgb_ini_b";
    let c = cluster();
    create_db(c, name).await;
    let su = superuser(c).await;
    su.batch_execute(&format!("CREATE DATABASE {other} OWNER {name}"))
        .await
        .unwrap();
    // The user's SCRAM verifier, copied from pg_authid as PgBouncer users do.
    let verifier: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let port = c.port();
    let ini = format!(
        "; one file for both\n[databases]\n{name} = host=127.0.0.1 port={port} pool_mode=session\n* = host=127.0.0.1 port={port}\n\n[pgbouncer]\nauth_type = scram-sha-256\nadmin_users = admin\nstats_users = watcher\npool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 100\nserver_reset_query = DISCARD ALL\n"
    );
    let users = format!(
        "\"{name}\" \"{verifier}\"\n\"admin\" \"{PASSWORD}\"\n\"watcher\" \"{PASSWORD}\"\n"
    );
    let pgb = tokio::task::spawn_blocking(move || PgBouncer::start(&ini, &users))
        .await
        .unwrap();
    // pgmux reads the very file PgBouncer runs (its own port only).
    let ours = free_port();
    let text = std::fs::read_to_string(pgb.dir.join("pgbouncer.ini")).unwrap();
    let path = pgb.dir.join("pgmux.ini");
    std::fs::write(
        &path,
        text.replace(
            &format!("listen_port = {}", pgb.port),
            &format!("listen_port = {ours}"),
        ),
    )
    .unwrap();
    let (ok, out) = run(std::process::Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .args(["check", "--config"])
        .arg(&path));
    assert!(ok, "pgmux check accepts PgBouncer's file:\n{out}");
    let proxy = Proxy::start_file(&path).await.expect("pgmux runs the ini");
    assert_eq!(proxy.addr().port(), ours);
    let direct = format!("host=127.0.0.1 port={port} user={name} dbname={name}");
    let (ok, out) = tokio::task::block_in_place(|| pgbench(&["-i", "-q", "-s", "1"], &direct));
    assert!(ok, "{out}");
    for (who, p) in [("PgBouncer", pgb.port), ("pgmux", ours)] {
        tokio::task::block_in_place(|| {
            let (ok, out) = psql(p, name, name, "SELECT current_database(), current_user");
            assert!(ok && out.trim() == format!("{name}|{name}"), "{who}: {out}");
            // The * fallback reaches the server database of the same name,
            // with SCRAM pass-through from the copied verifier.
            let (ok, out) = psql(p, name, other, "SELECT current_database()");
            assert!(ok && out.trim() == other, "{who} via *: {out}");
            let bench = format!("host=127.0.0.1 port={p} user={name} dbname={name}");
            let (ok, out) = pgbench(
                &[
                    "-n", "-M", "prepared", "-S", "-c", "4", "-j", "2", "-t", "50",
                ],
                &bench,
            );
            assert!(ok, "{who}: pgbench -M prepared:\n{out}");
            assert!(
                out.contains("number of transactions actually processed: 200/200"),
                "{who}: {out}"
            );
            let (ok, out) = psql(p, "admin", "pgbouncer", "SHOW POOLS");
            assert!(
                ok && out.contains(name),
                "{who}: SHOW POOLS as admin: {out}"
            );
            let (ok, out) = psql(p, "watcher", "pgbouncer", "SHOW POOLS");
            assert!(
                ok && out.contains(name),
                "{who}: SHOW POOLS as a stats user: {out}"
            );
            let (ok, out) = psql(p, "watcher", "pgbouncer", "PAUSE");
            assert!(!ok, "{who}: a stats user may not PAUSE: {out}");
        });
    }
}

#[test]
fn check_names_ignored_keys_and_malformed_lines() {
    let dir = pgmux::cluster::scratch_dir("ini").unwrap();
    std::fs::write(dir.join("userlist.txt"), "\"app\" \"secret\"\n").unwrap();
    std::fs::write(
        dir.join("extra.ini"),
        "[pgbouncer]\nlog_connections = 1\napplication_name_add_host = 1\nsome_future_knob = 7\n",
    )
    .unwrap();
    let good = dir.join("good.ini");
    std::fs::write(
        &good,
        "[databases]\napp = host=127.0.0.1 port=5432 client_encoding=UTF8\n[pgbouncer]\nlisten_port = 6433\nauth_file = userlist.txt\n%include extra.ini\n",
    )
    .unwrap();
    let check = |p: &std::path::Path| {
        run(std::process::Command::new(env!("CARGO_BIN_EXE_pgmux"))
            .args(["check", "--config"])
            .arg(p))
    };
    let (ok, out) = check(&good);
    assert!(ok, "{out}");
    assert!(
        out.contains("extra.ini:4: some_future_knob is not supported"),
        "an unknown key is named with its file and line:\n{out}"
    );
    assert!(
        out.contains("good.ini:2: database app: client_encoding"),
        "{out}"
    );
    assert!(
        !out.contains("log_connections"),
        "process-only keys are silent:\n{out}"
    );
    let bad = dir.join("bad.ini");
    std::fs::write(
        &bad,
        "[pgbouncer]\nauth_file = userlist.txt\nlisten_port\nauth_ident_file = ident.conf\n",
    )
    .unwrap();
    let (ok, out) = check(&bad);
    assert!(!ok, "{out}");
    assert!(out.contains("bad.ini:3: expected key = value"), "{out}");
    assert!(out.contains("bad.ini:4: auth_ident_file"), "{out}");
    // auth_hba_file is read by check: its bad lines are named.
    std::fs::write(
        dir.join("hba.conf"),
        "# rules\nhost all all 127.0.0.1/32 md5\nhostssl all all 10.0.0.1/8 scram-sha-256\nhost all all ::1/128 gss\n",
    )
    .unwrap();
    let hba = dir.join("hba.ini");
    std::fs::write(
        &hba,
        "[pgbouncer]\nauth_file = userlist.txt\nauth_type = hba\nauth_hba_file = hba.conf\n",
    )
    .unwrap();
    let (ok, out) = check(&hba);
    assert!(!ok, "{out}");
    assert!(
        out.contains("hba.conf:3: 10.0.0.1/8: the address has bits set outside its mask"),
        "{out}"
    );
    assert!(
        out.contains("hba.conf:4: unsupported method \"gss\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_wait_close_wait_disable_refuses() {
    let name = "t_pgb_pause";
    create_db(cluster(), name).await;
    let cfg = console_config(name, "");
    let proxy = Proxy::start(cfg).await.unwrap();
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=admin password={PASSWORD} dbname=pgbouncer",
        proxy.addr().port()
    ))
    .await
    .unwrap();
    let admin = std::sync::Arc::new(admin);
    let su = superuser(cluster()).await;
    let holder = client(&proxy, name).await;
    let run_admin = |cmd: &'static str| {
        let a = admin.clone();
        tokio::spawn(async move { a.simple_query(cmd).await.map(|_| ()) })
    };
    let half_second = std::time::Duration::from_millis(500);

    // PAUSE answers once the transaction under way has released its
    // server, and closes the servers.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pause = run_admin("PAUSE t_pgb_pause");
    tokio::time::sleep(half_second).await;
    assert!(!pause.is_finished(), "PAUSE waits for the transaction");
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), pause)
        .await
        .expect("PAUSE answers")
        .unwrap()
        .unwrap();
    // A closed connection's backend takes a moment to go.
    let closed = eventually(std::time::Duration::from_secs(3), || async {
        server_states_with(&su, name).await.is_empty()
    })
    .await;
    assert!(closed, "servers closed");
    admin.simple_query("RESUME t_pgb_pause").await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();

    // WAIT_CLOSE answers once the servers RECONNECT left are closed.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    admin.simple_query("RECONNECT t_pgb_pause").await.unwrap();
    let wait = run_admin("WAIT_CLOSE t_pgb_pause");
    tokio::time::sleep(half_second).await;
    assert!(!wait.is_finished(), "WAIT_CLOSE waits for the old server");
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .expect("WAIT_CLOSE answers")
        .unwrap()
        .unwrap();

    // DISABLE refuses new clients (57P03) and keeps the ones there.
    admin.simple_query("DISABLE t_pgb_pause").await.unwrap();
    assert_eq!(refused(&url(&proxy, name)).await.as_deref(), Some("57P03"));
    holder.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("ENABLE t_pgb_pause").await.unwrap();
    client(&proxy, name)
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Logged in and ran its statement.
    In,
    /// Refused by the rules (a `reject` line, or no line).
    Refused,
    /// Its rule asked for a password, and it was wrong.
    BadPassword,
}

/// One login through psql: over TLS (`sslmode=require`) or not, with
/// `password`; the console gets `SHOW VERSION`, databases `SELECT 1`.
fn attempt(port: u16, user: &str, db: &str, password: &str, tls: bool) -> (Outcome, String) {
    let sql = if db == "pgbouncer" {
        "SHOW VERSION"
    } else {
        "SELECT 1"
    };
    let sslmode = if tls { "require" } else { "disable" };
    let (ok, out) = run(std::process::Command::new(cluster().bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname={db} sslmode={sslmode}"
        ))
        .env("PGPASSWORD", password));
    let outcome = if ok {
        Outcome::In
    } else if [
        "pg_hba.conf rejects",
        "no pg_hba.conf entry",
        "login rejected",
    ]
    .iter()
    .any(|m| out.contains(m))
    {
        Outcome::Refused
    } else if out.contains("password authentication failed")
        || out.contains("SASL authentication failed")
    {
        Outcome::BadPassword
    } else {
        panic!("port {port}: {user}@{db} tls={tls}: unexpected: {out}");
    };
    (outcome, out)
}

/// One `auth_hba_file`, read by PgBouncer and by pgmux from the very ini
/// PgBouncer runs: hostssl only for one database, a user rejected, a
/// method per database, a final reject. Every attempt ends the same way
/// on both. PgBouncer 1.18 says every refusal with 08P01 ("login
/// rejected"); pgmux says it as PostgreSQL does (28000, its wording),
/// checked beside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hba_file_lets_in_and_refuses_as_pgbouncer_does() {
    let (u, x) = ("t_hba_u", "t_hba_x");
    let dbs = ["t_hba_ssl", "t_hba_trust", "t_hba_scram", "t_hba_md5"];
    let c = cluster();
    let su = superuser(c).await;
    for role in [u, x] {
        su.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
            .await
            .unwrap();
    }
    for db in dbs {
        create_database(&su, db, u).await;
    }
    let hba = "\
# one file for both
local     all          all                           peer
hostssl   t_hba_ssl    all       127.0.0.1/32        scram-sha-256
host      all          t_hba_x   0.0.0.0/0           reject
host      t_hba_trust  all       127.0.0.1/32        trust
host      t_hba_scram  all       127.0.0.1 255.255.255.255 scram-sha-256
hostnossl t_hba_md5    all       127.0.0.0/8         md5
hostnossl pgbouncer    t_hba_u   127.0.0.1/32        md5
host      all          all       0.0.0.0/0           reject
";
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().pem();
    let key = key.serialize_pem();
    let port = c.port();
    let ini = format!(
        "[databases]\n* = host=127.0.0.1 port={port}\n[pgbouncer]\nauth_type = hba\n\
         auth_hba_file = {{dir}}/hba.conf\nadmin_users = {u}\nclient_tls_sslmode = allow\n\
         client_tls_cert_file = {{dir}}/client.pem\nclient_tls_key_file = {{dir}}/client.key\n"
    );
    let users = format!("\"{u}\" \"{PASSWORD}\"\n\"{x}\" \"{PASSWORD}\"\n");
    let pgb = tokio::task::spawn_blocking(move || {
        PgBouncer::start_with_files(
            &ini,
            &users,
            &[
                ("hba.conf", hba),
                ("client.pem", &cert),
                ("client.key", &key),
            ],
        )
    })
    .await
    .unwrap();
    let ours = free_port();
    let text = std::fs::read_to_string(pgb.dir.join("pgbouncer.ini")).unwrap();
    let path = pgb.dir.join("pgmux.ini");
    let text = text.replace(
        &format!("listen_port = {}", pgb.port),
        &format!("listen_port = {ours}"),
    );
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::start_file(&path).await.expect("pgmux runs the ini");
    let (wrong, ok) = ("not-the-password", PASSWORD);
    use Outcome::*;
    let cases = [
        (u, "t_hba_ssl", ok, true, In),
        (u, "t_hba_ssl", ok, false, Refused),
        (u, "t_hba_ssl", wrong, true, BadPassword),
        // The hostssl line comes before the user's reject line.
        (x, "t_hba_ssl", ok, true, In),
        (x, "t_hba_trust", ok, false, Refused),
        (u, "t_hba_trust", wrong, false, In),
        (u, "t_hba_trust", wrong, true, In),
        (u, "t_hba_scram", ok, false, In),
        (u, "t_hba_scram", wrong, false, BadPassword),
        (u, "t_hba_md5", ok, false, In),
        (u, "t_hba_md5", wrong, false, BadPassword),
        (u, "t_hba_md5", ok, true, Refused),
        (u, "t_hba_nowhere", ok, false, Refused),
        // The admin console goes through the rules too. (A user who is
        // no admin PgBouncer turns away before its rules, "not allowed";
        // pgmux after them, 42501 once authenticated.)
        (u, "pgbouncer", ok, false, In),
        (u, "pgbouncer", wrong, false, BadPassword),
        (u, "pgbouncer", ok, true, Refused),
    ];
    for (user, db, password, tls, want) in cases {
        for (who, p) in [("PgBouncer", pgb.port), ("pgmux", ours)] {
            let (got, out) = tokio::task::block_in_place(|| attempt(p, user, db, password, tls));
            assert_eq!(got, want, "{who}: {user}@{db} tls={tls}: {out}");
        }
    }
    // pgmux's refusals, as PostgreSQL's.
    let url = |user: &str, db: &str, pw: &str| {
        format!("host=127.0.0.1 port={ours} user={user} dbname={db} password={pw}")
    };
    let err = connect(&url(x, "t_hba_trust", ok)).await.err().unwrap();
    let db_err = err.as_db_error().expect("a FATAL from pgmux");
    assert_eq!(db_err.code().code(), "28000");
    assert_eq!(
        db_err.message(),
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"t_hba_x\", database \"t_hba_trust\", no encryption"
    );
    let err = connect(&url(u, "t_hba_nowhere", ok)).await.err().unwrap();
    let db_err = err.as_db_error().expect("a FATAL from pgmux");
    assert_eq!(db_err.code().code(), "28000");
    assert!(db_err.message().starts_with("pg_hba.conf rejects"));
    let err = connect(&url(u, "t_hba_md5", wrong)).await.err().unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    // A reload reads the rules again: a bad line changes nothing, a good
    // file takes effect for the next login.
    let file = pgb.dir.join("hba.conf");
    let ctx = proxy.context().clone();
    std::fs::write(&file, format!("{hba}host all all all trust extra\n")).unwrap();
    let reload = |ctx: std::sync::Arc<pgmux::context::Context>| {
        tokio::task::spawn_blocking(move || pgmux::reload::reload(&ctx))
    };
    let err = reload(ctx.clone()).await.unwrap().unwrap_err();
    assert!(err.contains("hba.conf:10: unexpected"), "{err}");
    assert!(connect(&url(x, "t_hba_trust", ok)).await.is_err());
    std::fs::write(&file, format!("host all t_hba_x 127.0.0.1/32 trust\n{hba}")).unwrap();
    let changes = reload(ctx).await.unwrap().unwrap();
    assert!(
        changes.iter().any(|c| c.contains("auth_hba_file")),
        "{changes:?}"
    );
    let client = connect(&url(x, "t_hba_trust", "wrong")).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(proxy);
}
