//! The configuration file: serde structs with documented defaults, loading
//! with `${VAR}` expansion, and validation into a [`Config`] that the rest
//! of pgmux can trust.

pub mod de;
mod hba_file;
pub mod ini;
mod modes;
mod overrides;
pub mod report;
mod server_auth;

pub use modes::{
    AuthType, LoadBalanceHosts, PoolMode, SessionState, TargetSessionAttrs, TlsMode, TlsNegotiation,
};
pub use overrides::{Database, PoolConfig, User};
pub use server_auth::{AuthMethod, ChannelBinding, ServerAuthMethods};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name of the admin console's virtual database. It lives here, not
/// in `admin`, because [`Config::database`] must keep the console's names
/// out of the `*` fallback, and `config` depends on nothing above it.
pub const ADMIN_DATABASE: &str = "pgmux";

/// PgBouncer's name for the admin console, which exporters and scripts
/// connect to; the console answers to it too unless a real database has
/// that name.
pub const PGBOUNCER_DATABASE: &str = "pgbouncer";

/// A configuration error: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type: where,
    /// and toml's message with no value in it ([`report`]).
    #[error("line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line of the text.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong, values left out.
        message: String,
    },
    /// Values that parse but don't make sense together, one line each.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// The error as `file:line:column: message` for a parse error, `file:
    /// error` for others: how `pgmux check`, RELOAD and the log name it.
    pub fn located(&self, path: &Path) -> String {
        match self {
            Self::Parse {
                line,
                column,
                message,
            } => format!("{}:{line}:{column}: {message}", path.display()),
            other => format!("{}: {other}", path.display()),
        }
    }
}

