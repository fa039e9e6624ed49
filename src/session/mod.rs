//! One client connection, from login to goodbye.
//!
//! The session is a synchronous protocol core ([`core`]: what the client
//! asked, what the server owes, what the transaction may have changed)
//! inside an async shell (this module and the files beside it: sockets,
//! the held server, the pool, timers, metrics). The shell reads whole
//! messages from the client, asks the core what each needs, takes a server
//! from the pool when one is needed, writes what the core queued, and
//! feeds the server's replies back to it. In transaction mode the server
//! goes back to the pool once the reply queue is empty, no
//! extended-protocol batch is open and ReadyForQuery said `I`
//! ([`Session::finish_transaction`]).

mod abandoned;
mod core;
mod effects;
mod hold;
pub mod identity;
pub mod login;
mod outside;
pub mod params;
mod pin;
mod replies;
mod requests;
mod settings;
mod verify;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::Stream;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use std::time::Instant;

use crate::cancel::CancelHandle;
use crate::config::PoolMode;
use crate::context::{ClientGuard, Context, Idle};
use crate::pool::{Checkout, Pool, PoolClient, PoolError};
use crate::prepared::{Limits, Tracker};
use crate::protocol::frame::make_room;
use crate::protocol::{SqlState, TxStatus};
use crate::server::ServerError;
use crate::shutdown::Phase;
use crate::stats::ErrorReason;
use core::Core;
use login::{Login, LoginError, Opening};
use outside::Outsider;

/// How a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    /// The client said goodbye or went away.
    #[error("client closed the connection")]
    ClientGone,
    /// Tell the client this FATAL error, then close.
    #[error("{1}")]
    Fatal(String, String),
    /// The server ended the session the client had with it (session mode,
    /// or a client that kept its server): the client has the server's own
    /// FATAL error, and its connection closes, as a direct one would.
    #[error("the server ended the session")]
    ServerEnded,
}

fn fatal(code: SqlState, msg: impl Into<String>) -> End {
    End::Fatal(code.0.to_owned(), msg.into())
}

/// How a failure to get a server is counted.
pub fn pool_error_reason(e: &PoolError) -> ErrorReason {
    match e {
        PoolError::WaitTimeout { .. } => ErrorReason::WaitTimeout,
        PoolError::Connect { .. } | PoolError::Closed(_) => ErrorReason::ConnectFailed,
    }
}

/// The SQLSTATE a client sees when it gets no server.
pub fn pool_error_code(e: &PoolError) -> SqlState {
    match e {
        PoolError::WaitTimeout { .. } => SqlState::TOO_MANY_CONNECTIONS,
        PoolError::Connect { .. } => SqlState::CANNOT_CONNECT,
        PoolError::Closed(_) => SqlState::ADMIN_SHUTDOWN,
    }
}

/// Serves one accepted client connection to the end. The caller counts
/// the session as live (`Shutdown::track`) before it
/// spawns this, so a shutdown never misses a session that has not started.
pub async fn serve(stream: Stream, peer: SocketAddr, ctx: Arc<Context>) {
    // The login runs in a boxed future of its own, freed once the client is
    // in: what it held would otherwise keep its room in every idle
    // client's task (a third of it).
    let Some(mut session) = Box::pin(open(stream, peer, ctx)).await else {
        return;
    };
    let end = session.run().await;
    Box::pin(session.finish(end)).await;
}

/// Logs a client in and makes its session; `None` when the connection
/// ended there (refused, a cancel request, or an admin console served to
/// its end).
async fn open(mut stream: Stream, peer: SocketAddr, ctx: Arc<Context>) -> Option<Session> {
    let login_timeout = ctx.config().pgmux.client_login_timeout;
    let opened = tokio::time::timeout(
        login_timeout,
        Box::pin(login::login(&mut stream, &ctx, peer)),
    )
    .await;
    let login = match opened {
        Ok(Ok(Opening::Session(login))) => login,
        Ok(Ok(Opening::Admin(user, pending))) => {
            Box::pin(crate::admin::run(stream, ctx, user, pending)).await;
            return None;
        }
        Ok(Ok(Opening::Cancelled)) => return None,
        Ok(Err(e)) => {
            login_failed(&mut stream, e).await;
            return None;
        }
        Err(_) => {
            ctx.metrics.error(ErrorReason::LoginTimeout, "", "");
            let msg = "canceling authentication due to timeout";
            login::send_fatal(&mut stream, SqlState::PROTOCOL_VIOLATION, msg).await;
            return None;
        }
    };
    tracing::debug!(database = %login.key.database, user = %login.key.user, "client logged in");
    let key_pending = login.key_pending;
    let mut session = Session::new(stream, peer, ctx, login);
    if key_pending {
        if let Err(end) = Box::pin(session.welcome_with_server()).await {
            Box::pin(session.finish(end)).await;
            return None;
        }
    }
    Some(session)
}

