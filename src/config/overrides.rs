//! The per-pool tables, `[databases.NAME]` and `[users.NAME]`, and the one
//! place where what they override is resolved against `[pgmux]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    de, ChannelBinding, Config, LoadBalanceHosts, PoolMode, ServerAuthMethods, SessionState,
    TargetSessionAttrs, TlsMode, TlsNegotiation,
};

/// Declares a per-pool table with the settings that `[databases.NAME]` and
/// `[users.NAME]` may both override, each written once here with its serde
/// attributes and resolved by [`Config::pool`].
///
/// The fields stay flat, as in the file: with serde's `flatten`, a typo
/// would no longer be refused with its line. The table's own fields go
/// before `pool_mode`, `between` it and `session_state`, and `after` the
/// timeouts, so that each table keeps the key order that `pgmux check`
/// prints and that a typo's error lists.
macro_rules! with_overrides {
    (
        $(#[$attr:meta])*
        pub struct $name:ident { $($head:tt)* }
        between { $($between:tt)* }
        after { $($tail:tt)* }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($head)*
            /// Overrides `[pgmux] pool_mode` (a user's beats its database's).
            #[serde(default)]
            pub pool_mode: Option<PoolMode>,
            $($between)*
            /// Overrides `[pgmux] session_state` (a user's beats its
            /// database's).
            #[serde(default)]
            pub session_state: Option<SessionState>,
            /// Overrides `[pgmux] server_reset_query_always` (a user's beats
            /// its database's).
            #[serde(default)]
            pub server_reset_query_always: Option<bool>,
            /// Overrides `[pgmux] idle_transaction_timeout` (a user's beats
            /// its database's).
            #[serde(
                default,
                deserialize_with = "de::opt_duration",
                serialize_with = "de::ser_opt_duration"
            )]
            pub idle_transaction_timeout: Option<Duration>,
            /// Overrides `[pgmux] client_idle_timeout` (a user's beats its
            /// database's).
            #[serde(
                default,
                deserialize_with = "de::opt_duration",
                serialize_with = "de::ser_opt_duration"
            )]
            pub client_idle_timeout: Option<Duration>,
            /// Overrides `[pgmux] query_timeout` (a user's beats its
            /// database's).
            #[serde(
                default,
                deserialize_with = "de::opt_duration",
                serialize_with = "de::ser_opt_duration"
            )]
            pub query_timeout: Option<Duration>,
            $($tail)*
        }
    };
}

with_overrides! {
    /// A `[databases.NAME]` table: where a client-visible database lives.
    #[derive(Debug, Clone, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Database {
        /// Server host.
        #[serde(default = "default_host", deserialize_with = "de::env_string")]
        pub host: String,
        /// Server port.
        #[serde(default = "default_port")]
        pub port: u16,
        /// Several servers, `"host:port"` (or `"host"` with `port`), tried in
        /// order (or randomly, see `load_balance_hosts`) until one qualifies
        /// under `target_session_attrs`; replaces `host` when set.
        #[serde(default, deserialize_with = "de::env_strings")]
        pub hosts: Vec<String>,
        /// Which of the hosts the pool may use (libpq's meaning).
        #[serde(default)]
        pub target_session_attrs: TargetSessionAttrs,
        /// Spread connections over the qualifying hosts (`random`) or fill the
        /// first one that qualifies (`disable`).
        #[serde(default)]
        pub load_balance_hosts: LoadBalanceHosts,
        /// Database name on the server (default: the table's name).
        #[serde(default, deserialize_with = "de::opt_env_string")]
        pub dbname: Option<String>,
        /// Pool size (default: `default_pool_size`).
        #[serde(default)]
        pub pool_size: Option<u32>,
        /// Overrides `[pgmux] max_db_connections` for this database.
        #[serde(default)]
        pub max_db_connections: Option<u32>,
        /// Overrides `[pgmux] reserve_pool_size` for this database.
        #[serde(default)]
        pub reserve_pool: Option<u32>,
    }
    between {}
    after {
        /// Log in to the server as this role instead of the client's.
        #[serde(default, deserialize_with = "de::opt_env_string")]
        pub server_user: Option<String>,
        /// Password for `server_user`.
        #[serde(
            default,
            deserialize_with = "de::opt_env_string",
            serialize_with = "de::ser_opt_secret"
        )]
        pub server_password: Option<String>,
        /// Overrides `[pgmux] server_tls_mode` for this database.
        #[serde(default)]
        pub server_tls_mode: Option<TlsMode>,
        /// Overrides `[pgmux] server_tls_ca` for this database.
        #[serde(default)]
        pub server_tls_ca: Option<String>,
        /// Overrides `[pgmux] server_tls_negotiation` for this database.
        #[serde(default)]
        pub server_tls_negotiation: Option<TlsNegotiation>,
        /// Overrides `[pgmux] server_auth_methods` for this database.
        #[serde(default)]
        pub server_auth_methods: Option<ServerAuthMethods>,
        /// Overrides `[pgmux] server_channel_binding` for this database.
        #[serde(default)]
        pub server_channel_binding: Option<ChannelBinding>,
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

