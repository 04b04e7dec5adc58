//! The relay of an established session: the client-to-server pump (which has hooks judge
//! statements and forwards a poison in place of a refused one), the server-to-client pump
//! (which feeds the state machine and the hooks), the loop that runs both, and the draining of
//! the server's answers after the client left.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::Notify,
};

use super::{
    SessionContext, SessionError, SessionReport, auth,
    cancel::CancelTarget,
    catalog,
    incoming::{self, Incoming, StandIn},
    startup::{self, SessionStart},
    state::{self, BackendAction, Phase, ProtocolError, ProtocolState, QueryProtocol},
    stream::MaybeTls,
};
use crate::pg::{
    backend::{AUTH_SASL, Backend},
    error::{Severity, error_message, sqlstate},
    frame::{self, put_message},
    frontend::Frontend,
    text,
};
use crate::session::{
    Parameters, ResultColumn, SessionFacts, SqlState,
    hooks::{CopyLayout, Cut, Measure, ResultColumns, ResultFilter, Rewrite, StatementInfo, Step, Verdict},
};
use crate::sql::catalog::FIRST_USER_OID;

/// How long the answer to a stopped statement waits for its cancel to be taken by the server
/// (so that a late cancel cannot hit the client's next statement).
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// PostgreSQL's own limit on a message (MaxAllocSize); streamed messages are bounded by it.
const MAX_STREAMED: usize = 1 << 30;

/// Wakes the client-to-server pump, while it holds a message back for the server
/// (`ClientToServer::wait_for_server`), each time the server's answers are processed.
#[derive(Default)]
struct MovedOn {
    notify: Notify,
    waiting: AtomicBool,
}

/// How far the client-to-server pump got in a chunk: judged up to `pos`, written up to `flushed`.
struct Cursor {
    pos: usize,
    flushed: usize,
}

/// Relays the session until either side ends it.
pub(super) async fn relay(
    ctx: &SessionContext,
    start: SessionStart,
    upstream: MaybeTls,
    channel_binding_holds: bool,
    report: &mut SessionReport,
) -> Result<(), SessionError> {
    let packet = start.packet;
    match (start.stream, upstream) {
        // Plain TCP on both legs (the common case): lock-free borrowed halves.
        (MaybeTls::Plain(mut client), MaybeTls::Plain(mut upstream)) => {
            let (client_r, client_w) = client.split();
            let (up_r, up_w) = upstream.split();
            relay_halves(ctx, &packet, (client_r, client_w), (up_r, up_w), channel_binding_holds, report).await
        }
        (client, upstream) => {
            let client = tokio::io::split(client);
            let upstream = tokio::io::split(upstream);
            relay_halves(ctx, &packet, client, upstream, channel_binding_holds, report).await
        }
    }
}

async fn relay_halves<CR, CW, UR, UW>(
    ctx: &SessionContext,
    packet: &[u8],
    (mut client_r, mut client_w): (CR, CW),
    (mut up_r, mut up_w): (UR, UW),
    channel_binding_holds: bool,
    report: &mut SessionReport,
) -> Result<(), SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let state = Mutex::new(ProtocolState::new());
    up_w.write_all(packet).await.map_err(SessionError::UpstreamIo)?;
    let answered = Notify::new();
    let moved_on = MovedOn::default();
    let mut to_server = ClientToServer {
        ctx,
        state: &state,
        bytes: packet.len() as u64,
        terminated: false,
        answered: &answered,
        moved_on: &moved_on,
        held_input: BytesMut::new(),
        judged_messages: 0,
    };
    let draining = AtomicBool::new(false);
    let mut to_client = ServerToClient::new(ctx, &state, channel_binding_holds, &draining, (&answered, &moved_on));
    // Boxed, not pinned on the stack: when the client stops sending it is kept running (never
    // cancelled mid-message) to drain the server's answers, then dropped to free `client_w`.
    let mut server_side = Box::pin(to_client.pump(&mut up_r, &mut client_w));
    let ended = async {
        match &ctx.live {
            Some(live) => live.ended().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        // An operator ended the session: whatever was held or in flight is abandoned.
        by = ended => Err(SessionError::Terminated(by)),
        r = to_server.pump(&mut client_r, &mut up_w) => match r {
            // The client is gone or done (Terminate, end of stream, reset), but what it sent is
            // running: keep reading the server's answers (recording each statement's outcome)
            // until nothing is owed, as the server itself runs them to completion.
            Ok(Side::Client) | Err(SessionError::ClientIo(_)) => {
                if to_server.terminated {
                    // After Terminate the server reads nothing more; what the client sent with it
                    // is dropped here too (and read, so the close is not a reset).
                    startup::discard_pending(&mut client_r).await;
                }
                // A client that ended its stream (it may still read) sees what the server does
                // with that; one that is gone cannot tell, and the server is asked for all it
                // has, so that every statement's outcome is recorded.
                let how = if r.is_ok() { Drain::EndOfStream } else { Drain::Flush };
                let drained = drain_after_client(&state, &draining, &mut up_w, &mut server_side, how).await;
                match (r, drained) {
                    (_, Err(e @ SessionError::Protocol(_))) => Err(e),
                    (r, _) => r,
                }
            }
            // A violation ends the session, but the statements before it are answered first, as
            // the server runs them before it reads on: with its FATAL, the server sends all it
            // has; where it closes without a word, what it had not sent yet is lost.
            Err(e @ SessionError::Protocol(ProtocolError::Client(_) | ProtocolError::ClientFraming(_))) => {
                let how = if matches!(e, SessionError::Protocol(ProtocolError::Client(_))) {
                    Drain::Flush
                } else {
                    Drain::EndOfStream
                };
                let _ = drain_after_client(&state, &draining, &mut up_w, &mut server_side, how).await;
                Err(e)
            }
            other => other,
        },
        r = &mut server_side => r,
    };
    drop(server_side);
    if let Some((pid, key)) = &to_client.obs.registered {
        ctx.cancels.unregister(*pid, key);
    }
    report.bytes_from_client = to_server.bytes;
    report.bytes_from_server = to_client.bytes;
    {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        report.statements = st.completed;
        report.rows = st.rows;
        for running in st.unfinished() {
            ctx.hooks.on_abandoned(running);
        }
    }
    let phase = state.lock().unwrap_or_else(|p| p.into_inner()).phase;
    match outcome {
        // The client left (after Terminate, or abruptly): the server notices on its own.
        Ok(Side::Client) => Ok(()),
        Ok(Side::Server) if phase == Phase::Terminating || to_client.obs.saw_fatal => Ok(()),
        Ok(Side::Server) | Err(SessionError::UpstreamIo(_)) => {
            let message = "warden: the connection to the database was lost";
            let _ = client_w.write_all(&error_message(Severity::Fatal, sqlstate::CONNECTION_FAILURE, message)).await;
            let _ = client_w.shutdown().await;
            match outcome {
                Err(e) => Err(e),
                _ => Err(SessionError::UpstreamClosed),
            }
        }
        Err(SessionError::Terminated(by)) => {
            // Both legs: what the server runs is cancelled first (it reads nothing else while a
            // statement runs), then it ends its backend on Terminate; the client is told why.
            if let Some((pid, key)) = &to_client.obs.registered {
                let packet = super::cancel::cancel_packet(*pid, key);
                if let Err(e) = super::cancel::forward_cancel(ctx, &packet, *pid, key, true).await {
                    tracing::warn!(database = %ctx.database.name, error = %e, "cancelling a terminated session's statement failed");
                }
            }
            let message = by.client_message();
            let _ = client_w.write_all(&error_message(Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, &message)).await;
            let _ = client_w.shutdown().await;
            let mut terminate = Vec::new();
            put_message(&mut terminate, b'X', b"");
            let _ = up_w.write_all(&terminate).await;
            let _ = up_w.shutdown().await;
            Err(SessionError::Terminated(by))
        }
        Err(SessionError::Protocol(e @ (ProtocolError::Client(_) | ProtocolError::ClientFraming(_)))) => {
            tracing::warn!(database = %ctx.database.name, error = %e, "client protocol violation; session closed");
            // Where the server would say why, so do we; where it would close without a word
            // (a length it does not read), so do we.
            if let ProtocolError::Client(what) = &e {
                let message = format!("warden: protocol violation: {what}");
                let fatal = error_message(Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &message);
                let _ = client_w.write_all(&fatal).await;
                let _ = client_w.shutdown().await;
            }
            // The server's session ends now (its connection slot is not held while we linger).
            let mut terminate = Vec::new();
            put_message(&mut terminate, b'X', b"");
            let _ = up_w.write_all(&terminate).await;
            let _ = up_w.shutdown().await;
            // Our FATAL is read before the close (else a reset could drop it). Without one, the
            // close comes at once, as the server's does: what the client sends next is refused.
            if matches!(e, ProtocolError::Client(_)) {
                startup::linger(&mut client_r).await;
            }
            Err(SessionError::Protocol(e))
        }
        Err(SessionError::Protocol(ProtocolError::Server(what))) => {
            tracing::warn!(database = %ctx.database.name, error = %what, "server protocol violation; session closed");
            let message = format!("warden: the database sent an invalid message: {what}");
            let _ = client_w.write_all(&error_message(Severity::Fatal, sqlstate::INTERNAL_ERROR, &message)).await;
            let _ = client_w.shutdown().await;
            Err(SessionError::Protocol(ProtocolError::Server(what)))
        }
        Err(e) => Err(e),
    }
}

