//! `auth_query`: users missing from the config are looked up on the server
//! (as `auth_user`, in the database the client asked for), and cached for
//! `auth_query_cache`, misses included, so a burst of logins costs one query.
//! Only configured databases are looked up, and the cache is bounded: the
//! names come from clients that have not authenticated yet.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use super::startup::LoginError;
use crate::auth::Secret;
use crate::config::Config;
use crate::context::{Context, UserAuth};
use crate::pool::PoolKey;
use crate::protocol::SqlState;

/// Most (database, user) pairs remembered; the least recently used go first.
const CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

type Found = Option<Arc<UserAuth>>;

/// Results of `auth_query` lookups by (database, user), with when each was
/// made; bounded in size and in age.
pub struct AuthCache(Mutex<LruCache<(String, String), (Found, Instant)>>);

impl Default for AuthCache {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(CACHE_ENTRIES)))
    }
}

impl AuthCache {
    /// A result younger than `ttl`; an older one is dropped.
    fn get(&self, key: &(String, String), ttl: Duration) -> Option<Found> {
        let mut cache = self.0.lock();
        let (found, at) = cache.get(key)?;
        if at.elapsed() < ttl {
            return Some(found.clone());
        }
        cache.pop(key);
        None
    }

    fn insert(&self, key: (String, String), found: Found) {
        self.0.lock().put(key, (found, Instant::now()));
    }

    /// Number of results held.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether no result is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unavailable(e: impl std::fmt::Display) -> LoginError {
    LoginError::Fatal(SqlState::CANNOT_CONNECT, format!("auth_query failed: {e}"))
}

/// The user's secret as the server stores it, or `None` when there is no
/// such role (or it has no password).
pub async fn lookup(
    ctx: &Context,
    cfg: &Config,
    database: &str,
    user: &str,
) -> Result<Option<Arc<UserAuth>>, LoginError> {
    let key = (database.to_owned(), user.to_owned());
    if let Some(auth) = ctx.auth_cache.get(&key, cfg.pgmux.auth_query_cache) {
        return Ok(auth);
    }
    let Some(auth_user) = cfg.pgmux.auth_user.clone() else {
        return Ok(None);
    };
    let pool_key = PoolKey {
        database: database.to_owned(),
        user: auth_user,
    };
    let pool = ctx
        .pools
        .get(cfg, &ctx.metrics, &pool_key)
        .map_err(unavailable)?;
    let mut conn = pool.get().await.map_err(unavailable)?;
    let row = conn
        .query_row(&cfg.pgmux.auth_query, &[user], cfg.pgmux.max_message_size)
        .await;
    let row = match row {
        Ok(r) => {
            conn.release();
            r
        }
        Err(e) => {
            conn.discard();
            return Err(unavailable(e));
        }
    };
    let auth = row
        .and_then(|cols| cols.into_iter().nth(1).flatten())
        .map(|stored| {
            let secret = Secret::parse(&stored);
            let scram = secret.scram_verifier();
            Arc::new(UserAuth { secret, scram })
        });
    ctx.auth_cache.insert(key, auth.clone());
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_aged() {
        let cache = AuthCache::default();
        for i in 0..CACHE_ENTRIES.get() + 500 {
            cache.insert(("db".into(), format!("u{i}")), None);
        }
        assert_eq!(cache.len(), CACHE_ENTRIES.get());
        let key = ("db".to_owned(), "u10499".to_owned());
        assert!(cache.get(&key, Duration::from_secs(60)).is_some());
        assert!(cache
            .get(&("db".into(), "u0".into()), Duration::from_secs(60))
            .is_none());
        assert!(cache.get(&key, Duration::ZERO).is_none());
        assert_eq!(cache.len(), CACHE_ENTRIES.get() - 1);
    }
}