/// Tells a refused client why; a client that left hears nothing.
async fn login_failed(stream: &mut Stream, e: LoginError) {
    match e {
        LoginError::Fatal(code, msg) => {
            tracing::debug!(%msg, "login refused");
            login::send_fatal(stream, code, &msg).await;
        }
        LoginError::Io(e) => tracing::debug!(error = %e, "client left during login"),
    }
}

/// The async shell around a logged-in client's [`Core`]: its socket, the
/// server it holds (if any), the pool, timers, the registry entry and the
/// metrics. Everything else the session knows is the core's.
struct Session {
    ctx: Arc<Context>,
    /// This client in the registry (SHOW CLIENTS, KILL).
    listed: ClientGuard,
    _counted: PoolClient,
    /// When the session last woke (read once per wake-up, as PgBouncer
    /// caches its clock per loop: the hot path needs the time several
    /// times and a clock read is not free).
    now: Instant,
    /// When the current transaction began (first request after idle).
    tx_started: Option<Instant>,
    /// When the request now under way was sent (SHOW STATS query time).
    query_started: Option<Instant>,
    /// Until when a client that has not finished a transaction yet is
    /// waited for by a drain: one that connected as shutdown began (or
    /// just before) came for a transaction and gets it.
    first_tx_grace: Option<Instant>,
    client: Stream,
    /// Bytes from the client not yet handled.
    cbuf: BytesMut,
    pool: Pool,
    server: Option<Checkout>,
    /// The protocol state.
    core: Core,
    /// The next client message waits for the server's replies (behind a
    /// DEALLOCATE ALL, say): nothing more is read from the client until
    /// they come.
    waiting: bool,
    /// Whether the client waits on itself, as last told to the registry.
    idle: Idle,
    cancel: CancelHandle,
}

/// While a message waits for the server's replies, the client is still
/// read (so a client that leaves is seen, and its server recovered at
/// once), up to this much.
const WAITING_READ_ROOM: usize = 64 * 1024;

/// Room a session keeps for its next read: all an idle client holds.
const IDLE_READ_ROOM: usize = 128;

