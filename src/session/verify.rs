//! After a transaction that ran code pgmux cannot read (a function of the
//! application's own, `DO`, `CALL`, SQL `EXECUTE`), the server may hold
//! anything: settings under names pgmux never saw, another role, a
//! temporary table. Three questions settle it (the per-session state that
//! pins, the settings read back then reset, the identity read back then
//! restored), and they go to the server as one Query: one round trip
//! instead of three, taken after the client has its reply.

use super::identity::ClientIdentity;
use super::pin::{pin_reason, SESSION_OBJECTS};
use super::{fatal, End, Session};
use crate::protocol::SqlState;
use crate::server::RESTORE;

impl Session {
    /// Whether the end of this transaction calls for all three questions
    /// at once: the client kept no state before (a pinned client keeps its
    /// settings and identity on its server, so only the pin is asked).
    pub(super) fn verify_due(&self) -> bool {
        self.core.pinned.is_none()
            && self.core.pin_check_due()
            && self.core.touched.settings
            && self.core.identity_needs_restore(self.server.as_deref())
    }

    /// Asks the three questions in one round trip and acts on the answers.
    /// The client keeps what was read (its settings and identity follow it
    /// to its next server); the server is lent again only once it is back
    /// at its login identity with pgmux's settings. When the answer is
    /// that the client now keeps its server, the client's settings and
    /// identity go back onto it.
    pub(super) async fn verify_after_code(&mut self) -> Result<(), End> {
        self.core.pin_checked();
        self.core.touched.identity = false;
        let wipe = self.core.settings_checked();
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        self.ctx.metrics.session_check("code");
        let settle = self.core.params.settle_sql(wipe, server);
        let sql = format!("{SESSION_OBJECTS}; {}; {RESTORE}", settle.sql);
        let mut sets = Vec::new();
        let res = server
            .run_internal_statements(&sql, self.core.max_msg, &mut sets)
            .await
            .map(|_| ());
        // The statements' rows, in order: the pin question, the read-back's
        // statements, then RESTORE's four.
        let mut sets = sets.into_iter();
        let pin = sets.next();
        self.core.params.adopt_settled(server, &mut sets, &settle);
        let identity: Vec<_> = sets.collect();
        let restored = server.identity_restored(&identity, res);
        if let Some(before) = &restored.before {
            self.core.identity = ClientIdentity::from_session(before, server.login_user());
        }
        let reason = pin.as_deref().and_then(pin_reason);
        let objects = pin.unwrap_or_default();
        if let Err(e) = restored.outcome {
            tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server after code pgmux cannot read");
            self.close_server();
            if reason.is_some() {
                return Err(fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server connection lost; session state (temporary tables, locks, ...) is gone",
                ));
            }
            if restored.before.is_none() {
                return Err(fatal(
                    SqlState::CONNECTION_FAILURE,
                    "could not read the session's role back from the server",
                ));
            }
            return Ok(());
        }
        self.set_pin(reason);
        self.keep_if_intact(&objects)?;
        if self.server.is_none() {
            return Ok(());
        }
        if reason.is_some() {
            // It stays with this client: give it back what was just read.
            return self.sync_held().await;
        }
        Ok(())
    }
}
