//! A client that leaves in the middle of a transaction, or with requests in
//! flight (a killed Lambda, a timeout), costs a server connection only if
//! pgmux cannot clean it: requests still running are cancelled, their
//! replies read to the last ReadyForQuery, the transaction rolled back, and
//! the server goes back to the pool. Only if that does not finish within a
//! short bound (or the server is inside COPY) is it closed.

use std::time::Duration;

use tokio::time::Instant;

use super::Session;
use crate::prepared::Hook;
use crate::protocol::expect::{Reply, Req};
use crate::protocol::{encode, TxStatus};

/// How long the clean-up may take before the server is closed instead.
const RECOVER_WITHIN: Duration = Duration::from_secs(2);

impl Session {
    /// Brings the held server back to idle after its client left; `false`
    /// when it could not be, and must be closed.
    pub(super) async fn recover_abandoned(&mut self) -> bool {
        let deadline = Instant::now() + RECOVER_WITHIN;
        if self.expect.in_copy_in() || self.server.is_none() {
            return false;
        }
        if self.unsynced {
            // An extended batch with no Sync yet: end it, so the server
            // answers (and ends an implicit transaction).
            encode::sync(&mut self.sout);
            self.push(Req::Sync, Reply::Forward, Hook::None);
            self.unsynced = false;
        }
        let Some(server) = self.server.as_mut() else {
            return false;
        };
        if !self.sout.is_empty() && server.write_all(&self.sout).await.is_err() {
            return false;
        }
        self.sout.clear();
        if !self.expect.is_empty() {
            tokio::spawn(crate::cancel::cancel_server(server.key));
        }
        if !self.drain_replies(deadline).await {
            return false;
        }
        if self.tx != TxStatus::Idle {
            let Some(server) = self.server.as_mut() else {
                return false;
            };
            let rollback = server.run_internal("ROLLBACK", self.max_msg);
            match tokio::time::timeout_at(deadline, rollback).await {
                Ok(Ok(TxStatus::Idle)) => self.tx = TxStatus::Idle,
                _ => return false,
            }
        }
        self.server.as_ref().is_some_and(|s| s.rbuf.is_empty())
    }

    /// Reads the server's replies to what the client had sent, through the
    /// reply queue (so prepared-statement bookkeeping stays right), until
    /// none is owed. Nothing reaches the client: it is gone.
    async fn drain_replies(&mut self, deadline: Instant) -> bool {
        while !self.expect.is_empty() {
            let Some(server) = self.server.as_mut() else {
                return false;
            };
            let frame =
                match tokio::time::timeout_at(deadline, server.recv_frame(self.max_msg)).await {
                    Ok(Ok(f)) => f,
                    _ => return false,
                };
            let (stale_plan, fatal) = self.note_server_frame(&frame);
            if fatal {
                return false;
            }
            self.settle_reply(&frame, stale_plan);
            self.cout.clear();
        }
        true
    }
}
