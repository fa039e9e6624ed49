//! Fuzzing of everything that reads untrusted bytes, on stable Rust.
//!
//! Each target starts from a corpus of real traffic (messages as
//! postgres-protocol, the library tokio-postgres sends with, encodes them),
//! and feeds the reader both structure-aware inputs (valid messages with
//! random fields) and mutations of them (bit flips, truncation, splices,
//! corrupted length fields, inserted and deleted bytes). The goal: no
//! panic, no allocation out of proportion to the input, and, over a live
//! pgmux, every bad input answered with an error while others are served.
//!
//! `PGMUX_FUZZ_ITERATIONS` sets the inputs per target (default 3,000, a few
//! seconds in CI); `PGMUX_FUZZ_SEED` varies the run. The long run recorded
//! in docs/security.md used `PGMUX_FUZZ_ITERATIONS=10000000`, with
//! `PGMUX_FUZZ_ALLOC_CHECK=1 -- --test-threads=1 --nocapture`.

mod common;
#[path = "fuzz/sql.rs"]
mod sql;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::Raw;
use pgmux::prepared::{
    messages, Limits, Outbox, Registry, Routed, ServerStatements, Tracker, Undo,
};
use pgmux::protocol::expect::{Expect, Outcome, Reply, Req};
use pgmux::protocol::frame::split_frame;
use pgmux::protocol::frontend::{self as reader, Message};
use pgmux::protocol::{encode, startup, ErrorFields, Frame, TxStatus};
use postgres_protocol::message::frontend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Records the largest single allocation, so a target can check that no
/// input made pgmux allocate out of proportion to it.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only
// records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn iterations() -> usize {
    std::env::var("PGMUX_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000)
}

