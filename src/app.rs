//! Wiring: binds the listeners, builds the shared context, runs until a
//! signal (or the admin console, or the caller) asks to stop, then shuts
//! down in order: stop accepting, let transactions finish up to
//! `shutdown_timeout`, close the rest. SIGHUP reloads the configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::context::Context;
use crate::shutdown::Phase;

/// A running pgmux instance.
pub struct Proxy {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// The listening sockets, for a successor to take over.
    listener_fd: std::os::fd::RawFd,
    metrics_fd: Option<std::os::fd::RawFd>,
    ctx: Arc<Context>,
    accept: JoinHandle<()>,
}

fn bind(addr: SocketAddr, cfg: &Config) -> anyhow::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if cfg.pgmux.so_reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    crate::listener::tune(socket2::SockRef::from(&socket), cfg);
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into())?)
}

impl Proxy {
    /// Starts serving a configuration (port 0 picks a free port). RELOAD
    /// has no file to re-read.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with_path(config, None).await
    }

    /// Loads a config file and starts serving it; reloads re-read the file.
    pub async fn start_file(path: &Path) -> anyhow::Result<Self> {
        let config = Config::load(path).map_err(|e| anyhow::anyhow!(e.located(path)))?;
        Self::start_with_path(config, Some(path.to_path_buf())).await
    }

    async fn start_with_path(config: Config, path: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_on(config, path, Vec::new()).await
    }

    /// Starts serving, on listening sockets handed over by a running
    /// process when there are any (the client one, then the metrics one),
    /// else on new ones.
    async fn start_on(
        config: Config,
        path: Option<PathBuf>,
        inherited: Vec<std::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let mut inherited = inherited.into_iter();
        let adopt = |l: std::net::TcpListener| -> anyhow::Result<TcpListener> {
            l.set_nonblocking(true)?;
            Ok(TcpListener::from_std(l)?)
        };
        let listener = match inherited.next() {
            Some(l) => adopt(l)?,
            None => bind(config.listen_addr()?, &config)?,
        };
        let addr = listener.local_addr()?;
        use std::os::fd::AsRawFd;
        let listener_fd = listener.as_raw_fd();
        let metrics_listener = match (&config.metrics, inherited.next()) {
            (Some(_), Some(l)) => Some(adopt(l)?),
            (Some(m), None) => Some(bind(m.listen.parse().context("metrics.listen")?, &config)?),
            (None, _) => None,
        };
        let ctx = Arc::new(Context::new(config, path).map_err(|e| anyhow::anyhow!(e))?);
        let metrics_fd = metrics_listener.as_ref().map(|l| l.as_raw_fd());
        let metrics_addr = match metrics_listener {
            Some(l) => {
                let a = l.local_addr()?;
                let scrape = ctx.clone();
                let render: crate::stats::http::Render = Arc::new(move || scrape.render_metrics());
                let probe = Arc::downgrade(&ctx);
                let ready: crate::stats::http::Ready = Arc::new(move || {
                    let ctx = probe.upgrade();
                    Box::pin(async move {
                        match ctx {
                            Some(ctx) => is_ready(&ctx).await,
                            None => false,
                        }
                    })
                });
                tokio::spawn(crate::stats::http::serve(
                    l,
                    render,
                    ready,
                    ctx.shutdown.watch(),
                ));
                tracing::info!(addr = %a, "metrics on /metrics");
                Some(a)
            }
            None => None,
        };
        tokio::spawn(upkeep(Arc::downgrade(&ctx)));
        tokio::spawn(sweep_idle(Arc::downgrade(&ctx)));
        let accept = tokio::spawn(crate::listener::run(listener, ctx.clone()));
        tracing::info!(%addr, "pgmux listening");
        Ok(Self {
            addr,
            metrics_addr,
            listener_fd,
            metrics_fd,
            ctx,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the `/metrics` endpoint, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The shared state, for inspection.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Serves `takeover_socket` (when set) until a successor has taken the
    /// listening sockets; never returns otherwise.
    async fn offer_takeover(&self, path: &Path) {
        if path.as_os_str().is_empty() {
            return std::future::pending().await;
        }
        let mut fds = vec![self.listener_fd];
        fds.extend(self.metrics_fd);
        if let Err(e) = crate::takeover::offer(path, fds).await {
            tracing::error!(error = %e, path = %path.display(), "takeover_socket unavailable");
            std::future::pending::<()>().await;
        }
    }

    /// Waits until something (the admin SHUTDOWN) starts a shutdown.
    pub async fn shutdown_requested(&self) {
        let mut phase = self.ctx.shutdown.watch();
        let _ = phase.wait_for(|p| *p != Phase::Running).await;
    }

    /// Graceful shutdown: stop accepting, wait for open transactions up to
    /// `shutdown_timeout`, then close every session with 57P01.
    pub async fn shutdown(self) {
        let sd = &self.ctx.shutdown;
        self.ctx.advance_shutdown(Phase::Draining);
        let _ = self.accept.await;
        let grace = self.ctx.config().pgmux.shutdown_timeout;
        if tokio::time::timeout(grace, sd.all_closed()).await.is_err() {
            tracing::warn!(
                sessions = sd.live(),
                "shutdown_timeout reached; closing remaining sessions"
            );
        }
        self.ctx.advance_shutdown(Phase::Terminating);
        let _ = tokio::time::timeout(Duration::from_secs(2), sd.all_closed()).await;
    }
}

/// Ready for clients: still accepting, and a server can be reached (a pool
/// has open connections and no connect failure, or a database's first host
/// accepts a TCP connection within a second). No database configured:
/// ready.
async fn is_ready(ctx: &Context) -> bool {
    if ctx.shutdown.phase() != Phase::Running {
        return false;
    }
    if ctx.pools.all().iter().any(|(_, p)| p.is_healthy()) {
        return true;
    }
    let cfg = ctx.config();
    if cfg.databases.is_empty() {
        return true;
    }
    for db in cfg.databases.values() {
        let Some(host) = cfg.hosts(db).ok().and_then(|h| h.into_iter().next()) else {
            continue;
        };
        let probe = tokio::net::TcpStream::connect((host.host.as_str(), host.port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
            return true;
        }
    }
    false
}

/// Keeps histogram memory bounded (recorded samples are folded into
/// buckets every few seconds) and takes the statistics period's readings.
/// Ends with the instance.
async fn upkeep(ctx: std::sync::Weak<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        ctx.metrics.upkeep();
        let now = std::time::Instant::now();
        let dropped = ctx.pools.drop_unused_autodb(&ctx.config(), now);
        if dropped > 0 {
            tracing::info!(
                dropped,
                "pools of databases reached through * dropped after autodb_idle_timeout"
            );
        }
        if ctx.stats_period.due(now) {
            ctx.stats_period
                .record(now, crate::admin::totals_by_database(&ctx));
        }
    }
}

/// Ends clients idle past their timeouts, four times a second (the
/// timeouts are coarse; a timer per session would cost every request).
async fn sweep_idle(ctx: std::sync::Weak<Context>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        for (info, (pid, secret)) in ctx.clients.sweep_idle() {
            tracing::info!(client = info.id, database = %info.database, user = %info.user, kind = "query", "request cancelled by query_timeout");
            ctx.metrics.client_timeout("query");
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.cancel(pid, secret).await });
        }
    }
}

