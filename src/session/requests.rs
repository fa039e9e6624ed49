//! Client messages on their way to the server: framing, the core's plan
//! for each, a server taken when one is needed, and the write.

use super::core::{Plan, Policy};
use super::{fatal, End, Session};
use crate::config::SessionState;
use crate::protocol::frame::{take_frame, whole_len};
use crate::protocol::frontend::Message;
use crate::protocol::{Frame, SqlState};
use crate::stats::ErrorReason;

impl Session {
    /// Handles what the client sent, and writes what it caused.
    pub(super) async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
            self.waiting = false;
            self.handle_client_frames().await?;
            self.flush_server().await?;
            self.flush_client().await?;
            // A server lost while writing answered what was owed: the
            // message that waited for it waits no more.
            if !(self.waiting && self.server.is_none()) {
                return Ok(());
            }
        }
    }

    /// Handles the client's whole messages in order, until one has to
    /// wait for the server's replies (it stays unread, [`Core::waits`]).
    async fn handle_client_frames(&mut self) -> Result<(), End> {
        loop {
            let total = match whole_len(&mut self.cbuf, self.core.max_msg) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.count_error(ErrorReason::ProtocolError);
                    return Err(fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("invalid frontend message: {e}"),
                    ));
                }
            };
            if self.core.waits(&self.cbuf[..total]) {
                self.waiting = true;
                return Ok(());
            }
            let frame = take_frame(&mut self.cbuf, total);
            if self.on_client_frame(frame).await? {
                return self.on_terminate().await;
            }
        }
    }

    /// One client message, carried through the core: planned once, a
    /// server taken if it needs one, routed once. `true` for a Terminate.
    async fn on_client_frame(&mut self, frame: Frame) -> Result<bool, End> {
        let msg = Message::read(&frame);
        let plan = {
            let pool = &self.pool;
            let refuses_state = || pool.settings().session_state == SessionState::Error;
            let policy = Policy {
                registry: &self.ctx.statements,
                refuses_state: &refuses_state,
            };
            self.core.plan(&msg, self.server.is_some(), &policy)?
        };
        let effects = match plan {
            Plan::Done => return Ok(false),
            Plan::Terminate => return Ok(true),
            Plan::Carry(effects) => effects,
            Plan::NeedServer(effects) => {
                self.ensure_server().await?;
                effects
            }
        };
        // Once more only if a statement the plan found accepted by some
        // server was freed in between (by another client's session): the
        // core changed nothing then.
        while !self.core.carry(
            &msg,
            &frame,
            effects,
            self.server.as_deref_mut(),
            &self.ctx.statements,
        )? {
            self.ensure_server().await?;
        }
        Ok(false)
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
        if self.core.terminate_now() {
            return Err(End::ClientGone);
        }
        self.core.terminated = true;
        self.cbuf.clear();
        self.flush_client().await
    }

    pub(super) async fn flush_server(&mut self) -> Result<(), End> {
        if self.core.sout.is_empty() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            self.core.sout.clear();
            return Ok(());
        };
        let res = server.write_all(&self.core.sout).await;
        let counters = &self.pool.metrics().counters;
        counters.bytes_in.fetch_add(
            self.core.sout.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.query_started.is_none() {
            self.query_started = Some(self.now);
            self.tx_started.get_or_insert(self.now);
        }
        self.core.sout.clear();
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.on_server_lost(e.into()).await,
        }
    }
}
