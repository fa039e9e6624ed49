//! TLS on both sides: psql with verify-full through pgmux, wrong CA and
//! plaintext refused, PostgreSQL 17-style direct TLS, and pgmux connecting to
//! a PostgreSQL that accepts only TLS (`hostssl`), with host verification.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::PASSWORD;
use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};
use pgmux::config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test CA and certificates it signed, written to a temp dir.
struct Pki {
    dir: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert, Issuer::new(p, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = pgmux::cluster::scratch_dir("tls").unwrap();
        let (ca_cert, issuer) = ca("pgmux test CA");
        let (other_ca, _) = ca("some other CA");
        let (proxy_cert, proxy_key) = leaf(&issuer, &["localhost", "127.0.0.1"]);
        let (pg_cert, pg_key) = leaf(&issuer, &["127.0.0.1", "localhost"]);
        let (wrong_cert, wrong_key) = leaf(&issuer, &["db.example.com"]);
        for (name, text) in [
            ("ca.pem", ca_cert.pem()),
            ("other-ca.pem", other_ca.pem()),
            ("proxy.pem", proxy_cert),
            ("proxy.key", proxy_key),
            ("pg.pem", pg_cert),
            ("pg.key", pg_key),
            ("wrong.pem", wrong_cert),
            ("wrong.key", wrong_key),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Pki { dir }
    })
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }
}

/// A PostgreSQL that accepts TLS connections only, with a certificate `cert`.
fn tls_cluster(cert: &str, key: &str) -> Cluster {
    let p = pki();
    Cluster::start(&ClusterOptions {
        max_connections: 40,
        extra_conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        data_files: vec![
            ("server.crt".into(), p.read(cert)),
            ("server.key".into(), p.read(key)),
        ],
        hba: Some(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n".into(),
        ),
        ..Default::default()
    })
    .unwrap()
}

static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

fn cluster() -> Arc<Cluster> {
    CLUSTER
        .get_or_init(|| Arc::new(tls_cluster("pg.pem", "pg.key")))
        .clone()
}

/// pgmux with TLS toward clients (`client_mode`) and `server` settings.
async fn proxy(name: &str, client_mode: &str, server: &str, pg_port: u16) -> Proxy {
    let p = pki();
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
client_tls_mode = "{client_mode}"
client_tls_cert = "{cert}"
client_tls_key = "{key}"
{server}

[databases.{name}]
host = "127.0.0.1"
port = {pg_port}

[users.{name}]
password = "{PASSWORD}"
"#,
        cert = p.path("proxy.pem"),
        key = p.path("proxy.key"),
    );
    Proxy::start(Config::parse(&text).unwrap()).await.unwrap()
}

