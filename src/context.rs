//! What every session needs from the process: the configuration in force
//! (swapped whole on reload), the users' secrets, the pools, the client and
//! cancel registries, statistics and the shutdown state. The app builds one
//! and hands an `Arc` of it to each session.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;

use crate::auth::{Secret, UserAuth};
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::PoolSet;
use crate::prepared::Registry;
use crate::shutdown::{Phase, Shutdown};
use crate::stats::Metrics;
use crate::tls::acceptor::ClientTls;

/// Users by name, built from one config.
pub type Users = HashMap<String, Arc<UserAuth>>;

/// The shape of the users' secrets, so that an unknown user's exchange does
/// not stand out: whether most would get an md5 challenge under `md5`
/// (stored as a password or an md5 hash, not a SCRAM verifier), and the
/// iteration count most SCRAM verifiers use (4096, PostgreSQL's and
/// pgmux's own, when none says otherwise). With `auth_query` the users that
/// count are the server's, unseen: SCRAM then, PostgreSQL's default
/// `password_encryption` since 14, and what it mocks with itself.
pub fn mock_shape(users: &Users, looked_up: bool) -> (bool, u32) {
    let (mut md5, mut scram) = (0usize, 0usize);
    let mut iterations: HashMap<u32, usize> = HashMap::new();
    for u in users.values() {
        match &u.secret {
            Secret::Plain(_) | Secret::Md5(_) => md5 += 1,
            Secret::Scram(_) | Secret::ScramKeys(..) => scram += 1,
        }
        // Under SCRAM a plaintext password is checked with its derived
        // verifier (4096 iterations): it counts with its count.
        if let Some(v) = &u.scram {
            *iterations.entry(v.iterations()).or_default() += 1;
        }
    }
    let most = iterations
        .into_iter()
        .max_by_key(|&(i, n)| (n, i))
        .map_or(4096, |(i, _)| i);
    (md5 >= scram && !looked_up, most)
}

/// Builds the user table, keeping entries whose password did not change
/// (deriving a SCRAM verifier from a plaintext password costs a PBKDF2).
pub fn build_users(config: &Config, previous: Option<&Users>) -> Users {
    config
        .users
        .iter()
        .map(|(name, u)| {
            let secret = Secret::parse(&u.password);
            let kept = previous
                .and_then(|p| p.get(name))
                .filter(|old| old.secret == secret)
                .cloned();
            let auth = kept.unwrap_or_else(|| Arc::new(UserAuth::new(secret)));
            (name.clone(), auth)
        })
        .collect()
}

/// What a client is doing, for SHOW CLIENTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, holding no server.
    Idle = 0,
    /// Waiting for a server.
    Waiting = 1,
    /// Holding a server.
    Active = 2,
}

/// One logged-in client, as the admin console sees it.
#[derive(Debug)]
pub struct ClientInfo {
    /// Process-unique id.
    pub id: u64,
    /// Database it asked for.
    pub database: String,
    /// Its user.
    pub user: String,
    /// Its address (held inline: a formatted copy was one more
    /// allocation per idle client).
    pub addr: std::net::SocketAddr,
    /// Login time.
    pub since: SystemTime,
    state: AtomicU8,
    /// Why the client keeps its server between transactions (SHOW CLIENTS).
    pin: Mutex<Option<&'static str>>,
    /// What the client is waiting for: [`Idle::Busy`] (a request of its
    /// own is under way) or itself, outside or inside a transaction.
    idle: AtomicU8,
    /// When it entered its [`Idle`] state, in milliseconds of [`clock_ms`].
    idle_since: AtomicU64,
    /// Limits in milliseconds (0: none): idle inside a transaction, idle
    /// outside, busy with a request (`query_timeout`).
    idle_limits: [u64; 3],
    /// Its cancel key, for `query_timeout`: process id and secret, packed
    /// (a session-mode client's process id becomes its server's once it
    /// has one, [`ClientInfo::set_cancel_key`]).
    cancel_key: AtomicU64,
    /// A cancel was sent for the current request.
    cancel_sent: AtomicBool,
    /// Set by [`ClientRegistry::sweep_idle`] before it wakes the session:
    /// which idle state the client overstayed.
    timed_out: AtomicU8,
    /// The admin console killed the client.
    killed: AtomicBool,
    /// Something outside the session changed (a KILL, an idle timeout,
    /// the shutdown phase) since the session last looked.
    woken: AtomicBool,
    /// The session's task, woken by [`ClientInfo::wake`].
    waker: Mutex<Option<std::task::Waker>>,
}

