//! Server connection pools, one per (database, user).
//!
//! A pool opens servers lazily up to its size, queues clients FIFO when all
//! are busy, hands a returned server straight to the oldest waiter, and
//! closes servers past their idle timeout or lifetime in the background.
//! When opening fails it backs off (one attempt at a time, jittered), and
//! during a failover its clients keep waiting rather than fail. Its
//! settings and its servers' address can change while it runs (reload):
//! servers of the old address close as they come back. A retired pool
//! (database or user removed) serves the sessions that still hold it.

mod budget;
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

pub use budget::Budget;
pub use checkout::Checkout;
pub use inner::ServerRow;
pub use set::{PoolKey, PoolSet};

use crate::config::{PoolMode, TargetSessionAttrs, TcpOptions};
use crate::server::{ConnectOptions, ServerConn, ServerError, ServerTarget};
use crate::stats::{PoolMetrics, PoolSnapshot};
use inner::{Inner, Open, Take};

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
    /// Limit on opening one server connection (per address tried).
    pub connect_timeout: Duration,
    /// Keepalive and user timeout of server sockets.
    pub tcp: TcpOptions,
    /// Query checking a server idle longer than `check_delay` (empty: none).
    pub check_query: String,
    /// Idle time after which `check_query` runs before lending.
    pub check_delay: Duration,
    /// Longest pause between attempts after failures.
    pub retry_max: Duration,
    /// How often host names are resolved again.
    pub dns_ttl: Duration,
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
    /// Every transaction ends with the check that follows code pgmux
    /// cannot read.
    pub reset_always: bool,
    /// Client idle inside a transaction: disconnected past this (0: never).
    pub idle_transaction_timeout: Duration,
    /// Client idle outside a transaction: disconnected past this (0: never).
    pub client_idle_timeout: Duration,
    /// A request running past this is cancelled on the server (0: never).
    pub query_timeout: Duration,
    /// The target's `target_session_attrs` (read on every release).
    pub attrs: TargetSessionAttrs,
    /// Connections beyond `size` once a client waited `reserve_timeout`.
    pub reserve_size: usize,
    /// How long the oldest client waits before the reserve opens.
    pub reserve_timeout: Duration,
}

impl PoolSettings {
    /// How this pool opens server connections.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            timeout: self.connect_timeout,
            max_message_size: self.max_message_size,
            tcp: self.tcp,
        }
    }

    /// The idle time past which a server is checked before it is lent,
    /// when a check query is set.
    pub fn check_due(&self) -> Option<Duration> {
        (!self.check_query.is_empty()).then_some(self.check_delay)
    }
}

/// ParameterStatus names and values, as a server reported them.
pub type ParamList = Arc<Vec<(String, String)>>;

/// Where a pool's servers are and the TLS to reach them; replaced whole
/// when a reload moves the database.
struct Route {
    target: Arc<ServerTarget>,
    tls: Option<TlsConnector>,
}

