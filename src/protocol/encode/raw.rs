//! The messages pgmux writes by hand, because they carry a client's own
//! bytes: a Bind renamed to one of pgmux's statements (kept byte for byte
//! but for the name), and a Parse or Query whose text is the client's. That
//! text need not be UTF-8 (`client_encoding` LATIN1, SQL_ASCII) and the
//! libraries' encoders take `&str`: decoding and re-encoding would corrupt
//! it.
//!
//! Each one works out its exact length before it writes anything: a body
//! the i32 length field cannot hold is an [`EncodeError`], and the buffer
//! is left as it was.

use bytes::{BufMut, BytesMut};

use super::{length_field, EncodeError};
use crate::protocol::fe;

/// A client's Bind renamed to one of pgmux's statements: its portal and
/// everything after the statement name (formats, values, result formats)
/// as the client sent them.
///
/// Checked when made, written later: a caller checks before it records
/// anything, and writes after whatever must go first (the Parse a server
/// lacks). No allocation: every Bind of a prepared statement comes here.
#[derive(Debug, Clone, Copy)]
pub struct RenamedBind<'a> {
    portal: &'a [u8],
    stmt: &'a [u8],
    tail: &'a [u8],
    len: i32,
}

impl<'a> RenamedBind<'a> {
    /// The Bind of `portal` to `stmt` with the rest of the client's body
    /// (`tail`), if its length fits.
    #[inline]
    pub fn new(portal: &'a [u8], stmt: &'a [u8], tail: &'a [u8]) -> Result<Self, EncodeError> {
        let body = portal
            .len()
            .saturating_add(stmt.len())
            .saturating_add(tail.len())
            .saturating_add(2);
        let len = length_field("Bind", body)?;
        Ok(Self {
            portal,
            stmt,
            tail,
            len,
        })
    }

    /// Appends the Bind to `out`.
    #[inline]
    pub fn write(&self, out: &mut BytesMut) {
        out.reserve(1 + 4 + self.portal.len() + 1 + self.stmt.len() + 1 + self.tail.len());
        out.put_u8(fe::BIND);
        out.put_i32(self.len);
        out.put_slice(self.portal);
        out.put_u8(0);
        out.put_slice(self.stmt);
        out.put_u8(0);
        out.put_slice(self.tail);
    }
}

/// Appends a Bind whose statement name is replaced by `stmt` (see
/// [`RenamedBind`]).
#[inline]
pub fn write_bind(
    out: &mut BytesMut,
    portal: &[u8],
    stmt: &[u8],
    tail: &[u8],
) -> Result<(), EncodeError> {
    RenamedBind::new(portal, stmt, tail)?.write(out);
    Ok(())
}

/// Parse of a client's statement text under a name of pgmux's, with the
/// parameter types as the client sent them (count-prefixed OIDs). The text
/// and types come from a Parse already read, so they are kept as they are;
/// a NUL in the name would end it early, so it is dropped.
pub fn parse_raw(
    out: &mut BytesMut,
    name: &[u8],
    query: &[u8],
    types: &[u8],
) -> Result<(), EncodeError> {
    let body = (name.len() - nuls(name))
        .saturating_add(query.len())
        .saturating_add(types.len())
        .saturating_add(2);
    let len = length_field("Parse", body)?;
    out.reserve(1 + 4 + body);
    out.put_u8(fe::PARSE);
    out.put_i32(len);
    put_without_nuls(out, name);
    out.put_u8(0);
    out.put_slice(query);
    out.put_u8(0);
    out.put_slice(types);
    Ok(())
}

/// A Query whose text is the concatenation of `parts`, client bytes among
/// them (a rewritten `EXECUTE`, a `PREPARE` under pgmux's name). NULs are
/// dropped: one would end the text early and the server would read the
/// rest as the next message.
///
/// Checked when made and written later, as [`RenamedBind`].
#[derive(Debug, Clone, Copy)]
pub struct RawQuery<'p, 'a> {
    parts: &'p [&'a [u8]],
    body: usize,
    len: i32,
}

impl<'p, 'a> RawQuery<'p, 'a> {
    /// The Query of `parts`, if its length fits.
    pub fn new(parts: &'p [&'a [u8]]) -> Result<Self, EncodeError> {
        let body = parts
            .iter()
            .fold(1usize, |n, p| n.saturating_add(p.len() - nuls(p)));
        let len = length_field("Query", body)?;
        Ok(Self { parts, body, len })
    }

    /// Appends the Query to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        out.reserve(1 + 4 + self.body);
        out.put_u8(fe::QUERY);
        out.put_i32(self.len);
        for p in self.parts {
            put_without_nuls(out, p);
        }
        out.put_u8(0);
    }
}

/// Appends a Query whose text is the concatenation of `parts` (see
/// [`RawQuery`]).
pub fn query_raw(out: &mut BytesMut, parts: &[&[u8]]) -> Result<(), EncodeError> {
    RawQuery::new(parts)?.write(out);
    Ok(())
}