/// Serves a config file until SIGTERM, SIGINT, the admin SHUTDOWN or a
/// successor taking over, then shuts down gracefully; SIGHUP reloads the
/// file. With `takeover`, the listening sockets come from the process
/// already running (its `takeover_socket`), which then drains.
pub async fn run(path: &Path, takeover: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = Config::load(path).map_err(|e| anyhow::anyhow!(e.located(path)))?;
    let socket = PathBuf::from(&config.pgmux.takeover_socket);
    if takeover && config.pgmux.takeover_socket.is_empty() {
        anyhow::bail!("--takeover needs takeover_socket in the configuration");
    }
    let taken = if takeover {
        let s = socket.clone();
        Some(tokio::task::spawn_blocking(move || crate::takeover::take(&s)).await??)
    } else {
        None
    };
    let proxy = match taken {
        Some(mut t) => {
            let sockets = std::mem::take(&mut t.sockets);
            let proxy = Proxy::start_on(config, Some(path.to_path_buf()), sockets).await?;
            tokio::task::spawn_blocking(move || t.ready()).await??;
            tracing::info!("took over the listening sockets of the running process");
            proxy
        }
        None => Proxy::start_on(config, Some(path.to_path_buf()), Vec::new()).await?,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    {
        let handed_over = proxy.offer_takeover(&socket);
        tokio::pin!(handed_over);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = proxy.shutdown_requested() => break,
                _ = &mut handed_over => break,
                _ = hup.recv() => {
                    let ctx = proxy.context().clone();
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&ctx)).await;
                }
            }
        }
    }
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}
