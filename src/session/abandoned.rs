//! A client that leaves in the middle of a transaction, or with requests in
//! flight (a killed Lambda, a timeout, a Terminate in the middle of a COPY
//! or of a batch without its Sync), costs a server connection only if
//! pgmux cannot clean it: a COPY FROM STDIN is failed, a batch is ended so
//! that its implicit transaction aborts (as when a direct connection
//! closes there), requests still running are cancelled, their replies read
//! to the last ReadyForQuery, the transaction rolled back, and the server
//! goes back to the pool. If that does not finish within a short bound the
//! server is closed, which ends its backend and rolls back as well.

use std::time::Duration;

use tokio::time::Instant;

use super::core::Replies;
use super::Session;
use crate::protocol::TxStatus;

/// How long the clean-up may take before the server is closed instead.
const RECOVER_WITHIN: Duration = Duration::from_secs(2);

impl Session {
    /// Brings the held server back to idle after its client left; `false`
    /// when it could not be, and must be closed.
    pub(super) async fn recover_abandoned(&mut self) -> bool {
        let deadline = Instant::now() + RECOVER_WITHIN;
        let Some(server) = self.server.as_deref_mut() else {
            return false;
        };
        // Only what is running needs a cancel: not a COPY waiting for
        // data, nor what pgmux sends below.
        let running = self.core.abandon_requests(server);
        if !self.core.sout.is_empty() && server.write_all(&self.core.sout).await.is_err() {
            return false;
        }
        self.core.sout.clear();
        if running {
            // Awaited, not spawned: PostgreSQL has signalled the backend
            // once it closes the cancel connection, so the cancel cannot
            // land on the next client's query after this server goes back
            // (an idle backend ignores it).
            // Not known to have arrived in time: it may still, so the
            // server is closed.
            let key = server.key;
            let sent = tokio::time::timeout_at(deadline, crate::cancel::cancel_server(key)).await;
            if !matches!(sent, Ok(true)) {
                return false;
            }
        }
        // Whatever was owed is in; a server still waiting for a Sync (or
        // in a COPY) is not idle, and is closed rather than lent.
        if !self.drain_replies(deadline).await
            || self.core.batch_open()
            || self.core.expect.in_copy_in()
        {
            return false;
        }
        if self.core.tx != TxStatus::Idle {
            let Some(server) = self.server.as_mut() else {
                return false;
            };
            let rollback = server.run_internal("ROLLBACK", self.core.max_msg);
            match tokio::time::timeout_at(deadline, rollback).await {
                Ok(Ok(TxStatus::Idle)) => self.core.tx = TxStatus::Idle,
                _ => return false,
            }
        }
        self.server.as_ref().is_some_and(|s| s.rbuf.is_empty())
    }

    /// Reads the server's replies to what the client had sent, through the
    /// reply queue (so prepared-statement bookkeeping stays right), until
    /// none is owed. Nothing reaches the client: it is gone.
    async fn drain_replies(&mut self, deadline: Instant) -> bool {
        while !self.core.expect.is_empty() {
            let Some(server) = self.server.as_deref_mut() else {
                return false;
            };
            let max = self.core.max_msg;
            let frame = match tokio::time::timeout_at(deadline, server.recv_frame(max)).await {
                Ok(Ok(f)) => f,
                _ => return false,
            };
            let mut seen = Replies::default();
            let error = self.core.on_server_frame(&frame, server, &mut seen);
            self.on_replies(seen);
            if error.fatal {
                return false;
            }
            self.core.cout.clear();
            // A COPY the client started just before it left.
            if self.core.fail_abandoned_copy() {
                let Some(server) = self.server.as_deref_mut() else {
                    return false;
                };
                if server.write_all(&self.core.sout).await.is_err() {
                    return false;
                }
                self.core.sout.clear();
            }
        }
        true
    }
}
