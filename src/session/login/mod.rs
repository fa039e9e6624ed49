//! Login, in the order a client goes through it:
//!
//! 1. [`negotiate`]: TLS, GSS refusal and cancel requests, up to the
//!    StartupMessage;
//! 2. [`Request::read`]: the startup parameters (user, database, settings);
//! 3. [`authenticate::method`]: which exchange (`auth_type`, or the first
//!    matching `auth_hba_file` rule, which may refuse the client here);
//! 4. [`resolve`]: which database and which secret (configured, or found by
//!    [`auth_query`]);
//! 5. [`authenticate::authenticate`]: md5 or SCRAM against that secret;
//! 6. [`open_session`] (a pool, the client's parameters, the welcome a real
//!    server would send) or the admin console.

mod auth_query;
mod authenticate;
mod negotiate;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::params::ClientParams;
use crate::auth::{Secret, UserAuth};
use crate::cancel::CancelHandle;
use crate::config::{Config, PoolMode};
use crate::context::Context;
use crate::pool::{Pool, PoolKey};
use crate::protocol::encode::{write_error, Severity};
use crate::protocol::startup;
use crate::protocol::{encode, SqlState, TxStatus};
use crate::stats::ErrorReason;
use crate::tls::Stream;
use authenticate::Exchange;
use negotiate::Negotiated;

pub use negotiate::refuse;

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
    /// The welcome still lacks its cancel key and ReadyForQuery: a
    /// session-mode client gets its server first, and the key carries that
    /// server's process id, as on a direct connection.
    pub key_pending: bool,
}

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

/// What a StartupMessage asks for.
struct Request {
    user: String,
    database: String,
    /// Settings to apply (startup parameters and `options`).
    settings: Vec<(String, String)>,
    /// `_pq_.` protocol options, none of which pgmux knows.
    protocol_options: Vec<String>,
    minor: u16,
}

impl Request {
    /// Reads the startup parameters: the database defaults to the user, a
    /// replication connection is refused, `options` become settings.
    fn read(minor: u16, params: Vec<(String, String)>) -> Result<Self, LoginError> {
        let (mut user, mut database) = (None, None);
        let mut settings = Vec::new();
        let mut protocol_options = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "user" => user = Some(v),
                "database" => database = Some(v),
                "replication" => refuse_replication(&v)?,
                "options" => settings.extend(options(&v)?),
                k if k.starts_with("_pq_.") => protocol_options.push(k.to_owned()),
                _ => settings.push((k, v)),
            }
        }
        let (user, database) = identify(user, database)?;
        Ok(Self {
            user,
            database,
            settings,
            protocol_options,
            minor,
        })
    }
}

/// The user (required) and the database (the user's name by default).
fn identify(
    user: Option<String>,
    database: Option<String>,
) -> Result<(String, String), LoginError> {
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok((name(user), name(database)))
}

/// A name as PostgreSQL reads it from a startup packet: at most
/// NAMEDATALEN - 1 (63) bytes, the rest dropped (here at a character
/// boundary). It also bounds what an unauthenticated peer's names cost
/// in pgmux's caches.
fn name(mut s: String) -> String {
    const MAX: usize = 63;
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn refuse_replication(value: &str) -> Result<(), LoginError> {
    if matches!(value, "false" | "off" | "no" | "0") {
        return Ok(());
    }
    Err(fatal(
        SqlState::FEATURE_NOT_SUPPORTED,
        "replication connections are not supported by pgmux",
    ))
}

fn options(value: &str) -> Result<Vec<(String, String)>, LoginError> {
    startup::parse_options(value).ok_or_else(|| {
        fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("unsupported startup options {value:?}: only -c name=value and --name=value"),
        )
    })
}

/// Where a client is going and how it proves who it is.
struct Target {
    /// The admin console rather than a database.
    admin: bool,
    auth: Arc<UserAuth>,
    /// The user was found by `auth_query`, not configured.
    looked_up: bool,
    /// What an authenticated client is told instead of a session: as in
    /// PostgreSQL, an unknown database (3D000) or one that takes no
    /// connections is said only to a client that proved who it is.
    refusal: Option<LoginError>,
    /// The metric labels this login may use: names pgmux knows, or
    /// [`UNKNOWN_LABEL`] for what an unauthenticated peer made up.
    labels: (String, String),
}

/// The metric label of a database or user name pgmux does not know:
/// names a peer sends before it authenticates never become series of
/// their own.
pub const UNKNOWN_LABEL: &str = "(unknown)";

fn label(known: bool, name: &str) -> String {
    if known {
        name.to_owned()
    } else {
        UNKNOWN_LABEL.to_owned()
    }
}

