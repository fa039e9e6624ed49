//! The compatibility suite, against PostgreSQL versions other than
//! Debian's 15 (which every other test uses): `PGMUX_TEST_PG=13,18` (the
//! default), `all` (13, 14, 16, 17, 18) or `none`. Each version gets its
//! own server from `common::versions` and the same checks: SCRAM and md5
//! logins, transaction and session pooling, prepared statements (protocol
//! and SQL), session state following its client, a function's setting,
//! cancel, COPY, LISTEN keeping the server, the role question of failover,
//! the admin console, and libpq 18 asking for the newest protocol, each
//! answer compared with the same steps on a direct connection.

mod common;

use std::time::Duration;

use common::{run, sqlstate, PASSWORD};
use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};
use pgmux::config::Config;

/// A server of PostgreSQL `major`, md5 allowed over TCP (for the md5
/// user), and the roles and tables of the suite.
async fn server(major: u32) -> Cluster {
    let bin = tokio::task::spawn_blocking(move || common::versions::server_bin(major))
        .await
        .unwrap();
    let c = tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            max_connections: 40,
            bin_dir: Some(bin),
            hba: Some("local all all scram-sha-256\nhost all all 127.0.0.1/32 md5\n".into()),
            ..Default::default()
        })
        .expect("start PostgreSQL")
    })
    .await
    .unwrap();
    let su = common::superuser(&c).await;
    // One statement at a time: several in one Query are one transaction,
    // which CREATE DATABASE refuses.
    for sql in [
        "SET password_encryption = 'scram-sha-256'".to_owned(),
        format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"),
        "SET password_encryption = 'md5'".to_owned(),
        format!("CREATE ROLE old LOGIN PASSWORD '{PASSWORD}'"),
        "CREATE DATABASE app OWNER app".to_owned(),
        "GRANT ALL ON DATABASE app TO old".to_owned(),
    ] {
        su.batch_execute(&sql).await.unwrap();
    }
    let db = common::connect(&c.socket_url("app")).await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (n int); GRANT ALL ON t TO PUBLIC; \
         CREATE FUNCTION set_tenant(text) RETURNS void LANGUAGE sql AS \
           $$ SELECT set_config('app.tenant', $1, false) $$",
    )
    .await
    .unwrap();
    c
}

fn config(c: &Cluster, mode: &str) -> Config {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
default_pool_size = 2
pool_mode = "{mode}"
query_wait_timeout = "20s"

[admin]
users = ["app"]

[databases.app]
port = {}
target_session_attrs = "read-write"

[users.app]
password = "{PASSWORD}"

[users.old]
password = "{PASSWORD}"
"#,
        c.port()
    );
    Config::parse(&text).unwrap()
}

fn url(port: u16, user: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={PASSWORD} dbname=app")
}

/// The same steps on a connection to `port`, returning what they read.
async fn steps(port: u16, user: &str) -> Vec<String> {
    let c = common::connect(&url(port, user)).await.unwrap();
    let mut seen = Vec::new();
    let one = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.first()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .unwrap_or_default()
    };
    // Prepared statements, reused.
    let stmt = c.prepare("SELECT $1::int * 2").await.unwrap();
    for i in 0..5 {
        let r: i32 = c.query_one(&stmt, &[&i]).await.unwrap().get(0);
        seen.push(r.to_string());
    }
    // SQL PREPARE / EXECUTE.
    c.batch_execute("PREPARE q(int) AS SELECT $1 + 1")
        .await
        .unwrap();
    for sql in ["EXECUTE q(41)", "EXECUTE q(1)"] {
        let rows = c.simple_query(sql).await.unwrap();
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        seen.push(first.unwrap_or_default());
    }
    // Session state follows the client from one transaction to the next.
    c.batch_execute("SET application_name = 'compat'; SET search_path = public")
        .await
        .unwrap();
    seen.push(one(c
        .query("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()));
    c.execute("SELECT set_tenant('A')", &[]).await.unwrap();
    seen.push(one(c
        .query("SELECT current_setting('app.tenant', true)", &[])
        .await
        .unwrap()));
    // COPY in and out.
    use futures_util::SinkExt;
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .unwrap();
    seen.push(sink.finish().await.unwrap().to_string());
    seen.push(one(c
        .query("SELECT sum(n)::text FROM t", &[])
        .await
        .unwrap()));
    c.batch_execute("TRUNCATE t").await.unwrap();
    // Cancel.
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    seen.push(sqlstate(&e).unwrap_or_default());
    canceller.await.unwrap().unwrap();
    // An error and the session after it.
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    seen.push(sqlstate(&e).unwrap_or_default());
    seen.push(one(c.query("SELECT 'after'::text", &[]).await.unwrap()));
    seen
}

/// PostgreSQL 17's direct TLS toward the server
/// (`server_tls_negotiation = "direct"`): a server that takes TLS only
/// serves pgmux's sessions over it from 17; an older one, which knows no
/// direct handshake, is a clear login error rather than a hang.
async fn direct_tls(major: u32) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let bin = tokio::task::spawn_blocking(move || common::versions::server_bin(major))
        .await
        .unwrap();
    let c = tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            max_connections: 20,
            bin_dir: Some(bin),
            extra_conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            data_files: vec![
                ("server.crt".into(), cert.pem()),
                ("server.key".into(), key.serialize_pem()),
            ],
            hba: Some(
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n".into(),
            ),
            ..Default::default()
        })
        .expect("start PostgreSQL with TLS")
    })
    .await
    .unwrap();
    let su = common::superuser(&c).await;
    su.batch_execute(&format!("CREATE ROLE tls LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
server_tls_mode = "require"
server_tls_negotiation = "direct"
server_login_retry = "0s"
query_wait_timeout = "5s"

[databases.postgres]
port = {}

[users.tls]
password = "{PASSWORD}"
"#,
        c.port()
    );
    let p = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=tls password={PASSWORD} dbname=postgres",
        p.addr().port()
    );
    let got = async {
        let client = common::connect(&url).await?;
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
    };
    let got = tokio::time::timeout(Duration::from_secs(20), got)
        .await
        .expect("no hang");
    if major >= 17 {
        assert!(
            got.expect("PostgreSQL 17+ takes a direct handshake"),
            "over TLS"
        );
    } else {
        assert!(got.is_err(), "PostgreSQL {major} knows no direct TLS");
    }
}

