//! A small reader of SQL text, enough to tell which statements change a
//! session's state: it splits a simple Query into statements the way
//! PostgreSQL's lexer does (quotes, escape strings, dollar quotes, nested
//! comments) and looks at each statement's first words. It never allocates,
//! and ordinary queries take a fast path that reads only their first word.
//!
//! Everything here errs on the side of "yes, this may change state": a
//! false alarm costs one round trip to the server, a miss could leak one
//! client's state to another.

mod lexer;

use lexer::{word_rest, word_start};
pub use lexer::{Head, Lexer, Token};

/// What running a text may do to session state that pgmux follows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// It may change the role or session authorization.
    pub identity: bool,
    /// It may change session-level settings (`SET`, `RESET`, `set_config`).
    pub settings: bool,
}

impl Effects {
    /// Everything: for text that can run arbitrary code.
    pub const ALL: Self = Self {
        identity: true,
        settings: true,
    };

    /// Nothing pgmux follows.
    pub const NONE: Self = Self {
        identity: false,
        settings: false,
    };

    /// Whether anything may change.
    pub fn any(self) -> bool {
        self.identity || self.settings
    }
}

impl std::ops::BitOrAssign for Effects {
    fn bitor_assign(&mut self, other: Self) {
        self.identity |= other.identity;
        self.settings |= other.settings;
    }
}

/// What one statement may change, read from its first words:
/// - identity: `SET [SESSION] ROLE`, `SET SESSION AUTHORIZATION`, their
///   `RESET`s, and the generic `SET role = ...` / `SET
///   session_authorization` spellings;
/// - settings: any other `SET` or `RESET` (`RESET ALL` too);
/// - both: `DISCARD ALL`, and the statements that can run arbitrary code
///   with the session's rights: `DO`, `CALL`, SQL-level `EXECUTE`.
///
/// `SET LOCAL`, `SET TRANSACTION` and `SET CONSTRAINTS` are left to
/// PostgreSQL: they end with the transaction, while the client still holds
/// the server.
fn head_effects(h: &Head<'_>) -> Effects {
    let identity_name = |i: usize| h.is(i, "role") || h.is(i, "session_authorization");
    let session_auth = |i: usize| h.is(i, "session") && h.is(i + 1, "authorization");
    let identity = Effects {
        identity: true,
        settings: false,
    };
    let settings = Effects {
        identity: false,
        settings: true,
    };
    if h.is(0, "set") {
        if h.is(1, "local") || h.is(1, "transaction") || h.is(1, "constraints") {
            return Effects::NONE;
        }
        let at = if h.is(1, "session") && !h.is(2, "authorization") {
            2
        } else {
            1
        };
        return if identity_name(at) || session_auth(at) {
            identity
        } else {
            settings
        };
    }
    if h.is(0, "reset") {
        return if identity_name(1) || session_auth(1) {
            identity
        } else {
            settings
        };
    }
    if (h.is(0, "discard") && h.is(1, "all"))
        || h.is(0, "do")
        || h.is(0, "call")
        || h.is(0, "execute")
    {
        return Effects::ALL;
    }
    Effects::NONE
}

/// Whether `sql` mentions the function `set_config` anywhere (any case).
fn mentions_set_config(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql).any(|i| {
        i >= 3
            && sql[i - 3..i].eq_ignore_ascii_case(b"set")
            && sql
                .get(i + 1..i + 7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
    })
}

/// The first word of `sql` if nothing but white space precedes it, or
/// `None` when the text starts with a comment or punctuation.
fn leading_word(sql: &[u8]) -> Option<&[u8]> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &sql[start..];
    if !word_start(*rest.first()?) {
        return None;
    }
    let end = rest
        .iter()
        .position(|&b| !word_rest(b))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Whether `sql` is one statement, at most followed by `;` and white space.
fn single_statement(sql: &[u8]) -> bool {
    match memchr::memchr(b';', sql) {
        None => true,
        Some(i) => sql[i + 1..]
            .iter()
            .all(|b| b.is_ascii_whitespace() || *b == b';'),
    }
}

/// What running `sql` may change (see [`head_effects`]); a text that calls
/// `set_config` anywhere may change both, since its target may be `role`.
pub fn effects(sql: &[u8]) -> Effects {
    if mentions_set_config(sql) {
        return Effects::ALL;
    }
    // Fast path: one statement starting with an ordinary word, read from
    // its first word alone.
    if single_statement(sql) && memchr::memchr(b'&', sql).is_none() {
        if let Some(w) = leading_word(sql) {
            const STARTERS: [&[u8]; 6] = [b"set", b"reset", b"discard", b"do", b"call", b"execute"];
            if !STARTERS.iter().any(|s| w.eq_ignore_ascii_case(s)) {
                return Effects::NONE;
            }
        }
    }
    // With a backslash in the text, read it both ways: a client may have
    // turned standard_conforming_strings off, and then backslashes escape
    // quotes in every string.
    let mut found = lexed_effects(Lexer::new(sql));
    if memchr::memchr(b'\\', sql).is_some() {
        found |= lexed_effects(Lexer::with_backslash_quotes(sql));
    }
    found
}

