//! The synchronous state of one pool. No `.await` happens under its lock:
//! every method decides and returns, and the async layer acts on the result.
//!
//! Connections are boxed, in the idle list too: taking one and lending it
//! then moves a pointer, where moving the connection itself (hundreds of
//! bytes, several times per checkout and checkin) was a tenth of pgmux's own
//! instructions per transaction.
#![allow(clippy::vec_box)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::budget::Budget;
use super::PoolError;
use crate::server::{Failure, ServerConn};

/// What a waiting client receives.
pub type Delivery = Result<Box<ServerConn>, PoolError>;

/// One open server connection, as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Backend process id.
    pub pid: i32,
    /// Server address.
    pub addr: SocketAddr,
    /// When it was opened.
    pub since: SystemTime,
    /// The pool generation it belongs to (older ones close when released).
    pub generation: u64,
}

/// Counts and queues of one pool.
#[derive(Debug, Default)]
pub struct Inner {
    /// Connections ready for use, most recently used last.
    pub idle: VecDeque<Box<ServerConn>>,
    /// Open or opening connections, idle or not: never above the pool size.
    pub total: usize,
    /// Connections being opened right now.
    pub opening: usize,
    /// Clients waiting for a connection, oldest first, with when they began.
    pub waiters: VecDeque<(Instant, oneshot::Sender<Delivery>)>,
    /// Every open connection by id.
    pub servers: HashMap<u64, ServerRow>,
    /// Failed attempts to open a connection since the last success.
    pub failures: u32,
    /// After a failure, no attempt starts before this (but the one retry).
    pub backoff_until: Option<Instant>,
    /// A retry is scheduled for `backoff_until`.
    pub retry_pending: bool,
    /// The last failure to open a connection, until one succeeds.
    pub last_error: Option<(PoolError, Failure)>,
    /// Addresses whose connections opened before the instant must not be
    /// lent again: the host changed role, its name no longer resolves to
    /// it, or a connection to it died under a client.
    pub stale_addrs: Vec<(SocketAddr, Instant)>,
    /// Shared limits this pool's connections count against.
    pub budgets: Vec<Arc<Budget>>,
    /// Connections allowed beyond the size once a client has waited
    /// `reserve_timeout` (the reserve pool).
    pub reserve_size: usize,
    /// How long the oldest client waits before the reserve opens.
    pub reserve_timeout: Duration,
}

/// Whether to open a connection for a new waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Nothing to do: one is opening, or the pool is full.
    No,
    /// Open one now.
    Now,
    /// Open one at this instant (the end of a backoff).
    At(Instant),
}

/// The pause before the next attempt after `failures` failures in a row:
/// 100ms doubling up to `max`, the upper half of it at random so that
/// pools (and pgmux instances) do not retry in step.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    use rand::RngExt;
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The outcome of asking for a connection.
pub enum Take {
    /// An idle connection.
    Ready(Box<ServerConn>),
    /// Wait on this receiver; `Open` says whether (and when) the caller
    /// must start a new connection for the pool.
    Wait(oneshot::Receiver<Delivery>, Open),
    /// The pool failed to open a connection moments ago for a reason
    /// waiting will not fix (backoff running): this error, at once.
    Fail(PoolError),
}

impl Inner {
    /// Takes an idle connection or joins the queue. Idle connections that
    /// went bad or are too old are dropped on the way (and returned so the
    /// caller can drop them outside the lock).
    pub fn take(
        &mut self,
        size: usize,
        lifetime: Duration,
        generation: u64,
        dead: &mut Vec<Box<ServerConn>>,
    ) -> Take {
        if let Some(conn) = self.take_idle(lifetime, generation, Instant::now(), dead) {
            return Take::Ready(conn);
        }
        if let Some((err, kind)) = &self.last_error {
            if *kind != Failure::Transient && self.in_backoff(Instant::now()) {
                return Take::Fail(err.clone());
            }
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back((Instant::now(), tx));
        if self.reserve_open(size) {
            return Take::Wait(rx, Open::Now);
        }
        Take::Wait(rx, self.schedule_retry())
    }

    fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }

    /// After failures, when nothing is opening: the one retry, at the end
    /// of the backoff (`Open::No` when it is already scheduled).
    pub fn schedule_retry(&mut self) -> Open {
        match self.backoff_until {
            Some(t) if self.failures > 0 && self.opening == 0 && !self.retry_pending => {
                self.retry_pending = true;
                Open::At(t)
            }
            _ => Open::No,
        }
    }

