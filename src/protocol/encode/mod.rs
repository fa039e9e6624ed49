//! Every message pgmux originates, in one place. Each function appends one
//! complete message to the caller's buffer, so a whole reply can be written
//! at once.
//!
//! Toward clients the messages are pgwire's types; toward servers,
//! postgres-protocol's frontend encoders (the code tokio-postgres sends
//! with). Messages that carry a client's own bytes (a Bind renamed to one
//! of pgmux's statements, a Parse or Query with the client's text, which
//! need not be UTF-8) are written by hand (`encode/raw.rs`), since both
//! libraries take text as `&str`. Neither library decodes anything here: untrusted
//! bytes are framed by pgmux's own checked code ([`super::frame`]), and
//! forwarded messages are passed on as the raw frames they arrived as.
//!
//! No length is ever wrapped: pgwire and postgres-protocol check theirs,
//! and a refusal leaves the buffer as it was; the hand-written encoders
//! return [`EncodeError`] before writing anything.
//!
//! ErrorResponse is written here and read in [`super::error`]; neither
//! module imports the other (the field codes are [`super::field`]'s).

mod raw;

use std::io;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::extendedquery::{CloseComplete, ParseComplete, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, GssEncResponse, ReadyForQuery, SslResponse, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;
use postgres_protocol::message::frontend;

pub use raw::{error_shifted, parse_raw, patch_len, query_raw, write_bind, RawQuery, RenamedBind};

use super::{field, TxStatus};

/// A message pgmux could not encode, reported by the encoders that work out
/// a length or count themselves (the hand-written ones, DataRow's body).
/// Nothing pgmux sends comes near these limits unless a client's own
/// message already did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body does not fit the i32 length field (which counts itself).
    #[error("{message} message of {len} bytes is too long for the protocol")]
    TooLong {
        /// The message type.
        message: &'static str,
        /// Bytes it would take after its tag (saturated).
        len: usize,
    },
    /// More fields or values than the message's i16 count can say.
    #[error("{message} message with {count} values is more than the protocol allows")]
    TooMany {
        /// The message type.
        message: &'static str,
        /// How many there were.
        count: usize,
    },
}

/// The length field of a message whose body takes `body` bytes.
fn length_field(message: &'static str, body: usize) -> Result<i32, EncodeError> {
    body.checked_add(4)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or(EncodeError::TooLong {
            message,
            len: body.saturating_add(4),
        })
}

// === To the client (pgwire) ===

/// Appends `msg`. pgwire refuses only messages over its size limits, which
/// nothing pgmux writes comes near (the longest text is a client-given
/// name inside an error message, bounded by `max_message_size`); should it
/// happen, the buffer is left as it was rather than holding half a message.
fn put(out: &mut BytesMut, msg: impl Message) {
    let mark = out.len();
    if let Err(e) = msg.encode(out) {
        out.truncate(mark);
        tracing::error!(error = %e, "a message pgmux wrote was refused by its encoder");
    }
}

/// Text for a C-string field: an embedded NUL would end it early, and the
/// bytes after it would be read as the next field.
fn text(s: &str) -> String {
    match memchr::memchr(0, s.as_bytes()) {
        None => s.to_owned(),
        Some(_) => s.replace('\0', ""),
    }
}

/// SSLRequest accepted: the TLS handshake follows. A bare byte with no tag
/// or length, written alone: the client reads exactly one before the
/// handshake.
pub const SSL_ACCEPTED: &[u8] = &[SslResponse::BYTE_ACCEPT];

/// SSLRequest or GSSENCRequest refused (pgmux has no GSSAPI): one `N`
/// answers both.
pub const ENCRYPTION_REFUSED: &[u8] = &[SslResponse::BYTE_REFUSE];

const _: () = assert!(GssEncResponse::BYTE_REFUSE == SslResponse::BYTE_REFUSE);

/// AuthenticationOk.
pub fn auth_ok(out: &mut BytesMut) {
    put(out, Authentication::Ok);
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    put(out, Authentication::MD5Password(salt.to_vec()));
}

/// AuthenticationSASL offering the given mechanisms.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put(
        out,
        Authentication::SASL(mechanisms.iter().map(|m| text(m)).collect()),
    );
}

/// AuthenticationSASLContinue (the server-first-message).
pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    put(
        out,
        Authentication::SASLContinue(Bytes::copy_from_slice(data)),
    );
}