fn rng(target: u64) -> StdRng {
    let seed: u64 = std::env::var("PGMUX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ target)
}

/// Runs `f` and fails if it made an allocation larger than `limit` bytes
/// (tests run concurrently, so this is checked only when run alone:
/// `--test-threads=1` or the long run).
fn bounded<T>(limit: usize, input: &[u8], f: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    let largest = LARGEST.load(Ordering::Relaxed);
    if std::env::var("PGMUX_FUZZ_ALLOC_CHECK").is_ok() {
        assert!(
            largest <= limit,
            "allocated {largest} bytes for a {}-byte input: {:?}",
            input.len(),
            &input[..input.len().min(64)]
        );
    }
    out
}

// === Inputs ===

/// Real client traffic: what tokio-postgres, psql and pgbench send.
fn client_corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut b = BytesMut::new();
    frontend::parse("s1", "SELECT $1::int + 1", [23], &mut b).unwrap();
    frontend::describe(b'S', "s1", &mut b).unwrap();
    frontend::sync(&mut b);
    v.push(b.split().to_vec());
    frontend::bind(
        "",
        "s1",
        [0],
        [&b"41"[..]],
        |p, buf| {
            buf.put_slice(p);
            Ok(postgres_protocol::IsNull::No)
        },
        [0],
        &mut b,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    v.push(b.split().to_vec());
    frontend::query("BEGIN; SET ROLE x; SELECT 'a;b' -- c\n; COMMIT", &mut b).unwrap();
    v.push(b.split().to_vec());
    frontend::query("DEALLOCATE \"S_1\"; DISCARD ALL", &mut b).unwrap();
    v.push(b.split().to_vec());
    frontend::close(b'S', "sqlx_s_1", &mut b).unwrap();
    frontend::close(b'P', "", &mut b).unwrap();
    frontend::flush(&mut b);
    frontend::sync(&mut b);
    v.push(b.split().to_vec());
    v
}

/// Startup-phase packets: StartupMessage, SSLRequest, CancelRequest.
fn startup_corpus() -> Vec<Vec<u8>> {
    let mut b = BytesMut::new();
    let mut v = Vec::new();
    frontend::startup_message(
        [
            ("user", "app"),
            ("database", "blog"),
            ("options", "-c search_path=a,b --DateStyle=ISO"),
            ("application_name", "psql"),
        ],
        &mut b,
    )
    .unwrap();
    v.push(b.split().to_vec());
    frontend::ssl_request(&mut b);
    v.push(b.split().to_vec());
    frontend::cancel_request(1234, 5678, &mut b);
    v.push(b.split().to_vec());
    v
}

/// Server traffic a misbehaving server might send.
fn server_corpus() -> Vec<Vec<u8>> {
    let raw: &[&[u8]] = &[
        b"1\0\0\0\x04",
        b"2\0\0\0\x04",
        b"3\0\0\0\x04",
        b"n\0\0\0\x04",
        b"s\0\0\0\x04",
        b"I\0\0\0\x04",
        b"C\0\0\0\x0dSELECT 1\0",
        b"D\0\0\0\x0b\0\x01\0\0\0\x01x",
        b"Z\0\0\0\x05I",
        b"Z\0\0\0\x05E",
        b"E\0\0\0\x1eSERROR\0C42601\0Msyntax\0\0",
        b"S\0\0\0\x16session_authorization\0x\0",
        b"G\0\0\0\x07\0\0\0",
    ];
    raw.iter().map(|r| r.to_vec()).collect()
}

/// A random valid client message of a tracked kind.
fn structured_message(r: &mut StdRng, out: &mut BytesMut) {
    let names = ["", "s1", "sqlx_s_1", "pgmux_1", "S_1\u{e9}"];
    let name = names[r.random_range(0..names.len())];
    let queries = [
        "SELECT 1",
        "select $1",
        "SET ROLE x",
        "DISCARD ALL",
        "DEALLOCATE s1",
        "DEALLOCATE ALL",
        "",
    ];
    let query = queries[r.random_range(0..queries.len())];
    let _ = match r.random_range(0..7) {
        0 => frontend::parse(name, query, (0..r.random_range(0..3)).map(|_| 23), out),
        1 => frontend::bind(
            "",
            name,
            [0],
            [&b"1"[..]],
            |p, buf| {
                buf.put_slice(p);
                Ok(postgres_protocol::IsNull::No)
            },
            [0],
            out,
        )
        .map_err(|_| std::io::Error::other("bind")),
        2 => frontend::describe(if r.random() { b'S' } else { b'P' }, name, out),
        3 => frontend::close(if r.random() { b'S' } else { b'P' }, name, out),
        4 => frontend::query(query, out),
        5 => {
            frontend::sync(out);
            Ok(())
        }
        _ => frontend::execute("", 0, out),
    };
}

/// One mutation of `input`.
fn mutate(r: &mut StdRng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len();
    match r.random_range(0..8) {
        0 if len > 0 => {
            let i = r.random_range(0..len);
            input[i] ^= 1 << r.random_range(0..8);
        }
        1 if len > 0 => {
            let i = r.random_range(0..len);
            input[i] = [0, 0xff, 0x7f, 0x80, b'\'', b'$', b';'][r.random_range(0..7)];
        }
        2 => input.truncate(r.random_range(0..=len)),
        3 => {
            let at = r.random_range(0..=len);
            let n = r.random_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| r.random()).collect();
            input.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let at = r.random_range(0..len);
            let end = (at + r.random_range(1..16)).min(len);
            input.drain(at..end);
        }
        5 if len >= 5 => {
            // A length field: tagged messages carry it at 1..5.
            let v: i32 = [0, 3, 4, -1, i32::MAX, 1 << 30, r.random()][r.random_range(0..7)];
            input[1..5].copy_from_slice(&v.to_be_bytes());
        }
        6 => {
            let other = &corpus[r.random_range(0..corpus.len())];
            let at = r.random_range(0..=len);
            input.splice(at..at, other.iter().copied());
        }
        _ => {
            let at = r.random_range(0..=len);
            let copy: Vec<u8> = input[at..].to_vec();
            input.extend_from_slice(&copy);
        }
    }
}

/// Inputs for a target: corpus entries, structure-aware messages, and
/// stacks of mutations of both.
fn inputs(target: u64, corpus: &[Vec<u8>], structured: bool) -> impl Iterator<Item = Vec<u8>> {
    let mut r = rng(target);
    let corpus = corpus.to_vec();
    (0..iterations()).map(move |_| {
        let mut input = if structured && r.random() {
            let mut b = BytesMut::new();
            for _ in 0..r.random_range(1..6) {
                structured_message(&mut r, &mut b);
            }
            b.to_vec()
        } else {
            corpus[r.random_range(0..corpus.len())].clone()
        };
        for _ in 0..r.random_range(0..4) {
            mutate(&mut r, &mut input, &corpus);
        }
        input
    })
}

/// Feeds every input of a target to `f`, then reports how many it ran.
fn each(target: u64, name: &str, corpus: &[Vec<u8>], structured: bool, mut f: impl FnMut(Vec<u8>)) {
    let mut n = 0usize;
    for input in inputs(target, corpus, structured) {
        f(input);
        n += 1;
    }
    eprintln!("fuzz {name}: {n} inputs, no failure");
}

/// Splits `input` into frames as the session does (`max` per message).
fn frames(input: &[u8], max: usize) -> Vec<Frame> {
    let mut buf = BytesMut::from(input);
    let mut v = Vec::new();
    while let Ok(Some(f)) = split_frame(&mut buf, max) {
        v.push(f);
    }
    v
}

// === Targets ===

