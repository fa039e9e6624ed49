//! All pools of the process, created on a (database, user)'s first login.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{Pool, PoolSettings};
use crate::auth::Secret;
use crate::config::Config;
use crate::server::ServerTarget;

/// Identifies a pool: the client-visible database and the client's user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Database name as clients write it.
    pub database: String,
    /// Client user name.
    pub user: String,
}

/// The process's pools.
#[derive(Default)]
pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

impl PoolSet {
    /// The pool for `key`, created from `cfg` if this is its first use.
    /// `None` when the database or user is not configured.
    pub fn get(&self, cfg: &Config, key: &PoolKey) -> Option<Pool> {
        let db = cfg.databases.get(&key.database)?;
        let user = cfg.users.get(&key.user)?;
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(key) {
            return Some(p.clone());
        }
        let (server_user, password) = match (&db.server_user, &db.server_password) {
            (Some(u), Some(p)) => (u.clone(), Secret::parse(p)),
            _ => (key.user.clone(), Secret::parse(&user.password)),
        };
        let target = ServerTarget {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone().unwrap_or_else(|| key.database.clone()),
            user: server_user,
            password: Some(password),
        };
        let g = &cfg.pgmux;
        let settings = PoolSettings {
            size: cfg.pool_size(db) as usize,
            min_size: g.min_pool_size as usize,
            mode: cfg.pool_mode(db, user),
            wait_timeout: g.query_wait_timeout,
            connect_timeout: g.server_connect_timeout,
            idle_timeout: g.server_idle_timeout,
            lifetime: g.server_lifetime,
            max_message_size: g.max_message_size,
            reset_query: g.server_reset_query.clone(),
        };
        let pool = Pool::new(format!("{}/{}", key.database, key.user), target, settings);
        pools.insert(key.clone(), pool.clone());
        Some(pool)
    }

    /// Every pool, for monitoring.
    pub fn all(&self) -> Vec<(PoolKey, Pool)> {
        self.pools
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }
}
