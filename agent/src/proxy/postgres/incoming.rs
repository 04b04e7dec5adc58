//! The client's input read as PostgreSQL's backend reads it (postgres.c `SocketBackend`,
//! copyfromparse.c `CopyGetData`), so that what the client gets back through the proxy is what
//! the server would have sent it:
//! - a well-formed message is judged and relayed;
//! - a message whose body does not decode is, to the server, an ERROR 08P01 after which the
//!   session goes on (skipping to Sync inside an extended batch): the server is sent a statement
//!   that fails the same way in its place, and the client gets our error for it, so the bytes
//!   the proxy could not read never reach the server;
//! - any message but COPY data, Flush, Sync or Terminate during COPY FROM STDIN makes the server
//!   fail the COPY (ERROR 08P01) and end the session (FATAL 08P01, "protocol synchronization was
//!   lost") before it reads the body: the server is sent that type with an empty body;
//! - a length the server would not read (below 4, over its 10,000-byte limit for messages that
//!   carry no data, over 1 GiB for others) makes it close without a word (what it buffered of
//!   its answers is lost: the proxy passes the client's end of stream on);
//! - an unknown message type is a FATAL.

use super::state::{Copy, Phase, ProtocolError, ProtocolState};
use crate::pg::{
    DecodeError,
    error::{Severity, error_message, sqlstate},
    frame::{self, FrameError, put_message},
    frontend::Frontend,
};

/// The statement the proxy sends in place of a refused one: it fails in the parser, before
/// anything runs, so the server's own error handling (aborting the transaction or skipping the
/// rest of an extended-protocol batch) stays exactly PostgreSQL's. Its error is then replaced.
const POISON_SQL: &str = "WARDEN STATEMENT REFUSED";

/// PostgreSQL's limit on messages that carry no data (`PQ_SMALL_MESSAGE_LIMIT`), and on all
/// others (`PQ_LARGE_MESSAGE_LIMIT`), the length word included.
const SMALL_MESSAGE_LIMIT: usize = 10_000;
const LARGE_MESSAGE_LIMIT: usize = (1 << 30) - 2;
/// The message types it applies to.
const SMALL_MESSAGES: &[u8] = b"CDEHSXcf";
/// The message types a client may send once the session has started.
const FRONTEND_TYPES: &[u8] = b"BCcdDEHFfPpQSX";

/// The next piece of the client's input.
pub enum Incoming<'a> {
    /// A complete message of `total` bytes, decoded.
    Message(usize, Frontend<'a>),
    /// A complete message of `total` bytes whose body does not decode.
    Malformed { total: usize, tag: u8, error: DecodeError },
    /// A message of type `tag` that ends a COPY FROM STDIN, and the session with it.
    BreaksCopy { tag: u8 },
    /// A Sync or Flush of `total` bytes during COPY FROM STDIN. The server ignores it while the
    /// COPY runs, but answers a Sync once a bad row has failed the COPY, and which of the two
    /// it meets cannot be known here: it is sent an empty Flush, which it answers neither way.
    SyncInCopy { total: usize },
    /// Not all there yet, or not to be read yet (see `waits`).
    Partial,
}

/// Whether a client message of type `tag` waits for the server before it is read:
/// - a client may send its first messages with its start-up packet (or its password), and the
///   server reads them only once start-up is over (at once with trust authentication), so here
///   they wait for that too, and are judged as the statements of a ready session (sent while
///   the server asks for a password, they are the client's answer, as the server reads them);
/// - behind a statement that may begin a COPY FROM STDIN, until the server shows whether it
///   does (`ProtocolState::copy_may_begin`);
/// - while a statement stopped at a volume limit is being cancelled, until the server has taken
///   the cancel (`ProtocolState::cancel_outstanding`): else it may cancel what comes next.
pub fn waits(st: &ProtocolState, tag: u8) -> bool {
    match st.phase {
        Phase::Starting => true,
        Phase::Authenticating => !st.auth_asked && tag != b'p',
        Phase::Ready => st.copy_may_begin() || st.cancel_outstanding.as_ref().is_some_and(|c| c.holds()),
        Phase::Terminating => false,
    }
}

