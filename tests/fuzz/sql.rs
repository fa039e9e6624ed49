//! SQL text from a grammar of fragments: the lexer, the statement
//! classifier, and the tracker's SQL `PREPARE` / `EXECUTE` / `DEALLOCATE`
//! rewriting. Texts are built from the fragments clients send and the
//! ones that end badly (unterminated quotes, identifiers and comments),
//! then cut at a random byte or mutated, invalid UTF-8 included.

use bytes::{BufMut, BytesMut};
use pgmux::prepared::{messages, Limits, Outbox, Registry, Routed, ServerStatements, Tracker};
use pgmux::protocol::frame::split_frame;
use pgmux::protocol::frontend::Message;
use pgmux::protocol::TxStatus;
use pgmux::sql::{Lexer, Token};
use rand::rngs::StdRng;
use rand::RngExt;

use super::{iterations, rng};

/// Statement starts: what the tracker and the classifier look for first.
const VERBS: &[&[u8]] = &[
    b"PREPARE",
    b"prepare",
    b"EXECUTE",
    b"execute",
    b"DEALLOCATE",
    b"DEALLOCATE PREPARE",
    b"DEALLOCATE ALL",
    b"DISCARD ALL",
    b"EXPLAIN",
    b"EXPLAIN ANALYZE",
    b"EXPLAIN (ANALYZE, COSTS OFF)",
    b"EXPLAIN EXECUTE",
    b"CREATE TEMP TABLE t AS EXECUTE",
    b"CREATE TABLE IF NOT EXISTS t (a) AS",
    b"PREPARE TRANSACTION",
    b"SELECT",
    b"SET ROLE",
    b"SET search_path =",
    b"SELECT set_config('role', 'x', false)",
    b"DO",
    b"CALL f()",
    b"BEGIN",
];

/// Statement names, well and badly formed.
const NAMES: &[&[u8]] = &[
    b"q",
    b"Q1",
    b"s_1",
    b"pgmux_1",
    b"\"q\"",
    b"\"Q\"\"x\"",
    b"\"\"",
    b"\"",
    b"\"a",
    b"\"a\"\"",
    b"U&\"",
    b"U&\"d\\0061t\"",
    b"u&",
    b"function",
    b"\xc3\xa9t\xc3\xa9",
];

/// Everything else a statement may hold or end with.
const REST: &[&[u8]] = &[
    b"AS",
    b"AS SELECT 1",
    b"AS SELECT $1",
    b"(int)",
    b"(int, text)",
    b"(1, 'a')",
    b"(",
    b")",
    b",",
    b";",
    b"; ",
    b"WITH NO DATA",
    b"$1",
    b"$$",
    b"$$ body $$",
    b"$tag$ x $tag$",
    b"$tag$",
    b"$t",
    b"E'\\",
    b"E'a\\'b'",
    b"e'",
    b"'x'",
    b"'",
    b"''",
    b"B'01'",
    b"-- c\n",
    b"-- trailing",
    b"/* c */",
    b"/* /* nested */",
    b"*/",
    b" ",
    b"\t",
    b"\n",
    b"\x0b",
    b"\xff",
    b"\xc3",
    b"&",
    b".",
];

fn pick<'a>(r: &mut StdRng, list: &[&'a [u8]]) -> &'a [u8] {
    list[r.random_range(0..list.len())]
}

/// One text from the grammar: statements of a verb, a name and a few
/// other fragments, cut at a random byte or mutated now and then.
fn sql_text(r: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for s in 0..r.random_range(1..3) {
        if s > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pick(r, VERBS));
        out.push(b' ');
        out.extend_from_slice(pick(r, NAMES));
        for _ in 0..r.random_range(0..5) {
            if r.random() {
                out.push(b' ');
            }
            let list = if r.random_range(0..4) == 0 {
                NAMES
            } else {
                REST
            };
            out.extend_from_slice(pick(r, list));
        }
    }
    match r.random_range(0..8) {
        0..=2 => out.truncate(r.random_range(0..=out.len())),
        3 if !out.is_empty() => {
            let i = r.random_range(0..out.len());
            out[i] = r.random();
        }
        4 => {
            let at = r.random_range(0..=out.len());
            let junk: Vec<u8> = (0..r.random_range(1..8)).map(|_| r.random()).collect();
            out.splice(at..at, junk);
        }
        _ => {}
    }
    out
}

/// An `EXECUTE` of `name`, alone or inside another statement, with a few
/// fragments after it, often cut short.
fn execute_of(r: &mut StdRng, name: &[u8]) -> Vec<u8> {
    const RUNS: &[&[u8]] = &[
        b"EXECUTE ",
        b"execute ",
        b"EXPLAIN EXECUTE ",
        b"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE ",
        b"CREATE TEMP TABLE t AS EXECUTE ",
        b"-- c\nEXECUTE ",
        b"/* c */ EXECUTE",
    ];
    let mut out = [pick(r, RUNS), name].concat();
    for _ in 0..r.random_range(0..3) {
        out.extend_from_slice(pick(r, REST));
    }
    if r.random_range(0..3) == 0 {
        out.truncate(r.random_range(0..=out.len()));
    }
    out
}

