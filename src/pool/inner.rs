//! The synchronous state of one pool. No `.await` happens under its lock:
//! every method decides and returns, and the async layer acts on the result.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::PoolError;
use crate::server::ServerConn;

/// What a waiting client receives.
pub type Delivery = Result<ServerConn, PoolError>;

/// One open server connection, as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Backend process id.
    pub pid: i32,
    /// Server address.
    pub addr: SocketAddr,
    /// When it was opened.
    pub since: SystemTime,
}

/// Counts and queues of one pool.
#[derive(Debug, Default)]
pub struct Inner {
    /// Connections ready for use, most recently used last.
    pub idle: VecDeque<ServerConn>,
    /// Open or opening connections, idle or not: never above the pool size.
    pub total: usize,
    /// Connections being opened right now.
    pub opening: usize,
    /// Clients waiting for a connection, oldest first, with when they began.
    pub waiters: VecDeque<(Instant, oneshot::Sender<Delivery>)>,
    /// Every open connection by id.
    pub servers: HashMap<u64, ServerRow>,
}

/// The outcome of asking for a connection.
// A short-lived return value: moving the connection is cheaper than boxing it.
#[allow(clippy::large_enum_variant)]
pub enum Take {
    /// An idle connection.
    Ready(ServerConn),
    /// Wait on this receiver; `open` says whether the caller must start a
    /// new connection for the pool.
    Wait(oneshot::Receiver<Delivery>, bool),
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
        dead: &mut Vec<ServerConn>,
    ) -> Take {
        if let Some(conn) = self.take_idle(lifetime, generation, dead) {
            return Take::Ready(conn);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back((Instant::now(), tx));
        Take::Wait(rx, self.reserve_open(size))
    }

    /// Takes the most recently used idle connection that is still good,
    /// dropping bad or old ones on the way (into `dead`, to be closed
    /// outside the lock).
    pub fn take_idle(
        &mut self,
        lifetime: Duration,
        generation: u64,
        dead: &mut Vec<ServerConn>,
    ) -> Option<ServerConn> {
        let now = Instant::now();
        while let Some(conn) = self.idle.pop_back() {
            if conn.age(now) < lifetime && conn.generation >= generation && conn.is_clean_idle(now)
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

    /// Counts a new connection to open, if there is room and someone waits.
    pub fn reserve_open(&mut self, size: usize) -> bool {
        if self.total < size && self.opening < self.live_waiters() {
            self.total += 1;
            self.opening += 1;
            true
        } else {
            false
        }
    }

    /// A connection finished opening.
    pub fn opened(&mut self, conn: &ServerConn) {
        self.opening -= 1;
        self.servers.insert(
            conn.id,
            ServerRow {
                pid: conn.key.pid,
                addr: conn.key.addr,
                since: SystemTime::now(),
            },
        );
    }

    /// Hands a connection to the oldest waiter still waiting, or parks it idle.
    pub fn put(&mut self, mut conn: ServerConn, now: Instant) {
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
        self.total -= 1;
        self.servers.remove(&id);
    }

    /// A connection attempt failed: tell the oldest waiter, and every waiter
    /// when nothing else is open or opening that could serve them.
    pub fn open_failed(&mut self, err: PoolError) {
        self.opening -= 1;
        self.total -= 1;
        let all = self.total == 0;
        while let Some((_, w)) = self.waiters.pop_front() {
            let delivered = w.send(Err(err.clone())).is_ok();
            if delivered && !all {
                break;
            }
        }
    }

    /// Removes idle connections beyond what a pool of `size` may keep, or
    /// older than `generation`, for closing outside the lock.
    pub fn trim_idle(&mut self, size: usize, generation: u64) -> Vec<ServerConn> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            let stale = self.idle[i].generation < generation;
            if stale || self.total > size {
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
}
