//! Users found by `auth_query` (or found missing), so a burst of logins
//! costs one server query. Bounded in size and in age: the names come from
//! clients that have not authenticated yet.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use super::UserAuth;

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
    pub fn get(&self, key: &(String, String), ttl: Duration) -> Option<Found> {
        let mut cache = self.0.lock();
        let (found, at) = cache.get(key)?;
        if at.elapsed() < ttl {
            return Some(found.clone());
        }
        cache.pop(key);
        None
    }

    /// Records a result made now.
    pub fn insert(&self, key: (String, String), found: Found) {
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
