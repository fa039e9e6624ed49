//! Reading what a simple query does to prepared statements (`PREPARE`,
//! `EXECUTE`, `DEALLOCATE`, `DISCARD`). Message bodies are read by
//! [`crate::protocol::frontend`]; the messages rewritten from them are
//! written in [`crate::protocol::encode`].

/// What a simple query does to prepared statements, as far as pgmux tracks.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlEffect {
    /// Nothing pgmux tracks.
    None,
    /// `DISCARD ALL` (`discard`) or `DEALLOCATE [PREPARE] ALL`: every
    /// statement goes.
    DropAll {
        /// It is `DISCARD ALL`, which no transaction block may run.
        discard: bool,
    },
    /// `DEALLOCATE [PREPARE] name`, with the name as the server reads it.
    Deallocate(Vec<u8>),
}

/// Whether a simple query may prepare, execute or drop prepared
/// statements ([`sql_prepared`], [`sql_effect`]; `EXPLAIN` and `CREATE
/// TABLE ... AS` may execute one): its first word says so,
/// or it starts with something other than a word (a comment), which only
/// the lexer can read. One look at the first word, for every ordinary query.
pub fn names_statements(query: &[u8]) -> bool {
    crate::sql::leading_word(query).is_none_or(|w| {
        [
            &b"prepare"[..],
            b"execute",
            b"deallocate",
            b"discard",
            b"explain",
            b"create",
        ]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
    })
}

/// Recognizes the statements that drop prepared statements. Only a query
/// that is exactly one such statement counts.
pub fn sql_effect(query: &[u8]) -> SqlEffect {
    // Fast path, no allocation: almost every query starts with something else.
    let drops = crate::sql::leading_word(query).is_some_and(|w| {
        w.eq_ignore_ascii_case(b"discard") || w.eq_ignore_ascii_case(b"deallocate")
    });
    if !drops {
        return SqlEffect::None;
    }
    let Ok(text) = std::str::from_utf8(query) else {
        return SqlEffect::None;
    };
    let text = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let words: Vec<&str> = text.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["discard", "all"] => SqlEffect::DropAll { discard: true },
        ["deallocate", "all"] | ["deallocate", "prepare", "all"] => {
            SqlEffect::DropAll { discard: false }
        }
        ["deallocate", _] | ["deallocate", "prepare", _] => match words.last() {
            Some(name) => deallocated(name),
            None => SqlEffect::None,
        },
        _ => SqlEffect::None,
    }
}

/// `DEALLOCATE name` of a name as written: bare (folded to lower case) or
/// quoted. An empty, unterminated or half-quoted name drops nothing: the
/// server refuses it, and it must not match a name the client mapped.
fn deallocated(name: &str) -> SqlEffect {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        // Inside, every quote is doubled (`"a""b"`), or the name ended
        // earlier than the text does.
        Some(quoted) if !quoted.is_empty() && !quoted.replace("\"\"", "").contains('"') => {
            SqlEffect::Deallocate(quoted.replace("\"\"", "\"").into_bytes())
        }
        Some(_) => SqlEffect::None,
        None if name.contains('"') => SqlEffect::None,
        None => SqlEffect::Deallocate(name.to_ascii_lowercase().into_bytes()),
    }
}

/// A single-statement simple Query that prepares or executes a named
/// statement with SQL.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlPrepared<'a> {
    /// `PREPARE name <rest>`: the name as the server reads it, and the
    /// text after it (`(int) AS SELECT $1`), trailing `;` dropped.
    Prepare {
        /// The statement name (folded to lower case unless quoted).
        name: Vec<u8>,
        /// What follows the name.
        rest: &'a [u8],
    },
    /// `EXECUTE name ...`, alone or inside `EXPLAIN` or `CREATE TABLE ...
    /// AS`: the name, and where it stands in the text (quotes included),
    /// so it can be replaced.
    Execute {
        /// The statement name (folded to lower case unless quoted).
        name: Vec<u8>,
        /// Byte range of the name in the query text.
        at: (usize, usize),
        /// Inside another statement (`EXPLAIN ANALYZE EXECUTE q`, `CREATE
        /// TEMP TABLE t AS EXECUTE q`), whose own effects count too.
        inner: bool,
    },
}

/// Whether `w` is `word`, in any case.
fn is(w: &[u8], word: &str) -> bool {
    w.eq_ignore_ascii_case(word.as_bytes())
}

