//! Server connection pools, one per (database, user).
//!
//! A pool opens servers lazily up to its size, queues clients FIFO when all
//! are busy, hands a returned server straight to the oldest waiter, and
//! closes servers past their idle timeout or lifetime in the background.
//! Its settings can change while it runs (reload); a retired pool keeps
//! serving the sessions that hold it and closes servers as they come back.

mod checkout;
mod inner;
mod maintain;
mod set;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

pub use checkout::Checkout;
pub use inner::ServerRow;
pub use set::{PoolKey, PoolSet};

use crate::config::PoolMode;
use crate::server::{connect, ServerConn, ServerError, ServerTarget};
use crate::stats::{PoolMetrics, PoolSnapshot};
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

/// Sizing and timing of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Session state that cannot move: pin the client, or refuse.
    pub session_state: crate::config::SessionState,
    /// Client idle inside a transaction: disconnected past this (0: never).
    pub idle_transaction_timeout: Duration,
    /// Client idle outside a transaction: disconnected past this (0: never).
    pub client_idle_timeout: Duration,
    /// A request running past this is cancelled on the server (0: never).
    pub query_timeout: Duration,
}

/// ParameterStatus names and values, as a server reported them.
pub type ParamList = Arc<Vec<(String, String)>>;

struct Shared {
    name: String,
    key: PoolKey,
    target: ServerTarget,
    tls: Option<TlsConnector>,
    settings: RwLock<Arc<PoolSettings>>,
    inner: Mutex<Inner>,
    /// ParameterStatus values of the first server opened, shown to clients at login.
    startup_params: Mutex<Option<ParamList>>,
    metrics: PoolMetrics,
    /// Logged-in clients of this pool.
    clients: AtomicUsize,
    /// Servers opened before this generation are closed when seen.
    generation: AtomicU64,
    paused: watch::Sender<bool>,
    retired: AtomicBool,
}

/// A handle to one pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

/// Counts a client as logged in to a pool until dropped.
pub struct PoolClient(Pool);

impl Drop for PoolClient {
    fn drop(&mut self) {
        self.0.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Creates a pool and starts its maintenance task.
    pub fn new(
        key: PoolKey,
        target: ServerTarget,
        settings: PoolSettings,
        tls: Option<TlsConnector>,
        metrics: PoolMetrics,
    ) -> Self {
        let pool = Self {
            shared: Arc::new(Shared {
                name: format!("{}/{}", key.database, key.user),
                key,
                target,
                tls,
                settings: RwLock::new(Arc::new(settings)),
                inner: Mutex::new(Inner::default()),
                startup_params: Mutex::new(None),
                metrics,
                clients: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                paused: watch::Sender::new(false),
                retired: AtomicBool::new(false),
            }),
        };
        tokio::spawn(maintain::maintain(Arc::downgrade(&pool.shared)));
        pool
    }

    /// `database/user`, for messages.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The (database, user) it serves.
    pub fn key(&self) -> &PoolKey {
        &self.shared.key
    }

    /// The pool's settings now.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.shared.settings.read().clone()
    }

    /// Where its servers are.
    pub fn target(&self) -> &ServerTarget {
        &self.shared.target
    }

