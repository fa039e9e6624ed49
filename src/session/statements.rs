//! The session's side of transaction-mode prepared statements: client
//! Parse/Bind/Describe/Close and the SQL that drops statements, rewritten to
//! registry names, with a Parse injected wherever the server lacks one.
//!
//! Bookkeeping is optimistic: client names and server sets change when a
//! message is sent, and each request's [`Hook`] says how to undo that if the
//! server reports an error (or skips the request after one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::expect::{Reply, Req};
use super::{fatal, End, Session};
use crate::prepared::messages::{self, SqlEffect};
use crate::prepared::Statement;
use crate::protocol::error::{write_error, Severity};
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

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn malformed(what: &str) -> End {
    fatal(
        SqlState::PROTOCOL_VIOLATION,
        format!("malformed {what} message"),
    )
}

/// Names of pgmux's own server-side statements: clients may not use them.
fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(b"pgmux_")
}

impl Session {
    /// Routes one tracked message; `false` if it is not a tracked one.
    pub(super) async fn route_tracked(&mut self, frame: &Frame) -> Result<bool, End> {
        match frame.tag() {
            fe::PARSE => self.client_parse(frame).await?,
            fe::BIND => self.client_bind(frame).await?,
            fe::DESCRIBE => self.client_describe(frame).await?,
            fe::CLOSE => self.client_close(frame).await?,
            fe::QUERY => self.client_query(frame).await?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    async fn client_parse(&mut self, frame: &Frame) -> Result<(), End> {
        let p = messages::parse(frame.body()).ok_or_else(|| malformed("Parse"))?;
        if !self.tracks(p.name) {
            self.forward_needing_server(frame).await?;
            self.unnamed_here = true;
            return Ok(());
        }
        let name = frame.raw().slice_ref(p.name);
        let stmts = self.stmts.as_mut().expect("tracking is on");
        // A Parse into the unnamed statement replaces it, as in PostgreSQL.
        let replaced = if name.is_empty() {
            stmts.remove(b"")
        } else if stmts.get(&name).is_some() {
            return self.duplicate_parse(&p, &name).await;
        } else {
            None
        };
        if stmts.len() >= self.cfg.pgmux.max_client_prepared_statements {
            let msg = format!(
                "too many prepared statements: this client holds {} (max_client_prepared_statements)",
                stmts.len()
            );
            self.local_error(Req::Parse, SqlState::PROGRAM_LIMIT_EXCEEDED, &msg);
            return Ok(());
        }
        let stmt = self.ctx.statements.get_or_insert(p.query, p.types);
        stmts.insert(name.clone(), stmt.clone());
        // With no server held, a statement some server already accepted is
        // answered here: a client blocked in a synchronous prepare must not
        // need a server its neighbours hold (pgbench -M prepared).
        let answer_here = match self.server.as_mut() {
            Some(s) => s.statements.touch(&stmt),
            None => stmt.is_confirmed(),
        };
        if answer_here {
            self.parse_answered_here(stmt, name, replaced);
            return Ok(());
        }
        self.ensure_server().await?;
        let server = self.server.as_mut().expect("just acquired");
        if server.statements.touch(&stmt) {
            self.parse_answered_here(stmt, name, replaced);
            return Ok(());
        }
        self.ctx
            .statements
            .counters
            .misses
            .fetch_add(1, Ordering::Relaxed);
        self.send_parse(stmt, Reply::Forward, Some(name), replaced);
        Ok(())
    }

    /// Whether statement `name` is mapped to a registry entry: every named
    /// one, and the unnamed one with `track_unnamed_statements`.
    fn tracks(&self, name: &[u8]) -> bool {
        !name.is_empty() || self.cfg.pgmux.track_unnamed_statements
    }

    /// Answers a client's Parse with a synthetic ParseComplete: the held
    /// server already has the statement, or a server has accepted it before.
    fn parse_answered_here(
        &mut self,
        stmt: Arc<Statement>,
        name: Bytes,
        replaced: Option<Arc<Statement>>,
    ) {
        self.ctx
            .statements
            .counters
            .hits
            .fetch_add(1, Ordering::Relaxed);
        let hook = Hook::Parse {
            stmt,
            client: Some(name),
            replaced,
            on_server: false,
        };
        self.push(Req::Parse, Reply::Synthetic(encode::parse_complete()), hook);
    }

    /// A Parse reusing a name: PostgreSQL reports syntax and analysis errors
    /// before the duplicate name, so the server checks the query (under a
    /// name of pgmux's own, closed right after, so the client's unnamed
    /// statement stays as it was) and only its success becomes the 42P05
    /// error.
    async fn duplicate_parse(
        &mut self,
        p: &messages::ParseRef<'_>,
        name: &[u8],
    ) -> Result<(), End> {
        const CHECK: &[u8] = b"pgmux_check";
        self.ensure_server().await?;
        encode::parse_raw(&mut self.sout, CHECK, p.query, p.types);
        encode::close_statement(&mut self.sout, CHECK);
        self.unsynced = true;
        let mut err = BytesMut::new();
        let msg = format!("prepared statement \"{}\" already exists", lossy(name));
        write_error(
            &mut err,
            Severity::Error,
            SqlState::DUPLICATE_PSTATEMENT.0,
            &msg,
        );
        self.push(Req::Parse, Reply::Replace(err.freeze()), Hook::None);
        self.push(Req::Close, Reply::Swallow, Hook::None);
        self.skip_to_sync = true;
        Ok(())
    }

    /// Sends `stmt`'s Parse to the held server, closing a stale copy and
    /// evicting the least recently used statements first.
    fn send_parse(
        &mut self,
        stmt: Arc<Statement>,
        reply: Reply,
        client: Option<Bytes>,
        replaced: Option<Arc<Statement>>,
    ) {
        let max = self.cfg.pgmux.max_prepared_statements;
        let server = self.server.as_mut().expect("a server is held");
        let stale = server.statements.take_stale(&stmt);
        let mut evicted = Vec::new();
        while server.statements.len() >= max {
            match server.statements.pop_lru() {
                Some(old) => evicted.push(old),
                None => break,
            }
        }
        server.statements.add(stmt.clone());
        if stale {
            encode::close_statement(&mut self.sout, &stmt.name);
            self.push(Req::Close, Reply::Swallow, Hook::None);
        }
        for old in evicted {
            self.ctx
                .statements
                .counters
                .evictions
                .fetch_add(1, Ordering::Relaxed);
            encode::close_statement(&mut self.sout, &old.name);
            self.push(Req::Close, Reply::Swallow, Hook::Evicted(old));
        }
        self.sout.extend_from_slice(&stmt.parse);
        self.unsynced = true;
        let hook = Hook::Parse {
            stmt,
            client,
            replaced,
            on_server: true,
        };
        self.push(Req::Parse, reply, hook);
    }

    /// Makes sure the held server has `stmt`, injecting its Parse (whose
    /// ParseComplete the client never sees) in the same batch if not.
    fn ensure_prepared(&mut self, stmt: &Arc<Statement>) {
        let server = self.server.as_mut().expect("a server is held");
        if !server.statements.touch(stmt) {
            self.ctx
                .statements
                .counters
                .reprepares
                .fetch_add(1, Ordering::Relaxed);
            self.send_parse(stmt.clone(), Reply::Swallow, None, None);
        }
    }

    /// Bind or Describe('S') of a named statement: rewritten by `write` to
    /// the registry name, with the Parse injected first when the held server
    /// lacks it. An unknown name is sent as it is, so the server reports the
    /// error exactly as PostgreSQL does, unless it could name one of pgmux's
    /// own statements.
    async fn use_named(
        &mut self,
        req: Req,
        frame: &Frame,
        name: &[u8],
        write: impl FnOnce(&mut BytesMut, &[u8]),
    ) -> Result<(), End> {
        let Some(stmt) = self.stmts.as_ref().and_then(|m| m.get(name)).cloned() else {
            // The server's own unnamed statement may be another client's.
            if name.is_empty() || is_reserved(name) {
                self.no_such_statement(req, name);
                return Ok(());
            }
            return self.forward_needing_server(frame).await;
        };
        self.ensure_server().await?;
        self.ensure_prepared(&stmt);
        self.identity_touched |= stmt.changes_identity;
        write(&mut self.sout, &stmt.name);
        self.unsynced = true;
        self.push(req, Reply::Forward, Hook::Uses(stmt));
        Ok(())
    }

    async fn client_bind(&mut self, frame: &Frame) -> Result<(), End> {
        let body = frame.body();
        let (portal, name, at) = messages::bind(body).ok_or_else(|| malformed("Bind"))?;
        if !self.tracks(name) {
            return self.use_unnamed(Req::Bind, frame).await;
        }
        self.use_named(Req::Bind, frame, name, |out, renamed| {
            messages::write_bind(out, portal, renamed, &body[at..])
        })
        .await
    }

    async fn client_describe(&mut self, frame: &Frame) -> Result<(), End> {
        let (kind, name) = messages::target(frame.body()).ok_or_else(|| malformed("Describe"))?;
        if kind == b'S' && !self.tracks(name) {
            return self.use_unnamed(Req::Describe, frame).await;
        }
        if kind != b'S' {
            return self.forward_needing_server(frame).await;
        }
        self.use_named(Req::Describe, frame, name, |out, renamed| {
            encode::describe_statement(out, renamed)
        })
        .await
    }

    /// Bind or Describe of the unnamed statement when it is not shared: it
    /// goes to the server only if this client put it there during this
    /// hold. Otherwise the server's unnamed statement is someone else's (or
    /// none), and the client gets PostgreSQL's 26000 instead.
    async fn use_unnamed(&mut self, req: Req, frame: &Frame) -> Result<(), End> {
        if self.unnamed_here && self.server.is_some() {
            return self.forward_needing_server(frame).await;
        }
        self.no_such_statement(req, b"");
        Ok(())
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

    /// Answers a Close with a synthetic CloseComplete, in request order.
    fn close_here(&mut self, hook: Hook) {
        let reply = Reply::Synthetic(encode::close_complete());
        self.push(Req::Close, reply, hook);
    }

    async fn client_close(&mut self, frame: &Frame) -> Result<(), End> {
        let (kind, name) = messages::target(frame.body()).ok_or_else(|| malformed("Close"))?;
        if kind == b'S' && self.tracks(name) {
            // The server's copy is shared: only this client's name goes.
            let hook = match self.stmts.as_mut().and_then(|m| m.remove(name)) {
                Some(stmt) => Hook::ClientClosed(frame.raw().slice_ref(name), stmt),
                None => Hook::None,
            };
            self.close_here(hook);
            return Ok(());
        }
        if self.server.is_none() {
            // No server held means no portal and no unnamed statement exist.
            self.close_here(Hook::None);
            return Ok(());
        }
        self.forward(frame, Hook::None);
        Ok(())
    }

    async fn client_query(&mut self, frame: &Frame) -> Result<(), End> {
        let sql = cstr(frame.body())
            .map(|(s, _)| s)
            .ok_or_else(|| malformed("Query"))?;
        // A simple Query destroys the unnamed statement.
        self.unnamed_here = false;
        if self.cfg.pgmux.track_unnamed_statements {
            if let Some(m) = self.stmts.as_mut() {
                m.remove(b"");
            }
        }
        match messages::sql_effect(sql) {
            SqlEffect::None => self.forward_needing_server(frame).await,
            SqlEffect::DropAll => {
                if let Some(m) = self.stmts.as_mut() {
                    m.clear();
                }
                self.ensure_server().await?;
                self.forward(frame, Hook::DropAll);
                Ok(())
            }
            SqlEffect::Deallocate(name) => {
                let owned = self.tx != TxStatus::Failed;
                let stmt = owned
                    .then(|| self.stmts.as_mut().and_then(|m| m.remove(&name)))
                    .flatten();
                let Some(stmt) = stmt else {
                    return self.forward_needing_server(frame).await;
                };
                // Answered here: other clients may use the server's copy.
                let mut reply = BytesMut::new();
                encode::command_complete(&mut reply, "DEALLOCATE");
                encode::ready_for_query(&mut reply, self.tx);
                let hook = Hook::ClientClosed(Bytes::from(name), stmt);
                self.push(Req::Query, Reply::Synthetic(reply.freeze()), hook);
                Ok(())
            }
        }
    }

    /// Answers a request with an ErrorResponse pgmux makes itself, and drops
    /// the client's messages up to its Sync as the server would.
    pub(super) fn local_error(&mut self, req: Req, code: SqlState, msg: &str) {
        let mut b = BytesMut::new();
        write_error(&mut b, Severity::Error, code.0, msg);
        self.push(req, Reply::Synthetic(b.freeze()), Hook::None);
        self.skip_to_sync = true;
    }

    /// A request completed: a statement a server accepted is confirmed.
    pub(super) fn on_done(&mut self, hook: Hook) {
        match hook {
            Hook::Parse {
                stmt,
                on_server: true,
                ..
            } => stmt.confirm(),
            Hook::DropAll => {
                if let Some(s) = self.server.as_mut() {
                    s.statements.clear();
                }
            }
            _ => {}
        }
    }

    /// A request failed (`failed`: it is the one the server rejected) or was
    /// skipped: undo its bookkeeping. A statement whose cached plan went
    /// stale is retired on this server.
    pub(super) fn undo(&mut self, hook: Hook, stale_plan: bool, failed: bool) {
        match hook {
            Hook::None | Hook::DropAll => {}
            Hook::Parse {
                stmt,
                client,
                replaced,
                on_server,
            } => {
                if let (Some(name), Some(m)) = (client, self.stmts.as_mut()) {
                    m.remove_if(&name, &stmt);
                    // PostgreSQL drops the old unnamed statement before it
                    // parses the new one: only a skipped Parse leaves it.
                    if let (Some(old), false) = (replaced, failed) {
                        m.insert(name, old);
                    }
                }
                if let (true, Some(s)) = (on_server, self.server.as_mut()) {
                    s.statements.remove(&stmt);
                }
            }
            Hook::Evicted(stmt) => {
                if let Some(s) = self.server.as_mut() {
                    s.statements.add(stmt);
                }
            }
            Hook::ClientClosed(name, stmt) => {
                if let Some(m) = self.stmts.as_mut() {
                    if m.get(&name).is_none() {
                        m.insert(name, stmt);
                    }
                }
            }
            Hook::Uses(stmt) => {
                if let (true, Some(s)) = (stale_plan, self.server.as_mut()) {
                    s.statements.mark_stale(&stmt);
                }
            }
        }
    }
}
