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

use super::messages::{self, SqlEffect, SqlPrepared};
use super::outbox::{duplicate, lossy, Limits, Malformed, Outbox, RouteError, Routed};
use super::{ClientStatements, Hook, Registry, ServerStatements, Statement, SQL_PREPARE};
use crate::protocol::encode::{self, EncodeError, RawQuery, RenamedBind};
use crate::protocol::expect::{Reply, Req, Shift};
use crate::protocol::frontend::{Bind, Message, Parse, Target};
use crate::protocol::{Frame, SqlState, TxStatus};
use crate::sql::Effects;

const INVALID_NAME: SqlState = SqlState::INVALID_SQL_STATEMENT_NAME;

/// PostgreSQL's message for a statement name that does not exist.
fn no_such(name: &[u8]) -> String {
    format!("prepared statement \"{}\" does not exist", lossy(name))
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
    pub(super) names: ClientStatements,
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

    /// Routes one client message, `msg` as read from `frame`. `tx` is the
    /// client's transaction status.
    pub fn route(
        &mut self,
        msg: &Message<'_>,
        frame: &Frame,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        tx: TxStatus,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        match *msg {
            Message::Parse(p) => self.parse(p, frame, server, registry, out),
            Message::Bind(b) => self.bind(b, server, registry, out),
            Message::Describe(t) => self.describe(t, server, registry, out),
            Message::Close(t) => Ok(self.close(t, frame, server.is_some(), out)),
            Message::Query(sql) => self.query(sql, server, registry, tx, out),
            Message::Malformed(kind) => Err(Malformed(kind).into()),
            _ => Ok(Routed::Untracked),
        }
    }

    /// Whether routing `frame` with no server held would answer
    /// [`Routed::NeedServer`], decided without changing anything, so the
    /// session takes a server first and routes once; `None` for a message
    /// this does not track. Agrees with `route` (which still answers
    /// `NeedServer` if a statement confirmed here was freed meanwhile).
    pub fn needs_server(
        &self,
        msg: &Message<'_>,
        registry: &Registry,
        tx: TxStatus,
    ) -> Option<bool> {
        Some(match *msg {
            Message::Parse(p) => {
                if !self.tracks(p.name) || (!p.name.is_empty() && self.names.get(p.name).is_some())
                {
                    return Some(true);
                }
                self.over_limit(p.name).is_none() && !registry.is_confirmed(p.query, p.types)
            }
            Message::Bind(b) => self.use_needs_server(b.statement),
            Message::Describe(Target { kind: b'S', name }) => self.use_needs_server(name),
            Message::Describe(_) => return None,
            Message::Close(_) => false,
            Message::Query(sql) => self.query_needs_server(sql, registry, tx),
            // Refused here: it needs no server.
            Message::Malformed(_) => false,
            _ => return None,
        })
    }

    /// [`Tracker::needs_server`] for a Bind or Describe of a statement.
    fn use_needs_server(&self, name: &[u8]) -> bool {
        if !self.tracks(name) {
            // Answered here unless this client's own unnamed statement is
            // on the server it holds.
            return false;
        }
        match self.names.get(name).filter(|s| !s.sql) {
            Some(_) => true,
            None => !(name.is_empty() || is_reserved(name)),
        }
    }

    /// [`Tracker::needs_server`] for a simple Query.
    fn query_needs_server(&self, sql: &[u8], registry: &Registry, tx: TxStatus) -> bool {
        if !messages::names_statements(sql) {
            return true;
        }
        // As `query` sees the names: a simple Query has already destroyed
        // the unnamed statement when it looks.
        let mapped = |name: &[u8]| {
            self.names
                .get(name)
                .filter(|_| !(name.is_empty() && self.limits.track_unnamed))
        };
        match messages::sql_prepared(sql).filter(|_| tx != TxStatus::Failed) {
            Some(SqlPrepared::Prepare { name, rest }) => {
                return mapped(&name).is_none() && !registry.is_confirmed(rest, SQL_PREPARE);
            }
            Some(SqlPrepared::Execute { name, .. }) if mapped(&name).is_some_and(|s| s.sql) => {
                return true;
            }
            _ => {}
        }
        match messages::sql_effect(sql) {
            SqlEffect::Deallocate(name) if tx != TxStatus::Failed => mapped(&name).is_none(),
            _ => true,
        }
    }

    fn bind(
        &mut self,
        b: Bind<'_>,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        if !self.tracks(b.statement) {
            return Ok(self.use_unnamed(Req::Bind, server.is_some(), out));
        }
        let bind = Named::Bind {
            portal: b.portal,
            tail: b.rest,
        };
        self.use_named(bind, b.statement, server, registry, out)
    }

    /// Describe of a statement (a portal's is not tracked).
    fn describe(
        &mut self,
        t: Target<'_>,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        match t.kind {
            b'S' if !self.tracks(t.name) => {
                Ok(self.use_unnamed(Req::Describe, server.is_some(), out))
            }
            b'S' => self.use_named(Named::Describe, t.name, server, registry, out),
            _ => Ok(Routed::Untracked),
        }
    }

    fn parse(
        &mut self,
        p: Parse<'_>,
        frame: &Frame,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        if !self.tracks(p.name) {
            held!(server);
            self.unnamed_here = true;
            out.forward(Req::Parse, Hook::None);
            return Ok(Routed::Done);
        }
        let name = frame.raw().slice_ref(p.name);
        if !name.is_empty() && self.names.get(&name).is_some() {
            held!(server);
            duplicate_parse(&p, &name, out)?;
            return Ok(Routed::Done);
        }
        if let Some(msg) = self.over_limit(&name) {
            out.local_error(Req::Parse, SqlState::PROGRAM_LIMIT_EXCEEDED, &msg);
            return Ok(Routed::Done);
        }
        let stmt = registry.get_or_insert(p.query, p.types)?;
        let Some(answer_here) = answerable(&stmt, &server) else {
            return Ok(Routed::NeedServer);
        };
        let here = || (Req::Parse, encode::parse_complete());
        // Preparing runs nothing: the statement's effects come with its
        // Binds (a Parse and Describe of a function call, as a driver
        // prepares it, costs no check of the server).
        out.flags.effects = Some(Effects::NONE);
        self.map_parse(name, stmt, answer_here, server, registry, out, here);
        Ok(Routed::Done)
    }

    /// The error for a Parse past `max_client_prepared_statements`, if it is.
    fn over_limit(&self, name: &[u8]) -> Option<String> {
        // A Parse into the unnamed statement replaces it: it does not count.
        let replaces = name.is_empty() && self.names.get(b"").is_some();
        let held = self.names.len() - usize::from(replaces);
        (held >= self.limits.per_client).then(|| {
            format!(
                "too many prepared statements: this client holds {held} (max_client_prepared_statements)"
            )
        })
    }

    /// Maps the client's name to `stmt` and answers the request here with
    /// `here` (ParseComplete, or PREPARE's completion), or sends the
    /// statement when the held server lacks it.
    #[allow(clippy::too_many_arguments)]
    fn map_parse(
        &mut self,
        name: Bytes,
        stmt: Arc<Statement>,
        answer_here: bool,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
        here: impl FnOnce() -> (Req, Bytes),
    ) {
        // A Parse into the unnamed statement replaces it, as in PostgreSQL.
        let replaced = if name.is_empty() {
            self.names.remove(b"")
        } else {
            None
        };
        self.names.insert(name.clone(), stmt.clone());
        let parse = NewParse {
            stmt,
            client: Some(name),
            replaced,
        };
        match server {
            Some(s) if !answer_here => {
                registry.counters.misses.fetch_add(1, Ordering::Relaxed);
                send_parse(s, parse, Reply::Forward, self.limits, registry, out);
            }
            server => {
                if let Some(s) = server {
                    s.touch(&parse.stmt);
                }
                registry.counters.hits.fetch_add(1, Ordering::Relaxed);
                let (req, reply) = here();
                out.expect(req, Reply::Synthetic(reply), parse.hook(false));
            }
        }
    }

    /// `PREPARE name ...`: the client's name maps to a shared statement
    /// prepared on servers as `PREPARE pgmux_<n> ...`, answered here when
    /// the held server (or, with none held, some server) already has it.
    #[allow(clippy::too_many_arguments)]
    fn sql_prepare(
        &mut self,
        name: Vec<u8>,
        rest: &[u8],
        client_end: u32,
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        tx: TxStatus,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        if self.names.get(&name).is_some() {
            duplicate_prepare(&name, tx, out)?;
            return Ok(Routed::Done);
        }
        let stmt = registry.get_or_insert(rest, SQL_PREPARE)?;
        let Some(answer_here) = answerable(&stmt, &server) else {
            return Ok(Routed::NeedServer);
        };
        let here = || {
            let mut reply = BytesMut::new();
            encode::command_complete(&mut reply, "PREPARE");
            encode::ready_for_query(&mut reply, tx);
            (Req::Query, reply.freeze())
        };
        // Preparing runs nothing: the statement's effects come with EXECUTE.
        out.flags.effects = Some(Effects::NONE);
        // The server reads `PREPARE pgmux_<n> ` before the client's text.
        let shift = Shift {
            server_end: Shift::chars(b"PREPARE ") + Shift::chars(&stmt.name) + 1,
            client_end,
        };
        let name = Bytes::from(name);
        self.map_parse(name, stmt, answer_here, server, registry, out, here);
        out.shift_last_query(shift);
        Ok(Routed::Done)
    }

    /// Bind or Describe('S') of a named statement: rewritten to the
    /// registry name, with the Parse injected first when the held server
    /// lacks it. An unknown name is sent as it is, so the server reports the
    /// error exactly as PostgreSQL does, unless it could name one of pgmux's
    /// own statements.
    fn use_named(
        &mut self,
        named: Named<'_>,
        name: &[u8],
        server: Option<&mut ServerStatements>,
        registry: &Registry,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        let req = named.req();
        // A SQL-prepared name reached through Bind/Describe is left to the
        // server (a Query PREPARE can't be injected inside an extended
        // batch): it answers 26000, a documented limit.
        let Some(stmt) = self.names.get(name).filter(|s| !s.sql).cloned() else {
            // The server's own unnamed statement may be another client's.
            if name.is_empty() || is_reserved(name) {
                out.no_such_statement(req, name);
                return Ok(Routed::Done);
            }
            held!(server);
            out.forward(req, Hook::None);
            return Ok(Routed::Done);
        };
        let server = held!(server);
        // Checked before anything is recorded, and written after the Parse
        // the server may lack.
        let bind = match named {
            Named::Bind { portal, tail } => Some(RenamedBind::new(portal, &stmt.name, tail)?),
            Named::Describe => None,
        };
        ensure_prepared(server, &stmt, self.limits, registry, out);
        match bind {
            Some(bind) => bind.write(out.sout),
            // A Describe runs nothing.
            None => {
                out.flags.effects = Some(Effects::NONE);
                encode::describe_statement(out.sout, &stmt.name);
            }
        }
        out.expect(req, Reply::Forward, Hook::Uses(stmt));
        Ok(Routed::Done)
    }

    /// Bind or Describe of the unnamed statement when it is not shared: it
    /// goes to the server only if this client put it there during this
    /// hold. Otherwise the server's unnamed statement is someone else's (or
    /// none), and the client gets PostgreSQL's 26000 instead.
    fn use_unnamed(&mut self, req: Req, held: bool, out: &mut Outbox<'_>) -> Routed {
        if self.unnamed_here && held {
            out.forward(req, Hook::None);
        } else {
            out.no_such_statement(req, b"");
        }
        Routed::Done
    }

    fn close(&mut self, t: Target<'_>, frame: &Frame, held: bool, out: &mut Outbox<'_>) -> Routed {
        let Target { kind, name } = t;
        if kind == b'S' && self.tracks(name) {
            // The server's copy is shared: only this client's name goes.
            let hook = match self.names.remove(name) {
                Some(stmt) => Hook::ClientClosed(frame.raw().slice_ref(name), stmt),
                None => Hook::None,
            };
            out.expect(Req::Close, Reply::Synthetic(encode::close_complete()), hook);
            return Routed::Done;
        }
        if !held {
            // No server held means no portal and no unnamed statement exist.
            out.expect(
                Req::Close,
                Reply::Synthetic(encode::close_complete()),
                Hook::None,
            );
            return Routed::Done;
        }
        out.forward(Req::Close, Hook::None);
        Routed::Done
    }

    fn query(
        &mut self,
        sql: &[u8],
        mut server: Option<&mut ServerStatements>,
        registry: &Registry,
        tx: TxStatus,
        out: &mut Outbox<'_>,
    ) -> Result<Routed, RouteError> {
        // A simple Query destroys the unnamed statement, whatever it runs
        // (done again if this returns NeedServer: it is idempotent).
        self.unnamed_here = false;
        if self.limits.track_unnamed {
            self.names.remove(b"");
        }
        if !messages::names_statements(sql) {
            held!(server);
            out.forward(Req::Query, Hook::None);
            return Ok(Routed::Done);
        }
        // SQL-level PREPARE / EXECUTE: the same names as the protocol's, so
        // the same per-client map. A failed transaction goes to the server,
        // which refuses it as PostgreSQL does.
        match messages::sql_prepared(sql).filter(|_| tx != TxStatus::Failed) {
            Some(SqlPrepared::Prepare { name, rest }) => {
                // Where the text after the name starts in the client's
                // text; the server reads `PREPARE pgmux_<n> ` before it.
                let before = (rest.as_ptr() as usize).saturating_sub(sql.as_ptr() as usize);
                let client_end = Shift::chars(sql.get(..before).unwrap_or_default());
                return self.sql_prepare(name, rest, client_end, server, registry, tx, out);
            }
            Some(SqlPrepared::Execute { name, at, inner }) => {
                let stmt = self.names.get(&name).filter(|s| s.sql).cloned();
                if stmt.is_none() && is_reserved(&name) {
                    // The server's statement of that name is pgmux's,
                    // shared with other clients: never this client's.
                    held!(server);
                    refuse_query(INVALID_NAME, &no_such(&name), tx, out)?;
                    return Ok(Routed::Done);
                }
                // The name's place is inside the text (`sql_prepared`
                // says so); checked again here, since cutting the text
                // anywhere else would panic on client bytes.
                let cut = Cut::new(sql, at);
                if let Some((stmt, cut)) = stmt.zip(cut) {
                    let Some(s) = server.as_deref_mut() else {
                        return Ok(Routed::NeedServer);
                    };
                    sql_execute(cut, stmt, s, self.limits, registry, out)?;
                    // EXPLAIN ANALYZE runs it; CREATE TEMP TABLE ... AS
                    // makes a table: the outer statement counts too.
                    if inner {
                        let known = out.flags.effects.unwrap_or(Effects::NONE);
                        let mut outer = crate::sql::effects(sql);
                        outer |= known;
                        out.flags.effects = Some(outer);
                    }
                    return Ok(Routed::Done);
                }
            }
            None => {}
        }
        let effect = messages::sql_effect(sql);
        let owned = match &effect {
            SqlEffect::Deallocate(name) if tx != TxStatus::Failed => self.names.get(name).cloned(),
            _ => None,
        };
        if let (SqlEffect::Deallocate(name), None) = (&effect, &owned) {
            // Dropping pgmux's shared copy would pull it from under the
            // clients that use it.
            if is_reserved(name) && tx != TxStatus::Failed {
                held!(server);
                refuse_query(INVALID_NAME, &no_such(name), tx, out)?;
                return Ok(Routed::Done);
            }
        }
        if owned.is_none() {
            held!(server);
        }
        match (effect, owned) {
            (SqlEffect::Deallocate(name), Some(stmt)) => {
                self.names.remove(&name);
                // Nothing reaches the server: nothing to check after it.
                out.flags.effects = Some(Effects::NONE);
                // Answered here: other clients may use the server's copy.
                let mut reply = BytesMut::new();
                encode::command_complete(&mut reply, "DEALLOCATE");
                encode::ready_for_query(&mut reply, tx);
                let hook = Hook::ClientClosed(Bytes::from(name), stmt);
                out.expect(Req::Query, Reply::Synthetic(reply.freeze()), hook);
            }
            // The server refuses it in a failed transaction, and DISCARD ALL
            // in any transaction block: nothing is dropped then.
            (SqlEffect::DropAll { discard }, _)
                if tx == TxStatus::Failed || (discard && tx == TxStatus::InTransaction) =>
            {
                out.forward(Req::Query, Hook::None)
            }
            (SqlEffect::DropAll { .. }, _) => {
                self.names.clear();
                out.forward(Req::Query, Hook::DropAll);
            }
            _ => out.forward(Req::Query, Hook::None),
        }
        Ok(Routed::Done)
    }
}

