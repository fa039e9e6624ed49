//! A small reader of SQL text, enough to tell which statements change a
//! session's state: it splits a simple Query into statements the way
//! PostgreSQL's lexer does (quotes, escape strings, dollar quotes, nested
//! comments) and looks at each statement's first words. [`effects`] never
//! allocates, and ordinary queries take a fast path that reads only their
//! first word; the custom setting names of a text that may set some
//! (`names.rs`) are read only then.
//!
//! Everything here errs on the side of "yes, this may change state": a
//! false alarm costs one round trip to the server, a miss could leak one
//! client's state to another.

mod calls;
mod lexer;
mod names;

pub(crate) use lexer::word_rest;
use lexer::word_start;
pub use lexer::{blank, Head, Lexer, Token};
pub use names::{bound_setting_names, setting_names};

/// What running a text may do to session state that pgmux follows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// It may change the role or session authorization.
    pub identity: bool,
    /// It may change session-level settings (`SET`, `RESET`, `set_config`).
    pub settings: bool,
    /// It creates state PostgreSQL keeps per session that pgmux cannot
    /// replay elsewhere: temporary tables, session advisory locks, `LISTEN`,
    /// `WITH HOLD` cursors, SQL-level `PREPARE`.
    pub pins: bool,
    /// It may create such state without saying so (any `CREATE`, since a
    /// temporary object need not say TEMP; `SELECT ... INTO`): the server
    /// is asked, but it is not refused under `session_state = "error"`.
    pub may_pin: bool,
    /// It runs code pgmux cannot see (`DO`, `CALL`, SQL `EXECUTE`, a
    /// fast-path call), which may do any of the above.
    pub opaque: bool,
    /// It may remove such state (`DISCARD`, `DROP`, `UNLISTEN`, `CLOSE`,
    /// `DEALLOCATE`, advisory unlocks).
    pub unpins: bool,
    /// It may reset settings to their reset values (`RESET`, `RESET ALL`,
    /// `DISCARD ALL`), which for a client's startup parameters are its
    /// startup values.
    pub resets: bool,
    /// It may set a custom setting whose name pgmux cannot read from the
    /// text (code it cannot see, `set_config` with a computed or escaped
    /// name, a dotted name with quoted parts). PostgreSQL hides such
    /// placeholder settings from `pg_settings`, so they cannot be read
    /// back: the server's settings are reset before anyone else gets it.
    pub unnamed_settings: bool,
    /// It calls `set_config` with a parameter (`$n`) as the name: the names
    /// arrive in Bind ([`bound_setting_names`]).
    pub param_settings: bool,
}

impl Effects {
    /// Everything: for text that can run arbitrary code.
    pub const ALL: Self = Self {
        identity: true,
        settings: true,
        pins: false,
        may_pin: false,
        opaque: true,
        unpins: true,
        resets: true,
        unnamed_settings: true,
        param_settings: false,
    };

    /// What code pgmux cannot see may do (a function of the application's
    /// own, `DO`, `CALL`, SQL `EXECUTE`, `EXPLAIN`): everything but
    /// `resets`, which gives a client's startup values back after a
    /// `RESET` its text shows.
    pub const CODE: Self = Self {
        resets: false,
        ..Self::ALL
    };

    /// Nothing pgmux follows.
    pub const NONE: Self = Self {
        identity: false,
        settings: false,
        pins: false,
        may_pin: false,
        opaque: false,
        unpins: false,
        resets: false,
        unnamed_settings: false,
        param_settings: false,
    };

    const IDENTITY: Self = Self {
        identity: true,
        ..Self::NONE
    };
    const SETTINGS: Self = Self {
        settings: true,
        ..Self::NONE
    };
    const PINS: Self = Self {
        pins: true,
        ..Self::NONE
    };
    const MAY_PIN: Self = Self {
        may_pin: true,
        ..Self::NONE
    };
    const UNPINS: Self = Self {
        unpins: true,
        ..Self::NONE
    };