/// How long a new client has to start its first transaction before a
/// drain tells it 57P01.
const FIRST_TX_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for the first-transaction grace to end (lazily: the branch is
/// built every round but only a draining session polls it).
async fn grace_over(until: Option<Instant>) {
    if let Some(t) = until {
        // Boxed: the timer would take room in every idle session's state.
        Box::pin(tokio::time::sleep_until(t.into())).await;
    }
}

/// Reads from the held server, or waits forever when there is none.
async fn read_server(server: &mut Option<Checkout>) -> io::Result<usize> {
    match server {
        Some(s) => s.read_more().await,
        None => std::future::pending().await,
    }
}

impl Session {
    fn new(client: Stream, peer: SocketAddr, ctx: Arc<Context>, login: Login) -> Self {
        let cfg = ctx.config();
        let max_msg = cfg.pgmux.max_message_size;
        let tracking = login.mode == PoolMode::Transaction && cfg.pgmux.max_prepared_statements > 0;
        let limits = Limits {
            per_client: cfg.pgmux.max_client_prepared_statements,
            per_server: cfg.pgmux.max_prepared_statements,
            track_unnamed: cfg.pgmux.track_unnamed_statements,
        };
        let st = login.pool.settings();
        let timeouts = [
            st.idle_transaction_timeout,
            st.client_idle_timeout,
            st.query_timeout,
        ];
        let key = (login.cancel.slot.pid, login.cancel.slot.secret);
        let listed =
            ctx.clients
                .register(&login.key.database, &login.key.user, peer, timeouts, key);
        let stmts = tracking.then(|| Tracker::new(limits));
        Self {
            listed,
            _counted: login.pool.client(),
            now: Instant::now(),
            tx_started: None,
            query_started: None,
            first_tx_grace: Some(Instant::now() + FIRST_TX_GRACE),
            core: Core::new(login.mode, max_msg, stmts, login.params),
            ctx,
            client,
            // The login's buffer if a request came with the login, else a
            // small one: idle clients are the common case, and buffers grow
            // to whatever a client sends.
            cbuf: if login.pending.is_empty() {
                BytesMut::with_capacity(IDLE_READ_ROOM)
            } else {
                login.pending
            },
            pool: login.pool,
            server: None,
            waiting: false,
            idle: Idle::Client,
            cancel: login.cancel,
        }
    }

    /// The main loop: client bytes, server bytes and shutdown, whichever comes first.
    async fn run(&mut self) -> End {
        let mut phase = self.ctx.shutdown.phase();
        // Woken by a KILL, an idle timeout or a new shutdown phase; polled
        // at the cost of one atomic otherwise.
        let mut outside = Outsider::new(self.listed.info.clone());
        // Messages that arrived together with the login.
        if !self.cbuf.is_empty() {
            if let Err(end) = self.on_client_data().await {
                return end;
            }
        }
        loop {
            if let Some(end) = self.check_shutdown(phase) {
                return end;
            }
            if self.core.terminated && self.core.expect.is_empty() {
                return End::ClientGone;
            }
            // Small minimum: an idle client keeps its starting buffer.
            make_room(&mut self.cbuf, IDLE_READ_ROOM, 1024);
            // Biased: replies first (they free the server soonest), the
            // rare signals last, so a round trip polls only what woke it.
            let res = tokio::select! {
                biased;
                r = read_server(&mut self.server) => {
                    let res = match r {
                        Ok(0) => self.on_server_lost(ServerError::Protocol("server closed the connection unexpectedly".into())).await,
                        Err(e) => self.on_server_lost(e.into()).await,
                        Ok(_) => {
                            self.now = Instant::now();
                            self.on_server_data().await
                        }
                    };
                    // A message that waited for these replies goes on.
                    match res {
                        Ok(()) if self.waiting => self.on_client_data().await,
                        res => res,
                    }
                },
                r = self.client.read_buf(&mut self.cbuf), if !self.core.terminated && (!self.waiting || self.cbuf.len() < WAITING_READ_ROOM) => match r {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(_) => {
                        self.now = Instant::now();
                        self.mark_idle(Idle::Busy);
                        self.on_client_data().await
                    }
                },
                () = &mut outside => {
                    self.now = Instant::now();
                    phase = self.ctx.shutdown.phase();
                    self.killed_for().map_or(Ok(()), Err)
                },
                // Draining: a new client that never starts its first
                // transaction is told 57P01 when its grace ends.
                () = grace_over(self.first_tx_grace), if phase == Phase::Draining && self.first_tx_grace.is_some() => {
                    self.now = Instant::now();
                    self.first_tx_grace = None;
                    Ok(())
                },
            };
            if let Err(end) = res {
                return end;
            }
            self.mark_idle(self.waits_on());
        }
    }

    /// What the session waits for now, as the idle timeouts see it.
    fn waits_on(&self) -> Idle {
        if self.core.owes_replies() {
            Idle::Busy
        } else if self.core.tx == TxStatus::Idle {
            Idle::Client
        } else {
            Idle::InTransaction
        }
    }

    /// Tells the registry (and so the idle sweeper) when this changes.
    fn mark_idle(&mut self, idle: Idle) {
        if idle != self.idle {
            self.idle = idle;
            self.listed.info.set_idle(idle, self.now);
        }
    }

    /// Why the session was woken: the admin console's KILL, or an idle
    /// timeout it still deserves (the client may have sent something since
    /// the sweep); `None` to go on (a new shutdown phase is looked at by
    /// the loop).
    fn killed_for(&self) -> Option<End> {
        let info = &self.listed.info;
        if info.take_killed() {
            let msg = "terminating connection due to administrator command (KILL)";
            return Some(fatal(SqlState::ADMIN_SHUTDOWN, msg));
        }
        let (kind, code, msg) = match info.take_timeout() {
            None => return None,
            Some(t) if t != self.idle => return None,
            Some(Idle::InTransaction) => (
                "idle_transaction",
                SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout",
            ),
            Some(_) => (
                "client_idle",
                SqlState::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout",
            ),
        };
        tracing::info!(client = info.id, database = %info.database, user = %info.user, kind, "client timed out");
        self.ctx.metrics.client_timeout(kind);
        Some(fatal(code, msg))
    }

    /// During shutdown a session ends once it holds no transaction.
    fn check_shutdown(&self, phase: Phase) -> Option<End> {
        let msg = "terminating connection due to administrator command";
        match phase {
            Phase::Running => None,
            Phase::Draining if !self.core.is_idle() => None,
            Phase::Draining if self.first_tx_grace.is_some_and(|t| Instant::now() < t) => None,
            _ => Some(fatal(SqlState::ADMIN_SHUTDOWN, msg)),
        }
    }
}

fn server_error_end(e: ServerError) -> End {
    match e {
        ServerError::Server { code, message } => End::Fatal(code, message),
        e => fatal(SqlState::CONNECTION_FAILURE, e.to_string()),
    }
}