async fn compatibility(major: u32) {
    if !common::versions::wanted().contains(&major) {
        eprintln!("PostgreSQL {major}: not in PGMUX_TEST_PG, skipped");
        return;
    }
    direct_tls(major).await;
    let c = server(major).await;
    let su = common::superuser(&c).await;
    let version: String = su
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with(&major.to_string()), "{version}");
    for mode in ["transaction", "session"] {
        let p = Proxy::start(config(&c, mode)).await.unwrap();
        for user in ["app", "old"] {
            let direct = steps(c.port(), user).await;
            let through = steps(p.addr().port(), user).await;
            assert_eq!(through, direct, "PostgreSQL {major}, {mode} mode, {user}");
            eprintln!("PostgreSQL {version}, {mode} mode, {user}: {through:?}");
        }
        // LISTEN keeps the server (transaction mode) and still works.
        let a = common::connect(&url(p.addr().port(), "app")).await.unwrap();
        a.batch_execute("LISTEN chan").await.unwrap();
        let pid: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let again: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pid, again, "PostgreSQL {major}: LISTEN keeps its server");
        // The admin console answers.
        let admin = common::connect(&format!(
            "host=127.0.0.1 port={} user=app password={PASSWORD} dbname=pgbouncer",
            p.addr().port()
        ))
        .await
        .unwrap();
        let pools = admin.simple_query("SHOW POOLS").await.unwrap();
        assert!(pools.len() > 1, "PostgreSQL {major}: SHOW POOLS");
        // libpq 18 asking for the newest protocol, through pgmux and directly.
        let script = "import sys, psycopg\n\
            c = psycopg.connect(sys.argv[1])\n\
            print(c.info.full_protocol_version, c.execute('SELECT 41 + 1').fetchone()[0])\n";
        let dsn = |port: u16| format!("{} max_protocol_version=latest", url(port, "app"));
        let (through, direct) = (dsn(p.addr().port()), dsn(c.port()));
        let (t, d) = tokio::task::spawn_blocking(move || {
            let py = |dsn: String| {
                run(std::process::Command::new("python3")
                    .args(["-c", script])
                    .arg(dsn))
            };
            (py(through), py(direct))
        })
        .await
        .unwrap();
        assert!(d.0, "PostgreSQL {major} directly: {}", d.1);
        assert!(t.0, "PostgreSQL {major} through pgmux: {}", t.1);
        // pgmux serves 3.2 whatever the server speaks; PostgreSQL does
        // from 18.
        assert_eq!(t.1.trim(), "30002 42");
        let direct = if major >= 18 { "30002 42" } else { "30000 42" };
        assert_eq!(d.1.trim(), direct);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_13() {
    compatibility(13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_14() {
    compatibility(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_16() {
    compatibility(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_17() {
    compatibility(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_18() {
    compatibility(18).await;
}
