//! TLS on both sides of the proxy, with rustls and the ring provider (it
//! builds with nothing but a C compiler).
//!
//! [`Stream`] is a socket that is plaintext or TLS; the session and the
//! server connection read and write it without knowing which.
//! `acceptor.rs` builds the client-facing side (SSLRequest and PostgreSQL
//! 17's direct TLS), `connector.rs` the server-facing side (sslmode).

pub mod acceptor;
pub mod connector;
pub mod end_point;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The crypto provider pgmux uses everywhere.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

pub use crate::config::TlsMode;

/// A socket, plaintext or TLS.
// The TLS state is large; boxing it keeps plaintext streams small.
pub enum Stream {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP (either side).
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// Taken for an upgrade that failed; every operation errors.
    Gone,
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(t) => Some(t.get_ref().0),
            Self::Gone => None,
        }
    }

    /// Whether TLS is in use.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Takes the plaintext socket out for a TLS upgrade.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Self::Gone) {
            Self::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Checks without blocking whether the peer sent anything or closed:
    /// `true` means the socket is quiet and open, as an idle server must be.
    ///
    /// The runtime's own readiness flag answers first and costs no system
    /// call: a socket that had data or an EOF since its last drained read is
    /// flagged readable. Only a flagged socket, or one idle for `probe_after`
    /// (long enough that a lost event is worth a system call to rule out),
    /// is probed with a one-byte `MSG_PEEK`. A hot pool hands servers over
    /// many thousand times a second; probing each hand-over was a third of
    /// pgmux's `recvfrom` calls.
    pub fn is_quiet(
        &self,
        idle_for: std::time::Duration,
        probe_after: std::time::Duration,
    ) -> bool {
        let Some(tcp) = self.tcp() else { return false };
        if idle_for < probe_after {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if tcp.poll_read_ready(&mut cx).is_pending() {
                return true;
            }
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection closed after a failed TLS upgrade",
    )
}

impl AsyncRead for Stream {
    // Inlined into the session's reads: the hot path of every request.
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect();
    let certs = certs.map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate found"));
    }
    Ok(certs)
}

/// A root store of the certificates in a PEM file.
pub fn load_roots(path: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(Arc::new(roots))
}