/// Fills in the length field of a tagged message written piece by piece
/// from `start` (its tag, four bytes for the length, its body), for tests
/// and benchmarks that build client messages themselves. A body too long
/// for the field is taken back out and reported.
pub fn patch_len(out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    match length_field("tagged", out.len().saturating_sub(start + 5)) {
        Ok(len) => {
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn nuls(bytes: &[u8]) -> usize {
    memchr::memchr_iter(0, bytes).count()
}

/// Appends `bytes` without their NULs, a run at a time.
fn put_without_nuls(out: &mut BytesMut, mut bytes: &[u8]) {
    while let Some(at) = memchr::memchr(0, bytes) {
        out.put_slice(&bytes[..at]);
        bytes = &bytes[at + 1..];
    }
    out.put_slice(bytes);
}

/// An ErrorResponse as the server sent it (`body`), its position field
/// (`P`, a 1-based character index into the query) passed through `map`;
/// every other field byte for byte. A body that does not read as fields
/// is copied as it is.
pub fn error_shifted(out: &mut BytesMut, body: &[u8], map: impl Fn(u32) -> u32) {
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = &tail[..end];
        out.put_u8(code);
        let moved = (code == b'P')
            .then(|| std::str::from_utf8(value).ok()?.parse::<u32>().ok())
            .flatten();
        match moved {
            Some(at) => out.put_slice(map(at).to_string().as_bytes()),
            None => out.put_slice(value),
        }
        out.put_u8(0);
        rest = &tail[end + 1..];
    }
    out.put_u8(0);
    if patch_len(out, start).is_err() || rest.first().is_none_or(|&b| b != 0) {
        // Not fields after all: the server's bytes as they came.
        out.truncate(start);
        out.put_u8(b'E');
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pgwire::messages::extendedquery::{Bind, Parse};
    use pgwire::messages::simplequery::Query;

    use super::super::tests::decode;
    use super::*;
    use crate::protocol::frame::split_frame;

    /// Zeroed and never written, so the pages are never touched: a length
    /// past what the protocol can say costs no memory.
    fn huge() -> Vec<u8> {
        vec![0; 1 << 30]
    }

    #[test]
    fn renamed_bind_decodes_with_the_clients_values() {
        // Bind "p" of "s1": one text parameter '42', one NULL, binary results.
        let mut tail = Vec::new();
        tail.put_i16(1);
        tail.put_i16(0);
        tail.put_i16(2);
        tail.put_i32(2);
        tail.put_slice(b"42");
        tail.put_i32(-1);
        tail.put_i16(1);
        tail.put_i16(1);
        let mut out = BytesMut::new();
        write_bind(&mut out, b"p", b"pgmux_7", &tail).unwrap();
        let bind: Bind = decode(&mut out.clone());
        assert_eq!(bind.portal_name.as_deref(), Some("p"));
        assert_eq!(bind.statement_name.as_deref(), Some("pgmux_7"));
        assert_eq!(bind.parameter_format_codes, [0]);
        assert_eq!(bind.parameters, [Some(Bytes::from_static(b"42")), None]);
        assert_eq!(bind.result_column_format_codes, [1]);
        // The same bytes as the layout the protocol gives, field by field.
        let mut expected = b"B\0\0\0\x22p\0pgmux_7\0".to_vec();
        expected.extend_from_slice(&tail);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn raw_parse_keeps_the_clients_bytes() {
        let types = b"\0\x01\0\0\0\x17";
        let mut out = BytesMut::new();
        parse_raw(&mut out, b"s", b"select $1", types).unwrap();
        let parse: Parse = decode(&mut out);
        assert!(out.is_empty());
        assert_eq!(parse.name.as_deref(), Some("s"));
        assert_eq!(parse.query, "select $1");
        assert_eq!(parse.type_oids, [23]);
        // LATIN1 text is not UTF-8 (pgwire would replace it): read back with
        // pgmux's own reader, it is the client's bytes.
        let query = b"select '\xe9t\xe9', $1";
        let mut out = BytesMut::new();
        parse_raw(&mut out, b"pgmux_\x003", query, types).unwrap();
        let frame = split_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert!(out.is_empty());
        let p = crate::protocol::frontend::parse(frame.body()).unwrap();
        assert_eq!(
            (p.name, p.query, p.types),
            (&b"pgmux_3"[..], &query[..], &types[..])
        );
    }

    #[test]
    fn raw_query_joins_its_parts_without_nuls() {
        let mut out = BytesMut::new();
        query_raw(&mut out, &[b"EXECUTE ", b"pgmux_\x001", b"(5)"]).unwrap();
        let q: Query = decode(&mut out);
        assert!(out.is_empty());
        assert_eq!(q.query, "EXECUTE pgmux_1(5)");
    }

    #[test]
    fn patch_len_fills_in_the_length() {
        let mut out = BytesMut::from(&b"junk"[..]);
        out.put_u8(b'd');
        out.put_i32(0);
        out.put_slice(b"abc");
        patch_len(&mut out, 4).unwrap();
        assert_eq!(&out[..], b"junkd\0\0\0\x07abc");
    }

    #[test]
    fn over_long_bodies_are_errors_and_write_nothing() {
        let big = huge();
        let mut out = BytesMut::from(&b"before"[..]);
        let too_long = |r: Result<(), EncodeError>, message| match r {
            Err(EncodeError::TooLong { message: m, len }) => {
                assert_eq!(m, message);
                assert!(len > i32::MAX as usize, "{len}");
            }
            r => panic!("{message}: {r:?}"),
        };
        too_long(write_bind(&mut out, &big, &big, b""), "Bind");
        too_long(parse_raw(&mut out, b"s", &big, &big), "Parse");
        // NULs are dropped, so the text must be made of something else:
        // the same megabyte, 2,048 times.
        let chunk = vec![b'x'; 1 << 20];
        let parts = vec![&chunk[..]; 2048];
        too_long(query_raw(&mut out, &parts), "Query");
        assert_eq!(&out[..], b"before");
        // A megabyte less fits.
        let fits = vec![&chunk[..]; 2047];
        assert!(RawQuery::new(&fits).is_ok());
        let mut built = BytesMut::zeroed((1 << 31) + 8);
        too_long(patch_len(&mut built, 0), "tagged");
        assert!(built.is_empty());
    }
}