/// AuthenticationSASLFinal (the server-final-message).
pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    put(out, Authentication::SASLFinal(Bytes::copy_from_slice(data)));
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put(out, ParameterStatus::new(text(name), text(value)));
}

/// BackendKeyData for protocol 3.0.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put(out, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::Idle => TransactionStatus::Idle,
        TxStatus::InTransaction => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
    };
    put(out, ReadyForQuery::new(status));
}

/// NegotiateProtocolVersion: the newest protocol version supported (a
/// whole version number, [`PROTOCOL_3_0`]) and the protocol options that
/// were not recognized.
pub fn negotiate_protocol_version(out: &mut BytesMut, version: i32, unknown: &[String]) {
    let unknown = unknown.iter().map(|o| text(o)).collect();
    put(out, NegotiateProtocolVersion::new(version, unknown));
}

/// Protocol 3.0 as a version number (major in the high 16 bits): what
/// NegotiateProtocolVersion carries, as PostgreSQL writes it. libpq 18
/// reads it whole and refuses a bare minor version (0) as a downgrade
/// below 3.0.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// The newest protocol 3 minor version pgmux serves to clients: 3.2
/// (PostgreSQL 18), whose only change, a cancel key of any length, needs
/// nothing of a server pgmux speaks 3.0 to.
pub const NEWEST_MINOR: u16 = 2;

/// CommandComplete with the given tag (`DEALLOCATE`, `SHOW`, ...).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put(out, CommandComplete::new(text(tag)));
}

/// RowDescription of (name, type OID) columns, every value in text format
/// (the admin console's result sets).
pub fn row_description(out: &mut BytesMut, columns: &[(&str, u32)]) {
    let fields = columns
        .iter()
        .map(|(c, oid)| FieldDescription::new(text(c), 0, 0, *oid, -1, -1, 0))
        .collect();
    put(out, RowDescription::new(fields));
}

/// DataRow of text values (`None`: NULL). pgwire takes the body ready-made,
/// so its counts and lengths are checked here.
pub fn data_row(out: &mut BytesMut, values: &[Option<String>]) -> Result<(), EncodeError> {
    const MESSAGE: &str = "DataRow";
    let count = i16::try_from(values.len()).map_err(|_| EncodeError::TooMany {
        message: MESSAGE,
        count: values.len(),
    })?;
    let body = values.iter().fold(2usize, |n, v| {
        n.saturating_add(4 + v.as_ref().map_or(0, String::len))
    });
    length_field(MESSAGE, body)?;
    let mut data = BytesMut::with_capacity(body - 2);
    for v in values {
        match v {
            Some(v) => {
                let len = i32::try_from(v.len()).map_err(|_| EncodeError::TooLong {
                    message: MESSAGE,
                    len: v.len(),
                })?;
                data.put_i32(len);
                data.put_slice(v.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    put(out, DataRow::new(data, count));
    Ok(())
}

/// Severity of an error pgmux writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The current command failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse. Embedded NULs in the text are dropped because
/// they would end the field early.
pub fn write_error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    write_error_fields(out, severity, code, message, None);
}

/// Appends an ErrorResponse with an optional DETAIL field.
pub fn write_error_fields(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
    let sev = severity.as_str();
    // `V` too: drivers read it when present, as it is never localized.
    let mut fields = vec![
        (field::SEVERITY, text(sev)),
        (field::SEVERITY_NONLOCALIZED, text(sev)),
        (field::CODE, text(code)),
        (field::MESSAGE, text(message)),
    ];
    if let Some(d) = detail {
        fields.push((field::DETAIL, text(d)));
    }
    put(out, ErrorResponse::new(fields));
}

fn encoded(msg: impl Message) -> Bytes {
    let mut out = BytesMut::new();
    put(&mut out, msg);
    out.freeze()
}

/// ParseComplete, encoded once (pgmux answers many Parses itself).
pub fn parse_complete() -> Bytes {
    static MSG: LazyLock<Bytes> = LazyLock::new(|| encoded(ParseComplete::new()));
    MSG.clone()
}

/// CloseComplete, encoded once.
pub fn close_complete() -> Bytes {
    static MSG: LazyLock<Bytes> = LazyLock::new(|| encoded(CloseComplete::new()));
    MSG.clone()
}

// === To the server (postgres-protocol) ===

/// Runs a frontend encoder, leaving `out` as it was if it refuses (a body
/// too long, a NUL inside a string): it would have left half a message.
fn frontend_msg(
    out: &mut BytesMut,
    encode: impl FnOnce(&mut BytesMut) -> io::Result<()>,
) -> io::Result<()> {
    let mark = out.len();
    encode(out).inspect_err(|_| out.truncate(mark))
}

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) -> io::Result<()> {
    frontend_msg(out, |out| {
        frontend::startup_message(params.iter().copied(), out)
    })
}

/// SSLRequest.
pub fn ssl_request(out: &mut BytesMut) {
    frontend::ssl_request(out);
}

/// PasswordMessage with a cleartext password or an md5 answer.
pub fn password(out: &mut BytesMut, password: &[u8]) -> io::Result<()> {
    frontend_msg(out, |out| frontend::password_message(password, out))
}

/// SASLInitialResponse: mechanism name and the client-first-message.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) -> io::Result<()> {
    frontend_msg(out, |out| {
        frontend::sasl_initial_response(mechanism, data, out)
    })
}

/// SASLResponse (the client-final-message).
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) -> io::Result<()> {
    frontend_msg(out, |out| frontend::sasl_response(data, out))
}

