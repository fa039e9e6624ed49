//! Hostile and broken input: every malformed packet gets a clear
//! ErrorResponse (or a closed socket), pgmux never panics, and everyone
//! else keeps being served with no server connection leaked.

mod common;

use std::time::Duration;

use bytes::BufMut;
use common::raw::{error_code, Raw};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` on a fresh connection and returns everything pgmux answers
/// until it closes the socket (bounded in time).
async fn answer_to(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

fn sqlstate_in(reply: &[u8]) -> Option<String> {
    let msgs = split(reply);
    error_code(&msgs)
}

fn split(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut buf = bytes::BytesMut::from(reply);
    let mut v = Vec::new();
    while let Ok(Some(f)) = pgmux::protocol::frame::split_frame(&mut buf, 1 << 20) {
        v.push((f.tag(), f.body().to_vec()));
    }
    v
}

fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    b.put_i32(0);
    b.put_i32(version);
    for (k, v) in params {
        b.put_slice(k.as_bytes());
        b.put_u8(0);
        b.put_slice(v.as_bytes());
        b.put_u8(0);
    }
    b.put_u8(0);
    let len = b.len() as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_clear_errors() {
    let p = setup("t_hostile1", 2, "client_login_timeout = \"1s\"").await;
    let port = p.addr().port();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversized startup",
            [&100_000i32.to_be_bytes()[..], &196_608i32.to_be_bytes()].concat(),
            "08P01",
        ),
        ("length below 8", 3i32.to_be_bytes().to_vec(), "08P01"),
        (
            "data behind an SSLRequest",
            [
                &8i32.to_be_bytes()[..],
                &80_877_103i32.to_be_bytes(),
                &startup_packet(196_608, &[("user", "t_hostile1")]),
            ]
            .concat(),
            "08P01",
        ),
        ("negative length", (-5i32).to_be_bytes().to_vec(), "08P01"),
        (
            "HTTP instead of PostgreSQL",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "08P01",
        ),
        (
            "protocol 2.0",
            startup_packet(131_072, &[("user", "t_hostile1")]),
            "0A000",
        ),
        (
            "no terminator",
            {
                let mut v = startup_packet(196_608, &[("user", "t_hostile1")]);
                let n = v.len();
                v[n - 1] = b'x';
                v
            },
            "08P01",
        ),
        (
            "no user",
            startup_packet(196_608, &[("database", "t_hostile1")]),
            "28000",
        ),
        (
            "replication",
            startup_packet(196_608, &[("user", "t_hostile1"), ("replication", "true")]),
            "0A000",
        ),
        (
            "bad option",
            startup_packet(196_608, &[("user", "t_hostile1"), ("options", "-d 5")]),
            "08P01",
        ),
    ];
    for (what, bytes, code) in cases {
        let reply = answer_to(port, &bytes).await;
        assert_eq!(
            sqlstate_in(&reply).as_deref(),
            Some(code),
            "{what}: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // A newer 3.x minor version is negotiated down to 3.2, unknown `_pq_`
    // options named, as PostgreSQL 18 does; 3.2 itself is served as is.
    for (asked, served) in [(196_611, Some(196_610)), (196_610, None)] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut params = vec![("user", "t_hostile1")];
        if served.is_some() {
            params.push(("_pq_.something", "1"));
        }
        s.write_all(&startup_packet(asked, &params)).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let msgs = split(&buf[..n]);
        match served {
            Some(version) => {
                assert_eq!(msgs[0].0, b'v', "NegotiateProtocolVersion first");
                assert_eq!(msgs[0].1[..4], i32::to_be_bytes(version));
                assert!(String::from_utf8_lossy(&msgs[0].1).contains("_pq_.something"));
                assert_eq!(msgs[1].0, b'R', "then authentication");
            }
            None => assert_eq!(msgs[0].0, b'R', "3.2: authentication at once"),
        }
    }
    // A client that trickles bytes is closed at client_login_timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = std::time::Instant::now();
    let packet = startup_packet(196_608, &[("user", "t_hostile1")]);
    let mut closed = false;
    for b in packet {
        if s.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(
        closed || started.elapsed() < Duration::from_secs(5),
        "trickling client was cut off"
    );
    client(&p, "t_hostile1")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// A client may send its first query right behind its startup packet (with
/// trust there is nothing to wait for): the bytes read together with the
/// login are kept for the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pipelined_behind_the_startup_packet_is_served() {
    let p = setup("t_pipelined", 1, "auth_type = \"trust\"").await;
    let mut bytes = startup_packet(
        196_608,
        &[("user", "t_pipelined"), ("database", "t_pipelined")],
    );
    bytes.extend_from_slice(b"Q\0\0\0\x0eSELECT 42\0X\0\0\0\x04");
    let reply = answer_to(p.addr().port(), &bytes).await;
    let msgs = split(&reply);
    assert_eq!(error_code(&msgs), None, "{msgs:?}");
    assert!(
        msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"42")),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_after_login_are_08p01_and_leak_nothing() {
    let p = setup("t_hostile2", 2, "max_message_size = 1048576").await;
    let port = p.addr().port();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("length 2", b"Q\0\0\0\x02".to_vec()),
        ("negative length", b"Q\xff\xff\xff\xf0".to_vec()),
        (
            "over max_message_size",
            [&b"Q"[..], &(64i32 << 20).to_be_bytes()].concat(),
        ),
        ("password after login", b"p\0\0\0\x08abc\0".to_vec()),
        ("truncated Parse", b"P\0\0\0\x06a\0".to_vec()),
        (
            "Parse with bad type count",
            b"P\0\0\0\x0ds\0select\0".to_vec(),
        ),
        ("Bind without names", b"B\0\0\0\x05x".to_vec()),
        ("Describe of nonsense kind", b"D\0\0\0\x07Xab\0".to_vec()),
        ("Close without terminator", b"C\0\0\0\x07Sabc".to_vec()),
    ];
    for (what, bytes) in bad {
        let mut c = Raw::connect(port, "t_hostile2", PASSWORD, "t_hostile2").await;
        // Half a transaction first: the server must not stay in it.
        c.query("BEGIN").round_trip().await;
        c.out.extend_from_slice(&bytes);
        c.flush().await;
        let reply = c.read().await;
        assert_eq!(reply.0, b'E', "{what}");
        assert_eq!(error_code(&[reply]).as_deref(), Some("08P01"), "{what}");
    }
    // Random bytes after login never bring pgmux down.
    let mut seed = 42u64;
    for _ in 0..50 {
        let mut c = Raw::connect(port, "t_hostile2", PASSWORD, "t_hostile2").await;
        let len = 1 + (seed % 64) as usize;
        for _ in 0..len {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.out.put_u8((seed >> 56) as u8);
        }
        c.flush().await;
        drop(c);
    }
    let ok = client(&p, "t_hostile2").await;
    ok.simple_query("SELECT 1").await.unwrap();
    let clean = eventually(Duration::from_secs(10), || async {
        let states = server_states("t_hostile2").await;
        states.len() <= 2 && !states.iter().any(|s| s.starts_with("idle in transaction"))
    })
    .await;
    assert!(
        clean,
        "no leaked or stuck server connection: {:?}",
        server_states("t_hostile2").await
    );
}
