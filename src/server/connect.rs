//! Logging in over a new server socket: TLS, StartupMessage,
//! authentication (`auth`: as the server asks, within what pgmux allows),
//! then the ParameterStatus and BackendKeyData that precede ReadyForQuery.
//! Which host to connect to is `hosts`' business.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::connector::server_name;
use crate::tls::Stream;

use super::auth::ServerAuth;
use super::{ServerConn, ServerError, ServerTarget};
use crate::protocol::frame::read_i32;
use crate::protocol::{be, encode, Frame};

/// Negotiates TLS per `server_tls_mode`: SSLRequest, exactly one byte of
/// answer (nothing may be buffered before the handshake), then the handshake.
async fn negotiate_tls(
    t: &ServerTarget,
    host: &str,
    mut tcp: TcpStream,
    tls: Option<&TlsConnector>,
) -> Result<Stream, ServerError> {
    let Some(connector) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    if t.tls_negotiation == crate::config::TlsNegotiation::Direct {
        // PostgreSQL 17's direct TLS: no SSLRequest, the ClientHello at
        // once (with ALPN `postgresql`, which such a server requires).
        return handshake(host, tcp, connector).await;
    }
    let mut req = BytesMut::new();
    encode::ssl_request(&mut req);
    tcp.write_all(&req).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match &answer[..] {
        encode::SSL_ACCEPTED => handshake(host, tcp, connector).await,
        encode::ENCRYPTION_REFUSED if !t.tls_mode.required() => Ok(Stream::Plain(tcp)),
        encode::ENCRYPTION_REFUSED => Err(ServerError::Tls(format!(
            "the server does not support TLS and server_tls_mode is {:?}",
            t.tls_mode
        ))),
        _ => Err(ServerError::Protocol(
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

/// The TLS handshake after the server said `S`.
async fn handshake(
    host: &str,
    tcp: TcpStream,
    connector: &TlsConnector,
) -> Result<Stream, ServerError> {
    let name = server_name(host).map_err(ServerError::Tls)?;
    let s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ServerError::Tls(format!("TLS handshake with the server failed: {e}")))?;
    Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(s))))
}

/// Logs in over a new socket to `host` (its name, for TLS verification);
/// no timeout: the caller adds one.
pub(super) async fn login(
    t: &ServerTarget,
    host: &str,
    tcp: TcpStream,
    tls: Option<&TlsConnector>,
    max_msg: usize,
) -> Result<ServerConn, ServerError> {
    let addr = tcp.peer_addr()?;
    let stream = negotiate_tls(t, host, tcp, tls).await?;
    let mut auth = ServerAuth::new(t, &stream);
    let mut conn = ServerConn::new(stream, addr);
    let mut out = BytesMut::new();
    encode::startup(&mut out, &[("user", &t.user), ("database", &t.dbname)])?;
    conn.write_all(&out).await?;
    loop {
        let frame = conn.recv_frame(max_msg).await.map_err(|e| match e {
            ServerError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ServerError::Protocol("server closed the connection during login".into())
            }
            e => e,
        })?;
        if login_message(&mut conn, &frame, &mut auth).await? {
            conn.note_login_identity(&t.user);
            return Ok(conn);
        }
    }
}

/// Handles one message of the server's login sequence; `true` at
/// ReadyForQuery.
async fn login_message(
    conn: &mut ServerConn,
    frame: &Frame,
    auth: &mut ServerAuth<'_>,
) -> Result<bool, ServerError> {
    let body = frame.body();
    match frame.tag() {
        be::AUTHENTICATION => {
            let reply = auth.step(body)?;
            if !reply.is_empty() {
                conn.write_all(&reply).await?;
            }
        }
        be::PARAMETER_STATUS => {
            conn.note_parameter_status(body);
        }
        be::BACKEND_KEY_DATA => {
            let (pid, rest) =
                read_i32(body).ok_or_else(|| ServerError::malformed("BackendKeyData"))?;
            let (secret, _) =
                read_i32(rest).ok_or_else(|| ServerError::malformed("BackendKeyData"))?;
            conn.key.pid = pid;
            conn.key.secret = secret;
        }
        be::ERROR_RESPONSE => return Err(ServerError::from_error_body(body)),
        be::READY_FOR_QUERY => {
            auth.done()?;
            return Ok(true);
        }
        be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
        t => {
            return Err(ServerError::Protocol(format!(
                "unexpected message {:?} during login",
                t as char
            )))
        }
    }
    Ok(false)
}
