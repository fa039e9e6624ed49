//! What a client's statements may change in its session, noted as they go
//! to the server and acted on when the transaction ends: identity and
//! settings are read back (`identity.rs`, `settings.rs`), per-session state
//! pins (`pin.rs`), resets give back startup values.

use super::Session;
use crate::config::PoolMode;
use crate::protocol::{fe, Frame};
use crate::sql::Effects;

/// The statement text a Query or Parse carries.
pub fn statement_text(frame: &Frame) -> Option<&[u8]> {
    let body = frame.body();
    match frame.tag() {
        fe::QUERY => crate::protocol::frame::cstr(body).map(|(s, _)| s),
        fe::PARSE => crate::prepared::messages::parse(body).map(|p| p.query),
        _ => None,
    }
}

/// What a client message may change in the session once it runs.
pub fn message_effects(frame: &Frame) -> Effects {
    match frame.tag() {
        // A fast-path function call may be set_config itself.
        fe::FUNCTION_CALL => Effects::ALL,
        _ => statement_text(frame).map_or(Effects::NONE, crate::sql::effects),
    }
}

impl Session {
    /// Follows the custom setting names a message may set: from its text
    /// (`effects` as the text reads), or from a Bind's values once the
    /// client has prepared `set_config($n, ...)` (any Bind may run it).
    /// Past what pgmux follows, the transaction counts as setting names it
    /// cannot read back.
    pub(super) fn watch_setting_names(&mut self, frame: &Frame, effects: Effects) {
        self.scan_binds |= effects.param_settings;
        let names = match frame.tag() {
            // Any Bind may run it, in this transaction or a later one.
            fe::BIND => {
                self.touched.settings = true;
                crate::prepared::messages::bind_values(frame.body())
                    .and_then(|v| crate::sql::bound_setting_names(v.into_iter().flatten()))
            }
            _ => statement_text(frame).and_then(crate::sql::setting_names),
        };
        let followed = names.is_some_and(|n| n.is_empty() || self.params.watch(n));
        if !followed {
            self.touched.unnamed_settings = true;
        }
    }

    /// Notes a client message that may change session state: the server
    /// held when it runs is read back (and its identity restored) before it
    /// is lent again. A Parse that may change identity and stays on the
    /// server under a name anyone may execute (statement tracking off)
    /// taints that server for good.
    pub(super) fn note_effects(&mut self, frame: &Frame, effects: Effects) {
        self.touched |= effects;
        if effects.pins && self.mode == PoolMode::Transaction {
            self.pin_hint = statement_text(frame).map(super::pin::hint);
        }
        if effects.identity && frame.tag() == fe::PARSE && self.stmts.is_none() {
            if let Some(s) = self.server.as_mut() {
                s.mark_identity_sticky();
            }
        }
    }
}
