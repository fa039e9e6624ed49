//! The threat model of docs/security.md, one test per threat: servers (or
//! whatever sits between pgmux and them) that try to skip authentication,
//! phish a password or overflow a parser; unauthenticated peers that try
//! to grow pgmux's memory or learn which users exist; cancels that could
//! reach another client's query.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::raw::{error_code, tags, Raw};
use common::*;
use parking_lot::Mutex;
use pgmux::app::Proxy;
use pgmux::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A message of a fake server: tag and body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(4 + body.len() as i32);
    b.put_slice(body);
    b.to_vec()
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    msg(b'R', &body)
}

/// What a server says after authentication: enough parameters for a
/// client, a key, ReadyForQuery.
fn welcome() -> Vec<u8> {
    let mut out = auth(0, &[]);
    for (k, v) in [
        ("server_version", "15.0"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        out.extend(msg(b'S', format!("{k}\0{v}\0").as_bytes()));
    }
    out.extend(msg(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
    out.extend(msg(b'Z', b"I"));
    out
}

/// Every tagged message pgmux sent a fake server.
type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// A fake server's view of one connection: reads pgmux's messages.
struct Peer {
    s: TcpStream,
    buf: BytesMut,
    /// Every tagged message pgmux sent.
    seen: Seen,
}

impl Peer {
    /// Reads the untagged packets (SSLRequest refused) up to the
    /// StartupMessage.
    async fn startup(&mut self) -> Option<()> {
        loop {
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; (i32::from_be_bytes(len) as usize).checked_sub(4)?];
            self.s.read_exact(&mut body).await.ok()?;
            if body.get(..4) == Some(&[0x04, 0xd2, 0x16, 0x2f]) {
                self.s.write_all(b"N").await.ok()?;
                continue;
            }
            return Some(());
        }
    }

    /// One tagged message from pgmux (`None` at EOF).
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let n = 1 + i32::from_be_bytes(self.buf[1..5].try_into().ok()?) as usize;
                if self.buf.len() >= n {
                    let m = self.buf.split_to(n);
                    let m = (m[0], m[5..].to_vec());
                    self.seen.lock().push(m.clone());
                    return Some(m);
                }
            }
            if self.s.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.s.write_all(bytes).await.ok()
    }
}

/// A fake PostgreSQL on 127.0.0.1 that runs `script` on every connection
/// after the StartupMessage; returns its port and what pgmux sent it.
async fn fake_server<F, Fut>(script: F) -> (u16, Seen)
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<()>> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (script, seen) = (script.clone(), s2.clone());
            tokio::spawn(async move {
                let mut p = Peer {
                    s,
                    buf: BytesMut::new(),
                    seen,
                };
                if p.startup().await.is_some() {
                    script(p).await;
                }
            });
        }
    });
    (port, seen)
}

/// pgmux in front of a server on `port`, one database and user `name`.
async fn proxy_to(port: u16, name: &str, extra: &str) -> Proxy {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
server_login_retry = "0s"
server_connect_timeout = "3s"
query_wait_timeout = "3s"
{extra}

[databases.{name}]
host = "127.0.0.1"
port = {port}

[users.{name}]
password = "{PASSWORD}"
"#
    );
    Proxy::start(Config::parse(&text).unwrap()).await.unwrap()
}

/// The error a client gets logging in through pgmux.
async fn login_error(p: &Proxy, name: &str) -> String {
    match connect(&url(p, name)).await {
        Ok(c) => match c.simple_query("SELECT 1").await {
            Ok(_) => "no error".into(),
            Err(e) => format!("{e:?}"),
        },
        Err(e) => format!("{e:?}"),
    }
}

