//! One client's side of transaction-mode prepared statements: its
//! Parse/Bind/Describe/Close and the SQL that drops statements, rewritten
//! to registry names, with a Parse injected wherever the held server lacks
//! one.
//!
//! [`Tracker::route`] takes a client message and the held server's
//! statement set and says what to do: the bytes for the server go into the
//! [`Outbox`], with the reply each request owes (forward, swallow, answer
//! synthetically) and how to undo it. It never calls back into the session:
//! when a message needs a server and none is held it answers
//! [`Routed::NeedServer`] before changing anything, and the session calls
//! again once it holds one.
//!
//! Bookkeeping is optimistic: client names and server sets change when a
//! message is routed, and each request's [`Hook`] says how to undo that if
//! the server reports an error (or skips the request after one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::messages::{self, ParseRef, SqlEffect};
use super::{ClientStatements, Registry, ServerStatements, Statement};
use crate::protocol::error::{write_error, Severity};
use crate::protocol::expect::{Reply, Req};
use crate::protocol::frame::cstr;
use crate::protocol::{encode, fe, Frame, SqlState, TxStatus};

/// What a request changed, so it can be undone if the request fails.
#[derive(Debug)]
pub enum Hook {
    /// Nothing.
    None,
    /// A Parse: the client's name (if any) now maps to `stmt`, and the
    /// server's set holds it (`on_server`).
    Parse {
        /// The statement.
        stmt: Arc<Statement>,
        /// The client name mapped to it.
        client: Option<Bytes>,
        /// The statement that name meant before (only the unnamed statement
        /// is ever replaced): back in place if this Parse is skipped.
        replaced: Option<Arc<Statement>>,
        /// Whether the Parse went to the server.
        on_server: bool,
    },
    /// An eviction Close: the statement left the server's set.
    Evicted(Arc<Statement>),
    /// A client Close or DEALLOCATE: the client's name was unmapped.
    ClientClosed(Bytes, Arc<Statement>),
    /// A Bind or Describe that uses `stmt` on the server.
    Uses(Arc<Statement>),
    /// DISCARD ALL or DEALLOCATE ALL: the server drops every statement.
    DropAll,
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
    /// The client's own message goes to the server as it is (after
    /// anything already in `sout`).
    pub forward: bool,
    /// A local error ended the batch: drop the client's messages up to Sync.
    pub skip_to_sync: bool,
    /// An extended-protocol message went to the server (Sync is owed).
    pub unsynced: bool,
    /// What runs may change the session's identity.
    pub changes_identity: bool,
}

impl<'a> Outbox<'a> {
    /// An empty outbox writing into the session's buffers.
    pub fn new(sout: &'a mut BytesMut, replies: &'a mut Vec<(Req, Reply, Hook)>) -> Self {
        Self {
            sout,
            replies,
            forward: false,
            skip_to_sync: false,
            unsynced: false,
            changes_identity: false,
        }
    }

    fn expect(&mut self, req: Req, reply: Reply, hook: Hook) {
        self.replies.push((req, reply, hook));
    }

    /// Answers a request with an ErrorResponse pgmux makes itself; the
    /// server would drop the client's messages up to Sync, so pgmux does.
    fn local_error(&mut self, req: Req, code: SqlState, msg: &str) {
        let mut b = BytesMut::new();
        write_error(&mut b, Severity::Error, code.0, msg);
        self.expect(req, Reply::Synthetic(b.freeze()), Hook::None);
        self.skip_to_sync = true;
    }

    /// PostgreSQL's 26000 for a statement this client may not reach.
    fn no_such_statement(&mut self, req: Req, name: &[u8]) {
        let msg = if name.is_empty() {
            "unnamed prepared statement does not exist".to_owned()
        } else {
            format!("prepared statement \"{}\" does not exist", lossy(name))
        };
        self.local_error(req, SqlState::INVALID_SQL_STATEMENT_NAME, &msg);
    }

