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

use super::{fatal, End, Session};
use crate::protocol::SqlState;

/// One row: which kinds of per-session state the session holds, and then
/// the statements under pgmux's names with a hash of their text (see
/// [`statements_intact`]). Anything
/// in the session's temporary schema counts, however it was made (`CREATE
/// TABLE pg_temp.t`, `SELECT ... INTO TEMP`, a view over a temporary table,
/// a temporary function or type): every such object depends on its schema
/// in `pg_depend`, which is how PostgreSQL itself finds them to drop (an
/// index lookup, whatever the object's kind). Operators are named with
/// their schema: the client's `search_path` may put one of its own first.
pub(super) const SESSION_OBJECTS: &str = "SELECT \
     EXISTS (SELECT 1 FROM pg_catalog.pg_depend \
             WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass \
             AND refobjid OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
             WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
             AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable), \
     EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements \
             WHERE from_sql AND pg_catalog.left(name, 6) OPERATOR(pg_catalog.<>) 'pgmux_'), \
     (SELECT pg_catalog.string_agg(name OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) \
             pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(statement, 'UTF8')), 'hex'), ',') \
        FROM pg_catalog.pg_prepared_statements \
        WHERE pg_catalog.left(name, 6) OPERATOR(pg_catalog.=) 'pgmux_')";

/// The reasons, in the order of the query's columns (metric labels).
const REASONS: [&str; 5] = [
    "temp_table",
    "advisory_lock",
    "listen",
    "with_hold_cursor",
    "prepare",
];

/// Whether the server holds exactly the shared statements pgmux put there
/// (names and texts), by the last column of [`SESSION_OBJECTS`]. Code a
/// client ran (a multi-statement Query, `U&` names, dynamic SQL in a
/// function) may have dropped or replaced one: the next client's Bind would
/// then run a text of that client's choosing, under the next client's
/// settings and role. Such a server is closed.
///
/// The server hashes each text as UTF-8 (a conversion that cannot fail);
/// pgmux holds the bytes the preparing client sent, in that client's
/// encoding, which it does not record: a text that is all ASCII reads the
/// same in every encoding PostgreSQL serves and is compared by its hash,
/// any other by its name alone. Compared whenever the server holds
/// statements of pgmux's, whoever asks (a client without statement
/// tracking too: a reload may have turned it off while others use them).
pub(super) fn statements_intact(
    rows: &[Vec<Option<String>>],
    tracked: bool,
    held: &crate::prepared::ServerStatements,
) -> bool {
    if !tracked && held.is_empty() {
        return true;
    }
    let listed = rows
        .first()
        .and_then(|r| r.get(REASONS.len()))
        .cloned()
        .flatten()
        .unwrap_or_default();
    let mut on_server: Vec<(&str, &str)> = listed
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit_once(':').unwrap_or((s, "")))
        .collect();
    let mut expected: Vec<(&[u8], Option<&str>)> = held
        .all()
        .map(|stmt| (&stmt.name[..], stmt.text_hash()))
        .collect();
    on_server.sort_unstable();
    expected.sort_unstable();
    on_server.len() == expected.len()
        && on_server
            .iter()
            .zip(&expected)
            .all(|((name, hash), (want, want_hash))| {
                name.as_bytes() == *want && want_hash.is_none_or(|h| h == *hash)
            })
}

/// The first kind of per-session state the answer to [`SESSION_OBJECTS`]
/// names, if any.
pub(super) fn pin_reason(rows: &[Vec<Option<String>>]) -> Option<&'static str> {
    rows.first()
        .and_then(|r| r.iter().position(|c| c.as_deref() == Some("t")))
        .and_then(|i| REASONS.get(i).copied())
}

impl Session {
    /// Asks the server which per-session state exists; the client keeps
    /// its server while any does. A server that can't answer is closed,
    /// and a pinned client loses its session with it.
    pub(super) async fn check_pin(&mut self) -> Result<(), End> {
        self.core.pin_checked();
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        self.ctx.metrics.session_check("pin");
        let mut rows = Vec::new();
        if let Err(e) = server
            .run_internal_rows(SESSION_OBJECTS, self.core.max_msg, &mut rows)
            .await
        {
            tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server whose session state could not be read");
            let was_pinned = self.core.pinned.is_some();
            self.close_server();
            if !was_pinned {
                return Ok(());
            }
            let msg =
                "server connection lost; session state (temporary tables, locks, ...) is gone";
            return Err(fatal(SqlState::CONNECTION_FAILURE, msg));
        }
        self.set_pin(pin_reason(&rows));
        self.keep_if_intact(&rows)
    }

    /// Closes the held server when its shared statements are not the ones
    /// pgmux put there ([`statements_intact`]); a client that kept state on
    /// it loses its session with it.
    pub(super) fn keep_if_intact(&mut self, rows: &[Vec<Option<String>>]) -> Result<(), End> {
        let tracked = self.core.stmts.is_some();
        let Some(server) = self.server.as_deref() else {
            return Ok(());
        };
        if statements_intact(rows, tracked, &server.statements) {
            return Ok(());
        }
        let info = &self.listed.info;
        tracing::warn!(client = info.id, database = %info.database, user = %info.user,
            "closing a server whose shared prepared statements were dropped or replaced by a client");
        self.ctx.metrics.session_check("statements_changed");
        let was_pinned = self.core.pinned.is_some();
        self.close_server();
        if was_pinned {
            let msg = "server connection closed: its prepared statements were changed under pgmux's names";
            return Err(fatal(SqlState::CONNECTION_FAILURE, msg));
        }
        Ok(())
    }

    /// Records whether (and why) the client keeps its server: the session,
    /// SHOW CLIENTS, the metrics and the log.
    pub(super) fn set_pin(&mut self, reason: Option<&'static str>) {
        let info = &self.listed.info;
        match (self.core.pinned, reason) {
            (None, Some(r)) => {
                tracing::info!(client = info.id, database = %info.database, user = %info.user,
                    reason = r, statement = self.core.pin_hint.as_deref().unwrap_or(""),
                    "client keeps its server between transactions");
                self.ctx.metrics.pin(Some(r));
            }
            (Some(_), None) => {
                tracing::info!(client = info.id, "client no longer keeps its server");
                self.ctx.metrics.pin(None);
            }
            _ => {}
        }
        self.core.pinned = reason;
        info.set_pin(reason);
    }
}
