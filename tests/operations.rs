//! Operations: Prometheus metrics, the admin console, and reloads that
//! drop nothing.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use pgmux::app::Proxy;

const ADMIN_PASSWORD: &str = "admin-secret";

/// Writes a config file for database/user `name` with a fixed port, an
/// admin user and a metrics endpoint.
fn write_config(path: &PathBuf, name: &str, port: u16, size: u32, extra_users: &str) {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:{port}"
default_pool_size = {size}
query_wait_timeout = "20s"

[metrics]
listen = "127.0.0.1:0"

[admin]
users = ["admin"]

[databases.{name}]
port = {pg}

[users.{name}]
password = "{PASSWORD}"

[users.admin]
password = "{ADMIN_PASSWORD}"
{extra_users}
"#,
        pg = cluster().port()
    );
    std::fs::write(path, text).unwrap();
}

fn temp_config(name: &str) -> PathBuf {
    let dir = pgmux::cluster::scratch_dir(name).unwrap();
    dir.join("pgmux.toml")
}

async fn admin(port: u16) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={port} user=admin password={ADMIN_PASSWORD} dbname=pgmux"
    ))
    .await
    .expect("admin console")
}

/// Rows of an admin command as maps from column name to value.
async fn admin_rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn start(name: &str, size: u32) -> (Proxy, PathBuf) {
    create_db(cluster(), name).await;
    let path = temp_config(name);
    write_config(&path, name, free_port(), size, "");
    (Proxy::start_file(&path).await.unwrap(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_waiting_clients_and_counts() {
    let (p, _) = start("t_metrics", 1).await;
    let holder = client(&p, "t_metrics").await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let url = url(&p, "t_metrics");
            tokio::spawn(async move {
                let c = connect(&url).await.unwrap();
                c.simple_query("SELECT 1").await.unwrap();
            })
        })
        .collect();
    let maddr = p.metrics_addr().unwrap();
    let labels = [("database", "t_metrics"), ("user", "t_metrics")];
    let saw_ten = eventually(Duration::from_secs(10), || async {
        let (_, body) = http_get(maddr, "/metrics").await;
        let s = parse_prometheus(&body);
        sample(
            &s,
            "pgmux_clients",
            &[labels[0], labels[1], ("state", "waiting")],
        ) == Some(10.0)
            && sample(
                &s,
                "pgmux_clients",
                &[labels[0], labels[1], ("state", "active")],
            ) == Some(1.0)
    })
    .await;
    assert!(saw_ten, "10 waiting and 1 active on a pool of 1");
    holder.batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    // A waiter has its answer a moment before its session gives the
    // server back: wait for the pool to settle.
    let idle = [labels[0], labels[1], ("state", "idle")];
    let settled = eventually(Duration::from_secs(5), || async {
        let s = parse_prometheus(&http_get(maddr, "/metrics").await.1);
        sample(&s, "pgmux_servers", &idle) == Some(1.0)
    })
    .await;
    assert!(settled, "the one server is idle again");
    let (status, body) = http_get(maddr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let s = parse_prometheus(&body);
    assert!(sample(&s, "pgmux_transactions_total", &labels).unwrap() >= 11.0);
    assert_eq!(sample(&s, "pgmux_pool_size", &labels), Some(1.0));
    assert!(sample(&s, "pgmux_client_wait_seconds_count", &labels).unwrap() >= 11.0);
    assert!(
        sample(
            &s,
            "pgmux_bytes_total",
            &[labels[0], labels[1], ("direction", "server_to_client")]
        )
        .unwrap()
            > 0.0
    );
    // Every metric is described.
    for name in [
        "pgmux_clients",
        "pgmux_servers",
        "pgmux_transactions_total",
        "pgmux_client_wait_seconds",
    ] {
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no description"
        );
    }
    assert_eq!(
        http_get(maddr, "/nope").await.0.split(' ').nth(1),
        Some("404")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_show_pause_resume() {
    let (p, _) = start("t_admin", 2).await;
    let c = client(&p, "t_admin").await;
    c.simple_query("SELECT 1").await.unwrap();
    let port = p.addr().port();
    // psql sees SHOW POOLS with PgBouncer's columns.
    let out = Command::new(cluster().bin_dir().join("psql"))
        .args(["-X", "-A", "-F", ",", "-c", "SHOW POOLS"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=admin password={ADMIN_PASSWORD} dbname=pgmux"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("database,user,cl_active,cl_waiting,"),
        "{text}"
    );
    assert!(text.contains("t_admin,t_admin,"), "{text}");
    // PgBouncer's name for the console works too (exporters use it).
    let out = Command::new(cluster().bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-c", "SHOW VERSION"])
        .arg(format!(
            "host=127.0.0.1 port={port} user=admin password={ADMIN_PASSWORD} dbname=pgbouncer"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = admin(port).await;
    for cmd in [
        "SHOW STATS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW DATABASES",
        "SHOW CONFIG",
        "SHOW VERSION",
    ] {
        assert!(!admin_rows(&a, cmd).await.is_empty(), "{cmd} answers rows");
    }
    let clients = admin_rows(&a, "SHOW CLIENTS").await;
    assert!(clients
        .iter()
        .any(|r| r["database"] == "t_admin" && r["state"] == "idle"));
    // PAUSE holds new transactions until RESUME.
    a.simple_query("PAUSE t_admin").await.unwrap();
    let held = spawn_int_query(c, "SELECT 42");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the query waits while paused");
    a.simple_query("RESUME t_admin").await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v, 42);
    // Errors: unknown command 42601; a non-admin user 42501.
    let err = a.simple_query("FROB").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let dsn = format!("host=127.0.0.1 port={port} user=t_admin password={PASSWORD} dbname=pgmux");
    assert_eq!(refused(&dsn).await.as_deref(), Some("42501"));
}

fn pgmux_reload(path: &PathBuf) -> (bool, String) {
    run(Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .args(["reload", "--config"])
        .arg(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_shrinks_pool_under_load_without_failures() {
    let (p, path) = start("t_reload", 6).await;
    let direct = format!(
        "host=127.0.0.1 port={} user=t_reload dbname=t_reload",
        cluster().port()
    );
    let (ok, text) = tokio::task::block_in_place(|| pgbench(&["-i", "-q", "-s", "1"], &direct));
    assert!(ok, "{text}");
    let through = format!(
        "host=127.0.0.1 port={} user=t_reload dbname=t_reload",
        p.addr().port()
    );
    let bench = tokio::task::spawn_blocking(move || {
        pgbench(
            &[
                "-n", "-c", "16", "-j", "2", "-T", "4", "-M", "extended", "-S",
            ],
            &through,
        )
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("default_pool_size = 6", "default_pool_size = 3");
    std::fs::write(&path, &text).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| pgmux_reload(&path));
    assert!(ok, "{out}");
    assert!(out.contains("size 6 -> 3"), "{out}");
    // A broken file is rejected while traffic goes on, and counted.
    std::fs::write(&path, text.replace("[metrics]", "[metrics]\nbogus_key = 1")).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| pgmux_reload(&path));
    assert!(
        !ok && out.contains("bogus_key") && out.contains("pgmux.toml:8:1:"),
        "{out}"
    );
    let (bench_ok, report) = bench.await.unwrap();
    assert!(bench_ok, "{report}");
    assert!(
        !report.contains("number of failed transactions: ")
            || report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    let settled = eventually(Duration::from_secs(5), || async {
        server_states("t_reload").await.len() <= 3
    })
    .await;
    assert!(
        settled,
        "the server keeps at most 3 connections after the shrink"
    );
    // The instance counted one good and one failed reload.
    let a = admin(p.addr().port()).await;
    assert!(
        a.simple_query("RELOAD").await.is_err(),
        "the broken file is still there"
    );
    std::fs::write(&path, &text).unwrap();
    a.simple_query("RELOAD").await.unwrap();
    let (_, body) = http_get(p.metrics_addr().unwrap(), "/metrics").await;
    let s = parse_prometheus(&body);
    assert_eq!(
        sample(&s, "pgmux_config_reloads_total", &[("result", "ok")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&s, "pgmux_config_reloads_total", &[("result", "error")]),
        Some(1.0)
    );
    assert!(
        sample(
            &s,
            "pgmux_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.0e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_user_finishes_session_but_cannot_log_in() {
    let (p, path) = start("t_rmuser", 2).await;
    create_db(cluster(), "t_rmuser2").await;
    let extra = format!(
        "[users.t_rmuser2]\npassword = \"{PASSWORD}\"\n[databases.t_rmuser2]\nport = {}\n",
        cluster().port()
    );
    write_config(&path, "t_rmuser", p.addr().port(), 2, &extra);
    let a = admin(p.addr().port()).await;
    let lines = admin_rows(&a, "RELOAD").await;
    assert!(
        lines
            .iter()
            .any(|r| r["change"].contains("user t_rmuser2: added")),
        "{lines:?}"
    );
    let c = client(&p, "t_rmuser2").await;
    c.batch_execute("BEGIN; CREATE TABLE t (x int)")
        .await
        .unwrap();
    write_config(&path, "t_rmuser", p.addr().port(), 2, "");
    let lines = admin_rows(&a, "RELOAD").await;
    assert!(
        lines
            .iter()
            .any(|r| r["change"].contains("user t_rmuser2: removed")),
        "{lines:?}"
    );
    // The open session goes on and commits ...
    c.batch_execute("INSERT INTO t VALUES (1); COMMIT")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    // ... but the user can't log in again.
    let err = connect(&url(&p, "t_rmuser2")).await.unwrap_err();
    assert!(sqlstate(&err).as_deref() == Some("28P01"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_binary() {
    create_db(cluster(), "t_sighup").await;
    let path = temp_config("t_sighup");
    let port = free_port();
    write_config(&path, "t_sighup", port, 4, "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url =
        format!("host=127.0.0.1 port={port} user=t_sighup password={PASSWORD} dbname=t_sighup");
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect(&url).await.is_ok()
        })
        .await
    );
    let c = connect(&url).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let size = |rows: Vec<std::collections::HashMap<String, String>>| {
        rows.into_iter()
            .find(|r| r["name"] == "t_sighup")
            .map(|r| r["pool_size"].clone())
    };
    let a = admin(port).await;
    assert_eq!(
        size(admin_rows(&a, "SHOW DATABASES").await).as_deref(),
        Some("4")
    );
    write_config(&path, "t_sighup", port, 2, "");
    Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let reloaded = eventually(Duration::from_secs(5), || async {
        size(admin_rows(&a, "SHOW DATABASES").await).as_deref() == Some("2")
    })
    .await;
    assert!(reloaded, "SIGHUP applied the new pool size");
    c.simple_query("SELECT 1").await.unwrap();
    // SIGTERM: graceful exit.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    drop((a, c));
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_logs_in_users_missing_from_the_config() {
    create_db(cluster(), "t_aq").await;
    let su = superuser(cluster()).await;
    su.batch_execute("CREATE ROLE t_aq_lookup SUPERUSER LOGIN PASSWORD 'lookup-secret'")
        .await
        .unwrap();
    su.batch_execute("CREATE ROLE t_aq_app LOGIN PASSWORD 'app-secret'")
        .await
        .unwrap();
    su.batch_execute("GRANT ALL ON DATABASE t_aq TO t_aq_app")
        .await
        .unwrap();
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
auth_user = "t_aq_lookup"

[databases.t_aq]
port = {pg}

[users.t_aq_lookup]
password = "lookup-secret"
"#,
        pg = cluster().port()
    );
    let p = Proxy::start(pgmux::config::Config::parse(&text).unwrap())
        .await
        .unwrap();
    let port = p.addr().port();
    // The user is not in the config: its SCRAM verifier comes from pg_shadow,
    // and pgmux logs in to the server with the key the client's proof revealed.
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user=t_aq_app password=app-secret dbname=t_aq"
    ))
    .await
    .unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "t_aq_app");
    let base = format!("host=127.0.0.1 port={port} dbname=t_aq");
    let wrong = refused(&format!("{base} user=t_aq_app password=wrong")).await;
    assert_eq!(wrong.as_deref(), Some("28P01"));
    // A user the server does not have is told what a wrong password is.
    let nobody = refused(&format!("{base} user=t_aq_nobody password=x")).await;
    assert_eq!(nobody.as_deref(), Some("28P01"));
}