    /// The scheduled retry is due: the backoff is over.
    pub fn retry_due(&mut self) {
        self.retry_pending = false;
        self.backoff_until = None;
    }

    /// Whether a connection to `addr` opened at `opened` must not be lent.
    pub fn is_stale_addr(&self, addr: SocketAddr, opened: Instant) -> bool {
        self.stale_addrs
            .iter()
            .any(|(a, since)| *a == addr && opened <= *since)
    }

    /// Connections to `addr` opened until now go when next seen; idle ones
    /// are returned to be closed outside the lock.
    pub fn mark_stale(&mut self, addr: SocketAddr, now: Instant) -> Vec<Box<ServerConn>> {
        self.stale_addrs.retain(|(a, _)| *a != addr);
        self.stale_addrs.push((addr, now));
        self.remove_idle(|c, _| c.key.addr == addr)
    }

    /// Removes the idle connections `unwanted` picks (it also sees the
    /// pool's total as it shrinks), for closing outside the lock.
    pub fn remove_idle(
        &mut self,
        mut unwanted: impl FnMut(&ServerConn, usize) -> bool,
    ) -> Vec<Box<ServerConn>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            if unwanted(&self.idle[i], self.total) {
                if let Some(c) = self.idle.remove(i) {
                    self.forget(c.id);
                    out.push(c);
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes the most recently used idle connection that is still good,
    /// dropping bad or old ones on the way (into `dead`, to be closed
    /// outside the lock).
    pub fn take_idle(
        &mut self,
        lifetime: Duration,
        generation: u64,
        now: Instant,
        dead: &mut Vec<Box<ServerConn>>,
    ) -> Option<Box<ServerConn>> {
        while let Some(conn) = self.idle.pop_back() {
            if conn.age(now) < lifetime
                && conn.generation >= generation
                && conn.is_clean_idle(now)
                && !self.is_stale_addr(conn.key.addr, conn.created())
            {
                return Some(conn);
            }
            self.forget(conn.id);
            dead.push(conn);
        }
        None
    }

    /// Waiting clients whose wait has not been abandoned.
    pub fn live_waiters(&self) -> usize {
        self.waiters.iter().filter(|(_, w)| !w.is_closed()).count()
    }

    /// How long the oldest live waiter has waited.
    pub fn max_wait(&self) -> Duration {
        self.waiters
            .iter()
            .find(|(_, w)| !w.is_closed())
            .map(|(t, _)| t.elapsed())
            .unwrap_or_default()
    }

    /// Counts a new connection to open, if there is room and someone waits
    /// (after failures: one attempt at a time, none during the backoff).
    /// Room is the pool's size, plus the reserve once the oldest client has
    /// waited `reserve_timeout`, within the shared budgets.
    pub fn reserve_open(&mut self, size: usize) -> bool {
        // Cheapest tests first: a full pool (the common case under load)
        // decides without walking the waiters.
        let room = self.total < size
            || (self.reserve_size > 0
                && self.total < size + self.reserve_size
                && self.max_wait() >= self.reserve_timeout);
        let held_back = self.failures > 0 && (self.opening > 0 || self.in_backoff(Instant::now()));
        room && !held_back && self.opening < self.live_waiters() && self.count_open()
    }

    /// Counts a connection about to be opened, if every budget has a unit
    /// for it (a spent one is marked starved so room is made).
    pub fn count_open(&mut self) -> bool {
        for (i, b) in self.budgets.iter().enumerate() {
            if !b.try_take() {
                for taken in &self.budgets[..i] {
                    taken.untake();
                }
                b.starve();
                return false;
            }
        }
        self.total += 1;
        self.opening += 1;
        true
    }

    /// A connection (open or opening) is gone: its units go back.
    fn uncount(&mut self) {
        self.total -= 1;
        for b in &self.budgets {
            b.give_back();
        }
    }

    /// Whether another pool waits for units this pool's idle servers hold.
    pub fn others_starved(&self) -> bool {
        self.budgets.iter().any(|b| b.is_starved())
    }

    /// A connection finished opening: failures are over.
    pub fn opened(&mut self, conn: &ServerConn) {
        self.opening -= 1;
        self.failures = 0;
        self.backoff_until = None;
        self.last_error = None;
        self.servers.insert(
            conn.id,
            ServerRow {
                pid: conn.key.pid,
                addr: conn.key.addr,
                since: SystemTime::now(),
                generation: conn.generation,
            },
        );
    }

    /// Hands a connection to the oldest waiter still waiting, or parks it idle.
    pub fn put(&mut self, mut conn: Box<ServerConn>, now: Instant) {
        while let Some((_, w)) = self.waiters.pop_front() {
            match w.send(Ok(conn)) {
                Ok(()) => return,
                Err(Ok(back)) => conn = back,
                Err(Err(_)) => unreachable!("we sent Ok"),
            }
        }
        conn.last_used = now;
        self.idle.push_back(conn);
    }

    /// A connection left the pool for good.
    pub fn forget(&mut self, id: u64) {
        self.uncount();
        self.servers.remove(&id);
    }

    /// A connection attempt failed. A failure retrying may fix (a
    /// failover under way) leaves the waiters waiting; any other is told to
    /// the oldest waiter, and to every waiter when nothing else is open or
    /// opening that could serve them. Either way the next attempt waits
    /// out a backoff; returns when to retry, if a retry is needed.
    pub fn open_failed(&mut self, err: PoolError, kind: Failure, retry_max: Duration) -> Open {
        self.opening -= 1;
        self.uncount();
        self.failures = self.failures.saturating_add(1);
        self.backoff_until = Some(Instant::now() + backoff(self.failures, retry_max));
        if kind != Failure::Transient {
            let all = self.total == 0;
            while let Some((_, w)) = self.waiters.pop_front() {
                let delivered = w.send(Err(err.clone())).is_ok();
                if delivered && !all {
                    break;
                }
            }
        }
        self.last_error = Some((err, kind));
        if self.live_waiters() > 0 {
            self.schedule_retry()
        } else {
            Open::No
        }
    }

    /// Removes idle connections beyond what a pool of `size` may keep, or
    /// older than `generation`, for closing outside the lock.
    pub fn trim_idle(&mut self, size: usize, generation: u64) -> Vec<Box<ServerConn>> {
        self.remove_idle(|c, total| c.generation < generation || total > size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> PoolError {
        PoolError::Connect {
            pool: "db/user".into(),
            reason: "refused".into(),
            code: None,
        }
    }

    fn waiter(inner: &mut Inner) -> oneshot::Receiver<Delivery> {
        let (tx, rx) = oneshot::channel();
        inner.waiters.push_back((Instant::now(), tx));
        rx
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let cap = Duration::from_secs(2);
        for _ in 0..100 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            assert!(backoff(40, cap) <= cap && backoff(40, cap) >= cap / 2);
        }
    }

    #[test]
    fn a_transient_failure_keeps_clients_waiting_and_retries_one_at_a_time() {
        let mut inner = Inner::default();
        let mut a = waiter(&mut inner);
        let _b = waiter(&mut inner);
        assert!(inner.reserve_open(4) && inner.reserve_open(4));
        let cap = Duration::from_secs(2);
        assert_eq!(inner.open_failed(err(), Failure::Transient, cap), Open::No);
        assert!(matches!(
            inner.open_failed(err(), Failure::Transient, cap),
            Open::At(_)
        ));
        assert!(a.try_recv().is_err(), "still waiting");
        assert!(!inner.reserve_open(4), "not during the backoff");
        inner.retry_due();
        assert!(inner.reserve_open(4));
        assert!(
            !inner.reserve_open(4),
            "one attempt at a time after failures"
        );
    }

    #[test]
    fn a_permanent_failure_is_told_and_repeated_during_the_backoff() {
        let mut inner = Inner::default();
        let mut a = waiter(&mut inner);
        assert!(inner.reserve_open(4));
        inner.open_failed(err(), Failure::Permanent, Duration::from_secs(2));
        assert!(matches!(a.try_recv(), Ok(Err(PoolError::Connect { .. }))));
        let mut dead = Vec::new();
        let take = inner.take(4, Duration::from_secs(60), 0, &mut dead);
        assert!(matches!(take, Take::Fail(_)));
    }

    #[tokio::test]
    async fn a_spent_budget_stops_new_connections() {
        let budget = Budget::new("database", "db", 1);
        let mut inner = Inner {
            budgets: vec![budget.clone()],
            ..Inner::default()
        };
        let _a = waiter(&mut inner);
        let _b = waiter(&mut inner);
        assert!(inner.reserve_open(4));
        assert!(!inner.reserve_open(4), "the budget has one connection");
        assert_eq!(budget.usage(), (1, 1));
        inner.opening -= 1;
        inner.uncount();
        assert_eq!(budget.usage(), (0, 1), "a closed connection gives it back");
    }
}
