//! All pools of the process, created on a (database, user)'s first login
//! and reconciled with a new configuration on reload.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Budget, Pool, PoolSettings};
use crate::auth::Secret;
use crate::config::Config;
use crate::server::ServerTarget;
use crate::stats::Metrics;

/// Identifies a pool: the client-visible database and the client's user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    /// Database name as clients write it.
    pub database: String,
    /// Client user name.
    pub user: String,
}

/// The process's pools.
pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, Pool>>,
    /// Pools whose database or user was removed, kept (and shown) until
    /// their last client and server are gone.
    retired: Mutex<Vec<(PoolKey, Pool)>>,
    /// Server login secrets of users found with `auth_query`, by pool.
    looked_up: Mutex<HashMap<PoolKey, Secret>>,
    /// Shared limits by (scope, name): `max_db_connections` per database,
    /// `max_user_connections` per user.
    budgets: Mutex<HashMap<(&'static str, String), Arc<Budget>>>,
    /// Databases that take no new clients (DISABLE).
    disabled: Mutex<std::collections::HashSet<String>>,
    /// Pools of databases reached through `*` with no client, since when.
    unused_autodb: Mutex<HashMap<PoolKey, std::time::Instant>>,
    /// Connections opened outside any pool, for lookups in databases
    /// reached through `*` before the client authenticated.
    one_shots: tokio::sync::Semaphore,
}

impl Default for PoolSet {
    fn default() -> Self {
        Self {
            pools: Default::default(),
            retired: Default::default(),
            looked_up: Default::default(),
            budgets: Default::default(),
            disabled: Default::default(),
            unused_autodb: Default::default(),
            one_shots: tokio::sync::Semaphore::new(MAX_ONE_SHOTS),
        }
    }
}

/// Connections [`PoolSet::connect_once`] opens at once; more wait.
const MAX_ONE_SHOTS: usize = 4;

/// Where a pool's servers are and how it is run, per `cfg`; `None` when the
/// database or user is not configured (nor `looked_up` by auth_query).
fn plan(
    cfg: &Config,
    key: &PoolKey,
    looked_up: Option<&Secret>,
) -> Option<(ServerTarget, PoolSettings)> {
    let db = cfg.database(&key.database)?;
    let user = cfg.users.get(&key.user);
    let user_secret = match user {
        // A verifier alone cannot log in: the pass-through keys can.
        Some(u) => match (Secret::parse(&u.password), looked_up) {
            (Secret::Scram(_), Some(keys @ Secret::ScramKeys(..))) => keys.clone(),
            (s, _) => s,
        },
        None => looked_up?.clone(),
    };
    let (server_user, password) = match (&db.server_user, &db.server_password) {
        (Some(u), Some(p)) => (u.clone(), Secret::parse(p)),
        _ => (key.user.clone(), user_secret),
    };
    let pool = cfg.pool(db, user);
    let target = ServerTarget {
        hosts: cfg.hosts(db).ok()?,
        target_session_attrs: db.target_session_attrs,
        load_balance: db.load_balance_hosts,
        dbname: db.dbname.clone().unwrap_or_else(|| key.database.clone()),
        user: server_user,
        password: Some(password),
        tls_mode: pool.tls_mode,
        tls_ca: pool.tls_ca,
        tls_negotiation: pool.tls_negotiation,
        auth_methods: pool.auth_methods,
        channel_binding: pool.channel_binding,
    };
    let g = &cfg.pgmux;
    let settings = PoolSettings {
        size: pool.size as usize,
        min_size: g.min_pool_size as usize,
        mode: pool.mode,
        wait_timeout: g.query_wait_timeout,
        connect_timeout: g.server_connect_timeout,
        tcp: cfg.server_tcp(),
        check_query: g.server_check_query.clone(),
        check_delay: g.server_check_delay,
        retry_max: g.server_login_retry,
        dns_ttl: g.dns_max_ttl,
        idle_timeout: g.server_idle_timeout,
        lifetime: g.server_lifetime,
        max_message_size: g.max_message_size,
        reset_query: g.server_reset_query.clone(),
        session_state: pool.session_state,
        reset_always: pool.reset_always,
        idle_transaction_timeout: pool.idle_transaction_timeout,
        client_idle_timeout: pool.client_idle_timeout,
        query_timeout: pool.query_timeout,
        attrs: db.target_session_attrs,
        reserve_size: pool.reserve_size as usize,
        reserve_timeout: g.reserve_pool_timeout,
    };
    Some((target, settings))
}