/// Finds the database and the user's secret. An unknown user goes through
/// the same exchange as a known one, with a secret no password matches,
/// and fails as a wrong password does (28P01), as in PostgreSQL; an
/// unknown database is said after authentication.
async fn resolve(
    ctx: &Context,
    cfg: &Config,
    req: &Request,
    method: crate::auth::Method,
) -> Result<Target, LoginError> {
    let (user, database) = (&req.user, &req.database);
    let admin = crate::admin::is_console(database, cfg.databases.contains_key(database));
    let db = !admin && cfg.database(database).is_some();
    let configured = ctx.user(user);
    let looked_up = configured.is_none() && !admin && db && cfg.pgmux.auth_user.is_some();
    let auth = match configured {
        Some(a) => Some(a),
        None if looked_up => match auth_query::lookup(ctx, cfg, database, user).await {
            Ok(found) => found,
            // The cause may name the server, its roles or its errors:
            // logged for the operator, not told to a peer that has not
            // authenticated. A database reached through `*` may simply
            // not exist on the server: that is said after authentication,
            // so there the lookup's failure is an unknown user's exchange.
            Err(e) => {
                tracing::warn!(database = %database, user = %user, error = %e, "auth_query lookup failed");
                if cfg.databases.contains_key(database) {
                    return Err(fatal(
                        SqlState::CANNOT_CONNECT,
                        "the user could not be looked up (auth_query); see pgmux's log",
                    ));
                }
                None
            }
        },
        None => None,
    };
    let labels = (
        label(cfg.databases.contains_key(database) || admin, database),
        label(auth.is_some(), user),
    );
    let Some(auth) = auth else {
        ctx.metrics
            .error(ErrorReason::UnknownTarget, &labels.0, &labels.1);
        return Ok(Target {
            admin,
            auth: Arc::new(mock_user(ctx, method, user)),
            looked_up: false,
            refusal: Some(fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("role \"{user}\" does not exist"),
            )),
            labels,
        });
    };
    let refusal = if !(admin || db) {
        Some(fatal(
            SqlState::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ))
    } else if db && ctx.pools.is_disabled(database) {
        Some(fatal(
            SqlState::CANNOT_CONNECT_NOW,
            format!("database \"{database}\" does not allow connections now (DISABLE)"),
        ))
    } else {
        None
    };
    Ok(Target {
        admin,
        auth,
        looked_up,
        refusal,
        labels,
    })
}

/// The secret an unknown user is challenged with: the form most
/// configured users have under `method` ([`Context::mock_shape`]), matched
/// by no password.
fn mock_user(ctx: &Context, method: crate::auth::Method, user: &str) -> UserAuth {
    let (md5_majority, iterations) = ctx.mock_shape();
    let secret = match method {
        crate::auth::Method::Md5 if md5_majority => {
            let hex: String = rand::random::<[u8; 16]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Secret::Md5(format!("md5{hex}"))
        }
        _ => Secret::Scram(crate::auth::ScramVerifier::mock(
            user,
            &ctx.mock_key,
            iterations,
        )),
    };
    UserAuth::new(secret)
}

/// Runs the startup phase up to ReadyForQuery for a client connected from
/// `peer`.
pub async fn login(
    stream: &mut Stream,
    ctx: &Context,
    peer: SocketAddr,
) -> Result<Opening, LoginError> {
    // Starts as the session's read buffer: bytes a client sent behind its
    // login messages are kept for it.
    let mut buf = BytesMut::with_capacity(512);
    let (minor, params, end_point) = match negotiate::negotiate(stream, ctx, &mut buf).await? {
        Negotiated::Startup {
            minor,
            params,
            end_point,
        } => (minor, params, end_point),
        Negotiated::Cancelled => return Ok(Opening::Cancelled),
    };
    let req = Request::read(minor, params)?;
    let mut out = BytesMut::new();
    // Protocol 3.2 (PostgreSQL 18) differs from 3.0 only in the length of
    // the cancel key, which may stay 4 bytes: pgmux serves 3.2 as asked
    // and answers a newer request, or `_pq_` options it does not know,
    // with the version it serves, as PostgreSQL 18 does.
    if req.minor > encode::NEWEST_MINOR || !req.protocol_options.is_empty() {
        let served = i32::from(req.minor.min(encode::NEWEST_MINOR));
        encode::negotiate_protocol_version(
            &mut out,
            encode::PROTOCOL_3_0 | served,
            &req.protocol_options,
        );
    }
    let cfg = ctx.config();
    let method = authenticate::method(&cfg, peer.ip(), stream.is_tls(), &req.database, &req.user)
        .inspect_err(|e| {
        let labels = (
            label(cfg.databases.contains_key(&req.database), &req.database),
            label(ctx.user(&req.user).is_some(), &req.user),
        );
        count_auth_failure(ctx, e, &labels)
    })?;
    let target = resolve(ctx, &cfg, &req, method).await?;
    let mut ex = Exchange {
        stream,
        buf: &mut buf,
        out: &mut out,
        end_point: end_point.as_deref(),
        mock: (&ctx.mock_key, ctx.mock_shape().1),
    };
    let client_key = authenticate::authenticate(&mut ex, method, &req.user, &target.auth)
        .await
        .inspect_err(|e| count_auth_failure(ctx, e, &target.labels))?;
    if let Some(refusal) = target.refusal {
        if matches!(
            refusal,
            LoginError::Fatal(SqlState::INVALID_CATALOG_NAME, _)
        ) {
            ctx.metrics.error(
                ErrorReason::UnknownTarget,
                &target.labels.0,
                &target.labels.1,
            );
        }
        return Err(refusal);
    }
    if target.admin {
        return open_admin(stream, &cfg, req.user, out, buf).await;
    }
    let server_secret = target.server_secret(client_key);
    let login = open_session(ctx, &cfg, req, server_secret, &mut out, buf).await?;
    stream.write_all(&out).await?;
    Ok(Opening::Session(login))
}

