//! One client connection, from login to goodbye.
//!
//! The session reads whole messages from the client, takes a server from
//! its pool when a request needs one, forwards the raw frames, and passes
//! the server's replies back through the [`Expect`] queue. In
//! transaction mode the server goes back to the pool as soon as the queue is
//! empty, no extended-protocol batch is open and ReadyForQuery said `I`.

pub mod identity;
pub mod login;
pub mod params;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::tls::Stream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use std::time::{Duration, Instant};

use crate::cancel::CancelHandle;
use crate::config::PoolMode;
use crate::context::{ClientGuard, ClientInfo, ClientState, Context};
use crate::pool::{Checkout, Pool, PoolClient, PoolError};
use crate::prepared::{Hook, Limits, Outbox, Routed, Tracker};
use crate::protocol::error::{write_error, Severity};
use crate::protocol::expect::{Expect, Outcome, Reply, Req};
use crate::protocol::frame::{make_room, split_frame};
use crate::protocol::{be, encode, fe, ErrorFields, Frame, SqlState, TxStatus};
use crate::server::ServerError;
use crate::shutdown::Phase;
use crate::stats::ErrorReason;
use identity::ClientIdentity;
use login::{Login, LoginError, Opening};
use params::ClientParams;

/// How a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    /// The client said goodbye or went away.
    #[error("client closed the connection")]
    ClientGone,
    /// Tell the client this FATAL error, then close.
    #[error("{1}")]
    Fatal(String, String),
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

/// Serves one accepted client connection to the end.
pub async fn serve(mut stream: Stream, peer: SocketAddr, ctx: Arc<Context>) {
    let _live = ctx.shutdown.track();
    let login_timeout = ctx.config().pgmux.client_login_timeout;
    let opened =
        tokio::time::timeout(login_timeout, Box::pin(login::login(&mut stream, &ctx))).await;
    let login = match opened {
        Ok(Ok(Opening::Session(login))) => login,
        Ok(Ok(Opening::Admin(user, pending))) => {
            return Box::pin(crate::admin::run(stream, ctx, user, pending)).await
        }
        Ok(Ok(Opening::Cancelled)) => return,
        Ok(Err(LoginError::Fatal(code, msg))) => {
            tracing::debug!(%msg, "login refused");
            login::send_fatal(&mut stream, code, &msg).await;
            return;
        }
        Ok(Err(LoginError::Io(e))) => {
            tracing::debug!(error = %e, "client left during login");
            return;
        }
        Err(_) => {
            ctx.metrics.error(ErrorReason::LoginTimeout, "", "");
            login::send_fatal(
                &mut stream,
                SqlState::PROTOCOL_VIOLATION,
                "canceling authentication due to timeout",
            )
            .await;
            return;
        }
    };
    tracing::debug!(database = %login.key.database, user = %login.key.user, "client logged in");
    let mut session = Session::new(stream, peer, ctx, login);
    let end = session.run().await;
    Box::pin(session.finish(end)).await;
}

/// A logged-in client and the server it holds, if any.
struct Session {
    ctx: Arc<Context>,
    /// This client in the registry (SHOW CLIENTS, KILL).
    listed: ClientGuard,
    _counted: PoolClient,
    /// When the current transaction began (first request after idle).
    tx_started: Option<Instant>,
    client: Stream,
    /// Bytes from the client not yet handled.
    cbuf: BytesMut,
    /// Bytes for the client, written once per batch.
    cout: BytesMut,
    /// Bytes for the server, written once per batch.
    sout: BytesMut,
    pool: Pool,
    mode: PoolMode,
    server: Option<Checkout>,
    expect: Expect<Hook>,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// The client's transaction status as of the last ReadyForQuery.
    tx: TxStatus,
    /// An error ended the current extended-protocol batch (a local error, or
    /// the server died): drop the client's messages up to its Sync.
    skip_to_sync: bool,
    /// The client said goodbye with replies still owed: deliver them, then end.
    terminated: bool,
    /// Prepared statements (transaction mode with tracking on).
    stmts: Option<Tracker>,
    /// Replies owed by what the tracker routed, kept to reuse its space.
    routed: Vec<(Req, Reply, Hook)>,
    params: ClientParams,
    /// The role / session authorization this client set, if not its login's.
    identity: Option<Box<ClientIdentity>>,
    /// Something that may change identity ran during this hold: the server
    /// is restored before it goes back.
    identity_touched: bool,
    cancel: CancelHandle,
    max_msg: usize,
}

/// A signal from outside the connection.
enum Outside {
    /// The process moved to a new shutdown phase (the receiver watches on).
    Phase(Phase, watch::Receiver<Phase>),
    /// The admin console killed this client.
    Kill,
}