/// Simple Query.
pub fn query(out: &mut BytesMut, sql: &str) -> io::Result<()> {
    frontend_msg(out, |out| frontend::query(sql, out))
}

/// Close of a statement pgmux named (`pgmux_<n>`, `pgmux_check`).
pub fn close_statement(out: &mut BytesMut, name: &[u8]) {
    own_name(out, name, |name, out| {
        frontend::close(TARGET_TYPE_BYTE_STATEMENT, name, out)
    });
}

/// Describe of a statement pgmux named.
pub fn describe_statement(out: &mut BytesMut, name: &[u8]) {
    own_name(out, name, |name, out| {
        frontend::describe(TARGET_TYPE_BYTE_STATEMENT, name, out)
    });
}

/// Encodes a message naming one of pgmux's own statements. The encoders
/// fail only on a NUL inside the name, which pgmux's ASCII names never
/// hold: they are checked in debug builds, and NULs are dropped regardless.
fn own_name(
    out: &mut BytesMut,
    name: &[u8],
    encode: impl FnOnce(&str, &mut BytesMut) -> io::Result<()>,
) {
    debug_assert!(name.is_ascii() && !name.contains(&0), "{name:?}");
    let name = String::from_utf8_lossy(name).replace('\0', "");
    let res = frontend_msg(out, |out| encode(&name, out));
    debug_assert!(res.is_ok());
}

/// Sync.
pub fn sync(out: &mut BytesMut) {
    frontend::sync(out);
}

/// Terminate, encoded once: a server connection dropped says goodbye with
/// it so the server logs a clean disconnect.
pub fn terminate() -> &'static [u8] {
    static MSG: LazyLock<BytesMut> = LazyLock::new(|| {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        out
    });
    &MSG
}

/// CopyFail: pgmux ends a COPY FROM STDIN whose client left.
pub fn copy_fail(out: &mut BytesMut, reason: &str) {
    let res = frontend_msg(out, |out| frontend::copy_fail(reason, out));
    debug_assert!(res.is_ok());
}

/// A Parse that always fails (a syntax error, whatever the session's
/// state), sent at the end of an extended-protocol batch whose client left
/// before its Sync: the server aborts the batch's implicit transaction, as
/// a direct connection closed there would, where a Sync would commit it.
pub fn failing_parse(out: &mut BytesMut) {
    const TEXT: &str = "pgmux: the client left before the Sync of its batch; abort";
    let res = frontend_msg(out, |out| {
        frontend::parse("", TEXT, std::iter::empty(), out)
    });
    debug_assert!(res.is_ok());
}

/// CancelRequest (protocol 3.0 key).
pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    frontend::cancel_request(pid, secret, out);
}

/// One extended-protocol round trip of pgmux's own: Parse (unnamed), Bind
/// with text parameters, Execute, Sync. Used for `auth_query`.
pub fn query_with_params(out: &mut BytesMut, sql: &str, params: &[&str]) -> io::Result<()> {
    frontend_msg(out, |out| {
        frontend::parse("", sql, std::iter::empty(), out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty(),
            params.iter(),
            |p, buf| {
                buf.put_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty(),
            out,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => io::Error::other(e),
            frontend::BindError::Serialization(e) => e,
        })?;
        frontend::execute("", 0, out)?;
        frontend::sync(out);
        Ok(())
    })
}

#[cfg(test)]
mod tests;
