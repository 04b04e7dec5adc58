//! Client byte scripts run against a server, and what the client received, normalised for
//! comparison: the protocol fidelity test (`tests/integration/fidelity.rs`) runs a corpus of
//! them directly and through Warden; the differential fuzzer (`src/bin/differential.rs`)
//! generated ones.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use crate::raw::{message, startup_packet};

/// One thing the client does.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes (in one write, or one byte per write when the script is split).
    Send(Vec<u8>),
    /// Read until the server is quiet for a while, or the connection ends.
    Read,
    /// Shut down the client's sending side.
    HalfClose,
    /// Cancel what runs now: a CancelRequest with the key the server sent (BackendKeyData), on
    /// a connection of its own to the same address, read until it closes.
    Cancel,
}

/// How the connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
    Open,
}

/// What the client received: messages (normalised) and how it ended.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub messages: Vec<String>,
    pub end: End,
    /// The bytes received (not compared: messages are, normalised).
    pub raw: Vec<u8>,
    /// Where each message begins in `raw`.
    pub offsets: Vec<usize>,
}

const QUIET: Duration = Duration::from_millis(100);
/// How long an answer may take to begin.
const FIRST_BYTE: Duration = Duration::from_millis(1500);

pub fn ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat()
}

pub fn gss_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_104u32.to_be_bytes()].concat()
}

pub fn login() -> Vec<u8> {
    startup_packet(&[("user", "postgres"), ("database", "postgres")])
}

pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

/// A start-up packet with a protocol version of our choosing.
pub fn startup_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = startup_packet(params);
    packet[4..8].copy_from_slice(&[(major >> 8) as u8, major as u8, (minor >> 8) as u8, minor as u8]);
    packet
}

/// Reads the server's answer to what was just sent: until it ends with a message after which
/// the server waits for the client (ReadyForQuery, CopyInResponse, CopyBothResponse), or with
/// the one-byte answer to an SSL or GSSENC request when one is due; else until it has been
/// quiet for `QUIET` after its last byte (an answer that does not end that way, such as the
/// results of a batch without Sync); or the connection ends. Nothing at all arrives for at most
/// `FIRST_BYTE` (a loaded machine may be slow to answer).
fn read_answer(stream: &mut TcpStream, into: &mut Vec<u8>, single_byte_due: bool) -> Option<End> {
    stream.set_read_timeout(Some(QUIET)).expect("timeout");
    let started = Instant::now();
    let from = into.len();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(End::Eof),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if into.len() > from || started.elapsed() > FIRST_BYTE {
                    return None;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(End::Reset),
            Err(e) => panic!("read: {e}"),
        }
        if waits_for_client(&into[from..], single_byte_due) || started.elapsed() > Duration::from_secs(10) {
            return None;
        }
    }
}

/// Whether `answer` ends, at a message boundary, with the server waiting for the client.
fn waits_for_client(answer: &[u8], single_byte_due: bool) -> bool {
    let mut pos = 0;
    if single_byte_due && matches!(answer.first(), Some(b'N' | b'S' | b'G')) {
        if answer.len() == 1 {
            return true;
        }
        pos = 1;
    }
    let mut last = None;
    while answer.len() - pos >= 5 {
        let len = u32::from_be_bytes([answer[pos + 1], answer[pos + 2], answer[pos + 3], answer[pos + 4]]) as usize;
        if len < 4 || answer.len() - pos < 1 + len {
            return false;
        }
        last = Some(answer[pos]);
        pos += 1 + len;
    }
    pos == answer.len() && matches!(last, Some(b'Z' | b'G' | b'W'))
}

/// The server's bytes as messages: the one-byte answers to SSLRequest/GSSENCRequest where one
/// is due, then tagged messages; what is left over (a torn message) is shown as such.
fn messages(bytes: &[u8], single_byte_answers: usize) -> (Vec<String>, Vec<usize>) {
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    let mut pos = 0;
    let mut singles = single_byte_answers;
    while pos < bytes.len() {
        offsets.push(pos);
        if singles > 0 && matches!(bytes[pos], b'N' | b'S' | b'G') {
            out.push(format!("answer {}", bytes[pos] as char));
            singles -= 1;
            pos += 1;
            continue;
        }
        // An error in the format of protocol 2 (to a client that asked for it): "E", then the
        // text up to a NUL.
        if bytes[pos] == b'E' && [&b"FATAL:"[..], b"ERROR:"].iter().any(|w| bytes[pos + 1..].starts_with(w)) {
            let text = &bytes[pos + 1..];
            let end = text.iter().position(|&b| b == 0).map_or(bytes.len(), |n| pos + 1 + n + 1);
            out.push(format!("E (protocol 2) {}", String::from_utf8_lossy(&text[..5])));
            pos = end;
            continue;
        }
        if bytes.len() - pos < 5 {
            out.push(format!("torn {:?}", &bytes[pos..]));
            break;
        }
        let tag = bytes[pos];
        let len = u32::from_be_bytes([bytes[pos + 1], bytes[pos + 2], bytes[pos + 3], bytes[pos + 4]]) as usize;
        let end = (pos + 1 + len).min(bytes.len());
        out.push(normalise(tag, &bytes[(pos + 5).min(end)..end]));
        pos = pos.saturating_add(1 + len.max(4));
    }
    (out, offsets)
}