/// Reads the next piece of `buf` in the session `st` (messages of at most `max` bytes are
/// accepted).
pub fn next<'a>(buf: &'a [u8], max: usize, st: &ProtocolState) -> Result<Incoming<'a>, ProtocolError> {
    let Some(&tag) = buf.first() else {
        return Ok(Incoming::Partial);
    };
    if waits(st, tag) {
        return Ok(Incoming::Partial);
    }
    let copy_in = st.copy == Copy::In;
    if copy_in && !b"dcfHSX".contains(&tag) {
        return Ok(Incoming::BreaksCopy { tag });
    }
    // A type no client message has is refused at once, as the server does, not after waiting
    // for as many bytes as its length claims (nor is an authentication message once the
    // session has started).
    let started = matches!(st.phase, Phase::Ready | Phase::Terminating);
    if !FRONTEND_TYPES.contains(&tag) || (started && tag == b'p') {
        return Err(ProtocolError::Client(format!("invalid frontend message type {tag}")));
    }
    if buf.len() < 5 {
        return Ok(Incoming::Partial);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let limit = if SMALL_MESSAGES.contains(&tag) { SMALL_MESSAGE_LIMIT } else { LARGE_MESSAGE_LIMIT };
    if len < 4 || len as usize > limit {
        return Err(ProtocolError::ClientFraming(format!("message '{}' declares length {len}", tag as char)));
    }
    let h = match frame::header(buf, max) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Incoming::Partial),
        Err(e @ FrameError::TooLarge { .. }) => return Err(ProtocolError::Client(e.to_string())),
        Err(e) => return Err(ProtocolError::ClientFraming(e.to_string())),
    };
    if buf.len() < h.total {
        return Ok(Incoming::Partial);
    }
    if copy_in && matches!(tag, b'S' | b'H') {
        return Ok(Incoming::SyncInCopy { total: h.total });
    }
    Ok(match Frontend::decode(tag, &buf[5..h.total]) {
        Ok(msg) => Incoming::Message(h.total, msg),
        Err(error) => Incoming::Malformed { total: h.total, tag, error },
    })
}

/// What goes to the server in place of a piece of input that is not a plain message.
pub struct StandIn {
    pub bytes: Vec<u8>,
    /// How many of the client's bytes it stands for.
    pub consumed: usize,
    /// The server will end the session on it: nothing more of the client's is read.
    pub ends: bool,
}

/// Records in the state what the server is sent in place of `incoming` (a malformed message,
/// or one that breaks a COPY), and returns it. `available`: the client's bytes at hand.
pub fn stand_in(st: &mut ProtocolState, incoming: Incoming<'_>, available: usize) -> Result<StandIn, ProtocolError> {
    match incoming {
        Incoming::Malformed { total, tag, error } => {
            let message = format!("warden: invalid message: {error}");
            let replaced = error_message(Severity::Error, sqlstate::PROTOCOL_VIOLATION, &message);
            // The server answers a malformed simple query or function call with an error and
            // ReadyForQuery; any other malformed message with an error, then skips to Sync (and
            // a malformed Sync ends that skipping).
            if tag == b'S' && st.skipping_to_sync() {
                // The server skips the failing statement too, but not the Sync: it answers our
                // error, then ReadyForQuery.
                st.on_frontend(&Frontend::Sync, Some(replaced))?;
                let mut bytes = Vec::with_capacity(5);
                put_message(&mut bytes, b'S', b"");
                return Ok(StandIn { bytes, consumed: total, ends: false });
            }
            // Both recorded, or neither: a poison recorded and never sent would be owed forever.
            if tag == b'S' && !st.room_for(2) {
                return Err(ProtocolError::Client("too many messages awaiting the server's answers".into()));
            }
            let extended = !matches!(tag, b'Q' | b'F');
            let (poison, mut bytes) = poison(extended);
            st.on_frontend(&poison, Some(replaced))?;
            if tag == b'S' {
                st.on_frontend(&Frontend::Sync, None)?;
                put_message(&mut bytes, b'S', b"");
            }
            Ok(StandIn { bytes, consumed: total, ends: false })
        }
        Incoming::SyncInCopy { total } => {
            let mut bytes = Vec::with_capacity(5);
            put_message(&mut bytes, b'H', b"");
            Ok(StandIn { bytes, consumed: total, ends: false })
        }
        Incoming::BreaksCopy { tag } => {
            st.on_copy_broken();
            let mut bytes = Vec::with_capacity(5);
            put_message(&mut bytes, tag, b"");
            Ok(StandIn { bytes, consumed: available, ends: true })
        }
        Incoming::Message(..) | Incoming::Partial => {
            Err(ProtocolError::Client("internal: a plain message has no stand-in".into()))
        }
    }
}