/// The `[pgmux]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address clients connect to.
    pub listen: String,
    /// SO_REUSEPORT on the listening socket (PgBouncer's key): several pgmux
    /// processes share one address, and one can be replaced while the
    /// others serve. Changes need a restart.
    pub so_reuseport: bool,
    /// Unix socket where this process hands its listening sockets to a
    /// successor started with `pgmux run --takeover` (empty: none).
    pub takeover_socket: String,
    /// This instance's id among `[peers]` (1-16383; 0: no peering): every
    /// cancel key it issues carries it, so a CancelRequest that reaches
    /// another instance is forwarded here. Changes need a restart.
    pub peer_id: u16,
    /// Default pool mode.
    pub pool_mode: PoolMode,
    /// Session state that cannot move, in transaction mode: pin or error.
    pub session_state: SessionState,
    /// Transaction mode: end every transaction with the check that follows
    /// code pgmux cannot read (settings read back then reset, identity
    /// restored, per-session state asked), for databases whose triggers,
    /// views, defaults or policies call functions that change session
    /// state. PgBouncer's key of the same name runs `server_reset_query`
    /// after every transaction instead, which loses the client's own state.
    pub server_reset_query_always: bool,
    /// Server connections per (database, user) unless the database says otherwise.
    pub default_pool_size: u32,
    /// Server connections kept open even when idle.
    pub min_pool_size: u32,
    /// Client connections accepted at once.
    pub max_client_conn: u32,
    /// Server connections to one database, all its users' pools together
    /// (0: no limit); per database too.
    pub max_db_connections: u32,
    /// Server connections of one user, all its databases' pools together
    /// (0: no limit); per user too.
    pub max_user_connections: u32,
    /// Extra server connections a pool may open once a client has waited
    /// `reserve_pool_timeout` (0: none); per database too.
    pub reserve_pool_size: u32,
    /// How long a client waits before the reserve opens.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub reserve_pool_timeout: Duration,
    /// How long a client may wait for a server.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub query_wait_timeout: Duration,
    /// A client idle inside a transaction longer than this is disconnected
    /// (25P03) and its transaction rolled back; 0 turns it off.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub idle_transaction_timeout: Duration,
    /// A client idle outside a transaction longer than this is disconnected
    /// (57P05), freeing its `max_client_conn` slot; 0 (default) turns it off.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub client_idle_timeout: Duration,
    /// A request running longer than this is cancelled on the server
    /// (57014); 0 (default) turns it off.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub query_timeout: Duration,
    /// TCP keepalive on client sockets (finds clients whose host vanished).
    pub client_tcp_keepalive: bool,
    /// Idle time before the first keepalive probe.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub client_tcp_keepidle: Duration,
    /// Time between keepalive probes.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub client_tcp_keepintvl: Duration,
    /// Unanswered probes before the connection is dropped.
    pub client_tcp_keepcnt: u32,
    /// TCP_USER_TIMEOUT on client sockets: unacknowledged data older than
    /// this drops the connection (0: the system's default).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub client_tcp_user_timeout: Duration,
    /// TCP keepalive on server sockets (PgBouncer's key): finds a server
    /// that vanished without a word (instance lost, network cut).
    pub tcp_keepalive: bool,
    /// Idle time before the first keepalive probe to a server.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub tcp_keepidle: Duration,
    /// Time between keepalive probes to a server.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub tcp_keepintvl: Duration,
    /// Unanswered probes before a server connection is dropped.
    pub tcp_keepcnt: u32,
    /// TCP_USER_TIMEOUT on server sockets: data (or keepalive probes)
    /// unacknowledged this long drop the connection (0: the system's
    /// default, which retransmits for about 15 minutes).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub tcp_user_timeout: Duration,
    /// Query run on a server idle longer than `server_check_delay` before
    /// it is lent again; empty (default) relies on keepalive and a
    /// non-blocking liveness check instead.
    pub server_check_query: String,
    /// Idle time after which `server_check_query` runs.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub server_check_delay: Duration,
    /// Longest pause between attempts to open a server connection after
    /// failures (the pause starts at 100ms and doubles, with jitter).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub server_login_retry: Duration,
    /// How long a resolved host name is trusted: names are resolved again
    /// this often, and connections to addresses no longer in the answer
    /// are closed when next released.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub dns_max_ttl: Duration,
    /// Limit on opening one server connection (TCP + login).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub server_connect_timeout: Duration,
    /// Servers idle longer than this are closed (down to `min_pool_size`).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub server_idle_timeout: Duration,
    /// Servers older than this are closed once released.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub server_lifetime: Duration,
    /// Time a client has to finish logging in.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub client_login_timeout: Duration,
    /// How long shutdown waits for transactions to finish.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub shutdown_timeout: Duration,
    /// Client authentication method.
    pub auth_type: AuthType,
    /// Rules in PgBouncer's dialect of `pg_hba.conf`, consulted when
    /// `auth_type` is `hba` (read, and checked, whenever set).
    pub auth_hba_file: Option<String>,
    /// Query run on a session-mode server before it is reused.
    pub server_reset_query: String,
    /// Largest message accepted from a client or server, in bytes.
    pub max_message_size: usize,
    /// Prepared statements each server connection keeps (LRU); 0 disables tracking.
    pub max_prepared_statements: usize,
    /// Prepared statement names one client may hold.
    pub max_client_prepared_statements: usize,
    /// Also shares the extended protocol's unnamed statement (a Parse with
    /// an empty name) as a server-side prepared statement, so the server
    /// parses and plans a repeated query once instead of at every execution
    /// and the statement survives between transactions. PostgreSQL may then
    /// pick a generic plan after five executions, as for any prepared
    /// statement, where the unnamed statement is always planned for its
    /// actual parameters: so it is off by default.
    pub track_unnamed_statements: bool,
    /// Runtime worker threads; 0 means one on machines of up to two cores,
    /// else one per core.
    pub workers: usize,
    /// Role (from `[users]`) that looks up users missing from the config
    /// with `auth_query`; unset disables the lookup.
    pub auth_user: Option<String>,
    /// Query returning (name, password or verifier) for `$1`.
    pub auth_query: String,
    /// Pools of databases reached through `*` are dropped once they had
    /// no client this long (PgBouncer's key and default; 0: never).
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub autodb_idle_timeout: Duration,
    /// How long a looked-up user is cached.
    #[serde(deserialize_with = "de::duration", serialize_with = "de::ser_duration")]
    pub auth_query_cache: Duration,
    /// TLS toward clients: disable, allow, prefer, require, verify-ca, verify-full.
    pub client_tls_mode: TlsMode,
    /// PEM certificate (chain) shown to clients.
    pub client_tls_cert: Option<String>,
    /// PEM private key of `client_tls_cert`.
    pub client_tls_key: Option<String>,
    /// PEM CA that client certificates must chain to (verify-ca, verify-full).
    pub client_tls_ca: Option<String>,
    /// TLS toward servers: disable, prefer, require, verify-ca, verify-full.
    pub server_tls_mode: TlsMode,
    /// PEM CA bundle server certificates must chain to (e.g. the RDS bundle).
    pub server_tls_ca: Option<String>,
    /// How TLS toward servers starts: `postgres` (an SSLRequest first) or
    /// `direct` (PostgreSQL 17+, the handshake at once).
    pub server_tls_negotiation: TlsNegotiation,
    /// How a server may make pgmux authenticate (libpq's `require_auth`):
    /// unset, anything but a cleartext password over a connection without
    /// TLS.
    pub server_auth_methods: ServerAuthMethods,
    /// SCRAM channel binding toward servers over TLS (libpq's
    /// `channel_binding`): disable, prefer, require.
    pub server_channel_binding: ChannelBinding,
}

