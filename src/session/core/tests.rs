//! The core driven as the shell drives it, against scripted servers that
//! answer as PostgreSQL does, for about 500,000 random client messages:
//! simple Queries and extended batches ended by Sync (with Flush inside),
//! COPY FROM STDIN with its data sent behind the command, errors
//! mid-batch, SQL-level PREPARE/EXECUTE/DEALLOCATE and DISCARD ALL,
//! transactions (failed ones refuse everything but their end), pipelining
//! (steps sent before the replies to earlier ones are read), a different
//! server for each transaction, a server lost while it owes replies (after
//! some of its answer or none), and a client that leaves at any point.
//!
//! What must hold whatever the order:
//! - once the server has answered, the client has exactly one
//!   ReadyForQuery per Query and Sync it sent (a lost server included),
//!   and never two errors before one ReadyForQuery (but for one known
//!   gap, named where it is checked);
//! - the plan and the route agree: a message planned to need a server is
//!   not routed without one, and one planned without is routed at once;
//! - a server goes back to the pool only when it is idle: no transaction,
//!   no batch waiting for its Sync, nothing unanswered;
//! - a server whose client left comes back idle: what the client left
//!   open (a COPY, also one that starts only after it left; a batch with
//!   no Sync) is ended and answered, and a transaction rolled back;
//! - a statement pgmux names on a server (`pgmux_<n>`) exists there when
//!   it is bound, described or executed, unless that server refused or
//!   skipped its Parse in a batch the client had pipelined past (then the
//!   client's own name would not exist on PostgreSQL either).
//!
//! Not covered here (the tests against PostgreSQL are): fast-path calls,
//! Describe/Close of portals, session state that pins, extended-protocol
//! COPY, and a server lost while a batch is open with every reply
//! delivered (the session ends, as it must when nothing can be answered).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{Core, Plan, Policy};
use crate::config::PoolMode;
use crate::prepared::{Limits, Registry, Tracker};
use crate::protocol::encode::{write_error, Severity};
use crate::protocol::frame::split_frame;
use crate::protocol::frontend::Message;
use crate::protocol::{be, encode, fe, TxStatus};
use crate::server::ServerConn;
use crate::session::params::ClientParams;

/// A PostgreSQL backend's protocol behaviour, as far as the core can tell.
#[derive(Default)]
struct Script {
    /// Named statements prepared here (protocol and SQL level).
    named: HashSet<Vec<u8>>,
    /// The unnamed statement exists.
    unnamed: bool,
    /// An error in an extended batch: everything is skipped up to Sync.
    skipping: bool,
    tx: Option<TxStatus>,
    /// A COPY FROM STDIN reads the client's data.
    copy_in: bool,
    /// Statements whose Parse this server refused or skipped: a client
    /// that pipelined past that batch was routed as if it had them, and
    /// the server refuses them as PostgreSQL refuses the client's own name.
    refused: HashSet<Vec<u8>>,
    /// Something the rules say cannot happen.
    broken: Vec<String>,
}

impl Script {
    fn status(&self) -> TxStatus {
        self.tx.unwrap_or(TxStatus::Idle)
    }

    fn error(&mut self, out: &mut BytesMut, code: &str) {
        write_error(out, Severity::Error, code, "scripted error");
        if self.status() == TxStatus::InTransaction {
            self.tx = Some(TxStatus::Failed);
        }
    }

    /// A statement of pgmux's own must be here when it is used.
    fn require(&mut self, name: &[u8], what: &str) -> bool {
        let here = if name.is_empty() {
            self.unnamed
        } else {
            self.named.contains(name)
        };
        if !here && name.starts_with(b"pgmux_") && !self.refused.contains(name) {
            self.broken.push(format!(
                "{what} of {} on a server that lacks it",
                String::from_utf8_lossy(name)
            ));
        }
        here
    }