    /// Whether anything may change.
    pub fn any(self) -> bool {
        self.identity
            || self.settings
            || self.pins
            || self.may_pin
            || self.opaque
            || self.unpins
            || self.resets
            || self.unnamed_settings
            || self.param_settings
    }
}

impl std::ops::BitOrAssign for Effects {
    fn bitor_assign(&mut self, other: Self) {
        self.identity |= other.identity;
        self.settings |= other.settings;
        self.pins |= other.pins;
        self.may_pin |= other.may_pin;
        self.opaque |= other.opaque;
        self.unpins |= other.unpins;
        self.resets |= other.resets;
        self.unnamed_settings |= other.unnamed_settings;
        self.param_settings |= other.param_settings;
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
/// The words that can start a statement with an effect pgmux follows.
const STARTERS: [&str; 16] = [
    "set",
    "reset",
    "discard",
    "do",
    "call",
    "execute",
    "create",
    "listen",
    "unlisten",
    "declare",
    "prepare",
    "drop",
    "close",
    "deallocate",
    "import",
    "explain",
];

/// `w` as one of [`STARTERS`], if it is one (any case).
fn starter(w: &[u8]) -> Option<&'static str> {
    STARTERS
        .iter()
        .find(|s| w.eq_ignore_ascii_case(s.as_bytes()))
        .copied()
}

/// What `set_config` may change: its target may be `role`.
const SET_CONFIG: Effects = Effects {
    identity: true,
    settings: true,
    ..Effects::NONE
};

fn head_effects(h: &Head<'_>) -> Effects {
    let identity_name = |i: usize| h.is(i, "role") || h.is(i, "session_authorization");
    let session_auth = |i: usize| h.is(i, "session") && h.is(i + 1, "authorization");
    let word = |i: usize| -> &str { starter(h.word(i)).unwrap_or("") };
    let temp = |i: usize| h.is(i, "temp") || h.is(i, "temporary");
    match word(0) {
        "set" if h.is(1, "local") || h.is(1, "transaction") || h.is(1, "constraints") => {
            Effects::NONE
        }
        "set" => {
            let at = if h.is(1, "session") && !h.is(2, "authorization") {
                2
            } else {
                1
            };
            if identity_name(at) || session_auth(at) {
                Effects::IDENTITY
            } else {
                Effects::SETTINGS
            }
        }
        "reset" if identity_name(1) || session_auth(1) => Effects::IDENTITY,
        "reset" => Effects {
            resets: true,
            ..Effects::SETTINGS
        },
        "discard" if h.is(1, "all") => Effects::ALL,
        "discard" => Effects::UNPINS,
        // EXPLAIN ANALYZE runs its statement, whatever it is. (Code that
        // runs a RESET of a startup parameter gets the server's default
        // back, not the client's startup value: giving those back only
        // after a RESET the text shows keeps a value that merely equals
        // the server's default from being taken for a reset.)
        "do" | "call" | "execute" | "explain" => Effects::CODE,
        // CREATE [GLOBAL | LOCAL] TEMP[ORARY] ...
        "create" if temp(1) || ((h.is(1, "local") || h.is(1, "global")) && temp(2)) => {
            Effects::PINS
        }
        // Any other CREATE may make a temporary object without the word:
        // `CREATE TABLE pg_temp.t`, a view over a temporary table, `pg_temp`
        // first in search_path, a temporary function. The server is asked;
        // DDL is rare on the hot path. IMPORT FOREIGN SCHEMA may import
        // INTO pg_temp.
        "create" | "import" => Effects::MAY_PIN,
        "listen" => Effects::PINS,
        // Whether a cursor is WITH HOLD is read further on (`hold` below).
        "declare" => Effects::NONE,
        "prepare" if !h.is(1, "transaction") => Effects::PINS,
        // DEALLOCATE may also drop a statement pgmux shares between
        // clients (a name it cannot read, `U&"..."`): the server is asked
        // whether its statements are still pgmux's, pinned client or not.
        "deallocate" => Effects {
            may_pin: true,
            ..Effects::UNPINS
        },
        "unlisten" | "drop" | "close" => Effects::UNPINS,
        _ => Effects::NONE,
    }
}

/// What the functions a text mentions anywhere may do: `set_config`
/// (identity and settings, its target may be `role`; `pg_settings`, whose
/// UPDATE rule calls it, for settings), and the session
/// advisory lock functions (`pg_advisory_lock`, `pg_try_advisory_lock`,
/// their `_shared` forms; an unlock may remove the pin). The
/// transaction-level `pg_advisory_xact_lock` ends with its transaction.
fn function_effects(sql: &[u8]) -> Effects {
    let at = |i: usize, word: &[u8]| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let mut found = Effects::NONE;
    for i in memchr::memchr_iter(b'_', sql) {
        if i >= 3 && at(i - 3, b"set") && at(i + 1, b"config") {
            found |= SET_CONFIG;
        } else if i >= 2 && at(i - 2, b"pg") && at(i + 1, b"settings") {
            // UPDATE pg_settings SET setting = ... calls set_config.
            found |= Effects::SETTINGS;
        } else if at(i + 1, b"advisory_lock") || at(i + 1, b"advisory_unlock") {
            found |= if at(i + 10, b"un") {
                Effects::UNPINS
            } else {
                Effects::PINS
            };
        }
    }
    found
}

/// Reading the first argument of a `set_config` call: a plain string
/// names the setting (read by [`setting_names`]), a parameter brings the
/// name in Bind, anything else (an escape string, an expression) hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameArg {
    /// Not inside a name argument.
    Done,
    /// After a plain string: it must end the argument.
    Literal,
    /// After `$` and perhaps digits: a parameter if the argument ends.
    Param,
}

