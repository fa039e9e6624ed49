//! Wiring: binds the listener, builds the shared context, runs until a
//! signal (or the caller) asks to stop, then shuts down in order: stop
//! accepting, let transactions finish up to `shutdown_timeout`, close the rest.

use std::net::SocketAddr;
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
    ctx: Arc<Context>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds the configured address (port 0 picks a free one) and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let listen = config.listen_addr()?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&listen.into())
            .with_context(|| format!("cannot listen on {listen}"))?;
        socket.listen(4096)?;
        let listener = TcpListener::from_std(socket.into())?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Context::new(config));
        let accept = tokio::spawn(crate::listener::run(listener, ctx.clone()));
        tracing::info!(%addr, "pgmux listening");
        Ok(Self { addr, ctx, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state, for inspection.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Graceful shutdown: stop accepting, wait for open transactions up to
    /// `shutdown_timeout`, then close every session with 57P01.
    pub async fn shutdown(self) {
        let sd = &self.ctx.shutdown;
        sd.advance(Phase::Draining);
        let _ = self.accept.await;
        let grace = self.ctx.config.pgmux.shutdown_timeout;
        if tokio::time::timeout(grace, sd.all_closed()).await.is_err() {
            tracing::warn!(
                sessions = sd.live(),
                "shutdown_timeout reached; closing remaining sessions"
            );
        }
        sd.advance(Phase::Terminating);
        let _ = tokio::time::timeout(Duration::from_secs(2), sd.all_closed()).await;
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let proxy = Proxy::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