/// A Parse reusing a name: PostgreSQL reports syntax and analysis errors
/// before the duplicate name, so the server checks the query (under a name
/// of pgmux's own, closed right after, so the client's unnamed statement
/// stays as it was) and only its success becomes the 42P05 error.
fn duplicate_parse(p: &Parse<'_>, name: &[u8], out: &mut Outbox<'_>) -> Result<(), EncodeError> {
    const CHECK: &[u8] = b"pgmux_check";
    encode::parse_raw(out.sout, CHECK, p.query, p.types)?;
    encode::close_statement(out.sout, CHECK);
    out.expect(
        Req::Parse,
        Reply::Replace(duplicate(name).freeze()),
        Hook::None,
    );
    out.expect(Req::Close, Reply::Swallow, Hook::None);
    out.flags.skip_to_sync = true;
    Ok(())
}

/// A query text cut around a statement name.
#[derive(Debug, Clone, Copy)]
struct Cut<'a> {
    /// The text before the name.
    before: &'a [u8],
    /// The text up to the end of the name.
    through: &'a [u8],
    /// The text after the name.
    after: &'a [u8],
}

impl<'a> Cut<'a> {
    /// `query` cut at the byte range `at`; `None` unless it lies inside.
    fn new(query: &'a [u8], at: (usize, usize)) -> Option<Self> {
        let (through, after) = query.split_at_checked(at.1)?;
        let (before, _) = through.split_at_checked(at.0)?;
        Some(Self {
            before,
            through,
            after,
        })
    }
}

