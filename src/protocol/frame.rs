//! Splitting typed messages off a receive buffer.
//!
//! A frame is kept whole (tag, length and body) as a `Bytes` that shares the
//! receive buffer's memory, so forwarding it costs no decode and no copy.

use bytes::{Bytes, BytesMut};

/// A framing failure: the peer sent something that is not a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field was below 4 (the length counts itself).
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The message is larger than the configured limit.
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// One complete message: tag byte, 4-byte length, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps a complete encoded message. The caller guarantees the layout.
    pub fn from_raw(raw: Bytes) -> Self {
        Self { raw }
    }

    /// The message tag.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The message body (after the length field).
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole message as it travels on the wire.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true: a frame has at least its 5-byte header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks the 5-byte header at the front of `buf` and returns the total
/// length of the first message, or `None` when the header is incomplete.
pub fn peek_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = 1 + len as usize;
    if total > max_len {
        return Err(FrameError::TooLarge(total, max_len));
    }
    Ok(Some(total))
}

/// The length of the complete messages tagged `tag` at the front of `buf`
/// (0 when the first is another message, incomplete, or malformed: the
/// caller's [`split_frame`] then deals with it and reports what is wrong).
pub fn run_of(buf: &[u8], tag: u8, max_len: usize) -> usize {
    let mut at = 0;
    while buf.get(at) == Some(&tag) {
        match peek_len(&buf[at..], max_len) {
            Ok(Some(total)) if at + total <= buf.len() => at += total,
            _ => break,
        }
    }
    at
}

/// Room reserved ahead for the rest of a partial message. A header alone
/// must not make pgmux allocate the whole declared length (up to
/// `max_message_size`): five bytes per connection would pin that much
/// memory. Larger messages grow the buffer as their bytes arrive.
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Splits one complete message off the front of `buf`. `Ok(None)` means more
/// bytes are needed; room for the rest of the message (up to
/// [`RESERVE_AHEAD`]) is reserved so the next read can complete it.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    Ok(whole_len(buf, max_len)?.map(|total| take_frame(buf, total)))
}

/// The length of the complete message at the front of `buf`, for a caller
/// that looks at it before splitting it off ([`take_frame`]); `Ok(None)`
/// as [`split_frame`] says it.
pub fn whole_len(buf: &mut BytesMut, max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(total) = peek_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    Ok(Some(total))
}

/// Splits off the first `total` bytes, a length [`whole_len`] gave.
pub fn take_frame(buf: &mut BytesMut, total: usize) -> Frame {
    Frame {
        raw: buf.split_to(total).freeze(),
    }
}

/// Gives `buf` at least `min` bytes of room for the next read, reserving
/// `grow` when it has less. Frames split off the front leave only the tail
/// of the allocation: a read into a few bytes of room cuts the next message
/// in two, and a read that fills its room exactly leaves the socket flagged
/// readable, so both cost an extra system call. Once the frames split off
/// earlier are dropped, `reserve` reuses the same allocation.
pub fn make_room(buf: &mut BytesMut, min: usize, grow: usize) {
    if buf.capacity() - buf.len() < min {
        buf.reserve(grow.max(min));
    }
}

/// Reads a NUL-terminated string from the front of `b`, returning it and the rest.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(0, b)?;
    Some((&b[..i], &b[i + 1..]))
}

/// Reads a big-endian i16 from the front of `b`.
pub fn read_i16(b: &[u8]) -> Option<(i16, &[u8])> {
    let v = b.get(..2)?;
    Some((i16::from_be_bytes([v[0], v[1]]), &b[2..]))
}

/// Reads a big-endian i32 from the front of `b`.
pub fn read_i32(b: &[u8]) -> Option<(i32, &[u8])> {
    let v = b.get(..4)?;
    Some((i32::from_be_bytes([v[0], v[1], v[2], v[3]]), &b[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_of_takes_only_complete_frames_of_its_tag() {
        let row: &[u8] = b"D\0\0\0\x06\0\0";
        let done: &[u8] = b"C\0\0\0\x0bSELECT\0";
        let mut buf = [row, row, done].concat();
        assert_eq!(run_of(&buf, b'D', 1024), 2 * row.len());
        assert_eq!(run_of(&buf[..row.len() + 3], b'D', 1024), row.len());
        assert_eq!(run_of(done, b'D', 1024), 0);
        // Too large or malformed: left to split_frame, which says why.
        assert_eq!(run_of(&buf, b'D', 4), 0);
        buf[1..5].copy_from_slice(&2i32.to_be_bytes());
        assert_eq!(run_of(&buf, b'D', 1024), 0);
        assert!(split_frame(&mut BytesMut::from(&buf[..]), 1024).is_err());
    }

    #[test]
    fn splits_resegmented_input() {
        let msgs: &[u8] = b"Q\0\0\0\x0bselect\0S\0\0\0\x04";
        for cut in 0..msgs.len() {
            let mut buf = BytesMut::from(&msgs[..cut]);
            let mut got = Vec::new();
            while let Some(f) = split_frame(&mut buf, 1024).unwrap() {
                got.push(f.tag());
            }
            buf.extend_from_slice(&msgs[cut..]);
            while let Some(f) = split_frame(&mut buf, 1024).unwrap() {
                got.push(f.tag());
            }
            assert_eq!(got, vec![b'Q', b'S'], "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(split_frame(&mut buf, 1024), Err(FrameError::BadLength(3)));
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert_eq!(split_frame(&mut buf, 1024), Err(FrameError::BadLength(-1)));
        let mut buf = BytesMut::from(&b"Q\0\0\x10\0"[..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(FrameError::TooLarge(..))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                v.push((seed >> 16) as u8);
            }
            let mut buf = BytesMut::from(&v[..]);
            while let Ok(Some(f)) = split_frame(&mut buf, 64) {
                let _ = cstr(f.body());
            }
        }
    }
}