/// One message as compared: what must differ between two connections is masked.
fn normalise(tag: u8, body: &[u8]) -> String {
    let tag = tag as char;
    match tag {
        // Another process, another key.
        'K' => "K (backend key data)".into(),
        // The notifying backend's pid.
        'A' => format!("A {:?}", body.get(4..).unwrap_or_default()),
        // Errors by severity and SQLSTATE; notices (only ever the server's) with their text.
        'E' | 'N' => {
            let kept: &[u8] = if tag == 'E' { b"SC" } else { b"SCM" };
            let fields: Vec<String> = body
                .split(|&b| b == 0)
                .filter(|f| f.first().is_some_and(|c| kept.contains(c)))
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            format!("{tag} {}", fields.join(" | "))
        }
        _ => format!("{tag} {}", String::from_utf8_lossy(body)),
    }
}

/// Runs `steps` against `addr`, their bytes in one write per step or one byte per write.
/// `patience`: how long the connection may stay quiet at the end before it counts as open.
pub fn run(addr: &str, steps: &[Step], split: bool, patience: Duration) -> Transcript {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    let mut received = Vec::new();
    let mut singles = 0;
    let mut last_was_request = false;
    let mut ended = None;
    for step in steps {
        if ended.is_some() {
            break;
        }
        match step {
            Step::Send(bytes) => {
                last_was_request = *bytes == ssl_request() || *bytes == gss_request();
                if last_was_request {
                    singles += 1;
                }
                let written = if split {
                    bytes.iter().try_for_each(|b| {
                        let r = stream.write_all(std::slice::from_ref(b));
                        std::thread::sleep(Duration::from_micros(200));
                        r
                    })
                } else {
                    stream.write_all(bytes)
                };
                if written.is_err() {
                    // The server closed: what it said before is still read, below.
                    break;
                }
            }
            Step::Read => ended = read_answer(&mut stream, &mut received, last_was_request),
            Step::HalfClose => {
                let _ = stream.shutdown(Shutdown::Write);
            }
            Step::Cancel => cancel(addr, &received),
        }
    }
    // How the connection ends (or that it is still open) after the script.
    let end = match ended {
        Some(end) => end,
        None => {
            stream.set_read_timeout(Some(patience)).expect("timeout");
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break End::Eof,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break End::Open,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break End::Reset,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    };
    let (messages, offsets) = messages(&received, singles);
    Transcript { messages, end, raw: received, offsets }
}

/// Sends a CancelRequest for the session whose BackendKeyData is in `received` (if any), from a
/// connection of its own, after a moment (for the statement to start), and waits for the
/// server to close that connection.
fn cancel(addr: &str, received: &[u8]) {
    // Before the server sent its key there is nothing to cancel (generated scripts try).
    let Some((pid, key)) = backend_key(received) else { return };
    std::thread::sleep(Duration::from_millis(300));
    let mut packet = Vec::with_capacity(12 + key.len());
    packet.extend_from_slice(&(12 + key.len() as u32).to_be_bytes());
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(pid);
    packet.extend_from_slice(key);
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.write_all(&packet).expect("cancel request");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    assert!(sink.is_empty(), "a CancelRequest was answered: {sink:?}");
}

/// The process id and secret key of the first BackendKeyData in `bytes`.
fn backend_key(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut pos = 0;
    while bytes.len() - pos >= 5 {
        let len = u32::from_be_bytes([bytes[pos + 1], bytes[pos + 2], bytes[pos + 3], bytes[pos + 4]]) as usize;
        let end = pos.checked_add(1 + len).filter(|&e| e <= bytes.len() && len >= 8)?;
        if bytes[pos] == b'K' {
            return Some((&bytes[pos + 5..pos + 9], &bytes[pos + 9..end]));
        }
        pos = end;
    }
    None
}

/// Where two transcripts of the same script first differ.
#[derive(Debug)]
pub struct Divergence {
    /// The index of the first message that differs (or the count, when only the end does).
    pub message: usize,
    /// That message's first byte in each side's raw bytes (or where the bytes end).
    pub byte: (usize, usize),
}

/// Compares what a client received directly (`expected`) and through Warden, after settling
/// what timing alone decides. When a script is sent one byte per write (`split`), a server
/// that closes while the client is still writing resets the connection or not by timing, and
/// a reset may drop its last FATAL unread: there a reset counts as a close, and when either
/// side was reset a FATAL just before the close is not compared. (PostgreSQL does not read
/// what the client still sends before it closes; Warden does, so its close is a FIN and its
/// FATAL arrives.)
pub fn compare(expected: &mut Transcript, through: &mut Transcript, split: bool) -> Option<Divergence> {
    if split {
        let reset = expected.end == End::Reset || through.end == End::Reset;
        for t in [&mut *expected, &mut *through] {
            if t.end == End::Reset {
                t.end = End::Eof;
            }
            if reset && t.messages.last().is_some_and(|m| m.starts_with("E SFATAL")) {
                t.messages.pop();
            }
        }
    }
    // PostgreSQL closes without reading what the client still sends, so a client that writes
    // on may get a reset, by timing; Warden reads it first after a FATAL of its own (so that the
    // FATAL is not lost to a reset), and closes with an end of stream. A reset directly where
    // Warden ends with an end of stream is therefore not a difference; the reverse is.
    if expected.end == End::Reset && through.end == End::Eof {
        expected.end = End::Eof;
    }
    let first = expected.messages.iter().zip(&through.messages).position(|(a, b)| a != b);
    let message = match first {
        Some(i) => i,
        None if expected.messages.len() != through.messages.len() || expected.end != through.end => {
            expected.messages.len().min(through.messages.len())
        }
        None => return None,
    };
    let at = |t: &Transcript| t.offsets.get(message).copied().unwrap_or(t.raw.len());
    Some(Divergence { message, byte: (at(expected), at(through)) })
}