/// `EXECUTE name ...` of a SQL-prepared statement: the name rewritten to
/// pgmux's, the `PREPARE` injected first where the server lacks it.
fn sql_execute(
    cut: Cut<'_>,
    stmt: Arc<Statement>,
    server: &mut ServerStatements,
    limits: Limits,
    registry: &Registry,
    out: &mut Outbox<'_>,
) -> Result<(), EncodeError> {
    // A quoted name ends a token where a bare one does not: `EXECUTE"q"`
    // or `"q"1` would become `EXECUTEpgmux_1` or `pgmux_11`, another
    // statement. A space keeps the tokens the client wrote.
    let glued = |b: Option<&u8>| b.is_some_and(|&b| crate::sql::word_rest(b));
    let space = |glued: bool| if glued { &b" "[..] } else { b"" };
    let (pre, post) = (
        space(glued(cut.before.last())),
        space(glued(cut.after.first())),
    );
    // Checked before anything is recorded, as a Bind is.
    let parts = [cut.before, pre, &stmt.name[..], post, cut.after];
    let rewritten = RawQuery::new(&parts)?;
    ensure_prepared(server, &stmt, limits, registry, out);
    rewritten.write(out.sout);
    let shift = Shift {
        server_end: Shift::chars(cut.before)
            + Shift::chars(pre)
            + Shift::chars(&stmt.name)
            + Shift::chars(post),
        client_end: Shift::chars(cut.through),
    };
    out.expect(Req::Query, Reply::Shifted(shift), Hook::Uses(stmt));
    Ok(())
}