/// How long the server's answers are still read after the client left.
const DRAIN_AFTER_CLIENT: Duration = Duration::from_secs(60);

/// How the server learns that the client is done, before its last answers are read.
enum Drain {
    /// The client's end of stream is passed on (after its Terminate, if it sent one): the
    /// server sends what it has flushed and drops what it buffered, as it does directly.
    EndOfStream,
    /// It is asked for all it buffered (a Flush), as its own FATAL would send it; a COPY FROM
    /// the client is failed first (the server ignores a Flush there, and a CopyFail elsewhere).
    Flush,
}

/// Reads the server's answers to what a departed client (or one that broke the protocol) sent,
/// until none is owed (or the server closes, or `DRAIN_AFTER_CLIENT` passes: those statements'
/// outcome stays unknown).
/// A client that only half-closed still gets its answers, as the server would send them; one
/// that is gone entirely is written nothing more.
async fn drain_after_client<UW, F>(
    state: &Mutex<ProtocolState>,
    draining: &AtomicBool,
    up_w: &mut UW,
    server_side: &mut std::pin::Pin<Box<F>>,
    how: Drain,
) -> Result<Side, SessionError>
where
    UW: AsyncWrite + Unpin,
    F: std::future::Future<Output = Result<Side, SessionError>>,
{
    if state.lock().unwrap_or_else(|p| p.into_inner()).pending() == 0 {
        return Ok(Side::Client);
    }
    draining.store(true, Ordering::Relaxed);
    // Written while the server's answers are read: a server blocked sending to us would
    // otherwise never read it.
    let tell = async {
        match how {
            Drain::EndOfStream => {
                let _ = up_w.shutdown().await;
            }
            Drain::Flush => {
                // Always: the server may be in a COPY the proxy has not seen begin yet, and
                // outside one it ignores a CopyFail.
                let mut flush = Vec::new();
                put_message(&mut flush, b'f', b"client disconnected\0");
                put_message(&mut flush, b'H', b"");
                let _ = up_w.write_all(&flush).await;
            }
        }
        std::future::pending::<()>().await
    };
    let drain = async {
        tokio::select! {
            r = server_side.as_mut() => r,
            () = tell => unreachable!("telling the server never completes"),
        }
    };
    match tokio::time::timeout(DRAIN_AFTER_CLIENT, drain).await {
        Ok(r) => r,
        Err(_) => Ok(Side::Client),
    }
}

/// Which side ended the session cleanly (end of stream).
enum Side {
    Client,
    Server,
}

/// A buffer that grew for one large message gives the memory back once it is empty, so a
/// session does not hold its peak for the rest of its life.
fn release_if_idle(buf: &mut BytesMut, normal: usize) {
    const KEEP_AT_MOST: usize = 1 << 20;
    if buf.is_empty() && buf.capacity() > KEEP_AT_MOST {
        *buf = BytesMut::with_capacity(normal);
    }
}

/// How much room a read is given: small while reads are small, so that an idle session holds
/// little (1,000 idle sessions held 279 KiB each with a fixed 128 KiB per direction), doubling
/// up to 128 KiB while reads fill what they were given (a large result streams in big reads).
struct ReadSize(usize);

impl ReadSize {
    const MIN: usize = 16 * 1024;
    const MAX: usize = 128 * 1024;

    fn new() -> Self {
        ReadSize(Self::MIN)
    }

    /// Makes room in `buf`; returns how much a read may take.
    fn prepare(&self, buf: &mut BytesMut) -> usize {
        if buf.capacity() - buf.len() < self.0 / 4 {
            buf.reserve(self.0);
        }
        (buf.capacity() - buf.len()).min(self.0)
    }

    /// Reads into `buf`, at most the room it is given. Unbounded, a read takes all of the
    /// buffer's spare capacity, which only grows while a stream outruns its rewriting: masking
    /// a 1M-row result went on in reads of up to 4.7 MiB, each rewritten into new buffers of
    /// twice that, and the agent's memory grew by 70 MiB (4-6 MiB unmasked).
    async fn read_from<R: AsyncRead + Unpin>(&mut self, from: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
        let room = self.prepare(buf);
        let n = from.read_buf(&mut (&mut *buf).limit(room)).await?;
        // One that filled its room asks for more next time.
        if n >= room {
            self.0 = (self.0 * 2).min(Self::MAX);
        }
        Ok(n)
    }
}

struct ClientToServer<'a> {
    ctx: &'a SessionContext,
    state: &'a Mutex<ProtocolState>,
    bytes: u64,
    /// The client sent Terminate: nothing it sends after it is read (the server would not).
    terminated: bool,
    /// Woken when the answer to the proxy's own query is complete.
    answered: &'a Notify,
    /// Woken when the server's answers move the session on (start-up, a statement answered).
    moved_on: &'a MovedOn,
    /// What the client sent while a statement of it was held (read to notice its departure;
    /// judged after the hold, in order).
    held_input: BytesMut,
    /// Client messages judged so far (numbers each for the hooks).
    judged_messages: u64,
}

/// While a statement is held, the client's next messages are read ahead up to this much; beyond
/// it the session waits for the decision without reading.
const MAX_HELD_INPUT: usize = 1 << 20;

/// Outstanding answers (Parse, Bind, Execute, Sync... each counts) scanned for a PREPARE or
/// DEALLOCATE ahead of an EXECUTE, at most.
const MAX_SCANNED_FOR_PREPARE: usize = 4096;

/// How long the proxy waits for the answer to its own query before judging without it.
const FACTS_TIMEOUT: Duration = Duration::from_secs(10);

/// A partial message reserves at most this much ahead of the bytes that actually arrived, so
/// a declared length costs memory only as the client really sends it.
const MAX_RESERVE_AHEAD: usize = 1 << 20;

