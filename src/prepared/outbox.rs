//! What routing a client message produces for the session to carry out.

use bytes::BytesMut;

use super::Hook;
use crate::protocol::encode::{write_error, EncodeError, Severity};
use crate::protocol::expect::{Reply, Req, Shift};
use crate::protocol::SqlState;

/// A client name, for messages.
pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An ErrorResponse pgmux makes itself.
pub(super) fn error(code: SqlState, msg: &str) -> BytesMut {
    let mut b = BytesMut::new();
    write_error(&mut b, Severity::Error, code.0, msg);
    b
}

/// PostgreSQL's 42P05 for a statement name the client already uses.
pub(super) fn duplicate(name: &[u8]) -> BytesMut {
    let msg = format!("prepared statement \"{}\" already exists", lossy(name));
    error(SqlState::DUPLICATE_PSTATEMENT, &msg)
}

/// Limits and switches, from the configuration as of login.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Statements one client may name (`max_client_prepared_statements`).
    pub per_client: usize,
    /// Statements one server keeps (`max_prepared_statements`).
    pub per_server: usize,
    /// Whether the unnamed statement is shared (`track_unnamed_statements`).
    pub track_unnamed: bool,
}

/// What routing a message produced, for the session to carry out in order.
#[derive(Debug)]
pub struct Outbox<'a> {
    /// Bytes for the server (the session's own buffer).
    pub sout: &'a mut BytesMut,
    /// The replies owed, in the order of the requests in `sout` (a buffer
    /// the session keeps, so routing allocates nothing).
    pub replies: &'a mut Vec<(Req, Reply, Hook)>,
    /// What the session must do besides sending and expecting.
    pub flags: Flags,
    /// Replies to earlier requests are still owed: the transaction status
    /// the router is given is the last one the client was told, and may
    /// change before this request runs (pipelined queries).
    pub owed: bool,
}

/// What routing asks of the session besides bytes and replies.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags {
    /// The client's own message goes to the server as it is (after
    /// anything already in `sout`).
    pub forward: bool,
    /// A local error ended the batch: drop the client's messages up to Sync.
    pub skip_to_sync: bool,
    /// What runs may change in the session, when the tracker knows it
    /// better than the message text does (a Bind or `EXECUTE` of a known
    /// statement, a mapped `PREPARE`); `None` leaves it to the text.
    pub effects: Option<crate::sql::Effects>,
}

impl<'a> Outbox<'a> {
    /// An empty outbox writing into the session's buffers.
    pub fn new(sout: &'a mut BytesMut, replies: &'a mut Vec<(Req, Reply, Hook)>) -> Self {
        Self {
            sout,
            replies,
            flags: Flags::default(),
            owed: false,
        }
    }

    pub(super) fn expect(&mut self, req: Req, reply: Reply, hook: Hook) {
        self.replies.push((req, reply, hook));
    }

    /// Answers a request with an ErrorResponse pgmux makes itself; the
    /// server would drop the client's messages up to Sync, so pgmux does.
    pub(super) fn local_error(&mut self, req: Req, code: SqlState, msg: &str) {
        let b = error(code, msg);
        self.expect(req, Reply::Synthetic(b.freeze()), Hook::None);
        self.flags.skip_to_sync = true;
    }

    /// PostgreSQL's 26000 for a statement this client may not reach.
    pub(super) fn no_such_statement(&mut self, req: Req, name: &[u8]) {
        let msg = if name.is_empty() {
            "unnamed prepared statement does not exist".to_owned()
        } else {
            format!("prepared statement \"{}\" does not exist", lossy(name))
        };
        self.local_error(req, SqlState::INVALID_SQL_STATEMENT_NAME, &msg);
    }

    /// The Query just sent for the client (its name rewritten) has its
    /// error position moved back into the client's text.
    pub(super) fn shift_last_query(&mut self, shift: Shift) {
        if let Some((Req::Query, reply @ Reply::Forward, _)) = self.replies.last_mut() {
            *reply = Reply::Shifted(shift);
        }
    }

    pub(super) fn forward(&mut self, req: Req, hook: Hook) {
        self.flags.forward = true;
        self.expect(req, Reply::Forward, hook);
    }
}

/// The outcome of [`Tracker::route`].
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Done: carry out the outbox.
    Done,
    /// The message needs a server and none is held; nothing was changed.
    NeedServer,
    /// Not a message this tracks: handle it as any other.
    Untracked,
}

/// A message that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed {0} message")]
pub struct Malformed(pub &'static str);

/// Why [`Tracker::route`](super::Tracker::route) could not route a message.
/// Either way nothing was recorded or written: the session ends.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The client's message could not be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// Its rewrite would be too long to send. A client's message is at most
    /// `max_message_size` (1 GiB), and pgmux's names are short, so only a
    /// statement name that grows when it is quoted can get here.
    #[error(transparent)]
    TooLong(#[from] EncodeError),
}
