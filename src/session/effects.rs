//! What a client's statements may change in its session, read from a
//! message's text ([`crate::sql::effects`]): noted by the core as they go
//! to the server and acted on when the transaction ends (identity and
//! settings read back, `identity.rs` and `settings.rs`; per-session state
//! pins, `pin.rs`; resets give back startup values).

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
