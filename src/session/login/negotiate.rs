//! The first packets of a connection: direct TLS or SSLRequest, GSSENCRequest
//! (refused), CancelRequest, and the StartupMessage itself.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{fatal, send_fatal, LoginError};
use crate::context::Context;
use crate::protocol::encode;
use crate::protocol::frame::make_room;
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::SqlState;
use crate::tls::Stream;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the client's first packets asked for.
pub enum Negotiated {
    /// A StartupMessage of protocol 3.`minor` with its parameters.
    Startup {
        /// Protocol minor version asked for.
        minor: u16,
        /// The parameters, in the order sent.
        params: Vec<(String, String)>,
        /// Channel binding data of the certificate the client's TLS
        /// connection was made with (none without TLS).
        end_point: Option<std::sync::Arc<[u8]>>,
    },
    /// A cancel request, already handled.
    Cancelled,
}

/// Reads packets up to the StartupMessage, upgrading to TLS on the way when
/// asked (and configured), answering GSSENCRequest `N`, and passing a
/// CancelRequest on. `buf` keeps what the client sent behind the packet.
pub async fn negotiate(
    stream: &mut Stream,
    ctx: &Context,
    buf: &mut BytesMut,
) -> Result<Negotiated, LoginError> {
    let tls = ctx.client_tls();
    if let (Some(acceptor), Some(tcp)) = (&tls.acceptor, stream.tcp()) {
        // PostgreSQL 17's direct TLS: a ClientHello instead of an SSLRequest.
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
            upgrade(stream, acceptor, true).await?;
        }
    }
    loop {
        match read_startup(stream, buf).await? {
            StartupPacket::SslRequest => {
                nothing_behind(buf)?;
                answer_ssl_request(stream, tls.acceptor.as_ref()).await?;
            }
            StartupPacket::GssEncRequest => {
                nothing_behind(buf)?;
                stream.write_all(encode::ENCRYPTION_REFUSED).await?
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancel(pid, secret).await;
                return Ok(Negotiated::Cancelled);
            }
            StartupPacket::Startup {
                major: 3,
                minor,
                params,
            } => {
                if tls.mode.required() && !stream.is_tls() {
                    return Err(fatal(
                        SqlState::INVALID_AUTHORIZATION,
                        "pgmux requires TLS: connect with sslmode=require or stronger",
                    ));
                }
                let end_point = tls.end_point.clone().filter(|_| stream.is_tls());
                return Ok(Negotiated::Startup {
                    minor,
                    params,
                    end_point,
                });
            }
            StartupPacket::Startup { major, minor, .. } => {
                return Err(fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
                    ),
                ))
            }
        }
    }
}

/// `S` and the handshake when TLS is configured (and not already on),
/// else `N`.
async fn answer_ssl_request(
    stream: &mut Stream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
) -> Result<(), LoginError> {
    match acceptor {
        Some(acceptor) if !stream.is_tls() => {
            stream.write_all(encode::SSL_ACCEPTED).await?;
            upgrade(stream, acceptor, false).await
        }
        _ => Ok(stream.write_all(encode::ENCRYPTION_REFUSED).await?),
    }
}

/// Runs the TLS handshake on the plaintext socket. Nothing was read past the
/// SSLRequest, so no plaintext byte can be taken as encrypted (the "buffer
/// stuffing" attacks). Direct TLS must negotiate ALPN `postgresql`.
async fn upgrade(
    stream: &mut Stream,
    acceptor: &tokio_rustls::TlsAcceptor,
    direct: bool,
) -> Result<(), LoginError> {
    let tcp = stream
        .take_plain()
        .ok_or_else(|| fatal(SqlState::PROTOCOL_VIOLATION, "TLS requested twice"))?;
    let tls = acceptor.accept(tcp).await?;
    if direct && tls.get_ref().1.alpn_protocol() != Some(crate::tls::acceptor::ALPN) {
        return Err(LoginError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "direct TLS without ALPN postgresql",
        )));
    }
    *stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
    Ok(())
}

/// Reads one untagged startup-phase packet through `buf`, which keeps
/// whatever the client sent behind it. One read usually brings the whole
/// packet (reading the length first would take two).
async fn read_startup(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<StartupPacket, LoginError> {
    let bad = |e: startup::StartupError| fatal(SqlState::PROTOCOL_VIOLATION, e.to_string());
    loop {
        if let Some(len) = buf.get(..4) {
            let n = 4 + startup::body_len([len[0], len[1], len[2], len[3]]).map_err(bad)?;
            if buf.len() >= n {
                let packet = buf.split_to(n);
                return startup::parse(&packet[4..]).map_err(bad);
            }
            make_room(buf, n - buf.len(), 0);
        } else {
            make_room(buf, 64, 512);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// A client must wait for the answer to an SSLRequest or GSSENCRequest
/// before it sends more: bytes already behind one would bypass the
/// encryption it asked for, so they end the connection (as in PostgreSQL).
fn nothing_behind(buf: &BytesMut) -> Result<(), LoginError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(fatal(
            SqlState::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        ))
    }
}

/// Answers a connection that can't be served (too many clients): reads its
/// startup packet so the error reaches a client that is listening for one,
/// still honours a cancel request, then sends `msg` as FATAL.
pub async fn refuse(stream: &mut Stream, ctx: &Context, code: SqlState, msg: &str) {
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            match read_startup(stream, &mut buf).await? {
                StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                    stream.write_all(encode::ENCRYPTION_REFUSED).await?
                }
                StartupPacket::Cancel { pid, secret } => {
                    ctx.cancel(pid, secret).await;
                    return Ok(false);
                }
                StartupPacket::Startup { .. } => return Ok::<_, LoginError>(true),
            }
        }
    };
    let limit = ctx.config().pgmux.client_login_timeout;
    if let Ok(Ok(true)) = tokio::time::timeout(limit, read).await {
        send_fatal(stream, code, msg).await;
    }
}