/// Makes sure the held server has `stmt`, injecting its Parse (or SQL
/// `PREPARE`) in the same batch, its reply swallowed, when it lacks it;
/// what running it may change is the statement's, known from its text.
fn ensure_prepared(
    server: &mut ServerStatements,
    stmt: &Arc<Statement>,
    limits: Limits,
    registry: &Registry,
    out: &mut Outbox<'_>,
) {
    if !server.touch(stmt) {
        registry.counters.reprepares.fetch_add(1, Ordering::Relaxed);
        let parse = NewParse {
            stmt: stmt.clone(),
            client: None,
            replaced: None,
        };
        send_parse(server, parse, Reply::Swallow, limits, registry, out);
    }
    out.flags.effects = Some(stmt.effects);
}

/// `PREPARE` of a name the client already uses: PostgreSQL's 42P05.
fn duplicate_prepare(name: &[u8], tx: TxStatus, out: &mut Outbox<'_>) -> Result<(), EncodeError> {
    let msg = format!("prepared statement \"{}\" already exists", lossy(name));
    refuse_query(SqlState::DUPLICATE_PSTATEMENT, &msg, tx, out)
}

/// Refuses a simple Query with PostgreSQL's error. Outside a transaction,
/// with nothing owed before it, it is answered here; otherwise the server
/// must raise it (a pipelined `BEGIN` ahead of it may have opened one), so
/// that a transaction is aborted as PostgreSQL would.
fn refuse_query(
    code: SqlState,
    msg: &str,
    tx: TxStatus,
    out: &mut Outbox<'_>,
) -> Result<(), EncodeError> {
    if tx == TxStatus::Idle && !out.owed {
        let mut reply = super::outbox::error(code, msg);
        encode::ready_for_query(&mut reply, tx);
        out.expect(Req::Query, Reply::Synthetic(reply.freeze()), Hook::None);
        return Ok(());
    }
    // An escape string inside a dollar-quoted body: a name can close
    // neither (quotes are doubled, backslashes escaped, `$` dropped).
    let quoted = msg
        .replace('\\', "\\\\")
        .replace('\'', "''")
        .replace('$', "");
    let raise = format!(
        "DO $pgmux$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = E'{quoted}'; END $pgmux$",
        code.0
    );
    encode::query_raw(out.sout, &[raise.as_bytes()])?;
    out.expect(Req::Query, Reply::Forward, Hook::None);
    Ok(())
}

