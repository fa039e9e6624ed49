//! Logging in over a new server socket: TLS, StartupMessage,
//! authentication as whatever the server asks (SCRAM-SHA-256, MD5,
//! cleartext or trust), then the ParameterStatus and BackendKeyData that
//! precede ReadyForQuery. Which host to connect to is `hosts`' business.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{HostPort, LoadBalanceHosts, TargetSessionAttrs};
use crate::tls::connector::server_name;
use crate::tls::{Stream, TlsMode};

use super::{ServerConn, ServerError};
use crate::auth::scram::ScramPassthrough;
use crate::auth::Secret;
use crate::protocol::frame::{cstr, read_i32};
use crate::protocol::{be, encode, Frame};

/// Where a pool's servers live and whom to log in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The servers, in the order written (at least one).
    pub hosts: Vec<HostPort>,
    /// Which servers qualify.
    pub target_session_attrs: TargetSessionAttrs,
    /// Whether hosts are tried in a random order.
    pub load_balance: LoadBalanceHosts,
    /// Database name on the server.
    pub dbname: String,
    /// Role to log in as.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
    /// TLS toward the server.
    pub tls_mode: TlsMode,
    /// CA bundle for verify-ca / verify-full.
    pub tls_ca: Option<String>,
}

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
    let mut conn = ServerConn::new(stream, addr);
    let mut out = BytesMut::new();
    encode::startup(&mut out, &[("user", &t.user), ("database", &t.dbname)])?;
    conn.write_all(&out).await?;
    let mut scram: Option<Scram> = None;
    loop {
        let frame = conn.recv_frame(max_msg).await.map_err(|e| match e {
            ServerError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ServerError::Protocol("server closed the connection during login".into())
            }
            e => e,
        })?;
        if login_message(&mut conn, t, &frame, &mut scram).await? {
            conn.note_login_identity(&t.user);
            return Ok(conn);
        }
    }
}

/// Handles one message of the server's login sequence; `true` at
/// ReadyForQuery.
async fn login_message(
    conn: &mut ServerConn,
    t: &ServerTarget,
    frame: &Frame,
    scram: &mut Option<Scram>,
) -> Result<bool, ServerError> {
    let body = frame.body();
    match frame.tag() {
        be::AUTHENTICATION => {
            let reply = auth_step(t, body, scram)?;
            if !reply.is_empty() {
                conn.write_all(&reply).await?;
            }
        }
        be::PARAMETER_STATUS => {
            conn.note_parameter_status(body);
        }
        be::BACKEND_KEY_DATA => {
            let (pid, rest) = read_i32(body).ok_or_else(|| bad("BackendKeyData"))?;
            let (secret, _) = read_i32(rest).ok_or_else(|| bad("BackendKeyData"))?;
            conn.key.pid = pid;
            conn.key.secret = secret;
        }
        be::ERROR_RESPONSE => return Err(ServerError::from_error_body(body)),
        be::READY_FOR_QUERY => return Ok(true),
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

fn bad(what: &str) -> ServerError {
    ServerError::Protocol(format!("malformed {what}"))
}

fn password(t: &ServerTarget) -> Result<&Secret, ServerError> {
    t.password.as_ref().ok_or_else(|| {
        ServerError::Auth(format!(
            "the server asks for a password for {:?} and pgmux has none",
            t.user
        ))
    })
}

/// A SCRAM exchange with the server in progress.
enum Scram {
    /// With the password.
    Password(ScramSha256),
    /// With a client's recovered ClientKey (auth_query users).
    Passthrough(ScramPassthrough),
}

fn scram_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Auth(format!("SCRAM: {e}"))
}

/// Answers one Authentication request; returns the bytes to send (may be empty).
fn auth_step(
    t: &ServerTarget,
    body: &[u8],
    scram: &mut Option<Scram>,
) -> Result<Vec<u8>, ServerError> {
    use crate::protocol::auth_code;
    let (code, data) = read_i32(body).ok_or_else(|| bad("Authentication"))?;
    let mut out = BytesMut::new();
    match code {
        auth_code::OK => {}
        auth_code::CLEARTEXT => match password(t)? {
            Secret::Plain(p) => encode::password(&mut out, p.as_bytes())?,
            _ => {
                return Err(ServerError::Auth(
                    "the server asks for a cleartext password and pgmux only has a hash".into(),
                ))
            }
        },
        auth_code::MD5 => md5_answer(t, data, &mut out)?,
        auth_code::SASL => *scram = Some(sasl_start(t, data, &mut out)?),
        auth_code::SASL_CONTINUE => {
            let s = scram.as_mut().ok_or_else(|| bad("SASLContinue"))?;
            let answer = match s {
                Scram::Password(s) => {
                    s.update(data).map_err(scram_err)?;
                    s.message().to_vec()
                }
                Scram::Passthrough(s) => s.client_final(data).map_err(scram_err)?.into_bytes(),
            };
            encode::sasl_response(&mut out, &answer)?;
        }
        auth_code::SASL_FINAL => match scram.as_mut().ok_or_else(|| bad("SASLFinal"))? {
            Scram::Password(s) => s.finish(data).map_err(scram_err)?,
            Scram::Passthrough(s) => s.verify_server_final(data).map_err(scram_err)?,
        },
        c => {
            return Err(ServerError::Auth(format!(
                "unsupported authentication request {c}"
            )))
        }
    }
    Ok(out.to_vec())
}

/// The answer to AuthenticationMD5Password, from the password or the
/// stored md5 hash.
fn md5_answer(t: &ServerTarget, data: &[u8], out: &mut BytesMut) -> Result<(), ServerError> {
    let salt: [u8; 4] = data
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("MD5 salt"))?;
    let stored = match password(t)? {
        Secret::Plain(p) => crate::auth::md5::stored_hash(&t.user, p),
        Secret::Md5(h) => h.clone(),
        Secret::Scram(_) | Secret::ScramKeys(..) => {
            return Err(ServerError::Auth(
                "the server asks for MD5 and pgmux only has a SCRAM verifier".into(),
            ))
        }
    };
    let answer = crate::auth::md5::salted_answer(&stored, salt);
    Ok(encode::password(out, answer.as_bytes())?)
}

/// Whether an AuthenticationSASL mechanism list names SCRAM-SHA-256.
fn offers_scram(mut list: &[u8]) -> bool {
    while let Some((m, tail)) = cstr(list) {
        if m.is_empty() {
            break;
        }
        if m == SCRAM_SHA_256.as_bytes() {
            return true;
        }
        list = tail;
    }
    false
}

/// Starts SCRAM-SHA-256 if the server offers it: with the password, or with
/// a client's recovered ClientKey (pass-through).
fn sasl_start(t: &ServerTarget, offered: &[u8], out: &mut BytesMut) -> Result<Scram, ServerError> {
    if !offers_scram(offered) {
        return Err(ServerError::Auth(
            "the server offers no SASL mechanism pgmux supports".into(),
        ));
    }
    match password(t)? {
        Secret::Plain(p) => {
            let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
            encode::sasl_initial_response(out, SCRAM_SHA_256, s.message())?;
            Ok(Scram::Password(s))
        }
        Secret::ScramKeys(v, key) => {
            let s = ScramPassthrough::new(v.clone(), *key);
            encode::sasl_initial_response(out, SCRAM_SHA_256, s.client_first().as_bytes())?;
            Ok(Scram::Passthrough(s))
        }
        _ => Err(ServerError::Auth(
            "the server asks for SCRAM and pgmux has no plaintext password for this role".into(),
        )),
    }
}
