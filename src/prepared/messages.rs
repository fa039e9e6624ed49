//! Reading and rewriting the statement names in Parse, Bind, Describe and
//! Close bodies, and reading a Bind's values. Every reader checks the
//! body's layout exactly and returns `None` for anything malformed, so
//! client bytes can't cause a panic.

use bytes::{BufMut, BytesMut};

use crate::protocol::frame::{cstr, read_i16, read_i32};

/// The parts of a Parse body.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseRef<'a> {
    /// Statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    /// Query text, without its NUL.
    pub query: &'a [u8],
    /// Parameter type count and OIDs, raw.
    pub types: &'a [u8],
}

/// Splits a Parse body: `name\0 query\0 int16 n, n × int32`.
pub fn parse(body: &[u8]) -> Option<ParseRef<'_>> {
    let (name, rest) = cstr(body)?;
    let (query, types) = cstr(rest)?;
    let (n, oids) = read_i16(types)?;
    (n >= 0 && oids.len() == n as usize * 4).then_some(ParseRef { name, query, types })
}

/// Splits a Bind body into portal name, statement name and the offset of
/// what follows the statement name.
pub fn bind(body: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let (portal, rest) = cstr(body)?;
    let (stmt, tail) = cstr(rest)?;
    Some((portal, stmt, body.len() - tail.len()))
}

/// The parameter values of a Bind body (`None` for NULL), as sent: text,
/// or binary (for `text` parameters the same bytes).
pub fn bind_values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let (_, _, at) = bind(body)?;
    let (formats, rest) = read_i16(&body[at..])?;
    let rest = rest.get(usize::try_from(formats).ok()? * 2..)?;
    let (count, mut rest) = read_i16(rest)?;
    let mut values = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let (len, tail) = read_i32(rest)?;
        rest = tail;
        // A negative length is NULL.
        let value = match usize::try_from(len) {
            Ok(len) => {
                let value = rest.get(..len)?;
                rest = &rest[len..];
                Some(value)
            }
            Err(_) => None,
        };
        values.push(value);
    }
    Some(values)
}

/// Splits a Describe or Close body: kind (`S` or `P`) and name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, tail) = cstr(rest)?;
    (matches!(kind, b'S' | b'P') && tail.is_empty()).then_some((kind, name))
}

/// Writes a Bind whose statement name is replaced by `stmt`.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], stmt: &[u8], tail: &[u8]) {
    let len = 4 + portal.len() + 1 + stmt.len() + 1 + tail.len();
    out.put_u8(b'B');
    out.put_i32(len as i32);
    out.put_slice(portal);
    out.put_u8(0);
    out.put_slice(stmt);
    out.put_u8(0);
    out.put_slice(tail);
}

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
        ["deallocate", _] | ["deallocate", "prepare", _] => {
            let name = words[words.len() - 1];
            match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => SqlEffect::Deallocate(quoted.replace("\"\"", "\"").into_bytes()),
                None => SqlEffect::Deallocate(name.to_ascii_lowercase().into_bytes()),
            }
        }
        _ => SqlEffect::None,
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
    /// `EXECUTE name ...`: the name, and where it stands in the text
    /// (quotes included), so it can be replaced.
    Execute {
        /// The statement name (folded to lower case unless quoted).
        name: Vec<u8>,
        /// Byte range of the name in the query text.
        at: (usize, usize),
    },
}

/// Recognizes `PREPARE name ...` (not `PREPARE TRANSACTION`) and `EXECUTE
/// name ...` when they are the Query's only statement.
pub fn sql_prepared(query: &[u8]) -> Option<SqlPrepared<'_>> {
    use crate::sql::{Lexer, Token};
    // Fast path, no lexing: a text whose first word is something else
    // (every ordinary query). A comment or quote first goes to the lexer.
    if crate::sql::leading_word(query)
        .is_some_and(|w| !w.eq_ignore_ascii_case(b"prepare") && !w.eq_ignore_ascii_case(b"execute"))
    {
        return None;
    }
    let offset = |part: &[u8]| part.as_ptr() as usize - query.as_ptr() as usize;
    let mut tokens = Lexer::new(query);
    let verb = match tokens.next()? {
        Token::Word(w) if w.eq_ignore_ascii_case(b"prepare") => true,
        Token::Word(w) if w.eq_ignore_ascii_case(b"execute") => false,
        _ => return None,
    };
    let (name, at) = match tokens.next()? {
        Token::Word(w) if !w.eq_ignore_ascii_case(b"transaction") => {
            (w.to_ascii_lowercase(), (offset(w), offset(w) + w.len()))
        }
        Token::QuotedIdent(w) => {
            let name = String::from_utf8_lossy(w)
                .replace("\"\"", "\"")
                .into_bytes();
            (name, (offset(w) - 1, offset(w) + w.len() + 1))
        }
        _ => return None,
    };
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
        return Some(SqlPrepared::Execute { name, at });
    }
    let rest = query.get(at.1..)?;
    let end = rest
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
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
    fn reads_bind_values() {
        let mut body = b"\0s1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        for v in [&b"app.x"[..], b""] {
            body.extend_from_slice(&(v.len() as i32).to_be_bytes());
            body.extend_from_slice(v);
        }
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        let values = bind_values(&body).expect("a well-formed Bind");
        assert_eq!(values, [Some(&b"app.x"[..]), Some(&b""[..]), None]);
        // Cut short anywhere: None, never a panic.
        for at in 0..body.len() - 2 {
            assert_eq!(bind_values(&body[..at]), None, "{at}");
        }
    }

    #[test]
    fn reads_parse_exactly() {
        let body = b"s1\0select $1\0\0\x01\0\0\0\x17";
        let p = parse(body).unwrap();
        assert_eq!((p.name, p.query), (&b"s1"[..], &b"select $1"[..]));
        assert!(parse(&body[..body.len() - 1]).is_none());
        assert!(parse(b"a\0").is_none());
        assert!(parse(b"a\0b\0\xff\xff").is_none());
    }

    #[test]
    fn rewrites_bind() {
        let body = b"p\0s1\0\0\0\0\0\0\0";
        let (portal, stmt, at) = bind(body).unwrap();
        assert_eq!((portal, stmt), (&b"p"[..], &b"s1"[..]));
        let mut out = BytesMut::new();
        write_bind(&mut out, portal, b"pgmux_7", &body[at..]);
        let f = crate::protocol::frame::split_frame(&mut out, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(bind(f.body()).unwrap().1, b"pgmux_7");
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
                at: (8, 14)
            })
        );
        assert_eq!(sql_prepared(b"PREPARE TRANSACTION 'x'"), None);
        assert_eq!(sql_prepared(b"PREPARE a AS SELECT 1; SELECT 2"), None);
        assert_eq!(sql_prepared(b"SELECT 1"), None);
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
        assert_eq!(target(b"Sname\0"), Some((b'S', &b"name"[..])));
        assert_eq!(target(b"Xname\0"), None);
        assert_eq!(target(b"Sname\0junk"), None);
    }
}