with_overrides! {
    /// A `[users.NAME]` table. `Default` has an empty password: it is only
    /// a base for struct updates (a PgBouncer userlist entry).
    #[derive(Debug, Clone, Default, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct User {
        /// Plaintext, `md5<hex>` or a `SCRAM-SHA-256$...` verifier.
        #[serde(deserialize_with = "de::env_string", serialize_with = "de::ser_secret")]
        pub password: String,
    }
    between {
        /// Overrides `[pgmux] max_user_connections` for this user.
        #[serde(default)]
        pub max_user_connections: Option<u32>,
    }
    after {}
}

/// What one (database, user) pool runs with once its overrides are
/// resolved: the user's setting, else the database's, else `[pgmux]`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Server connections of the pool.
    pub size: u32,
    /// Connections beyond `size` once a client waited `reserve_pool_timeout`.
    pub reserve_size: u32,
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// Session state that cannot move, in transaction mode: pin or error.
    pub session_state: SessionState,
    /// Every transaction ends with the check that follows code pgmux
    /// cannot read (transaction mode).
    pub reset_always: bool,
    /// Client idle inside a transaction: disconnected past this (0: never).
    pub idle_transaction_timeout: Duration,
    /// Client idle outside a transaction: disconnected past this (0: never).
    pub client_idle_timeout: Duration,
    /// A request running past this is cancelled on the server (0: never).
    pub query_timeout: Duration,
    /// TLS toward the database's servers.
    pub tls_mode: TlsMode,
    /// PEM CA bundle the servers' certificates must chain to.
    pub tls_ca: Option<String>,
    /// How TLS toward the servers starts.
    pub tls_negotiation: TlsNegotiation,
    /// How the servers may make pgmux authenticate.
    pub auth_methods: ServerAuthMethods,
    /// SCRAM channel binding toward the servers.
    pub channel_binding: ChannelBinding,
}

impl Config {
    /// The settings of the pool of `db` for `user` (`None`: a user found
    /// by `auth_query`, or a database's own settings alone). Every override
    /// of `[databases.NAME]` and `[users.NAME]` is resolved here and nowhere
    /// else, so the precedence cannot drift between the pools, the admin
    /// console and validation.
    pub fn pool(&self, db: &Database, user: Option<&User>) -> PoolConfig {
        let g = &self.pgmux;
        // Both tables and [pgmux] name a shared setting alike.
        macro_rules! pick {
            ($field:ident) => {
                user.and_then(|u| u.$field)
                    .or(db.$field)
                    .unwrap_or(g.$field)
            };
        }
        PoolConfig {
            size: db.pool_size.unwrap_or(g.default_pool_size),
            reserve_size: db.reserve_pool.unwrap_or(g.reserve_pool_size),
            mode: pick!(pool_mode),
            session_state: pick!(session_state),
            reset_always: pick!(server_reset_query_always),
            idle_transaction_timeout: pick!(idle_transaction_timeout),
            client_idle_timeout: pick!(client_idle_timeout),
            query_timeout: pick!(query_timeout),
            tls_mode: db.server_tls_mode.unwrap_or(g.server_tls_mode),
            tls_ca: db.server_tls_ca.clone().or_else(|| g.server_tls_ca.clone()),
            tls_negotiation: db
                .server_tls_negotiation
                .unwrap_or(g.server_tls_negotiation),
            auth_methods: db.server_auth_methods.unwrap_or(g.server_auth_methods),
            channel_binding: db
                .server_channel_binding
                .unwrap_or(g.server_channel_binding),
        }
    }

    /// The limit on a database's server connections, all its pools
    /// together (0: none). Not in [`PoolConfig`]: a limit belongs to the
    /// database, whichever pool asks.
    pub fn db_limit(&self, db: &Database) -> u32 {
        db.max_db_connections
            .unwrap_or(self.pgmux.max_db_connections)
    }