/// What [`Tracker::use_named`] writes under the registry's name.
enum Named<'a> {
    /// A Bind: the client's portal, and what follows the statement name.
    Bind {
        /// The portal name.
        portal: &'a [u8],
        /// Formats, values and result formats, as sent.
        tail: &'a [u8],
    },
    /// A Describe of the statement.
    Describe,
}

impl Named<'_> {
    fn req(&self) -> Req {
        match self {
            Self::Bind { .. } => Req::Bind,
            Self::Describe => Req::Describe,
        }
    }
}

/// Whether a Parse (or SQL `PREPARE`) of `stmt` is answered here: the held
/// server has it, or, with none held, some server has accepted it (a
/// client blocked in a synchronous prepare must not need a server its
/// neighbours hold: pgbench -M prepared). `None` when a server is needed.
fn answerable(stmt: &Statement, server: &Option<&mut ServerStatements>) -> Option<bool> {
    match server {
        Some(s) => Some(s.has(stmt)),
        None => stmt.is_confirmed().then_some(true),
    }
}

/// A statement to prepare, and the client name it is for.
struct NewParse {
    stmt: Arc<Statement>,
    /// The client name mapped to it (none for an injected Parse).
    client: Option<Bytes>,
    /// The statement that name meant before.
    replaced: Option<Arc<Statement>>,
}