impl NameArg {
    const UNNAMED: Effects = Effects {
        unnamed_settings: true,
        ..Effects::NONE
    };

    /// The argument's first token.
    fn start(tok: Token<'_>, found: &mut Effects) -> Self {
        match tok {
            // '...' with no backslash reads the same whatever
            // standard_conforming_strings says.
            Token::Literal(raw) if raw.first() == Some(&b'\'') && !raw.contains(&b'\\') => {
                Self::Literal
            }
            Token::Other(b'$') => Self::Param,
            _ => {
                *found |= Self::UNNAMED;
                Self::Done
            }
        }
    }

    /// The tokens after it.
    fn next(self, tok: Token<'_>, found: &mut Effects) -> Self {
        let ends = matches!(tok, Token::Other(b',' | b')'));
        match self {
            Self::Done => Self::Done,
            Self::Param if matches!(tok, Token::Other(b'0'..=b'9')) => Self::Param,
            Self::Param if ends => {
                found.param_settings = true;
                Self::Done
            }
            Self::Literal if ends => Self::Done,
            _ => {
                *found |= Self::UNNAMED;
                Self::Done
            }
        }
    }
}

/// The first word of `sql` if nothing but white space precedes it, or
/// `None` when the text starts with a comment or punctuation.
pub(crate) fn leading_word(sql: &[u8]) -> Option<&[u8]> {
    let start = sql.iter().position(|&b| !blank(b))?;
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

/// Whether an INTO right after `word` names an existing table (`INSERT
/// INTO`, `MERGE INTO`), not one that `SELECT ... INTO` creates (temporary
/// with `INTO TEMP` or `pg_temp` first in the search path).
fn writes_into(word: &[u8]) -> bool {
    word.eq_ignore_ascii_case(b"insert") || word.eq_ignore_ascii_case(b"merge")
}

/// Whether a statement starting with `word` may be a `SELECT ... INTO`.
fn may_select_into(word: &[u8]) -> bool {
    word.eq_ignore_ascii_case(b"select") || word.eq_ignore_ascii_case(b"with")
}

/// Whether `word` (lowercase) stands in `sql` as a whole word, in any case
/// (also inside quotes and comments: a false alarm costs a check).
fn has_word(sql: &[u8], word: &[u8]) -> bool {
    let Some(&first) = word.first() else {
        return false;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), sql).any(|i| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
            && (i == 0 || !word_rest(sql[i - 1]))
            && sql.get(i + word.len()).is_none_or(|&b| !word_rest(b))
    })
}