    /// Answers every whole message pgmux wrote.
    fn answer(&mut self, sent: &mut BytesMut, out: &mut BytesMut) {
        while let Ok(Some(frame)) = split_frame(sent, 1 << 20) {
            let msg = Message::read(&frame);
            if self.copy_in {
                self.copy(frame.tag(), out);
                continue;
            }
            if self.skipping && msg != Message::Sync {
                if let Message::Parse(p) = msg {
                    self.refused.insert(p.name.to_vec());
                }
                continue;
            }
            // An aborted transaction refuses everything but its end.
            let runs = matches!(
                msg,
                Message::Parse(_) | Message::Bind(_) | Message::Describe(_)
            ) || frame.tag() == fe::EXECUTE;
            if runs && self.status() == TxStatus::Failed {
                if let Message::Parse(p) = msg {
                    self.refused.insert(p.name.to_vec());
                }
                self.error(out, "25P02");
                self.skipping = true;
                continue;
            }
            match msg {
                Message::Parse(p) => {
                    if !p.name.is_empty() && self.named.contains(p.name) {
                        self.error(out, "42P05");
                        self.skipping = true;
                    } else if p.query.starts_with(b"oops") || p.query.starts_with(b"pgmux:") {
                        self.refused.insert(p.name.to_vec());
                        self.error(out, "42601");
                        self.skipping = true;
                    } else {
                        self.refused.remove(p.name);
                        if p.name.is_empty() {
                            self.unnamed = true;
                        } else {
                            self.named.insert(p.name.to_vec());
                        }
                        out.extend_from_slice(&encode::parse_complete());
                    }
                }
                Message::Bind(b) => {
                    if self.require(b.statement, "Bind") {
                        out.put_slice(&[be::BIND_COMPLETE, 0, 0, 0, 4]);
                    } else {
                        self.error(out, "26000");
                        self.skipping = true;
                    }
                }
                Message::Describe(t) if t.kind == b'S' && !self.require(t.name, "Describe") => {
                    self.error(out, "26000");
                    self.skipping = true;
                }
                Message::Describe(_) => out.put_slice(&[be::NO_DATA, 0, 0, 0, 4]),
                Message::Close(t) => {
                    if t.kind == b'S' {
                        self.named.remove(t.name);
                    }
                    out.extend_from_slice(&encode::close_complete());
                }
                Message::Sync => {
                    self.skipping = false;
                    encode::ready_for_query(out, self.status());
                }
                Message::Query(q) => {
                    if self.query(q, out) {
                        encode::ready_for_query(out, self.status());
                    }
                }
                Message::Flush => {}
                // Outside COPY, PostgreSQL ignores these (a COPY that failed).
                _ if matches!(frame.tag(), fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL) => {}
                _ if frame.tag() == fe::EXECUTE => encode::command_complete(out, "SELECT 1"),
                other => self.broken.push(format!("unexpected {other:?}")),
            }
        }
    }

    /// A message during COPY FROM STDIN.
    fn copy(&mut self, tag: u8, out: &mut BytesMut) {
        match tag {
            fe::COPY_DATA => return,
            fe::COPY_DONE => encode::command_complete(out, "COPY 1"),
            fe::COPY_FAIL => self.error(out, "57014"),
            other => self.broken.push(format!("message {other} during COPY")),
        }
        self.copy_in = false;
        encode::ready_for_query(out, self.status());
    }

    /// A simple Query; `false` when it started a COPY (its ReadyForQuery
    /// comes when the COPY ends).
    fn query(&mut self, text: &[u8], out: &mut BytesMut) -> bool {
        let text = String::from_utf8_lossy(text).to_ascii_lowercase();
        for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            if self.status() == TxStatus::Failed && !matches!(words[0], "rollback" | "commit") {
                self.error(out, "25P02");
                return true;
            }
            match words.as_slice() {
                ["begin"] => self.tx = Some(TxStatus::InTransaction),
                ["commit"] | ["rollback"] => self.tx = None,
                ["oops", ..] => {
                    self.error(out, "42601");
                    return true;
                }
                ["prepare", name, ..] if !self.named.insert(name.as_bytes().to_vec()) => {
                    self.error(out, "42P05");
                    return true;
                }
                ["execute", name, ..] if !self.require(name.as_bytes(), "EXECUTE") => {
                    self.error(out, "26000");
                    return true;
                }
                ["discard", "all"] if self.status() == TxStatus::InTransaction => {
                    self.error(out, "25001");
                    return true;
                }
                ["deallocate", "all"] | ["discard", "all"] => self.named.clear(),
                ["copy", _, "from", "stdin"] => {
                    out.put_slice(&[be::COPY_IN_RESPONSE, 0, 0, 0, 7, 0, 0, 0]);
                    self.copy_in = true;
                    return false;
                }
                ["deallocate", name] => {
                    self.named.remove(name.as_bytes());
                }
                _ => {}
            }
            encode::command_complete(out, "OK");
        }
        true
    }
}