/// Reads pgmux's SASLInitialResponse, then says OK without SCRAM's final
/// message: a server that does not know the password.
async fn sasl_then_ok(mut p: Peer) -> Option<()> {
    p.send(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
    p.read().await?;
    p.send(&welcome()).await?;
    while p.read().await.is_some() {}
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_must_prove_it_knows_the_password() {
    let (port, _) = fake_server(sasl_then_ok).await;
    let p = proxy_to(port, "t_sec_skip", "").await;
    let err = login_error(&p, "t_sec_skip").await;
    assert!(
        err.contains("before proving that it knows the password"),
        "{err}"
    );
    assert!(err.contains("08006") || err.contains("08001"), "{err}");
}

/// Asks for the password in the clear, then reads what comes.
async fn asks_cleartext(mut p: Peer) -> Option<()> {
    p.send(&auth(3, &[])).await?;
    while p.read().await.is_some() {}
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cleartext_password_without_tls() {
    let (port, seen) = fake_server(asks_cleartext).await;
    let p = proxy_to(port, "t_sec_clear", "").await;
    let err = login_error(&p, "t_sec_clear").await;
    assert!(
        err.contains("over a connection without verified TLS"),
        "{err}"
    );
    assert!(
        seen.lock().iter().all(|(tag, _)| *tag != b'p'),
        "no password message reached the server"
    );
    // Allowed in so many words, the password goes.
    let (port, seen) = fake_server(asks_cleartext).await;
    let p = proxy_to(port, "t_sec_clear2", "server_auth_methods = \"password\"").await;
    let _ = login_error(&p, "t_sec_clear2").await;
    let sent = seen.lock().clone();
    assert!(
        sent.iter()
            .any(|(tag, body)| *tag == b'p' && body.starts_with(PASSWORD.as_bytes())),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_methods_refuse_before_answering() {
    async fn asks_md5(mut p: Peer) -> Option<()> {
        p.send(&auth(5, b"salt")).await?;
        while p.read().await.is_some() {}
        Some(())
    }
    let (port, seen) = fake_server(asks_md5).await;
    let p = proxy_to(port, "t_sec_md5", "server_auth_methods = \"scram-sha-256\"").await;
    let err = login_error(&p, "t_sec_md5").await;
    assert!(err.contains("\\\"md5\\\""), "{err}");
    assert!(seen.lock().iter().all(|(tag, _)| *tag != b'p'));
    // No authentication at all, refused when `none` is not listed.
    let (port, _) = fake_server(|mut p: Peer| async move {
        p.send(&welcome()).await?;
        while p.read().await.is_some() {}
        Some(())
    })
    .await;
    let p = proxy_to(port, "t_sec_none", "server_auth_methods = \"!none\"").await;
    let err = login_error(&p, "t_sec_none").await;
    assert!(err.contains("\\\"none\\\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_channel_binding_needs_plus() {
    let (port, seen) = fake_server(|mut p: Peer| async move {
        p.send(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
        while p.read().await.is_some() {}
        Some(())
    })
    .await;
    let p = proxy_to(port, "t_sec_cb", "server_channel_binding = \"require\"").await;
    let err = login_error(&p, "t_sec_cb").await;
    assert!(err.contains("SCRAM-SHA-256-PLUS"), "{err}");
    assert!(seen.lock().iter().all(|(tag, _)| *tag != b'p'));
}

/// CVE-2026-6665 in PgBouncer: a server's SCRAM messages with a nonce and
/// a signature far longer than any real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_scram_messages_from_a_server() {
    let (port, _) = fake_server(|mut p: Peer| async move {
        p.send(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
        let (_, first) = p.read().await?;
        let text = String::from_utf8_lossy(&first).into_owned();
        let nonce = text.rsplit("r=").next()?.to_owned();
        let long = "A".repeat(200_000);
        let server_first = format!("r={nonce}{long},s=c2FsdA==,i=4096");
        p.send(&auth(11, server_first.as_bytes())).await?;
        p.read().await?;
        p.send(&auth(12, format!("v={long}").as_bytes())).await?;
        while p.read().await.is_some() {}
        Some(())
    })
    .await;
    let p = proxy_to(port, "t_sec_nonce", "").await;
    let err = login_error(&p, "t_sec_nonce").await;
    assert!(err.contains("SCRAM"), "{err}");
    // pgmux is still there for the next client.
    let err = login_error(&p, "t_sec_nonce").await;
    assert!(err.contains("SCRAM"), "{err}");
}

/// CVE-2026-6666 in PgBouncer: an ErrorResponse without a SQLSTATE, at
/// login and in answer to a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_without_sqlstate() {
    let (port, _) = fake_server(|mut p: Peer| async move {
        p.send(&msg(b'E', b"SFATAL\0Mno code at login\0\0")).await?;
        Some(())
    })
    .await;
    let p = proxy_to(port, "t_sec_nocode1", "").await;
    let err = login_error(&p, "t_sec_nocode1").await;
    assert!(err.contains("no code at login"), "{err}");

    let (port, _) = fake_server(|mut p: Peer| async move {
        p.send(&welcome()).await?;
        while let Some((tag, _)) = p.read().await {
            match tag {
                b'Q' => {
                    p.send(&msg(b'E', b"SERROR\0Mno code in a query\0\0"))
                        .await?;
                    p.send(&msg(b'Z', b"I")).await?;
                }
                b'X' => return Some(()),
                _ => {}
            }
        }
        Some(())
    })
    .await;
    let p = proxy_to(port, "t_sec_nocode2", "server_auth_methods = \"none\"").await;
    let mut c = Raw::connect(p.addr().port(), "t_sec_nocode2", PASSWORD, "t_sec_nocode2").await;
    for _ in 0..2 {
        let reply = c.query("SELECT 1").round_trip().await;
        let tags: Vec<u8> = reply.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"EZ", "{reply:?}");
        assert_eq!(error_code(&reply), None);
    }
}

/// Logs in as far as SCRAM's server-first message: the mechanisms offered
/// and that message (salt, iterations), or the first other reply.
async fn scram_opening(port: u16, user: &str, db: &str) -> (Vec<u8>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", db)],
        &mut out,
    )
    .unwrap();
    s.write_all(&out).await.unwrap();
    let mut p = Peer {
        s,
        buf: BytesMut::new(),
        seen: Seen::default(),
    };
    let (tag, body) = p.read().await.unwrap();
    if tag != b'R' || body.get(..4) != Some(&[0, 0, 0, 10]) {
        return (body, String::new());
    }
    let mechanisms = body[4..].to_vec();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::sasl_initial_response(
        "SCRAM-SHA-256",
        b"n,,n=,r=abcdefghijklmnop",
        &mut out,
    )
    .unwrap();
    p.send(&out).await.unwrap();
    let (_, body) = p.read().await.unwrap();
    let first = String::from_utf8_lossy(&body[4..]).into_owned();
    // The salt and iterations, without the nonce (fresh every time).
    let stable = first
        .split(',')
        .filter(|a| !a.starts_with("r="))
        .collect::<Vec<_>>()
        .join(",");
    (mechanisms, stable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_told_what_a_wrong_password_is() {
    let p = setup("t_sec_enum", 2, "").await;
    let port = p.addr().port();
    // What the client is told: PostgreSQL's own answer, to either.
    let told = |url: String| async move {
        let e = connect(&url).await.unwrap_err();
        let db = e.as_db_error().unwrap();
        (
            db.code().code().to_owned(),
            db.message().replace("ghost", "t_sec_enum"),
        )
    };
    let base = format!("host=127.0.0.1 port={port} dbname=t_sec_enum");
    let direct = format!("host=127.0.0.1 port={} dbname=t_sec_enum", cluster().port());
    let wrong = told(format!("{base} user=t_sec_enum password=wrong")).await;
    let unknown = told(format!("{base} user=ghost password=wrong")).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, "28P01");
    assert_eq!(
        told(format!("{direct} user=ghost password=x")).await,
        unknown
    );
    // The exchange has the same shape: mechanisms, iterations, a salt that
    // is the same at every attempt.
    let known = scram_opening(port, "t_sec_enum", "t_sec_enum").await;
    let ghost = scram_opening(port, "ghost", "t_sec_enum").await;
    assert_eq!(known.0, ghost.0);
    assert!(
        ghost.1.starts_with("s=") && ghost.1.ends_with(",i=4096"),
        "{ghost:?}"
    );
    assert_eq!(scram_opening(port, "ghost", "t_sec_enum").await, ghost);
    assert_ne!(scram_opening(port, "ghost2", "t_sec_enum").await.1, ghost.1);
    // An unknown database is said only after the password.
    let e = connect(&format!(
        "{base} user=t_sec_enum password=wrong dbname=nope"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    let e = connect(&format!(
        "host=127.0.0.1 port={port} user=t_sec_enum password={PASSWORD} dbname=nope"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `n` startup packets with made-up database and user names, half of
/// them answering the SCRAM request with garbage, 8 at a time.
async fn flood(port: u16, n: usize, tag: &str) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (next, tag) = (next.clone(), tag.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let (user, db) = (format!("u{tag}{i}x{}", i * 7919), format!("d{tag}{i}"));
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                        continue;
                    };
                    let mut out = BytesMut::new();
                    postgres_protocol::message::frontend::startup_message(
                        [("user", user.as_str()), ("database", db.as_str())],
                        &mut out,
                    )
                    .unwrap();
                    if i % 2 == 0 {
                        out.extend_from_slice(&msg(b'p', b"SCRAM-SHA-256\0\xff\xff\xff\xffjunk"));
                    }
                    let _ = s.write_all(&out).await;
                    let mut sink = vec![0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {
                            if i % 2 == 1 {
                                return;
                            }
                        }
                    })
                    .await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// pgmux as its own process (its memory is its own), killed on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_leave_no_trace() {
    let c = cluster();
    create_db(c, "t_sec_flood").await;
    // Every name reaches a database through `*`, and unknown users are
    // looked up on the server.
    let su = superuser(c).await;
    su.batch_execute(&format!(
        "CREATE ROLE t_sec_flood_auth LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
    ))
    .await
    .unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:{port}"
auth_user = "t_sec_flood_auth"
client_login_timeout = "5s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[databases."*"]
host = "127.0.0.1"
port = {}

[users.t_sec_flood_auth]
password = "{PASSWORD}"

[users.t_sec_flood]
password = "{PASSWORD}"
"#,
        c.port()
    );
    let path = pgmux::cluster::scratch_dir("flood")
        .unwrap()
        .join("pgmux.toml");
    std::fs::write(&path, text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pgmux = Process(child);
    let pid = pgmux.0.id();
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    assert!(
        eventually(Duration::from_secs(20), || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await
    );
    let metrics = || async move { http_get(metrics_addr, "/metrics").await.1 };
    let pools = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("pgmux_pool_size{"))
            .count()
    };
    // Warm up: the series of unknown names exist once, buffers are grown.
    flood(port, 1_000, "w").await;
    let (before, rss) = (metrics().await, rss_kib(pid));
    flood(port, 10_000, "f").await;
    let after = metrics().await;
    assert_eq!(
        pools(&after),
        pools(&before),
        "no pool for a name nobody authenticated"
    );
    // The same series (their values may grow).
    let series = |text: &str| -> Vec<String> {
        let mut keys: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_owned()))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        series(&after),
        series(&before),
        "no metric series per made-up name"
    );
    assert!(!after.contains("df1"), "no made-up name in /metrics");
    let grown = rss_kib(pid).saturating_sub(rss);
    eprintln!(
        "10,000 made-up logins: RSS {rss} KiB + {grown} KiB, /metrics {} series",
        series(&after).len()
    );
    assert!(grown < 16 * 1024, "resident memory grew by {grown} KiB");
    // Lookups on the server make no pool either.
    for i in 0..50 {
        let _ = connect(&format!(
            "host=127.0.0.1 port={port} user=lookup{i} password=x dbname=t_sec_flood"
        ))
        .await;
    }
    assert_eq!(pools(&metrics().await), pools(&before));
    // An authenticated client gets its pool.
    let client = connect(&format!(
        "host=127.0.0.1 port={port} user=t_sec_flood password={PASSWORD} dbname=t_sec_flood"
    ))
    .await
    .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pools(&metrics().await), pools(&before) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_autodb_pools_are_dropped() {
    let c = cluster();
    create_db(c, "t_sec_autodb").await;
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
autodb_idle_timeout = "1s"

[databases."*"]
host = "127.0.0.1"
port = {}

[users.t_sec_autodb]
password = "{PASSWORD}"
"#,
        c.port()
    );
    let p = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let ctx = p.context().clone();
    let client = connect(&url(&p, "t_sec_autodb")).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(ctx.pools.all().len(), 1);
    // In use, it stays past the timeout.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(ctx.pools.all().len(), 1);
    drop(client);
    assert!(
        eventually(Duration::from_secs(20), || async {
            ctx.pools.all().is_empty()
        })
        .await,
        "the pool went once unused"
    );
    assert!(
        server_states("t_sec_autodb").await.is_empty(),
        "its servers closed"
    );
    // A later client makes a new one.
    let client = connect(&url(&p, "t_sec_autodb")).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_only_its_own_client() {
    let p = setup("t_sec_cancel", 1, "pool_mode = \"transaction\"").await;
    let addr = p.addr();
    let mut a = Raw::connect(addr.port(), "t_sec_cancel", PASSWORD, "t_sec_cancel").await;
    let (pid, secret) = a.key;
    let b = client(&p, "t_sec_cancel").await;
    // A's transaction is over: its cancel finds no server of A's, and B's
    // query on the same server runs to its end.
    a.query("SELECT 1").round_trip().await;
    let sleeping = tokio::spawn(async move {
        let r = b.simple_query("SELECT pg_sleep(1)").await.map(|_| ());
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pgmux::cancel::send_cancel(addr, pid, secret).await;
    let (b, r) = sleeping.await.unwrap();
    r.expect("B's query was not A's to cancel");
    let dropped = || {
        let text = p.context().render_metrics();
        sample(
            &parse_prometheus(&text),
            "pgmux_cancel_requests_total",
            &[("outcome", "dropped")],
        )
    };
    assert_eq!(dropped(), Some(1.0));
    // Cancels that race the end of A's transactions: each reaches A's
    // query or nobody, never B's, which shares the one server.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canceller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pgmux::cancel::send_cancel(addr, pid, secret).await;
                sent += 1;
            }
            sent
        })
    };
    let a_loop = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut n = 0;
        while tokio::time::Instant::now() < deadline {
            a.query("SELECT pg_sleep(0.001)").round_trip().await;
            n += 1;
        }
        n
    });
    let mut b_cancelled = 0;
    let mut b_ran = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        match b.simple_query("SELECT pg_sleep(0.01)").await {
            Ok(_) => b_ran += 1,
            Err(e) if sqlstate(&e).as_deref() == Some("57014") => b_cancelled += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, a_ran) = (canceller.await.unwrap(), a_loop.await.unwrap());
    assert!(
        sent > 50 && a_ran > 20 && b_ran > 20,
        "{sent} {a_ran} {b_ran}"
    );
    assert_eq!(b_cancelled, 0, "cancels of A's reached B ({sent} sent)");
}

/// CVE-2025-12819 in PgBouncer: a client's startup parameters reached the
/// session that runs auth_query, so `search_path` could put a table of the
/// client's making in front of pg_shadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_never_reach_the_auth_query_session() {
    let c = cluster();
    create_db(c, "t_sec_aq").await;
    let su = superuser(c).await;
    su.batch_execute(&format!(
        "CREATE ROLE t_sec_aq_lookup SUPERUSER LOGIN PASSWORD '{PASSWORD}'"
    ))
    .await
    .unwrap();
    // A schema whose pg_shadow says every user's password is "evil".
    let evil = postgres_protocol::password::scram_sha_256(b"evil");
    let db = connect(&c.socket_url("t_sec_aq")).await.unwrap();
    db.batch_execute(&format!(
        "CREATE SCHEMA evil; CREATE TABLE evil.pg_shadow (usename text, passwd text); \
         INSERT INTO evil.pg_shadow VALUES ('victim', '{evil}'); \
         GRANT USAGE ON SCHEMA evil TO PUBLIC; GRANT SELECT ON evil.pg_shadow TO PUBLIC"
    ))
    .await
    .unwrap();
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"
auth_user = "t_sec_aq_lookup"
auth_query = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"

[databases.t_sec_aq]
port = {}

[users.t_sec_aq_lookup]
password = "{PASSWORD}"
"#,
        c.port()
    );
    let p = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let port = p.addr().port();
    for opts in [
        "options='-c search_path=evil,pg_catalog'",
        "options='-csearch_path=evil,pg_catalog -c role=t_sec_aq'",
    ] {
        let e = connect(&format!(
            "host=127.0.0.1 port={port} user=victim password=evil dbname=t_sec_aq {opts}"
        ))
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{opts}: {e:?}");
    }
    // search_path as a startup parameter of its own, as some drivers send it.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [
            ("user", "victim"),
            ("database", "t_sec_aq"),
            ("search_path", "evil, pg_catalog"),
        ],
        &mut out,
    )
    .unwrap();
    s.write_all(&out).await.unwrap();
    let (ghost, real) = (
        scram_opening(port, "victim", "t_sec_aq").await,
        scram_opening(port, "nobody_at_all", "t_sec_aq").await,
    );
    // The salt offered is a mock one (the name is unknown on the server),
    // not the one in evil.pg_shadow.
    let evil_salt = evil
        .split('$')
        .nth(1)
        .and_then(|s| s.split(':').nth(1))
        .unwrap();
    assert!(!ghost.1.contains(evil_salt), "{ghost:?}");
    assert_eq!(ghost.0, real.0);
}

