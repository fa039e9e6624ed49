//! Who a server connection runs as, and putting its login identity back
//! before anyone else gets it.
//!
//! A client may change the session's identity with `SET ROLE`, `SET SESSION
//! AUTHORIZATION` or `set_config('role', ...)`. Those changes belong to the
//! client, never to the connection: before a connection whose identity may
//! have changed goes back to its pool, pgmux reads what the client set (so
//! it can follow the client to its next server), restores the login
//! identity, and checks with the server that it took. A connection that
//! fails the check is closed, never lent.

use super::{ServerConn, ServerError};

/// Reads the identity, restores the login one and reads again, in one
/// round trip. Qualified names and keywords only: a client's
/// `search_path` can't put its own `current_setting` in front. Its first
/// statement reads the identity, its fourth reads it again
/// ([`ServerConn::identity_restored`]).
pub const RESTORE: &str = "SELECT pg_catalog.current_setting('session_authorization'), \
     pg_catalog.current_setting('role'); \
     RESET SESSION AUTHORIZATION; RESET ROLE; \
     SELECT session_user, current_user, pg_catalog.current_setting('role'), \
     pg_catalog.current_setting('is_superuser')";

/// The identity a connection logged in with.
#[derive(Debug, Clone, Default)]
pub(super) struct Login {
    /// The user pgmux logged in as.
    pub user: String,
    /// `is_superuser` as the server reported it at login (`None` until
    /// login completes, or from a server that doesn't report it).
    pub superuser: Option<String>,
}

impl Login {
    /// Whether a ParameterStatus says the session runs as someone else.
    pub fn differs(&self, name: &str, value: &str) -> bool {
        match name {
            "session_authorization" => value != self.user,
            "is_superuser" => self.superuser.as_deref().is_some_and(|s| s != value),
            "role" => value != "none",
            _ => false,
        }
    }
}

/// A session's identity as PostgreSQL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    /// `session_authorization`: the session user.
    pub session_authorization: String,
    /// `role`: the current role, `none` when not set.
    pub role: String,
}

/// What restoring a connection's identity found and did.
#[derive(Debug)]
pub struct Restored {
    /// The identity the session had before the restore, if it was read.
    pub before: Option<SessionIdentity>,
    /// `Ok` when the connection runs as its login identity again and may be
    /// lent; otherwise it must be closed.
    pub outcome: Result<(), ServerError>,
}

fn column(row: Option<&Vec<Option<String>>>, i: usize) -> Option<&str> {
    row?.get(i)?.as_deref()
}

impl ServerConn {
    /// Records who this connection logged in as (end of login).
    pub(super) fn note_login_identity(&mut self, user: &str) {
        self.login = Login {
            user: user.to_owned(),
            superuser: self.param("is_superuser").map(str::to_owned),
        };
        self.identity_changed = false;
    }

    /// The user this connection logged in as.
    pub fn login_user(&self) -> &str {
        &self.login.user
    }

    /// Whether this connection may run as someone other than its login
    /// identity, so it must be restored before it is lent again.
    pub fn identity_in_doubt(&self) -> bool {
        self.identity_changed || self.identity_sticky
    }

    /// Notes that pgmux gave this connection a client's identity.
    pub fn mark_identity_changed(&mut self) {
        self.identity_changed = true;
    }

    /// Notes that a statement able to change identity is prepared here under
    /// a name later clients can execute.
    pub fn mark_identity_sticky(&mut self) {
        self.identity_sticky = true;
    }

    /// Reads the session's identity, restores the login identity and checks
    /// that it took: the session user, current user, `role` and
    /// `is_superuser` must all be as at login.
    pub async fn restore_identity(&mut self, max: usize) -> Restored {
        let mut sets = Vec::new();
        let res = self.run_internal_statements(RESTORE, max, &mut sets).await;
        self.identity_restored(&sets, res.map(|_| ()))
    }

    /// What [`ServerConn::restore_identity`] concludes from the rows of
    /// [`RESTORE`]'s statements (`sets`, in order) and how the query ended.
    pub fn identity_restored(
        &mut self,
        sets: &[Vec<Vec<Option<String>>>],
        res: Result<(), ServerError>,
    ) -> Restored {
        let first_row = |i: usize| sets.get(i).and_then(|rows| rows.first());
        let before = match (column(first_row(0), 0), column(first_row(0), 1)) {
            (Some(sa), Some(role)) => Some(SessionIdentity {
                session_authorization: sa.to_owned(),
                role: role.to_owned(),
            }),
            _ => None,
        };
        let outcome = res.and_then(|_| self.check_login_identity(first_row(3)));
        if outcome.is_ok() {
            self.identity_changed = false;
        }
        Restored { before, outcome }
    }

    fn check_login_identity(&self, after: Option<&Vec<Option<String>>>) -> Result<(), ServerError> {
        let user = self.login.user.as_str();
        let superuser = self.login.superuser.as_deref();
        let ok = column(after, 0) == Some(user)
            && column(after, 1) == Some(user)
            && column(after, 2) == Some("none")
            && superuser.is_none_or(|s| column(after, 3) == Some(s))
            && self
                .param("session_authorization")
                .is_none_or(|s| s == user)
            && superuser.is_none_or(|s| self.param("is_superuser") == Some(s));
        if ok {
            Ok(())
        } else {
            Err(ServerError::Protocol(format!(
                "the connection did not return to its login identity {user:?} (found {after:?})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_that_differ_from_login() {
        let login = Login {
            user: "app".into(),
            superuser: Some("on".into()),
        };
        assert!(!login.differs("session_authorization", "app"));
        assert!(login.differs("session_authorization", "other"));
        assert!(login.differs("is_superuser", "off"));
        assert!(!login.differs("is_superuser", "on"));
        assert!(!login.differs("TimeZone", "UTC"));
        let before_login = Login {
            user: "app".into(),
            superuser: None,
        };
        assert!(!before_login.differs("is_superuser", "off"));
    }
}
