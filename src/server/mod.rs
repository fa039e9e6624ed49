//! One server connection: its socket and read buffer, the parameters the
//! server reported, its cancel key, and the internal queries pgmux runs on it
//! between clients (parameter sync and reset).

mod auth;
mod connect;
mod hosts;
mod identity;
mod target;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::Stream;

pub use hosts::{ask_role, open, resolve, still_fits, ConnectOptions, Failure, Role};
pub use identity::{Restored, SessionIdentity, RESTORE};
pub use target::ServerTarget;

use crate::protocol::frame::{cstr, make_room, split_frame};
use crate::protocol::{be, encode, ErrorFields, Frame, FrameError, TxStatus};

/// Why talking to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Socket failure.
    #[error("server connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server did not answer in time.
    #[error("timed out connecting to the server")]
    Timeout,
    /// The server sent an ErrorResponse (code, message).
    #[error("server error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
    },
    /// The server sent something pgmux doesn't understand.
    #[error("server protocol error: {0}")]
    Protocol(String),
    /// pgmux has no way to log in as this user.
    #[error("{0}")]
    Auth(String),
    /// TLS could not be set up as configured.
    #[error("{0}")]
    Tls(String),
    /// The server logged in but its role does not suit the pool's
    /// `target_session_attrs`.
    #[error("{0}")]
    Role(String),
    /// Every host failed, each for its own reason.
    #[error("no host could be used: {}", hosts_summary(.0))]
    Hosts(Vec<(crate::config::HostPort, ServerError)>),
}

fn hosts_summary(all: &[(crate::config::HostPort, ServerError)]) -> String {
    let parts: Vec<String> = all.iter().map(|(h, e)| format!("{h}: {e}")).collect();
    parts.join("; ")
}

impl From<FrameError> for ServerError {
    fn from(e: FrameError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl ServerError {
    /// A server message that does not parse.
    pub fn malformed(what: &str) -> Self {
        Self::Protocol(format!("malformed {what}"))
    }

    /// Builds the error from a server's ErrorResponse body.
    pub fn from_error_body(body: &[u8]) -> Self {
        match ErrorFields::parse(body) {
            Some(f) => Self::Server {
                code: String::from_utf8_lossy(f.code).into_owned(),
                message: f.message_lossy(),
            },
            None => Self::Protocol("malformed ErrorResponse".into()),
        }
    }
}

/// Per-process connection ids, for logs.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Parameters whose values pgmux keeps in step with each client.
pub const TRACKED_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "standard_conforming_strings",
];

/// The cancel key of a server connection and where to send cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// Server address.
    pub addr: SocketAddr,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret.
    pub secret: i32,
}

/// An open, logged-in server connection.
pub struct ServerConn {
    stream: Stream,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    /// The ParameterStatus values as the server sent them (original names).
    reported: Vec<(String, String)>,
    /// Current values by lowercase name: reported ones plus those pgmux set.
    current: HashMap<String, String>,
    /// Lowercase names pgmux set that the server does not report.
    unreported_set: Vec<String>,
    /// Where and how to cancel this connection's query.
    pub key: BackendKey,
    created: Instant,
    /// When the connection was last handed back to the pool.
    pub last_used: Instant,
    /// Per-process unique id, for logs.
    pub id: u64,
    /// Named statements prepared on this server (transaction mode).
    pub statements: crate::prepared::ServerStatements,
    /// The pool generation it was opened in (RECONNECT retires older ones).
    pub generation: u64,
    /// Fingerprint of the client parameters this server was last synced to
    /// (0: unknown).
    pub params_fingerprint: u64,
    /// Who the connection logged in as: the identity it must have whenever
    /// it is lent to a client.
    login: identity::Login,
    /// The connection may run as someone other than `login` (a reported
    /// `session_authorization` / `is_superuser` changed, or pgmux set a
    /// client's identity on it).
    identity_changed: bool,
    /// A statement that can change identity is prepared on this connection
    /// under a name any later client may execute (statement tracking off):
    /// every hold ends with a check.
    identity_sticky: bool,
    /// What statements prepared here under names any later client may
    /// execute (statement tracking off) may do: every hold of this server
    /// ends with the check that follows code pgmux cannot read.
    pub sticky_effects: crate::sql::Effects,
    /// The server answered a write with "read-only transaction" (25006):
    /// its role is checked before it goes back to a pool that must write.
    pub role_suspect: bool,
    /// The dotted names in the bodies of the database's own functions:
    /// the custom settings its code may set without pgmux reading the
    /// name. Asked once per connection, at the first read-back that must
    /// reset the session (and again after a `CREATE` on it); `None` until
    /// then.
    pub code_setting_names: Option<Box<[String]>>,
}

