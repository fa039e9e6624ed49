//! State PostgreSQL keeps per session that pgmux cannot move to another
//! server: temporary tables, session advisory locks, `LISTEN`, `WITH HOLD`
//! cursors, SQL-level prepared statements. A client that has any keeps its
//! server between transactions (it is *pinned*) until the state is gone or
//! it leaves; then the server is reset before anyone else gets it.
//!
//! Whether a client is pinned is the server's answer, not a guess: after a
//! transaction that ran something able to create such state (or, while
//! pinned, to remove it; [`crate::sql::effects`]), pgmux asks the server
//! which per-session objects exist.

use bytes::BytesMut;

use super::{fatal, End, Session};
use crate::config::{PoolMode, SessionState};
use crate::prepared::Hook;
use crate::protocol::error::{write_error, Severity};
use crate::protocol::expect::{Reply, Req};
use crate::protocol::{encode, fe, Frame, SqlState};

/// One row: which kinds of per-session state the session holds. Anything
/// in the session's temporary schema counts, however it was made (`CREATE
/// TABLE pg_temp.t`, `SELECT ... INTO TEMP`, a view over a temporary table,
/// a temporary function or type): every such object depends on its schema
/// in `pg_depend`, which is how PostgreSQL itself finds them to drop (an
/// index lookup, whatever the object's kind).
const SESSION_OBJECTS: &str = "SELECT \
     EXISTS (SELECT 1 FROM pg_catalog.pg_depend \
             WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
             AND refobjid = pg_catalog.pg_my_temp_schema()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements \
             WHERE from_sql AND pg_catalog.left(name, 6) <> 'pgmux_')";

/// The reasons, in the order of the query's columns (metric labels).
const REASONS: [&str; 5] = [
    "temp_table",
    "advisory_lock",
    "listen",
    "with_hold_cursor",
    "prepare",
];

impl Session {
    /// Whether what ran during this transaction calls for asking the server.
    pub(super) fn pin_check_due(&self) -> bool {
        self.touched.pins
            || self.touched.may_pin
            || self.touched.opaque
            || (self.pinned.is_some() && self.touched.unpins)
    }

    /// Asks the server which per-session state exists; the client keeps
    /// its server while any does. A server that can't answer is closed,
    /// and a pinned client loses its session with it.
    pub(super) async fn check_pin(&mut self) -> Result<(), End> {
        self.touched.pins = false;
        self.touched.may_pin = false;
        self.touched.opaque = false;
        self.touched.unpins = false;
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let mut rows = Vec::new();
        if let Err(e) = server
            .run_internal_rows(SESSION_OBJECTS, self.max_msg, &mut rows)
            .await
        {
            tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server whose session state could not be read");
            let was_pinned = self.pinned.is_some();
            self.close_server();
            if !was_pinned {
                return Ok(());
            }
            let msg =
                "server connection lost; session state (temporary tables, locks, ...) is gone";
            return Err(fatal(SqlState::CONNECTION_FAILURE, msg));
        }
        let reason = rows
            .first()
            .and_then(|r| r.iter().position(|c| c.as_deref() == Some("t")))
            .and_then(|i| REASONS.get(i).copied());
        self.set_pin(reason);
        Ok(())
    }

    /// Whether this client's pool refuses state that cannot move
    /// (`session_state = "error"`, transaction mode).
    pub(super) fn refuses_session_state(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.pool.settings().session_state == SessionState::Error
    }

    /// Whether the prepared-statement tracker maps this Query's SQL-level
    /// `PREPARE` (so it creates no state that pins).
    pub(super) fn maps_sql_prepare(&self, frame: &Frame) -> bool {
        use crate::prepared::messages::{sql_prepared, SqlPrepared};
        let text = super::effects::statement_text(frame);
        self.stmts.is_some()
            && frame.tag() == fe::QUERY
            && matches!(
                text.and_then(sql_prepared),
                Some(SqlPrepared::Prepare { .. })
            )
    }

    /// Answers a statement that would create such state with 0A000 instead
    /// of running it. A Query gets its ReadyForQuery (the transaction status
    /// is unchanged: the server never saw it); a Parse ends its batch.
    pub(super) fn refuse_session_state(&mut self, frame: &Frame) {
        let text = super::effects::statement_text(frame);
        let msg = format!(
            "\"{}\" keeps state on its server, which this pool does not allow in transaction mode (session_state = \"error\")",
            text.map(hint).unwrap_or_default()
        );
        let mut reply = BytesMut::new();
        write_error(
            &mut reply,
            Severity::Error,
            SqlState::FEATURE_NOT_SUPPORTED.0,
            &msg,
        );
        if frame.tag() == fe::QUERY {
            encode::ready_for_query(&mut reply, self.tx);
            self.push(Req::Query, Reply::Synthetic(reply.freeze()), Hook::None);
        } else {
            self.push(Req::Parse, Reply::Synthetic(reply.freeze()), Hook::None);
            self.skip_to_sync = true;
        }
    }

    /// Records whether (and why) the client keeps its server: the session,
    /// SHOW CLIENTS, the metrics and the log.
    pub(super) fn set_pin(&mut self, reason: Option<&'static str>) {
        let info = &self.listed.info;
        match (self.pinned, reason) {
            (None, Some(r)) => {
                tracing::info!(client = info.id, database = %info.database, user = %info.user,
                    reason = r, statement = self.pin_hint.as_deref().unwrap_or(""),
                    "client keeps its server between transactions");
                self.ctx.metrics.pin(Some(r));
            }
            (Some(_), None) => {
                tracing::info!(client = info.id, "client no longer keeps its server");
                self.ctx.metrics.pin(None);
            }
            _ => {}
        }
        self.pinned = reason;
        info.set_pin(reason);
    }
}

/// The first words of a statement, for the log line of a pin.
pub fn hint(text: &[u8]) -> Box<str> {
    let text = String::from_utf8_lossy(text);
    let words: Vec<&str> = text.split_whitespace().take(6).collect();
    words.join(" ").chars().take(80).collect()
}
