//! Connection budgets shared by several pools: `max_db_connections` (all
//! users of a database) and `max_user_connections` (all databases of a
//! user). A pool takes a unit before it opens a server connection and gives
//! it back when the connection closes. A pool that finds its budget spent
//! marks it starved: another pool of the budget then closes an idle server
//! (now, or when one is released with nobody waiting for it), and the
//! units that come back wake the starved pools.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Pool, Shared};

/// One shared limit on server connections.
pub struct Budget {
    /// `database` or `user`, for logs and metrics.
    pub scope: &'static str,
    /// The database or user name.
    pub name: String,
    /// Maximum connections (0: unlimited).
    limit: AtomicUsize,
    /// Connections open or opening under it.
    used: AtomicUsize,
    /// A pool could not open for lack of units.
    starved: AtomicBool,
    /// The pools drawing on it.
    members: Mutex<Vec<Weak<Shared>>>,
}

impl Budget {
    /// A budget of `limit` connections (0: unlimited).
    pub fn new(scope: &'static str, name: &str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            scope,
            name: name.to_owned(),
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
        })
    }

    /// Connections open or opening under it, and its limit (0: none).
    pub fn usage(&self) -> (usize, usize) {
        (
            self.used.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        )
    }

    /// Changes the limit (reload); a raised one wakes starved pools.
    pub fn set_limit(self: &Arc<Self>, limit: usize) {
        let old = self.limit.swap(limit, Ordering::Relaxed);
        if limit == 0 || limit > old {
            self.wake();
        }
    }

    /// Adds a pool drawing on it.
    pub(super) fn join(&self, pool: Weak<Shared>) {
        let mut m = self.members.lock();
        m.retain(|w| w.strong_count() > 0);
        m.push(pool);
    }

    /// Takes one unit, if the limit allows.
    pub(super) fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (limit == 0 || u < limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// Gives a unit back (a connection closed); starved pools are woken.
    pub(super) fn give_back(self: &Arc<Self>) {
        self.used.fetch_sub(1, Ordering::AcqRel);
        if self.starved.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Gives back a unit taken for an open that did not happen (another
    /// budget refused), without waking anyone.
    pub(super) fn untake(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a pool is waiting for units.
    pub(super) fn is_starved(&self) -> bool {
        self.starved.load(Ordering::Relaxed)
    }

    /// A pool needs a unit and there is none: one idle server of the
    /// budget's pools is closed to make room. Runs on its own task: it
    /// locks other pools, which the caller (under its own pool's lock)
    /// must not.
    pub(super) fn starve(self: &Arc<Self>) {
        if self.starved.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::debug!(scope = self.scope, name = %self.name, "connection budget spent; closing an idle server to make room");
        let budget = self.clone();
        tokio::spawn(async move {
            for pool in budget.pools() {
                if pool.close_one_idle() {
                    return;
                }
            }
        });
    }

    /// Units came back: every member pool with waiting clients tries to
    /// open again (on its own task, for the same reason as `starve`).
    fn wake(self: &Arc<Self>) {
        self.starved.store(false, Ordering::Relaxed);
        let budget = self.clone();
        tokio::spawn(async move {
            for pool in budget.pools() {
                pool.open_for_waiters();
            }
        });
    }

    fn pools(&self) -> Vec<Pool> {
        self.members
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|shared| Pool { shared })
            .collect()
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (used, limit) = self.usage();
        write!(f, "Budget({} {}: {used}/{limit})", self.scope, self.name)
    }
}