/// Waits for the next shutdown phase or a KILL of this client. Boxed: it
/// lives as long as the session, and idle sessions should stay small.
fn next_outside(
    mut watch: watch::Receiver<Phase>,
    info: Arc<ClientInfo>,
) -> Pin<Box<dyn Future<Output = Outside> + Send>> {
    Box::pin(async move {
        tokio::select! {
            _ = info.kill.notified() => Outside::Kill,
            Ok(()) = watch.changed() => {
                let now = *watch.borrow_and_update();
                Outside::Phase(now, watch)
            }
        }
    })
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
        let listed = ctx
            .clients
            .register(&login.key.database, &login.key.user, peer.to_string());
        Self {
            listed,
            _counted: login.pool.client(),
            tx_started: None,
            stmts: tracking.then(|| Tracker::new(limits)),
            routed: Vec::new(),
            ctx,
            client,
            // The login's buffer (512 bytes to start): idle clients are the
            // common case, and buffers grow to whatever a client sends.
            cbuf: login.pending,
            cout: BytesMut::new(),
            sout: BytesMut::new(),
            pool: login.pool,
            mode: login.mode,
            server: None,
            expect: Expect::default(),
            unsynced: false,
            tx: TxStatus::Idle,
            skip_to_sync: false,
            terminated: false,
            params: login.params,
            identity: None,
            identity_touched: false,
            cancel: login.cancel,
            max_msg,
        }
    }

    /// The main loop: client bytes, server bytes and shutdown, whichever comes first.
    async fn run(&mut self) -> End {
        let mut watch = self.ctx.shutdown.watch();
        let mut phase = *watch.borrow_and_update();
        let listed = self.listed.info.clone();
        // One future for the rare signals, kept across iterations: built
        // afresh each time round, its two wait-list registrations cost more
        // than the rest of a round trip's bookkeeping.
        let mut outside = next_outside(watch, listed.clone());
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
            if self.terminated && self.expect.is_empty() {
                return End::ClientGone;
            }
            // Small minimum: an idle client keeps its starting 512 bytes.
            make_room(&mut self.cbuf, 128, 1024);
            // Biased: replies first (they free the server soonest), the
            // rare signals last, so a round trip polls only what woke it.
            let res = tokio::select! {
                biased;
                r = read_server(&mut self.server) => match r {
                    Ok(0) => self.on_server_lost(ServerError::Protocol("server closed the connection unexpectedly".into())).await,
                    Err(e) => self.on_server_lost(e.into()).await,
                    Ok(_) => self.on_server_data().await,
                },
                r = self.client.read_buf(&mut self.cbuf), if !self.terminated => match r {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(_) => self.on_client_data().await,
                },
                signal = outside.as_mut() => match signal {
                    Outside::Phase(now, watch) => {
                        phase = now;
                        outside = next_outside(watch, listed.clone());
                        Ok(())
                    }
                    Outside::Kill => Err(fatal(SqlState::ADMIN_SHUTDOWN, "terminating connection due to administrator command (KILL)")),
                },
            };
            if let Err(end) = res {
                return end;
            }
        }
    }

    /// During shutdown a session ends once it holds no transaction.
    fn check_shutdown(&self, phase: Phase) -> Option<End> {
        let msg = "terminating connection due to administrator command";
        match phase {
            Phase::Running => None,
            Phase::Draining if !self.is_idle() => None,
            _ => Some(fatal(SqlState::ADMIN_SHUTDOWN, msg)),
        }
    }

    /// No request in flight and no transaction open.
    fn is_idle(&self) -> bool {
        self.expect.is_empty() && !self.unsynced && self.tx == TxStatus::Idle
    }

    async fn on_client_data(&mut self) -> Result<(), End> {
        loop {
            let frame = match split_frame(&mut self.cbuf, self.max_msg) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.count_error(ErrorReason::ProtocolError);
                    return Err(fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("invalid frontend message: {e}"),
                    ));
                }
            };
            match frame.tag() {
                fe::TERMINATE => {
                    self.flush_server().await?;
                    if self.expect.is_empty() {
                        return Err(End::ClientGone);
                    }
                    // Replies still owed are delivered first, as PostgreSQL
                    // finishes what came before a Terminate.
                    self.terminated = true;
                    self.cbuf.clear();
                    break;
                }
                fe::PASSWORD => {
                    return Err(fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "unexpected password message after login",
                    ));
                }
                _ => {}
            }
            self.on_client_frame(frame).await?;
        }
        self.flush_server().await?;
        self.flush_client().await
    }

    async fn on_client_frame(&mut self, frame: Frame) -> Result<(), End> {
        let tag = frame.tag();
        if self.skip_to_sync && tag != fe::SYNC {
            return Ok(());
        }
        self.skip_to_sync = false;
        let changes_identity = identity::message_changes_identity(&frame);
        self.route_client_frame(&frame).await?;
        if changes_identity {
            self.note_identity_change(&frame);
        }
        Ok(())
    }

    async fn route_client_frame(&mut self, frame: &Frame) -> Result<(), End> {
        let tag = frame.tag();
        if self.route_tracked(frame).await? {
            return Ok(());
        }
        match tag {
            // With no server held nothing is outstanding: answer it here.
            fe::SYNC if self.server.is_none() => {
                encode::ready_for_query(&mut self.cout, self.tx);
                Ok(())
            }
            fe::FLUSH if self.server.is_none() => Ok(()),
            _ => self.forward_needing_server(frame).await,
        }
    }

    /// Lets the prepared-statement tracker route a message, taking a server
    /// when it needs one; `false` when the message is not a tracked one.
    async fn route_tracked(&mut self, frame: &Frame) -> Result<bool, End> {
        loop {
            let Some(tracker) = self.stmts.as_mut() else {
                return Ok(false);
            };
            let mut out = Outbox::new(&mut self.sout, &mut self.routed);
            let server = self.server.as_mut().map(|s| &mut s.statements);
            let routed = tracker.route(frame, server, &self.ctx.statements, self.tx, &mut out);
            let (forward, skip, unsynced, identity) = (
                out.forward,
                out.skip_to_sync,
                out.unsynced,
                out.changes_identity,
            );
            match routed {
                Err(e) => return Err(fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())),
                Ok(Routed::Untracked) => return Ok(false),
                Ok(Routed::NeedServer) => self.ensure_server().await?,
                Ok(Routed::Done) => {
                    if forward {
                        self.sout.extend_from_slice(frame.raw());
                    }
                    let mut routed = std::mem::take(&mut self.routed);
                    for (req, reply, hook) in routed.drain(..) {
                        self.push(req, reply, hook);
                    }
                    self.routed = routed;
                    self.unsynced |= unsynced;
                    self.skip_to_sync |= skip;
                    self.identity_touched |= identity;
                    return Ok(true);
                }
            }
        }
    }

    /// A request completed: the tracker learns what the server now holds.
    fn on_done(&mut self, hook: Hook) {
        if let Some(t) = self.stmts.as_mut() {
            t.on_done(hook, self.server.as_mut().map(|s| &mut s.statements));
        }
    }

    /// A request failed or was skipped: the tracker undoes what it recorded.
    fn undo(&mut self, hook: Hook, stale_plan: bool, failed: bool) {
        if let Some(t) = self.stmts.as_mut() {
            let server = self.server.as_mut().map(|s| &mut s.statements);
            t.undo(hook, server, stale_plan, failed);
        }
    }

    /// Forwards a message, taking a server first if none is held.
    async fn forward_needing_server(&mut self, frame: &Frame) -> Result<(), End> {
        self.ensure_server().await?;
        self.forward(frame, Hook::None);
        Ok(())
    }

    /// Queues a client message for the server and notes the reply it owes.
    fn forward(&mut self, frame: &Frame, hook: Hook) {
        if matches!(frame.tag(), fe::COPY_DONE | fe::COPY_FAIL) {
            self.expect.end_copy_in();
        }
        if let Some(req) = Req::from_tag(frame.tag()) {
            match req {
                Req::Sync => self.unsynced = false,
                Req::Query | Req::FunctionCall => {}
                _ => self.unsynced = true,
            }
            self.push(req, Reply::Forward, hook);
        }
        self.sout.extend_from_slice(frame.raw());
    }

    /// Notes an owed reply; undoes the hook at once if the server will skip it.
    fn push(&mut self, req: Req, reply: Reply, hook: Hook) {
        if let Some(skipped) = self.expect.push(req, reply, hook, &mut self.cout) {
            self.undo(skipped, false, false);
        }
    }

    /// Takes a server from the pool, unless one is held, and makes its
    /// parameters the client's.
    async fn ensure_server(&mut self) -> Result<(), End> {
        if self.server.is_some() {
            return Ok(());
        }
        // Boxed: waiting for a pool and syncing parameters are the deepest
        // futures of a session; inline, every idle client would carry their
        // space for nothing.
        match self.try_hold() {
            Some(true) => Ok(()),
            Some(false) => Box::pin(self.sync_held()).await,
            None => Box::pin(self.acquire()).await,
        }
    }

    /// The common case under load: an idle server taken with no waiting and
    /// no future. `Some(in_sync)` when one was taken: `false` means its
    /// parameters still need syncing. (Not inline in `ensure_server`: a
    /// server held in a local there would add its size to every session.)
    fn try_hold(&mut self) -> Option<bool> {
        let server = self.pool.try_get()?;
        self.pool.metrics().observe_wait(Duration::ZERO);
        let in_sync = self.params.in_sync(&server) && self.identity.is_none();
        self.hold(server);
        Some(in_sync)
    }

    async fn acquire(&mut self) -> Result<(), End> {
        self.listed.info.set_state(ClientState::Waiting);
        let asked = Instant::now();
        let got = self.pool.get().await;
        self.pool.metrics().observe_wait(asked.elapsed());
        let server = match got {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool = %self.pool.name(), error = %e, "no server for client");
                self.count_error(pool_error_reason(&e));
                return Err(fatal(pool_error_code(&e), e.to_string()));
            }
        };
        self.hold(server);
        self.sync_held().await
    }

    /// Makes the held server's parameters and identity the client's; a
    /// server that fails at it is closed.
    async fn sync_held(&mut self) -> Result<(), End> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = self.params.sync(server, self.max_msg).await {
            self.close_server();
            return Err(server_error_end(e));
        }
        self.apply_identity().await
    }

    /// Closes the held server (its state is unknown) and stops routing
    /// cancels to it.
    fn close_server(&mut self) {
        self.identity_touched = false;
        self.cancel.slot.set_target(None);
        self.listed.info.set_state(ClientState::Idle);
        if let Some(s) = self.server.take() {
            s.discard();
        }
    }

    /// Holds a server: the client's requests go there now.
    fn hold(&mut self, server: Checkout) {
        if let Some(t) = self.stmts.as_mut() {
            t.on_new_server();
        }
        self.listed.info.set_state(ClientState::Active);
        self.cancel.slot.set_target(Some(server.key));
        self.server = Some(server);
    }

    async fn on_server_data(&mut self) -> Result<(), End> {
        let mut fatal_from_server = false;
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let frame = match server.next_frame(self.max_msg) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    return self
                        .on_server_lost(ServerError::Protocol(e.to_string()))
                        .await;
                }
            };
            let mut stale_plan = false;
            match frame.tag() {
                be::PARAMETER_STATUS => {
                    if let Some((k, v)) = server.note_parameter_status(frame.body()) {
                        self.params.on_parameter_status(&k, &v);
                        server.params_fingerprint = self.params.fingerprint();
                    }
                }
                be::READY_FOR_QUERY => {
                    if let Some(s) = frame.body().first().and_then(|b| TxStatus::from_byte(*b)) {
                        self.tx = s;
                    }
                    self.on_ready();
                }
                be::ERROR_RESPONSE => {
                    let (stale, fatal) = classify_error(&frame);
                    stale_plan = stale;
                    fatal_from_server |= fatal;
                }
                _ => {}
            }
            match self.expect.on_server(&frame, &mut self.cout) {
                Outcome::Pending => {}
                Outcome::Done(hook) => self.on_done(hook),
                Outcome::Failed(hooks) => {
                    // The first is the request the server rejected, the rest
                    // were skipped.
                    for (i, h) in hooks.into_iter().enumerate().rev() {
                        self.undo(h, stale_plan, i == 0);
                    }
                }
            }
        }
        self.flush_client().await?;
        if fatal_from_server {
            // The server is going away: requests must not be sent to it any more.
            return self
                .on_server_lost(ServerError::Protocol(
                    "server terminated the connection".into(),
                ))
                .await;
        }
        if self.mode == PoolMode::Transaction && self.is_idle() {
            if self.identity_needs_restore() {
                Box::pin(self.restore_identity()).await?;
            }
            self.release();
        }
        Ok(())
    }

    /// The server connection failed under the client. Requests in flight get
    /// an error and a ReadyForQuery each so the client's protocol state stays
    /// sound; a client inside a transaction (or in session mode) loses its
    /// session state, so it is disconnected.
    async fn on_server_lost(&mut self, err: ServerError) -> Result<(), End> {
        // Boxed: rare, and its future would otherwise sit in every session.
        Box::pin(self.server_lost(err)).await
    }

    async fn server_lost(&mut self, err: ServerError) -> Result<(), End> {
        tracing::warn!(pool = %self.pool.name(), error = %err, "server connection lost");
        self.count_error(ErrorReason::ServerLost);
        self.close_server();
        let in_tx = self.tx != TxStatus::Idle;
        let error_sent = self.expect.error_sent();
        let (readies, tail, hooks) = self.expect.abandon();
        tracing::debug!(
            readies,
            tail,
            error_sent,
            in_tx,
            "answering requests the lost server owed"
        );
        for h in hooks.into_iter().rev() {
            self.undo(h, false, false);
        }
        if self.mode == PoolMode::Session || (readies == 0 && !tail) {
            return Err(fatal(
                SqlState::CONNECTION_FAILURE,
                "server connection lost",
            ));
        }
        let msg = if in_tx {
            "server connection lost; the transaction was rolled back"
        } else {
            "server connection lost"
        };
        let mut owe_error = !error_sent;
        let code = SqlState::CONNECTION_FAILURE.0;
        for _ in 0..readies {
            if owe_error {
                write_error(&mut self.cout, Severity::Error, code, msg);
            }
            encode::ready_for_query(&mut self.cout, TxStatus::Idle);
            owe_error = true;
        }
        if tail {
            if owe_error {
                write_error(&mut self.cout, Severity::Error, code, msg);
            }
            self.skip_to_sync = true;
        }
        self.tx = TxStatus::Idle;
        self.unsynced = false;
        self.flush_client().await
    }

    /// Counts an error this client got, under its database and user.
    fn count_error(&self, reason: ErrorReason) {
        let info = &self.listed.info;
        self.ctx.metrics.error(reason, &info.database, &info.user);
    }

    fn release(&mut self) {
        if let Some(s) = self.server.take() {
            self.cancel.slot.set_target(None);
            self.listed.info.set_state(ClientState::Idle);
            s.release();
        }
    }

    /// Counts a ReadyForQuery from the server: a query, and a transaction
    /// when the client is idle again.
    fn on_ready(&mut self) {
        let counters = &self.pool.metrics().counters;
        counters
            .queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.tx == TxStatus::Idle {
            if let Some(t) = self.tx_started.take() {
                self.pool.metrics().observe_transaction(t.elapsed());
            }
        }
    }

    async fn flush_server(&mut self) -> Result<(), End> {
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        let res = server.write_all(&self.sout).await;
        let counters = &self.pool.metrics().counters;
        counters
            .bytes_in
            .fetch_add(self.sout.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.tx_started.get_or_insert_with(Instant::now);
        self.sout.clear();
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.on_server_lost(e.into()).await,
        }
    }

    async fn flush_client(&mut self) -> Result<(), End> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let res = self.client.write_all(&self.cout).await;
        let counters = &self.pool.metrics().counters;
        counters
            .bytes_out
            .fetch_add(self.cout.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.cout.clear();
        res.map_err(|_| End::ClientGone)
    }

    /// Ends the session: tells the client why if it is still there, and
    /// returns the server only if it is clean.
    async fn finish(mut self, end: End) {
        if let End::Fatal(code, msg) = &end {
            let mut out = BytesMut::new();
            write_error(&mut out, Severity::Fatal, code, msg);
            let _ = self.client.write_all(&out).await;
        }
        let idle = self.is_idle();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        self.cancel.slot.set_target(None);
        let clean = idle && server.rbuf.is_empty();
        if !clean {
            tracing::debug!(pool = %self.pool.name(), "closing server left mid-transaction by its client");
            self.close_server();
            return;
        }
        if self.mode == PoolMode::Session {
            let reset = self.pool.settings().reset_query.clone();
            if server.reset(&reset, self.max_msg).await.is_err() {
                self.close_server();
                return;
            }
        }
        if self.identity_needs_restore() {
            // The client is gone: only whether the server came back matters.
            let _ = self.restore_identity().await;
        }
        self.release();
    }
}

fn server_error_end(e: ServerError) -> End {
    match e {
        ServerError::Server { code, message } => End::Fatal(code, message),
        e => fatal(SqlState::CONNECTION_FAILURE, e.to_string()),
    }
}

/// Reads a server ErrorResponse: (is it "cached plan must not change result
/// type", i.e. the statement must be prepared again after a schema change;
/// is it FATAL, i.e. the server is closing).
fn classify_error(frame: &Frame) -> (bool, bool) {
    let Some(f) = ErrorFields::parse(frame.body()) else {
        return (false, false);
    };
    tracing::debug!(code = %String::from_utf8_lossy(f.code), message = %f.message_lossy(), "server error");
    let stale = f.code == b"0A000"
        && f.message
            .starts_with(b"cached plan must not change result type");
    let fatal = matches!(f.severity, b"FATAL" | b"PANIC");
    (stale, fatal)
}