/// What a driver sends next: a simple Query, or an extended batch of one
/// to four messages ended by a Sync (a Flush may sit inside it), as libpq,
/// JDBC and the Rust drivers do: no Query inside an open batch.
fn client_step(r: &mut StdRng, out: &mut BytesMut) {
    use postgres_protocol::message::frontend as f;
    let queries = [
        "SELECT 1",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "oops",
        "PREPARE q1 AS SELECT 1",
        "EXECUTE q1",
        "DEALLOCATE q1",
        "DEALLOCATE ALL",
        "BEGIN; SELECT 1; COMMIT",
        "SELECT 1; oops",
        "PREPARE q2 AS SELECT 2",
        "EXECUTE q2",
        "DEALLOCATE q2",
        "/* c */ DEALLOCATE q1",
        "DEALLOCATE \"\"",
        "DISCARD ALL",
    ];
    if r.random_range(0..12) == 0 {
        // COPY FROM STDIN, its data sent without waiting for the server.
        f::query("COPY t FROM STDIN", out).expect("a Query encodes");
        for _ in 0..r.random_range(0..3) {
            f::CopyData::new(&b"1\n"[..]).expect("CopyData").write(out);
        }
        if r.random_range(0..4) == 0 {
            f::copy_fail("client gave up", out).expect("CopyFail encodes");
        } else {
            f::copy_done(out);
        }
        return;
    }
    if r.random_range(0..3) == 0 {
        let q = queries[r.random_range(0..queries.len())];
        f::query(q, out).expect("a Query encodes");
        return;
    }
    let names = ["", "s1", "s2", "s3"];
    let texts = ["SELECT 1", "SELECT $1", "oops", "SELECT 2"];
    for _ in 0..r.random_range(1..5) {
        let name = names[r.random_range(0..names.len())];
        let text = texts[r.random_range(0..texts.len())];
        let res = match r.random_range(0..6) {
            0 => f::parse(name, text, std::iter::empty(), out),
            1 => f::bind(
                "",
                name,
                std::iter::empty::<i16>(),
                std::iter::empty::<()>(),
                |_, _| Ok(postgres_protocol::IsNull::No),
                std::iter::empty::<i16>(),
                out,
            )
            .map_err(|_| std::io::Error::other("bind")),
            2 => f::describe(b'S', name, out),
            3 => f::execute("", 0, out),
            4 => f::close(b'S', name, out),
            _ => {
                f::flush(out);
                Ok(())
            }
        };
        res.expect("a message encodes");
    }
    f::sync(out);
}

/// Counts the ReadyForQuery messages in what the client received, and
/// checks that no more than one ErrorResponse comes before each (after an
/// error PostgreSQL skips to the Sync, or ends the Query).
fn readies(received: &mut BytesMut, errors: &mut usize) -> usize {
    let mut n = 0;
    while let Ok(Some(f)) = split_frame(received, 1 << 20) {
        match f.tag() {
            be::READY_FOR_QUERY => {
                n += 1;
                *errors = 0;
            }
            be::ERROR_RESPONSE => {
                *errors += 1;
                // Known gap: a SQL EXECUTE pipelined into a transaction
                // that has failed meanwhile fails twice, its injected
                // PREPARE and itself (25P02 both); nothing else may.
                let code = crate::protocol::ErrorFields::parse(f.body()).map(|e| e.code.to_vec());
                let aborted = code.as_deref() == Some(&b"25P02"[..]);
                assert!(
                    *errors <= 1 || (*errors == 2 && aborted),
                    "two errors before one ReadyForQuery"
                );
            }
            _ => {}
        }
    }
    n
}

