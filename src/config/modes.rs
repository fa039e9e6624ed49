//! The small enums of the configuration: pool mode, client authentication,
//! TLS mode.

use serde::{Deserialize, Serialize};

use crate::auth::Method;

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One transaction at a time; the server goes back at ReadyForQuery `I`.
    Transaction,
    /// From login to logout.
    Session,
}

/// What transaction mode does with session state that cannot move to
/// another server (temporary tables, session advisory locks, `LISTEN`,
/// `WITH HOLD` cursors, SQL-level `PREPARE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// The client keeps its server while it has such state.
    #[default]
    Pin,
    /// The statement is refused with 0A000, for fleets that must never
    /// hold a server between transactions.
    Error,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 (the default, as in PostgreSQL).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge.
    #[serde(rename = "md5")]
    Md5,
    /// No password.
    #[serde(rename = "trust")]
    Trust,
    /// The first matching rule of `auth_hba_file` decides, per client
    /// (PgBouncer's `auth_type = hba`).
    #[serde(rename = "hba")]
    Hba,
}

impl AuthType {
    /// The exchange every client goes through; `None` for `hba`, where the
    /// rules choose per client.
    pub fn method(self) -> Option<Method> {
        match self {
            Self::ScramSha256 => Some(Method::ScramSha256),
            Self::Md5 => Some(Method::Md5),
            Self::Trust => Some(Method::Trust),
            Self::Hba => None,
        }
    }
}

/// How TLS is required or verified, as PostgreSQL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never.
    Disable,
    /// Client side: accept TLS when the client asks.
    Allow,
    /// Use TLS when the peer supports it.
    #[default]
    Prefer,
    /// Always; no certificate check.
    Require,
    /// Always; the certificate must chain to the configured CA.
    VerifyCa,
    /// Always; chain and host name (server side) are checked.
    VerifyFull,
}

impl TlsMode {
    /// TLS is mandatory.
    pub fn required(self) -> bool {
        self >= Self::Require
    }
}

/// Which servers a pool may use, as libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server that accepts the login.
    #[default]
    Any,
    /// A server whose sessions can write (not a standby, and
    /// `default_transaction_read_only` off).
    ReadWrite,
    /// A server whose sessions are read-only (a standby, or
    /// `default_transaction_read_only` on).
    ReadOnly,
    /// A server that is not in hot standby.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby when one answers, otherwise any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The pool must write: a server that turns read-only leaves it.
    pub fn wants_writer(self) -> bool {
        matches!(self, Self::ReadWrite | Self::Primary)
    }
}

/// How a pool with several hosts spreads its connections, as libpq's
/// `load_balance_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalanceHosts {
    /// Hosts are tried in the order written.
    #[default]
    Disable,
    /// Hosts are tried in a random order for each new connection.
    Random,
}

/// How a TLS connection to a server starts (libpq's `sslnegotiation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsNegotiation {
    /// An SSLRequest first, then the handshake if the server says `S`:
    /// every PostgreSQL version.
    #[default]
    Postgres,
    /// The TLS handshake at once, with ALPN `postgresql` (PostgreSQL 17
    /// and later): one round trip less per new server connection. Needs
    /// `server_tls_mode` `require` or stronger.
    Direct,
}
