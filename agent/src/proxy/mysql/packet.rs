//! MySQL packet framing: a 3-byte little-endian payload length and a sequence id, payloads of
//! 16 MiB - 1 or more split into fragments (the last one shorter, empty if need be). A packet
//! is handed on only whole (its fragments joined), and only up to the session's limit: a
//! length beyond it is the peer's fault, not a reason to buffer without end.

use bytes::{Buf as _, BytesMut};

/// The largest payload of one fragment.
pub const MAX_FRAGMENT: usize = 0xff_ffff;

/// One packet: its payload (fragments joined) and the sequence ids it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of its first fragment.
    pub seq: u8,
    /// How many fragments it came in (1 unless the payload is 16 MiB - 1 or more).
    pub fragments: u8,
    pub payload: BytesMut,
}

impl Packet {
    /// The sequence id that follows this packet.
    pub fn next_seq(&self) -> u8 {
        self.seq.wrapping_add(self.fragments)
    }

    /// The first byte of the payload (what kind of packet most are), if any.
    pub fn header(&self) -> Option<u8> {
        self.payload.first().copied()
    }
}

/// A packet longer than the session accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a packet of more than {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// Takes the next whole packet off the front of `buf`, if it holds one. `limit` bounds a
/// packet's payload (all fragments).
pub fn take(buf: &mut BytesMut, limit: usize) -> Result<Option<Packet>, TooLarge> {
    // Where the fragments end, without consuming anything until the packet is whole.
    let mut at = 0usize;
    let mut total = 0usize;
    let mut fragments = 0u8;
    loop {
        let Some(head) = buf.get(at..at + 4) else { return Ok(None) };
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        total += len;
        if total > limit {
            return Err(TooLarge { limit });
        }
        fragments = fragments.wrapping_add(1);
        at += 4 + len;
        if buf.len() < at {
            // Room for the rest of the packet, read in as few calls as it takes.
            buf.reserve(at - buf.len());
            return Ok(None);
        }
        if len < MAX_FRAGMENT {
            break;
        }
    }
    let seq = buf[3];
    let payload = if fragments == 1 {
        buf.advance(4);
        buf.split_to(total)
    } else {
        let mut joined = BytesMut::with_capacity(total);
        let mut frame = buf.split_to(at);
        while !frame.is_empty() {
            let len = usize::from(frame[0]) | usize::from(frame[1]) << 8 | usize::from(frame[2]) << 16;
            frame.advance(4);
            joined.extend_from_slice(&frame[..len]);
            frame.advance(len);
        }
        joined
    };
    Ok(Some(Packet { seq, fragments, payload }))
}

/// Appends `payload` as a packet whose first fragment has sequence id `seq`; returns the id
/// that follows it.
pub fn put(out: &mut Vec<u8>, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let len = rest.len().min(MAX_FRAGMENT);
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
        out.extend_from_slice(&rest[..len]);
        seq = seq.wrapping_add(1);
        rest = &rest[len..];
        if len < MAX_FRAGMENT {
            return seq;
        }
    }
}

/// Reads a length-encoded integer at the front of `buf`, advancing it.
pub fn lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let mut parse = mysql_common::io::ParseBuf(buf);
    let value = parse.checked_eat_lenenc_int()?;
    *buf = parse.0;
    Some(value)
}

/// Reads a length-encoded string at the front of `buf`, advancing it.
pub fn lenenc_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut parse = mysql_common::io::ParseBuf(buf);
    let value = parse.checked_eat_lenenc_str()?;
    *buf = parse.0;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(seq: u8, payload: &[u8]) -> BytesMut {
        let mut out = Vec::new();
        put(&mut out, seq, payload);
        BytesMut::from(&out[..])
    }

    #[test]
    fn a_packet_is_taken_only_when_whole() {
        let whole = framed(3, b"\x03select 1");
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(take(&mut part, 1 << 20), Ok(None), "{cut}");
            assert_eq!(part.len(), cut, "nothing is consumed before the packet is whole");
        }
        let mut buf = whole.clone();
        buf.extend_from_slice(b"\x01\x00\x00\x00");
        let packet = take(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((packet.seq, packet.fragments, &packet.payload[..]), (3, 1, &b"\x03select 1"[..]));
        assert_eq!(packet.next_seq(), 4);
        assert_eq!(&buf[..], b"\x01\x00\x00\x00", "the next packet's bytes stay");
    }

    #[test]
    fn a_payload_of_16_mib_spans_fragments_and_an_empty_last_one() {
        for len in [MAX_FRAGMENT - 1, MAX_FRAGMENT, MAX_FRAGMENT + 5, 2 * MAX_FRAGMENT] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let next = put(&mut out, 250, &payload);
            let fragments = len / MAX_FRAGMENT + 1;
            assert_eq!(out.len(), len + 4 * fragments, "{len}");
            assert_eq!(next, 250u8.wrapping_add(fragments as u8));
            let mut buf = BytesMut::from(&out[..]);
            let packet = take(&mut buf, 64 << 20).unwrap().unwrap();
            assert_eq!((packet.seq, usize::from(packet.fragments)), (250, fragments));
            assert!(packet.payload[..] == payload[..], "{len}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_length_beyond_the_limit_is_refused_before_it_is_read() {
        let mut buf = BytesMut::from(&b"\xff\xff\x10\x00"[..]);
        assert_eq!(take(&mut buf, 1 << 20), Err(TooLarge { limit: 1 << 20 }));
        // Fragments count together.
        let mut buf = BytesMut::from(&b"\xff\xff\xff\x00"[..]);
        buf.resize(4 + MAX_FRAGMENT, 0);
        buf.extend_from_slice(b"\x10\x00\x00\x01");
        assert_eq!(take(&mut buf, MAX_FRAGMENT + 8), Err(TooLarge { limit: MAX_FRAGMENT + 8 }));
    }

    #[test]
    fn lenenc_values_are_read_with_bounds() {
        let mut b: &[u8] = b"\xfc\x01\x02rest";
        assert_eq!(lenenc_int(&mut b), Some(0x0201));
        assert_eq!(b, b"rest");
        let mut b: &[u8] = b"\x03abcd";
        assert_eq!(lenenc_bytes(&mut b), Some(&b"abc"[..]));
        assert_eq!(b, b"d");
        for short in [&b"\xfc\x01"[..], b"\xfd\x01\x02", b"\xfe\x01", b"\x05ab", b""] {
            let mut b = short;
            assert!(lenenc_bytes(&mut b).is_none(), "{short:?}");
        }
    }
}
