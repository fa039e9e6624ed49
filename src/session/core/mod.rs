//! A session's protocol state, without I/O: what the client asked, what the
//! server owes, the transaction, and what this transaction may have left on
//! its server.
//!
//! The core takes the client's frames ([`Core::plan`], [`Core::carry`]) and
//! the server's buffered bytes ([`Core::on_server_bytes`]) and answers with
//! bytes to send (its two output buffers) and what the session must do
//! next: take a server ([`Plan::NeedServer`]), end ([`super::End`]), run
//! the end-of-transaction steps ([`Core::owes_replies`], [`Core::releasable`],
//! and the predicates beside them). It never reads or writes a socket,
//! waits, reads the clock or touches the pool: the async shell around it
//! ([`super::Session`]) does, as tokio-postgres drives postgres-protocol.
//! It reads and updates a held server's bookkeeping (its statements,
//! parameters, buffered replies), which is data, not I/O.

mod client;
mod server;
#[cfg(test)]
mod tests;

pub(super) use client::{Plan, Policy};
pub(super) use server::Replies;

use bytes::BytesMut;

use super::identity::ClientIdentity;
use super::params::ClientParams;
use crate::config::PoolMode;
use crate::prepared::{Hook, Tracker, Undo};
use crate::protocol::expect::{Expect, Reply, Req};
use crate::protocol::TxStatus;
use crate::server::ServerConn;
use crate::sql::Effects;

/// The protocol state of one client's session.
pub(super) struct Core {
    pub(super) mode: PoolMode,
    pub(super) max_msg: usize,
    /// Bytes for the client, written by the shell once per batch.
    pub(super) cout: BytesMut,
    /// Bytes for the server, written by the shell once per batch.
    pub(super) sout: BytesMut,
    pub(super) expect: Expect<Hook>,
    /// Extended-protocol messages were sent since the last Sync.
    pub(super) unsynced: bool,
    /// The client's transaction status as of the last ReadyForQuery.
    pub(super) tx: TxStatus,
    /// An error ended the current extended-protocol batch (a local error, or
    /// the server died): drop the client's messages up to its Sync.
    pub(super) skip_to_sync: bool,
    /// The client said goodbye with replies still owed: deliver them, then end.
    pub(super) terminated: bool,
    /// The client prepared `set_config($n, ...)`: its Binds carry setting
    /// names to follow.
    scan_binds: bool,
    /// Prepared statements (transaction mode with tracking on).
    pub(super) stmts: Option<Tracker>,
    /// Replies owed by what the tracker routed, kept to reuse its space.
    routed: Vec<(Req, Reply, Hook)>,
    pub(super) params: ClientParams,
    /// The role / session authorization this client set, if not its login's.
    pub(super) identity: Option<Box<ClientIdentity>>,
    /// What ran during this hold may have changed the session's identity or
    /// settings: read back (and, for identity, restored) before the server
    /// goes back.
    pub(super) touched: Effects,
    /// What the client's unnamed statement may do (its last unnamed
    /// Parse's text).
    pub(super) unnamed_effects: Effects,
    /// The held server sent a FATAL error (which the client has): it is
    /// ending the session.
    pub(super) server_said_fatal: bool,
    /// Why the client keeps its server between transactions (session state
    /// that cannot move), if it does.
    pub(super) pinned: Option<&'static str>,
    /// The first words of the last statement that may have pinned it.
    pub(super) pin_hint: Option<Box<str>>,
    /// A DEALLOCATE ALL or DISCARD ALL is at the server: the statements it
    /// drops are known only from its answer, so the client's next messages
    /// wait for it ([`Core::waits`]).
    drop_in_flight: bool,
}

impl Core {
    /// A logged-in client's state: idle, nothing owed.
    pub(super) fn new(
        mode: PoolMode,
        max_msg: usize,
        stmts: Option<Tracker>,
        params: ClientParams,
    ) -> Self {
        Self {
            mode,
            max_msg,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            expect: Expect::default(),
            unsynced: false,
            tx: TxStatus::Idle,
            skip_to_sync: false,
            terminated: false,
            scan_binds: false,
            stmts,
            routed: Vec::new(),
            params,
            identity: None,
            touched: Effects::NONE,
            unnamed_effects: Effects::NONE,
            server_said_fatal: false,
            pinned: None,
            pin_hint: None,
            drop_in_flight: false,
        }
    }

    /// An extended-protocol batch is open: the server waits for a Sync
    /// (the client has not sent it, or the server skips to one after an
    /// error, or a COPY consumed it).
    pub(super) fn batch_open(&self) -> bool {
        self.unsynced || self.expect.sync_owed()
    }

    /// Replies are owed, or the server waits for the rest of a batch: the
    /// transaction cannot end yet.
    pub(super) fn owes_replies(&self) -> bool {
        !self.expect.is_empty() || self.batch_open()
    }

    /// No request in flight, no batch open, no transaction open.
    pub(super) fn is_idle(&self) -> bool {
        !self.owes_replies() && self.tx == TxStatus::Idle
    }

    /// In transaction mode, the server may go back to the pool now (once
    /// the end-of-transaction steps have run).
    pub(super) fn releasable(&self) -> bool {
        self.mode == PoolMode::Transaction && self.is_idle()
    }