    /// The limit on a user's server connections, all its pools together
    /// (0: none); a user found by `auth_query` has `[pgmux]`'s.
    pub fn user_limit(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.pgmux.max_user_connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn a_user_beats_its_database_which_beats_pgmux() {
        let cfg = config(
            r#"
            [pgmux]
            pool_mode = "transaction"
            session_state = "pin"
            idle_transaction_timeout = "1s"
            client_idle_timeout = "2s"
            query_timeout = "3s"
            [databases.set]
            pool_mode = "session"
            session_state = "error"
            idle_transaction_timeout = "10s"
            client_idle_timeout = "20s"
            query_timeout = "30s"
            [databases.bare]
            [users.set]
            password = "x"
            pool_mode = "transaction"
            session_state = "pin"
            idle_transaction_timeout = "100s"
            client_idle_timeout = "200s"
            query_timeout = "300s"
            [users.bare]
            password = "x"
            "#,
        );
        let resolved = |db: &str, user: Option<&str>| {
            let p = cfg.pool(&cfg.databases[db], user.map(|u| &cfg.users[u]));
            let timeouts = [
                p.idle_transaction_timeout,
                p.client_idle_timeout,
                p.query_timeout,
            ]
            .map(|d| d.as_secs());
            (p.mode, p.session_state, timeouts)
        };
        use PoolMode::*;
        use SessionState::*;
        assert_eq!(
            resolved("set", Some("set")),
            (Transaction, Pin, [100, 200, 300])
        );
        assert_eq!(resolved("bare", Some("set")), resolved("set", Some("set")));
        assert_eq!(
            resolved("set", Some("bare")),
            (Session, Error, [10, 20, 30])
        );
        assert_eq!(resolved("set", None), resolved("set", Some("bare")));
        assert_eq!(
            resolved("bare", Some("bare")),
            (Transaction, Pin, [1, 2, 3])
        );
        assert_eq!(resolved("bare", None), resolved("bare", Some("bare")));
    }

    #[test]
    fn a_database_beats_pgmux_for_its_own_settings() {
        let cfg = config(
            r#"
            [pgmux]
            default_pool_size = 4
            reserve_pool_size = 1
            max_db_connections = 9
            max_user_connections = 8
            server_tls_mode = "require"
            server_tls_ca = "/pgmux.pem"
            [databases.set]
            pool_size = 40
            reserve_pool = 10
            max_db_connections = 90
            server_tls_mode = "verify-full"
            server_tls_ca = "/db.pem"
            [databases.bare]
            [users.set]
            password = "x"
            max_user_connections = 80
            "#,
        );
        let (set, bare) = (&cfg.databases["set"], &cfg.databases["bare"]);
        let p = cfg.pool(set, Some(&cfg.users["set"]));
        assert_eq!((p.size, p.reserve_size), (40, 10));
        assert_eq!(
            (p.tls_mode, p.tls_ca.as_deref()),
            (TlsMode::VerifyFull, Some("/db.pem"))
        );
        let p = cfg.pool(bare, None);
        assert_eq!((p.size, p.reserve_size), (4, 1));
        assert_eq!(
            (p.tls_mode, p.tls_ca.as_deref()),
            (TlsMode::Require, Some("/pgmux.pem"))
        );
        assert_eq!((cfg.db_limit(set), cfg.db_limit(bare)), (90, 9));
        assert_eq!(
            (cfg.user_limit("set"), cfg.user_limit("looked-up")),
            (80, 8)
        );
    }

    #[test]
    fn typos_in_either_table_name_their_line_and_every_key_in_order() {
        let err = Config::parse("[users.a]\npassword = \"x\"\nquery_timout = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(
            err.contains(
                "unknown field `query_timout`, expected one of `password`, `pool_mode`, \
                 `max_user_connections`, `session_state`, `server_reset_query_always`, \
                 `idle_transaction_timeout`, `client_idle_timeout`, `query_timeout`"
            ),
            "{err}"
        );
        let err = Config::parse("[databases.a]\nhost = \"h\"\n\nmax_user_connections = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(
            err.contains(
                "expected one of `host`, `port`, `hosts`, `target_session_attrs`, \
                 `load_balance_hosts`, `dbname`, `pool_size`, `max_db_connections`, \
                 `reserve_pool`, `pool_mode`, `session_state`, `server_reset_query_always`, \
                 `idle_transaction_timeout`, `client_idle_timeout`, `query_timeout`, \
                 `server_user`, `server_password`, \
                 `server_tls_mode`, `server_tls_ca`, `server_tls_negotiation`, \
                 `server_auth_methods`, `server_channel_binding`"
            ),
            "{err}"
        );
        let err = Config::parse("[databases.a]\nquery_timeout = \"30\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("needs a unit"),
            "{err}"
        );
    }
}
