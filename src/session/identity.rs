//! A client's own identity (`SET ROLE`, `SET SESSION AUTHORIZATION`) follows
//! the client from server to server and never stays behind on one.
//!
//! pgmux notes when a client runs anything that may change its identity
//! ([`crate::sql::effects`], and ParameterStatus reports of
//! `session_authorization` / `is_superuser`). Before such a server goes back
//! to the pool, [`ServerConn::restore_identity`] reads what the client set
//! and puts the login identity back; the next server the client takes gets
//! the client's identity again before its first statement.
//!
//! [`ServerConn::restore_identity`]: crate::server::ServerConn::restore_identity

use super::{fatal, End, Session};
use crate::protocol::SqlState;
use crate::server::SessionIdentity;

/// The identity a client gave itself beyond its login (`None` fields: as
/// at login).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `SET SESSION AUTHORIZATION` in force.
    pub session_authorization: Option<String>,
    /// `SET ROLE` in force.
    pub role: Option<String>,
}

impl ClientIdentity {
    /// The identity a session had, relative to the server's login user;
    /// `None` when it is the login identity.
    pub fn from_session(s: &SessionIdentity, login_user: &str) -> Option<Box<Self>> {
        let id = Self {
            session_authorization: (s.session_authorization != login_user)
                .then(|| s.session_authorization.clone()),
            role: (s.role != "none").then(|| s.role.clone()),
        };
        (id != Self::default()).then(|| Box::new(id))
    }

    /// The statement that gives a server this identity: the session user
    /// first, since setting it resets the role.
    pub fn apply_sql(&self) -> String {
        let mut sql = String::new();
        for (name, value) in [
            ("session_authorization", &self.session_authorization),
            ("role", &self.role),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(
                    "SELECT pg_catalog.set_config('{name}', {}, false);",
                    super::params::literal(v)
                ));
            }
        }
        sql
    }
}

impl Session {
    /// Reads the identity the client left on its server, remembers it as the
    /// client's own, and restores the server's login identity. A server that
    /// can't be restored is closed; a client whose identity could not be
    /// read is disconnected, since its next server could not be made right.
    pub(super) async fn restore_identity(&mut self) -> Result<(), End> {
        self.core.touched.identity = false;
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        self.ctx.metrics.session_check("identity");
        let restored = server.restore_identity(self.core.max_msg).await;
        if let Some(before) = &restored.before {
            self.core.identity = ClientIdentity::from_session(before, server.login_user());
        }
        let Err(e) = restored.outcome else {
            return Ok(());
        };
        tracing::warn!(pool = %self.pool.name(), error = %e, "closing a server whose identity could not be restored");
        self.close_server();
        match restored.before {
            Some(_) => Ok(()),
            None => Err(fatal(
                SqlState::CONNECTION_FAILURE,
                "could not read the session's role back from the server",
            )),
        }
    }

    /// Gives the held server this client's identity, if it has one of its
    /// own. The server is then in doubt until restored.
    pub(super) async fn apply_identity(&mut self) -> Result<(), End> {
        let (Some(id), Some(server)) = (self.core.identity.as_ref(), self.server.as_mut()) else {
            return Ok(());
        };
        server.mark_identity_changed();
        let sql = id.apply_sql();
        if let Err(e) = server.run_internal(&sql, self.core.max_msg).await {
            self.close_server();
            return Err(super::server_error_end(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_relative_to_login() {
        let s = |sa: &str, role: &str| SessionIdentity {
            session_authorization: sa.into(),
            role: role.into(),
        };
        assert_eq!(ClientIdentity::from_session(&s("app", "none"), "app"), None);
        let id = ClientIdentity::from_session(&s("bob", "reader"), "app").unwrap();
        assert_eq!(id.session_authorization.as_deref(), Some("bob"));
        assert_eq!(id.role.as_deref(), Some("reader"));
        assert_eq!(
            id.apply_sql(),
            "SELECT pg_catalog.set_config('session_authorization', E'bob', false);\
             SELECT pg_catalog.set_config('role', E'reader', false);"
        );
    }
}
