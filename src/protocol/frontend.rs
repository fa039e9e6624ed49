//! A client message read once: the parts pgmux looks at (statement text,
//! statement and portal names, a Bind's values), borrowed from the frame.
//! Every reader checks the body's layout exactly and gives
//! [`Message::Malformed`] for anything it cannot read, so client bytes
//! can't cause a panic.

use super::frame::{cstr, read_i16, read_i32};
use super::{fe, Frame};

/// The parts of a Parse body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    /// Query text, without its NUL.
    pub query: &'a [u8],
    /// Parameter type count and OIDs, raw.
    pub types: &'a [u8],
}

/// The parts of a Bind body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name.
    pub portal: &'a [u8],
    /// Statement name.
    pub statement: &'a [u8],
    /// Everything after the statement name (formats, values, result
    /// formats), raw: what a rewritten Bind carries over.
    pub rest: &'a [u8],
}

/// The parts of a Describe or Close body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// `S` (a statement) or `P` (a portal).
    pub kind: u8,
    /// Its name.
    pub name: &'a [u8],
}

/// A client message after login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A simple Query and its text.
    Query(&'a [u8]),
    /// Parse.
    Parse(Parse<'a>),
    /// Bind.
    Bind(Bind<'a>),
    /// Describe.
    Describe(Target<'a>),
    /// Close.
    Close(Target<'a>),
    /// A fast-path function call.
    FunctionCall,
    /// Sync.
    Sync,
    /// Flush.
    Flush,
    /// Terminate.
    Terminate,
    /// A password message, which has no place after login.
    Password,
    /// Anything else pgmux passes on as it is (Execute, COPY data, ...).
    Other,
    /// A message of a kind pgmux reads, whose body it could not read.
    Malformed(&'static str),
}

impl<'a> Message<'a> {
    /// Reads a client frame.
    pub fn read(frame: &'a Frame) -> Self {
        let body = frame.body();
        match frame.tag() {
            fe::QUERY => cstr(body).map_or(Self::Malformed("Query"), |(q, _)| Self::Query(q)),
            fe::PARSE => parse(body).map_or(Self::Malformed("Parse"), Self::Parse),
            fe::BIND => bind(body).map_or(Self::Malformed("Bind"), Self::Bind),
            fe::DESCRIBE => target(body).map_or(Self::Malformed("Describe"), Self::Describe),
            fe::CLOSE => target(body).map_or(Self::Malformed("Close"), Self::Close),
            fe::FUNCTION_CALL => Self::FunctionCall,
            fe::SYNC => Self::Sync,
            fe::FLUSH => Self::Flush,
            fe::TERMINATE => Self::Terminate,
            fe::PASSWORD => Self::Password,
            _ => Self::Other,
        }
    }

    /// The statement text a Query or Parse carries.
    pub fn text(&self) -> Option<&'a [u8]> {
        match self {
            Self::Query(q) => Some(q),
            Self::Parse(p) => Some(p.query),
            _ => None,
        }
    }
}

/// Splits a Parse body: `name\0 query\0 int16 n, n × int32`.
pub fn parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(body)?;
    let (query, types) = cstr(rest)?;
    let (n, oids) = read_i16(types)?;
    (n >= 0 && oids.len() == n as usize * 4).then_some(Parse { name, query, types })
}

/// Splits a Bind body: portal, statement, and what follows.
pub fn bind(body: &[u8]) -> Option<Bind<'_>> {
    let (portal, rest) = cstr(body)?;
    let (statement, rest) = cstr(rest)?;
    Some(Bind {
        portal,
        statement,
        rest,
    })
}

impl<'a> Bind<'a> {
    /// The parameter values (`None` for NULL), as sent: text, or binary
    /// (for `text` parameters the same bytes). `None` when they cannot be
    /// read.
    pub fn values(&self) -> Option<Vec<Option<&'a [u8]>>> {
        let (formats, rest) = read_i16(self.rest)?;
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
}

/// Splits a Describe or Close body: kind (`S` or `P`) and name.
pub fn target(body: &[u8]) -> Option<Target<'_>> {
    let (&kind, rest) = body.split_first()?;
    let (name, tail) = cstr(rest)?;
    (matches!(kind, b'S' | b'P') && tail.is_empty()).then_some(Target { kind, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(4 + body.len() as i32);
        b.put_slice(body);
        super::super::frame::split_frame(&mut b, 1 << 20)
            .ok()
            .flatten()
            .expect("a whole frame")
    }

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
        let values = bind(&body)
            .and_then(|b| b.values())
            .expect("a well-formed Bind");
        assert_eq!(values, [Some(&b"app.x"[..]), Some(&b""[..]), None]);
        // Cut short anywhere: None, never a panic.
        for at in 0..body.len() - 2 {
            assert_eq!(bind(&body[..at]).and_then(|b| b.values()), None, "{at}");
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
    fn reads_targets_exactly() {
        let s = |name| Some(Target { kind: b'S', name });
        assert_eq!(target(b"Sname\0"), s(&b"name"[..]));
        assert_eq!(target(b"Xname\0"), None);
        assert_eq!(target(b"Sname\0junk"), None);
    }

    #[test]
    fn reads_each_kind_once() {
        let f = frame(fe::PARSE, b"s1\0SELECT $1\0\x00\x01\x00\x00\x00\x17");
        let m = Message::read(&f);
        assert_eq!(m.text(), Some(&b"SELECT $1"[..]));
        assert!(matches!(m, Message::Parse(p) if p.name == b"s1"));
        let f = frame(
            fe::BIND,
            b"\0s1\0\x00\x00\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff\x00\x00",
        );
        let Message::Bind(b) = Message::read(&f) else {
            panic!("a Bind")
        };
        assert_eq!((b.portal, b.statement), (&b""[..], &b"s1"[..]));
        assert_eq!(b.values(), Some(vec![Some(&b"a"[..]), None]));
        let f = frame(fe::CLOSE, b"Sx\0");
        assert_eq!(
            Message::read(&f),
            Message::Close(Target {
                kind: b'S',
                name: b"x"
            })
        );
        // Truncated or wrongly laid-out bodies are refused, never read past.
        for (tag, body) in [
            (fe::PARSE, &b"s1\0SELECT"[..]),
            (fe::PARSE, b"s1\0q\0\x00\x02\x00\x00\x00\x17"),
            (fe::BIND, b"p\0"),
            (fe::DESCRIBE, b"Xname\0"),
            (fe::CLOSE, b"Sname\0junk"),
            (fe::QUERY, b"no terminator"),
        ] {
            assert!(matches!(
                Message::read(&frame(tag, body)),
                Message::Malformed(_)
            ));
        }
        assert_eq!(
            Message::read(&frame(fe::EXECUTE, b"\0\0\0\0\0")),
            Message::Other
        );
    }
}
