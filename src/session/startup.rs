//! Login: the startup packet (with SSL/GSS refusals and cancel requests),
//! client authentication, and the welcome a real server would send.

use crate::tls::Stream;
use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cancel::CancelHandle;
use super::params::ClientParams;
use crate::auth::{md5, scram::ScramServer, Secret};
use crate::config::{AuthType, PoolMode};
use crate::context::{Context, UserAuth};
use crate::pool::{Pool, PoolKey};
use crate::protocol::error::{write_error, Severity};
use crate::protocol::frame::{cstr, make_room, read_i32, split_frame};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{encode, fe, SqlState, TxStatus};
use crate::stats::ErrorReason;

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 10_000;

/// Why a login ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Tell the client this FATAL error, then close.
    #[error("{1}")]
    Fatal(SqlState, String),
    /// The socket failed; nothing to tell.
    #[error("client connection failed: {0}")]
    Io(#[from] std::io::Error),
}

fn fatal(code: SqlState, msg: impl Into<String>) -> LoginError {
    LoginError::Fatal(code, msg.into())
}

/// A logged-in client.
pub struct Login {
    /// Which pool serves it.
    pub key: PoolKey,
    /// The pool.
    pub pool: Pool,
    /// Transaction or session mode.
    pub mode: PoolMode,
    /// Its parameters.
    pub params: ClientParams,
    /// Its cancel key.
    pub cancel: CancelHandle,
    /// Bytes the client sent behind its login, not read yet.
    pub pending: BytesMut,
}

/// The name of the admin console's virtual database.
pub const ADMIN_DATABASE: &str = "pgmux";

/// What the first packets asked for.
pub enum Opening {
    /// A session to serve.
    Session(Login),
    /// An admin console session for this user, and the bytes it sent
    /// behind its login.
    Admin(String, BytesMut),
    /// A cancel request, already handled; close the socket.
    Cancelled,
}

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

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

/// Reads one tagged message of the authentication exchange: must be `p`.
async fn read_password(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, LoginError> {
    loop {
        match split_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) if f.tag() == fe::PASSWORD => return Ok(f.raw().slice(5..)),
            Ok(Some(f)) => {
                return Err(fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    format!(
                        "expected password response, got message type {:?}",
                        f.tag() as char
                    ),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())),
        }
        make_room(buf, 64, 512);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// Runs the startup phase up to ReadyForQuery.
pub async fn login(stream: &mut Stream, ctx: &Context) -> Result<Opening, LoginError> {
    let tls = ctx.client_tls();
    if let (Some(acceptor), Some(tcp)) = (&tls.acceptor, stream.tcp()) {
        // PostgreSQL 17's direct TLS: a ClientHello instead of an SSLRequest.
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE {
            upgrade(stream, acceptor, true).await?;
        }
    }
    // Starts as the session's read buffer: bytes a client sent behind its
    // login messages are kept for it.
    let mut buf = BytesMut::with_capacity(512);
    let (minor, params) = loop {
        match read_startup(stream, &mut buf).await? {
            StartupPacket::SslRequest => {
                nothing_behind(&buf)?;
                match &tls.acceptor {
                    Some(acceptor) if !stream.is_tls() => {
                        stream.write_all(b"S").await?;
                        upgrade(stream, acceptor, false).await?;
                    }
                    _ => stream.write_all(b"N").await?,
                }
            }
            StartupPacket::GssEncRequest => {
                nothing_behind(&buf)?;
                stream.write_all(b"N").await?
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancels.cancel(pid, secret).await;
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup {
                major: 3,
                minor,
                params,
            } => break (minor, params),
            StartupPacket::Startup { major, minor, .. } => {
                return Err(fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                ))
            }
        }
    };
    if tls.mode.required() && !stream.is_tls() {
        return Err(fatal(
            SqlState::INVALID_AUTHORIZATION,
            "pgmux requires TLS: connect with sslmode=require or stronger",
        ));
    }
    let mut user = None;
    let mut database = None;
    let mut settings = Vec::new();
    let mut protocol_options = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication" => {
                if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
                    return Err(fatal(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "replication connections are not supported by pgmux",
                    ));
                }
            }
            "options" => {
                let opts = startup::parse_options(&v).ok_or_else(|| {
                    fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!("unsupported startup options {v:?}: only -c name=value and --name=value"),
                    )
                })?;
                settings.extend(opts);
            }
            k if k.starts_with("_pq_.") => protocol_options.push(k.to_owned()),
            _ => settings.push((k, v)),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let mut out = BytesMut::new();
    if minor > 0 || !protocol_options.is_empty() {
        encode::negotiate_protocol_version(&mut out, 0, &protocol_options);
    }
    let cfg = ctx.config();
    let admin = database == ADMIN_DATABASE;
    let db = cfg.databases.get(&database);
    let configured = ctx.user(&user);
    let looked_up = configured.is_none() && !admin && db.is_some() && cfg.pgmux.auth_user.is_some();
    let auth = match configured {
        Some(a) => Some(a),
        None if looked_up => super::auth_query::lookup(ctx, &cfg, &database, &user).await?,
        None => None,
    };
    let (Some(auth), true) = (auth, admin || db.is_some()) else {
        ctx.metrics
            .error(ErrorReason::UnknownTarget, &database, &user);
        if !admin && db.is_none() {
            return Err(fatal(
                SqlState::INVALID_CATALOG_NAME,
                format!("database \"{database}\" does not exist"),
            ));
        }
        return Err(fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("role \"{user}\" does not exist"),
        ));
    };
    let method = cfg.pgmux.auth_type;
    let client_key = match authenticate(stream, &mut buf, &mut out, method, &user, &auth).await {
        Ok(k) => k,
        Err(e) => {
            if matches!(e, LoginError::Fatal(..)) {
                ctx.metrics.error(ErrorReason::AuthFailed, &database, &user);
            }
            return Err(e);
        }
    };
    if admin || db.is_none() {
        if !cfg.admin.users.contains(&user) {
            return Err(fatal(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("permission denied: user \"{user}\" may not use the admin console"),
            ));
        }
        crate::admin::welcome(&mut out);
        stream.write_all(&out).await?;
        return Ok(Opening::Admin(user, buf));
    }
    // A looked-up user logs in to the server with what its own login gave:
    // the ClientKey its SCRAM proof revealed (pass-through), or the md5 hash.
    let server_secret = looked_up.then(|| match (&auth.secret, client_key) {
        (Secret::Scram(v), Some(k)) => Secret::ScramKeys(v.clone(), k),
        (s, _) => s.clone(),
    });
    let key = PoolKey { database, user };
    let pool = ctx
        .pools
        .get_with(&cfg, &ctx.metrics, &key, server_secret)
        .map_err(|e| fatal(SqlState::CANNOT_CONNECT, e))?;
    let mode = pool.settings().mode;
    let pool_params = pool.startup_params().await.map_err(|e| {
        ctx.metrics
            .error(super::pool_error_reason(&e), &key.database, &key.user);
        fatal(super::pool_error_code(&e), e.to_string())
    })?;
    let params = ClientParams::new(&pool_params, &settings)
        .map_err(|e| fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))?;
    let cancel = ctx.cancels.register();
    encode::auth_ok(&mut out);
    for (k, v) in params.welcome(&pool_params) {
        encode::parameter_status(&mut out, &k, &v);
    }
    encode::backend_key_data(&mut out, cancel.slot.pid, cancel.slot.secret);
    encode::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    Ok(Opening::Session(Login {
        key,
        pool,
        mode,
        params,
        cancel,
        pending: buf,
    }))
}

