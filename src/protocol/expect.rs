//! The queue of replies a server owes the client, in request order.
//!
//! Every request that the server answers (Parse, Bind, Describe, Execute,
//! Close, Sync, Query, FunctionCall) gets an entry when it is sent. Each
//! entry says what to do with its reply: forward it, swallow it (a request
//! pgmux injected), or synthesize it (a request pgmux answered itself).
//! A server is released only when this queue is empty, and after an
//! ErrorResponse the queue skips to the next Sync exactly as the server does.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::{be, Frame};

/// A request that produces a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Parse → ParseComplete.
    Parse,
    /// Bind → BindComplete.
    Bind,
    /// Describe → [ParameterDescription] RowDescription | NoData.
    Describe,
    /// Execute → ... CommandComplete | EmptyQueryResponse | PortalSuspended.
    Execute,
    /// Close → CloseComplete.
    Close,
    /// Sync → ReadyForQuery.
    Sync,
    /// Simple query → ... ReadyForQuery.
    Query,
    /// Fast-path call → ... ReadyForQuery.
    FunctionCall,
}

impl Req {
    /// The request for a frontend tag, if it produces a reply.
    pub fn from_tag(tag: u8) -> Option<Self> {
        use crate::protocol::fe;
        Some(match tag {
            fe::PARSE => Self::Parse,
            fe::BIND => Self::Bind,
            fe::DESCRIBE => Self::Describe,
            fe::EXECUTE => Self::Execute,
            fe::CLOSE => Self::Close,
            fe::SYNC => Self::Sync,
            fe::QUERY => Self::Query,
            fe::FUNCTION_CALL => Self::FunctionCall,
            _ => return None,
        })
    }

    /// Requests answered by ReadyForQuery.
    pub fn ends_with_ready(self) -> bool {
        matches!(self, Self::Sync | Self::Query | Self::FunctionCall)
    }

    /// Whether `tag` is the last message of this request's reply.
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Self::Parse => tag == be::PARSE_COMPLETE,
            Self::Bind => tag == be::BIND_COMPLETE,
            Self::Close => tag == be::CLOSE_COMPLETE,
            Self::Describe => tag == be::ROW_DESCRIPTION || tag == be::NO_DATA,
            Self::Execute => matches!(
                tag,
                be::COMMAND_COMPLETE | be::EMPTY_QUERY | be::PORTAL_SUSPENDED
            ),
            Self::Sync | Self::Query | Self::FunctionCall => tag == be::READY_FOR_QUERY,
        }
    }
}

/// What to do with a request's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Pass the server's reply to the client.
    Forward,
    /// Drop the server's reply: pgmux sent the request, not the client.
    Swallow,
    /// The request never reached the server; send the client these bytes
    /// (ParseComplete, CloseComplete, or an ErrorResponse) in its place.
    Synthetic(Bytes),
    /// Forward the server's error, but replace a successful reply by these
    /// bytes (a check only the server can make comes first, and then pgmux's).
    Replace(Bytes),
    /// Forward, but the server read a text whose statement name pgmux
    /// rewrote (`EXECUTE q` sent as `EXECUTE pgmux_3`): an error's
    /// position is moved back into the client's own text.
    Shifted(Shift),
}

impl Reply {
    /// Whether the server's replies go to the client as they are.
    fn forwards(&self) -> bool {
        matches!(self, Self::Forward | Self::Shifted(_))
    }
}

/// Where a rewritten name ends, in characters, in the text the server read
/// and in the client's: an error position past it moves by the
/// difference; one before it stays, within the client's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// Characters up to the end of the name in the server's text.
    pub server_end: u32,
    /// Characters up to the end of the name in the client's text.
    pub client_end: u32,
}

impl Shift {
    /// Where a name ends in a text, counted as PostgreSQL counts error
    /// positions (characters, not bytes, of UTF-8 text).
    pub fn chars(text: &[u8]) -> u32 {
        text.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u32
    }

    /// The client's position (1-based) for the server's.
    pub fn map(self, at: u32) -> u32 {
        if at > self.server_end {
            at - self.server_end + self.client_end
        } else {
            at.min(self.client_end)
        }
    }
}