impl Default for General {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".into(),
            so_reuseport: false,
            takeover_socket: String::new(),
            peer_id: 0,
            pool_mode: PoolMode::Transaction,
            session_state: SessionState::Pin,
            server_reset_query_always: false,
            default_pool_size: 20,
            min_pool_size: 0,
            max_client_conn: 10_000,
            max_db_connections: 0,
            max_user_connections: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            query_wait_timeout: Duration::from_secs(30),
            idle_transaction_timeout: Duration::from_secs(300),
            client_idle_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            client_tcp_keepalive: true,
            client_tcp_keepidle: Duration::from_secs(30),
            client_tcp_keepintvl: Duration::from_secs(10),
            client_tcp_keepcnt: 3,
            client_tcp_user_timeout: Duration::ZERO,
            tcp_keepalive: true,
            tcp_keepidle: Duration::from_secs(5),
            tcp_keepintvl: Duration::from_secs(2),
            tcp_keepcnt: 5,
            tcp_user_timeout: Duration::from_secs(15),
            server_check_query: String::new(),
            server_check_delay: Duration::from_secs(30),
            server_login_retry: Duration::from_secs(2),
            dns_max_ttl: Duration::from_secs(15),
            server_connect_timeout: Duration::from_secs(5),
            server_idle_timeout: Duration::from_secs(60),
            server_lifetime: Duration::from_secs(3600),
            client_login_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            auth_type: AuthType::ScramSha256,
            auth_hba_file: None,
            server_reset_query: "DISCARD ALL".into(),
            max_message_size: 64 << 20,
            max_prepared_statements: 256,
            max_client_prepared_statements: 10_000,
            track_unnamed_statements: false,
            workers: 0,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_query_cache: Duration::from_secs(60),
            client_tls_mode: TlsMode::Disable,
            client_tls_cert: None,
            client_tls_key: None,
            client_tls_ca: None,
            server_tls_mode: TlsMode::Prefer,
            server_tls_ca: None,
            server_tls_negotiation: TlsNegotiation::default(),
            server_auth_methods: ServerAuthMethods::default(),
            autodb_idle_timeout: Duration::from_secs(3600),
            server_channel_binding: ChannelBinding::default(),
        }
    }
}