/// Recognizes `PREPARE name ...` (not `PREPARE TRANSACTION`) and `EXECUTE
/// name ...` when they are the Query's only statement, and the `EXECUTE
/// name` of `EXPLAIN [(...)] [ANALYZE] [VERBOSE] EXECUTE name` and of
/// `CREATE ... TABLE ... AS EXECUTE name` (also under `EXPLAIN`).
pub fn sql_prepared(query: &[u8]) -> Option<SqlPrepared<'_>> {
    use crate::sql::{Lexer, Token};
    // Fast path, no lexing: a text whose first word is something else
    // (every ordinary query). A comment or quote first goes to the lexer.
    if crate::sql::leading_word(query).is_some_and(|w| {
        !["prepare", "execute", "explain", "create"]
            .iter()
            .any(|v| is(w, v))
    }) {
        return None;
    }
    let offset = |part: &[u8]| part.as_ptr() as usize - query.as_ptr() as usize;
    let mut tokens = Lexer::new(query);
    let first = match tokens.next()? {
        Token::Word(w) => w,
        _ => return None,
    };
    let verb = is(first, "prepare");
    let inner = is(first, "explain") || is(first, "create");
    if inner {
        // Up to the EXECUTE this statement runs: after EXPLAIN's options
        // (a list in parentheses, ANALYZE, VERBOSE) or after the AS of
        // CREATE TABLE AS, at the top level. A trigger's EXECUTE FUNCTION
        // is none of those.
        let mut depth = 0usize;
        let mut prev: Option<Token<'_>> = None;
        // Only EXPLAIN's options so far.
        let mut options_only = is(first, "explain");
        // CREATE ... TABLE: only a table is made AS EXECUTE.
        let mut table = false;
        loop {
            let t = tokens.next()?;
            let execute = matches!(t, Token::Word(w) if is(w, "execute"));
            if depth == 0 && execute {
                let after_as = table && matches!(prev, Some(Token::Word(w)) if is(w, "as"));
                if options_only || after_as {
                    break;
                }
            }
            match t {
                Token::Other(b'(') => depth += 1,
                Token::Other(b')') => depth = depth.checked_sub(1)?,
                Token::Semicolon => return None,
                Token::Word(w)
                    if depth == 0 && ["analyze", "analyse", "verbose"].iter().any(|v| is(w, v)) => {
                }
                Token::Word(w) if depth == 0 && is(w, "table") => {
                    table = true;
                    options_only = false;
                }
                _ if depth == 0 => options_only = false,
                _ => {}
            }
            prev = Some(t);
        }
    } else if !is(first, "execute") && !verb {
        return None;
    }
    let (name, at) = match tokens.next()? {
        // `U&"..."` is a name with Unicode escapes, not the word `u`.
        Token::Word(w)
            if is(w, "u")
                && query.get(offset(w) + w.len()..offset(w) + w.len() + 2) == Some(b"&\"") =>
        {
            return None
        }
        Token::Word(w)
            if !(verb && is(w, "transaction"))
                && !(inner && (is(w, "function") || is(w, "procedure"))) =>
        {
            (w.to_ascii_lowercase(), (offset(w), offset(w) + w.len()))
        }
        // PostgreSQL refuses an empty or unterminated quoted name: the
        // server says so, pgmux maps nothing. Only a closed one has a
        // closing quote right after its content.
        Token::QuotedIdent(w) if !w.is_empty() && query.get(offset(w) + w.len()) == Some(&b'"') => {
            let name = String::from_utf8_lossy(w)
                .replace("\"\"", "\"")
                .into_bytes();
            (name, (offset(w) - 1, offset(w) + w.len() + 1))
        }
        _ => return None,
    };
    // Inside another statement, the name ends it or is followed by its
    // parameters or WITH [NO] DATA (`SELECT 1 AS execute FROM t` names no
    // statement).
    let mut tokens = tokens.peekable();
    if inner
        && !matches!(
            tokens.peek(),
            None | Some(Token::Semicolon | Token::Other(b'('))
        )
        && !matches!(tokens.peek(), Some(Token::Word(w)) if is(w, "with"))
    {
        return None;
    }
    // One statement only: nothing after a top-level `;` but more `;`.
    let mut ended = false;
    for t in tokens {
        match t {
            Token::Semicolon => ended = true,
            _ if ended => return None,
            _ => {}
        }
    }
    if !verb {
        return Some(SqlPrepared::Execute { name, at, inner });
    }
    let rest = query.get(at.1..)?;
    let end = rest
        .iter()
        .rposition(|&b| !crate::sql::blank(b) && b != b';')
        .map_or(0, |i| i + 1);
    Some(SqlPrepared::Prepare {
        name,
        rest: &rest[..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_bind() {
        use crate::protocol::frontend::bind;
        let body = b"p\0s1\0\0\0\0\0\0\0";
        let b = bind(body).unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], &b"s1"[..]));
        let mut out = bytes::BytesMut::new();
        crate::protocol::encode::write_bind(&mut out, b.portal, b"pgmux_7", b.rest).unwrap();
        let f = crate::protocol::frame::split_frame(&mut out, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(bind(f.body()).unwrap().statement, b"pgmux_7");
    }

    #[test]
    fn recognizes_sql_prepare_and_execute() {
        assert_eq!(
            sql_prepared(b"PREPARE Mine (int) AS SELECT $1;"),
            Some(SqlPrepared::Prepare {
                name: b"mine".to_vec(),
                rest: b" (int) AS SELECT $1"
            })
        );
        assert_eq!(
            sql_prepared(b"execute \"Mine\"(5)"),
            Some(SqlPrepared::Execute {
                name: b"Mine".to_vec(),
                at: (8, 14),
                inner: false,
            })
        );
        let inner = |sql: &'static [u8]| match sql_prepared(sql) {
            Some(SqlPrepared::Execute { name, at, inner }) => {
                assert!(inner, "{sql:?}");
                Some((name, &sql[at.0..at.1]))
            }
            _ => None,
        };
        let q = Some((b"q".to_vec(), &b"q"[..]));
        assert_eq!(inner(b"EXPLAIN EXECUTE q"), q);
        assert_eq!(inner(b"explain (analyze, costs off) execute q(1, 'a')"), q);
        assert_eq!(inner(b"EXPLAIN ANALYZE VERBOSE EXECUTE q"), q);
        assert_eq!(
            inner(b"CREATE TEMP TABLE t (a) AS EXECUTE q WITH NO DATA"),
            q
        );
        assert_eq!(
            inner(b"EXPLAIN (ANALYZE) CREATE TABLE IF NOT EXISTS t AS EXECUTE q"),
            q
        );
        assert_eq!(
            inner(
                b"CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW WHEN (true) EXECUTE FUNCTION f()"
            ),
            None
        );
        assert_eq!(inner(b"EXPLAIN SELECT 1 FROM t WHERE (x) EXECUTE q"), None);
        assert_eq!(inner(b"CREATE TABLE t AS SELECT 1; EXECUTE q"), None);
        for not_one in [
            &b"EXPLAIN SELECT 1 AS execute FROM t"[..],
            b"CREATE TABLE t AS SELECT a AS execute FROM x",
            b"EXPLAIN SELECT * FROM a JOIN b AS execute ON true",
            b"CREATE DOMAIN d AS execute CHECK (true)",
        ] {
            assert_eq!(inner(not_one), None, "{not_one:?}");
        }
        assert!(matches!(
            sql_prepared(b"PREPARE function AS SELECT 1"),
            Some(SqlPrepared::Prepare { .. })
        ));
        assert_eq!(sql_prepared(b"PREPARE TRANSACTION 'x'"), None);
        assert_eq!(sql_prepared(b"PREPARE a AS SELECT 1; SELECT 2"), None);
        assert_eq!(sql_prepared(b"SELECT 1"), None);
        // Names the server refuses, or that end with the text.
        for refused in [
            &b"EXECUTE \""[..],
            b"EXECUTE \"a",
            b"EXECUTE \"\"",
            b"EXECUTE \"\" (",
            b"EXECUTE \"a\"\"",
            b"EXPLAIN EXECUTE \"",
            b"PREPARE \"x",
            b"PREPARE \"\" AS SELECT 1",
            b"PREPARE \"\" AS SELECT 1; EXECUTE \"",
            b"EXECUTE U&\"a\"",
            b"EXECUTE u&\"",
        ] {
            assert_eq!(sql_prepared(refused), None, "{refused:?}");
        }
        // An operator after a name is the server's to refuse; the name
        // is still the statement's.
        assert!(matches!(
            sql_prepared(b"EXECUTE pgmux_1&AS"),
            Some(SqlPrepared::Execute { .. })
        ));
    }

    #[test]
    fn recognizes_sql_effects() {
        assert_eq!(
            sql_effect(b"discard all;"),
            SqlEffect::DropAll { discard: true }
        );
        assert_eq!(
            sql_effect(b" DEALLOCATE  PREPARE ALL "),
            SqlEffect::DropAll { discard: false }
        );
        assert_eq!(
            sql_effect(b"DEALLOCATE S_1"),
            SqlEffect::Deallocate(b"s_1".to_vec())
        );
        assert_eq!(
            sql_effect(b"deallocate \"S_1\""),
            SqlEffect::Deallocate(b"S_1".to_vec())
        );
        assert_eq!(sql_effect(b"select 1; discard all"), SqlEffect::None);
        for refused in [
            &b"DEALLOCATE \""[..],
            b"DEALLOCATE \"\"",
            b"DEALLOCATE \"a",
            b"DEALLOCATE \"a\"\"",
            b"DEALLOCATE a\"",
            b"DEALLOCATE PREPARE \"x",
        ] {
            assert_eq!(sql_effect(refused), SqlEffect::None, "{refused:?}");
        }
        assert_eq!(
            sql_effect(b"DEALLOCATE \"a\"\"b\""),
            SqlEffect::Deallocate(b"a\"b".to_vec())
        );
    }
}
