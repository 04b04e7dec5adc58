//! The PostgreSQL wire protocol (v3): framing, the messages the proxy needs to understand, and
//! error construction. Decoding borrows from the read buffer; nothing here allocates per row.
//!
//! Why not the `pgwire` crate's message types: they decode every message into owned structs
//! (a `DataRow` becomes a `Vec` of `Bytes`), which is an allocation per row on the hottest path,
//! and the proxy needs only a handful of fields from a handful of messages. A borrowing decoder
//! of ~500 lines keeps relaying at memcpy speed and lets malformed input be rejected precisely.
//!
//! Strings are bytes here: PostgreSQL sends text in the session's client encoding (LATIN1,
//! SJIS, ...), and a proxy that insisted on UTF-8 would break such clients. `text()` gives a
//! UTF-8 view where one is needed (hooks, audit).

/// A protocol string as text: borrowed when it is UTF-8, lossily converted otherwise.
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

pub mod backend;
pub mod error;
pub mod frame;
pub mod frontend;

/// Protocol-level decoding failure, attributed to whichever peer sent the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message '{tag}' truncated: {what}")]
    Truncated { tag: char, what: &'static str },
    #[error("message '{tag}': {what}")]
    Invalid { tag: char, what: String },
    #[error("unexpected message type '{0}'")]
    UnknownTag(char),
}

/// A cursor over a message body with bounds-checked reads.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    tag: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Self { tag, buf }
    }

    fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated { tag: self.tag as char, what }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.truncated(what))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, as bytes: text travels in the client encoding, which need
    /// not be UTF-8, and the proxy relays it byte for byte.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = memchr(0, self.buf).ok_or_else(|| self.truncated(what))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Fails unless the whole body was consumed (trailing bytes mean a desynchronised peer).
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid { tag: self.tag as char, what: format!("{} trailing bytes", self.buf.len()) })
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}