/// CVE-2026-6664 in PgBouncer: SCRAM messages from a client whose length
/// fields overflow, or disagree with the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_messages_with_lying_lengths() {
    let p = setup("t_sec_scram", 1, "").await;
    let port = p.addr().port();
    let initial = |len: i32, data: &[u8]| {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(data);
        msg(b'p', &body)
    };
    let cases = vec![
        initial(i32::MAX, b"n,,n=,r=abc"),
        initial(-1, b"n,,n=,r=abc"),
        initial(i32::MIN, b""),
        initial(3, b"n,,n=,r=abc"),
        initial(100, b"n,,n=,r=abc"),
        initial(11, b"n,,n=,r=\xff\xfe\x00"),
        // A message length that claims far more than is sent.
        vec![b'p', 0x7f, 0xff, 0xff, 0xff, 0, 0],
        vec![b'p', 0xff, 0xff, 0xff, 0xff],
        vec![b'p', 0, 0, 0, 3],
        // The name of the mechanism runs to the end.
        msg(b'p', b"SCRAM-SHA-256"),
    ];
    for bytes in cases {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "t_sec_scram"), ("database", "t_sec_scram")],
            &mut out,
        )
        .unwrap();
        s.write_all(&out).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        let mut sasl = vec![0u8; i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4];
        s.read_exact(&mut sasl).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
        let mut buf = BytesMut::from(&reply[..]);
        let mut msgs = Vec::new();
        while let Ok(Some(f)) = pgmux::protocol::frame::split_frame(&mut buf, 1 << 20) {
            msgs.push((f.tag(), f.body().to_vec()));
        }
        let code = error_code(&msgs);
        assert!(
            matches!(code.as_deref(), Some("08P01") | Some("28P01")),
            "{bytes:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Everyone else is still served.
    client(&p, "t_sec_scram")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// CVE-2026-6667 in PgBouncer: a stats-only user ran admin commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_may_only_look() {
    let text = format!(
        r#"
[pgmux]
listen = "127.0.0.1:0"

[admin]
users = ["t_sec_admin"]
stats_users = ["t_sec_stats"]

[users.t_sec_admin]
password = "{PASSWORD}"

[users.t_sec_stats]
password = "{PASSWORD}"
"#
    );
    let p = Proxy::start(Config::parse(&text).unwrap()).await.unwrap();
    let console = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={PASSWORD} dbname=pgbouncer",
            p.addr().port()
        )
    };
    let stats = connect(&console("t_sec_stats")).await.unwrap();
    stats.simple_query("SHOW POOLS").await.unwrap();
    stats.simple_query("show version;").await.unwrap();
    for cmd in [
        "PAUSE",
        "RESUME",
        "RELOAD",
        "RECONNECT",
        "KILL pgbouncer",
        "DISABLE pgbouncer",
        "ENABLE pgbouncer",
        "WAIT_CLOSE",
        "shutdown",
        "  Shutdown ;",
        "SHOW POOLS; SHUTDOWN",
        "/* SHOW */ SHUTDOWN",
        "SET pool_mode = 'session'",
    ] {
        let e = stats.simple_query(cmd).await.unwrap_err();
        let code = sqlstate(&e);
        assert!(
            matches!(code.as_deref(), Some("42501") | Some("42601")),
            "{cmd}: {e:?}"
        );
    }
    // The process is still there, and the admin may act.
    let admin = connect(&console("t_sec_admin")).await.unwrap();
    admin.simple_query("PAUSE").await.unwrap();
    admin.simple_query("RESUME").await.unwrap();
    stats.simple_query("SHOW STATS").await.unwrap();
}