/// One server address as written: a host name or IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Reads `host`, `host:port`, `[v6]` or `[v6]:port`; `port` when none is
    /// written.
    pub fn parse(s: &str, port: u16) -> Result<Self, String> {
        let bad = || format!("{s:?} is not host, host:port or [address]:port");
        let (host, p) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
            match tail {
                "" => (h, None),
                t => (h, Some(t.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match p {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => port,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Keepalive and user-timeout settings of a TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// Send keepalive probes.
    pub keepalive: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
    /// TCP_USER_TIMEOUT (zero: the system's default).
    pub user_timeout: Duration,
}

impl TcpOptions {
    /// Sets no-delay, keepalive and TCP_USER_TIMEOUT on a socket (best
    /// effort: a platform without an option keeps its default).
    pub fn apply(&self, socket: socket2::SockRef<'_>) {
        let _ = socket.set_tcp_nodelay(true);
        if self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(self.idle)
                .with_interval(self.interval)
                .with_retries(self.count);
            let _ = socket.set_tcp_keepalive(&keepalive);
        }
        if !self.user_timeout.is_zero() {
            let _ = socket.set_tcp_user_timeout(Some(self.user_timeout));
        }
    }
}

/// The `[metrics]` table: where Prometheus scrapes `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the HTTP endpoint.
    pub listen: String,
}

/// The `[admin]` table: who may use the `pgmux` admin database.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Users (defined in `[users]`) allowed in the admin console.
    #[serde(default)]
    pub users: Vec<String>,
    /// Users allowed read-only (SHOW commands only), as PgBouncer's
    /// `stats_users`.
    #[serde(default)]
    pub stats_users: Vec<String>,
}

impl AdminSection {
    /// Whether `user` may use the console at all.
    pub fn allows(&self, user: &str) -> bool {
        self.users
            .iter()
            .chain(&self.stats_users)
            .any(|u| u == user)
    }
}

/// The whole file, as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[pgmux]`
    #[serde(default)]
    pub pgmux: General,
    /// `[databases.*]`
    #[serde(default)]
    pub databases: BTreeMap<String, Database>,
    /// `[users.*]`
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// `[metrics]` (absent: no endpoint).
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminSection,
    /// `[peers.ID]`: the other instances (and this one) by peer id, where
    /// cancel requests for their clients are forwarded.
    #[serde(default)]
    pub peers: BTreeMap<String, Peer>,
    /// The rules of `auth_hba_file`, read with the rest of the file so a
    /// reload applies both or neither.
    #[serde(skip)]
    pub hba: Option<std::sync::Arc<crate::auth::hba::Hba>>,
}

/// A `[peers.ID]` table: another pgmux instance's address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its host.
    #[serde(deserialize_with = "de::env_string")]
    pub host: String,
    /// Its client port.
    #[serde(default = "default_pgmux_port")]
    pub port: u16,
}

fn default_pgmux_port() -> u16 {
    6432
}