impl NewParse {
    fn hook(self, on_server: bool) -> Hook {
        Hook::Parse {
            stmt: self.stmt,
            client: self.client,
            replaced: self.replaced,
            on_server,
        }
    }
}

/// Sends a Parse to the held server, closing a stale copy and evicting the
/// least recently used statements first.
fn send_parse(
    server: &mut ServerStatements,
    parse: NewParse,
    reply: Reply,
    limits: Limits,
    registry: &Registry,
    out: &mut Outbox<'_>,
) {
    let stmt = &parse.stmt;
    let stale = server.take_stale(stmt);
    let evicted = server.make_room(limits.per_server);
    server.add(stmt.clone());
    // Closes are extended-protocol messages: a simple Query behind them
    // needs a Sync first.
    let closes_then_query = stmt.sql && (stale || !evicted.is_empty());
    if stale {
        encode::close_statement(out.sout, &stmt.name);
        out.expect(Req::Close, Reply::Swallow, Hook::None);
    }
    for old in evicted {
        registry.counters.evictions.fetch_add(1, Ordering::Relaxed);
        encode::close_statement(out.sout, &old.name);
        out.expect(Req::Close, Reply::Swallow, Hook::Evicted(old));
    }
    if closes_then_query {
        encode::sync(out.sout);
        out.expect(Req::Sync, Reply::Swallow, Hook::None);
    }
    out.sout.extend_from_slice(&stmt.parse);
    if stmt.sql {
        out.expect(Req::Query, reply, parse.hook(true));
    } else {
        out.expect(Req::Parse, reply, parse.hook(true));
    }
}
