//! The synchronous state of one pool. No `.await` happens under its lock:
//! every method decides and returns, and the async layer acts on the result.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;

use super::PoolError;
use crate::server::ServerConn;

/// What a waiting client receives.
pub type Delivery = Result<ServerConn, PoolError>;

/// Counts and queues of one pool.
#[derive(Debug, Default)]
pub struct Inner {
    /// Connections ready for use, most recently used last.
    pub idle: VecDeque<ServerConn>,
    /// Open or opening connections, idle or not: never above the pool size.
    pub total: usize,
    /// Connections being opened right now.
    pub opening: usize,
    /// Clients waiting for a connection, oldest first.
    pub waiters: VecDeque<oneshot::Sender<Delivery>>,
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
    pub fn take(&mut self, size: usize, lifetime: Duration, dead: &mut Vec<ServerConn>) -> Take {
        while let Some(conn) = self.idle.pop_back() {
            if conn.age() < lifetime && conn.is_clean_idle() {
                return Take::Ready(conn);
            }
            self.total -= 1;
            dead.push(conn);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(tx);
        Take::Wait(rx, self.reserve_open(size))
    }

    /// Counts a new connection to open, if there is room and someone waits.
    pub fn reserve_open(&mut self, size: usize) -> bool {
        let live_waiters = self.waiters.iter().filter(|w| !w.is_closed()).count();
        if self.total < size && self.opening < live_waiters {
            self.total += 1;
            self.opening += 1;
            true
        } else {
            false
        }
    }

    /// Hands a connection to the oldest waiter still waiting, or parks it idle.
    pub fn put(&mut self, mut conn: ServerConn) {
        while let Some(w) = self.waiters.pop_front() {
            match w.send(Ok(conn)) {
                Ok(()) => return,
                Err(Ok(back)) => conn = back,
                Err(Err(_)) => unreachable!("we sent Ok"),
            }
        }
        conn.last_used = std::time::Instant::now();
        self.idle.push_back(conn);
    }

    /// A connection left the pool for good.
    pub fn forget(&mut self) {
        self.total -= 1;
    }

    /// A connection attempt failed: tell the oldest waiter, and every waiter
    /// when nothing else is open or opening that could serve them.
    pub fn open_failed(&mut self, err: PoolError) {
        self.opening -= 1;
        self.total -= 1;
        let all = self.total == 0;
        while let Some(w) = self.waiters.pop_front() {
            let delivered = w.send(Err(err.clone())).is_ok();
            if delivered && !all {
                break;
            }
        }
    }
}
