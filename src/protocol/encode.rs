//! Every message pgmux originates, in one place. Each function appends one
//! complete message to the caller's buffer, so a whole reply can be written
//! at once.
//!
//! Toward clients the messages are pgwire's types; toward servers,
//! postgres-protocol's frontend encoders (the code tokio-postgres sends
//! with). Neither decodes anything here: untrusted bytes are framed by
//! pgmux's own checked code ([`super::frame`]), and forwarded messages are
//! passed on as the raw frames they arrived as.
//!
//! ErrorResponse is written here and read in [`super::error`]; neither
//! module imports the other (the field codes are [`super::field`]'s).

use std::io;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::extendedquery::{CloseComplete, ParseComplete};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, GssEncResponse, ReadyForQuery, SslResponse, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;
use postgres_protocol::message::frontend;

use super::{field, TxStatus};

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

/// NegotiateProtocolVersion: the newest minor version supported and the
/// protocol options that were not recognized.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unknown: &[String]) {
    let unknown = unknown.iter().map(|o| text(o)).collect();
    put(out, NegotiateProtocolVersion::new(minor, unknown));
}

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

/// DataRow of text values (`None`: NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<String>]) {
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(v) => {
                data.put_i32(v.len() as i32);
                data.put_slice(v.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    put(out, DataRow::new(data, values.len() as i16));
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

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) -> io::Result<()> {
    frontend::startup_message(params.iter().copied(), out)
}

/// SSLRequest.
pub fn ssl_request(out: &mut BytesMut) {
    frontend::ssl_request(out);
}

/// PasswordMessage with a cleartext password or an md5 answer.
pub fn password(out: &mut BytesMut, password: &[u8]) -> io::Result<()> {
    frontend::password_message(password, out)
}

/// SASLInitialResponse: mechanism name and the client-first-message.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) -> io::Result<()> {
    frontend::sasl_initial_response(mechanism, data, out)
}

/// SASLResponse (the client-final-message).
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) -> io::Result<()> {
    frontend::sasl_response(data, out)
}

/// Simple Query.
pub fn query(out: &mut BytesMut, sql: &str) -> io::Result<()> {
    frontend::query(sql, out)
}

/// Close of a statement pgmux named (`pgmux_<n>`, `pgmux_check`).
pub fn close_statement(out: &mut BytesMut, name: &[u8]) {
    own_name(name, |name| frontend::close(b'S', name, out));
}

/// Describe of a statement pgmux named.
pub fn describe_statement(out: &mut BytesMut, name: &[u8]) {
    own_name(name, |name| frontend::describe(b'S', name, out));
}

/// Encodes a message naming one of pgmux's own statements. The encoders
/// fail only on a NUL inside the name, which pgmux's ASCII names never
/// hold: they are checked in debug builds, and NULs are dropped regardless.
fn own_name(name: &[u8], encode: impl FnOnce(&str) -> io::Result<()>) {
    debug_assert!(name.is_ascii() && !name.contains(&0), "{name:?}");
    let name = String::from_utf8_lossy(name).replace('\0', "");
    let res = encode(&name);
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
    let res = frontend::copy_fail(reason, out);
    debug_assert!(res.is_ok());
}

/// A Parse that always fails (a syntax error, whatever the session's
/// state), sent at the end of an extended-protocol batch whose client left
/// before its Sync: the server aborts the batch's implicit transaction, as
/// a direct connection closed there would, where a Sync would commit it.
pub fn failing_parse(out: &mut BytesMut) {
    const TEXT: &str = "pgmux: the client left before the Sync of its batch; abort";
    let res = frontend::parse("", TEXT, std::iter::empty(), out);
    debug_assert!(res.is_ok());
}

/// CancelRequest (protocol 3.0 key).
pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    frontend::cancel_request(pid, secret, out);
}

/// One extended-protocol round trip of pgmux's own: Parse (unnamed), Bind
/// with text parameters, Execute, Sync. Used for `auth_query`.
pub fn query_with_params(out: &mut BytesMut, sql: &str, params: &[&str]) -> io::Result<()> {
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
}

/// Parse of a client's statement text under a name of pgmux's, with the
/// parameter types as the client sent them (count-prefixed OIDs).
///
/// Hand-written on purpose: the text is the client's bytes, which need not
/// be UTF-8 (`client_encoding` LATIN1, SQL_ASCII), and the frontend
/// encoders take `&str`; decoding and re-encoding would corrupt it.
pub fn parse_raw(out: &mut BytesMut, name: &[u8], query: &[u8], types: &[u8]) {
    let start = out.len();
    out.put_u8(b'P');
    out.put_i32(0);
    out.extend(name.iter().copied().filter(|b| *b != 0));
    out.put_u8(0);
    out.extend_from_slice(query);
    out.put_u8(0);
    out.extend_from_slice(types);
    patch_len(out, start);
}

/// A Query whose text is the concatenation of `parts`, client bytes among
/// them (a rewritten `EXECUTE`, a `PREPARE` under pgmux's name): written by
/// hand for the same reason as [`parse_raw`]. NULs are dropped.
pub fn query_raw(out: &mut BytesMut, parts: &[&[u8]]) {
    let start = out.len();
    out.put_u8(b'Q');
    out.put_i32(0);
    for p in parts {
        out.extend(p.iter().copied().filter(|b| *b != 0));
    }
    out.put_u8(0);
    patch_len(out, start);
}

/// Back-patches the length field of the tagged message that starts at
/// `start` (for the messages pgmux rewrites from a client's raw bytes).
pub fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;

    #[test]
    fn encoded_messages_split_back() {
        let mut out = BytesMut::new();
        query(&mut out, "select 1").unwrap();
        parse_raw(&mut out, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        close_statement(&mut out, b"s1");
        ready_for_query(&mut out, TxStatus::Idle);
        write_error(&mut out, Severity::Error, "XX000", "a\0b");
        row_description(&mut out, &[("a", 25), ("b", 1700)]);
        data_row(&mut out, &[Some("x".into()), None]);
        out.extend_from_slice(&parse_complete());
        let tags: Vec<u8> = std::iter::from_fn(|| split_frame(&mut out, 1 << 20).unwrap())
            .map(|f| f.tag())
            .collect();
        assert_eq!(tags, b"QPCZETD1");
    }

    #[test]
    fn same_bytes_as_the_protocol_says() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, TxStatus::InTransaction);
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
        assert_eq!(&parse_complete()[..], b"1\0\0\0\x04");
        assert_eq!(&close_complete()[..], b"3\0\0\0\x04");
        assert_eq!(terminate(), b"X\0\0\0\x04");
        assert_eq!((SSL_ACCEPTED, ENCRYPTION_REFUSED), (&b"S"[..], &b"N"[..]));
        out.clear();
        backend_key_data(&mut out, 7, 9);
        assert_eq!(&out[..], b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09");
        out.clear();
        auth_ok(&mut out);
        assert_eq!(&out[..], b"R\0\0\0\x08\0\0\0\0");
    }
}