struct Shared {
    name: String,
    key: PoolKey,
    route: RwLock<Arc<Route>>,
    settings: RwLock<Arc<PoolSettings>>,
    /// `settings.reset_always`, read at every transaction's end without
    /// the lock (a reload changes both).
    reset_always: std::sync::atomic::AtomicBool,
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
        budgets: Vec<Arc<Budget>>,
    ) -> Self {
        let inner = Inner {
            reserve_size: settings.reserve_size,
            reserve_timeout: settings.reserve_timeout,
            budgets: budgets.clone(),
            ..Inner::default()
        };
        let pool = Self {
            shared: Arc::new(Shared {
                name: format!("{}/{}", key.database, key.user),
                key,
                route: RwLock::new(Arc::new(Route {
                    target: Arc::new(target),
                    tls,
                })),
                reset_always: std::sync::atomic::AtomicBool::new(settings.reset_always),
                settings: RwLock::new(Arc::new(settings)),
                inner: Mutex::new(inner),
                startup_params: Mutex::new(None),
                metrics,
                clients: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                paused: watch::Sender::new(false),
                retired: AtomicBool::new(false),
            }),
        };
        for b in &budgets {
            b.join(Arc::downgrade(&pool.shared));
        }
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

    /// `server_reset_query_always` as the pool's settings say now (a
    /// reload reaches the clients already connected).
    pub fn reset_always(&self) -> bool {
        self.shared
            .reset_always
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pool's settings now.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.shared.settings.read().clone()
    }

    /// Where its servers are.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.shared.route.read().target.clone()
    }

    /// Whether the pool was retired (its database or user removed).
    pub fn is_retired(&self) -> bool {
        self.shared.retired.load(Ordering::Relaxed)
    }

    /// Logged-in clients of this pool.
    pub fn clients(&self) -> usize {
        self.shared.clients.load(Ordering::Relaxed)
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
        self.try_get_at(Instant::now())
    }

    /// [`Pool::try_get`] with the time already read by the caller (a
    /// session reads the clock once per wake-up).
    pub fn try_get_at(&self, now: Instant) -> Option<Checkout> {
        let s = &self.shared;
        if *s.paused.borrow() {
            return None;
        }
        let (lifetime, check) = {
            let st = s.settings.read();
            (st.lifetime, st.check_due())
        };
        let generation = s.generation.load(Ordering::Relaxed);
        let mut dead = Vec::new();
        let mut inner = s.inner.lock();
        let conn = inner.take_idle(lifetime, generation, now, &mut dead)?;
        // Checking it is async: leave it to `get`. (Looked at in place: a
        // connection is large, and this is the path every transaction takes.)
        if check.is_some_and(|d| now.saturating_duration_since(conn.last_used) >= d) {
            inner.idle.push_back(conn);
            return None;
        }
        drop(inner);
        drop(dead);
        Some(Checkout::new(self.clone(), conn))
    }

    /// Gets a server connection, waiting in line up to `query_wait_timeout`
    /// (time spent paused counts too); a server idle past
    /// `server_check_delay` is checked first.
    pub async fn get(&self) -> Result<Checkout, PoolError> {
        let st = self.settings();
        let deadline = tokio::time::Instant::now() + st.wait_timeout;
        loop {
            let mut conn = self.get_until(deadline, &st).await?;
            let due = st.check_due();
            if due.is_none_or(|d| conn.last_used.elapsed() < d) {
                return Ok(conn);
            }
            let checked = tokio::time::timeout(
                st.connect_timeout,
                conn.run_internal(&st.check_query, st.max_message_size),
            )
            .await;
            match checked {
                Ok(Ok(crate::protocol::TxStatus::Idle)) => return Ok(conn),
                _ => {
                    tracing::info!(pool = %self.name(), server = conn.id, "server failed server_check_query; closed");
                    conn.discard();
                }
            }
        }
    }

    async fn get_until(
        &self,
        deadline: tokio::time::Instant,
        st: &PoolSettings,
    ) -> Result<Checkout, PoolError> {
        let s = &self.shared;
        // Past the deadline a client hears why the pool could not open a
        // server (a failover that outlasted its wait), else that all were busy.
        let timeout = || match &s.inner.lock().last_error {
            Some((e, _)) => e.clone(),
            None => PoolError::WaitTimeout {
                pool: s.name.clone(),
                timeout: st.wait_timeout,
            },
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
            Take::Fail(e) => return Err(e),
            Take::Wait(rx, open) => {
                self.act(open);
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

    /// Returns a clean connection to the pool. One that is too old, of an
    /// old generation (RECONNECT, a moved database), to an address retired,
    /// or whose server no longer has the role the pool needs, is closed.
    fn checkin(&self, conn: Box<ServerConn>, now: Instant) {
        let s = &self.shared;
        let st = self.settings();
        // Only pools that care about the role look (two map lookups).
        let moved = st.attrs != TargetSessionAttrs::Any
            && conn
                .reported_role()
                .is_some_and(|r| !crate::server::still_fits(st.attrs, r.standby));
        if moved {
            return self.host_demoted(conn);
        }
        let stale = conn.age(now) >= st.lifetime
            || conn.generation < s.generation.load(Ordering::Relaxed)
            || (s.retired.load(Ordering::Relaxed) && s.clients.load(Ordering::Relaxed) == 0);
        if stale {
            return self.discard(conn);
        }
        let mut inner = s.inner.lock();
        if inner.is_stale_addr(conn.key.addr, conn.created()) {
            drop(inner);
            return self.discard(conn);
        }
        // After a shrink (or the reserve used), a connection beyond the
        // size closes unless someone is waiting for it; so does one another
        // pool of a shared budget is waiting for.
        let unwanted = inner.total > st.size || inner.others_starved();
        if unwanted && inner.live_waiters() == 0 {
            drop(inner);
            return self.discard(conn);
        }
        inner.put(conn, now);
    }

    /// Closes a connection that must not be reused, and opens a replacement
    /// when clients are waiting.
    fn discard(&self, conn: Box<ServerConn>) {
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

    /// The server of `conn` changed role (a writer pool's server is in hot
    /// standby, a standby pool's was promoted): it and every other
    /// connection to that address opened so far go, and the next
    /// connection looks for a server of the right role.
    pub fn host_demoted(&self, conn: Box<ServerConn>) {
        let addr = conn.key.addr;
        tracing::warn!(pool = %self.name(), server = %addr, "server changed role; its connections are closed and another server is looked for");
        self.retire_address(addr);
        self.discard(conn);
    }

    /// Closes the idle server used least recently, if there is one (a
    /// pool sharing a budget needs the room); says whether it did.
    pub fn close_one_idle(&self) -> bool {
        let conn = {
            let mut inner = self.shared.inner.lock();
            let conn = inner.idle.pop_front();
            if let Some(c) = &conn {
                inner.forget(c.id);
            }
            conn
        };
        conn.is_some()
    }

    /// Opens connections for waiting clients, as far as room allows
    /// (units came back to a shared budget).
    pub fn open_for_waiters(&self) {
        let size = self.settings().size;
        let mut open = 0;
        {
            let mut inner = self.shared.inner.lock();
            while inner.reserve_open(size) {
                open += 1;
            }
        }
        for _ in 0..open {
            self.spawn_open();
        }
    }

    /// Connections to `addr` opened so far are not lent again: its host
    /// name no longer resolves to it, it changed role, or a connection to
    /// it died under a client. Idle ones close now, busy ones when released.
    pub fn retire_address(&self, addr: std::net::SocketAddr) {
        let idle = self.shared.inner.lock().mark_stale(addr, Instant::now());
        drop(idle);
    }

    /// Starts opening a connection now, or schedules the retry.
    fn act(&self, open: Open) {
        match open {
            Open::No => {}
            Open::Now => self.spawn_open(),
            Open::At(when) => {
                let pool = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(when.into()).await;
                    let size = pool.settings().size;
                    let open = {
                        let mut inner = pool.shared.inner.lock();
                        inner.retry_due();
                        inner.reserve_open(size)
                    };
                    if open {
                        pool.spawn_open();
                    }
                });
            }
        }
    }

    fn spawn_open(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            // The generation is read with the route: a connection to an
            // old target that finishes opening after a reload is old.
            let (route, generation) = {
                let route = pool.shared.route.read();
                (
                    route.clone(),
                    pool.shared.generation.load(Ordering::Relaxed),
                )
            };
            let opts = pool.settings().connect_options();
            match crate::server::open(&route.target, route.tls.as_ref(), &opts).await {
                Ok(mut conn) => {
                    conn.generation = generation;
                    pool.opened(Box::new(conn))
                }
                Err(e) => pool.open_failed(e),
            }
        });
    }

    /// A new connection joins the pool (or goes to the oldest waiter).
    fn opened(&self, conn: Box<ServerConn>) {
        let s = &self.shared;
        tracing::debug!(pool = %s.name, server = conn.id, "server connection opened");
        s.metrics.counters.opened.fetch_add(1, Ordering::Relaxed);
        let size = self.settings().size;
        let mut more = 0;
        let mut old = None;
        {
            let mut inner = s.inner.lock();
            inner.opened(&conn);
            if conn.generation < s.generation.load(Ordering::Relaxed) {
                // Opened for a target a reload replaced (or before a
                // RECONNECT): closed, and its place taken by a new one.
                inner.forget(conn.id);
                old = Some(conn);
            } else {
                self.note_startup_params(&conn);
                inner.put(conn, Instant::now());
            }
            // After failures only one attempt ran: the rest of the queue
            // gets its connections now.
            while inner.reserve_open(size) {
                more += 1;
            }
        }
        drop(old);
        for _ in 0..more {
            self.spawn_open();
        }
    }

    /// Opening failed: waiting clients are told why, unless a retry may
    /// fix it (they keep waiting while the pool backs off and retries).
    fn open_failed(&self, e: ServerError) {
        let s = &self.shared;
        let kind = e.failure();
        tracing::warn!(pool = %s.name, error = %e, ?kind, "server connection failed");
        s.metrics
            .counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        let err = PoolError::Connect {
            pool: s.name.clone(),
            reason: e.to_string(),
            code: e.code(),
        };
        let retry_max = self.settings().retry_max;
        let open = s.inner.lock().open_failed(err, kind, retry_max);
        self.act(open);
    }

    /// Applies new settings: a smaller pool closes idle servers now and busy
    /// ones as they are released; a larger one opens for waiting clients.
    pub fn update_settings(&self, settings: PoolSettings) {
        let size = settings.size;
        let reserve = (settings.reserve_size, settings.reserve_timeout);
        self.shared
            .reset_always
            .store(settings.reset_always, std::sync::atomic::Ordering::Relaxed);
        *self.shared.settings.write() = Arc::new(settings);
        let (closed, open) = {
            let mut inner = self.shared.inner.lock();
            (inner.reserve_size, inner.reserve_timeout) = reserve;
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

    /// Points the pool at new servers (a reload changed the database's
    /// hosts, TLS or server login): idle servers close now, busy ones when
    /// released, and every client's next transaction opens at the new target.
    pub fn retarget(&self, target: ServerTarget, tls: Option<TlsConnector>) {
        let mut route = self.shared.route.write();
        *route = Arc::new(Route {
            target: Arc::new(target),
            tls,
        });
        *self.shared.startup_params.lock() = None;
        self.reconnect();
        drop(route);
    }

    /// Takes the pool out of service (its database or user was removed):
    /// sessions holding it go on; once the last has left its servers close.
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Relaxed);
    }

    /// A retired pool with nothing left: no client, no server.
    pub fn is_drained(&self) -> bool {
        self.is_retired() && self.clients() == 0 && self.shared.inner.lock().total == 0
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

    /// Server connections of an older generation (RECONNECT, a moved
    /// database) not closed yet.
    pub fn old_servers(&self) -> usize {
        let current = self.shared.generation.load(Ordering::Relaxed);
        let inner = self.shared.inner.lock();
        inner
            .servers
            .values()
            .filter(|r| r.generation < current)
            .count()
    }

    /// Closes every idle server (PAUSE, once the busy ones are released).
    pub fn close_idle(&self) {
        let idle = self.shared.inner.lock().remove_idle(|_, _| true);
        drop(idle);
    }

    /// Has open server connections and no failure to open one since.
    pub fn is_healthy(&self) -> bool {
        let inner = self.shared.inner.lock();
        inner.total > inner.opening && inner.last_error.is_none()
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
