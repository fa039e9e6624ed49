//! What a configuration error or warning may say: where something is
//! wrong, never the value written there, and which files holding secrets
//! others can read.
//!
//! The rule is "never quote a value", not "never quote a secret's value":
//! a misspelled key (`pasword = "..."`) is by definition not one pgmux
//! knows to be secret, `${VAR}` references are expanded inside values, and
//! toml's messages do not say which key a value belongs to. Errors go to
//! `pgmux check`'s output, the admin console's RELOAD reply and the log,
//! all of which are read by more people than the config file is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What stands in for a value left out of a message.
const HIDDEN: &str = "…";

/// Where a TOML error is in the text, and toml's message with its values
/// left out. toml's own `Display` quotes the offending source line, which
/// is how a typo next to a password would print the password.
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> super::ConfigError {
    let start = e.span().map_or(0, |s| s.start);
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    super::ConfigError::Parse {
        line,
        column,
        message: without_values(e.message()),
    }
}

/// `message` with every double-quoted run (a string value as serde and
/// pgmux quote one: `invalid type: string "..."`) and every number or
/// character serde quotes in backticks (`integer `5``), and every enum
/// value (`unknown variant `x``), replaced by `…`.
/// Key names, which serde also puts in backticks, stay.
pub fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' => '"',
            '`' if ["integer ", "floating point ", "character ", "variant "]
                .iter()
                .any(|w| out.ends_with(w)) =>
            {
                '`'
            }
            c => {
                out.push(c);
                continue;
            }
        };
        out.push(c);
        out.push_str(HIDDEN);
        out.push(close);
        // Up to the closing quote (a backslash escapes one, as Rust's
        // Debug writes strings); an unclosed one hides the rest.
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c == close => break,
                _ => {}
            }
        }
    }
    out
}

/// A warning when `path`, a file that may hold secrets (`what`), can be
/// read or written by its group or others, as PostgreSQL checks its key
/// file. A file that can't be read is reported elsewhere, if it matters.
pub fn loose_mode(path: &Path, what: &str) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is readable or writable by group or others (mode {mode:04o}); it may hold secrets: chmod 600 it",
            path.display()
        )
    })
}

/// How an error names a `${...}` reference that is not set: by its name
/// when it reads as an environment variable's, else as `${…}` (`${` may
/// be part of a password: `Tr0ub${4dor}3`).
pub fn env_reference(name: &str) -> String {
    let plausible = name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plausible {
        format!("environment variable {name}")
    } else {
        format!("environment variable ${{{HIDDEN}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse_error(text: &str) -> String {
        match Config::parse(text) {
            Err(e @ ConfigError::Parse { .. }) => e.located(Path::new("pgmux.toml")),
            other => panic!("not a parse error: {other:?}"),
        }
    }

    #[test]
    fn a_misspelled_secret_key_shows_where_not_what() {
        let err = parse_error("[pgmux]\n\n[users.x]\npasword = \"hunter2-secret\"\n");
        assert!(err.starts_with("pgmux.toml:4:1: "), "{err}");
        assert!(err.contains("pasword"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_quoted() {
        for (text, line) in [
            ("[users.x]\npassword = 5\n", 2),
            ("[users.x]\npassword = 123456789\n", 2),
            ("[users.x]\n\npassword = [\"hunter2\"]\n", 3),
            (
                "[pgmux]\nlisten = \"127.0.0.1:1\"\nquery_timeout = \"hunter2\"\n",
                3,
            ),
            ("[users.x]\npassword = \"a${hunter2\"\n", 2),
            ("[users.x]\npassword = \"hunter2\n", 2),
            ("[users.x]\npassword hunter2\n", 2),
            ("[databases.d]\nserver_password = { hunter2 = 1 }\n", 2),
        ] {
            let err = parse_error(text);
            assert!(
                err.starts_with(&format!("pgmux.toml:{line}:")),
                "{text:?}: {err}"
            );
            assert!(!err.contains("hunter2"), "{text:?}: {err}");
            assert!(!err.contains("123456789"), "{text:?}: {err}");
        }
    }

    #[test]
    fn values_are_left_out_and_keys_kept() {
        assert_eq!(
            without_values("invalid type: string \"a\\\"b\", expected u64"),
            "invalid type: string \"…\", expected u64"
        );
        assert_eq!(
            without_values("invalid type: integer `5`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            without_values("unknown field `pasword`, expected `password`"),
            "unknown field `pasword`, expected `password`"
        );
        assert_eq!(without_values("unterminated \"secr"), "unterminated \"…\"");
    }

    #[test]
    fn loose_modes_are_named() {
        let dir = std::env::temp_dir().join(format!("pgmux-report-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let f = dir.join("userlist.txt");
        std::fs::write(&f, "\"a\" \"b\"\n").expect("write");
        for (mode, loose) in [
            (0o644, true),
            (0o640, true),
            (0o602, true),
            (0o600, false),
            (0o400, false),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(loose_mode(&f, "auth_file").is_some(), loose, "{mode:o}");
        }
        assert_eq!(loose_mode(&dir.join("absent"), "auth_file"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn enum_values_and_odd_references_are_hidden() {
        let err = parse_error("[pgmux]\npool_mode = \"hunter2\"\n");
        assert!(!err.contains("hunter2"), "{err}");
        let text = "[users.a]\npassword = \"Tr0ub${4dor}3\"\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(!err.contains("4dor"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(
            env_reference("PGMUX_SECRET"),
            "environment variable PGMUX_SECRET"
        );
    }
}
