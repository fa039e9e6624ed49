//! Micro-benchmarks of the per-message work on the hot path:
//! `cargo bench --bench hot_path`.
//!
//! - framing: splitting a recorded pgbench-style exchange (extended
//!   protocol, 1,000 transactions) into frames, both directions;
//! - the reply queue: pushing Bind/Execute/Sync and matching the replies;
//! - prepared statements: reading a Bind and rewriting its statement name,
//!   and the registry lookup a Parse costs;
//! - session state: the check every Query and Parse gets for statements
//!   that may change identity or settings, pin, or reset
//!   (`pgmux::sql::effects`).

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgmux::prepared::{messages, Registry};
use pgmux::protocol::expect::{Expect, Reply, Req};
use pgmux::protocol::frame::split_frame;
use pgmux::protocol::{encode, Frame, TxStatus};

fn bind(out: &mut BytesMut, stmt: &[u8], param: &[u8]) {
    let start = out.len();
    out.put_u8(b'B');
    out.put_i32(0);
    out.put_slice(b"\0");
    out.put_slice(stmt);
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(1);
    out.put_i32(param.len() as i32);
    out.put_slice(param);
    out.put_i16(0);
    encode::patch_len(out, start).unwrap();
}

/// 1,000 client batches (Bind, Execute, Sync) and the server's replies.
fn recorded_exchange() -> (BytesMut, BytesMut) {
    let (mut client, mut server) = (BytesMut::new(), BytesMut::new());
    for i in 0..1000 {
        bind(
            &mut client,
            b"P_0",
            format!("{}", i * 37 % 100_000).as_bytes(),
        );
        client.put_slice(b"E\0\0\0\x09\0\0\0\0\0");
        postgres_protocol::message::frontend::sync(&mut client);
        server.put_slice(b"2\0\0\0\x04");
        let start = server.len();
        server.put_u8(b'D');
        server.put_i32(0);
        server.put_i16(1);
        server.put_i32(6);
        server.put_slice(b"-12345");
        encode::patch_len(&mut server, start).unwrap();
        encode::command_complete(&mut server, "SELECT 1");
        encode::ready_for_query(&mut server, TxStatus::Idle);
    }
    (client, server)
}

fn framing(c: &mut Criterion) {
    let (client, server) = recorded_exchange();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1000));
    for (name, bytes) in [("client_1000_tx", &client), ("server_1000_tx", &server)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = bytes.clone();
                let mut n = 0;
                while let Ok(Some(f)) = split_frame(&mut buf, 1 << 20) {
                    n += f.len();
                }
                n
            })
        });
    }
    g.finish();
}

fn reply_queue(c: &mut Criterion) {
    let (_, server) = recorded_exchange();
    let frames: Vec<Frame> = {
        let mut buf = server.clone();
        std::iter::from_fn(|| split_frame(&mut buf, 1 << 20).ok().flatten()).collect()
    };
    let mut g = c.benchmark_group("reply_queue");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_tx", |b| {
        let mut out = BytesMut::with_capacity(64 * 1024);
        b.iter(|| {
            let mut e: Expect<()> = Expect::default();
            out.clear();
            for chunk in frames.chunks(4) {
                for req in [Req::Bind, Req::Execute, Req::Sync] {
                    e.push(req, Reply::Forward, (), &mut out);
                }
                for f in chunk {
                    let _ = e.on_server(f, &mut out);
                }
            }
            out.len()
        })
    });
    g.finish();
}

fn prepared(c: &mut Criterion) {
    let mut msg = BytesMut::new();
    bind(&mut msg, b"sqlx_s_1", b"42");
    let frame = split_frame(&mut msg, 1 << 20).unwrap().unwrap();
    let registry = Registry::default();
    let query =
        b"SELECT id, title, body FROM posts WHERE author_id = $1 ORDER BY created_at DESC LIMIT 20";
    let held = registry.get_or_insert(query, b"\0\x01\0\0\0\x17").unwrap();
    let mut g = c.benchmark_group("prepared");
    g.bench_function("rewrite_bind", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            let b = pgmux::protocol::frontend::bind(frame.body()).unwrap();
            encode::write_bind(&mut out, b.portal, &held.name, b.rest).unwrap();
            out.len()
        })
    });
    g.bench_function("registry_lookup", |b| {
        b.iter(|| {
            registry
                .get_or_insert(query, b"\0\x01\0\0\0\x17")
                .unwrap()
                .id
        })
    });
    g.bench_function("sql_effect_plain_query", |b| {
        b.iter(|| messages::sql_effect(b"SELECT abalance FROM pgbench_accounts WHERE aid = 42"))
    });
    g.finish();
}

fn session_state(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_state");
    for (name, sql) in [
        (
            "effects_pgbench_select",
            &b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;"[..],
        ),
        (
            "effects_sqlx_query",
            b"SELECT id, title, body FROM posts WHERE author_id = $1 ORDER BY created_at DESC LIMIT 20",
        ),
        (
            "effects_multi_statement",
            b"BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7; COMMIT;",
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| pgmux::sql::effects(std::hint::black_box(sql)))
        });
    }
    g.finish();
}

criterion_group!(benches, framing, reply_queue, prepared, session_state);
criterion_main!(benches);