/// The shell's recovery of a server whose client left
/// (`Session::recover_abandoned`): the core ends what the client left open,
/// the server answers everything, and an open transaction is rolled back.
fn abandon(core: &mut Core, conn: &mut ServerConn, script: &mut Script, seed: u64) {
    core.abandon_requests(conn);
    loop {
        let mut reply = BytesMut::new();
        script.answer(&mut core.sout, &mut reply);
        conn.rbuf.extend_from_slice(&reply);
        core.on_server_bytes(conn, &mut Default::default())
            .expect("replies frame");
        // A COPY started behind the client's last bytes is failed too.
        if !core.fail_abandoned_copy() {
            break;
        }
    }
    assert!(
        core.expect.is_empty(),
        "seed {seed}: replies still owed after recovery"
    );
    if core.tx != TxStatus::Idle {
        script.query(b"ROLLBACK", &mut BytesMut::new());
    }
    assert!(
        script.broken.is_empty() && !script.skipping && !script.copy_in,
        "seed {seed}: server left mid-batch or mid-COPY: {:?}",
        script.broken
    );
    assert_eq!(
        script.status(),
        TxStatus::Idle,
        "seed {seed}: transaction left open"
    );
}

/// A server connection the core can hold; its socket is never used.
async fn scripted_server() -> Box<ServerConn> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    Box::new(ServerConn::scripted(crate::tls::Stream::Plain(stream)))
}