/// The texts whose every prefix is tried (each cut is a text that ends
/// mid-token somewhere).
const WHOLE: &[&[u8]] = &[
    b"PREPARE \"\" AS SELECT 1; EXECUTE \"",
    b"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE \"Q\"\"x\"(1, 'a')",
    b"CREATE TEMP TABLE t (a) AS EXECUTE U&\"d\\0061t\" WITH NO DATA;",
    b"DEALLOCATE PREPARE \"a\"\"b\";",
    b"PREPARE q (int) AS SELECT $tag$ $1 $tag$ || E'\\'' /* /* x */ */ -- c\n",
];

/// Every sub-slice a token holds lies inside `text`.
fn inside(text: &[u8], part: &[u8]) -> bool {
    let (start, end) = (text.as_ptr() as usize, text.as_ptr() as usize + text.len());
    let p = part.as_ptr() as usize;
    start <= p && p + part.len() <= end
}

/// Lexes and classifies one text, checking what is cheap to check.
fn classify(text: &[u8]) {
    for lexer in [Lexer::new(text), Lexer::with_backslash_quotes(text)] {
        let mut n = 0usize;
        for tok in lexer {
            n += 1;
            // Every token takes at least one byte.
            assert!(n <= text.len(), "more tokens than bytes in {text:?}");
            if let Token::Word(p) | Token::QuotedIdent(p) | Token::Literal(p) = tok {
                assert!(inside(text, p), "a token outside {text:?}");
            }
        }
    }
    let _ = pgmux::sql::effects(text);
    let _ = pgmux::sql::setting_names(text);
    let _ = pgmux::sql::bound_setting_names([text, text]);
    let _ = messages::names_statements(text);
    let _ = messages::sql_effect(text);
    match messages::sql_prepared(text) {
        Some(messages::SqlPrepared::Execute { name, at, .. }) => {
            let written = text.get(at.0..at.1).expect("the name lies inside the text");
            // As written: the bare name, or the quoted one in its quotes.
            assert!(
                written.eq_ignore_ascii_case(&name)
                    || (written.starts_with(b"\"")
                        && written.ends_with(b"\"")
                        && written.len() > 2),
                "{written:?} for {name:?} in {text:?}"
            );
        }
        Some(messages::SqlPrepared::Prepare { name, rest }) => {
            assert!(!name.is_empty() && inside(text, rest), "{text:?}");
        }
        None => {}
    }
}

#[test]
fn sql_lexer_and_classifier() {
    let mut r = rng(20);
    let (mut n, started) = (0usize, std::time::Instant::now());
    for whole in WHOLE {
        for end in 0..=whole.len() {
            classify(&whole[..end]);
            n += 1;
        }
    }
    for _ in 0..iterations() {
        classify(&sql_text(&mut r));
        n += 1;
    }
    let took = started.elapsed();
    eprintln!("fuzz sql_lexer_and_classifier: {n} inputs in {took:.1?}, no failure");
}

/// A Query frame carrying `text` (a NUL inside ends the text early, as
/// the session reads it).
fn query_frame(text: &[u8]) -> pgmux::protocol::Frame {
    let mut b = BytesMut::new();
    b.put_u8(b'Q');
    b.put_i32((text.len() + 5) as i32);
    b.put_slice(text);
    b.put_u8(0);
    split_frame(&mut b, 1 << 20)
        .expect("a frame within the limit")
        .expect("a whole frame")
}

/// The Query texts in what the tracker sends the server; each must frame
/// as whole messages with nothing left over.
fn sent_queries(sout: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::from(sout);
    let mut texts = Vec::new();
    while let Some(f) = split_frame(&mut buf, 1 << 20).expect("well-formed output") {
        if let Message::Query(q) = Message::read(&f) {
            texts.push(q.to_vec());
        }
    }
    assert!(buf.is_empty(), "a partial message in the output: {sout:?}");
    texts
}

/// Routes one text with a server held; the Query texts it sent.
fn route(
    tracker: &mut Tracker,
    server: &mut ServerStatements,
    registry: &Registry,
    text: &[u8],
    r: &mut StdRng,
) -> Vec<Vec<u8>> {
    let tx = [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed][r.random_range(0..3)];
    route_in(tx, tracker, server, registry, text, r)
}