/// Whether `sql` is one statement, at most followed by `;` and white space.
fn single_statement(sql: &[u8]) -> bool {
    match memchr::memchr(b';', sql) {
        None => true,
        Some(i) => sql[i + 1..].iter().all(|&b| blank(b) || b == b';'),
    }
}

/// What running `sql` may change (see [`head_effects`]); a text that calls
/// `set_config` anywhere may change both, since its target may be `role`.
pub fn effects(sql: &[u8]) -> Effects {
    // A function call anywhere, then the statements themselves: a text
    // may call set_config and create a temporary table.
    let mut found = function_effects(sql);
    // Fast path: one statement starting with an ordinary word, read from
    // its first word alone, unless it calls set_config (whose name
    // argument is read below) or may be a SELECT ... INTO; only the
    // functions it calls are looked for (a statement with no parenthesis
    // calls none).
    let first = memchr::memchr2(b'&', b'(', sql);
    let no_ampersand = match first {
        None => true,
        Some(i) => sql[i] == b'(' && memchr::memchr(b'&', &sql[i..]).is_none(),
    };
    if !found.settings && no_ampersand && single_statement(sql) {
        if let Some(w) = leading_word(sql) {
            if starter(w).is_none() && !(may_select_into(w) && has_word(sql, b"into")) {
                if first.is_some_and(|at| calls::unknown_call(sql, at)) {
                    found |= Effects::CODE;
                }
                return found;
            }
        }
    }
    // With a backslash in the text, read it both ways: a client may have
    // turned standard_conforming_strings off, and then backslashes escape
    // quotes in every string.
    found |= lexed_effects(Lexer::new(sql));
    if memchr::memchr(b'\\', sql).is_some() {
        found |= lexed_effects(Lexer::with_backslash_quotes(sql));
    }
    // A setting pgmux cannot name is a setting: read back (and reset).
    found.settings |= found.unnamed_settings || found.param_settings;
    // Code pgmux cannot read that says RESET may reset a startup parameter.
    found.resets |= found.opaque && has_word(sql, b"reset");
    found
}

