//! A small reader of SQL text, enough to tell which statements change a
//! session's state: it splits a simple Query into statements the way
//! PostgreSQL's lexer does (quotes, escape strings, dollar quotes, nested
//! comments) and looks at each statement's first words. It never allocates,
//! and ordinary queries take a fast path that reads only their first word.
//!
//! Everything here errs on the side of "yes, this may change state": a
//! false alarm costs one round trip to the server, a miss could leak one
//! client's state to another.

/// How many leading words of a statement are kept.
const HEAD_WORDS: usize = 4;

/// A lexical token, as far as pgmux needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted keyword or identifier.
    Word(&'a [u8]),
    /// A double-quoted identifier's content (doubled quotes left as they are).
    QuotedIdent(&'a [u8]),
    /// A string constant of any kind, or a dollar-quoted body.
    Literal,
    /// `;` at the top level: the end of a statement.
    Semicolon,
    /// Any other byte: operators, punctuation, numbers, parameters.
    Other(u8),
}

/// Splits SQL text into [`Token`]s, skipping white space and comments.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    /// Backslash escapes in every string, as with
    /// `standard_conforming_strings = off`.
    backslash_quotes: bool,
}

fn word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn word_rest(b: u8) -> bool {
    word_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql` with PostgreSQL's default quoting rules
    /// (`standard_conforming_strings = on`).
    pub fn new(sql: &'a [u8]) -> Self {
        Self {
            s: sql,
            i: 0,
            backslash_quotes: false,
        }
    }

    /// The same text read as with `standard_conforming_strings = off`.
    pub fn with_backslash_quotes(sql: &'a [u8]) -> Self {
        Self {
            backslash_quotes: true,
            ..Self::new(sql)
        }
    }

    fn peek(&self, at: usize) -> Option<u8> {
        self.s.get(self.i + at).copied()
    }

    /// Skips white space and comments; false at the end of the text.
    fn skip_blank(&mut self) -> bool {
        loop {
            match (self.peek(0), self.peek(1)) {
                (None, _) => return false,
                (Some(b), _) if b.is_ascii_whitespace() => self.i += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.peek(0).is_some_and(|b| b != b'\n') {
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => self.skip_block_comment(),
                _ => return true,
            }
        }
    }

    /// Block comments nest in PostgreSQL.
    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(b) = self.peek(0) {
            match (b, self.peek(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.i += 2;
                }
                (b'*', Some(b'/')) => {
                    self.i += 2;
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.i += 1,
            }
        }
    }

    /// Skips a quoted run that started just before `self.i`, ending at
    /// `quote`; a doubled quote is an escaped one, and so is a backslash'd
    /// one where `backslash` holds.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        while let Some(b) = self.peek(0) {
            self.i += 1;
            if backslash && b == b'\\' {
                self.i += 1;
            } else if b == quote {
                if self.peek(0) == Some(quote) {
                    self.i += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// At a `$`: a dollar-quoted body (`$tag$ ... $tag$`) if one starts here.
    fn try_dollar_quote(&mut self) -> bool {
        let rest = &self.s[self.i + 1..];
        let tag_len = match rest.first() {
            Some(b'$') => 0,
            Some(&b) if word_start(b) => {
                match rest.iter().position(|&b| !word_rest(b) || b == b'$') {
                    Some(n) if rest[n] == b'$' => n,
                    _ => return false,
                }
            }
            _ => return false,
        };
        let delim = &self.s[self.i..self.i + tag_len + 2];
        let body = self.i + delim.len();
        self.i = match memchr::memmem::find(&self.s[body..], delim) {
            Some(n) => body + n + delim.len(),
            None => self.s.len(),
        };
        true
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if !self.skip_blank() {
            return None;
        }
        let start = self.i;
        let b = self.s[start];
        self.i += 1;
        match b {
            b';' => Some(Token::Semicolon),
            b'\'' => {
                self.skip_quoted(b'\'', self.backslash_quotes);
                Some(Token::Literal)
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                let end = self.i.saturating_sub(1).max(start + 1);
                Some(Token::QuotedIdent(&self.s[start + 1..end]))
            }
            b'$' => {
                self.i = start;
                if self.try_dollar_quote() {
                    return Some(Token::Literal);
                }
                self.i = start + 1;
                Some(Token::Other(b'$'))
            }
            b if word_start(b) => {
                while self.peek(0).is_some_and(word_rest) {
                    self.i += 1;
                }
                let word = &self.s[start..self.i];
                if self.peek(0) == Some(b'\'') && word.len() == 1 {
                    // E'...' allows backslash escapes; B'', X'', N'' don't.
                    let escapes = word.eq_ignore_ascii_case(b"e") || self.backslash_quotes;
                    self.i += 1;
                    self.skip_quoted(b'\'', escapes);
                    return Some(Token::Literal);
                }
                Some(Token::Word(word))
            }
            b => Some(Token::Other(b)),
        }
    }
}

/// The first words of one statement (unquoted words and quoted
/// identifiers, until anything else appears).
#[derive(Debug, Default, Clone, Copy)]
pub struct Head<'a> {
    words: [&'a [u8]; HEAD_WORDS],
    len: usize,
    /// Something other than a word came after the words kept.
    closed: bool,
}

impl<'a> Head<'a> {
    /// Word `i` (empty past the end).
    pub fn word(&self, i: usize) -> &'a [u8] {
        if i < self.len {
            self.words[i]
        } else {
            b""
        }
    }

    /// Whether word `i` is `kw`, ignoring case.
    pub fn is(&self, i: usize, kw: &str) -> bool {
        self.word(i).eq_ignore_ascii_case(kw.as_bytes())
    }

    fn push(&mut self, w: &'a [u8]) {
        if !self.closed && self.len < HEAD_WORDS {
            self.words[self.len] = w;
            self.len += 1;
        }
    }
}

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

    #[test]
    fn lexer_tokens() {
        let toks: Vec<Token<'_>> = Lexer::new(b"SET x = 'a''b'; \"Q\"\"x\"").collect();
        assert_eq!(
            toks,
            vec![
                Token::Word(b"SET"),
                Token::Word(b"x"),
                Token::Other(b'='),
                Token::Literal,
                Token::Semicolon,
                Token::QuotedIdent(b"Q\"\"x"),
            ]
        );
    }
}