/// Counts a refused login under `labels` (an unknown user was counted as
/// such already).
fn count_auth_failure(ctx: &Context, e: &LoginError, labels: &(String, String)) {
    if matches!(e, LoginError::Fatal(..)) && labels.1 != UNKNOWN_LABEL {
        ctx.metrics
            .error(ErrorReason::AuthFailed, &labels.0, &labels.1);
    }
}

impl Target {
    /// What pgmux logs in to the server with, when the client's own login
    /// decides it: a looked-up user's secret, and for any user known only
    /// by a SCRAM verifier (auth_query, or a verifier copied into the
    /// config or userlist.txt) the ClientKey its SCRAM proof revealed, for
    /// pass-through. Otherwise the configured secret (`None`).
    fn server_secret(&self, client_key: Option<[u8; 32]>) -> Option<Secret> {
        match (&self.auth.secret, client_key) {
            (Secret::Scram(v), Some(k)) => Some(Secret::ScramKeys(v.clone(), k)),
            (s, _) if self.looked_up => Some(s.clone()),
            _ => None,
        }
    }
}

/// Welcomes an admin user to the console.
async fn open_admin(
    stream: &mut Stream,
    cfg: &Config,
    user: String,
    mut out: BytesMut,
    buf: BytesMut,
) -> Result<Opening, LoginError> {
    if !cfg.admin.allows(&user) {
        return Err(fatal(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!("permission denied: user \"{user}\" may not use the admin console"),
        ));
    }
    crate::admin::welcome(&mut out);
    stream.write_all(&out).await?;
    Ok(Opening::Admin(user, buf))
}

/// Takes the client's pool, builds its parameters and writes the welcome
/// a real server of that pool would send.
async fn open_session(
    ctx: &Context,
    cfg: &Config,
    req: Request,
    server_secret: Option<Secret>,
    out: &mut BytesMut,
    pending: BytesMut,
) -> Result<Login, LoginError> {
    let key = PoolKey {
        database: req.database,
        user: req.user,
    };
    let pool = ctx
        .pools
        .get_with(cfg, &ctx.metrics, &key, server_secret)
        .map_err(|e| fatal(SqlState::CANNOT_CONNECT, e))?;
    let pool_params = pool.startup_params().await.map_err(|e| {
        ctx.metrics
            .error(super::pool_error_reason(&e), &key.database, &key.user);
        fatal(super::pool_error_code(&e), e.to_string())
    })?;
    let params = ClientParams::new(&pool_params, &req.settings)
        .map_err(|e| fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))?;
    let cancel = ctx.cancels.register();
    let mode = pool.settings().mode;
    // With peering, a key's process id names the instance that issued it.
    let key_pending = mode == PoolMode::Session && cfg.pgmux.peer_id == 0;
    welcome(
        out,
        &params,
        &pool_params,
        (!key_pending).then_some(&cancel),
    );
    Ok(Login {
        mode,
        key,
        pool,
        params,
        cancel,
        pending,
        key_pending,
    })
}

/// What a real server of the pool would send after authentication: the
/// pool's ParameterStatus set with the client's own values, then (unless
/// the session sends them once it has its server) a cancel key of pgmux's
/// making and ReadyForQuery.
fn welcome(
    out: &mut BytesMut,
    params: &ClientParams,
    pool_params: &[(String, String)],
    cancel: Option<&CancelHandle>,
) {
    encode::auth_ok(out);
    for (k, v) in params.welcome(pool_params) {
        encode::parameter_status(out, &k, &v);
    }
    if let Some(cancel) = cancel {
        encode::backend_key_data(out, cancel.slot.pid, cancel.slot.secret);
        encode::ready_for_query(out, TxStatus::Idle);
    }
}

/// Sends a FATAL error to a client that is about to be closed.
pub async fn send_fatal(stream: &mut Stream, code: SqlState, msg: &str) {
    let mut out = BytesMut::new();
    write_error(&mut out, Severity::Fatal, code.0, msg);
    let _ = stream.write_all(&out).await;
}