#[test]
fn client_frames() {
    // The buffer itself, the frames list, and at most RESERVE_AHEAD for a
    // partial message, whatever length its header declares.
    let ahead = pgmux::protocol::frame::RESERVE_AHEAD;
    each(1, "client_frames", &client_corpus(), true, |input| {
        bounded(input.len() * 4 + ahead + 4096, &input, || {
            frames(&input, 1 << 20)
        });
    });
}

#[test]
fn startup_packets() {
    each(2, "startup_packets", &startup_corpus(), false, |input| {
        bounded(input.len() * 4 + 4096, &input, || {
            if let Some(len) = input.get(..4) {
                let _ = startup::body_len([len[0], len[1], len[2], len[3]]);
            }
            if let Some(body) = input.get(4..) {
                if let Ok(startup::StartupPacket::Startup { params, .. }) = startup::parse(body) {
                    for (k, v) in params {
                        if k == "options" {
                            let _ = startup::parse_options(&v);
                        }
                    }
                }
            }
        });
    });
}

#[test]
fn prepared_readers_and_rewriters() {
    let ahead = pgmux::protocol::frame::RESERVE_AHEAD;
    each(
        3,
        "prepared_readers_and_rewriters",
        &client_corpus(),
        true,
        |input| {
            bounded(input.len() * 4 + ahead + 4096, &input, || {
                for f in frames(&input, 1 << 20) {
                    let body = f.body();
                    let _ = reader::parse(body);
                    let _ = reader::target(body);
                    if let Some(b) = reader::bind(body) {
                        let _ = b.values();
                        let mut out = BytesMut::new();
                        encode::write_bind(&mut out, b.portal, b"pgmux_1", b.rest)
                            .expect("a Bind within the frame limit fits once renamed");
                        let again = frames(&out, 1 << 20);
                        assert_eq!(again.len(), 1, "a rewritten Bind must frame as one message");
                    }
                    let _ = Message::read(&f).text();
                    let _ = messages::sql_effect(body);
                    let _ = pgmux::sql::effects(body);
                }
            });
        },
    );
}

/// Random message sequences through the prepared-statement tracker, with
/// random server outcomes (done, failed, skipped) for what it routed.
#[test]
fn tracker_sequences() {
    let registry = Registry::default();
    let limits = Limits {
        per_client: 4,
        per_server: 3,
        track_unnamed: true,
    };
    let mut r = rng(4);
    each(4, "tracker_sequences", &client_corpus(), true, |input| {
        let mut tracker = Tracker::new(limits);
        let mut server = ServerStatements::default();
        let (mut sout, mut replies) = (BytesMut::new(), Vec::new());
        for f in frames(&input, 1 << 20) {
            let held = r.random_range(0..4) > 0;
            // The session asks before routing whether to take a server:
            // the answer must be what routing then finds.
            let msg = Message::read(&f);
            let predicted = tracker.needs_server(&msg, &registry, TxStatus::Idle);
            let mut out = Outbox::new(&mut sout, &mut replies);
            let routed = tracker.route(
                &msg,
                &f,
                held.then_some(&mut server),
                &registry,
                TxStatus::Idle,
                &mut out,
            );
            if routed.as_ref().is_ok_and(|r| *r == Routed::NeedServer) {
                assert!(!held, "a held server is never asked for");
            }
            if !held {
                let needed = routed.as_ref().is_ok_and(|r| *r == Routed::NeedServer);
                match predicted {
                    Some(p) => assert_eq!(p, needed, "needs_server disagrees on {f:?}"),
                    None => assert!(routed.is_ok_and(|r| r == Routed::Untracked)),
                }
            }
            for (_, _, hook) in replies.drain(..) {
                match r.random_range(0..3) {
                    0 => tracker.on_done(hook, Some(&mut server)),
                    n => {
                        let how = match (r.random::<bool>(), n == 1) {
                            (true, rejected) => Undo::StalePlan { rejected },
                            (false, true) => Undo::Rejected,
                            (false, false) => Undo::Skipped,
                        };
                        tracker.undo(hook, Some(&mut server), how)
                    }
                }
            }
            sout.clear();
        }
        assert!(server.len() <= limits.per_server);
    });
}

