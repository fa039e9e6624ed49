//! Server messages on their way to the client: the reply queue, transaction
//! status, and what happens when the server goes away.

use bytes::Buf;
use tokio::io::AsyncWriteExt;

use super::{fatal, End, Session};
use crate::config::PoolMode;
use crate::protocol::error::{write_error, Severity};
use crate::protocol::expect::Outcome;
use crate::protocol::frame::run_of;
use crate::protocol::{be, encode, ErrorFields, Frame, SqlState, TxStatus};
use crate::server::ServerError;
use crate::stats::ErrorReason;

impl Session {
    /// Handles every complete message the server sent, then delivers them
    /// and, in transaction mode, gives the server back once the client is
    /// idle.
    pub(super) async fn on_server_data(&mut self) -> Result<(), End> {
        let mut fatal_from_server = false;
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            // The rows of a result set go through in one copy, unsplit: a
            // DataRow completes no request and changes nothing in the
            // session (a hundred-row reply cost 330 instructions per row
            // as frames).
            let rows = run_of(&server.rbuf, be::DATA_ROW, self.max_msg);
            if rows > 0 {
                if self.expect.forwards_rows() {
                    self.cout.extend_from_slice(&server.rbuf[..rows]);
                }
                server.rbuf.advance(rows);
                continue;
            }
            let frame = match server.next_frame(self.max_msg) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let lost = ServerError::Protocol(e.to_string());
                    return self.on_server_lost(lost).await;
                }
            };
            let (stale_plan, fatal) = self.note_server_frame(&frame);
            fatal_from_server |= fatal;
            self.settle_reply(&frame, stale_plan);
        }
        self.flush_client().await?;
        if fatal_from_server {
            // The server is going away: requests must not be sent to it any more.
            let lost = ServerError::Protocol("server terminated the connection".into());
            return self.on_server_lost(lost).await;
        }
        if self.touched.resets && self.expect.is_empty() && !self.batch_open() {
            Box::pin(self.reapply_startup()).await?;
        }
        if self.mode == PoolMode::Transaction && self.is_idle() {
            if self.pin_check_due() {
                Box::pin(self.check_pin()).await?;
            }
            if self.pinned.is_some() {
                return Ok(());
            }
            if self.touched.settings {
                Box::pin(self.settle_settings()).await?;
            }
            if self.server.as_ref().is_some_and(|s| s.role_suspect) {
                Box::pin(self.check_role()).await;
            }
            if self.identity_needs_restore() {
                Box::pin(self.restore_identity()).await?;
            }
            self.release();
        }
        Ok(())
    }

    /// What a server message tells the session: parameter changes, the
    /// transaction status, and for an error (is the plan stale, is the
    /// server closing).
    pub(super) fn note_server_frame(&mut self, frame: &Frame) -> (bool, bool) {
        let Some(server) = self.server.as_mut() else {
            return (false, false);
        };
        match frame.tag() {
            be::PARAMETER_STATUS => {
                if let Some((k, v)) = server.note_parameter_status(frame.body()) {
                    self.params.on_parameter_status(&k, &v);
                    server.params_fingerprint = self.params.fingerprint();
                }
            }
            be::READY_FOR_QUERY => {
                if let Some(s) = TxStatus::from_ready(frame.body()) {
                    self.tx = s;
                }
                self.on_ready();
            }
            be::ERROR_RESPONSE => {
                let (stale, fatal, read_only) = classify_error(frame);
                server.role_suspect |= read_only;
                return (stale, fatal);
            }
            _ => {}
        }
        (false, false)
    }

    /// Matches a server message to the request it answers, passing it on
    /// (or not) and settling the request's bookkeeping.
    pub(super) fn settle_reply(&mut self, frame: &Frame, stale_plan: bool) {
        match self.expect.on_server(frame, &mut self.cout) {
            Outcome::Pending => {}
            Outcome::Done(hook) => self.on_done(hook),
            Outcome::Failed(hooks) => {
                // The first is the request the server rejected, the rest
                // were skipped.
                for (i, h) in hooks.into_iter().enumerate().rev() {
                    self.undo(h, stale_plan, i == 0);
                }
            }
        }
    }

    /// The server connection failed under the client. Requests in flight get
    /// an error and a ReadyForQuery each so the client's protocol state stays
    /// sound; a client inside a transaction (or in session mode) loses its
    /// session state, so it is disconnected.
    pub(super) async fn on_server_lost(&mut self, err: ServerError) -> Result<(), End> {
        // Boxed: rare, and its future would otherwise sit in every session.
        Box::pin(self.server_lost(err)).await
    }

    pub(super) async fn server_lost(&mut self, err: ServerError) -> Result<(), End> {
        tracing::warn!(pool = %self.pool.name(), error = %err, "server connection lost");
        self.count_error(ErrorReason::ServerLost);
        // A client that kept its server for its session state lost it.
        let pinned = self.pinned.is_some();
        let addr = self.server.as_ref().map(|s| s.key.addr);
        self.close_server();
        // After a crash every connection to that server is dead, and its
        // backends die a few milliseconds apart: none opened before now is
        // lent again. (When only this one died, the others are reopened:
        // a few logins, never a client's error.)
        if let Some(addr) = addr {
            self.pool.retire_address(addr);
        }
        let in_tx = self.tx != TxStatus::Idle;
        let error_sent = self.expect.error_sent();
        let (readies, tail, hooks) = self.expect.abandon();
        tracing::debug!(
            readies,
            tail,
            error_sent,
            in_tx,
            "answering requests the lost server owed"
        );
        for h in hooks.into_iter().rev() {
            self.undo(h, false, false);
        }
        if self.mode == PoolMode::Session || pinned || (readies == 0 && !tail) {
            return Err(fatal(
                SqlState::CONNECTION_FAILURE,
                "server connection lost",
            ));
        }
        let msg = if in_tx {
            "server connection lost; the transaction was rolled back"
        } else {
            "server connection lost"
        };
        let mut owe_error = !error_sent;
        let code = SqlState::CONNECTION_FAILURE.0;
        for _ in 0..readies {
            if owe_error {
                write_error(&mut self.cout, Severity::Error, code, msg);
            }
            encode::ready_for_query(&mut self.cout, TxStatus::Idle);
            owe_error = true;
        }
        if tail {
            if owe_error {
                write_error(&mut self.cout, Severity::Error, code, msg);
            }
            self.skip_to_sync = true;
        }
        self.tx = TxStatus::Idle;
        self.unsynced = false;
        self.flush_client().await
    }

    /// Counts a ReadyForQuery from the server: a query, and a transaction
    /// when the client is idle again.
    pub(super) fn on_ready(&mut self) {
        let counters = &self.pool.metrics().counters;
        counters
            .queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(q) = self.query_started.take() else {
            return;
        };
        let now = self.now;
        counters.query_us.fetch_add(
            now.saturating_duration_since(q).as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.tx == TxStatus::Idle {
            self.first_tx_grace = None;
            if let Some(t) = self.tx_started.take() {
                let took = now.saturating_duration_since(t);
                self.pool.metrics().observe_transaction(took);
            }
        }
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let res = self.client.write_all(&self.cout).await;
        let counters = &self.pool.metrics().counters;
        counters
            .bytes_out
            .fetch_add(self.cout.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.cout.clear();
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
        match crate::server::ask_role(server, self.max_msg).await {
            Ok(role) if crate::server::still_fits(attrs, role.standby) => {}
            Ok(_) => {
                if let Some(s) = self.let_go() {
                    s.demoted();
                }
            }
            Err(_) => self.close_server(),
        }
    }
}

/// Reads a server ErrorResponse: (is it "cached plan must not change result
/// type", i.e. the statement must be prepared again after a schema change;
/// is it FATAL, i.e. the server is closing; is it 25006 "read-only
/// transaction").
pub(super) fn classify_error(frame: &Frame) -> (bool, bool, bool) {
    let Some(f) = ErrorFields::parse(frame.body()) else {
        return (false, false, false);
    };
    tracing::debug!(code = %String::from_utf8_lossy(f.code), message = %f.message_lossy(), "server error");
    let stale = f.code == b"0A000"
        && f.message
            .starts_with(b"cached plan must not change result type");
    let fatal = matches!(f.severity, b"FATAL" | b"PANIC");
    (stale, fatal, f.code == b"25006")
}