/// One outstanding request and what its completion should trigger.
#[derive(Debug)]
pub struct Entry<H> {
    /// The request.
    pub req: Req,
    /// What to do with its reply.
    pub reply: Reply,
    /// Bookkeeping tied to the request (undone if it fails).
    pub hook: H,
    /// An ErrorResponse arrived inside this request's reply.
    errored: bool,
    /// The client sent it after ending a COPY whose CopyInResponse had not
    /// arrived: the first request the server reads outside that COPY.
    after_copy_end: bool,
    /// The SQL `PREPARE` pgmux sent right before this request (the server
    /// lacked the statement an `EXECUTE` runs) failed, and the client has
    /// that error: this request's own (the statement does not exist) is
    /// not passed on, so the client sees one error, as a direct
    /// connection's `EXECUTE` whose plan no longer holds gives.
    after_failed_prepare: bool,
}

/// What a server message meant for the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<H> {
    /// Nothing completed.
    Pending,
    /// An entry completed successfully.
    Done(H),
    /// These requests failed or were skipped by the server after an error:
    /// undo what their hooks did, last first.
    Failed(Vec<H>),
}

/// The reply queue of one server round trip sequence.
#[derive(Debug)]
pub struct Expect<H> {
    q: VecDeque<Entry<H>>,
    /// The server hit an error and ignores everything up to the next Sync.
    skipping: bool,
    /// An ErrorResponse went to the client since the last ReadyForQuery.
    error_sent: bool,
    /// The server is in COPY FROM STDIN, where it ignores Sync and Flush.
    copy_in: bool,
    /// An extended-protocol COPY FROM STDIN consumed the client's Sync: the
    /// server waits for another once the COPY ends (see [`Expect::sync_owed`]).
    copy_owes_sync: bool,
    /// The client ended a COPY (CopyDone or CopyFail) before the server
    /// said it started one (a client that pipelines its data behind the
    /// COPY command), and nothing was queued since: the next request is
    /// the first the server reads outside that COPY.
    mark_next: bool,
}

/// Whether an error is the one an `EXECUTE` gets after pgmux's `PREPARE`
/// of its statement failed: the statement does not exist (26000), or the
/// transaction that PREPARE aborted (25P02). Anything else (a FATAL, say)
/// reaches the client.
fn follows_failed_prepare(body: &[u8]) -> bool {
    crate::protocol::error::ErrorFields::parse(body)
        .is_some_and(|f| f.severity == b"ERROR" && (f.code == b"26000" || f.code == b"25P02"))
}

impl<H> Default for Expect<H> {
    fn default() -> Self {
        Self {
            q: VecDeque::new(),
            skipping: false,
            error_sent: false,
            copy_in: false,
            copy_owes_sync: false,
            mark_next: false,
        }
    }
}

impl<H> Expect<H> {
    /// No reply is owed.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Whether an ErrorResponse reached the client since the last ReadyForQuery.
    pub fn error_sent(&self) -> bool {
        self.error_sent
    }

    /// Notes a request sent (or answered) on the client's behalf. Synthetic
    /// replies with nothing owed before them are written to `out` at once.
    /// Returns the hook back when the server is skipping to Sync after an
    /// error: the request will never run, so its bookkeeping must be undone.
    pub fn push(&mut self, req: Req, reply: Reply, hook: H, out: &mut BytesMut) -> Option<H> {
        if self.skipping && req != Req::Sync {
            return Some(hook);
        }
        if self.copy_in && req == Req::Sync {
            // Swallowed by the server's COPY mode: no ReadyForQuery comes of it.
            return None;
        }
        if req == Req::Sync {
            self.skipping = false;
            self.copy_owes_sync = false;
        }
        match reply {
            Reply::Synthetic(bytes) if self.q.is_empty() => {
                self.note_synthetic(&bytes);
                out.extend_from_slice(&bytes);
            }
            reply => self.q.push_back(Entry {
                req,
                reply,
                hook,
                errored: false,
                after_copy_end: std::mem::take(&mut self.mark_next),
                after_failed_prepare: false,
            }),
        }
        None
    }

    fn note_synthetic(&mut self, bytes: &[u8]) {
        if bytes.first() == Some(&be::ERROR_RESPONSE) {
            self.error_sent = true;
        }
    }

    /// Whether a DataRow arriving now goes to the client, as
    /// [`Expect::on_server`] would decide: a DataRow completes no request,
    /// so the answer holds for a whole run of them.
    pub fn forwards_rows(&self) -> bool {
        self.q.front().is_none_or(|h| h.reply.forwards())
    }

