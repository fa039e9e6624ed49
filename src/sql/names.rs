//! The names of custom settings (`app.tenant_id`) a text or a Bind may
//! set. PostgreSQL hides placeholder settings from `pg_settings`, so these
//! names are the only way to read them back: pgmux asks for each by name.
//!
//! The scan is deliberately liberal: every dotted name anywhere in the
//! text (bare, double-quoted or inside a string) is a candidate, since a
//! candidate that is not a setting costs one `current_setting(name, true)`
//! that answers NULL. What it cannot see (escapes, computed names, quoted
//! parts) is flagged by [`super::effects`] as `unnamed_settings`.

use super::lexer::{word_rest, word_start};
use crate::protocol::frame::{read_i16, read_i32};

/// At most this many names are taken from one message; a text with more
/// is flagged as naming settings pgmux cannot follow.
pub const MAX_NAMES: usize = 32;

/// Bytes of a setting name: identifier characters, dots, and `-`
/// (PostgreSQL 14 and older accept it in custom names).
fn name_byte(b: u8) -> bool {
    word_rest(b) || b == b'.' || b == b'-'
}

/// Whether `run` is a dotted name: identifiers joined by single dots.
fn dotted(run: &[u8]) -> bool {
    memchr::memchr(b'.', run).is_some()
        && run
            .split(|&b| b == b'.')
            .all(|part| part.first().is_some_and(|&b| word_start(b)))
}

/// The dotted names in `sql`, lowercased (PostgreSQL compares setting
/// names without case), each once; `None` past [`MAX_NAMES`].
pub fn setting_names(sql: &[u8]) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for run in sql.split(|&b| !(name_byte(b))) {
        if !dotted(run) {
            continue;
        }
        let name = String::from_utf8_lossy(run).to_ascii_lowercase();
        if !names.contains(&name) {
            if names.len() == MAX_NAMES {
                return None;
            }
            names.push(name);
        }
    }
    Some(names)
}

/// The Bind parameters (text, or binary `text`: the same bytes) that are
/// dotted names, for a statement that calls `set_config($n, ...)`; `None`
/// for a malformed body, past [`MAX_NAMES`], or for a value with a dot
/// that is not read as a name (padded, quoted): it may name a setting all
/// the same.
pub fn bind_setting_names(body: &[u8]) -> Option<Vec<String>> {
    let (_, rest) = crate::protocol::frame::cstr(body)?;
    let (_, rest) = crate::protocol::frame::cstr(rest)?;
    let (formats, mut rest) = read_i16(rest)?;
    rest = rest.get(usize::try_from(formats).ok()? * 2..)?;
    let (count, mut rest) = read_i16(rest)?;
    let mut names = Vec::new();
    for _ in 0..count {
        let (len, tail) = read_i32(rest)?;
        let Ok(len) = usize::try_from(len) else {
            // NULL
            rest = tail;
            continue;
        };
        let value = tail.get(..len)?;
        rest = &tail[len..];
        if memchr::memchr(b'.', value).is_none() {
            continue;
        }
        if !(dotted(value) && value.iter().all(|&b| name_byte(b))) {
            return None;
        }
        let name = String::from_utf8_lossy(value).to_ascii_lowercase();
        if !names.contains(&name) {
            if names.len() == MAX_NAMES {
                return None;
            }
            names.push(name);
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<String> {
        setting_names(sql.as_bytes()).unwrap_or_default()
    }

    #[test]
    fn finds_dotted_names_anywhere() {
        assert_eq!(names("SET app.tenant_id = 'A'"), ["app.tenant_id"]);
        assert_eq!(names("set \"App.Tenant\" to 1"), ["app.tenant"]);
        assert_eq!(
            names("SELECT set_config('my.a', $1, false), set_config('my.b.c', 'x', false)"),
            ["my.a", "my.b.c"]
        );
        assert!(names("SELECT 1.5, $1, a. b").is_empty());
        assert!(names("SELECT x FROM t").is_empty());
        let many: String = (0..40).map(|i| format!("a.b{i} ")).collect();
        assert_eq!(setting_names(many.as_bytes()), None);
    }

    #[test]
    fn reads_names_from_bind() {
        let mut body = b"\0s1\0".to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        for v in [&b"App.Tenant_ID"[..], b"A"] {
            body.extend_from_slice(&(v.len() as i32).to_be_bytes());
            body.extend_from_slice(v);
        }
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(
            bind_setting_names(&body),
            Some(vec!["app.tenant_id".into()])
        );
        assert_eq!(bind_setting_names(&body[..body.len() - 9]), None);
        let mut padded = b"\0s1\0\0\0\0\x01".to_vec();
        padded.extend_from_slice(&6i32.to_be_bytes());
        padded.extend_from_slice(b"a.b   ");
        padded.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(bind_setting_names(&padded), None);
    }
}