/// Whether running `sql` may change the session's role or session
/// authorization.
pub fn changes_identity(sql: &[u8]) -> bool {
    effects(sql).identity
}

fn lexed_effects(lexer: Lexer<'_>) -> Effects {
    let mut found = Effects::NONE;
    let mut head = Head::default();
    let mut after_ampersand = false;
    for tok in lexer {
        match tok {
            Token::Semicolon => {
                found |= head_effects(&head);
                head = Head::default();
            }
            Token::Word(w) => head.push(w),
            // U&"..." may spell any name with escapes: assume the worst.
            Token::QuotedIdent(_) if after_ampersand => return Effects::ALL,
            Token::QuotedIdent(w) => {
                if w.eq_ignore_ascii_case(b"set_config") {
                    return Effects::ALL;
                }
                head.push(w);
            }
            Token::Literal | Token::Other(_) => head.closed = true,
        }
        after_ampersand = tok == Token::Other(b'&');
    }
    found |= head_effects(&head);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes(sql: &str) {
        assert!(changes_identity(sql.as_bytes()), "{sql:?} should count");
    }

    fn no(sql: &str) {
        assert!(
            !changes_identity(sql.as_bytes()),
            "{sql:?} should not count"
        );
    }

    #[test]
    fn identity_statements() {
        yes("SET ROLE app_reader");
        yes("set session role 'x'");
        yes("SET SESSION AUTHORIZATION bob");
        yes("  reset role;");
        yes("RESET SESSION AUTHORIZATION");
        yes("set role = 'x'");
        yes("SET \"role\" TO x");
        yes("SET session_authorization = 'x'");
        yes("discard all");
        yes("SELECT pg_catalog.set_config('role', 'x', false)");
        yes("select SET_CONFIG($1, $2, false)");
        yes("select \"set_config\"('role', 'x', false)");
        yes("select 1; set role x");
        yes("/* hi */ SET ROLE x");
        yes("-- hi\nSET ROLE x");
        yes("BEGIN; SET ROLE x; COMMIT");
        yes("DO $$ BEGIN EXECUTE 'SET ROLE x'; END $$");
        yes("CALL p()");
        yes("EXECUTE stmt(1)");
        yes("select U&\"\\0073et_config\"('role', 'x', false)");
    }

    #[test]
    fn ordinary_statements() {
        no("SELECT 1");
        no("select role from users where user_id = $1");
        no("SET LOCAL ROLE x");
        no("SET search_path TO a, public");
        no("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
        no("RESET ALL");
        no("DISCARD PLANS");
        no("select 'SET ROLE x; --'");
        no("select $$;SET ROLE x$$");
        no("select $a$ $$ ; set role x $a$");
        no("select 1; -- ; set role x");
        no("select 1 /* ; /* nested */ set role x */");
        no("SELECT 1;");
        no("UPDATE t SET role = 'admin' WHERE id = 1");
        no("INSERT INTO roles VALUES (1); SELECT 2");
        no("select \"role\" from t");
    }

    #[test]
    fn settings_statements() {
        let settings = |sql: &str| effects(sql.as_bytes()).settings;
        assert!(settings("SET search_path TO a, public"));
        assert!(settings("set session statement_timeout = '50ms'"));
        assert!(settings("RESET ALL"));
        assert!(settings("reset DateStyle"));
        assert!(settings(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
        ));
        assert!(settings("select 1; set work_mem = '64MB'"));
        assert!(settings("SELECT set_config('search_path', 'a', false)"));
        assert!(settings("DISCARD ALL"));
        assert!(!settings("SET LOCAL search_path TO a"));
        assert!(!settings("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert!(!settings("SET CONSTRAINTS ALL DEFERRED"));
        assert!(!settings("SET ROLE x"));
        assert!(!settings("SELECT 1"));
        assert!(!settings("UPDATE t SET a = 1"));
        assert_eq!(effects(b"select 1"), Effects::NONE);
    }

    #[test]
    fn quoting_rules() {
        // Standard strings: the backslash is an ordinary character, so the
        // string ends before "; set role". Read with backslash escapes too.
        yes(r"select 'a\'; set role x; --'");
        yes(r"select E'a\'; set role x'; set role y");
        no(r"select E'a\'; set role x'");
        // A tag may not start with a digit: $1 is a parameter.
        yes("select $1; set role x");
        no("select a$b$c from t");
    }
}