    /// Handles one server message: appends what the client should get to
    /// `out` and says what completed.
    #[inline]
    pub fn on_server(&mut self, frame: &Frame, out: &mut BytesMut) -> Outcome<H> {
        let tag = frame.tag();
        if matches!(
            tag,
            be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS
        ) {
            out.extend_from_slice(frame.raw());
            return Outcome::Pending;
        }
        let Some(head) = self.q.front() else {
            // Nothing owed (a FATAL before the server closes, say): pass it on.
            out.extend_from_slice(frame.raw());
            return Outcome::Pending;
        };
        if tag == be::ERROR_RESPONSE {
            // An error ends COPY FROM STDIN on the server's side: a Sync
            // the client sends now is answered, not consumed.
            self.copy_in = false;
            // Injected requests fail in the client's view too: always forward.
            self.error_sent = true;
            let (req, reply) = (head.req, head.reply.clone());
            let drop_error = head.after_failed_prepare && follows_failed_prepare(frame.body());
            match reply {
                _ if drop_error => {}
                Reply::Shifted(shift) => {
                    crate::protocol::encode::error_shifted(out, frame.body(), |at| shift.map(at));
                }
                Reply::Swallow if req == Req::Query => {
                    // pgmux's PREPARE before an EXECUTE failed.
                    if let Some(next) = self.q.get_mut(1) {
                        next.after_failed_prepare = true;
                    }
                    out.extend_from_slice(frame.raw());
                }
                _ => out.extend_from_slice(frame.raw()),
            }
            if req.ends_with_ready() {
                if let Some(h) = self.q.front_mut() {
                    h.errored = true;
                }
                return Outcome::Pending;
            }
            return Outcome::Failed(self.fail_to_sync());
        }
        if tag == be::COPY_IN_RESPONSE || tag == be::COPY_BOTH_RESPONSE {
            self.start_copy_in();
        }
        let Some(head) = self.q.front() else {
            return Outcome::Pending;
        };
        if !head.req.completed_by(tag) {
            if head.reply.forwards() {
                out.extend_from_slice(frame.raw());
            }
            return Outcome::Pending;
        }
        let Some(entry) = self.q.pop_front() else {
            return Outcome::Pending;
        };
        self.popped();
        match &entry.reply {
            Reply::Forward | Reply::Shifted(_) => out.extend_from_slice(frame.raw()),
            Reply::Replace(bytes) => {
                self.note_synthetic(bytes);
                out.extend_from_slice(bytes);
            }
            Reply::Swallow | Reply::Synthetic(_) => {}
        }
        if tag == be::READY_FOR_QUERY {
            self.error_sent = false;
        }
        self.emit_synthetic(out);
        if entry.errored {
            Outcome::Failed(vec![entry.hook])
        } else {
            Outcome::Done(entry.hook)
        }
    }

    /// The server entered COPY FROM STDIN: Syncs the client sent after the
    /// COPY command (libpq and tokio-postgres send one right behind it) are
    /// consumed by the copy and will never be answered.
    fn start_copy_in(&mut self) {
        // A mark behind the COPY command can only be this COPY's end: the
        // client cannot have begun another before ending it.
        let ended = self.mark_next || self.q.iter().skip(1).any(|e| e.after_copy_end);
        self.copy_in = !ended;
        // Only the Syncs sent before the client ended the copy: what it
        // sent after its CopyDone (a client that did not wait for this
        // reply) is read outside the copy and answered as usual.
        let end = match self.q.iter().skip(1).position(|e| e.after_copy_end) {
            Some(i) if ended => i + 1,
            _ => self.q.len(),
        };
        if let Some(first_after) = self.q.get_mut(end) {
            first_after.after_copy_end = false;
        } else if ended {
            self.mark_next = false;
        }
        let mut at = 0;
        self.q.retain(|e| {
            at += 1;
            at == 1 || at > end || e.req != Req::Sync
        });
        // An extended-protocol COPY consumed its batch's Sync: the server
        // waits for another, unless the client already sent one.
        let extended = self.q.front().is_some_and(|e| !e.req.ends_with_ready());
        let sync_ahead = self.q.iter().any(|e| e.req == Req::Sync);
        self.copy_owes_sync |= extended && !sync_ahead;
    }

