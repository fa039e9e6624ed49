//! Where a pool's servers are and how pgmux logs in to them.

use crate::auth::Secret;
use crate::config::{
    ChannelBinding, HostPort, LoadBalanceHosts, ServerAuthMethods, TargetSessionAttrs,
    TlsNegotiation,
};
use crate::tls::TlsMode;

/// Where a pool's servers live and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The servers, in the order written (at least one).
    pub hosts: Vec<HostPort>,
    /// Which servers qualify.
    pub target_session_attrs: TargetSessionAttrs,
    /// Whether hosts are tried in a random order.
    pub load_balance: LoadBalanceHosts,
    /// Database name on the server.
    pub dbname: String,
    /// Role to log in as.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
    /// TLS toward the server.
    pub tls_mode: TlsMode,
    /// CA bundle for verify-ca / verify-full.
    pub tls_ca: Option<String>,
    /// How TLS starts: an SSLRequest first, or the handshake at once.
    pub tls_negotiation: TlsNegotiation,
    /// How the server may make pgmux authenticate.
    pub auth_methods: ServerAuthMethods,
    /// SCRAM channel binding toward the server.
    pub channel_binding: ChannelBinding,
}