    fn forward(&mut self, req: Req, hook: Hook) {
        self.forward = true;
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

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Names of pgmux's own server-side statements: clients may not use them.
fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(b"pgmux_")
}

/// The held server's statements, or `NeedServer`.
macro_rules! held {
    ($server:expr) => {
        match $server {
            Some(s) => s,
            None => return Ok(Routed::NeedServer),
        }
    };
}

/// One client's named statements and what it may reach.
#[derive(Debug)]
pub struct Tracker {
    names: ClientStatements,
    limits: Limits,
    /// This client put an unnamed statement on the server it holds now
    /// (unnamed statements not shared): only then may it use the server's
    /// unnamed statement, which may otherwise be another client's.
    unnamed_here: bool,
}

impl Tracker {
    /// A client with no statements yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            names: ClientStatements::default(),
            limits,
            unnamed_here: false,
        }
    }

    /// The client took a (different) server: the unnamed statement there
    /// is not its own.
    pub fn on_new_server(&mut self) {
        self.unnamed_here = false;
    }

    /// Whether statement `name` is mapped to a registry entry: every named
    /// one, and the unnamed one with `track_unnamed_statements`.
    fn tracks(&self, name: &[u8]) -> bool {
        !name.is_empty() || self.limits.track_unnamed
    }

    /// Routes one client message. `tx` is the client's transaction status.
    pub fn route(
        &mut self,
        frame: &Frame,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        tx: TxStatus,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, Malformed> {
        match frame.tag() {
            fe::PARSE => self.parse(frame, server, registry, out),
            fe::BIND => {
                let body = frame.body();
                let (portal, name, at) = messages::bind(body).ok_or(Malformed("Bind"))?;
                if !self.tracks(name) {
                    return Ok(self.use_unnamed(Req::Bind, server.is_some(), out));
                }
                self.use_named(Req::Bind, name, server, registry, out, |o, renamed| {
                    messages::write_bind(o, portal, renamed, &body[at..])
                })
            }
            fe::DESCRIBE => {
                let (kind, name) = messages::target(frame.body()).ok_or(Malformed("Describe"))?;
                match kind {
                    b'S' if !self.tracks(name) => {
                        Ok(self.use_unnamed(Req::Describe, server.is_some(), out))
                    }
                    b'S' => self.use_named(Req::Describe, name, server, registry, out, |o, n| {
                        encode::describe_statement(o, n)
                    }),
                    _ => Ok(Routed::Untracked),
                }
            }
            fe::CLOSE => self.close(frame, server.is_some(), out),
            fe::QUERY => self.query(frame, server, tx, out),
            _ => Ok(Routed::Untracked),
        }
    }

    fn parse(
        &mut self,
        frame: &Frame,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, Malformed> {
        let p = messages::parse(frame.body()).ok_or(Malformed("Parse"))?;
        if !self.tracks(p.name) {
            held!(server);
            self.unnamed_here = true;
            out.unsynced = true;
            out.forward(Req::Parse, Hook::None);
            return Ok(Routed::Done);
        }
        let name = frame.raw().slice_ref(p.name);
        if !name.is_empty() && self.names.get(&name).is_some() {
            held!(server);
            duplicate_parse(&p, &name, out);
            return Ok(Routed::Done);
        }
        // A Parse into the unnamed statement replaces it: it does not count.
        let held = self.names.len() - usize::from(name.is_empty() && self.names.get(b"").is_some());
        if held >= self.limits.per_client {
            let msg = format!(
                "too many prepared statements: this client holds {held} (max_client_prepared_statements)"
            );
            out.local_error(Req::Parse, SqlState::PROGRAM_LIMIT_EXCEEDED, &msg);
            return Ok(Routed::Done);
        }
        let stmt = registry.get_or_insert(p.query, p.types);
        // With no server held, a statement some server already accepted is
        // answered here: a client blocked in a synchronous prepare must not
        // need a server its neighbours hold (pgbench -M prepared).
        let answer_here = match &server {
            Some(s) => s.has(&stmt),
            None => stmt.is_confirmed(),
        };
        if !answer_here && server.is_none() {
            return Ok(Routed::NeedServer);
        }
        // A Parse into the unnamed statement replaces it, as in PostgreSQL.
        let replaced = if name.is_empty() {
            self.names.remove(b"")
        } else {
            None
        };
        self.names.insert(name.clone(), stmt.clone());
        match server {
            Some(s) if !answer_here => {
                registry.counters.misses.fetch_add(1, Ordering::Relaxed);
                let reply = Reply::Forward;
                send_parse(
                    s,
                    stmt,
                    reply,
                    Some(name),
                    replaced,
                    self.limits,
                    registry,
                    out,
                );
            }
            server => {
                if let Some(s) = server {
                    s.touch(&stmt);
                }
                registry.counters.hits.fetch_add(1, Ordering::Relaxed);
                let hook = Hook::Parse {
                    stmt,
                    client: Some(name),
                    replaced,
                    on_server: false,
                };
                out.expect(Req::Parse, Reply::Synthetic(encode::parse_complete()), hook);
            }
        }
        Ok(Routed::Done)
    }

    /// Bind or Describe('S') of a named statement: rewritten by `write` to
    /// the registry name, with the Parse injected first when the held server
    /// lacks it. An unknown name is sent as it is, so the server reports the
    /// error exactly as PostgreSQL does, unless it could name one of pgmux's
    /// own statements.
    fn use_named(
        &mut self,
        req: Req,
        name: &[u8],
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
        write: impl FnOnce(&mut BytesMut, &[u8]),
    ) -> Result<Routed, Malformed> {
        let Some(stmt) = self.names.get(name).cloned() else {
            // The server's own unnamed statement may be another client's.
            if name.is_empty() || is_reserved(name) {
                out.no_such_statement(req, name);
                return Ok(Routed::Done);
            }
            held!(server);
            out.unsynced = true;
            out.forward(req, Hook::None);
            return Ok(Routed::Done);
        };
        let server = held!(server);
        if !server.touch(&stmt) {
            registry.counters.reprepares.fetch_add(1, Ordering::Relaxed);
            let s = stmt.clone();
            send_parse(
                server,
                s,
                Reply::Swallow,
                None,
                None,
                self.limits,
                registry,
                out,
            );
        }
        out.changes_identity |= stmt.changes_identity;
        write(out.sout, &stmt.name);
        out.unsynced = true;
        out.expect(req, Reply::Forward, Hook::Uses(stmt));
        Ok(Routed::Done)
    }

    /// Bind or Describe of the unnamed statement when it is not shared: it
    /// goes to the server only if this client put it there during this
    /// hold. Otherwise the server's unnamed statement is someone else's (or
    /// none), and the client gets PostgreSQL's 26000 instead.
    fn use_unnamed(&mut self, req: Req, held: bool, out: &mut Outbox<'_>) -> Routed {
        if self.unnamed_here && held {
            out.unsynced = true;
            out.forward(req, Hook::None);
        } else {
            out.no_such_statement(req, b"");
        }
        Routed::Done
    }

    fn close(
        &mut self,
        frame: &Frame,
        held: bool,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, Malformed> {
        let (kind, name) = messages::target(frame.body()).ok_or(Malformed("Close"))?;
        if kind == b'S' && self.tracks(name) {
            // The server's copy is shared: only this client's name goes.
            let hook = match self.names.remove(name) {
                Some(stmt) => Hook::ClientClosed(frame.raw().slice_ref(name), stmt),
                None => Hook::None,
            };
            out.expect(Req::Close, Reply::Synthetic(encode::close_complete()), hook);
            return Ok(Routed::Done);
        }
        if !held {
            // No server held means no portal and no unnamed statement exist.
            out.expect(
                Req::Close,
                Reply::Synthetic(encode::close_complete()),
                Hook::None,
            );
            return Ok(Routed::Done);
        }
        out.unsynced = true;
        out.forward(Req::Close, Hook::None);
        Ok(Routed::Done)
    }

    fn query(
        &mut self,
        frame: &Frame,
        server: Option<&mut ServerStatements>,
        tx: TxStatus,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, Malformed> {
        let sql = cstr(frame.body())
            .map(|(s, _)| s)
            .ok_or(Malformed("Query"))?;
        let effect = messages::sql_effect(sql);
        let owned = match &effect {
            SqlEffect::Deallocate(name) if tx != TxStatus::Failed => self.names.get(name).cloned(),
            _ => None,
        };
        if owned.is_none() {
            held!(server);
        }
        // A simple Query destroys the unnamed statement.
        self.unnamed_here = false;
        if self.limits.track_unnamed {
            self.names.remove(b"");
        }
        match (effect, owned) {
            (SqlEffect::Deallocate(name), Some(stmt)) => {
                self.names.remove(&name);
                // Answered here: other clients may use the server's copy.
                let mut reply = BytesMut::new();
                encode::command_complete(&mut reply, "DEALLOCATE");
                encode::ready_for_query(&mut reply, tx);
                let hook = Hook::ClientClosed(Bytes::from(name), stmt);
                out.expect(Req::Query, Reply::Synthetic(reply.freeze()), hook);
            }
            (SqlEffect::DropAll, _) => {
                self.names.clear();
                out.forward(Req::Query, Hook::DropAll);
            }
            _ => out.forward(Req::Query, Hook::None),
        }
        Ok(Routed::Done)
    }

    /// A request completed: a statement a server accepted is confirmed.
    pub fn on_done(&mut self, hook: Hook, server: Option<&mut ServerStatements>) {
        match hook {
            Hook::Parse {
                stmt,
                on_server: true,
                ..
            } => stmt.confirm(),
            Hook::DropAll => {
                if let Some(s) = server {
                    s.clear();
                }
            }
            _ => {}
        }
    }

    /// A request failed (`failed`: it is the one the server rejected) or was
    /// skipped: undo its bookkeeping. A statement whose cached plan went
    /// stale is retired on this server.
    pub fn undo(
        &mut self,
        hook: Hook,
        server: Option<&mut ServerStatements>,
        stale_plan: bool,
        failed: bool,
    ) {
        match hook {
            Hook::None | Hook::DropAll => {}
            Hook::Parse {
                stmt,
                client,
                replaced,
                on_server,
            } => {
                if let Some(name) = client {
                    self.names.remove_if(&name, &stmt);
                    // PostgreSQL drops the old unnamed statement before it
                    // parses the new one: only a skipped Parse leaves it.
                    if let (Some(old), false) = (replaced, failed) {
                        self.names.insert(name, old);
                    }
                }
                if let (true, Some(s)) = (on_server, server) {
                    s.remove(&stmt);
                }
            }
            Hook::Evicted(stmt) => {
                if let Some(s) = server {
                    s.add(stmt);
                }
            }
            Hook::ClientClosed(name, stmt) => {
                if self.names.get(&name).is_none() {
                    self.names.insert(name, stmt);
                }
            }
            Hook::Uses(stmt) => {
                if let (true, Some(s)) = (stale_plan, server) {
                    s.mark_stale(&stmt);
                }
            }
        }
    }
}

/// A Parse reusing a name: PostgreSQL reports syntax and analysis errors
/// before the duplicate name, so the server checks the query (under a name
/// of pgmux's own, closed right after, so the client's unnamed statement
/// stays as it was) and only its success becomes the 42P05 error.
fn duplicate_parse(p: &ParseRef<'_>, name: &[u8], out: &mut Outbox<'_>) {
    const CHECK: &[u8] = b"pgmux_check";
    encode::parse_raw(out.sout, CHECK, p.query, p.types);
    encode::close_statement(out.sout, CHECK);
    out.unsynced = true;
    let mut err = BytesMut::new();
    let msg = format!("prepared statement \"{}\" already exists", lossy(name));
    write_error(
        &mut err,
        Severity::Error,
        SqlState::DUPLICATE_PSTATEMENT.0,
        &msg,
    );
    out.expect(Req::Parse, Reply::Replace(err.freeze()), Hook::None);
    out.expect(Req::Close, Reply::Swallow, Hook::None);
    out.skip_to_sync = true;
}

/// Sends `stmt`'s Parse to the held server, closing a stale copy and
/// evicting the least recently used statements first.
#[allow(clippy::too_many_arguments)]
fn send_parse(
    server: &mut ServerStatements,
    stmt: Arc<Statement>,
    reply: Reply,
    client: Option<Bytes>,
    replaced: Option<Arc<Statement>>,
    limits: Limits,
    registry: &Registry,
    out: &mut Outbox<'_>,
) {
    let stale = server.take_stale(&stmt);
    let mut evicted = Vec::new();
    while server.len() >= limits.per_server {
        match server.pop_lru() {
            Some(old) => evicted.push(old),
            None => break,
        }
    }
    server.add(stmt.clone());
    if stale {
        encode::close_statement(out.sout, &stmt.name);
        out.expect(Req::Close, Reply::Swallow, Hook::None);
    }
    for old in evicted {
        registry.counters.evictions.fetch_add(1, Ordering::Relaxed);
        encode::close_statement(out.sout, &old.name);
        out.expect(Req::Close, Reply::Swallow, Hook::Evicted(old));
    }
    out.sout.extend_from_slice(&stmt.parse);
    out.unsynced = true;
    let hook = Hook::Parse {
        stmt,
        client,
        replaced,
        on_server: true,
    };
    out.expect(Req::Parse, reply, hook);
}
