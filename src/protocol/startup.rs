//! The untagged packets a connection starts with: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest.

use super::frame::{cstr, read_i32};

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Request code of SSLRequest.
pub const SSL_REQUEST: i32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// What a startup packet asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Upgrade to TLS before the real startup.
    SslRequest,
    /// Upgrade to GSS encryption (always refused).
    GssEncRequest,
    /// Cancel the query of the session holding this key.
    Cancel {
        /// The process id from BackendKeyData.
        pid: i32,
        /// The secret from BackendKeyData.
        secret: i32,
    },
    /// A session start with protocol `major.minor` and its parameters.
    Startup {
        /// Protocol major version (3 is the only one served).
        major: u16,
        /// Protocol minor version.
        minor: u16,
        /// Parameters in the order the client sent them.
        params: Vec<(String, String)>,
    },
}

/// A startup packet that can't be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length out of range.
    #[error("invalid length of startup packet")]
    BadLength,
    /// Truncated or not NUL-terminated.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    /// Parameter names and values must be UTF-8 text.
    #[error("invalid startup packet: parameters are not valid UTF-8")]
    NotUtf8,
}

/// Validates the 4-byte length prefix; returns the number of bytes that follow it.
pub fn body_len(len_prefix: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(len_prefix);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(len as usize - 4)
}

/// Parses the packet body (everything after the length prefix).
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let (code, rest) = read_i32(body).ok_or(StartupError::BadLength)?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (pid, rest) = read_i32(rest).ok_or(StartupError::BadLayout)?;
            let (secret, _) = read_i32(rest).ok_or(StartupError::BadLayout)?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        _ => Ok(StartupPacket::Startup {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
            params: parse_params(rest)?,
        }),
    }
}

fn parse_params(mut b: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut out = Vec::new();
    loop {
        match b {
            [0] => return Ok(out),
            [] => return Err(StartupError::BadLayout),
            _ => {}
        }
        let (k, rest) = cstr(b).ok_or(StartupError::BadLayout)?;
        let (v, rest) = cstr(rest).ok_or(StartupError::BadLayout)?;
        let k = std::str::from_utf8(k).map_err(|_| StartupError::NotUtf8)?;
        let v = std::str::from_utf8(v).map_err(|_| StartupError::NotUtf8)?;
        out.push((k.to_owned(), v.to_owned()));
        b = rest;
    }
}

/// Splits a startup `options` value into `name=value` settings, the way the
/// server reads `-c name=value` and `--name=value` (backslash escapes a space).
/// Returns `None` for switches pgmux cannot carry across servers.
pub fn parse_options(options: &str) -> Option<Vec<(String, String)>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else {
            return None;
        };
        let (k, v) = setting.split_once('=')?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_startup_and_requests() {
        let mut body = 196_608i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0database\0app\0\0");
        let StartupPacket::Startup {
            major,
            minor,
            params,
        } = parse(&body).unwrap()
        else {
            panic!("not a startup");
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(params[1], ("database".into(), "app".into()));
        assert_eq!(
            parse(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(parse(&body[..body.len() - 1]), Err(StartupError::BadLayout));
        assert!(body_len([0, 0, 0, 3]).is_err());
        assert!(body_len([0, 1, 0, 0]).is_err());
    }

    #[test]
    fn parses_options() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64kB"),
            Some(vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64kB".into()),
            ])
        );
        assert_eq!(
            parse_options(r"-c application_name=a\ b"),
            Some(vec![("application_name".into(), "a b".into())])
        );
        assert_eq!(parse_options("-d 5"), None);
    }
}