/// The columns of a DataRow as text (`None` for NULL or malformed).
fn data_row_text(body: &[u8]) -> Vec<Option<String>> {
    let mut cols = Vec::new();
    let Some((n, mut rest)) = crate::protocol::frame::read_i16(body) else {
        return cols;
    };
    for _ in 0..n.max(0) {
        let Some((len, r)) = crate::protocol::frame::read_i32(rest) else {
            break;
        };
        if len < 0 {
            cols.push(None);
            rest = r;
            continue;
        }
        let Some(v) = r.get(..len as usize) else {
            break;
        };
        cols.push(Some(String::from_utf8_lossy(v).into_owned()));
        rest = &r[len as usize..];
    }
    cols
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("tls", &self.stream.is_tls())
            .finish()
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Best effort: say goodbye so the server logs a clean disconnect.
        if let Stream::Plain(tcp) = &self.stream {
            let _ = tcp.try_write(encode::terminate());
        }
    }
}

impl ServerConn {
    /// A connection over `stream`, before its login.
    fn new(stream: Stream, addr: SocketAddr) -> Self {
        Self {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            reported: Vec::new(),
            current: HashMap::new(),
            unreported_set: Vec::new(),
            key: BackendKey {
                addr,
                pid: 0,
                secret: 0,
            },
            created: Instant::now(),
            last_used: Instant::now(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            statements: Default::default(),
            generation: 0,
            params_fingerprint: 0,
            login: Default::default(),
            identity_changed: false,
            identity_sticky: false,
            sticky_effects: crate::sql::Effects::NONE,
            role_suspect: false,
            code_setting_names: None,
        }
    }

    /// A connection whose replies a test writes into `rbuf` itself, to
    /// drive the session core against a scripted server: its socket is
    /// never read or written.
    #[cfg(test)]
    pub(crate) fn scripted(stream: Stream) -> Self {
        Self::new(stream, SocketAddr::from(([127, 0, 0, 1], 5432)))
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Age of the connection.
    pub fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.created)
    }