/// [`route`] in a transaction status of the caller's choosing.
fn route_in(
    tx: TxStatus,
    tracker: &mut Tracker,
    server: &mut ServerStatements,
    registry: &Registry,
    text: &[u8],
    r: &mut StdRng,
) -> Vec<Vec<u8>> {
    let frame = query_frame(text);
    let msg = Message::read(&frame);
    let (mut sout, mut replies) = (BytesMut::new(), Vec::new());
    let mut out = Outbox::new(&mut sout, &mut replies);
    let routed = tracker.route(&msg, &frame, Some(server), registry, tx, &mut out);
    assert!(
        !matches!(routed, Ok(Routed::NeedServer)),
        "a held server is never asked for"
    );
    if out.flags.forward {
        sout.extend_from_slice(frame.raw());
    }
    for (_, _, hook) in replies.drain(..) {
        if r.random_range(0..4) > 0 {
            tracker.on_done(hook, Some(server));
        } else {
            tracker.undo(hook, Some(server), pgmux::prepared::Undo::Rejected);
        }
    }
    sent_queries(&sout)
}

/// Where `text` names the statement it executes, if it does.
fn execute_at(text: &[u8]) -> Option<(Vec<u8>, (usize, usize))> {
    match messages::sql_prepared(text)? {
        messages::SqlPrepared::Execute { name, at, .. } => Some((name, at)),
        messages::SqlPrepared::Prepare { .. } => None,
    }
}

/// A rewritten `EXECUTE` differs from the client's text in the name
/// alone and names one of pgmux's statements, which a client that never
/// prepared it cannot reach.
fn check_rewrite(client: &[u8], sent: &[u8], registry: &Registry, r: &mut StdRng) {
    let (Some((_, a)), Some((name, b))) = (execute_at(client), execute_at(sent)) else {
        panic!("{sent:?} rewritten from {client:?} executes nothing");
    };
    assert!(name.starts_with(b"pgmux_"), "{sent:?}");
    // A space may separate the name from a word character beside it.
    let (before, after) = (client.get(..a.0), client.get(a.1..));
    let spaced = |side: Option<&[u8]>, space: &[u8], other: &[u8]| {
        side.is_some_and(|side| side == other || side == space)
    };
    let before_ok = spaced(
        sent.get(..b.0),
        &[before.unwrap_or_default(), b" "].concat(),
        before.unwrap_or_default(),
    );
    let after_ok = spaced(
        sent.get(b.1..),
        &[b" ", after.unwrap_or_default()].concat(),
        after.unwrap_or_default(),
    );
    assert!(before_ok && after_ok, "{client:?} -> {sent:?}");
    // A client that never prepared pgmux's name is refused it (26000).
    let mut fresh = Tracker::new(Limits {
        per_client: 4,
        per_server: 3,
        track_unnamed: false,
    });
    let mut server = ServerStatements::default();
    // (In a failed transaction the server refuses any EXECUTE itself.)
    let tx = [TxStatus::Idle, TxStatus::InTransaction][r.random_range(0..2)];
    let again = route_in(tx, &mut fresh, &mut server, registry, sent, r);
    // Inside a transaction the server raises the error for pgmux (its
    // own DO block); the client's text never reaches it.
    assert!(
        again
            .iter()
            .all(|q| q.starts_with(b"DO $pgmux$ BEGIN RAISE")),
        "{sent:?} reached the server again: {again:?}"
    );
}

#[test]
fn sql_prepared_rewriting() {
    let registry = Registry::default();
    let mut r = rng(21);
    let (mut n, mut rewritten) = (0usize, 0usize);
    let started = std::time::Instant::now();
    for _ in 0..iterations() {
        let limits = Limits {
            per_client: 4,
            per_server: 3,
            track_unnamed: r.random(),
        };
        let mut tracker = Tracker::new(limits);
        let mut server = ServerStatements::default();
        // A PREPARE first, so that later EXECUTEs often name a statement.
        let name = pick(&mut r, NAMES);
        let mut texts = vec![[&b"PREPARE "[..], name, b" AS SELECT 1"].concat()];
        for _ in 0..r.random_range(1..4) {
            let text = if r.random() {
                execute_of(&mut r, name)
            } else {
                sql_text(&mut r)
            };
            texts.push(text);
        }
        for text in texts {
            n += 1;
            let sent = route(&mut tracker, &mut server, &registry, &text, &mut r);
            // The client's statement is the last one sent (after a
            // PREPARE pgmux injected); a text with a NUL is cut there.
            let client = text.split(|&b| b == 0).next().unwrap_or_default();
            // (A name of pgmux's is refused, in a transaction by a raise
            // of pgmux's own: not a rewrite.)
            let refused = |s: &Vec<u8>| s.starts_with(b"DO $pgmux$ BEGIN RAISE");
            if let Some(last) = sent
                .last()
                .filter(|s| s.as_slice() != client && !refused(s))
            {
                if execute_at(client).is_some() {
                    rewritten += 1;
                    check_rewrite(client, last, &registry, &mut r);
                }
            }
        }
        assert!(server.len() <= limits.per_server);
    }
    let took = started.elapsed();
    eprintln!(
        "fuzz sql_prepared_rewriting: {n} inputs ({rewritten} EXECUTEs rewritten) in {took:.1?}, no failure"
    );
}
