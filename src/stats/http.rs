//! The `/metrics` and health HTTP endpoint on its own listener:
//! `/health/live` (the process answers), `/health/ready` (it takes clients
//! and can reach a server: 503 otherwise, so a load balancer moves on),
//! `/healthz` (an alias of live).
//!
//! A scrape is rare and tiny, so a minimal HTTP/1.1 responder is enough: one
//! request per connection, bounded in size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::shutdown::Phase;

/// Renders the Prometheus text for one scrape (refreshing what is read from
/// live state first).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Says whether the instance is ready for clients.
pub type Ready = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

/// Serves scrapes until the shutdown phase reaches `Terminating`.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    ready: Ready,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = phase.changed() => {
                if *phase.borrow() == Phase::Terminating { return; }
                continue;
            }
        };
        if let Ok((stream, _)) = accepted {
            let (render, ready) = (render.clone(), ready.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    respond(stream, &*render, &ready),
                )
                .await;
            });
        }
    }
}

async fn respond(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
    ready: &Ready,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4", render()),
        (b"GET", b"/healthz" | b"/health/live") => ("200 OK", "text/plain", "ok\n".to_string()),
        (b"GET", b"/health/ready") => match ready().await {
            true => ("200 OK", "text/plain", "ready\n".to_string()),
            false => (
                "503 Service Unavailable",
                "text/plain",
                "not ready\n".to_string(),
            ),
        },
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
