//! Splitting SQL text into tokens the way PostgreSQL's lexer does (quotes,
//! escape strings, dollar quotes, nested comments), and keeping each
//! statement's first words. No allocation.

/// How many leading words of a statement are kept.
const HEAD_WORDS: usize = 4;

/// A lexical token, as far as pgmux needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted keyword or identifier.
    Word(&'a [u8]),
    /// A double-quoted identifier's content (doubled quotes left as they are).
    QuotedIdent(&'a [u8]),
    /// A string constant of any kind, or a dollar-quoted body, as written
    /// (prefix and quotes included).
    Literal(&'a [u8]),
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

/// White space as PostgreSQL's lexer reads it: space, tab, newline,
/// carriage return, form feed, and (from PostgreSQL 17) vertical tab, which
/// older servers refuse anyway.
pub fn blank(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0B
}

pub(super) fn word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Whether `b` may continue an unquoted word (so two names written
/// side by side would read as one).
pub(crate) fn word_rest(b: u8) -> bool {
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
                (Some(b), _) if blank(b) => self.i += 1,
                // A line comment ends at a newline or a carriage return.
                (Some(b'-'), Some(b'-')) => {
                    while self.peek(0).is_some_and(|b| b != b'\n' && b != b'\r') {
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => self.skip_block_comment(),
                _ => return true,
            }
        }
    }

    /// The text from `start` to where the lexer is (a backslash at the very
    /// end of the text steps past it).
    fn since(&self, start: usize) -> &'a [u8] {
        self.s
            .get(start..self.i.min(self.s.len()))
            .unwrap_or_default()
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
    /// one where `backslash` holds. False when the text ends first (the
    /// server refuses such a text; pgmux must still read it without
    /// stepping past its end).
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> bool {
        while let Some(b) = self.peek(0) {
            self.i += 1;
            if backslash && b == b'\\' {
                self.i += 1;
            } else if b == quote {
                if self.peek(0) == Some(quote) {
                    self.i += 1;
                } else {
                    return true;
                }
            }
        }
        false
    }

    /// At a `$`: a dollar-quoted body (`$tag$ ... $tag$`) if one starts here.
    fn try_dollar_quote(&mut self) -> bool {
        let rest = self.s.get(self.i + 1..).unwrap_or_default();
        let tag_len = match rest.first() {
            Some(b'$') => 0,
            Some(&b) if word_start(b) => {
                match rest.iter().position(|&b| !word_rest(b) || b == b'$') {
                    Some(n) if rest.get(n) == Some(&b'$') => n,
                    _ => return false,
                }
            }
            _ => return false,
        };
        let Some(delim) = self.s.get(self.i..self.i + tag_len + 2) else {
            return false;
        };
        let body = self.i + delim.len();
        let after = self.s.get(body..).unwrap_or_default();
        // An unterminated body runs to the end of the text.
        self.i = match memchr::memmem::find(after, delim) {
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
        let b = self.peek(0)?;
        self.i += 1;
        match b {
            b';' => Some(Token::Semicolon),
            b'\'' => {
                let _closed = self.skip_quoted(b'\'', self.backslash_quotes);
                Some(Token::Literal(self.since(start)))
            }
            b'"' => {
                // The content runs to the closing quote, or to the end of
                // an unterminated text: either way it lies inside the text,
                // and a reader can tell the two apart by the byte after it.
                let closed = self.skip_quoted(b'"', false);
                let end = if closed { self.i - 1 } else { self.i };
                let content = self.s.get(start + 1..end).unwrap_or_default();
                Some(Token::QuotedIdent(content))
            }
            b'$' => {
                self.i = start;
                if self.try_dollar_quote() {
                    return Some(Token::Literal(self.since(start)));
                }
                self.i = start + 1;
                Some(Token::Other(b'$'))
            }
            b if word_start(b) => {
                while self.peek(0).is_some_and(word_rest) {
                    self.i += 1;
                }
                let word = self.since(start);
                if self.peek(0) == Some(b'\'') && word.len() == 1 {
                    // E'...' allows backslash escapes; B'', X'', N'' don't.
                    let escapes = word.eq_ignore_ascii_case(b"e") || self.backslash_quotes;
                    self.i += 1;
                    // An unterminated literal runs to the end either way.
                    let _closed = self.skip_quoted(b'\'', escapes);
                    return Some(Token::Literal(self.since(start)));
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
    pub(super) closed: bool,
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

    pub(super) fn push(&mut self, w: &'a [u8]) {
        if !self.closed && self.len < HEAD_WORDS {
            self.words[self.len] = w;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexer_tokens() {
        let toks: Vec<Token<'_>> = Lexer::new(b"SET x = 'a''b'; \"Q\"\"x\"").collect();
        assert_eq!(
            toks,
            vec![
                Token::Word(b"SET"),
                Token::Word(b"x"),
                Token::Other(b'='),
                Token::Literal(b"'a''b'"),
                Token::Semicolon,
                Token::QuotedIdent(b"Q\"\"x"),
            ]
        );
        // An unterminated quoted identifier keeps what it has, inside the
        // text.
        for (sql, content) in [
            (&b"\""[..], &b""[..]),
            (b"\"a", b"a"),
            (b"\"a\"\"", b"a\"\""),
            (b"\"\"", b""),
        ] {
            assert_eq!(
                Lexer::new(sql).last(),
                Some(Token::QuotedIdent(content)),
                "{sql:?}"
            );
        }
        // A backslash as the last byte of an escape string.
        for sql in [&b"SET x = E'\\"[..], b"SELECT 1; SELECT '\\"] {
            for lexer in [Lexer::new(sql), Lexer::with_backslash_quotes(sql)] {
                assert!(matches!(lexer.last(), Some(Token::Literal(_))), "{sql:?}");
            }
        }
    }
}
