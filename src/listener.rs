//! The accept loop: admits clients up to `max_client_conn` (answering the
//! rest with 53300 rather than refusing their sockets), tunes each socket,
//! and spawns one session task per client.

use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::context::Context;
use crate::protocol::SqlState;
use crate::session;
use crate::shutdown::Phase;
use crate::stats::ErrorReason;
use crate::tls::Stream;

/// No Nagle delay, and the configured keepalive and TCP_USER_TIMEOUT (by
/// default a vanished client is found in about a minute). Set on the
/// listening socket, whose options Linux copies to every accepted one
/// (system calls saved per connection); elsewhere on each accepted socket
/// too. Changing them takes a restart.
pub fn tune(socket: SockRef<'_>, cfg: &Config) {
    cfg.client_tcp().apply(socket);
}

/// Accepts clients until shutdown begins, then takes the connections
/// already queued on the socket (they connected expecting service) and
/// closes it. With SO_REUSEPORT, closing a listener resets what is still
/// queued on it unless the kernel migrates it (`net.ipv4.tcp_migrate_req`);
/// draining first leaves only the connections that complete their
/// handshake in the instant between the last accept and the close.
pub async fn run(listener: TcpListener, ctx: Arc<Context>) {
    let mut phase = ctx.shutdown.watch();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    let late = drain(&listener, &ctx);
                    tracing::info!(late, "stopped accepting; queued clients taken");
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
        admit(tcp, peer, &ctx);
    }
}

/// Takes every connection queued on the listener without waiting; returns
/// how many. Like every new client, each has a moment to run its first
/// transaction before the drain tells it 57P01.
fn drain(listener: &TcpListener, ctx: &Arc<Context>) -> usize {
    let mut n = 0;
    loop {
        match SockRef::from(listener).accept() {
            Ok((socket, addr)) => {
                let std: std::net::TcpStream = socket.into();
                let Some(peer) = addr.as_socket() else {
                    continue;
                };
                let tcp = std
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(std));
                if let Ok(tcp) = tcp {
                    admit(tcp, peer, ctx);
                    n += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return n,
        }
    }
}

/// Serves an accepted client, or answers 53300 past `max_client_conn`.
fn admit(tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, ctx: &Arc<Context>) {
    if cfg!(not(target_os = "linux")) {
        tune(SockRef::from(&tcp), &ctx.config());
    }
    let mut stream = Stream::Plain(tcp);
    tracing::debug!(%peer, "client connected");
    let ctx = ctx.clone();
    match ctx.client_slots.clone().try_acquire_owned() {
        Ok(permit) => {
            // Counted before the task runs: a drain that ends in the
            // meantime still waits for this client.
            let live = ctx.shutdown.track();
            tokio::spawn(async move {
                session::serve(stream, peer, ctx).await;
                drop((permit, live));
            });
        }
        Err(_) => {
            ctx.metrics.error(ErrorReason::MaxClientConn, "", "");
            // Each refusal waits for a startup packet; a flood past the
            // bound is closed without one.
            let Ok(refusing) = ctx.refusals.clone().try_acquire_owned() else {
                return;
            };
            tokio::spawn(async move {
                let msg = "no more connections allowed (max_client_conn)";
                session::login::refuse(&mut stream, &ctx, SqlState::TOO_MANY_CONNECTIONS, msg)
                    .await;
                drop(refusing);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn client_socket_options_follow_the_config() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = Config::default();
        cfg.pgmux.client_tcp_keepidle = Duration::from_secs(7);
        cfg.pgmux.client_tcp_keepintvl = Duration::from_secs(3);
        cfg.pgmux.client_tcp_keepcnt = 4;
        cfg.pgmux.client_tcp_user_timeout = Duration::from_secs(11);
        tune(SockRef::from(&socket), &cfg);
        let s = SockRef::from(&socket);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(11)));
        assert!(s.tcp_nodelay().unwrap());
    }
}