    /// Whether what ran during this transaction calls for asking the
    /// server which per-session state exists.
    pub(super) fn pin_check_due(&self) -> bool {
        self.touched.pins
            || self.touched.may_pin
            || self.touched.opaque
            || (self.pinned.is_some() && self.touched.unpins)
    }

    /// The pin check ran: what called for it is settled.
    pub(super) fn pin_checked(&mut self) {
        self.touched.pins = false;
        self.touched.may_pin = false;
        self.touched.opaque = false;
        self.touched.unpins = false;
    }

    /// The settings read-back is about to run: what called for it is
    /// settled. Returns whether it must end with a reset (a setting may
    /// have been set under a name pgmux cannot read).
    pub(super) fn settings_checked(&mut self) -> bool {
        self.touched.settings = false;
        self.touched.param_settings = false;
        std::mem::take(&mut self.touched.unnamed_settings)
    }

    /// Whether the held server must have its identity restored before it
    /// goes back to the pool.
    pub(super) fn identity_needs_restore(&self, server: Option<&ServerConn>) -> bool {
        self.touched.identity || server.is_some_and(|s| s.identity_in_doubt())
    }

    /// The held server was closed: nothing it held is to be read back.
    pub(super) fn forget_server(&mut self) {
        self.touched = Effects::NONE;
        self.drop_in_flight = false;
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

    /// Notes an owed reply; undoes the hook at once if the server will skip it.
    pub(super) fn push(
        &mut self,
        req: Req,
        reply: Reply,
        hook: Hook,
        server: Option<&mut ServerConn>,
    ) {
        if let Some(skipped) = self.expect.push(req, reply, hook, &mut self.cout) {
            self.undo(skipped, server, Undo::Skipped);
        }
    }

    /// A request went to the server with its reply owed (injected by
    /// pgmux, or the client's own).
    pub(super) fn send(
        &mut self,
        req: Req,
        reply: Reply,
        hook: Hook,
        server: Option<&mut ServerConn>,
    ) {
        if !matches!(reply, Reply::Synthetic(_)) {
            self.note_sent(req);
        }
        self.push(req, reply, hook, server);
    }

    /// A request completed: the tracker learns what the server now holds.
    fn on_done(&mut self, hook: Hook, server: Option<&mut ServerConn>) {
        self.drop_in_flight &= !matches!(hook, Hook::DropAll);
        if let Some(t) = self.stmts.as_mut() {
            t.on_done(hook, server.map(|s| &mut s.statements));
        }
    }

    /// A request failed or was skipped: the tracker undoes what it recorded.
    fn undo(&mut self, hook: Hook, server: Option<&mut ServerConn>, how: Undo) {
        self.drop_in_flight &= !matches!(hook, Hook::DropAll);
        if let Some(t) = self.stmts.as_mut() {
            t.undo(hook, server.map(|s| &mut s.statements), how);
        }
    }

    /// The client took a (different) server.
    pub(super) fn on_new_server(&mut self) {
        self.server_said_fatal = false;
        if let Some(t) = self.stmts.as_mut() {
            t.on_new_server();
        }
    }

    /// Whether a Terminate ends the session at once: nothing owed, or
    /// replies that would never come (the server waits for COPY data or a
    /// Sync, and a direct connection closed there rolls back).
    pub(super) fn terminate_now(&self) -> bool {
        self.expect.is_empty() || self.batch_open() || self.expect.in_copy_in()
    }

    /// The client left with its server mid-request: writes what brings the
    /// server back to idle (a CopyFail for a COPY waiting for data; a
    /// failing Parse and a Sync for a batch with no Sync, so its implicit
    /// transaction aborts as when a direct connection closes there) and
    /// says whether something still runs and needs a cancel.
    pub(super) fn abandon_requests(&mut self, server: &mut ServerConn) -> bool {
        use crate::protocol::encode;
        let running = !self.expect.is_empty() && !self.expect.in_copy_in();
        self.fail_abandoned_copy();
        if self.batch_open() {
            // A Sync alone would commit the batch's implicit transaction;
            // a server already skipping to the Sync skips the Parse too.
            encode::failing_parse(&mut self.sout);
            self.push(Req::Parse, Reply::Swallow, Hook::None, Some(&mut *server));
            encode::sync(&mut self.sout);
            self.push(Req::Sync, Reply::Swallow, Hook::None, Some(server));
            self.unsynced = false;
        }
        running
    }

    /// A COPY FROM STDIN whose client left (it may start only now, when a
    /// CopyInResponse arrives behind the client's last bytes): failed at
    /// once, so the server does not wait for data that will never come.
    /// `true` when a CopyFail was written for the server.
    pub(super) fn fail_abandoned_copy(&mut self) -> bool {
        if !self.expect.in_copy_in() {
            return false;
        }
        crate::protocol::encode::copy_fail(&mut self.sout, "the client left during COPY");
        self.expect.end_copy_in();
        // An extended-protocol COPY consumed its batch's Sync: the failed
        // COPY leaves the server skipping to the next one.
        if self.expect.sync_owed() {
            crate::protocol::encode::sync(&mut self.sout);
            self.push(Req::Sync, Reply::Swallow, Hook::None, None);
        }
        true
    }
}
