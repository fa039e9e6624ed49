//! Server messages on their way to the client: the core reads them, the
//! shell delivers what it queued, counts the queries, runs the end of a
//! transaction, and handles a server that went away.

use tokio::io::AsyncWriteExt;

use super::core::Replies;
use super::{End, Session};
use crate::server::ServerError;
use crate::stats::ErrorReason;

impl Session {
    /// Handles every complete message the server sent, then delivers them
    /// and, once the transaction is over, runs its end.
    pub(super) async fn on_server_data(&mut self) -> Result<(), End> {
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(());
        };
        let mut seen = Replies::default();
        let read = self.core.on_server_bytes(server, &mut seen);
        self.on_replies(seen);
        if let Err(e) = read {
            let lost = ServerError::Protocol(e.to_string());
            return self.on_server_lost(lost).await;
        }
        self.flush_client().await?;
        if seen.server_closing {
            // The server is going away: requests must not be sent to it any more.
            let lost = ServerError::Protocol("server terminated the connection".into());
            return self.on_server_lost(lost).await;
        }
        self.finish_transaction().await
    }

    /// The end of a transaction, in order, once no reply is owed and no
    /// batch is open: startup values given back after a RESET (in any
    /// mode, inside the client's transaction if one is open); then, in
    /// transaction mode with the client idle, per-session state looked
    /// for (a client that has some keeps its server), settings read back,
    /// the server's role checked after a "read-only transaction" error,
    /// identity restored, and the server released.
    pub(super) async fn finish_transaction(&mut self) -> Result<(), End> {
        if self.core.owes_replies() {
            return Ok(());
        }
        if self.core.touched.resets {
            Box::pin(self.reapply_startup()).await?;
        }
        if !self.core.releasable() {
            return Ok(());
        }
        // Code no text shows (a trigger, a view, a column default, a
        // policy) may have changed anything: checked every time.
        // So may a statement prepared on this server that any client may
        // run (statement tracking off).
        // And so may any text of a client whose encoding pgmux cannot lex.
        let sticky = self.server.as_ref().is_some_and(|s| s.sticky_effects.any());
        let always = self.pool.reset_always() || self.core.params.lexed_unreliably();
        if (always || sticky) && self.core.pinned.is_none() {
            self.core.touched |= crate::sql::Effects::CODE;
        }
        if self.verify_due() {
            Box::pin(self.verify_after_code()).await?;
        } else if self.core.pin_check_due() {
            Box::pin(self.check_pin()).await?;
        }
        if self.core.pinned.is_some() {
            return Ok(());
        }
        if self.core.touched.settings {
            Box::pin(self.settle_settings()).await?;
        }
        if self.server.as_ref().is_some_and(|s| s.role_suspect) {
            Box::pin(self.check_role()).await;
        }
        if self.core.identity_needs_restore(self.server.as_deref()) {
            Box::pin(self.restore_identity()).await?;
        }
        self.release();
        Ok(())
    }

    /// The server connection failed under the client: closed, its address
    /// retired, and the client answered for what it owed (or disconnected,
    /// [`super::core::Core::on_server_lost`]).
    pub(super) async fn on_server_lost(&mut self, err: ServerError) -> Result<(), End> {
        // Boxed: rare, and its future would otherwise sit in every session.
        Box::pin(self.server_lost(err)).await
    }

    async fn server_lost(&mut self, err: ServerError) -> Result<(), End> {
        tracing::warn!(pool = %self.pool.name(), error = %err, "server connection lost");
        self.count_error(ErrorReason::ServerLost);
        // A client that kept its server for its session state lost it.
        let was_pinned = self.core.pinned.is_some();
        let addr = self.server.as_ref().map(|s| s.key.addr);
        self.close_server();
        // After a crash every connection to that server is dead, and its
        // backends die a few milliseconds apart: none opened before now is
        // lent again. (When only this one died, the others are reopened:
        // a few logins, never a client's error.)
        if let Some(addr) = addr {
            self.pool.retire_address(addr);
        }
        let ended = self.core.on_server_lost(was_pinned);
        // The server's FATAL is in the client's buffer: it gets it before
        // the close, whatever ends the session.
        if ended.is_err() {
            let _ = self.flush_client().await;
        }
        ended?;
        self.flush_client().await
    }

    /// Counts what a batch of replies completed: queries, and a
    /// transaction when the client is idle again.
    pub(super) fn on_replies(&mut self, seen: Replies) {
        if seen.readies == 0 {
            return;
        }
        let counters = &self.pool.metrics().counters;
        counters.queries.fetch_add(
            u64::from(seen.readies),
            std::sync::atomic::Ordering::Relaxed,
        );
        let Some(q) = self.query_started.take() else {
            return;
        };
        let now = self.now;
        counters.query_us.fetch_add(
            now.saturating_duration_since(q).as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if seen.first_status == Some(crate::protocol::TxStatus::Idle) {
            self.first_tx_grace = None;
            if let Some(t) = self.tx_started.take() {
                let took = now.saturating_duration_since(t);
                self.pool.metrics().observe_transaction(took);
            }
        }
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if self.core.cout.is_empty() {
            return Ok(());
        }
        let res = self.client.write_all(&self.core.cout).await;
        let counters = &self.pool.metrics().counters;
        counters.bytes_out.fetch_add(
            self.core.cout.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.core.cout.clear();
        res.map_err(|_| End::ClientGone)
    }

    /// The server answered "read-only transaction" (25006). A client can
    /// cause that itself (SET TRANSACTION READ ONLY, or its own
    /// default_transaction_read_only), so the server is asked whether it
    /// is in recovery; one that is (a writer pool on a demoted primary or
    /// a reader) is closed with every other connection to its address, and
    /// the pool looks for the new primary.
    async fn check_role(&mut self) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        server.role_suspect = false;
        let attrs = self.pool.target().target_session_attrs;
        if !attrs.wants_writer() {
            return;
        }
        match crate::server::ask_role(server, self.core.max_msg).await {
            Ok(role) if crate::server::still_fits(attrs, role.standby) => {}
            Ok(_) => {
                if let Some((s, _)) = self.let_go() {
                    s.demoted();
                }
            }
            Err(_) => self.close_server(),
        }
    }
}