/// A cancel key as one integer: process id above, secret below.
fn pack_key((pid, secret): (i32, i32)) -> u64 {
    (u64::from(pid as u32) << 32) | u64::from(secret as u32)
}

impl ClientInfo {
    /// Records the client's new cancel key.
    pub fn set_cancel_key(&self, key: (i32, i32)) {
        self.cancel_key.store(pack_key(key), Ordering::Relaxed);
    }

    /// Tells the session something outside it changed: it wakes and reads
    /// the shutdown phase, [`ClientInfo::take_killed`] and
    /// [`ClientInfo::take_timeout`].
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().as_ref() {
            w.wake_by_ref();
        }
    }

    /// The admin console's KILL: the session ends with 57P01.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Whether the client was killed.
    pub fn take_killed(&self) -> bool {
        self.killed.swap(false, Ordering::Relaxed)
    }

    /// The session's task, for [`ClientInfo::wake`].
    pub fn set_waker(&self, waker: std::task::Waker) {
        *self.waker.lock() = Some(waker);
    }

    /// Whether [`ClientInfo::wake`] was called since the last look.
    pub fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }

    /// Records what the client is doing.
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Records why the client keeps its server, or that it no longer does.
    pub fn set_pin(&self, reason: Option<&'static str>) {
        *self.pin.lock() = reason;
    }

    /// Why the client keeps its server between transactions, if it does.
    pub fn pin(&self) -> Option<&'static str> {
        *self.pin.lock()
    }

    /// Records whether the client waits on itself (and since when).
    pub fn set_idle(&self, idle: Idle, now: std::time::Instant) {
        self.idle_since.store(clock_ms_at(now), Ordering::Relaxed);
        self.cancel_sent.store(false, Ordering::Relaxed);
        self.idle.store(idle as u8, Ordering::Relaxed);
    }

    /// The idle state the sweeper timed the client out of, if any (and
    /// clears it).
    pub fn take_timeout(&self) -> Option<Idle> {
        match self.timed_out.swap(0, Ordering::Relaxed) {
            1 => Some(Idle::Client),
            2 => Some(Idle::InTransaction),
            _ => None,
        }
    }

    /// What the client is doing.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }
}

/// Whether a client waits on itself, as the idle timeouts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Idle {
    /// A request of its own is under way (or it waits for a server).
    Busy = 0,
    /// Idle outside a transaction (`client_idle_timeout`).
    Client = 1,
    /// Idle inside a transaction (`idle_transaction_timeout`).
    InTransaction = 2,
}

/// Milliseconds since the first call (a process-wide monotonic clock).
pub fn clock_ms() -> u64 {
    clock_ms_at(std::time::Instant::now())
}

/// [`clock_ms`] at a time already read.
pub fn clock_ms_at(now: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    now.saturating_duration_since(*EPOCH.get_or_init(std::time::Instant::now))
        .as_millis() as u64
}

type ClientMap = Arc<Mutex<HashMap<u64, Arc<ClientInfo>>>>;

/// Logged-in clients.
#[derive(Default)]
pub struct ClientRegistry {
    clients: ClientMap,
    next: AtomicU64,
}

/// Keeps a client listed until it drops.
pub struct ClientGuard {
    clients: ClientMap,
    /// The client's entry.
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.info.id);
    }
}