/// pgmux shares its server-side statements between the clients of a pool:
/// one client replacing one (by a name pgmux does not read: a second
/// statement of a Query, a `U&` name) must not make the next client's
/// Bind run its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_statements_cannot_be_replaced() {
    let p = setup("t_sec_stmts", 1, "").await;
    let victim = client(&p, "t_sec_stmts").await;
    let stmt = victim.prepare("SELECT 42::int AS answer").await.unwrap();
    let answer = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i32>(0);
    assert_eq!(answer(victim.query(&stmt, &[]).await.unwrap()), 42);
    let mut attacker = Raw::connect(p.addr().port(), "t_sec_stmts", PASSWORD, "t_sec_stmts").await;
    // The victim's statement is the only one: pgmux_<n> for some n.
    let names: Vec<String> = {
        let r = attacker
            .query("SELECT name FROM pg_prepared_statements ORDER BY name")
            .round_trip()
            .await;
        r.iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| String::from_utf8_lossy(&b[6..]).into_owned())
            .collect()
    };
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    let escaped: String = name
        .chars()
        .map(|c| format!("\\{:04x}", c as u32))
        .collect();
    for attack in [
        format!("SELECT 1; DEALLOCATE {name}; PREPARE {name} AS SELECT 666"),
        format!("DEALLOCATE U&\"{escaped}\"; PREPARE {name} AS SELECT 666"),
        format!(
            "DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; EXECUTE 'PREPARE {name} AS SELECT 666'; END $$"
        ),
    ] {
        let r = attacker.query(&attack).round_trip().await;
        assert_eq!(r.last().map(|m| m.0), Some(b'Z'), "{attack}: {r:?}");
        // The victim's next Bind runs its own text, on this server or
        // another.
        assert_eq!(answer(victim.query(&stmt, &[]).await.unwrap()), 42, "{attack}");
    }
    let text = p.context().render_metrics();
    let closed = sample(
        &parse_prometheus(&text),
        "pgmux_session_checks_total",
        &[("kind", "statements_changed")],
    );
    assert_eq!(closed, Some(3.0), "each replacement closed its server");
}

