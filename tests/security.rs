//! The threat model of docs/security.md, one test per threat: servers (or
//! whatever sits between pgmux and them) that try to skip authentication,
//! phish a password or overflow a parser; unauthenticated peers that try
//! to grow pgmux's memory or learn which users exist; cancels that could
//! reach another client's query.

mod common;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use common::raw::{error_code, Raw};
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
    assert!(err.contains("over a connection without TLS"), "{err}");
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
