//! What a client's statements may change in its session, read from a
//! message's text ([`crate::sql::effects`]): noted by the core as they go
//! to the server and acted on when the transaction ends (identity and
//! settings read back, `identity.rs` and `settings.rs`; per-session state
//! pins, `pin.rs`; resets give back startup values).

use crate::protocol::frontend::Message;
use crate::sql::Effects;

/// What a client message may change in the session once it runs.
pub fn message_effects(msg: &Message<'_>) -> Effects {
    match msg {
        // A fast-path function call may be set_config itself.
        Message::FunctionCall => Effects::ALL,
        _ => msg.text().map_or(Effects::NONE, crate::sql::effects),
    }
}

/// The first words of a statement, for the log line of a pin and the
/// error of a refused one.
pub fn hint(text: &[u8]) -> Box<str> {
    let text = String::from_utf8_lossy(text);
    let words: Vec<&str> = text.split_whitespace().take(6).collect();
    words.join(" ").chars().take(80).collect()
}