    /// Reads more bytes from the server into `rbuf`; 0 means EOF.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        make_room(&mut self.rbuf, 1024, 8192);
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Writes bytes to the server.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf).await
    }

    /// Splits the next complete message off the read buffer.
    pub fn next_frame(&mut self, max: usize) -> Result<Option<Frame>, FrameError> {
        split_frame(&mut self.rbuf, max)
    }

    /// True when an idle connection has nothing unexpected to say and is
    /// still open, checked without blocking.
    pub fn is_clean_idle(&self, now: Instant) -> bool {
        /// Past this much idle time the check makes a system call.
        const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
        self.rbuf.is_empty()
            && self
                .stream
                .is_quiet(now.saturating_duration_since(self.last_used), PROBE_AFTER)
    }

    /// ParameterStatus values to present to clients of this server's pool.
    pub fn reported_params(&self) -> &[(String, String)] {
        &self.reported
    }

    /// Current value of a parameter by lowercase name.
    pub fn param(&self, lower_name: &str) -> Option<&str> {
        self.current.get(lower_name).map(String::as_str)
    }

    /// The server's role as it reports it (PostgreSQL 14 and later report
    /// `in_hot_standby`, and follow a promotion with a new value).
    pub fn reported_role(&self) -> Option<Role> {
        let standby = self.param("in_hot_standby")? == "on";
        let read_only = self.param("default_transaction_read_only") == Some("on");
        Some(Role {
            standby,
            read_only: standby || read_only,
        })
    }

    /// Lowercase names pgmux set on this server that it does not report.
    pub fn unreported_set(&self) -> &[String] {
        &self.unreported_set
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter_status(&mut self, body: &[u8]) -> Option<(String, String)> {
        let (k, rest) = cstr(body)?;
        let (v, _) = cstr(rest)?;
        let k = String::from_utf8_lossy(k).into_owned();
        let v = String::from_utf8_lossy(v).into_owned();
        self.identity_changed |= self.login.differs(&k, &v);
        self.current.insert(k.to_ascii_lowercase(), v.clone());
        match self.reported.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v.clone(),
            None => self.reported.push((k.clone(), v.clone())),
        }
        Some((k, v))
    }

    /// Replaces what pgmux knows of the unreported parameters set on this
    /// connection (after a sync, or read back from the server).
    pub fn set_unreported(&mut self, values: std::collections::BTreeMap<String, String>) {
        for name in std::mem::take(&mut self.unreported_set) {
            self.current.remove(&name);
        }
        for (name, value) in values {
            self.current.insert(name.clone(), value);
            self.unreported_set.push(name);
        }
    }

    /// Waits for the next complete message (pgmux's own exchanges only; a
    /// client's traffic goes through the session loop).
    pub async fn recv_frame(&mut self, max: usize) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = self.next_frame(max)? {
                return Ok(frame);
            }
            if self.read_more().await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Runs a query for pgmux's own purposes, swallowing its results. The
    /// first ErrorResponse is returned as an error once ReadyForQuery arrives.
    pub async fn run_internal(&mut self, sql: &str, max: usize) -> Result<TxStatus, ServerError> {
        self.run_internal_rows(sql, max, &mut Vec::new()).await
    }

    /// [`ServerConn::run_internal`], keeping every DataRow's columns as text
    /// in `rows` (also the rows that came before an error).
    pub async fn run_internal_rows(
        &mut self,
        sql: &str,
        max: usize,
        rows: &mut Vec<Vec<Option<String>>>,
    ) -> Result<TxStatus, ServerError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql)?;
        self.exchange(&out, max, rows, &mut Vec::new(), None).await
    }

    /// [`ServerConn::run_internal`] for a Query of several statements,
    /// each statement's rows apart and in order in `sets` (a statement
    /// that returns none gives an empty set; the sets stop at an error).
    pub async fn run_internal_statements(
        &mut self,
        sql: &str,
        max: usize,
        sets: &mut Vec<Vec<Vec<Option<String>>>>,
    ) -> Result<TxStatus, ServerError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql)?;
        let (mut rows, mut ends) = (Vec::new(), Vec::new());
        let res = self.exchange(&out, max, &mut rows, &mut ends, None).await;
        // A statement's rows run from the previous statement's end to its
        // own; rows after the last end came before an error.
        rows.truncate(ends.last().copied().unwrap_or(0));
        let first = sets.len();
        while let Some(end) = ends.pop() {
            debug_assert_eq!(end, rows.len());
            sets.push(rows.split_off(ends.last().copied().unwrap_or(0)));
        }
        sets[first..].reverse();
        res
    }

    /// [`ServerConn::run_internal`], appending the ParameterStatus messages
    /// it causes to `reports` (for a client that must hear of them).
    pub async fn run_internal_reporting(
        &mut self,
        sql: &str,
        max: usize,
        reports: &mut BytesMut,
    ) -> Result<TxStatus, ServerError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql)?;
        self.exchange(&out, max, &mut Vec::new(), &mut Vec::new(), Some(reports))
            .await
    }

    /// Runs one query with text parameters (extended protocol) and returns
    /// the first row's columns as text. Used for `auth_query`.
    pub async fn query_row(
        &mut self,
        sql: &str,
        params: &[&str],
        max: usize,
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        encode::query_with_params(&mut out, sql, params)?;
        let mut rows = Vec::new();
        self.exchange(&out, max, &mut rows, &mut Vec::new(), None)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Sends pgmux's own request and reads the replies up to ReadyForQuery:
    /// rows into `rows` (with the number of rows so far in `ends` at the end
    /// of each statement), ParameterStatus noted (and copied to `reports`),
    /// the first ErrorResponse returned as the error once ReadyForQuery
    /// arrives.
    async fn exchange(
        &mut self,
        request: &[u8],
        max: usize,
        rows: &mut Vec<Vec<Option<String>>>,
        ends: &mut Vec<usize>,
        mut reports: Option<&mut BytesMut>,
    ) -> Result<TxStatus, ServerError> {
        self.write_all(request).await?;
        let mut failure = None;
        loop {
            let frame = self.recv_frame(max).await?;
            match frame.tag() {
                be::DATA_ROW => rows.push(data_row_text(frame.body())),
                be::COMMAND_COMPLETE | be::EMPTY_QUERY => ends.push(rows.len()),
                be::ERROR_RESPONSE if failure.is_none() => {
                    failure = Some(ServerError::from_error_body(frame.body()));
                }
                be::PARAMETER_STATUS => {
                    self.note_parameter_status(frame.body());
                    if let Some(r) = reports.as_deref_mut() {
                        r.extend_from_slice(frame.raw());
                    }
                }
                be::READY_FOR_QUERY => {
                    let status = TxStatus::from_ready(frame.body())
                        .ok_or_else(|| ServerError::Protocol("bad ReadyForQuery".into()))?;
                    return failure.map_or(Ok(status), Err);
                }
                _ => {}
            }
        }
    }

    /// Runs the reset query between session-mode clients and forgets what
    /// pgmux had set.
    pub async fn reset(&mut self, sql: &str, max: usize) -> Result<(), ServerError> {
        if self.run_internal(sql, max).await? != TxStatus::Idle {
            return Err(ServerError::Protocol(
                "reset left a transaction open".into(),
            ));
        }
        self.statements.clear();
        self.params_fingerprint = 0;
        let names = std::mem::take(&mut self.unreported_set);
        for n in names {
            self.current.remove(&n);
        }
        Ok(())
    }
}