impl ClientToServer<'_> {
    async fn pump<R, W>(&mut self, client: &mut R, upstream: &mut W) -> Result<Side, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let inspect = self.ctx.hooks.inspects_statements();
        let mut buf = BytesMut::new();
        let mut size = ReadSize::new();
        // False right after a hold: what the client sent meanwhile is judged before reading on.
        let mut read = true;
        loop {
            if read && size.read_from(client, &mut buf).await.map_err(SessionError::ClientIo)? == 0 {
                return Ok(Side::Client);
            }
            read = true;
            let max = self.max_message();
            let pos = if inspect {
                self.judged(&buf, max, upstream, client).await?
            } else {
                self.unjudged(&buf, max, upstream).await?
            };
            self.bytes += pos as u64;
            if self.terminated {
                return Ok(Side::Client);
            }
            if pos < buf.len()
                && let Some(h) = frame::header(&buf[pos..], max).ok().flatten()
            {
                // A partial message waits for more bytes: room for them, a bounded step at a time.
                let missing = h.total.saturating_sub(buf.len() - pos);
                buf.reserve(missing.min(MAX_RESERVE_AHEAD));
            }
            buf.advance(pos);
            // A message held back for the server is read once it has answered, not after more
            // bytes.
            if self.wait_for_server(&buf, client, upstream).await? {
                read = false;
            }
            if !self.held_input.is_empty() {
                buf.extend_from_slice(&self.held_input);
                self.held_input = BytesMut::new();
                read = false;
            }
            release_if_idle(&mut buf, ReadSize::MIN);
        }
    }

    /// Waits while the message at the start of `buf` waits for the server (`incoming::waits`).
    /// Returns whether it waited. Waiting to see whether a COPY begins, the server is sent a
    /// Flush first: outside COPY it may hold its answer until asked for it (in COPY it ignores
    /// the Flush). Meanwhile what the client sends is read on (into `held_input`; with `buf`,
    /// at most `MAX_HELD_INPUT` read ahead, else a client whose every statement waits would
    /// make the buffer grow without end), so that a client that breaks off is noticed.
    async fn wait_for_server<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        buf: &[u8],
        client: &mut R,
        upstream: &mut W,
    ) -> Result<bool, SessionError> {
        let mut waited = false;
        let mut flushed = false;
        let mut client_ended = false;
        loop {
            let answered = self.moved_on.notify.notified();
            // Before the check below: an answer processed after it is then signalled.
            self.moved_on.waiting.store(true, Ordering::SeqCst);
            let (waits, copy, mut cancel) = match buf.first() {
                Some(&tag) => {
                    let st = self.lock();
                    (
                        incoming::waits(&st, tag),
                        st.phase == Phase::Ready && st.copy_may_begin(),
                        st.cancel_outstanding.clone(),
                    )
                }
                None => (false, false, None),
            };
            if !waits {
                self.moved_on.waiting.store(false, Ordering::SeqCst);
                return Ok(waited);
            }
            if copy && !flushed {
                let mut flush = Vec::with_capacity(5);
                put_message(&mut flush, b'H', b"");
                upstream.write_all(&flush).await.map_err(SessionError::UpstreamIo)?;
                flushed = true;
            }
            waited = true;
            let read_on = !client_ended && buf.len() + self.held_input.len() < MAX_HELD_INPUT;
            if read_on {
                self.held_input.reserve(16 * 1024);
            }
            // A stopped statement's cancel, taken before its ReadyForQuery (the client may hold
            // a Sync back until it has seen the end of an Execute).
            let taken = async {
                match &mut cancel {
                    Some(cancel) => cancel.released().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = answered => {}
                () = taken => {}
                read = client.read_buf(&mut self.held_input), if read_on => match read {
                    // Its end of stream is met again by the pump's next read, after what it sent.
                    Ok(0) => client_ended = true,
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    /// The largest client message accepted now.
    fn max_message(&self) -> usize {
        match self.lock().phase {
            Phase::Ready | Phase::Terminating => self.ctx.max_message,
            Phase::Authenticating | Phase::Starting => auth::MAX_AUTH_MESSAGE.min(self.ctx.max_message),
        }
    }

    /// No hook looks at statements before they run: record every complete message in the state
    /// machine under one lock and relay the chunk as it came, with stand-ins in place of what
    /// is not a plain message. Returns the bytes consumed.
    async fn unjudged<W: AsyncWrite + Unpin>(
        &mut self,
        buf: &[u8],
        max: usize,
        upstream: &mut W,
    ) -> Result<usize, SessionError> {
        let mut pos = 0;
        loop {
            let (end, stop) = self.record_unjudged(&buf[pos..], max);
            upstream.write_all(&buf[pos..pos + end]).await.map_err(SessionError::UpstreamIo)?;
            pos += end;
            match stop {
                None => return Ok(pos),
                Some(Ok(stand_in)) => {
                    upstream.write_all(&stand_in.bytes).await.map_err(SessionError::UpstreamIo)?;
                    pos += stand_in.consumed;
                    if stand_in.ends {
                        self.terminated = true;
                        return Ok(pos);
                    }
                }
                Some(Err(violation)) => {
                    // What came before it was relayed, as the server runs it before it reads on.
                    self.bytes += pos as u64;
                    return Err(violation.into());
                }
            }
        }
    }

    /// Records the plain messages at the start of `buf`: how many bytes they take, and what
    /// stopped the scan (a stand-in, recorded too, or a violation) unless it was the end of
    /// the complete messages or a Terminate.
    fn record_unjudged(&mut self, buf: &[u8], max: usize) -> (usize, Option<Result<StandIn, ProtocolError>>) {
        let mut forwarded = Vec::new();
        let (pos, stop) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut pos = 0;
            let stop = loop {
                match incoming::next(&buf[pos..], max, &st) {
                    Ok(Incoming::Partial) => break None,
                    Ok(Incoming::Message(total, msg)) => {
                        if let Err(e) = st.on_frontend(&msg, None) {
                            break Some(Err(e));
                        }
                        forwarded.extend(st.newest().cloned());
                        pos += total;
                        if msg == Frontend::Terminate {
                            self.terminated = true;
                            break None;
                        }
                    }
                    Ok(other) => break Some(incoming::stand_in(&mut st, other, buf.len() - pos)),
                    Err(e) => break Some(Err(e)),
                }
            };
            (pos, stop)
        };
        for running in &forwarded {
            self.ctx.hooks.on_forward(running);
            if let Some(live) = &self.ctx.live {
                live.forwarded(&running.sql, running.lexing);
            }
        }
        (pos, stop)
    }

    /// Hooks judge each statement: relay allowed ones, hold or replace others. Writes what it
    /// consumed upstream itself; returns the bytes consumed.
    async fn judged<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        buf: &[u8],
        max: usize,
        upstream: &mut W,
        client: &mut R,
    ) -> Result<usize, SessionError> {
        let mut at = Cursor { pos: 0, flushed: 0 };
        let mut violation = None;
        loop {
            let next = incoming::next(&buf[at.pos..], max, &self.lock());
            let (total, msg) = match next {
                Ok(Incoming::Partial) => break,
                Ok(Incoming::Message(total, msg)) => (total, msg),
                Ok(other) => {
                    let stand_in = match incoming::stand_in(&mut self.lock(), other, buf.len() - at.pos) {
                        Ok(stand_in) => stand_in,
                        Err(e) => {
                            violation = Some(e.into());
                            break;
                        }
                    };
                    upstream.write_all(&buf[at.flushed..at.pos]).await.map_err(SessionError::UpstreamIo)?;
                    upstream.write_all(&stand_in.bytes).await.map_err(SessionError::UpstreamIo)?;
                    at.pos += stand_in.consumed;
                    at.flushed = at.pos;
                    if stand_in.ends {
                        self.terminated = true;
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    violation = Some(e.into());
                    break;
                }
            };
            match self.judge_one(buf, &mut at, total, &msg, upstream, client).await {
                Ok(()) => {}
                Err(e @ SessionError::Protocol(ProtocolError::Client(_) | ProtocolError::ClientFraming(_))) => {
                    violation = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
            at.pos += total;
            if msg == Frontend::Terminate {
                self.terminated = true;
                break;
            }
        }
        // What came before a violation is relayed, as the server runs it before it reads on.
        upstream.write_all(&buf[at.flushed..at.pos]).await.map_err(SessionError::UpstreamIo)?;
        match violation {
            Some(e) => {
                self.bytes += at.pos as u64;
                Err(e)
            }
            None => Ok(at.pos),
        }
    }

    /// Judges the message of `total` bytes at `at.pos` and records it (or the poison sent in its
    /// place), writing upstream what must go before a hold or a poison.
    async fn judge_one<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        buf: &[u8],
        at: &mut Cursor,
        total: usize,
        msg: &Frontend<'_>,
        upstream: &mut W,
        client: &mut R,
    ) -> Result<(), SessionError> {
        if judged_message(msg) && self.ctx.hooks.wants_facts() && self.lock().idle_for_internal() {
            upstream.write_all(&buf[at.flushed..at.pos]).await.map_err(SessionError::UpstreamIo)?;
            at.flushed = at.pos;
            let facts = self.read_facts(upstream).await?;
            self.ctx.hooks.on_facts(facts);
        }
        self.judged_messages += 1;
        let message = self.judged_messages;
        let mut verdict = self.judge(msg, message);
        // A hold may prepare what judging needs and ask again; a hold after a hold is not
        // waited for forever.
        for _ in 0..3 {
            let Verdict::Hold(decision) = verdict else { break };
            // Relay what came before, then wait: the client simply waits too.
            upstream.write_all(&buf[at.flushed..at.pos]).await.map_err(SessionError::UpstreamIo)?;
            at.flushed = at.pos;
            verdict = match self.wait_for(decision, client, buf.len() - at.pos).await? {
                Verdict::AskAgain => self.judge(msg, message),
                decided => decided,
            };
        }
        let refusal = match verdict {
            Verdict::Allow(judgement) => {
                let started = {
                    let mut st = self.lock();
                    st.on_frontend_judged(msg, judgement)?;
                    st.newest().cloned()
                };
                if let Some(running) = started {
                    self.ctx.hooks.on_forward(&running);
                    if let Some(live) = &self.ctx.live {
                        live.forwarded(&running.sql, running.lexing);
                    }
                }
                return Ok(());
            }
            Verdict::Hold(_) | Verdict::AskAgain => error_message(
                Severity::Error,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "warden: the held statement was not decided",
            ),
            Verdict::Deny { sqlstate, message } => error_message(Severity::Error, sqlstate.as_str(), &message),
        };
        upstream.write_all(&buf[at.flushed..at.pos]).await.map_err(SessionError::UpstreamIo)?;
        // Written: never again, whatever happens next.
        at.flushed = at.pos;
        let (poison, poison_bytes) = incoming::poison_for(msg);
        self.lock().on_frontend(&poison, Some(refusal))?;
        upstream.write_all(&poison_bytes).await.map_err(SessionError::UpstreamIo)?;
        at.flushed = at.pos + total;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProtocolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a held statement's decision while reading what the client sends next (kept
    /// for after the hold): a client that leaves ends the session, which drops the hold (and so
    /// cancels its approval request) before anything of it ran.
    /// `unprocessed`: the client's bytes already read and not yet judged (they count toward
    /// the bound on what is read ahead).
    async fn wait_for<R: AsyncRead + Unpin>(
        &mut self,
        mut decision: std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send>>,
        client: &mut R,
        unprocessed: usize,
    ) -> Result<Verdict, SessionError> {
        loop {
            if unprocessed + self.held_input.len() >= MAX_HELD_INPUT {
                return Ok(decision.await);
            }
            self.held_input.reserve(16 * 1024);
            tokio::select! {
                verdict = &mut decision => return Ok(verdict),
                read = client.read_buf(&mut self.held_input) => match read {
                    Ok(0) => {
                        return Err(SessionError::ClientIo(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client disconnected while a statement was held",
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    /// Sends the facts query (the server is idle) and waits for its answer, which the
    /// server-to-client pump keeps from the client.
    async fn read_facts<W: AsyncWrite + Unpin>(
        &mut self,
        upstream: &mut W,
    ) -> Result<Result<SessionFacts, String>, SessionError> {
        let relations = self.ctx.hooks.wants_relations();
        self.lock().on_internal_query();
        upstream.write_all(catalog::message(relations)).await.map_err(SessionError::UpstreamIo)?;
        let deadline = tokio::time::Instant::now() + FACTS_TIMEOUT;
        loop {
            let notified = self.answered.notified();
            if let Some(answer) = self.lock().take_internal_answer() {
                return Ok(match answer.error {
                    Some(error) => Err(format!("the server refused the facts query: {error}")),
                    None => catalog::facts(&answer.rows, relations),
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Judged without them; the answer, when it comes, is still kept from the client.
                return Ok(Err(format!("no answer to the facts query within {} s", FACTS_TIMEOUT.as_secs())));
            }
        }
    }

    /// Asks the hooks about statements; everything else passes.
    fn judge(&self, msg: &Frontend<'_>, message: u64) -> Verdict {
        let hooks = &self.ctx.hooks;
        // An Execute judged again runs with its Bind's parameters: shown with it.
        let mut portal_bind: Option<Arc<[u8]>> = None;
        // The parameters' declared types made by users (a value bound to one is converted by
        // its input function): nearly always none, so nothing is allocated.
        let mut user_types: Vec<u32> = Vec::new();
        let (sql, text_known, protocol, bind, function_oid, lexing, step, portal) = {
            let st = self.lock();
            if st.phase != Phase::Ready {
                return Verdict::Allow(None);
            }
            if st.skipping_to_sync() {
                // Whatever it is, the server discards it unrun.
                return Verdict::Allow(None);
            }
            let now = st.lexing();
            match msg {
                Frontend::Query(sql) => {
                    (Arc::from(text(sql)), true, QueryProtocol::Simple, None, None, now, Step::Run, &b""[..])
                }
                // Parsing can run code (a literal cast to a domain runs the domain's CHECK at
                // parse time): a statement is judged when parsed, and again when bound.
                Frontend::Parse { sql, param_types, .. } => {
                    user_types.extend(param_types.iter().filter(|t| **t >= FIRST_USER_OID));
                    (Arc::from(text(sql)), true, QueryProtocol::Extended, None, None, now, Step::Prepare, &b""[..])
                }
                Frontend::Bind(bind) => {
                    let (sql, known, lexing) = match st.statement(bind.statement) {
                        Some(p) => {
                            user_types.extend(p.param_types.iter().filter(|t| **t >= FIRST_USER_OID));
                            (p.sql.clone(), !p.ambiguous, p.lexing)
                        }
                        None => (Arc::from(""), false, now),
                    };
                    let parameters = Parameters { message: bind.body, decode: state::bind_parameters };
                    (sql, known, QueryProtocol::Extended, Some(parameters), None, lexing, Step::Bind, bind.portal)
                }
                // An Execute of a judged Bind's portal carries that judgement; any other runs
                // something the proxy never judged (a SQL cursor, a refused or unknown Bind).
                Frontend::Execute { portal, .. }
                    if !st.portal_judged(portal)
                        || st.portal_judgement(portal).is_some_and(|j| !hooks.judgement_current(j))
                        || st.portal_may_be_replaced(portal) =>
                {
                    // SQL ahead may have closed it or declared a cursor of its name: what it
                    // runs is not known.
                    match st.portal_text(portal).filter(|_| !st.portal_may_be_replaced(portal)) {
                        // A portal whose Bind's judgement could not be carried (it runs what a name
                        // holds when it runs: SQL EXECUTE, FETCH), or was made under a policy set
                        // or session facts that changed since: judged again now.
                        Some((sql, lexing)) => {
                            portal_bind = st.portal_bind(portal);
                            (sql, true, QueryProtocol::Extended, None, None, lexing, Step::Execute, *portal)
                        }
                        None => {
                            (Arc::from(""), false, QueryProtocol::Extended, None, None, now, Step::Execute, *portal)
                        }
                    }
                }
                Frontend::FunctionCall { function_oid } => (
                    Arc::from(""),
                    false,
                    QueryProtocol::FunctionCall,
                    None,
                    Some(*function_oid),
                    now,
                    Step::Run,
                    &b""[..],
                ),
                _ => return Verdict::Allow(None),
            }
        };
        let prepared = |name: &str| {
            let st = self.lock();
            // Past this many outstanding answers the scan below would make a deep pipeline of
            // EXECUTEs quadratic: the name is taken as not known (the EXECUTE is judged as
            // running an unknown statement, class unknown: fail closed).
            if st.pending() > MAX_SCANNED_FOR_PREPARE {
                return None;
            }
            // A SQL PREPARE or DEALLOCATE the server has not answered yet may change what the
            // name holds by the time this statement runs: not known.
            let changing = st.unfinished().any(|r| {
                let options = r.lexing.options();
                crate::sql::split_statements_with(&r.sql, options).into_iter().any(|part| {
                    match crate::sql::prepared_statement_command(part, options) {
                        Some(
                            crate::sql::PreparedCommand::Prepare { name: n, .. }
                            | crate::sql::PreparedCommand::Deallocate { name: n },
                        ) => n == name || n == "all",
                        // DISCARD ALL drops every prepared statement; code the proxy cannot
                        // read may too.
                        None => {
                            part.trim_start().get(..7).is_some_and(|w| w.eq_ignore_ascii_case("discard"))
                                || r.judgement.as_ref().is_none_or(|j| {
                                    j.parts.iter().any(|p| p.effects.contains(crate::sql::Class::Unknown))
                                })
                        }
                    }
                })
            });
            if changing {
                return None;
            }
            st.statement(name.as_bytes()).filter(|p| !p.ambiguous).map(|p| (p.sql.clone(), p.lexing))
        };
        let bind = bind.or_else(|| {
            portal_bind.as_deref().map(|body| Parameters { message: body, decode: state::bind_parameters })
        });
        hooks.before_statement(&StatementInfo {
            sql: &sql,
            text_known,
            prepared: &prepared,
            protocol,
            parameters: bind,
            parameter_types: &user_types,
            function_oid,
            lexing,
            step,
            portal,
            message,
        })
    }
}

/// Whether a client message is one the hooks judge.
fn judged_message(msg: &Frontend<'_>) -> bool {
    matches!(
        msg,
        Frontend::Query(_)
            | Frontend::Parse { .. }
            | Frontend::Bind(_)
            | Frontend::Execute { .. }
            | Frontend::FunctionCall { .. }
    )
}

struct ServerToClient<'a> {
    ctx: &'a SessionContext,
    state: &'a Mutex<ProtocolState>,
    bytes: u64,
    obs: Observer<'a>,
    /// Bytes read from the server. Kept here, not in `pump`, so that a pump interrupted when the
    /// client leaves can be resumed to drain without losing a partial message.
    buf: BytesMut,
    read_size: ReadSize,
    /// Bytes of a streamed (not decoded) message still to relay.
    streaming: usize,
    /// Bytes of a message being dropped (rows after a volume limit stopped their statement)
    /// still to drop.
    dropping: usize,
    /// A stopped statement's cancel, to be taken by the server before its ReadyForQuery is sent.
    cancel_wait: Option<tokio::sync::watch::Receiver<bool>>,
    /// `buf[..processed]` went through the state machine but is not yet written to the client.
    processed: usize,
    /// Messages to send in place of others: (start, end, bytes) within `buf[..processed]`.
    replacements: Vec<(usize, usize, std::ops::Range<usize>)>,
    /// The bytes of the replacements, one after another.
    arena: Vec<u8>,
    /// What goes to the client when some of it was replaced, assembled for one write.
    out: Vec<u8>,
    /// The client stopped sending: stop once the server owes nothing more.
    draining: &'a AtomicBool,
    /// While draining, a write to the client failed: it is gone, answers are only recorded.
    client_gone: bool,
    /// Woken when the answer to the proxy's own query is complete.
    answered: &'a Notify,
    /// Woken when the server's answers move the session on.
    moved_on: &'a MovedOn,
}

/// `bytes` with each `(start, end, range)` of `replacements` (in order, not overlapping) put in
/// place of `bytes[start..end]` by `arena[range]`, into `out`.
fn splice(bytes: &[u8], replacements: &[(usize, usize, std::ops::Range<usize>)], arena: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(bytes.len() + arena.len());
    let mut copied = 0;
    for (start, end, replacement) in replacements {
        out.extend_from_slice(&bytes[copied..*start]);
        out.extend_from_slice(&arena[replacement.clone()]);
        copied = *end;
    }
    out.extend_from_slice(&bytes[copied..]);
}

impl<'a> ServerToClient<'a> {
    fn new(
        ctx: &'a SessionContext,
        state: &'a Mutex<ProtocolState>,
        channel_binding_holds: bool,
        draining: &'a AtomicBool,
        (answered, moved_on): (&'a Notify, &'a MovedOn),
    ) -> Self {
        Self {
            ctx,
            state,
            bytes: 0,
            obs: Observer {
                ctx,
                saw_fatal: false,
                registered: None,
                channel_binding_holds,
                filter: None,
                copy: None,
                filtering: false,
                limited: false,
                limit: None,
                stopping: None,
                admitted: None,
            },
            buf: BytesMut::new(),
            read_size: ReadSize::new(),
            streaming: 0,
            dropping: 0,
            cancel_wait: None,
            processed: 0,
            replacements: Vec::new(),
            arena: Vec::new(),
            out: Vec::new(),
            draining,
            client_gone: false,
            answered,
            moved_on,
        }
    }

    async fn pump<R, W>(&mut self, upstream: &mut R, client: &mut W) -> Result<Side, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            // What an interrupted pump had processed is written first.
            self.flush(client).await?;
            if let Some(mut heard) = self.cancel_wait.take() {
                // A stopped statement's ReadyForQuery waits until the server took its cancel.
                let _ = tokio::time::timeout(CANCEL_WAIT, heard.wait_for(|taken| *taken)).await;
                // Taken (or given up on): what the client sent meanwhile goes on (`process`
                // wakes the client side).
                self.state.lock().unwrap_or_else(|p| p.into_inner()).cancel_outstanding = None;
                self.process()?;
                continue;
            }
            if self.draining.load(Ordering::Relaxed)
                && self.state.lock().unwrap_or_else(|p| p.into_inner()).pending() == 0
            {
                return Ok(Side::Client);
            }
            if self.read_size.read_from(upstream, &mut self.buf).await.map_err(SessionError::UpstreamIo)? == 0 {
                return Ok(Side::Server);
            }
            self.process()?;
        }
    }

    /// Writes `buf[..processed]` (with its replacements) to the client.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, client: &mut W) -> Result<(), SessionError> {
        if self.processed == 0 {
            return Ok(());
        }
        if !self.client_gone {
            match self.write_processed(client).await {
                Ok(()) => {}
                Err(_) if self.draining.load(Ordering::Relaxed) => self.client_gone = true,
                Err(e) => return Err(SessionError::ClientIo(e)),
            }
        }
        self.replacements.clear();
        self.arena.clear();
        if self.arena.capacity() > 1 << 20 {
            self.arena.shrink_to(128 * 1024);
        }
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::new();
        }
        self.bytes += self.processed as u64;
        self.buf.advance(self.processed);
        self.processed = 0;
        release_if_idle(&mut self.buf, ReadSize::MIN);
        Ok(())
    }

    /// One write, rewritten messages (masked rows) included: each write to a socket is a
    /// segment and may wake the client, so the pieces around a replacement are never written
    /// apart.
    async fn write_processed<W: AsyncWrite + Unpin>(&mut self, client: &mut W) -> io::Result<()> {
        if self.replacements.is_empty() {
            return client.write_all(&self.buf[..self.processed]).await;
        }
        splice(&self.buf[..self.processed], &self.replacements, &self.arena, &mut self.out);
        client.write_all(&self.out).await
    }

    /// Feeds every complete message in `buf` to the state machine and the hooks.
    fn process(&mut self) -> Result<(), SessionError> {
        self.obs.filtering = self.ctx.hooks.filters_results();
        self.obs.limited = self.obs.stopping.is_some() || self.ctx.hooks.limits_results();
        let hooks_rows = self.ctx.hooks.wants_rows();
        let wants_rows = hooks_rows || self.obs.filtering;
        let mut pos = 0;
        let state = self.state;
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.streaming > 0 {
                let take = self.streaming.min(self.buf.len() - pos);
                pos += take;
                self.streaming -= take;
                if self.streaming > 0 {
                    break;
                }
            }
            if self.dropping > 0 {
                let take = self.dropping.min(self.buf.len() - pos);
                self.replacements.push((pos, pos + take, 0..0));
                pos += take;
                self.dropping -= take;
                if self.dropping > 0 {
                    break;
                }
            }
            let Some(h) =
                frame::header(&self.buf[pos..], MAX_STREAMED).map_err(|e| ProtocolError::Server(e.to_string()))?
            else {
                break;
            };
            let available = self.buf.len() - pos;
            let internal = st.answering_internal();
            if self.obs.limited && !internal {
                let row = h.tag == b'D' || h.tag == b'd';
                if self.obs.stopping.is_some() || row {
                    if available < h.total && h.total <= self.ctx.max_message && !row {
                        // A message after a stop is judged whole (a row is counted, or dropped,
                        // from its header: rows stream).
                        self.buf.reserve(h.total - available);
                        break;
                    }
                    match self.limited(&mut st, pos, h.tag, h.total, available)? {
                        Limited::Relay => {}
                        Limited::Consumed(to) => {
                            pos = to;
                            continue;
                        }
                        Limited::Wait => break,
                    }
                }
            }
            if h.tag == b'D' && !wants_rows && !internal {
                // A run of rows: skip headers without decoding, count once (one row at a time
                // when a volume limit counts them).
                let single = self.obs.limited;
                let mut rows = 0u64;
                let mut cursor = pos;
                let mut partial = None;
                while let Some(row) = frame::header(&self.buf[cursor..], MAX_STREAMED)
                    .map_err(|e| ProtocolError::Server(e.to_string()))?
                    .filter(|h| h.tag == b'D')
                {
                    rows += 1;
                    if self.buf.len() - cursor < row.total {
                        partial = Some(row.total - (self.buf.len() - cursor));
                        cursor = self.buf.len();
                        break;
                    }
                    cursor += row.total;
                    if single {
                        break;
                    }
                }
                st.data_rows(rows)?;
                pos = cursor;
                if let Some(rest) = partial {
                    self.streaming = rest;
                    break;
                }
                continue;
            }
            if h.tag == b'D'
                && available >= h.total
                && self.obs.filtering
                && !hooks_rows
                && !st.answering_internal()
                && let Some(running) = st.running().map(|r| r.id)
                && let Some((id, filter)) = &self.obs.filter
                && *id == running
            {
                // A row of a result set whose filter is set up: rewritten without the rest of
                // the per-message work (the hooks look at no row).
                st.data_rows(1)?;
                let at = self.arena.len();
                if super::rewrite::data_row_into(&self.buf[pos + 5..pos + h.total], filter.as_ref(), &mut self.arena) {
                    self.replacements.push((pos, pos + h.total, at..self.arena.len()));
                }
                pos += h.total;
                continue;
            }
            if h.tag == b'd' && !wants_rows {
                st.on_backend(&Backend::CopyData(&[]))?;
                if available >= h.total {
                    pos += h.total;
                } else {
                    self.streaming = h.total - available;
                    pos = self.buf.len();
                    break;
                }
                continue;
            }
            if available < h.total {
                if h.total > self.ctx.max_message {
                    return Err(ProtocolError::Server(format!(
                        "message '{}' of {} bytes exceeds the limit of {}",
                        h.tag as char, h.total, self.ctx.max_message
                    ))
                    .into());
                }
                self.buf.reserve(h.total - available);
                break;
            }
            let msg =
                Backend::decode(h.tag, &self.buf[pos + 5..pos + h.total]).map_err(ProtocolError::server_decode)?;
            if let Some(replacement) = self.obs.observe(&mut st, &msg)? {
                let at = self.arena.len();
                self.arena.extend_from_slice(&replacement);
                self.replacements.push((pos, pos + h.total, at..self.arena.len()));
            }
            pos += h.total;
        }
        self.processed = pos;
        self.obs.report_sent();
        if st.internal_answered() {
            self.answered.notify_one();
        }
        // Only when the client side waits: no cost on the rows' path otherwise.
        if self.moved_on.waiting.load(Ordering::SeqCst) {
            self.moved_on.notify.notify_waiters();
        }
        Ok(())
    }
}

/// What the volume-limit check made of a server message.
enum Limited {
    /// Relay it as usual.
    Relay,
    /// Handled here (dropped, or answered in place): go on at this position.
    Consumed(usize),
    /// Stop processing here for now (a stopped statement's ReadyForQuery waits for its cancel).
    Wait,
}

impl ServerToClient<'_> {
    /// Volume limits: a row is counted against its statement's limit, and one that does not
    /// fit stops the statement (its server work cancelled, its end answered with the cut's
    /// error); after a stop, what the server sends until ReadyForQuery is dropped, save what is
    /// not a statement's (ParameterStatus, notifications, a FATAL error).
    fn limited(
        &mut self,
        st: &mut ProtocolState,
        pos: usize,
        tag: u8,
        total: usize,
        available: usize,
    ) -> Result<Limited, SessionError> {
        let row = tag == b'D' || tag == b'd';
        if self.obs.stopping.is_none() {
            // Counted once, from its header (a row the relay waits to see whole comes again).
            let at = self.bytes + pos as u64;
            if self.obs.admitted == Some(at)
                || (tag == b'd' && copy_framing(&self.buf[pos + 5..pos + available.min(total)], total - 5))
            {
                return Ok(Limited::Relay);
            }
            match self.obs.admit(st, (total - 5) as u64) {
                Some(cut) => {
                    self.stop(st, cut, pos);
                    st.cancel_outstanding = self.obs.stopping.as_ref().and_then(|s| s.cancel.clone()).map(|taken| {
                        state::CancelOutstanding { taken, deadline: tokio::time::Instant::now() + CANCEL_WAIT }
                    });
                }
                None => {
                    self.obs.admitted = Some(at);
                    return Ok(Limited::Relay);
                }
            }
        }
        if row {
            // Dropped: the state machine still counts it.
            if tag == b'D' {
                st.data_rows(1)?;
            } else {
                st.on_backend(&Backend::CopyData(&[]))?;
            }
            let take = total.min(available);
            self.replacements.push((pos, pos + take, 0..0));
            self.dropping = total - take;
            return Ok(Limited::Consumed(pos + take));
        }
        if available < total {
            // Larger than the proxy decodes: the relay's usual error.
            return Ok(Limited::Relay);
        }
        let msg = Backend::decode(tag, &self.buf[pos + 5..pos + total]).map_err(ProtocolError::server_decode)?;
        let Some(stopping) = self.obs.stopping.as_mut() else { return Ok(Limited::Relay) };
        let ends_cut = st.running().is_some_and(|r| (r.id, r.completed) == stopping.statement)
            && matches!(
                msg,
                Backend::CommandComplete { .. }
                    | Backend::ErrorResponse { .. }
                    | Backend::EmptyQueryResponse
                    | Backend::PortalSuspended
                    | Backend::CopyDone
            );
        let fatal = matches!(&msg, Backend::ErrorResponse { fields }
            if matches!(crate::pg::backend::field(fields, b'S'), Some(b"FATAL" | b"PANIC")));
        if fatal
            && !std::mem::replace(&mut stopping.recorded, true)
            && let Some(running) = st.running()
        {
            // The session ends: the cut is recorded all the same.
            self.ctx.hooks.on_stopped(running, &stopping.cut);
        }
        let replacement: Option<Vec<u8>> = if ends_cut && !fatal {
            let first = !stopping.answered;
            stopping.answered = true;
            if !matches!(msg, Backend::CopyDone)
                && !std::mem::replace(&mut stopping.recorded, true)
                && let Some(running) = st.running()
            {
                self.ctx.hooks.on_stopped(running, &stopping.cut);
            }
            st.on_backend(&msg)?;
            for skipped in st.take_skipped() {
                self.ctx.hooks.on_not_run(&skipped);
            }
            Some(if first { stopping.error.clone() } else { Vec::new() })
        } else if let Backend::ReadyForQuery { .. } = msg {
            if let Some(heard) = stopping.cancel.take() {
                self.cancel_wait = Some(heard);
                return Ok(Limited::Wait);
            }
            let stopping = self.obs.stopping.take().expect("stopping");
            let mut out = if stopping.answered { Vec::new() } else { stopping.error };
            match self.obs.observe(st, &msg)? {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => out.extend_from_slice(&self.buf[pos..pos + total]),
            }
            Some(out)
        } else {
            let kept = fatal || matches!(msg, Backend::ParameterStatus { .. } | Backend::NotificationResponse { .. });
            let replaced = self.obs.observe(st, &msg)?;
            if kept { replaced } else { Some(Vec::new()) }
        };
        if let Some(bytes) = replacement {
            let at = self.arena.len();
            self.arena.extend_from_slice(&bytes);
            self.replacements.push((pos, pos + total, at..self.arena.len()));
        }
        Ok(Limited::Consumed(pos + total))
    }

    /// Begins stopping the running statement at `cut` (its row at `pos`): its rows from here on
    /// are dropped, and its server work is cancelled (when the session's cancel key is known),
    /// unless what was read already holds its end: then the server is done with it, and a
    /// cancel could only hit what the client pipelined after it.
    fn stop(&mut self, st: &ProtocolState, cut: Cut, pos: usize) {
        let Some(running) = st.running() else { return };
        let ended = {
            let mut at = pos;
            loop {
                match frame::header(&self.buf[at..], MAX_STREAMED) {
                    Ok(Some(h)) if h.tag == b'D' || h.tag == b'd' => at += h.total,
                    Ok(Some(h)) => break matches!(h.tag, b'C' | b'E' | b's' | b'I' | b'c'),
                    _ => break false,
                }
                if at >= self.buf.len() {
                    break false;
                }
            }
        };
        let cancel = match &self.obs.registered {
            Some((pid, key)) if !ended => Some(super::cancel::cancel_in_background(self.ctx, *pid, key)),
            _ => None,
        };
        self.obs.filter = None;
        self.obs.copy = None;
        self.obs.limit = None;
        self.obs.stopping = Some(Stopping {
            statement: (running.id, running.completed),
            error: error_message(Severity::Error, cut.sqlstate.as_str(), &cut.message),
            cut,
            answered: false,
            recorded: false,
            cancel,
        });
    }
}

/// A statement being stopped at a volume limit.
struct Stopping {
    /// The running statement (its id, and the part of its message).
    statement: (u64, u32),
    /// The ErrorResponse the client gets in place of the statement's end.
    error: Vec<u8>,
    cut: Cut,
    /// The error was sent.
    answered: bool,
    /// The hooks were told.
    recorded: bool,
    /// The cancel's progress (none: no cancel key, or taken).
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Whether a COPY data message (of `len` bytes, `body` what is read of it) is only the binary
/// format's framing: its 19-byte header (which PostgreSQL may send with the first row: then it
/// is a row), its trailer, or both.
fn copy_framing(body: &[u8], len: usize) -> bool {
    const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";
    (len == 2 && body == [0xff, 0xff]) || (matches!(len, 19 | 21) && body.starts_with(HEADER))
}

impl Observer<'_> {
    /// Counts a row of `bytes` of the running statement; the cut when it does not fit.
    fn admit(&mut self, st: &ProtocolState, bytes: u64) -> Option<Cut> {
        let running = st.running()?;
        let key = (running.id, running.completed);
        if self.limit.as_ref().is_none_or(|(k, _)| *k != key) {
            self.report_sent();
            let measure =
                self.ctx.hooks.result_limit(running, running.completed as usize).map(|l| Measure::new(l, bytes));
            self.limit = Some((key, measure));
        }
        let (_, Some(m)) = self.limit.as_mut()? else { return None };
        m.admit(bytes)
    }

    /// Tells the running result's limit what was sent.
    fn report_sent(&mut self) {
        if let Some((_, Some(m))) = self.limit.as_mut() {
            m.report();
        }
    }
}

impl ResultColumns for crate::pg::backend::RowDescription<'_> {
    fn count(&self) -> usize {
        self.len()
    }

    fn name(&self, index: usize) -> Option<&[u8]> {
        self.fields().nth(index).map(|f| f.name)
    }
}

/// What the server-to-client relay learns from the messages it decodes.
struct Observer<'a> {
    ctx: &'a SessionContext,
    /// The server sent a FATAL error (it closes next; no error of ours is added).
    saw_fatal: bool,
    registered: Option<(i32, Vec<u8>)>,
    /// Whether SCRAM -PLUS mechanisms may be offered to the client.
    channel_binding_holds: bool,
    /// The filter of the result set being relayed (masking), with the statement it belongs to.
    filter: Option<(u64, Box<dyn ResultFilter>)>,
    /// COPY data being rewritten.
    copy: Option<super::rewrite::CopyRewriter>,
    /// The hooks filter results (asked once per batch of messages read).
    filtering: bool,
    /// Results may be capped by volume limits, or a statement is being stopped (asked once per
    /// batch).
    limited: bool,
    /// The running result's limit, by statement (id, part); `None` inside: none applies.
    limit: Option<((u64, u32), Option<Measure>)>,
    /// A statement stopped at a volume limit, until its ReadyForQuery.
    stopping: Option<Stopping>,
    /// Where (in the stream from the server) the last row counted against a limit began.
    admitted: Option<u64>,
}

impl Observer<'_> {
    /// Feeds one decoded server message to the state machine and the hooks; returns bytes to
    /// send in its place, if any.
    fn observe(&mut self, st: &mut ProtocolState, msg: &Backend<'_>) -> Result<Option<Vec<u8>>, SessionError> {
        if self.limit.is_some()
            && matches!(
                msg,
                Backend::CommandComplete { .. }
                    | Backend::ErrorResponse { .. }
                    | Backend::PortalSuspended
                    | Backend::EmptyQueryResponse
                    | Backend::CopyDone
                    | Backend::ReadyForQuery { .. }
            )
        {
            // The result ended: what it took from a window and did not send goes back.
            self.report_sent();
            self.limit = None;
        }
        let hooks = &self.ctx.hooks;
        if st.answering_internal() {
            // The proxy's own query: no statement of the client's, nothing for the hooks.
            if let Backend::ErrorResponse { fields } = msg
                && crate::pg::backend::field(fields, b'S') == Some(b"FATAL")
            {
                self.saw_fatal = true;
            }
            return Ok(match st.on_backend(msg)? {
                BackendAction::Forward => None,
                BackendAction::Replace(bytes) => Some(bytes),
            });
        }
        let replaced = if self.filtering {
            self.filter(st, msg)
        } else {
            // Filtering stopped (a policy reload): nothing set up before may be applied later.
            self.filter = None;
            self.copy = None;
            None
        };
        match msg {
            Backend::Authentication { code: AUTH_SASL, data } => {
                st.on_backend(msg)?;
                return auth::sasl_offer(data, self.channel_binding_holds);
            }
            Backend::BackendKeyData { pid, key } => {
                self.ctx.cancels.register(
                    *pid,
                    key,
                    CancelTarget {
                        orig_dst: self.ctx.orig_dst,
                        database: self.ctx.database.clone(),
                        database_index: self.ctx.database_index,
                        dial: self.ctx.dial.clone(),
                        hooks: Some(self.ctx.hooks.clone()),
                    },
                );
                self.registered = Some((*pid, key.to_vec()));
            }
            Backend::ErrorResponse { fields } => {
                if crate::pg::backend::field(fields, b'S') == Some(b"FATAL") {
                    self.saw_fatal = true;
                }
                if !st.replaces_next_error() {
                    // A code that is not a SQLSTATE is recorded as the server's internal error.
                    let code = crate::pg::backend::field(fields, b'C')
                        .and_then(SqlState::parse)
                        .unwrap_or(SqlState::INTERNAL_ERROR);
                    hooks.on_error(st.running(), code);
                }
            }
            Backend::RowDescription(desc) => hooks.on_row_description(st.running(), desc),
            Backend::DataRow(row) => hooks.on_row(st.running(), row),
            Backend::CommandComplete { tag } => hooks.on_complete(st.running(), &text(tag)),
            // An empty query ends without a tag.
            Backend::EmptyQueryResponse => hooks.on_complete(st.running(), ""),
            Backend::PortalSuspended => {
                if let Some(running) = st.running() {
                    hooks.on_suspended(running);
                }
            }
            Backend::FunctionCallResponse(_) => {
                if let Some(running) = st.running() {
                    hooks.on_complete(Some(running), "FUNCTION CALL");
                }
            }
            Backend::ReadyForQuery { .. } => {
                if let Some(running) = st.running().filter(|r| r.protocol == QueryProtocol::Simple) {
                    hooks.on_query_end(running);
                }
            }
            _ => {}
        }
        let action = st.on_backend(msg)?;
        for skipped in st.take_skipped() {
            hooks.on_not_run(&skipped);
        }
        Ok(match action {
            BackendAction::Forward => replaced,
            BackendAction::Replace(bytes) => Some(bytes),
        })
    }

    /// Masking: what the client gets instead of `msg`, if anything else (the state machine
    /// still sees `msg` itself).
    fn filter(&mut self, st: &ProtocolState, msg: &Backend<'_>) -> Option<Vec<u8>> {
        let hooks = &self.ctx.hooks;
        let running = st.running();
        match msg {
            Backend::RowDescription(desc) => {
                // A statement's result set begins (a Describe's answer is not one).
                if let Some(r) = running {
                    let columns = state::result_columns(desc);
                    self.filter =
                        hooks.result_filter(Some(r), r.completed as usize, &columns, false).map(|f| (r.id, f));
                }
                None
            }
            Backend::DataRow(body) => {
                let r = running?;
                if self.filter.as_ref().is_none_or(|(id, _)| *id != r.id) {
                    // An execution whose rows come without a RowDescription: the columns its
                    // statement was described with (and its Bind's formats), or, not known,
                    // as many columns as the row has, of unknown types.
                    let columns: Vec<ResultColumn> = match &r.columns {
                        Some(c) => c.to_vec(),
                        None => {
                            let n = crate::pg::backend::data_row_columns(body).unwrap_or(0) as usize;
                            let binary = r
                                .parameters
                                .as_ref()
                                .and_then(|(bind, _)| crate::pg::frontend::bind_result_formats(bind));
                            (0..n)
                                .map(|i| ResultColumn {
                                    table_oid: 0,
                                    attnum: 0,
                                    type_oid: 0,
                                    binary: binary.as_ref().is_some_and(|f| match f.len() {
                                        0 => false,
                                        1 => f[0] == 1,
                                        _ => f.get(i) == Some(&1),
                                    }),
                                })
                                .collect()
                        }
                    };
                    self.filter =
                        hooks.result_filter(Some(r), r.completed as usize, &columns, false).map(|f| (r.id, f));
                    if self.filter.is_none() {
                        // Nothing to filter for this execution: remembered as such.
                        self.filter = Some((r.id, Box::new(PassAll)));
                    }
                }
                let (_, filter) = self.filter.as_ref()?;
                let mut out = Vec::new();
                super::rewrite::data_row_into(body, filter.as_ref(), &mut out).then_some(out)
            }
            Backend::CommandComplete { .. } | Backend::EmptyQueryResponse | Backend::PortalSuspended => {
                self.filter = None;
                None
            }
            Backend::CopyResponse { tag: b'H' | b'W', binary, columns } => {
                let r = running?;
                let described: Vec<ResultColumn> = (0..*columns)
                    .map(|_| ResultColumn { table_oid: 0, attnum: 0, type_oid: 0, binary: *binary })
                    .collect();
                self.copy = hooks.result_filter(Some(r), r.completed as usize, &described, true).map(|f| {
                    // The data's own format decides binary; CSV only the statement can say.
                    let layout = match (*binary, f.copy_layout()) {
                        (true, _) => CopyLayout::Binary,
                        (false, Some(csv @ CopyLayout::Csv { .. })) => csv,
                        (false, _) => CopyLayout::Text,
                    };
                    super::rewrite::CopyRewriter::new(layout, f)
                });
                None
            }
            Backend::CopyData(data) => self.copy.as_mut().map(|c| c.data(data)),
            Backend::CopyDone => {
                let mut c = self.copy.take()?;
                let mut out = c.finish();
                out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
                Some(out)
            }
            Backend::ErrorResponse { fields } | Backend::NoticeResponse { fields } => {
                if matches!(msg, Backend::ErrorResponse { .. }) {
                    self.filter = None;
                    self.copy = None;
                }
                let tag = if matches!(msg, Backend::ErrorResponse { .. }) { b'E' } else { b'N' };
                hooks.scrub_fields(running, fields).map(|f| super::rewrite::fields_message(tag, &f))
            }
            Backend::NotificationResponse { pid, channel, payload } => {
                hooks.scrub_notification(channel, payload).map(|(c, p)| super::rewrite::notification(*pid, &c, &p))
            }
            _ => None,
        }
    }
}

/// A result set nothing is done to.
struct PassAll;

impl ResultFilter for PassAll {
    fn rewrites(&self, _index: usize) -> bool {
        false
    }

    fn rewrite(&self, _index: usize, _value: &[u8], _out: &mut Vec<u8>) -> Rewrite {
        Rewrite::Keep
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Buf as _, BytesMut};

    use super::{ReadSize, splice};

    /// A read takes no more than its room, however much the buffer could hold and the socket
    /// has: from 16 KiB, doubling while reads fill it, up to 128 KiB.
    #[tokio::test]
    async fn a_read_takes_at_most_its_room_even_from_a_grown_buffer() {
        let data = vec![7u8; 4 << 20];
        let mut from = &data[..];
        let mut buf = BytesMut::with_capacity(8 << 20);
        let mut size = ReadSize::new();
        let mut reads = Vec::new();
        for _ in 0..6 {
            let n = size.read_from(&mut from, &mut buf).await.expect("read");
            reads.push(n);
            buf.advance(n);
        }
        assert_eq!(reads, [16, 32, 64, 128, 128, 128].map(|k| k * 1024));
        assert!(buf.capacity() >= 4 << 20, "the buffer's capacity is not what bounds a read");
    }

    #[test]
    fn replaced_messages_are_spliced_into_one_buffer_in_place() {
        let bytes = b"aaBBBccDDee";
        let arena = b"xyZ";
        let mut out = b"stale".to_vec();
        // A replacement at the start, one in the middle, none at the end.
        splice(bytes, &[(0, 2, 0..1), (2, 5, 1..3)], arena, &mut out);
        assert_eq!(out, b"xyZccDDee");
        splice(bytes, &[(7, 9, 2..3)], arena, &mut out);
        assert_eq!(out, b"aaBBBccZee");
        // One that ends the bytes; an empty replacement drops the message.
        splice(bytes, &[(5, 7, 0..0), (9, 11, 0..2)], arena, &mut out);
        assert_eq!(out, b"aaBBBDDxy");
        splice(bytes, &[], arena, &mut out);
        assert_eq!(out, bytes);
    }
}