/// The TLS connector for a target's settings.
fn connector(t: &ServerTarget) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    crate::tls::connector::build(t.tls_mode, t.tls_ca.as_deref())
}

impl PoolSet {
    /// The pool for `key`, created from `cfg` if this is its first use.
    /// Fails when the database or user is not configured, or the server TLS
    /// settings can't be loaded.
    pub fn get(&self, cfg: &Config, metrics: &Metrics, key: &PoolKey) -> Result<Pool, String> {
        self.get_with(cfg, metrics, key, None)
    }

    /// [`get`](Self::get) for a user found by `auth_query`, logging in to the
    /// server with `secret`. A changed secret (new password) replaces the pool.
    pub fn get_with(
        &self,
        cfg: &Config,
        metrics: &Metrics,
        key: &PoolKey,
        secret: Option<Secret>,
    ) -> Result<Pool, String> {
        let mut pools = self.pools.lock();
        let mut new_secret = false;
        if let Some(s) = &secret {
            let mut looked_up = self.looked_up.lock();
            if looked_up.get(key) != Some(s) {
                looked_up.insert(key.clone(), s.clone());
                new_secret = true;
            }
        }
        let looked_up = self.looked_up.lock().get(key).cloned();
        if let Some(p) = pools.get(key) {
            if new_secret {
                // A new password: servers logged in with the old one go.
                if let Some((target, _)) = plan(cfg, key, looked_up.as_ref()) {
                    let connector = connector(&target)?;
                    p.retarget(target, connector);
                }
            }
            return Ok(p.clone());
        }
        let (target, settings) =
            plan(cfg, key, looked_up.as_ref()).ok_or("database or user is no longer configured")?;
        let connector = connector(&target)?;
        let metrics = metrics.pool(&key.database, &key.user);
        let budgets = vec![
            self.budget(
                "database",
                &key.database,
                cfg.database(&key.database).map_or(0, |d| cfg.db_limit(d)),
            ),
            self.budget("user", &key.user, cfg.user_limit(&key.user)),
        ];
        let pool = Pool::new(key.clone(), target, settings, connector, metrics, budgets);
        pools.insert(key.clone(), pool.clone());
        Ok(pool)
    }

