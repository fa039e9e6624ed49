//! Server messages through the core: each matched to the request it
//! answers through the reply queue, the transaction status and reported
//! parameters followed, and the answers a client is owed when its server
//! is lost.

use bytes::Buf;

use super::Core;
use crate::config::PoolMode;
use crate::prepared::Undo;
use crate::protocol::encode::{write_error, Severity};
use crate::protocol::expect::Outcome;
use crate::protocol::frame::{run_of, FrameError};
use crate::protocol::{be, encode, ErrorFields, Frame, SqlState, TxStatus};
use crate::server::ServerConn;
use crate::session::{fatal, End};

/// What a batch of server messages told the session, beyond the bytes
/// queued for the client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) struct Replies {
    /// ReadyForQuery messages seen (queries completed).
    pub readies: u32,
    /// The transaction status the first of them reported.
    pub first_status: Option<TxStatus>,
    /// The server sent a FATAL or PANIC error: it is closing.
    pub server_closing: bool,
}

/// What an ErrorResponse from the server means for the session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) struct ErrorClass {
    /// "cached plan must not change result type": the statements used are
    /// stale on that server and must be prepared again.
    pub stale_plan: bool,
    /// FATAL or PANIC: the server is closing.
    pub fatal: bool,
    /// 25006 "read-only transaction": the server may have become a standby.
    pub read_only: bool,
}

impl ErrorClass {
    /// Reads a server ErrorResponse.
    pub(in crate::session) fn of(frame: &Frame) -> Self {
        let Some(f) = ErrorFields::parse(frame.body()) else {
            return Self::default();
        };
        tracing::debug!(code = %String::from_utf8_lossy(f.code), message = %f.message_lossy(), "server error");
        Self {
            stale_plan: f.code == b"0A000"
                && f.message
                    .starts_with(b"cached plan must not change result type"),
            fatal: matches!(f.severity, b"FATAL" | b"PANIC"),
            read_only: f.code == b"25006",
        }
    }
}

impl Core {
    /// Handles every complete message in the server's read buffer: the
    /// replies are queued for the client (or dropped, as the reply queue
    /// says) and the session's bookkeeping follows them; `seen` counts what
    /// they completed, also when an unreadable frame follows (an error: the
    /// server is to be treated as lost).
    pub(in crate::session) fn on_server_bytes(
        &mut self,
        server: &mut ServerConn,
        seen: &mut Replies,
    ) -> Result<(), FrameError> {
        loop {
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
            let Some(frame) = server.next_frame(self.max_msg)? else {
                return Ok(());
            };
            let error = self.on_server_frame(&frame, server, seen);
            seen.server_closing |= error.fatal;
            self.server_said_fatal |= error.fatal;
        }
    }

    /// One server message: what it tells the session (parameter changes,
    /// the transaction status, an error's meaning), then the request it
    /// answers settled through the reply queue.
    pub(in crate::session) fn on_server_frame(
        &mut self,
        frame: &Frame,
        server: &mut ServerConn,
        seen: &mut Replies,
    ) -> ErrorClass {
        let mut error = ErrorClass::default();
        match frame.tag() {
            be::PARAMETER_STATUS => self.on_parameter_status(frame, server),
            be::READY_FOR_QUERY => {
                if let Some(s) = TxStatus::from_ready(frame.body()) {
                    self.tx = s;
                }
                seen.readies += 1;
                seen.first_status.get_or_insert(self.tx);
            }
            be::ERROR_RESPONSE => {
                error = ErrorClass::of(frame);
                server.role_suspect |= error.read_only;
            }
            _ => {}
        }
        match self.expect.on_server(frame, &mut self.cout) {
            Outcome::Pending => {}
            Outcome::Done(hook) => self.on_done(hook, Some(server)),
            Outcome::Failed(hooks) => {
                // The first is the request the server rejected, the rest
                // were skipped.
                for (i, h) in hooks.into_iter().enumerate().rev() {
                    let how = match (error.stale_plan, i == 0) {
                        (true, rejected) => Undo::StalePlan { rejected },
                        (false, true) => Undo::Rejected,
                        (false, false) => Undo::Skipped,
                    };
                    self.undo(h, Some(&mut *server), how);
                }
            }
        }
        error
    }

    /// A ParameterStatus: the client's value follows the server's report,
    /// as for its own SETs.
    pub(in crate::session) fn on_parameter_status(
        &mut self,
        frame: &Frame,
        server: &mut ServerConn,
    ) {
        if frame.tag() != be::PARAMETER_STATUS {
            return;
        }
        if let Some((k, v)) = server.note_parameter_status(frame.body()) {
            self.params.on_parameter_status(&k, &v);
            server.params_fingerprint = self.params.fingerprint();
        }
    }

    /// The server connection failed under the client (the shell has closed
    /// it). Requests in flight get an error and a ReadyForQuery each so the
    /// client's protocol state stays sound; a client that loses session
    /// state with it (inside session mode, or pinned) or has no request
    /// to answer is disconnected instead.
    pub(in crate::session) fn on_server_lost(&mut self, was_pinned: bool) -> Result<(), End> {
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
            self.undo(h, None, Undo::Skipped);
        }
        if (self.mode == PoolMode::Session || was_pinned) && self.server_said_fatal {
            // The client has the server's FATAL (every error is
            // forwarded): it ends here, as on a direct connection.
            return Err(End::ServerEnded);
        }
        if self.mode == PoolMode::Session || was_pinned || (readies == 0 && !tail) {
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
        Ok(())
    }
}