/// Runs the configured authentication exchange, reading through `buf`.
/// `out` holds messages to send before the first request and is flushed
/// with it.
async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    method: AuthType,
    user: &str,
    auth: &UserAuth,
) -> Result<Option<[u8; 32]>, LoginError> {
    let failed = || {
        fatal(
            SqlState::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let use_scram = match method {
        AuthType::Trust => return Ok(None),
        AuthType::ScramSha256 => true,
        // As in PostgreSQL, md5 falls back to SCRAM for users stored as a SCRAM verifier.
        AuthType::Md5 => matches!(auth.secret, Secret::Scram(_)),
    };
    if !use_scram {
        let mut salt = [0u8; 4];
        rand::rng().fill_bytes(&mut salt);
        encode::auth_md5(out, salt);
        stream.write_all(out).await?;
        out.clear();
        let answer = read_password(stream, buf).await?;
        let answer = cstr(&answer).map(|(a, _)| a).unwrap_or(&answer);
        return match md5::verify(&auth.secret, user, salt, answer) {
            Some(true) => Ok(None),
            _ => Err(failed()),
        };
    }
    let verifier = auth.scram.as_ref().ok_or_else(|| {
        fatal(
            SqlState::INVALID_PASSWORD,
            format!(
                "password authentication failed for user \"{user}\": no SCRAM secret is configured"
            ),
        )
    })?;
    encode::auth_sasl(out, &["SCRAM-SHA-256"]);
    stream.write_all(out).await?;
    out.clear();
    let initial = read_password(stream, buf).await?;
    let malformed = |what: &str| {
        fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("malformed SASL message: {what}"),
        )
    };
    let (mechanism, rest) = cstr(&initial).ok_or_else(|| malformed("no mechanism"))?;
    if mechanism != b"SCRAM-SHA-256" {
        return Err(malformed("unsupported mechanism"));
    }
    let (len, data) = read_i32(rest).ok_or_else(|| malformed("no length"))?;
    if len < 0 || len as usize != data.len() {
        return Err(malformed("bad length"));
    }
    let (server, first) = ScramServer::start(verifier, data).map_err(|_| failed())?;
    encode::auth_sasl_continue(out, first.as_bytes());
    stream.write_all(out).await?;
    out.clear();
    let fin = read_password(stream, buf).await?;
    let (last, client_key) = server.finish(&fin).map_err(|_| failed())?;
    encode::auth_sasl_final(out, last.as_bytes());
    Ok(Some(client_key))
}

/// Sends a FATAL error to a client that is about to be closed.
pub async fn send_fatal(stream: &mut Stream, code: SqlState, msg: &str) {
    let mut out = BytesMut::new();
    write_error(&mut out, Severity::Fatal, code.0, msg);
    let _ = stream.write_all(&out).await;
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
                    stream.write_all(b"N").await?
                }
                StartupPacket::Cancel { pid, secret } => {
                    ctx.cancels.cancel(pid, secret).await;
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