    /// Its statistics.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.shared.metrics
    }

    /// Counts a logged-in client.
    pub fn client(&self) -> PoolClient {
        self.shared.clients.fetch_add(1, Ordering::Relaxed);
        PoolClient(self.clone())
    }

    /// Takes an idle server at once, or `None` (paused, or none idle) without
    /// queueing: the fast path of [`Pool::get`], needing no future.
    pub fn try_get(&self) -> Option<Checkout> {
        let s = &self.shared;
        if *s.paused.borrow() {
            return None;
        }
        let lifetime = s.settings.read().lifetime;
        let generation = s.generation.load(Ordering::Relaxed);
        let mut dead = Vec::new();
        let conn = s.inner.lock().take_idle(lifetime, generation, &mut dead);
        drop(dead);
        conn.map(|c| Checkout::new(self.clone(), c))
    }

    /// Gets a server connection, waiting in line up to `query_wait_timeout`
    /// (time spent paused counts too).
    pub async fn get(&self) -> Result<Checkout, PoolError> {
        let s = &self.shared;
        let st = self.settings();
        let deadline = tokio::time::Instant::now() + st.wait_timeout;
        let timeout = || PoolError::WaitTimeout {
            pool: s.name.clone(),
            timeout: st.wait_timeout,
        };
        if *s.paused.borrow() {
            let mut paused = s.paused.subscribe();
            if tokio::time::timeout_at(deadline, paused.wait_for(|p| !*p))
                .await
                .is_err()
            {
                return Err(timeout());
            }
        }
        let mut dead = Vec::new();
        let generation = s.generation.load(Ordering::Relaxed);
        let take = s
            .inner
            .lock()
            .take(st.size, st.lifetime, generation, &mut dead);
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
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(Ok(conn))) => Ok(Checkout::new(self.clone(), conn)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(PoolError::Closed(s.name.clone())),
            Err(_) => {
                // A connection may have been handed over just as time ran out.
                rx.close();
                if let Ok(Ok(conn)) = rx.try_recv() {
                    return Ok(Checkout::new(self.clone(), conn));
                }
                Err(timeout())
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
        let s = &self.shared;
        let st = self.settings();
        let now = Instant::now();
        let stale = conn.age(now) >= st.lifetime
            || conn.generation < s.generation.load(Ordering::Relaxed)
            || s.retired.load(Ordering::Relaxed);
        if stale {
            return self.discard(conn);
        }
        let mut inner = s.inner.lock();
        // After a shrink, a connection beyond the new size closes unless
        // someone is waiting for it.
        if inner.total > st.size && inner.live_waiters() == 0 {
            drop(inner);
            return self.discard(conn);
        }
        inner.put(conn, now);
    }

    /// Closes a connection that must not be reused, and opens a replacement
    /// when clients are waiting.
    fn discard(&self, conn: ServerConn) {
        let id = conn.id;
        drop(conn);
        let size = self.settings().size;
        let open = {
            let mut inner = self.shared.inner.lock();
            inner.forget(id);
            inner.reserve_open(size)
        };
        if open {
            self.spawn_open();
        }
    }

    fn spawn_open(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let s = &pool.shared;
            let st = pool.settings();
            let res = tokio::time::timeout(
                st.connect_timeout,
                connect(&s.target, s.tls.as_ref(), st.max_message_size),
            )
            .await
            .unwrap_or(Err(ServerError::Timeout));
            match res {
                Ok(conn) => pool.opened(conn),
                Err(e) => pool.open_failed(e),
            }
        });
    }

    /// A new connection joins the pool (or goes to the oldest waiter).
    fn opened(&self, mut conn: ServerConn) {
        let s = &self.shared;
        tracing::debug!(pool = %s.name, server = conn.id, "server connection opened");
        s.metrics.counters.opened.fetch_add(1, Ordering::Relaxed);
        conn.generation = s.generation.load(Ordering::Relaxed);
        self.note_startup_params(&conn);
        let mut inner = s.inner.lock();
        inner.opened(&conn);
        inner.put(conn, Instant::now());
    }

    /// Opening failed: waiting clients are told why.
    fn open_failed(&self, e: ServerError) {
        let s = &self.shared;
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

    /// Applies new settings: a smaller pool closes idle servers now and busy
    /// ones as they are released; a larger one opens for waiting clients.
    pub fn update_settings(&self, settings: PoolSettings) {
        let size = settings.size;
        *self.shared.settings.write() = Arc::new(settings);
        let (closed, open) = {
            let mut inner = self.shared.inner.lock();
            let generation = self.shared.generation.load(Ordering::Relaxed);
            let closed = inner.trim_idle(size, generation);
            let mut open = 0;
            while inner.reserve_open(size) {
                open += 1;
            }
            (closed, open)
        };
        drop(closed);
        for _ in 0..open {
            self.spawn_open();
        }
    }

    /// Stops handing out new transactions (PAUSE) or resumes (RESUME).
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.send_replace(paused);
    }

    /// Whether the pool is paused.
    pub fn is_paused(&self) -> bool {
        *self.shared.paused.borrow()
    }

    /// Closes idle servers now and busy ones when released (RECONNECT).
    pub fn reconnect(&self) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let size = self.settings().size;
        let closed = {
            let mut inner = self.shared.inner.lock();
            inner.trim_idle(size, self.shared.generation.load(Ordering::Relaxed))
        };
        drop(closed);
    }

    /// Takes the pool out of service: sessions holding it go on, servers
    /// close as they come back (reload removed or moved its database).
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Relaxed);
        self.reconnect();
    }

    /// State for monitoring.
    pub fn snapshot(&self) -> PoolSnapshot {
        let s = &self.shared;
        let inner = s.inner.lock();
        let waiting = inner.live_waiters();
        let active = inner.total - inner.idle.len() - inner.opening;
        let clients = s.clients.load(Ordering::Relaxed);
        PoolSnapshot {
            clients_active: active.min(clients),
            clients_waiting: waiting,
            clients_idle: clients.saturating_sub(active + waiting),
            servers_active: active,
            servers_idle: inner.idle.len(),
            servers_connecting: inner.opening,
            size: self.settings().size,
        }
    }

    /// How long the oldest waiting client has waited.
    pub fn max_wait(&self) -> Duration {
        self.shared.inner.lock().max_wait()
    }

    /// Open server connections, each with whether it is lent out now
    /// (derived: a connection not parked idle is lent to a client).
    pub fn servers(&self) -> Vec<(ServerRow, bool)> {
        let inner = self.shared.inner.lock();
        inner
            .servers
            .iter()
            .map(|(id, row)| (row.clone(), !inner.idle.iter().any(|c| c.id == *id)))
            .collect()
    }

    /// Brings the exported metrics up to date.
    pub fn export_metrics(&self) {
        self.shared.metrics.export(self.snapshot());
    }

    /// Counts for tests and logs: (open or opening, idle, waiting).
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.shared.inner.lock();
        (inner.total, inner.idle.len(), inner.live_waiters())
    }
}
