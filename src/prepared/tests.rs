//! SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE` text through the tracker:
//! client bytes that end mid-name or name nothing must be passed to the
//! server untouched, never cut.

use bytes::BytesMut;

use super::{Limits, Outbox, Registry, Routed, ServerStatements, Tracker};
use crate::protocol::frame::split_frame;
use crate::protocol::frontend::Message;
use crate::protocol::{encode, TxStatus};

/// Both ways of treating the unnamed statement: shared, a simple Query
/// drops the client's name `""`; not shared, it stays.
fn limits(track_unnamed: bool) -> Limits {
    Limits {
        per_client: 8,
        per_server: 8,
        track_unnamed,
    }
}

/// One client with a held server, marking every request done.
struct Client {
    tracker: Tracker,
    server: ServerStatements,
    registry: Registry,
}

impl Client {
    fn new(track_unnamed: bool) -> Self {
        Self {
            tracker: Tracker::new(limits(track_unnamed)),
            server: ServerStatements::default(),
            registry: Registry::default(),
        }
    }

    /// Routes one Query; what the server receives.
    fn query(&mut self, sql: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode::query_raw(&mut buf, &[sql]).expect("test text has no NUL");
        let frame = split_frame(&mut buf, 1 << 20)
            .expect("a whole frame")
            .expect("one frame");
        let (mut sout, mut replies) = (BytesMut::new(), Vec::new());
        let mut out = Outbox::new(&mut sout, &mut replies);
        let msg = Message::read(&frame);
        let routed = self.tracker.route(
            &msg,
            &frame,
            Some(&mut self.server),
            &self.registry,
            TxStatus::Idle,
            &mut out,
        );
        assert!(
            matches!(routed, Ok(Routed::Done | Routed::Untracked)),
            "{routed:?}"
        );
        let forward = out.flags.forward;
        for (_, _, hook) in replies.drain(..) {
            self.tracker.on_done(hook, Some(&mut self.server));
        }
        if forward {
            sout.extend_from_slice(frame.raw());
        }
        sout.to_vec()
    }
}

#[test]
fn sql_names_cut_off_at_the_end_of_the_text() {
    let tails: &[&[u8]] = &[
        b"EXECUTE \"",
        b"EXECUTE \"a",
        b"EXECUTE \"\"",
        b"EXECUTE \"\" (",
        b"EXECUTE \"a\"\"",
        b"EXPLAIN EXECUTE \"",
        b"EXPLAIN ANALYZE EXECUTE \"\"",
        b"CREATE TABLE t AS EXECUTE \"",
        b"DEALLOCATE \"",
        b"DEALLOCATE \"\"",
        b"DEALLOCATE PREPARE \"x",
        b"PREPARE \"x",
        b"PREPARE \"\"",
        b"PREPARE \"\" AS SELECT 1; EXECUTE \"",
        b"EXECUTE U&\"",
        b"EXECUTE U&\"a\"",
        b"EXECUTE $$",
        b"EXECUTE E'\\",
        b"PREPARE q AS SELECT $$",
        b"PREPARE q AS SELECT E'\\",
        b"PREPARE q AS SELECT U&\"",
    ];
    for prepare in [
        &b"PREPARE \"\" AS SELECT 1"[..],
        b"PREPARE \"a\" AS SELECT 1",
    ] {
        for (tail, shared) in tails.iter().flat_map(|t| [(t, true), (t, false)]) {
            let mut c = Client::new(shared);
            c.query(prepare);
            let sent = c.query(tail);
            assert!(!sent.is_empty(), "{tail:?}");
        }
    }
}

#[test]
fn an_empty_quoted_name_is_left_to_the_server() {
    // PostgreSQL refuses a zero-length delimited identifier: pgmux maps
    // nothing and sends the text as it is.
    for shared in [true, false] {
        let mut c = Client::new(shared);
        let sent = c.query(b"PREPARE \"\" AS SELECT 1");
        assert!(sent.ends_with(b"PREPARE \"\" AS SELECT 1\0"), "{sent:?}");
        let sent = c.query(b"EXECUTE \"\"");
        assert!(sent.ends_with(b"EXECUTE \"\"\0"), "{sent:?}");
    }
}

#[test]
fn a_named_statement_is_still_rewritten() {
    let mut c = Client::new(false);
    c.query(b"PREPARE \"a\" AS SELECT 1");
    let sent = c.query(b"EXECUTE \"a\"");
    let text = String::from_utf8_lossy(&sent);
    assert!(text.contains("EXECUTE pgmux_"), "{text}");
    // An unterminated name is not the statement: the server says so.
    let sent = c.query(b"EXECUTE \"a");
    assert!(sent.ends_with(b"EXECUTE \"a\0"), "{sent:?}");
}

#[test]
fn a_quoted_name_replaced_keeps_the_tokens_apart() {
    for (client, server) in [
        (&b"EXECUTE\"a\""[..], &b"EXECUTE pgmux_"[..]),
        (b"EXECUTE \"a\"1", b" 1\0"),
        (b"EXECUTE \"a\"$$ x $$", b" $$ x $$\0"),
        (b"EXECUTE \"a\"(1)", b"(1)\0"),
    ] {
        let mut c = Client::new(false);
        c.query(b"PREPARE \"a\" AS SELECT 1");
        let sent = c.query(client);
        let found = sent.windows(server.len()).any(|w| w == server);
        assert!(
            found,
            "{client:?} sent as {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
}
