//! Server connection pools, one per (database, user).
//!
//! A pool opens servers lazily up to its size, queues clients FIFO when all
//! are busy, hands a returned server straight to the oldest waiter, and
//! closes servers past their idle timeout or lifetime in the background.

mod checkout;
mod inner;
mod set;

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

pub use checkout::Checkout;
pub use set::{PoolKey, PoolSet};

use crate::config::PoolMode;
use crate::server::{connect, ServerConn, ServerError, ServerTarget};
use inner::{Inner, Take};

/// Why a client got no server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// Waited `query_wait_timeout` with every server busy.
    #[error(
        "no server connection available in pool {pool} within query_wait_timeout ({timeout:?})"
    )]
    WaitTimeout {
        /// `database/user`.
        pool: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Opening a server connection failed.
    #[error("could not open a server connection for pool {pool}: {reason}")]
    Connect {
        /// `database/user`.
        pool: String,
        /// What went wrong.
        reason: String,
        /// The server's SQLSTATE, when it sent one.
        code: Option<String>,
    },
    /// The pool was shut down.
    #[error("pool {0} is closed")]
    Closed(String),
}

/// ParameterStatus names and values, as a server reported them.
pub type ParamList = Arc<Vec<(String, String)>>;

/// Sizing and timing of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Maximum server connections.
    pub size: usize,
    /// Connections kept open when idle.
    pub min_size: usize,
    /// Transaction or session pooling.
    pub mode: PoolMode,
    /// How long a client waits for a server.
    pub wait_timeout: Duration,
    /// Limit on opening one server connection.
    pub connect_timeout: Duration,
    /// Idle servers older than this are closed.
    pub idle_timeout: Duration,
    /// Servers older than this are closed once released.
    pub lifetime: Duration,
    /// Largest message accepted from a server.
    pub max_message_size: usize,
    /// Query run between session-mode clients.
    pub reset_query: String,
}

struct Shared {
    name: String,
    target: ServerTarget,
    settings: PoolSettings,
    inner: Mutex<Inner>,
    /// ParameterStatus values of the first server opened, shown to clients at login.
    startup_params: Mutex<Option<ParamList>>,
}

/// A handle to one pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Creates a pool and starts its maintenance task.
    pub fn new(name: String, target: ServerTarget, settings: PoolSettings) -> Self {
        let pool = Self {
            shared: Arc::new(Shared {
                name,
                target,
                settings,
                inner: Mutex::new(Inner::default()),
                startup_params: Mutex::new(None),
            }),
        };
        tokio::spawn(maintain(Arc::downgrade(&pool.shared)));
        pool
    }

    /// `database/user`, for messages.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.shared.settings
    }

    /// Gets a server connection, waiting in line up to `query_wait_timeout`.
    pub async fn get(&self) -> Result<Checkout, PoolError> {
        let s = &self.shared;
        let mut dead = Vec::new();
        let take = s
            .inner
            .lock()
            .take(s.settings.size, s.settings.lifetime, &mut dead);
        drop(dead);
        let mut rx = match take {
            Take::Ready(conn) => return Ok(Checkout::new(self.clone(), conn)),
            Take::Wait(rx, open) => {
                if open {
                    self.spawn_open();
                }
                rx
            }
        };
        match tokio::time::timeout(s.settings.wait_timeout, &mut rx).await {
            Ok(Ok(Ok(conn))) => Ok(Checkout::new(self.clone(), conn)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(PoolError::Closed(s.name.clone())),
            Err(_) => {
                // A connection may have been handed over just as time ran out.
                rx.close();
                if let Ok(Ok(conn)) = rx.try_recv() {
                    return Ok(Checkout::new(self.clone(), conn));
                }
                Err(PoolError::WaitTimeout {
                    pool: s.name.clone(),
                    timeout: s.settings.wait_timeout,
                })
            }
        }
    }

    /// The ParameterStatus set a real server of this pool reports, opening
    /// (and returning) a server connection the first time.
    pub async fn startup_params(&self) -> Result<ParamList, PoolError> {
        if let Some(p) = self.shared.startup_params.lock().clone() {
            return Ok(p);
        }
        let conn = self.get().await?;
        let params = self.note_startup_params(&conn);
        conn.release();
        Ok(params)
    }

    fn note_startup_params(&self, conn: &ServerConn) -> ParamList {
        self.shared
            .startup_params
            .lock()
            .get_or_insert_with(|| Arc::new(conn.reported_params().to_vec()))
            .clone()
    }

    /// Returns a clean connection to the pool.
    fn checkin(&self, conn: ServerConn) {
        if conn.age() >= self.shared.settings.lifetime {
            return self.discard(conn);
        }
        self.shared.inner.lock().put(conn);
    }

    /// Closes a connection that must not be reused, and opens a replacement
    /// when clients are waiting.
    fn discard(&self, conn: ServerConn) {
        drop(conn);
        let open = {
            let mut inner = self.shared.inner.lock();
            inner.forget();
            inner.reserve_open(self.shared.settings.size)
        };
        if open {
            self.spawn_open();
        }
    }

    fn spawn_open(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let s = &pool.shared;
            let res = tokio::time::timeout(
                s.settings.connect_timeout,
                connect(&s.target, s.settings.max_message_size),
            )
            .await
            .unwrap_or(Err(ServerError::Timeout));
            match res {
                Ok(conn) => {
                    tracing::debug!(pool = %s.name, server = conn.id, "server connection opened");
                    pool.note_startup_params(&conn);
                    let mut inner = s.inner.lock();
                    inner.opening -= 1;
                    inner.put(conn);
                }
                Err(e) => {
                    tracing::warn!(pool = %s.name, error = %e, "server connection failed");
                    let code = match &e {
                        ServerError::Server { code, .. } => Some(code.clone()),
                        _ => None,
                    };
                    s.inner.lock().open_failed(PoolError::Connect {
                        pool: s.name.clone(),
                        reason: e.to_string(),
                        code,
                    });
                }
            }
        });
    }

    /// Counts for monitoring: (open or opening, idle, waiting).
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.shared.inner.lock();
        (
            inner.total,
            inner.idle.len(),
            inner.waiters.iter().filter(|w| !w.is_closed()).count(),
        )
    }
}

/// Closes idle servers past their idle timeout or lifetime and keeps
/// `min_size` open. Ends when the pool is dropped.
async fn maintain(pool: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = pool.upgrade() else { return };
        let st = &shared.settings;
        let (expired, open) = {
            let mut inner = shared.inner.lock();
            let mut expired = Vec::new();
            let mut i = 0;
            while i < inner.idle.len() {
                let c = &inner.idle[i];
                let too_old = c.age() >= st.lifetime;
                let too_idle =
                    c.last_used.elapsed() >= st.idle_timeout && inner.total > st.min_size;
                if too_old || too_idle || !c.is_clean_idle() {
                    if let Some(c) = inner.idle.remove(i) {
                        expired.push(c);
                    }
                    inner.total -= 1;
                } else {
                    i += 1;
                }
            }
            let mut open = 0;
            while inner.total < st.min_size.min(st.size) {
                inner.total += 1;
                inner.opening += 1;
                open += 1;
            }
            (expired, open)
        };
        drop(expired);
        let handle = Pool { shared };
        for _ in 0..open {
            handle.spawn_open();
        }
    }
}