/// A misbehaving server: random replies against random requests.
#[test]
fn server_replies() {
    let mut r = rng(5);
    each(5, "server_replies", &server_corpus(), false, |input| {
        let mut e: Expect<u32> = Expect::default();
        let mut out = BytesMut::new();
        let reqs = [
            Req::Parse,
            Req::Bind,
            Req::Describe,
            Req::Execute,
            Req::Close,
            Req::Sync,
            Req::Query,
        ];
        for i in 0..r.random_range(0..6) {
            let reply = match r.random_range(0..4) {
                0 => Reply::Swallow,
                1 => Reply::Synthetic(Bytes::from_static(b"1\0\0\0\x04")),
                2 => Reply::Replace(Bytes::from_static(b"3\0\0\0\x04")),
                _ => Reply::Forward,
            };
            let _ = e.push(reqs[r.random_range(0..reqs.len())], reply, i, &mut out);
        }
        for f in frames(&input, 1 << 20) {
            let _ = ErrorFields::parse(f.body());
            if let Outcome::Failed(hooks) = e.on_server(&f, &mut out) {
                assert!(!hooks.is_empty());
            }
        }
        let _ = e.abandon();
    });
}

#[test]
fn scram_client_messages() {
    let verifier = pgmux::auth::Secret::parse("secret")
        .scram_verifier()
        .expect("a verifier for a plaintext password");
    let corpus = vec![
        b"n,,n=,r=rOprNGfwEbeRWgbNEkqO".to_vec(),
        b"c=biws,r=rOprNGfwEbeRWgbNEkqOhost,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            .to_vec(),
    ];
    each(6, "scram_client_messages", &corpus, false, |input| {
        bounded(input.len() * 8 + 8192, &input, || {
            // Every mix of channel binding offered and chosen.
            let offered = (input.len() % 2 == 0).then_some(&b"end point"[..]);
            let plus = input.len() % 3 == 0;
            let started = pgmux::auth::scram::ScramServer::start(&verifier, &input, offered, plus);
            if let Ok((server, _)) = started {
                let _ = server.finish(&input);
            }
        });
    });
}

#[test]
fn admin_commands() {
    let corpus: Vec<Vec<u8>> = [
        "SHOW POOLS;",
        "show clients",
        "KILL blog",
        "PAUSE blog",
        "RELOAD",
        "SET x = 1",
        "SHOW STATS_TOTALS",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    each(7, "admin_commands", &corpus, false, |input| {
        let text = String::from_utf8_lossy(&input);
        let _ = pgmux::admin::Command::parse(&text);
    });
}

/// Hostile bytes over TCP against a live pgmux: each connection gets an
/// answer (an error, or normal replies) or is closed, never a panic, and a
/// well-behaved client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let panics = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let previous = std::panic::take_hook();
    // Only pgmux's own panics: another target of this binary failing an
    // assertion at the same time is not pgmux panicking.
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| l.file().starts_with("src/"))
        {
            seen.fetch_add(1, Ordering::Relaxed);
        }
        previous(info);
    }));
    let p = common::setup("t_fuzz_live", 2, "client_login_timeout = \"2s\"").await;
    let port = p.addr().port();
    let good = common::client(&p, "t_fuzz_live").await;
    let sessions = (iterations() / 30).clamp(20, 2_000);
    // Half the sessions are hostile from their first byte, half log in
    // properly and then send mutated traffic; eight at a time.
    let one = |i: usize| async move {
        let mut r = rng(8 + i as u64);
        let limit = std::time::Duration::from_secs(5);
        let logged_in = i % 2 == 1;
        let corpus = if logged_in {
            client_corpus()
        } else {
            startup_corpus()
        };
        let mut input = corpus[r.random_range(0..corpus.len())].clone();
        for _ in 0..r.random_range(1..4) {
            mutate(&mut r, &mut input, &corpus);
        }
        let reply = if logged_in {
            let mut raw = Raw::connect(port, "t_fuzz_live", common::PASSWORD, "t_fuzz_live").await;
            raw.send_raw(&input, limit).await
        } else {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(limit, s.read_to_end(&mut reply)).await;
            reply
        };
        // The connection's end, if pgmux ended it, says why in words
        // PostgreSQL uses: a protocol violation, a login refused, or a
        // feature it does not offer.
        let skip = usize::from(reply.first().is_some_and(|b| matches!(b, b'N' | b'S')));
        for f in frames(&reply[skip..], 1 << 24) {
            let fields = ErrorFields::parse(f.body()).unwrap_or_default();
            if f.tag() == b'E' && fields.severity == b"FATAL" {
                let code = String::from_utf8_lossy(fields.code).into_owned();
                assert!(
                    ["08P01", "28000", "28P01", "0A000", "3D000", "57P01", "08006"]
                        .contains(&code.as_str()),
                    "FATAL {code} ({}) for {input:?}",
                    fields.message_lossy()
                );
            }
        }
    };
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(8) {
        futures_util::future::join_all(chunk.iter().map(|&i| one(i))).await;
    }
    eprintln!("fuzz live_sessions: {sessions} sessions, no failure");
    let row = good.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(panics.load(Ordering::Relaxed), 0, "pgmux panicked");
}