/// A statement's text reads differently in another client encoding: a
/// check asked by a LATIN1 client takes neither a UTF-8 client's `é` for a
/// replaced statement nor fails on a `€` LATIN1 has no byte for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_other_encodings_are_not_taken_for_replaced() {
    let p = setup("t_sec_latin1", 1, "").await;
    let mut c = Raw::connect(p.addr().port(), "t_sec_latin1", PASSWORD, "t_sec_latin1").await;
    let r = c
        .parse("s", "SELECT 'é' AS x /* € */")
        .bind("", "s", &[])
        .execute("")
        .sync()
        .round_trip()
        .await;
    assert_eq!(tags(&r), "12DCZ", "{r:?}");
    c.query("SET client_encoding = 'LATIN1'").round_trip().await;
    // A DEALLOCATE the server answers makes pgmux check its statements.
    let r = c.query("DEALLOCATE nothing_here").round_trip().await;
    assert_eq!(error_code(&r).as_deref(), Some("26000"), "{r:?}");
    let r = c.bind("", "s", &[]).execute("").sync().round_trip().await;
    assert_eq!(tags(&r), "2DCZ", "{r:?}");
    let text = p.context().render_metrics();
    let closed = sample(
        &parse_prometheus(&text),
        "pgmux_session_checks_total",
        &[("kind", "statements_changed")],
    );
    assert_eq!(closed, None, "no server taken for changed");
    let opened = sample(
        &parse_prometheus(&text),
        "pgmux_server_connections_opened_total",
        &[("database", "t_sec_latin1")],
    );
    assert_eq!(
        opened,
        Some(1.0),
        "the one server was kept: the check did not fail"
    );
}