    /// A server connection for `key` outside any pool, closed by the
    /// caller when done: for a lookup in a database reached through `*`
    /// before the client has authenticated, which must leave no pool, task
    /// or metric behind. At most [`MAX_ONE_SHOTS`] are open at once.
    pub async fn connect_once(
        &self,
        cfg: &Config,
        key: &PoolKey,
    ) -> Result<crate::server::ServerConn, String> {
        let (target, settings) =
            plan(cfg, key, None).ok_or("database or user is not configured")?;
        let tls = connector(&target)?;
        let opts = settings.connect_options();
        // The wait for a turn counts too: a flood of lookups must not
        // hold later ones for ever.
        let open = async {
            let _permit = self.one_shots.acquire().await.map_err(|e| e.to_string())?;
            crate::server::open(&target, tls.as_ref(), &opts)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(settings.wait_timeout, open)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    /// Drops the pools of databases reached through `*` that had no client
    /// for `autodb_idle_timeout` (PgBouncer's key): their servers close,
    /// and a later client makes a new pool. Returns how many went.
    pub fn drop_unused_autodb(&self, cfg: &Config, now: std::time::Instant) -> usize {
        let timeout = cfg.pgmux.autodb_idle_timeout;
        let mut unused = self.unused_autodb.lock();
        let mut pools = self.pools.lock();
        let mut dropped = Vec::new();
        pools.retain(|key, pool| {
            if cfg.databases.contains_key(&key.database) || pool.clients() > 0 {
                unused.remove(key);
                return true;
            }
            let since = *unused.entry(key.clone()).or_insert(now);
            if timeout.is_zero() || now.duration_since(since) < timeout {
                return true;
            }
            unused.remove(key);
            pool.retire();
            dropped.push((key.clone(), pool.clone()));
            false
        });
        let n = dropped.len();
        // The budgets stay: a client handed the pool just before it went
        // still draws on its database's limit, and a new pool of the same
        // database must share it. (They are made only for databases a
        // client authenticated to.) A dropped pool goes on serving such a
        // client, as a retired pool does.
        for (key, _) in &dropped {
            self.looked_up.lock().remove(key);
        }
        self.retired.lock().extend(dropped);
        n
    }

    /// The budget of a database or user, created on first use.
    fn budget(&self, scope: &'static str, name: &str, limit: u32) -> Arc<Budget> {
        self.budgets
            .lock()
            .entry((scope, name.to_owned()))
            .or_insert_with(|| Budget::new(scope, name, limit as usize))
            .clone()
    }

    /// Server connections open (or opening) under a database's budget,
    /// and its limit (0: none).
    pub fn database_usage(&self, database: &str) -> (usize, usize) {
        self.budgets
            .lock()
            .get(&("database", database.to_owned()))
            .map_or((0, 0), |b| b.usage())
    }

    /// Stops (DISABLE) or resumes (ENABLE) new clients of a database.
    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut set = self.disabled.lock();
        if disabled {
            set.insert(database.to_owned());
        } else {
            set.remove(database);
        }
    }

    /// Whether a database takes no new clients.
    pub fn is_disabled(&self, database: &str) -> bool {
        self.disabled.lock().contains(database)
    }

    /// Every budget, for monitoring.
    pub fn budgets(&self) -> Vec<Arc<Budget>> {
        self.budgets.lock().values().cloned().collect()
    }

    /// Every pool, for monitoring, in key order: the live ones, then the
    /// retired ones still draining.
    pub fn all(&self) -> Vec<(PoolKey, Pool)> {
        let mut v: Vec<_> = self
            .pools
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut retired = self.retired.lock();
        retired.retain(|(_, p)| !p.is_drained());
        v.extend(retired.iter().cloned());
        v
    }

    /// Brings the pools in line with a new configuration. Pools whose
    /// database or user is gone are retired (their sessions go on, then
    /// their servers close); pools whose servers moved (hosts, TLS, server
    /// login) are pointed at the new ones in place, so every client moves
    /// at its next transaction; others take the new settings in place.
    /// Returns one line per change.
    pub fn reconcile(&self, cfg: &Config) -> Vec<String> {
        let mut changes = Vec::new();
        let mut pools = self.pools.lock();
        let looked_up = self.looked_up.lock();
        let mut retired = Vec::new();
        pools.retain(|key, pool| {
            let name = pool.name().to_owned();
            let found = looked_up.get(key);
            match plan(cfg, key, found) {
                None => {
                    changes.push(format!(
                        "pool {name}: removed (its sessions go on; servers close after the last)"
                    ));
                    pool.retire();
                    retired.push((key.clone(), pool.clone()));
                    false
                }
                Some((target, settings)) => {
                    if target != *pool.target() {
                        match connector(&target) {
                            Ok(tls) => {
                                changes.push(format!(
                                    "pool {name}: server changed; clients move at their next transaction, old servers close as released"
                                ));
                                pool.retarget(target, tls);
                            }
                            Err(e) => changes.push(format!("pool {name}: server unchanged: {e}")),
                        }
                    }
                    let old = pool.settings();
                    if *old != settings {
                        if old.size != settings.size {
                            changes.push(format!(
                                "pool {name}: size {} -> {}",
                                old.size, settings.size
                            ));
                        } else {
                            changes.push(format!("pool {name}: settings updated"));
                        }
                        pool.update_settings(settings);
                    }
                    true
                }
            }
        });
        self.retired.lock().extend(retired);
        for ((scope, name), b) in self.budgets.lock().iter() {
            let limit = match *scope {
                "database" => cfg.database(name).map_or(0, |d| cfg.db_limit(d)),
                _ => cfg.user_limit(name),
            } as usize;
            if b.usage().1 != limit {
                changes.push(format!(
                    "{scope} {name}: connection limit {} -> {limit}",
                    b.usage().1
                ));
                b.set_limit(limit);
            }
        }
        changes
    }

    /// The pools of one database, or all when `database` is `None`.
    pub fn matching(&self, database: Option<&str>) -> Vec<Pool> {
        self.all()
            .into_iter()
            .filter(|(k, _)| database.is_none_or(|d| d == k.database))
            .map(|(_, p)| p)
            .collect()
    }
}