/// The message forwarded in place of a refused one: a statement that fails in the parser.
/// A simple query (or fast-path call) becomes a simple query; an extended-protocol message
/// becomes a Parse, so the server skips the rest of the batch up to Sync exactly as for a real
/// error.
pub fn poison_for(msg: &Frontend<'_>) -> (Frontend<'static>, Vec<u8>) {
    poison(matches!(msg, Frontend::Parse { .. } | Frontend::Bind(_) | Frontend::Execute { .. }))
}

fn poison(extended: bool) -> (Frontend<'static>, Vec<u8>) {
    let mut bytes = Vec::with_capacity(64);
    if extended {
        let mut body = Vec::new();
        body.extend_from_slice(b"warden_refused\0");
        body.extend_from_slice(POISON_SQL.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        put_message(&mut bytes, b'P', &body);
        (Frontend::Parse { name: b"warden_refused", sql: POISON_SQL.as_bytes(), param_types: Vec::new() }, bytes)
    } else {
        let mut body = POISON_SQL.as_bytes().to_vec();
        body.push(0);
        put_message(&mut bytes, b'Q', &body);
        (Frontend::Query(POISON_SQL.as_bytes()), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pg::backend::Backend, proxy::postgres::state::BackendAction};

    fn ready() -> ProtocolState {
        let mut st = ProtocolState::new();
        st.on_backend(&Backend::Authentication { code: 0, data: b"" }).unwrap();
        st.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        st
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, tag, body);
        out
    }

    #[test]
    fn pieces_are_read_as_the_server_reads_them() {
        let max = 1 << 20;
        let st = ready();
        assert!(matches!(next(&msg(b'Q', b"select 1\0"), max, &st), Ok(Incoming::Message(14, Frontend::Query(_)))));
        assert!(matches!(next(&msg(b'Q', b"select 1\0")[..7], max, &st), Ok(Incoming::Partial)));
        assert!(matches!(next(b"Q\0\0", max, &st), Ok(Incoming::Partial)));
        assert!(matches!(
            next(&msg(b'Q', b"select 1"), max, &st),
            Ok(Incoming::Malformed { total: 13, tag: b'Q', .. })
        ));
        assert!(matches!(next(b"Y\0\0\0\x04", max, &st), Err(ProtocolError::Client(_))));
        // An authentication message once the session started: at its type byte.
        assert!(matches!(next(b"p\0\0\x10", max, &st), Err(ProtocolError::Client(_))));
        assert!(matches!(next(b"p\0\0\x10", max, &ProtocolState::new()), Ok(Incoming::Partial)));
        // Before start-up is over, a statement waits for it (a password answer does not).
        let mut starting = ProtocolState::new();
        assert!(matches!(next(&msg(b'Q', b"select 1\0"), max, &starting), Ok(Incoming::Partial)));
        assert!(matches!(next(&msg(b'p', b"pw\0"), max, &starting), Ok(Incoming::Message(8, _))));
        starting.on_backend(&Backend::Authentication { code: 3, data: b"" }).unwrap();
        assert!(!waits(&starting, b'Q'), "asked for a password: what comes is the answer");
        starting.on_frontend(&Frontend::AuthResponse(b"pw\0"), None).unwrap();
        assert!(waits(&starting, b'Q'), "after its answer, the next message waits again");
        // While a stopped statement's cancel is on its way, until the server has taken it.
        let mut stopped = ready();
        assert!(!waits(&stopped, b'Q'));
        let later = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let (taken, outstanding) = tokio::sync::watch::channel(false);
        stopped.cancel_outstanding =
            Some(crate::proxy::postgres::state::CancelOutstanding { taken: outstanding, deadline: later });
        assert!(waits(&stopped, b'Q') && waits(&stopped, b'S'), "held until the cancel is taken");
        taken.send(true).unwrap();
        assert!(!waits(&stopped, b'Q'), "taken: the client's messages go on");
        // Nor when the cancel's task is gone without a word, or past the deadline.
        let (gone, outstanding) = tokio::sync::watch::channel(false);
        stopped.cancel_outstanding =
            Some(crate::proxy::postgres::state::CancelOutstanding { taken: outstanding, deadline: later });
        drop(gone);
        assert!(!waits(&stopped, b'Q'), "its sender gone");
        let (_pending, outstanding) = tokio::sync::watch::channel(false);
        let past = tokio::time::Instant::now() - std::time::Duration::from_millis(1);
        stopped.cancel_outstanding =
            Some(crate::proxy::postgres::state::CancelOutstanding { taken: outstanding, deadline: past });
        assert!(!waits(&stopped, b'Q'), "past the deadline");
        // The server closes without a word on a length it will not read.
        assert!(matches!(next(b"Q\0\0\0\x02", max, &st), Err(ProtocolError::ClientFraming(_))));
        assert!(matches!(next(b"S\0\0\x27\x15", max, &st), Err(ProtocolError::ClientFraming(_))));
        assert!(matches!(next(b"S\0\0\x27\x10", max, &st), Ok(Incoming::Partial)));
        // Our own limit is ours to say; beyond the server's, it would say nothing.
        assert!(matches!(next(b"Q\0\x20\0\0", max, &st), Err(ProtocolError::Client(_))));
        assert!(matches!(next(b"Q\x40\0\0\0", max, &st), Err(ProtocolError::ClientFraming(_))));
        assert!(matches!(next(&msg(b'S', b"xx"), max, &st), Ok(Incoming::Malformed { tag: b'S', .. })));
        // During COPY FROM STDIN.
        let mut copying = ready();
        copying.copy = Copy::In;
        assert!(matches!(next(b"Q", max, &copying), Ok(Incoming::BreaksCopy { tag: b'Q' })));
        assert!(matches!(next(b"Y", max, &copying), Ok(Incoming::BreaksCopy { tag: b'Y' })));
        assert!(matches!(next(&msg(b'S', b"xx"), max, &copying), Ok(Incoming::SyncInCopy { total: 7 })));
        assert!(matches!(next(&msg(b'S', b""), max, &copying), Ok(Incoming::SyncInCopy { total: 5 })));
        assert!(matches!(next(&msg(b'd', b"1\n"), max, &copying), Ok(Incoming::Message(7, Frontend::CopyData(_)))));
    }

    #[test]
    fn a_malformed_message_stands_in_as_a_statement_that_fails() {
        let mut st = ready();
        let bytes = msg(b'Q', b"select 1");
        let Ok(m @ Incoming::Malformed { .. }) = next(&bytes, 1 << 20, &st) else { panic!() };
        let s = stand_in(&mut st, m, 13).unwrap();
        assert_eq!((s.consumed, s.ends), (13, false));
        assert_eq!(s.bytes[0], b'Q');
        assert!(st.unfinished().next().is_none(), "the stand-in runs nothing of the client's");
        assert_eq!(st.pending(), 1);
        // A malformed Sync: a failing Parse, then the Sync it still is.
        let mut st = ready();
        let bytes = msg(b'S', b"x");
        let Ok(m @ Incoming::Malformed { .. }) = next(&bytes, 1 << 20, &st) else { panic!() };
        let s = stand_in(&mut st, m, 6).unwrap();
        assert_eq!((s.bytes[0], s.bytes[s.bytes.len() - 5]), (b'P', b'S'));
        assert_eq!(st.pending(), 2);
    }

    #[test]
    fn a_malformed_sync_while_skipping_gets_its_error_before_ready_for_query() {
        let mut st = ready();
        st.on_frontend(&Frontend::Execute { portal: b"p", max_rows: 0 }, None).unwrap();
        st.on_backend(&Backend::ErrorResponse { fields: vec![(b'S', &b"ERROR"[..]), (b'C', b"34000")] }).unwrap();
        assert!(st.skipping_to_sync());
        let bytes = msg(b'S', b"x");
        let Ok(m @ Incoming::Malformed { .. }) = next(&bytes, 1 << 20, &st) else { panic!() };
        let s = stand_in(&mut st, m, 6).unwrap();
        assert_eq!(s.bytes, msg(b'S', b""));
        let Ok(BackendAction::Replace(out)) = st.on_backend(&Backend::ReadyForQuery { status: b'I' }) else {
            panic!("the ReadyForQuery is replaced")
        };
        assert_eq!(out[0], b'E');
        assert!(out.ends_with(&msg(b'Z', b"I")));
        assert_eq!(st.pending(), 0);
    }
}