async fn setup_db(c: &Cluster, name: &str) {
    // The superuser connects over the unix socket; TCP needs TLS here.
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(c_socket_dir(c))
        .port(c.port())
        .user("postgres")
        .password(pgmux::cluster::SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
        .await
        .unwrap();
}

fn c_socket_dir(c: &Cluster) -> PathBuf {
    c.data_dir().parent().unwrap().to_path_buf()
}

fn psql(conninfo: &str) -> (bool, String) {
    common::run(
        Command::new(cluster().bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT 'hello over ' || CASE WHEN ssl THEN 'tls' ELSE 'plain' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
            .arg(conninfo)
            .env("PGPASSWORD", PASSWORD),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_through_pgmux_to_hostssl_server() {
    let c = cluster();
    setup_db(&c, "t_tls1").await;
    let server = format!(
        "server_tls_mode = \"verify-full\"\nserver_tls_ca = \"{}\"",
        pki().path("ca.pem")
    );
    let p = proxy("t_tls1", "require", &server, c.port()).await;
    let port = p.addr().port();
    let base = format!("host=localhost hostaddr=127.0.0.1 port={port} user=t_tls1 dbname=t_tls1");
    let (ok, out) = psql(&format!(
        "{base} sslmode=verify-full sslrootcert={}",
        pki().path("ca.pem")
    ));
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "hello over tls",
        "pgmux reached the server over TLS"
    );
    // A client trusting another CA refuses pgmux's certificate.
    let (ok, out) = psql(&format!(
        "{base} sslmode=verify-full sslrootcert={}",
        pki().path("other-ca.pem")
    ));
    assert!(!ok, "{out}");
    // Plaintext is refused under client_tls_mode = require.
    let (ok, out) = psql(&format!("{base} sslmode=disable"));
    assert!(!ok && out.contains("requires TLS"), "{out}");
}

/// SCRAM-SHA-256-PLUS on both sides: psql requires channel binding to
/// pgmux's certificate, and pgmux to the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_both_ways() {
    let c = cluster();
    setup_db(&c, "t_tls_cb").await;
    let server = format!(
        "server_tls_mode = \"verify-full\"\nserver_tls_ca = \"{}\"\n\
         server_channel_binding = \"require\"\nserver_auth_methods = \"scram-sha-256\"",
        pki().path("ca.pem")
    );
    let p = proxy("t_tls_cb", "prefer", &server, c.port()).await;
    let base = format!(
        "host=127.0.0.1 port={} user=t_tls_cb dbname=t_tls_cb",
        p.addr().port()
    );
    let (ok, out) = psql(&format!("{base} sslmode=require channel_binding=require"));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "hello over tls");
    // Without TLS there is nothing to bind to: libpq refuses.
    let (ok, out) = psql(&format!("{base} sslmode=disable channel_binding=require"));
    assert!(!ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_must_match_host_under_verify_full() {
    let wrong = tls_cluster("wrong.pem", "wrong.key");
    setup_db(&wrong, "t_tls2").await;
    let ca = pki().path("ca.pem");
    for (mode, should_work) in [
        ("verify-full", false),
        ("verify-ca", true),
        ("require", true),
        ("disable", false),
    ] {
        let server = format!("server_tls_mode = \"{mode}\"\nserver_tls_ca = \"{ca}\"");
        let p = proxy("t_tls2", "prefer", &server, wrong.port()).await;
        let url = format!(
            "host=127.0.0.1 port={} user=t_tls2 password={PASSWORD} dbname=t_tls2",
            p.addr().port()
        );
        let res = common::connect(&url).await;
        let res = match res {
            Ok(c) => c.simple_query("SELECT 1").await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert_eq!(res.is_ok(), should_work, "server_tls_mode {mode}: {res:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_requires_alpn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = cluster();
    let p = proxy("t_tls3", "prefer", "", c.port()).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in pgmux::tls::load_certs(&pki().path("ca.pem")).unwrap() {
        roots.add(cert).unwrap();
    }
    for (alpn, served) in [(true, true), (false, false)] {
        let mut cfg = rustls::ClientConfig::builder_with_provider(pgmux::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        if alpn {
            cfg.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let Ok(mut tls) = connector.connect(name, tcp).await else {
            assert!(!served, "handshake failed");
            continue;
        };
        let mut startup = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "t_tls3"), ("database", "no_such_db")],
            &mut startup,
        )
        .unwrap();
        let _ = tls.write_all(&startup).await;
        let mut reply = vec![0u8; 256];
        let n = tls.read(&mut reply).await.unwrap_or(0);
        if served {
            // The login goes on: pgmux asks for the password (the unknown
            // database is said only after it).
            assert!(
                n > 0 && reply[0] == b'R',
                "an authentication request over direct TLS"
            );
        } else {
            assert_eq!(n, 0, "without ALPN the connection is closed");
        }
    }
}

#[test]
fn hostssl_server_refuses_plaintext_directly() {
    // The fixture itself: the server really refuses non-TLS TCP clients.
    let c = cluster();
    let out = Command::new(c.bin_dir().join("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            c.port()
        ))
        .env("PGPASSWORD", pgmux::cluster::SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
