//! Client messages on their way to the server: framing, the
//! prepared-statement tracker, forwarding, and the replies each request owes.

use super::{effects, fatal, End, Session};
use crate::config::PoolMode;
use crate::prepared::{Flags, Hook, Outbox, Routed};
use crate::protocol::expect::{Reply, Req};
use crate::protocol::frame::split_frame;
use crate::protocol::{encode, fe, Frame, SqlState};
use crate::sql::Effects;
use crate::stats::ErrorReason;

impl Session {
    pub(super) async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
            let frame = match split_frame(&mut self.cbuf, self.max_msg) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.count_error(ErrorReason::ProtocolError);
                    return Err(fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("invalid frontend message: {e}"),
                    ));
                }
            };
            match frame.tag() {
                fe::TERMINATE => return self.on_terminate().await,
                fe::PASSWORD => {
                    let msg = "unexpected password message after login";
                    return Err(fatal(SqlState::PROTOCOL_VIOLATION, msg));
                }
                _ => self.on_client_frame(frame).await?,
            }
        }
        self.flush_server().await?;
        self.flush_client().await
    }

    /// Terminate: the session ends once the replies still owed are
    /// delivered, as PostgreSQL finishes what came before a Terminate.
    ///
    /// A Terminate inside COPY FROM STDIN, or behind a batch with no Sync,
    /// ends the session at once: those replies would never come (the
    /// server waits for data or a Sync), and a direct connection closed
    /// there rolls back. The session's end cleans the server.
    async fn on_terminate(&mut self) -> Result<(), End> {
        self.flush_server().await?;
        if self.expect.is_empty() || self.batch_open() || self.expect.in_copy_in() {
            return Err(End::ClientGone);
        }
        self.terminated = true;
        self.cbuf.clear();
        self.flush_client().await
    }

    pub(super) async fn on_client_frame(&mut self, frame: Frame) -> Result<(), End> {
        let tag = frame.tag();
        if self.skip_to_sync && tag != fe::SYNC {
            return Ok(());
        }
        self.skip_to_sync = false;
        let effects = effects::message_effects(&frame);
        if effects.pins && self.refuses_session_state() && !self.maps_sql_prepare(&frame) {
            self.refuse_session_state(&frame);
            return Ok(());
        }
        // Names come from the text even when the tracker answers the
        // Parse itself, and from the Binds of a client that prepared
        // `set_config($n, ...)`.
        if self.mode == PoolMode::Transaction
            && (effects.settings || (tag == fe::BIND && self.scan_binds))
        {
            self.watch_setting_names(&frame, effects);
        }
        // What the tracker knows of a statement beats what its text says
        // (an EXECUTE of a known statement, a mapped PREPARE), except that
        // a SQL EXECUTE passes `set_config($n, ...)` its name as an
        // expression pgmux does not evaluate.
        let effects = match self.route_client_frame(&frame).await? {
            Some(mut known) => {
                if tag == fe::QUERY && known.param_settings {
                    known.unnamed_settings = true;
                }
                known
            }
            None => effects,
        };
        if effects.any() {
            self.note_effects(&frame, effects);
        }
        Ok(())
    }

    /// Routes a client message; returns what it may change in the session
    /// when the prepared-statement tracker knows it.
    pub(super) async fn route_client_frame(
        &mut self,
        frame: &Frame,
    ) -> Result<Option<Effects>, End> {
        let tag = frame.tag();
        if let Some(known) = self.route_tracked(frame).await? {
            return Ok(known);
        }
        match tag {
            // With no server held nothing is outstanding: answer it here.
            fe::SYNC if self.server.is_none() => {
                encode::ready_for_query(&mut self.cout, self.tx);
            }
            fe::FLUSH if self.server.is_none() => {}
            _ => self.forward_needing_server(frame).await?,
        }
        Ok(None)
    }

    /// Lets the prepared-statement tracker route a message, taking a server
    /// when it needs one; `None` when the message is not a tracked one,
    /// else the effects the tracker knows (if it does).
    pub(super) async fn route_tracked(
        &mut self,
        frame: &Frame,
    ) -> Result<Option<Option<Effects>>, End> {
        loop {
            let Some(tracker) = self.stmts.as_mut() else {
                return Ok(None);
            };
            let mut out = Outbox::new(&mut self.sout, &mut self.routed);
            let server = self.server.as_mut().map(|s| &mut s.statements);
            let routed = tracker.route(frame, server, &self.ctx.statements, self.tx, &mut out);
            let flags = out.flags;
            match routed {
                Err(e) => return Err(fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())),
                Ok(Routed::Untracked) => return Ok(None),
                Ok(Routed::NeedServer) => self.ensure_server().await?,
                Ok(Routed::Done) => {
                    self.carry_out(frame, flags);
                    return Ok(Some(flags.effects));
                }
            }
        }
    }

    /// Carries out what the tracker routed: the client's own message if it
    /// goes on, the replies owed in request order, and the flags.
    fn carry_out(&mut self, frame: &Frame, flags: Flags) {
        if flags.forward {
            self.sout.extend_from_slice(frame.raw());
        }
        let mut routed = std::mem::take(&mut self.routed);
        for (req, reply, hook) in routed.drain(..) {
            if !matches!(reply, Reply::Synthetic(_)) {
                self.note_sent(req);
            }
            self.push(req, reply, hook);
        }
        self.routed = routed;
        self.skip_to_sync |= flags.skip_to_sync;
    }

    /// A request went to the server: an extended-protocol message owes a
    /// Sync until one follows.
    fn note_sent(&mut self, req: Req) {
        match req {
            Req::Sync => self.unsynced = false,
            Req::Query | Req::FunctionCall => {}
            _ => self.unsynced = true,
        }
    }

    /// A request completed: the tracker learns what the server now holds.
    pub(super) fn on_done(&mut self, hook: Hook) {
        if let Some(t) = self.stmts.as_mut() {
            t.on_done(hook, self.server.as_mut().map(|s| &mut s.statements));
        }
    }

    /// A request failed or was skipped: the tracker undoes what it recorded.
    pub(super) fn undo(&mut self, hook: Hook, stale_plan: bool, failed: bool) {
        if let Some(t) = self.stmts.as_mut() {
            let server = self.server.as_mut().map(|s| &mut s.statements);
            t.undo(hook, server, stale_plan, failed);
        }
    }

    /// Forwards a message, taking a server first if none is held.
    pub(super) async fn forward_needing_server(&mut self, frame: &Frame) -> Result<(), End> {
        self.ensure_server().await?;
        self.forward(frame, Hook::None);
        Ok(())
    }

    /// Queues a client message for the server and notes the reply it owes.
    pub(super) fn forward(&mut self, frame: &Frame, hook: Hook) {
        // (Any other message sent during COPY FROM STDIN fails it, and
        // PostgreSQL then ends the session: its reply is owed until the
        // server goes, as pgmux cannot tell whether the server read it
        // before or after the COPY failed on its own.)
        if matches!(frame.tag(), fe::COPY_DONE | fe::COPY_FAIL) {
            self.expect.end_copy_in();
        }
        if let Some(req) = Req::from_tag(frame.tag()) {
            self.note_sent(req);
            self.push(req, Reply::Forward, hook);
        }
        self.sout.extend_from_slice(frame.raw());
    }

    /// Notes an owed reply; undoes the hook at once if the server will skip it.
    pub(super) fn push(&mut self, req: Req, reply: Reply, hook: Hook) {
        if let Some(skipped) = self.expect.push(req, reply, hook, &mut self.cout) {
            self.undo(skipped, false, false);
        }
    }

    pub(super) async fn flush_server(&mut self) -> Result<(), End> {
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        let res = server.write_all(&self.sout).await;
        let counters = &self.pool.metrics().counters;
        counters
            .bytes_in
            .fetch_add(self.sout.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if self.query_started.is_none() {
            self.query_started = Some(self.now);
            self.tx_started.get_or_insert(self.now);
        }
        self.sout.clear();
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.on_server_lost(e.into()).await,
        }
    }
}
