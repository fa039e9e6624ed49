//! What a routed request changed, and undoing it when the server rejects
//! or skips the request.

use std::sync::Arc;

use bytes::Bytes;

use super::{ServerStatements, Statement, Tracker};

/// What a request changed, so it can be undone if the request fails.
#[derive(Debug)]
pub enum Hook {
    /// Nothing.
    None,
    /// A Parse: the client's name (if any) now maps to `stmt`, and the
    /// server's set holds it (`on_server`).
    Parse {
        /// The statement.
        stmt: Arc<Statement>,
        /// The client name mapped to it.
        client: Option<Bytes>,
        /// The statement that name meant before (only the unnamed statement
        /// is ever replaced): back in place if this Parse is skipped.
        replaced: Option<Arc<Statement>>,
        /// Whether the Parse went to the server.
        on_server: bool,
    },
    /// An eviction Close: the statement left the server's set.
    Evicted(Arc<Statement>),
    /// A client Close or DEALLOCATE: the client's name was unmapped.
    ClientClosed(Bytes, Arc<Statement>),
    /// A Bind or Describe that uses `stmt` on the server.
    Uses(Arc<Statement>),
    /// DISCARD ALL or DEALLOCATE ALL: the server drops every statement.
    DropAll,
}

/// Why a request's bookkeeping is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// The server skipped it (after an earlier error in its batch, or the
    /// server was lost).
    Skipped,
    /// The server rejected it.
    Rejected,
    /// The batch failed with "cached plan must not change result type":
    /// the statements it used are stale on that server. `rejected` says
    /// whether this is the request the server refused.
    StalePlan {
        /// This is the request the server refused, not one it skipped.
        rejected: bool,
    },
}

impl Undo {
    fn rejected(self) -> bool {
        matches!(self, Undo::Rejected | Undo::StalePlan { rejected: true })
    }
}

impl Tracker {
    /// A request completed: a statement a server accepted is confirmed.
    pub fn on_done(&mut self, hook: Hook, server: Option<&mut ServerStatements>) {
        match hook {
            Hook::Parse {
                stmt,
                on_server: true,
                ..
            } => stmt.confirm(),
            Hook::DropAll => {
                if let Some(s) = server {
                    s.clear();
                }
            }
            _ => {}
        }
    }

    /// A request failed or was skipped: undo its bookkeeping. A statement
    /// whose cached plan went stale is retired on this server.
    pub fn undo(&mut self, hook: Hook, server: Option<&mut ServerStatements>, how: Undo) {
        match hook {
            Hook::None | Hook::DropAll => {}
            Hook::Parse {
                stmt,
                client,
                replaced,
                on_server,
            } => {
                if let Some(name) = client {
                    self.names.remove_if(&name, &stmt);
                    // PostgreSQL drops the old unnamed statement before it
                    // parses the new one: only a skipped Parse leaves it.
                    if let (Some(old), false) = (replaced, how.rejected()) {
                        self.names.insert(name, old);
                    }
                }
                if let (true, Some(s)) = (on_server, server) {
                    s.remove(&stmt);
                }
            }
            Hook::Evicted(stmt) => {
                if let Some(s) = server {
                    s.add(stmt);
                }
            }
            Hook::ClientClosed(name, stmt) => {
                if self.names.get(&name).is_none() {
                    self.names.insert(name, stmt);
                }
            }
            Hook::Uses(stmt) => {
                if let (Undo::StalePlan { .. }, Some(s)) = (how, server) {
                    s.mark_stale(&stmt);
                }
            }
        }
    }
}