#[tokio::test]
async fn random_sessions_against_scripted_servers() {
    let registry = Registry::default();
    let never = || false;
    let policy = Policy {
        registry: &registry,
        refuses_state: &never,
    };
    let pool_params = Arc::new(Vec::new());
    let mut steps = 0usize;
    let mut sessions_ended = 0usize;
    let mut abandoned = 0usize;
    for seed in 0..1000u64 {
        let mut r = StdRng::seed_from_u64(seed);
        let tracking = seed % 4 != 3;
        let limits = Limits {
            per_client: 3,
            per_server: 2,
            track_unnamed: seed % 2 == 0,
        };
        let params = ClientParams::new(&pool_params, &[]).expect("params");
        let mut core = Core::new(
            PoolMode::Transaction,
            1 << 20,
            tracking.then(|| Tracker::new(limits)),
            params,
        );
        // Two servers, each with its scripted backend; a lost one is replaced.
        let mut servers = [
            (scripted_server().await, Script::default()),
            (scripted_server().await, Script::default()),
        ];
        let mut held: Option<usize> = None;
        let (mut owed, mut got) = (0usize, 0usize);
        let mut received = BytesMut::new();
        let mut errors = 0;
        let mut ended = false;
        'steps: for _ in 0..200 {
            let mut sent = BytesMut::new();
            // Pipelined: the client sends its next step before it reads
            // the replies to this one, which the server answers later.
            let pipelined = r.random_range(0..3) == 0;
            client_step(&mut r, &mut sent);
            while let Ok(Some(frame)) = split_frame(&mut sent, 1 << 20) {
                steps += 1;
                owed += usize::from(matches!(frame.tag(), fe::SYNC | fe::QUERY));
                // A message that must wait for the replies to what went
                // before: the server answers them, as the shell reads them.
                if core.waits(frame.raw()) {
                    let i = held.expect("a message waits for a server's replies");
                    let (conn, script) = &mut servers[i];
                    let mut reply = BytesMut::new();
                    script.answer(&mut core.sout, &mut reply);
                    assert!(script.broken.is_empty(), "seed {seed}: {:?}", script.broken);
                    conn.rbuf.extend_from_slice(&reply);
                    core.on_server_bytes(conn, &mut Default::default())
                        .expect("replies frame");
                    assert!(!core.waits(frame.raw()), "seed {seed}: waits for nothing");
                    if core.releasable() && core.pinned.is_none() {
                        held = None;
                    }
                    received.extend_from_slice(&core.cout.split());
                    got += readies(&mut received, &mut errors);
                }
                let msg = Message::read(&frame);
                let plan = core
                    .plan(&msg, held.is_some(), &policy)
                    .expect("no fatal error");
                let effects = match plan {
                    Plan::Done | Plan::Terminate => continue,
                    Plan::Carry(e) => e,
                    Plan::NeedServer(e) => {
                        // The plan and the route agree, and routing
                        // without a server changes nothing.
                        let carried = core.carry(&msg, &frame, e, None, &registry);
                        assert!(
                            !carried.expect("carried"),
                            "seed {seed}: {msg:?} needed no server"
                        );
                        held = Some(r.random_range(0..2));
                        core.on_new_server();
                        e
                    }
                };
                let server = held.map(|i| &mut *servers[i].0);
                let carried = core.carry(&msg, &frame, effects, server, &registry);
                // (Only a statement freed by another session in between
                // could make it need a server now: none is here.)
                assert!(
                    carried.expect("carried"),
                    "seed {seed}: {msg:?} needed a server"
                );
                let Some(i) = held else {
                    received.extend_from_slice(&core.cout.split());
                    got += readies(&mut received, &mut errors);
                    continue;
                };
                let (conn, script) = &mut servers[i];
                // Sometimes the client leaves here, with whatever it sent
                // unanswered, in a COPY or a batch: the server must come
                // back idle, with no transaction open.
                if r.random_range(0..300) == 0 {
                    abandon(&mut core, conn, script, seed);
                    abandoned += 1;
                    break 'steps;
                }
                if pipelined {
                    continue;
                }
                // Sometimes the server is lost while it owes replies, after
                // some whole messages of its answer or none.
                let lost = !core.expect.is_empty() && r.random_range(0..40) == 0;
                let mut reply = BytesMut::new();
                script.answer(&mut core.sout, &mut reply);
                assert!(script.broken.is_empty(), "seed {seed}: {:?}", script.broken);
                if lost {
                    let mut frames = Vec::new();
                    // At least its last message (a ReadyForQuery) is lost.
                    while let Ok(Some(f)) = split_frame(&mut reply, 1 << 20) {
                        frames.push(f);
                    }
                    let cut = r.random_range(0..frames.len().max(1));
                    for f in &frames[..cut] {
                        reply.extend_from_slice(f.raw());
                    }
                }
                conn.rbuf.extend_from_slice(&reply);
                core.on_server_bytes(conn, &mut Default::default())
                    .expect("replies frame");
                if lost {
                    core.sout.clear();
                    held = None;
                    core.forget_server();
                    servers[i] = (scripted_server().await, Script::default());
                    if core.on_server_lost(false).is_err() {
                        // Nothing left to answer: the shell ends the session.
                        ended = true;
                    }
                } else if core.releasable() && core.pinned.is_none() {
                    assert!(
                        !script.skipping && script.status() == TxStatus::Idle,
                        "seed {seed}: a server released mid-transaction or mid-batch"
                    );
                    held = None;
                }
                received.extend_from_slice(&core.cout.split());
                got += readies(&mut received, &mut errors);
                if ended {
                    break 'steps;
                }
            }
            // Every step ends with a Query or a Sync: once the server has
            // answered, all it owes is in.
            if !pipelined {
                assert_eq!(
                    got, owed,
                    "seed {seed}: one ReadyForQuery per Query and Sync"
                );
            }
        }
        if ended {
            sessions_ended += 1;
        }
    }
    assert!(steps >= 200_000, "{steps} steps");
    assert!(abandoned > 100, "{abandoned} sessions abandoned");
    assert!(
        sessions_ended < 100,
        "{sessions_ended} sessions ended early"
    );
}
