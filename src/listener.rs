//! The accept loop: admits clients up to `max_client_conn` (answering the
//! rest with 53300 rather than refusing their sockets), tunes each socket,
//! and spawns one session task per client.

use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;

use crate::context::Context;
use crate::protocol::SqlState;
use crate::session;
use crate::shutdown::Phase;
use crate::stats::ErrorReason;
use crate::tls::Stream;

/// No Nagle delay, and keepalives that find a vanished client in about a
/// minute. Set on the listening socket, whose options Linux copies to every
/// accepted one (four system calls less per connection); elsewhere on each
/// accepted socket too.
pub fn tune(socket: SockRef<'_>) {
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket.set_tcp_keepalive(&keepalive);
}

/// Accepts clients until shutdown begins.
pub async fn run(listener: TcpListener, ctx: Arc<Context>) {
    let limit = ctx.client_slots.clone();
    let mut phase = ctx.shutdown.watch();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    return;
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if cfg!(not(target_os = "linux")) {
            tune(SockRef::from(&tcp));
        }
        let mut stream = Stream::Plain(tcp);
        tracing::debug!(%peer, "client connected");
        let ctx = ctx.clone();
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    session::serve(stream, peer, ctx).await;
                    drop(permit);
                });
            }
            Err(_) => {
                ctx.metrics.error(ErrorReason::MaxClientConn, "", "");
                tokio::spawn(async move {
                    let msg = "no more connections allowed (max_client_conn)";
                    session::login::refuse(&mut stream, &ctx, SqlState::TOO_MANY_CONNECTIONS, msg)
                        .await;
                });
            }
        }
    }
}
