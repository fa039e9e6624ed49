//! Encoders for the messages pgmux writes itself. Each appends one complete
//! message to the caller's buffer, so a whole reply can be written at once.

use bytes::{BufMut, BytesMut};

use super::TxStatus;

/// Back-patches the length field of the message that starts at `start`.
pub fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Starts a tagged message; finish it with [`patch_len`].
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend(s.iter().copied().filter(|b| *b != 0));
    out.put_u8(0);
}

/// A message with an empty body (ParseComplete, Sync, ...).
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

/// ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    out.put_u8(b'Z');
    out.put_i32(5);
    out.put_u8(status.as_byte());
}

/// An Authentication message: `code` followed by `data`.
pub fn authentication(out: &mut BytesMut, code: i32, data: &[u8]) {
    let start = begin(out, b'R');
    out.put_i32(code);
    out.extend_from_slice(data);
    patch_len(out, start);
}

/// AuthenticationSASL offering the given mechanisms.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let start = begin(out, b'R');
    out.put_i32(10);
    for m in mechanisms {
        put_cstr(out, m.as_bytes());
    }
    out.put_u8(0);
    patch_len(out, start);
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let start = begin(out, b'S');
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    patch_len(out, start);
}

/// BackendKeyData for protocol 3.0.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// NegotiateProtocolVersion: the newest minor version supported and the
/// protocol options that were not recognized.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unknown: &[String]) {
    let start = begin(out, b'v');
    out.put_i32(minor);
    out.put_i32(unknown.len() as i32);
    for o in unknown {
        put_cstr(out, o.as_bytes());
    }
    patch_len(out, start);
}

/// CommandComplete with the given tag (`DEALLOCATE`, ...).
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = begin(out, b'C');
    put_cstr(out, tag.as_bytes());
    patch_len(out, start);
}

/// Simple Query.
pub fn query(out: &mut BytesMut, sql: &str) {
    let start = begin(out, b'Q');
    put_cstr(out, sql.as_bytes());
    patch_len(out, start);
}

/// Parse with the given statement name, query text and parameter type OIDs
/// (`types` is the raw count-prefixed OID list as the client sent it).
pub fn parse(out: &mut BytesMut, name: &[u8], query: &[u8], types: &[u8]) {
    let start = begin(out, b'P');
    put_cstr(out, name);
    out.extend_from_slice(query);
    out.put_u8(0);
    out.extend_from_slice(types);
    patch_len(out, start);
}

/// Close or Describe of a statement (`kind` `S`) or portal (`P`).
pub fn close_or_describe(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let start = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name);
    patch_len(out, start);
}

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(196_608);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// PasswordMessage / SASL response: `p` with a raw body.
pub fn password(out: &mut BytesMut, body: &[u8]) {
    let start = begin(out, b'p');
    out.extend_from_slice(body);
    patch_len(out, start);
}

/// SASLInitialResponse: mechanism name then a length-prefixed payload.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let start = begin(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    patch_len(out, start);
}

/// CancelRequest (protocol 3.0 key).
pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;

    #[test]
    fn encoded_messages_split_back() {
        let mut out = BytesMut::new();
        query(&mut out, "select 1");
        parse(&mut out, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        close_or_describe(&mut out, b'C', b'S', b"s1");
        ready_for_query(&mut out, TxStatus::Idle);
        let tags: Vec<u8> = std::iter::from_fn(|| split_frame(&mut out, 1 << 20).unwrap())
            .map(|f| f.tag())
            .collect();
        assert_eq!(tags, b"QPCZ");
    }
}
