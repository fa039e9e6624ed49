//! The PostgreSQL wire protocol as pgmux sees it: frames split off a byte
//! buffer without copying, the few message bodies the pooling rules need,
//! and the encoders of every message pgmux writes itself ([`encode`]).
//!
//! Nothing in here does I/O or knows about pools, so it can be tested and
//! fuzzed on plain byte slices.

pub mod encode;
pub mod error;
pub mod expect;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use error::{ErrorFields, SqlState};

pub use frame::{Frame, FrameError};

/// Message tags sent by the client (frontend).
pub mod fe {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Extended protocol: Parse.
    pub const PARSE: u8 = b'P';
    /// Extended protocol: Bind.
    pub const BIND: u8 = b'B';
    /// Extended protocol: Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Extended protocol: Execute.
    pub const EXECUTE: u8 = b'E';
    /// Extended protocol: Close.
    pub const CLOSE: u8 = b'C';
    /// Extended protocol: Sync.
    pub const SYNC: u8 = b'S';
    /// Extended protocol: Flush.
    pub const FLUSH: u8 = b'H';
    /// Fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// COPY failed.
    pub const COPY_FAIL: u8 = b'f';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// Password, SASLInitialResponse and SASLResponse share this tag.
    pub const PASSWORD: u8 = b'p';
}

/// Codes of the Authentication message family (tag `R`).
pub mod auth_code {
    /// AuthenticationOk.
    pub const OK: i32 = 0;
    /// AuthenticationCleartextPassword.
    pub const CLEARTEXT: i32 = 3;
    /// AuthenticationMD5Password.
    pub const MD5: i32 = 5;
    /// AuthenticationSASL.
    pub const SASL: i32 = 10;
    /// AuthenticationSASLContinue.
    pub const SASL_CONTINUE: i32 = 11;
    /// AuthenticationSASLFinal.
    pub const SASL_FINAL: i32 = 12;
}

/// Message tags sent by the server (backend).
pub mod be {
    /// Authentication request family.
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Field codes of ErrorResponse and NoticeResponse, shared by the writer
/// ([`encode`]) and the reader ([`error`]).
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6 and later).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: inside a transaction block.
    InTransaction,
    /// `E`: inside a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status a ReadyForQuery body carries.
    pub fn from_ready(body: &[u8]) -> Option<Self> {
        body.first().and_then(|b| Self::from_byte(*b))
    }

    /// Decodes the status byte of a ReadyForQuery body.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    /// The status byte as sent on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}
