//! ErrorResponse: the SQLSTATE codes pgmux answers with, and a reader for
//! the fields of a server's error. The errors pgmux writes are built in
//! [`super::encode`] (`write_error`): reading here, writing there, and
//! neither module imports the other.

use super::field;
use super::frame::cstr;

/// SQLSTATE codes pgmux itself reports. Each matches what PostgreSQL uses
/// for the same condition, so drivers map them to the usual error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 08P01: malformed or illegal message.
    pub const PROTOCOL_VIOLATION: Self = Self("08P01");
    /// 08006: the server connection failed.
    pub const CONNECTION_FAILURE: Self = Self("08006");
    /// 08001: could not establish a server connection.
    pub const CANNOT_CONNECT: Self = Self("08001");
    /// 28P01: wrong password.
    pub const INVALID_PASSWORD: Self = Self("28P01");
    /// 28000: no such role, or authentication method not allowed.
    pub const INVALID_AUTHORIZATION: Self = Self("28000");
    /// 3D000: no such database.
    pub const INVALID_CATALOG_NAME: Self = Self("3D000");
    /// 53300: connection or pool limits reached.
    pub const TOO_MANY_CONNECTIONS: Self = Self("53300");
    /// 57P01: the pooler is shutting down.
    pub const ADMIN_SHUTDOWN: Self = Self("57P01");
    /// 57P03: the database does not take connections now (DISABLE).
    pub const CANNOT_CONNECT_NOW: Self = Self("57P03");
    /// 25P03: idle in a transaction past the timeout.
    pub const IDLE_IN_TRANSACTION_TIMEOUT: Self = Self("25P03");
    /// 57P05: idle outside a transaction past the timeout.
    pub const IDLE_SESSION_TIMEOUT: Self = Self("57P05");
    /// 42501: insufficient privilege.
    pub const INSUFFICIENT_PRIVILEGE: Self = Self("42501");
    /// 42601: syntax error (unknown admin command).
    pub const SYNTAX_ERROR: Self = Self("42601");
    /// 0A000: feature not supported (protocol version, replication).
    pub const FEATURE_NOT_SUPPORTED: Self = Self("0A000");
    /// 42704: undefined object (an unknown prepared statement name).
    pub const UNDEFINED_OBJECT: Self = Self("42704");
    /// 26000: invalid SQL statement name (no such prepared statement).
    pub const INVALID_SQL_STATEMENT_NAME: Self = Self("26000");
    /// 42P05: a prepared statement of that name already exists.
    pub const DUPLICATE_PSTATEMENT: Self = Self("42P05");
    /// 54000: program limit exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: Self = Self("54000");
    /// 58000: internal pooler error.
    pub const SYSTEM_ERROR: Self = Self("58000");
}

/// The fields of an ErrorResponse or NoticeResponse body, borrowed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// Severity: `V` (never localized) when present, else `S`.
    pub severity: &'a [u8],
    /// `C`: SQLSTATE.
    pub code: &'a [u8],
    /// `M`: primary message.
    pub message: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    /// Reads the fields pgmux cares about; unknown fields are skipped.
    pub fn parse(mut body: &'a [u8]) -> Option<Self> {
        let mut f = Self::default();
        loop {
            let (&kind, rest) = body.split_first()?;
            if kind == 0 {
                return Some(f);
            }
            let (value, rest) = cstr(rest)?;
            match kind {
                field::SEVERITY if f.severity.is_empty() => f.severity = value,
                field::SEVERITY_NONLOCALIZED => f.severity = value,
                field::CODE => f.code = value,
                field::MESSAGE => f.message = value,
                _ => {}
            }
            body = rest;
        }
    }

    /// The message as text, for logs.
    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(self.message).into_owned()
    }
}
