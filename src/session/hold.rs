//! Holding a server: taking one from the pool (and making its parameters
//! and identity the client's), giving it back, and the session's end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::cancel::InFlight;

use super::{fatal, pool_error_code, pool_error_reason, server_error_end, End, Session};
use crate::config::PoolMode;
use crate::context::ClientState;
use crate::pool::Checkout;
use crate::protocol::encode::{self, write_error, Severity};
use crate::stats::ErrorReason;

impl Session {
    /// Takes a server from the pool, unless one is held, and makes its
    /// parameters the client's.
    pub(super) async fn ensure_server(&mut self) -> Result<(), End> {
        if self.server.is_some() {
            return Ok(());
        }
        // Boxed: waiting for a pool and syncing parameters are the deepest
        // futures of a session; inline, every idle client would carry their
        // space for nothing.
        match self.try_hold() {
            Some(true) => return Ok(()),
            Some(false) => Box::pin(self.sync_held()).await,
            None => Box::pin(self.acquire()).await,
        }?;
        // The request goes out now, not when the session woke.
        self.now = Instant::now();
        Ok(())
    }

    /// The common case under load: an idle server taken with no waiting and
    /// no future. `Some(in_sync)` when one was taken: `false` means its
    /// parameters still need syncing. (Not inline in `ensure_server`: a
    /// server held in a local there would add its size to every session.)
    pub(super) fn try_hold(&mut self) -> Option<bool> {
        let server = self.pool.try_get_at(self.now)?;
        self.pool.metrics().observe_wait(Duration::ZERO);
        let in_sync = self.core.params.in_sync(&server) && self.core.identity.is_none();
        self.hold(server);
        Some(in_sync)
    }

    pub(super) async fn acquire(&mut self) -> Result<(), End> {
        self.listed.info.set_state(ClientState::Waiting);
        let asked = Instant::now();
        let got = self.pool.get().await;
        self.pool.metrics().observe_wait(asked.elapsed());
        let server = match got {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool = %self.pool.name(), error = %e, "no server for client");
                self.count_error(pool_error_reason(&e));
                return Err(fatal(pool_error_code(&e), e.to_string()));
            }
        };
        self.hold(server);
        self.sync_held().await
    }

    /// Makes the held server's parameters and identity the client's; a
    /// server that fails at it is closed.
    pub(super) async fn sync_held(&mut self) -> Result<(), End> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = self.core.params.sync(server, self.core.max_msg).await {
            self.close_server();
            return Err(server_error_end(e));
        }
        self.apply_identity().await
    }

    /// Session mode: takes the client's server now, and ends the welcome
    /// with a cancel key that carries the server's process id (so
    /// `pg_backend_pid()`, `pg_stat_activity`, `pg_terminate_backend` and
    /// the server's log agree with what the client was told) and pgmux's
    /// secret, which still routes its cancels here.
    pub(super) async fn welcome_with_server(&mut self) -> Result<(), End> {
        self.ensure_server().await?;
        if let Some(pid) = self.server.as_ref().map(|s| s.key.pid) {
            self.cancel.adopt_pid(pid);
            self.listed
                .info
                .set_cancel_key((pid, self.cancel.slot.secret));
        }
        let slot = &self.cancel.slot;
        encode::backend_key_data(&mut self.core.cout, slot.pid, slot.secret);
        encode::ready_for_query(&mut self.core.cout, crate::protocol::TxStatus::Idle);
        self.flush_client().await
    }

    /// Closes the held server (its state is unknown) and stops routing
    /// cancels to it.
    pub(super) fn close_server(&mut self) {
        self.core.forget_server();
        self.set_pin(None);
        if let Some((s, _)) = self.let_go() {
            s.discard();
        }
    }

    /// Stops holding the server: cancels no longer go to it, and the
    /// client shows as idle. The caller says how the server ends; the
    /// cancels already on their way to it come along.
    pub(super) fn let_go(&mut self) -> Option<(Checkout, Option<Arc<InFlight>>)> {
        let flight = self.cancel.slot.set_target(None);
        self.listed.info.set_state(ClientState::Idle);
        self.server.take().map(|s| (s, flight))
    }

    /// Holds a server: the client's requests go there now.
    pub(super) fn hold(&mut self, server: Checkout) {
        self.core.on_new_server();
        self.listed.info.set_state(ClientState::Active);
        self.cancel.slot.set_target(Some(server.key));
        self.server = Some(server);
    }

    pub(super) fn release(&mut self) {
        if self.server.is_some() {
            if let Some((s, flight)) = self.let_go() {
                give_back(s, flight, self.now);
            }
        }
    }

    /// Counts an error this client got, under its database and user.
    pub(super) fn count_error(&self, reason: ErrorReason) {
        let info = &self.listed.info;
        self.ctx.metrics.error(reason, &info.database, &info.user);
    }

    /// Ends the session: tells the client why if it is still there, and
    /// returns the server only if it is clean.
    pub(super) async fn finish(mut self, end: End) {
        if let End::Fatal(code, msg) = &end {
            let mut out = BytesMut::new();
            write_error(&mut out, Severity::Fatal, code, msg);
            let _ = self.client.write_all(&out).await;
        }
        let idle = self.core.is_idle();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let flight = self.cancel.slot.set_target(None);
        let clean = idle && server.rbuf.is_empty();
        if !clean {
            // Left mid-transaction or with requests in flight.
            let recovered = Box::pin(self.recover_abandoned()).await;
            self.ctx.metrics.abandoned(recovered);
            tracing::debug!(pool = %self.pool.name(), recovered, "server left mid-transaction by its client");
            if !recovered {
                self.close_server();
                return;
            }
        }
        let check_due = self.core.pin_check_due();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        // Session mode, and a client that kept its server for state that
        // could not move: reset before anyone else gets it (DISCARD ALL
        // also drops temporary tables, advisory locks, LISTEN, cursors).
        // A client that left before its transaction's end was checked
        // (a Terminate behind a batch) may have made such state too.
        let reset = match (self.core.mode, self.core.pinned) {
            (PoolMode::Session, _) => Some(self.pool.settings().reset_query.clone()),
            (_, Some(_)) => Some("DISCARD ALL".to_owned()),
            _ if check_due => Some("DISCARD ALL".to_owned()),
            _ => None,
        };
        if let Some(reset) = reset {
            if server.reset(&reset, self.core.max_msg).await.is_err() {
                self.close_server();
                return;
            }
            self.core.touched.settings = false;
        }
        self.set_pin(None);
        // The client is gone: only whether the server comes back clean
        // matters. Its settings are recorded so the next client's sync
        // undoes them.
        if self.core.touched.settings && self.core.mode == PoolMode::Transaction {
            let _ = self.settle_settings().await;
        }
        if self.core.identity_needs_restore(self.server.as_deref()) {
            let _ = self.restore_identity().await;
        }
        if let Some((s, _)) = self.let_go() {
            give_back(s, flight, self.now);
        }
    }
}

/// Returns a server to its pool: at once, or, with a cancel on its way
/// to it, once the cancel arrived (closed if it may still arrive), so no
/// cancel of this client's reaches the next client's query.
fn give_back(server: Checkout, flight: Option<Arc<InFlight>>, now: Instant) {
    match flight {
        None => server.release_at(now),
        Some(flight) => {
            tokio::spawn(async move {
                if flight.settled().await {
                    server.release();
                } else {
                    server.discard();
                }
            });
        }
    }
}