/// Whether a `.` among `prev` and `tok` joins two bare words with nothing
/// between them (`app.tenant_id`), as [`setting_names`] reads them; true
/// where no dot is involved.
fn plain_dot(prev: [Token<'_>; 2], tok: Token<'_>) -> bool {
    match (prev, tok) {
        ([Token::Word(a), Token::Other(b'.')], Token::Word(b)) => {
            (b.as_ptr() as usize).checked_sub(a.as_ptr() as usize) == Some(a.len() + 1)
        }
        ([Token::QuotedIdent(_), Token::Other(b'.')], _)
        | ([_, Token::Other(b'.')], Token::QuotedIdent(_)) => false,
        _ => true,
    }
}

fn lexed_effects(lexer: Lexer<'_>) -> Effects {
    let mut found = Effects::NONE;
    let mut head = Head::default();
    let mut after_ampersand = false;
    // The tokens before this one: a set_config call's name argument is
    // read from `set_config` `(` and what follows.
    let mut prev = [Token::Semicolon; 2];
    let mut arg = NameArg::Done;
    let mut calls = calls::Calls::default();
    for tok in lexer {
        arg = arg.next(tok, &mut found);
        // A function of the application's own may do anything a DO block
        // may.
        if calls.next(Some(prev[1]), tok) {
            found |= Effects::CODE;
        }
        if let [Token::Word(f) | Token::QuotedIdent(f), Token::Other(b'(')] = prev {
            if f.eq_ignore_ascii_case(b"set_config") {
                arg = NameArg::start(tok, &mut found);
            }
        }
        // A dotted name the name scan does not read as one: a quoted part
        // (`SET app."x"`), or blanks or a comment around the dot.
        if !plain_dot(prev, tok) && (head.is(0, "set") || head.is(0, "reset")) {
            found.unnamed_settings = true;
        }
        let before = prev[1];
        prev = [prev[1], tok];
        match tok {
            Token::Semicolon => {
                found |= head_effects(&head);
                head = Head::default();
            }
            // SELECT ... INTO makes a table (temporary with INTO TEMP, or
            // with pg_temp first in the search path).
            Token::Word(w)
                if w.eq_ignore_ascii_case(b"into")
                    && !matches!(before, Token::Word(b) if writes_into(b)) =>
            {
                found |= Effects::MAY_PIN;
            }
            // DECLARE ... WITH HOLD: the cursor outlives its transaction.
            Token::Word(w) if w.eq_ignore_ascii_case(b"hold") && head.is(0, "declare") => {
                found |= Effects::PINS;
            }
            Token::Word(w) => head.push(w),
            // U&"..." may spell any name with escapes: assume the worst.
            Token::QuotedIdent(_) if after_ampersand => return Effects::ALL,
            Token::QuotedIdent(w) => {
                if w.eq_ignore_ascii_case(b"set_config") {
                    found |= SET_CONFIG;
                }
                head.push(w);
            }
            Token::Literal(_) | Token::Other(_) => head.closed = true,
        }
        after_ampersand = tok == Token::Other(b'&');
    }
    found |= head_effects(&head);
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_starter_is_found_in_any_case() {
        for s in STARTERS {
            assert_eq!(starter(s.as_bytes()), Some(s));
            assert_eq!(starter(s.to_ascii_uppercase().as_bytes()), Some(s));
        }
        assert_eq!(starter(b"select"), None);
        assert_eq!(starter(b""), None);
    }

    use super::*;

    fn changes_identity(sql: &[u8]) -> bool {
        effects(sql).identity
    }

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
        // PostgreSQL ends a line comment at a carriage return too, and
        // (from 17) reads a vertical tab as white space.
        yes("SELECT 1; --\rSET ROLE x");
        yes("\x0bSET ROLE admin");
        yes("SET\x0bROLE admin");
        yes("SELECT 1 --\r, set_tenant('A')");
        yes("SELECT set_tenant\x0b('A')");
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
    fn pinning_statements() {
        let pins = |sql: &str| effects(sql.as_bytes()).pins;
        let unpins = |sql: &str| effects(sql.as_bytes()).unpins;
        assert!(pins("CREATE TEMP TABLE t (a int)"));
        assert!(!pins("DO $$ BEGIN END $$") && effects(b"CALL p()").opaque);
        assert!(pins("SELECT set_config('a', 'b', false); LISTEN x"));
        assert!(effects(b"SELECT set_config('a', 'b', false); RESET ALL").resets);
        assert!(pins("create temporary table t as select 1"));
        assert!(pins("CREATE LOCAL TEMPORARY TABLE t (a int)"));
        assert!(pins("CREATE GLOBAL TEMP SEQUENCE s"));
        assert!(pins("SELECT pg_advisory_lock(42)"));
        assert!(pins("select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)"));
        assert!(pins("LISTEN jobs"));
        assert!(pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
        assert!(pins("PREPARE q AS SELECT 1"));
        assert!(!pins("PREPARE TRANSACTION 'x'"));
        assert!(!pins("DECLARE c CURSOR FOR SELECT 1"));
        // Temporary objects made without the word TEMP: any CREATE, and
        // SELECT ... INTO, are checked with the server.
        let may_pin = |sql: &str| effects(sql.as_bytes()).may_pin;
        assert!(may_pin("CREATE TABLE pg_temp.t (a int)"));
        assert!(may_pin("CREATE TABLE t (a int)") && !pins("CREATE TABLE t (a int)"));
        assert!(may_pin("create or replace view v as select * from tt"));
        assert!(may_pin("SELECT 1 AS a INTO TEMP t"));
        assert!(may_pin("select 1 as a into t"));
        assert!(may_pin(
            "WITH q AS (SELECT 1) SELECT * INTO pg_temp.t FROM q"
        ));
        assert!(may_pin(
            "IMPORT FOREIGN SCHEMA s FROM SERVER f INTO pg_temp"
        ));
        assert!(!may_pin("INSERT INTO t VALUES (1)"));
        assert!(!may_pin(
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE"
        ));
        assert!(!may_pin("SELECT into_x FROM t"));
        assert!(!may_pin(
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"
        ));
        assert!(effects(b"EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1").opaque);
        assert!(!pins("SELECT pg_advisory_xact_lock(42)"));
        assert!(!pins("SELECT 1"));
        assert!(unpins("SELECT pg_advisory_unlock(42)"));
        assert!(unpins("select pg_advisory_unlock_all()"));
        assert!(unpins("DROP TABLE t"));
        assert!(unpins("DISCARD TEMP"));
        assert!(unpins("UNLISTEN *"));
        assert!(unpins("CLOSE ALL"));
        assert!(unpins("DEALLOCATE q"));
        assert!(!unpins("SELECT 1"));
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
        assert!(settings(
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'"
        ));
        assert!(!settings("SET LOCAL search_path TO a"));
        assert!(!settings("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert!(!settings("SET CONSTRAINTS ALL DEFERRED"));
        assert!(!settings("SET ROLE x"));
        assert!(!settings("SELECT 1"));
        assert!(!settings("UPDATE t SET a = 1"));
        assert_eq!(effects(b"select 1"), Effects::NONE);
    }

    #[test]
    fn custom_setting_names() {
        let unnamed = |sql: &str| effects(sql.as_bytes()).unnamed_settings;
        let param = |sql: &str| effects(sql.as_bytes()).param_settings;
        // Names pgmux reads from the text (setting_names).
        assert!(!unnamed("SET app.tenant_id = 'A'"));
        assert!(!unnamed("SELECT set_config('app.tenant_id', 'A', false)"));
        assert!(!unnamed(
            "SELECT pg_catalog.set_config('app.tenant_id', $1, false)"
        ));
        assert!(!unnamed("SET \"app.tenant_id\" = 'A'"));
        // Names it cannot read: the server is reset after them.
        assert!(unnamed("SELECT set_config(E'app\\x2etenant', 'A', false)"));
        assert!(unnamed("SELECT set_config('app.' || 'x', 'A', false)"));
        assert!(unnamed("SELECT set_config(name, 'A', false) FROM t"));
        assert!(unnamed("SELECT set_config($$app.x$$, 'A', false)"));
        assert!(unnamed("SET app.\"X\" = 1"));
        assert!(unnamed("SET app . tenant_id = 'A'"));
        assert!(unnamed("SET app/**/.tenant_id = 'A'"));
        assert!(unnamed("SET \"local\".tenant_id = 'A'"));
        assert!(effects(b"SET \"local\".tenant_id = 'A'").settings);
        assert!(unnamed("EXPLAIN ANALYZE EXECUTE s('app.x')"));
        assert!(!unnamed("SET app.tenant_id TO 'x.y'"));
        assert!(unnamed(
            "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$"
        ));
        assert!(unnamed("CALL p()"));
        // Names that arrive in Bind.
        assert!(param("SELECT set_config($1, $2, false)"));
        assert!(!param("SELECT set_config('app.x', $2, false)"));
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