impl Config {
    /// Reads, parses and validates a config file (a `.ini` as PgBouncer's
    /// configuration); what was ignored is logged.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (cfg, warnings) = Self::load_with_warnings(path)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(cfg)
    }

    /// [`Config::load`], returning the warnings (keys of a PgBouncer file
    /// that pgmux ignores, with their lines) instead of logging them.
    /// Files that may hold secrets and that group or others can read are
    /// warned about too.
    pub fn load_with_warnings(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let (cfg, mut warnings) = if ini::is_ini(path) {
            ini::load(path)?
        } else {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Self::parse_with_warnings(&text)?
        };
        warnings.extend(cfg.server_tls_warnings());
        warnings.extend(cfg.long_name_warnings());
        warnings.extend(report::loose_mode(path, "config file"));
        let key = cfg.pgmux.client_tls_key.as_deref().map(Path::new);
        warnings.extend(key.and_then(|k| report::loose_mode(k, "client_tls_key")));
        let hba = cfg.pgmux.auth_hba_file.as_deref().map(Path::new);
        warnings.extend(hba.and_then(|h| report::loose_mode(h, "auth_hba_file")));
        Ok((cfg, warnings))
    }

    /// Databases and users whose names no client can send: PostgreSQL,
    /// and pgmux after it, cut a startup packet's names to 63 bytes.
    pub fn long_name_warnings(&self) -> Vec<String> {
        let long = |kind: &str, name: &String| {
            (name.len() > 63).then(|| {
                format!(
                    "{kind}.{name}: a name longer than 63 bytes cannot be reached (a client's \
                     names are cut to 63 bytes, as PostgreSQL cuts them)"
                )
            })
        };
        let dbs = self.databases.keys().filter_map(|n| long("databases", n));
        let users = self.users.keys().filter_map(|n| long("users", n));
        dbs.chain(users).collect()
    }

    /// The database a client's name reaches: its own entry, or the `*`
    /// fallback (PgBouncer's), which serves any name (as the server
    /// database of that name). The admin console's names are not reached
    /// through the fallback.
    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.get(name).or_else(|| {
            if name == ADMIN_DATABASE || name == PGBOUNCER_DATABASE {
                None
            } else {
                self.databases.get("*")
            }
        })
    }

    /// Parses and validates config text (reading `auth_hba_file`).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (cfg, warnings) = Self::parse_with_warnings(text)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Ok(cfg)
    }

    /// [`Config::parse`], returning what `auth_hba_file` reads differently
    /// from PgBouncer instead of logging it.
    fn parse_with_warnings(text: &str) -> Result<(Self, Vec<String>), ConfigError> {
        let missing = de::missing_env(text);
        if !missing.is_empty() {
            return Err(ConfigError::Invalid(missing));
        }
        let cfg: Config = toml::from_str(text).map_err(|e| report::toml_error(text, &e))?;
        cfg.finish()
    }

    /// The last step of every load: reads the rules file, then validates.
    fn finish(mut self) -> Result<(Self, Vec<String>), ConfigError> {
        let warnings = hba_file::load(&mut self)?;
        self.validate()?;
        Ok((self, warnings))
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.pgmux
            .listen
            .parse()
            .map_err(|e| ConfigError::Invalid(vec![format!("pgmux.listen: {e}")]))
    }

    /// The address of peer `id`, if configured.
    pub fn peer(&self, id: u16) -> Option<&Peer> {
        self.peers.get(&id.to_string())
    }

    /// TCP options of client sockets.
    pub fn client_tcp(&self) -> TcpOptions {
        let g = &self.pgmux;
        TcpOptions {
            keepalive: g.client_tcp_keepalive,
            idle: g.client_tcp_keepidle,
            interval: g.client_tcp_keepintvl,
            count: g.client_tcp_keepcnt,
            user_timeout: g.client_tcp_user_timeout,
        }
    }

    /// TCP options of server sockets.
    pub fn server_tcp(&self) -> TcpOptions {
        let g = &self.pgmux;
        TcpOptions {
            keepalive: g.tcp_keepalive,
            idle: g.tcp_keepidle,
            interval: g.tcp_keepintvl,
            count: g.tcp_keepcnt,
            user_timeout: g.tcp_user_timeout,
        }
    }

    /// The servers of a database, in the order written: `hosts` when set,
    /// else `host` and `port`.
    pub fn hosts(&self, db: &Database) -> Result<Vec<HostPort>, String> {
        if db.hosts.is_empty() {
            return Ok(vec![HostPort {
                host: db.host.clone(),
                port: db.port,
            }]);
        }
        db.hosts
            .iter()
            .map(|h| HostPort::parse(h, db.port))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        self.check_general(&mut errs);
        self.check_databases(&mut errs);
        self.check_users(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// `[pgmux]` and `[metrics]`: addresses, sizes, client TLS.
    fn check_general(&self, errs: &mut Vec<String>) {
        let g = &self.pgmux;
        if let Err(e) = g.listen.parse::<SocketAddr>() {
            errs.push(format!("pgmux.listen = {:?}: {e}", g.listen));
        }
        if g.default_pool_size == 0 {
            errs.push("pgmux.default_pool_size must be at least 1".into());
        }
        if g.max_client_conn == 0 {
            errs.push("pgmux.max_client_conn must be at least 1".into());
        }
        if g.peer_id > 16383 {
            errs.push("pgmux.peer_id must be between 0 and 16383".into());
        }
        for id in self.peers.keys() {
            if !id.parse::<u16>().is_ok_and(|n| (1..=16383).contains(&n)) {
                errs.push(format!("peers.{id}: a peer id is a number from 1 to 16383"));
            }
        }
        if !(1024..=1 << 30).contains(&g.max_message_size) {
            errs.push("pgmux.max_message_size must be between 1024 and 1073741824".into());
        }
        if g.client_tls_mode != TlsMode::Disable
            && (g.client_tls_cert.is_none() || g.client_tls_key.is_none())
        {
            errs.push("pgmux.client_tls_mode needs client_tls_cert and client_tls_key".into());
        }
        if g.auth_type == AuthType::Hba && g.auth_hba_file.is_none() {
            errs.push("pgmux.auth_type = \"hba\" needs auth_hba_file".into());
        }
        if g.client_tls_mode >= TlsMode::VerifyCa && g.client_tls_ca.is_none() {
            errs.push("pgmux.client_tls_mode verify-ca/verify-full needs client_tls_ca".into());
        }
        if let Some(m) = &self.metrics {
            if let Err(e) = m.listen.parse::<SocketAddr>() {
                errs.push(format!("metrics.listen = {:?}: {e}", m.listen));
            }
        }
    }

    /// `[databases.*]`: hosts, pool sizes, server credentials, server TLS.
    fn check_databases(&self, errs: &mut Vec<String>) {
        for (name, db) in &self.databases {
            if let Err(e) = self.hosts(db) {
                errs.push(format!("databases.{name}.hosts: {e}"));
            }
            if db.pool_size == Some(0) {
                errs.push(format!("databases.{name}.pool_size must be at least 1"));
            }
            if db.server_user.is_some() != db.server_password.is_some() {
                errs.push(format!(
                    "databases.{name}: server_user and server_password go together"
                ));
            }
            let pool = self.pool(db, None);
            if pool.tls_mode >= TlsMode::VerifyCa && pool.tls_ca.is_none() {
                errs.push(format!(
                    "databases.{name}: server_tls_mode verify-ca/verify-full needs server_tls_ca"
                ));
            }
            if pool.tls_negotiation == TlsNegotiation::Direct && !pool.tls_mode.required() {
                errs.push(format!(
                    "databases.{name}: server_tls_negotiation direct needs server_tls_mode \
                     require or stronger (a direct handshake has no plaintext to fall back to)"
                ));
            }
        }
    }

    /// `[users.*]`, `auth_user` and `[admin] users`: every user named is
    /// defined, and pgmux can log in to the server as each one it must.
    fn check_users(&self, errs: &mut Vec<String>) {
        let can_log_in = |u: &User| crate::auth::Secret::parse(&u.password).can_log_in_to_server();
        if let Some(u) = &self.pgmux.auth_user {
            match self.users.get(u) {
                None => errs.push(format!("pgmux.auth_user: {u:?} is not defined in [users]")),
                Some(user) if !can_log_in(user) => errs.push(format!(
                    "pgmux.auth_user: {u:?} needs a plaintext or md5 password to log in to the server"
                )),
                Some(_) => {}
            }
        }
        for u in self.admin.users.iter().chain(&self.admin.stats_users) {
            if !self.users.contains_key(u) {
                errs.push(format!("admin: {u:?} is not defined in [users]"));
            }
        }
        let lacking: Vec<&str> = self
            .databases
            .iter()
            .filter(|(_, d)| d.server_user.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        for (name, user) in &self.users {
            // A SCRAM verifier logs in to the server by pass-through (the
            // ClientKey of the client's own SCRAM login, which md5 also
            // uses for such a user).
            let passthrough = match self.pgmux.auth_type {
                AuthType::Trust => false,
                AuthType::Hba => !self.hba.as_ref().is_some_and(|h| h.has_trust()),
                _ => true,
            };
            if self.admin.allows(name) || can_log_in(user) || lacking.is_empty() || passthrough {
                continue;
            }
            errs.push(format!(
                "users.{name}.password is a SCRAM verifier and clients may log in by trust (auth_type or an auth_hba_file rule), \
                 so pgmux cannot log in to the server as {name}; set server_user and \
                 server_password on databases: {}",
                lacking.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let cfg = Config::parse(
            "[pgmux]\nlisten = \"127.0.0.1:7000\"\n[databases.blog]\n[users.app]\npassword = \"x\"\n",
        )
        .unwrap();
        assert_eq!(cfg.pgmux.default_pool_size, 20);
        assert_eq!(cfg.databases["blog"].port, 5432);
        assert!(!cfg.to_masked_toml().contains("\"x\""));
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = Config::parse("[pgmux]\nlisten = \"127.0.0.1:7000\"\npool_sise = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("pool_sise"), "{err}");
    }

    #[test]
    fn bad_duration_and_unset_env() {
        let err = Config::parse("[pgmux]\nquery_wait_timeout = \"3 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[users.a]\npassword = \"${PGMUX_UNSET_FOR_TEST}\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGMUX_UNSET_FOR_TEST"), "{err}");
    }

    #[test]
    fn names_no_client_can_send_are_named() {
        let long = "x".repeat(64);
        let cfg = Config::parse(&format!(
            "[databases.{long}]\n[databases.short]\n[users.{long}]\npassword = \"p\"\n"
        ))
        .unwrap();
        let w = cfg.long_name_warnings();
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
