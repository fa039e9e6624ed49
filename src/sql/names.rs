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

/// Adds `name` (lowercased: PostgreSQL compares setting names without
/// case) to `names` once; `None` past [`MAX_NAMES`].
fn add(names: &mut Vec<String>, name: &[u8]) -> Option<()> {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    if !names.contains(&name) {
        if names.len() == MAX_NAMES {
            return None;
        }
        names.push(name);
    }
    Some(())
}

/// The dotted names in `sql`, each once; `None` past [`MAX_NAMES`].
pub fn setting_names(sql: &[u8]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for run in sql.split(|&b| !name_byte(b)).filter(|run| dotted(run)) {
        add(&mut names, run)?;
    }
    Some(names)
}

/// The bound values (of a statement that calls `set_config($n, ...)`)
/// that are dotted names; `None` past [`MAX_NAMES`], or for a value with a
/// dot that is not read as a name (padded, quoted): it may name a setting
/// all the same.
pub fn bound_setting_names<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for value in values {
        if memchr::memchr(b'.', value).is_none() {
            continue;
        }
        if !(dotted(value) && value.iter().all(|&b| name_byte(b))) {
            return None;
        }
        add(&mut names, value)?;
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
    fn reads_names_from_bound_values() {
        let values: [&[u8]; 3] = [b"App.Tenant_ID", b"A", b"3"];
        assert_eq!(
            bound_setting_names(values),
            Some(vec!["app.tenant_id".into()])
        );
        let padded: [&[u8]; 1] = [b"a.b   "];
        assert_eq!(bound_setting_names(padded), None);
    }
}