    /// The client ended the copy (CopyDone or CopyFail).
    pub fn end_copy_in(&mut self) {
        if !self.copy_in && !self.q.is_empty() {
            self.mark_next = true;
        }
        self.copy_in = false;
    }

    /// An entry left the queue. A mark on the new head is stale (its COPY
    /// ended without starting, or was already read), and with nothing
    /// owed no COPY can be on its way.
    fn popped(&mut self) {
        match self.q.front_mut() {
            Some(head) => head.after_copy_end = false,
            None => self.mark_next = false,
        }
    }

    /// The server skips every request up to the next Sync after an error.
    fn fail_to_sync(&mut self) -> Vec<H> {
        let mut failed = Vec::new();
        failed.extend(self.q.pop_front().map(|e| e.hook));
        while let Some(e) = self.q.front() {
            if e.req == Req::Sync {
                self.popped();
                return failed;
            }
            failed.extend(self.q.pop_front().map(|e| e.hook));
        }
        self.popped();
        self.skipping = true;
        failed
    }

    /// Writes synthetic replies that have nothing owed before them any more.
    fn emit_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Entry {
            reply: Reply::Synthetic(bytes),
            ..
        }) = self.q.front()
        {
            let bytes = bytes.clone();
            self.note_synthetic(&bytes);
            out.extend_from_slice(&bytes);
            self.q.pop_front();
            self.popped();
        }
    }

    /// Whether the server is reading COPY data from the client.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// Whether the server waits for a Sync nobody has sent yet: it skips to
    /// one after an error, or an extended COPY consumed the client's. Until
    /// it comes the batch (and its implicit transaction) is open, even with
    /// nothing owed, and the server may not be lent.
    pub fn sync_owed(&self) -> bool {
        self.skipping || self.copy_owes_sync
    }

    /// The server is gone: empties the queue and returns how many
    /// ReadyForQuery the client is still owed, whether it still has requests
    /// waiting for a Sync, and the hooks of everything abandoned (to undo,
    /// last first).
    pub fn abandon(&mut self) -> (usize, bool, Vec<H>) {
        // Only what the client asked for is owed: a Sync or Query pgmux
        // injected (before a SQL PREPARE, an EXECUTE's PREPARE) owes it
        // nothing.
        let mut owed = self.q.iter().filter(|e| !matches!(e.reply, Reply::Swallow));
        let readies = owed.clone().filter(|e| e.req.ends_with_ready()).count();
        let tail = owed.next_back().is_some_and(|e| !e.req.ends_with_ready());
        let hooks = self.q.drain(..).map(|e| e.hook).collect();
        self.skipping = false;
        self.copy_owes_sync = false;
        self.copy_in = false;
        self.mark_next = false;
        (readies, tail, hooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::encode;

    fn frame(tag: u8) -> Frame {
        Frame::from_raw(Bytes::copy_from_slice(&[tag, 0, 0, 0, 4]))
    }

    fn z() -> Frame {
        let mut b = BytesMut::new();
        encode::ready_for_query(&mut b, crate::protocol::TxStatus::Idle);
        Frame::from_raw(b.freeze())
    }

    #[test]
    fn copy_ended_before_it_started() {
        let mut e: Expect<u8> = Expect::default();
        let mut out = BytesMut::new();
        // COPY, its data and CopyDone, then a batch, all in one write.
        e.push(Req::Query, Reply::Forward, 1, &mut out);
        e.end_copy_in();
        e.push(Req::Parse, Reply::Forward, 2, &mut out);
        e.push(Req::Sync, Reply::Forward, 3, &mut out);
        e.on_server(&frame(be::COPY_IN_RESPONSE), &mut out);
        assert!(!e.in_copy_in(), "the client already ended it");
        for tag in [b'C', b'Z', b'1'] {
            e.on_server(&frame(tag), &mut out);
        }
        assert!(!e.is_empty(), "the batch's Sync is still owed");
        e.on_server(&z(), &mut out);
        assert!(e.is_empty());
        // A COPY refused before it started leaves no end behind for the
        // next one, whose client waits for CopyInResponse.
        e.push(Req::Query, Reply::Forward, 4, &mut out);
        e.end_copy_in();
        e.push(Req::Query, Reply::Forward, 5, &mut out);
        e.on_server(&frame(be::ERROR_RESPONSE), &mut out);
        e.on_server(&z(), &mut out);
        e.on_server(&frame(be::COPY_IN_RESPONSE), &mut out);
        assert!(e.in_copy_in());
    }

    #[test]
    fn a_lost_server_owes_only_what_the_client_asked() {
        // An EXECUTE behind the PREPARE pgmux injected, the server lost
        // before either answered: one error and ReadyForQuery, not two.
        let mut e: Expect<u8> = Expect::default();
        let mut out = BytesMut::new();
        e.push(Req::Query, Reply::Swallow, 1, &mut out);
        e.push(Req::Query, Reply::Forward, 2, &mut out);
        assert_eq!(e.abandon(), (1, false, vec![1, 2]));
        // A batch behind an injected Close and Sync still waits for the
        // client's Sync.
        e.push(Req::Close, Reply::Swallow, 1, &mut out);
        e.push(Req::Sync, Reply::Swallow, 2, &mut out);
        e.push(Req::Parse, Reply::Forward, 3, &mut out);
        assert_eq!(e.abandon(), (0, true, vec![1, 2, 3]));
    }

    #[test]
    fn synthetic_replies_keep_request_order() {
        let mut e: Expect<u8> = Expect::default();
        let mut out = BytesMut::new();
        e.push(Req::Bind, Reply::Forward, 1, &mut out);
        e.push(
            Req::Parse,
            Reply::Synthetic(encode::parse_complete()),
            2,
            &mut out,
        );
        e.push(Req::Parse, Reply::Swallow, 3, &mut out);
        e.push(Req::Sync, Reply::Forward, 4, &mut out);
        assert!(out.is_empty());
        assert_eq!(e.on_server(&frame(b'2'), &mut out), Outcome::Done(1));
        assert_eq!(&out[..], b"2\0\0\0\x041\0\0\0\x04");
        out.clear();
        assert_eq!(e.on_server(&frame(b'1'), &mut out), Outcome::Done(3));
        assert!(out.is_empty());
        assert_eq!(e.on_server(&z(), &mut out), Outcome::Done(4));
        assert!(e.is_empty());
    }

    #[test]
    fn error_skips_to_sync() {
        let mut e: Expect<u8> = Expect::default();
        let mut out = BytesMut::new();
        e.push(Req::Parse, Reply::Forward, 1, &mut out);
        e.push(Req::Bind, Reply::Forward, 2, &mut out);
        e.push(
            Req::Parse,
            Reply::Synthetic(encode::parse_complete()),
            3,
            &mut out,
        );
        let mut err = BytesMut::new();
        crate::protocol::encode::write_error(
            &mut err,
            crate::protocol::encode::Severity::Error,
            crate::protocol::SqlState::PROTOCOL_VIOLATION.0,
            "x",
        );
        assert_eq!(
            e.on_server(&Frame::from_raw(err.freeze()), &mut out),
            Outcome::Failed(vec![1, 2, 3])
        );
        // Sent after the error, before Sync: the server ignores it.
        assert_eq!(e.push(Req::Execute, Reply::Forward, 5, &mut out), Some(5));
        e.push(Req::Sync, Reply::Forward, 6, &mut out);
        out.clear();
        assert_eq!(e.on_server(&z(), &mut out), Outcome::Done(6));
        assert!(e.is_empty());
        assert_eq!(out[0], b'Z');
    }

    #[test]
    fn extended_copy_owes_a_sync() {
        let mut e: Expect<u8> = Expect::default();
        let mut out = BytesMut::new();
        e.push(Req::Execute, Reply::Forward, 1, &mut out);
        e.push(Req::Sync, Reply::Forward, 2, &mut out);
        // CopyInResponse: the client's Sync is consumed by the COPY.
        assert_eq!(e.on_server(&frame(b'G'), &mut out), Outcome::Pending);
        assert!(e.in_copy_in() && e.sync_owed());
        e.end_copy_in();
        assert_eq!(e.on_server(&frame(b'C'), &mut out), Outcome::Done(1));
        // Nothing owed, yet the batch is open until a Sync.
        assert!(e.is_empty() && e.sync_owed());
        e.push(Req::Sync, Reply::Forward, 3, &mut out);
        assert!(!e.sync_owed());
        assert_eq!(e.on_server(&z(), &mut out), Outcome::Done(3));
        assert!(e.is_empty());
    }
}