impl ClientRegistry {
    /// Lists a newly logged-in client.
    pub fn register(
        &self,
        database: &str,
        user: &str,
        addr: std::net::SocketAddr,
        idle_limits: [std::time::Duration; 3],
        cancel_key: (i32, i32),
    ) -> ClientGuard {
        let info = Arc::new(ClientInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            database: database.to_owned(),
            user: user.to_owned(),
            addr,
            since: SystemTime::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            pin: Mutex::new(None),
            idle: AtomicU8::new(Idle::Client as u8),
            idle_since: AtomicU64::new(clock_ms()),
            idle_limits: idle_limits.map(|d| d.as_millis() as u64),
            cancel_key: AtomicU64::new(pack_key(cancel_key)),
            cancel_sent: AtomicBool::new(false),
            timed_out: AtomicU8::new(0),
            killed: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        self.clients.lock().insert(info.id, info.clone());
        ClientGuard {
            clients: self.clients.clone(),
            info,
        }
    }

    /// Wakes every client idle past its limit (inside a transaction:
    /// `idle_transaction_timeout`; outside: `client_idle_timeout`); the
    /// session checks it is still idle before it ends. Returns the cancel
    /// keys of requests running past `query_timeout` (once per request),
    /// for the caller to cancel as a client's CancelRequest would.
    pub fn sweep_idle(&self) -> Vec<(Arc<ClientInfo>, (i32, i32))> {
        let now = clock_ms();
        let mut cancels = Vec::new();
        for info in self.clients.lock().values() {
            let idle = info.idle.load(Ordering::Relaxed);
            let limit = match idle {
                1 => info.idle_limits[1],
                2 => info.idle_limits[0],
                _ => info.idle_limits[2],
            };
            let since = info.idle_since.load(Ordering::Relaxed);
            if limit == 0 || now.saturating_sub(since) < limit {
                continue;
            }
            if idle == Idle::Busy as u8 {
                if !info.cancel_sent.swap(true, Ordering::Relaxed) {
                    let key = info.cancel_key.load(Ordering::Relaxed);
                    cancels.push((info.clone(), ((key >> 32) as i32, key as i32)));
                }
                continue;
            }
            info.timed_out.store(idle, Ordering::Relaxed);
            info.wake();
        }
        cancels
    }

    /// Wakes every session to look at what changed (the shutdown phase).
    pub fn wake_all(&self) {
        for info in self.clients.lock().values() {
            info.wake();
        }
    }

    /// Every logged-in client.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Process-wide state shared by sessions.
pub struct Context {
    config: RwLock<Arc<Config>>,
    client_tls: RwLock<Arc<ClientTls>>,
    users: RwLock<Arc<Users>>,
    /// The file the configuration came from (reload re-reads it).
    pub config_path: Option<PathBuf>,
    /// Server pools.
    pub pools: PoolSet,
    /// Averages of the last statistics period (SHOW STATS).
    pub stats_period: crate::stats::StatsPeriod,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// Logged-in clients.
    pub clients: ClientRegistry,
    /// Shutdown phase and live-session count.
    pub shutdown: Arc<Shutdown>,
    /// Distinct prepared statements of all clients.
    pub statements: Registry,
    /// Prometheus registry.
    pub metrics: Metrics,
    /// Admission of clients (`max_client_conn` permits).
    pub client_slots: Arc<Semaphore>,
    client_limit: AtomicUsize,
    /// Serializes reloads.
    pub(crate) reload_lock: Mutex<()>,
    /// Users found by `auth_query` (or found missing).
    pub auth_cache: crate::auth::AuthCache,
    /// [`mock_shape`] of the users in force.
    mock_shape: RwLock<(bool, u32)>,
    /// Key of the salts unknown users are challenged with: the same salt
    /// for a name at every attempt, as a real user's, and unguessable.
    pub mock_key: [u8; 32],
    /// Connections being told `max_client_conn` is reached; past
    /// [`MAX_REFUSALS`] more are closed at once.
    pub refusals: Arc<Semaphore>,
}

/// Connections answered with 53300 at once, each for up to
/// `client_login_timeout`: a flood past it costs a closed socket each.
pub const MAX_REFUSALS: usize = 256;

impl Context {
    /// Moves the process to a later shutdown phase and wakes every session
    /// to see it.
    pub fn advance_shutdown(&self, to: Phase) {
        self.shutdown.advance(to);
        self.clients.wake_all();
    }

    /// Builds the context for a validated configuration (fails when the
    /// TLS certificate or key can't be loaded).
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Self, String> {
        let peer_id = config.pgmux.peer_id;
        let users = build_users(&config, None);
        let shape = mock_shape(&users, config.pgmux.auth_user.is_some());
        let limit = config.pgmux.max_client_conn as usize;
        let client_tls = ClientTls::from_config(&config.pgmux)?;
        Ok(Self {
            client_tls: RwLock::new(Arc::new(client_tls)),
            config: RwLock::new(Arc::new(config)),
            users: RwLock::new(Arc::new(users)),
            config_path,
            pools: PoolSet::default(),
            stats_period: Default::default(),
            cancels: CancelRegistry::new(peer_id),
            clients: ClientRegistry::default(),
            shutdown: Arc::new(Shutdown::default()),
            statements: Registry::default(),
            metrics: Metrics::new(),
            client_slots: Arc::new(Semaphore::new(limit)),
            client_limit: AtomicUsize::new(limit),
            reload_lock: Mutex::new(()),
            auth_cache: Default::default(),
            mock_key: rand::random(),
            mock_shape: RwLock::new(shape),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        })
    }

    /// Client-facing TLS as configured now.
    pub fn client_tls(&self) -> Arc<ClientTls> {
        self.client_tls.read().clone()
    }

    /// Handles a CancelRequest: for a key this instance issued, cancels
    /// its client's query; for a peer's key, passes the request to that
    /// peer (once: the peer owns the key, so it does not pass it on).
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let outcome = match self.cancels.owner(pid) {
            None => self.cancels.cancel(pid, secret).await.as_str(),
            Some(owner) => {
                let peer = self.config().peer(owner).cloned();
                match peer {
                    Some(p) => {
                        crate::cancel::send_cancel((p.host.as_str(), p.port), pid, secret).await;
                        "peer"
                    }
                    None => {
                        tracing::debug!(owner, "cancel for an unknown peer dropped");
                        "dropped"
                    }
                }
            }
        };
        self.metrics.cancel(outcome);
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// What an unknown user is challenged with, shaped as the configured
    /// users are ([`mock_shape`]), as of the last (re)load.
    pub fn mock_shape(&self) -> (bool, u32) {
        *self.mock_shape.read()
    }

    /// A user's authentication data.
    pub fn user(&self, name: &str) -> Option<Arc<UserAuth>> {
        self.users.read().get(name).cloned()
    }

    /// Installs a new configuration, its TLS certificates and user table
    /// (reload step). Nothing changes if the certificates can't be loaded.
    pub(crate) fn install(&self, config: Arc<Config>) -> Result<(), String> {
        let tls = ClientTls::from_config(&config.pgmux)?;
        let users = build_users(&config, Some(&self.users.read()));
        *self.mock_shape.write() = mock_shape(&users, config.pgmux.auth_user.is_some());
        *self.client_tls.write() = Arc::new(tls);
        let limit = config.pgmux.max_client_conn as usize;
        *self.users.write() = Arc::new(users);
        *self.config.write() = config;
        let old = self.client_limit.swap(limit, Ordering::SeqCst);
        if limit > old {
            self.client_slots.add_permits(limit - old);
        } else if limit < old {
            // Only free permits can be withdrawn; those held by connected
            // clients come back when they leave, so a decrease below the
            // current client count is exact only after those clients go.
            self.client_slots.forget_permits(old - limit);
        }
        Ok(())
    }

    /// The Prometheus exposition, with gauges and counters brought up to date.
    pub fn render_metrics(&self) -> String {
        for (_, pool) in self.pools.all() {
            pool.export_metrics();
        }
        for b in self.pools.budgets() {
            let (used, limit) = b.usage();
            self.metrics.budget(b.scope, &b.name, used, limit);
        }
        let c = &self.statements.counters;
        self.metrics.prepared([
            c.hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
            c.reprepares.load(Ordering::Relaxed),
            c.evictions.load(Ordering::Relaxed),
        ]);
        self.metrics.render()
    }
}
