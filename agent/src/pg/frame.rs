//! Message boundaries. A regular message is a type byte, a big-endian i32 length that counts
//! itself but not the type byte, and the body. Start-up packets (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest) have no type byte.

/// PostgreSQL's own limit on a start-up packet.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Start-up packet codes.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The framing itself is broken: the peer is not speaking the protocol (or is hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message '{tag}' declares length {len}, below the minimum of 4")]
    BadLength { tag: char, len: i32 },
    #[error("message '{tag}' of {len} bytes exceeds the limit of {max}")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("start-up packet length {0} is outside 8..=10000")]
    BadStartupLength(i32),
}

/// A regular message header found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes of the whole message, type byte included.
    pub total: usize,
}

impl Header {
    pub fn body_len(&self) -> usize {
        self.total - 5
    }
}

/// Reads the header at the start of `buf`, if all five bytes are there. `max` bounds the
/// whole message.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength { tag: tag as char, len });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { tag: tag as char, len: total, max });
    }
    Ok(Some(Header { tag, total }))
}

/// Reads a start-up packet's length (which includes itself) if the four bytes are there.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(FrameError::BadStartupLength(len));
    }
    Ok(Some(len as usize))
}

/// Appends a regular message: tag, length, body.
pub fn put_message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(header(b"Z\0\0", 100), Ok(None));
        assert_eq!(header(b"Z\0\0\0\x05I", 100), Ok(Some(Header { tag: b'Z', total: 6 })));
        assert_eq!(header(b"Z\0\0\0\x03", 100), Err(FrameError::BadLength { tag: 'Z', len: 3 }));
        assert_eq!(header(b"D\xff\xff\xff\xff", 100), Err(FrameError::BadLength { tag: 'D', len: -1 }));
        assert_eq!(header(b"D\0\0\x01\0", 100), Err(FrameError::TooLarge { tag: 'D', len: 257, max: 100 }));
    }

    #[test]
    fn startup_lengths() {
        assert_eq!(startup_len(b"\0\0"), Ok(None));
        assert_eq!(startup_len(b"\0\0\0\x08"), Ok(Some(8)));
        assert_eq!(startup_len(b"\0\0\0\x07"), Err(FrameError::BadStartupLength(7)));
        assert_eq!(startup_len(b"GET "), Err(FrameError::BadStartupLength(0x47455420)));
    }
}
