//! The one protocol state machine of a PostgreSQL session. Both relay directions feed it every
//! message they pass, so it always knows the phase, the transaction status, prepared statements
//! and portals, what the server still owes a response to (in order), and COPY sub-protocols.
//!
//! Keeping the expected responses in one ordered queue is what lets the proxy attribute every
//! result to the statement that produced it, and replace a server error with its own in the
//! right place. Desynchronised state is the classic proxy bug: every transition is here.

use std::{collections::HashMap, collections::VecDeque, sync::Arc};

use crate::pg::{
    DecodeError,
    backend::{AUTH_OK, AUTH_SASL_FINAL, Backend},
    frontend::Frontend,
    text,
};

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start-up packet forwarded; authentication exchange under way.
    Authenticating,
    /// AuthenticationOk seen; parameter status and key data until the first ReadyForQuery.
    Starting,
    /// Normal operation.
    Ready,
    /// The client sent Terminate.
    Terminating,
}

pub use crate::session::{QueryProtocol, ResultColumn, Running};

/// A Bind message body's parameters.
pub fn bind_parameters(body: &[u8]) -> Vec<(Option<&[u8]>, bool)> {
    match Frontend::decode(b'B', body) {
        Ok(Frontend::Bind(bind)) => bind.params().collect(),
        _ => Vec::new(),
    }
}

/// A RowDescription's columns.
pub fn result_columns(desc: &crate::pg::backend::RowDescription<'_>) -> Arc<[ResultColumn]> {
    desc.fields()
        .map(|f| ResultColumn { table_oid: f.table_oid, attnum: f.column, type_oid: f.type_oid, binary: f.format == 1 })
        .collect()
}

/// A statement's columns with the result formats a Bind (its body) asks for; `None` when the
/// Bind cannot be read or names formats for another number of columns.
fn with_formats(columns: &[ResultColumn], bind: &[u8]) -> Option<Arc<[ResultColumn]>> {
    let formats = crate::pg::frontend::bind_result_formats(bind)?;
    let binary = |i: usize| match formats.len() {
        0 => Some(false),
        1 => Some(formats[0] == 1),
        n if n == columns.len() => Some(formats[i] == 1),
        _ => None,
    };
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| binary(i).map(|b| ResultColumn { binary: b, ..*c }))
        .collect::<Option<Vec<_>>>()
        .map(Arc::from)
}

/// A portal: the statement it runs and the Bind that created it.
#[derive(Debug, Clone)]
struct Portal {
    sql: Arc<str>,
    lexing: Lexing,
    bind: Arc<[u8]>,
    /// Set when an Execute of it ended in PortalSuspended: the id of that first execution.
    suspended: Option<u64>,
    /// Messages asking for a ReadyForQuery sent before its Bind: a ReadyForQuery 'I' answering
    /// a later one ends its transaction, and so it.
    readies: u64,
    /// What it runs is not known: its statement was not (or not surely) in the table, or it
    /// replaced a portal of its name the proxy believed existed and the server has not answered.
    unknown: bool,
    /// The judgement of its Bind, carried to the Executes that run it.
    judgement: Option<Arc<Judgement>>,
    /// Its result columns with the formats its Bind asked for, when its statement was described.
    columns: Option<Arc<[ResultColumn]>>,
    /// Which creation it is (`ProtocolState::made`): a Describe's answer is its only if the
    /// name still holds what the Describe was sent for.
    made: u64,
}

/// A response the server owes, in order.
#[derive(Debug, Clone)]
enum Expect {
    /// ParseComplete.
    Parse {
        /// The unnamed statement: the server drops the old one before parsing, so a failed
        /// Parse leaves none.
        unnamed: bool,
        /// A named statement the proxy believed existed: the server either refuses the Parse
        /// (42P05, the old statement stays: the undo) or, if it had dropped the old one in a way
        /// the proxy did not see, accepts it (this statement, applied at ParseComplete).
        confirm: Option<(Vec<u8>, Prepared)>,
    },
    /// BindComplete.
    Bind {
        /// The unnamed portal (replaced, like the unnamed statement).
        unnamed: bool,
        /// Likewise for a named portal the proxy believed existed.
        confirm: Option<(Vec<u8>, Portal)>,
    },
    /// ParameterDescription (statements only), then RowDescription or NoData; of a statement
    /// (`S`) or portal (`P`) by name, and which creation of it the name held when it was sent.
    Describe(u8, Vec<u8>, Option<u64>),
    Close,
    /// Rows, then CommandComplete / EmptyQueryResponse / PortalSuspended (or COPY first).
    Execute(Running),
    /// Any number of result sets, then ReadyForQuery.
    SimpleQuery(Running),
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall(Running),
    /// ReadyForQuery.
    Sync,
    /// The proxy's own simple query (`on_internal_query`): every answer up to its
    /// ReadyForQuery is kept from the client.
    Internal,
}

impl Expect {
    fn ends_with_ready(&self) -> bool {
        matches!(self, Self::SimpleQuery(_) | Self::FunctionCall(_) | Self::Sync | Self::Internal)
    }
}

/// Bytes of rows the proxy's own query may return: beyond them its answer is an error.
const MAX_INTERNAL_ROWS: usize = 16 << 20;

/// The answer to the proxy's own query: its rows (DataRow bodies), or the server's error.
#[derive(Debug, Default)]
pub struct InternalAnswer {
    pub rows: Vec<Vec<u8>>,
    pub error: Option<String>,
    bytes: usize,
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    /// The proxy forwarded a poison message in place of a refused one: the server's error for
    /// it is replaced by this ErrorResponse.
    replace_error: Option<Vec<u8>>,
    /// How to take back what this message did to the statements and portals, if the server
    /// never applies it (it failed, or was skipped after an earlier error in its batch).
    undo: Option<Undo>,
    /// The number of messages asking for a ReadyForQuery sent up to and including this one.
    readies: u64,
    /// Numbers the entries, in the order sent.
    seq: u64,
    /// What it runs may declare a cursor (`declares_cursors`): set when it is pushed and when it
    /// is judged.
    portals: bool,
}

/// The answers the server owes, in order, with what the per-message questions need kept up to
/// date as entries come and go (a pipeline of N messages must not cost N² to judge):
/// statements that may change settings (`lexing`), and the Syncs and poisoned Parses (whether
/// the server skips to the next Sync).
#[derive(Debug, Default)]
struct PendingQueue {
    items: VecDeque<Pending>,
    /// Entries for which `unsettling` holds.
    unsettling: usize,
    /// Entries for which `changes_portals` holds.
    portal_changing: usize,
    /// Sequence numbers of the Syncs in the queue, in order.
    syncs: VecDeque<u64>,
    /// Sequence numbers of the Parses forwarded as poison (`replace_error` set), in order.
    poisoned_parses: VecDeque<u64>,
}

/// A statement whose outcome the server has not reported that may change how later text lexes.
fn unsettling(p: &Pending) -> bool {
    match &p.expect {
        Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r) => {
            p.replace_error.is_none() && may_change_settings(r)
        }
        _ => false,
    }
}

/// A statement whose outcome the server has not reported that may declare a cursor
/// (`declares_cursors`, kept in `Pending::portals`): a named portal executed after it may no
/// longer be what its Bind made (`CLOSE p; DECLARE p CURSOR FOR ...` runs another query under
/// its name). Closing or ending portals alone makes an Execute of the name fail, not run
/// something else.
fn changes_portals(p: &Pending) -> bool {
    p.portals && p.replace_error.is_none()
}

/// Whether running what `expect` runs may declare a cursor: SQL DECLARE, code of unknown effect
/// (DO, a function the catalog cannot clear), the tail of a string past `MAX_PARTS` statements
/// (judged as one part), or what is not judged (yet; the relay judges every statement it
/// forwards, and `judge_back` reads the judgement).
fn declares_cursors(expect: &Expect) -> bool {
    let (Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r)) = expect else {
        return false;
    };
    let options = r.lexing.options();
    let declare = |text: &str| {
        let first = crate::sql::Lexer::new(text, options).next_significant();
        first.and_then(|t| text.get(t.range())).is_some_and(|word| word.eq_ignore_ascii_case("declare"))
    };
    match &r.judgement {
        Some(judgement) => {
            judgement.parts.len() >= crate::govern::describe::MAX_PARTS
                || judgement.parts.iter().any(|part| {
                    let a = &part.described.analysis;
                    a.declares.is_some()
                        || part.effects.with(part.class).contains(crate::sql::Class::Unknown)
                        || r.sql.get(part.span.clone()).is_some_and(declare)
                })
        }
        // An empty query string runs nothing.
        None => !matches!(expect, Expect::SimpleQuery(r) if r.sql.trim().is_empty()),
    }
}

fn poisoned_parse(p: &Pending) -> bool {
    p.replace_error.is_some() && matches!(p.expect, Expect::Parse { .. })
}

impl std::ops::Deref for PendingQueue {
    type Target = VecDeque<Pending>;

    fn deref(&self) -> &VecDeque<Pending> {
        &self.items
    }
}

impl PendingQueue {
    /// `runs`: the server will run it (it is not skipped after a refusal's poison).
    fn push_back(&mut self, mut p: Pending, runs: bool) {
        p.portals = runs && declares_cursors(&p.expect);
        self.unsettling += usize::from(unsettling(&p));
        self.portal_changing += usize::from(changes_portals(&p));
        if matches!(p.expect, Expect::Sync) {
            self.syncs.push_back(p.seq);
        }
        if poisoned_parse(&p) {
            self.poisoned_parses.push_back(p.seq);
        }
        self.items.push_back(p);
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let p = self.items.pop_front()?;
        self.forget_front(&p);
        Some(p)
    }

    /// `p`, just taken from the front, no longer counts.
    fn forget_front(&mut self, p: &Pending) {
        self.unsettling -= usize::from(unsettling(p));
        self.portal_changing -= usize::from(changes_portals(p));
        if self.syncs.front() == Some(&p.seq) {
            self.syncs.pop_front();
        }
        if self.poisoned_parses.front() == Some(&p.seq) {
            self.poisoned_parses.pop_front();
        }
    }

    /// The front entry's stand-in error, taken (the server's error for it arrived).
    fn take_front_replace_error(&mut self) -> Option<Vec<u8>> {
        let front = self.items.front()?;
        let (seq, was, was_changing) = (front.seq, unsettling(front), changes_portals(front));
        let error = self.items.front_mut()?.replace_error.take();
        let now = self.items.front().is_some_and(unsettling);
        self.unsettling = self.unsettling - usize::from(was) + usize::from(now);
        let now_changing = self.items.front().is_some_and(changes_portals);
        self.portal_changing = self.portal_changing - usize::from(was_changing) + usize::from(now_changing);
        if error.is_some() && self.poisoned_parses.front() == Some(&seq) {
            self.poisoned_parses.pop_front();
        }
        error
    }

    /// Gives the newest entry's statement (if it is statement `id`) its judgement.
    fn judge_back(&mut self, id: u64, judgement: Arc<Judgement>) {
        let Some(back) = self.items.back_mut() else { return };
        let (was, was_changing) = (unsettling(back), changes_portals(back));
        if let Expect::SimpleQuery(r) | Expect::FunctionCall(r) | Expect::Execute(r) = &mut back.expect
            && r.id == id
        {
            r.judgement = Some(judgement);
            back.portals = declares_cursors(&back.expect);
        }
        let (now, now_changing) = (unsettling(back), changes_portals(back));
        self.unsettling = self.unsettling - usize::from(was) + usize::from(now);
        self.portal_changing = self.portal_changing - usize::from(was_changing) + usize::from(now_changing);
    }

    /// The front entry, for changes that leave its `replace_error` and its statement's
    /// judgement as they are (what the counts above are made of).
    fn front_mut(&mut self) -> Option<&mut Pending> {
        self.items.front_mut()
    }

    /// The newest entry, likewise.
    fn back_mut(&mut self) -> Option<&mut Pending> {
        self.items.back_mut()
    }

    /// Every entry, likewise.
    fn iter_mut(&mut self) -> std::collections::vec_deque::IterMut<'_, Pending> {
        self.items.iter_mut()
    }

    /// In debug builds (short queues), the kept counts against a scan.
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        if self.items.len() < 256 {
            debug_assert_eq!(self.unsettling, self.items.iter().filter(|p| unsettling(p)).count());
            debug_assert_eq!(self.portal_changing, self.items.iter().filter(|p| changes_portals(p)).count());
            let syncs: Vec<u64> =
                self.items.iter().filter(|p| matches!(p.expect, Expect::Sync)).map(|p| p.seq).collect();
            let parses: Vec<u64> = self.items.iter().filter(|p| poisoned_parse(p)).map(|p| p.seq).collect();
            debug_assert!(self.syncs.iter().eq(syncs.iter()) && self.poisoned_parses.iter().eq(parses.iter()));
        }
    }

    /// Whether a poisoned Parse was sent after the last Sync in the queue.
    fn poisoned_since_sync(&self) -> bool {
        self.debug_check();
        match (self.poisoned_parses.back(), self.syncs.back()) {
            (Some(parse), Some(sync)) => parse > sync,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether a statement that may declare a cursor is still owed an outcome.
    fn any_portal_changing(&self) -> bool {
        self.debug_check();
        self.portal_changing > 0
    }

    /// Whether a statement that may change settings is still owed an outcome.
    fn any_unsettling(&self) -> bool {
        self.debug_check();
        self.unsettling > 0
    }
}

/// A change to the statement or portal tables, applied when the client's message is sent
/// (later messages of the same flight depend on it) and taken back if the server skips it.
#[derive(Debug)]
enum Undo {
    Statement { name: Vec<u8>, previous: Option<Prepared> },
    Portal { name: Vec<u8>, previous: Option<Portal> },
}

/// The server keys prepared statements and portals by the first `NAMEDATALEN - 1` bytes of their
/// names: two names that share them are one object.
fn key(name: &[u8]) -> &[u8] {
    &name[..name.len().min(63)]
}

/// Prepared statements or portals by name, the unnamed one apart. Drivers run nearly every
/// statement through the unnamed portal, and a map keyed by `Vec<u8>` compares an empty key with
/// `memcmp` of zero bytes at a dangling pointer: glibc's AVX-512 `memcmp` then loads from it
/// under a mask, which costs a fault-suppression assist (about 70 ns against 1.5 measured here,
/// several times per statement). The unnamed one is never compared.
#[derive(Debug)]
struct Named<T> {
    unnamed: Option<T>,
    named: HashMap<Vec<u8>, T>,
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named { unnamed: None, named: HashMap::new() }
    }
}

impl<T> Named<T> {
    fn get(&self, name: &[u8]) -> Option<&T> {
        if name.is_empty() { self.unnamed.as_ref() } else { self.named.get(name) }
    }

    fn get_mut(&mut self, name: &[u8]) -> Option<&mut T> {
        if name.is_empty() { self.unnamed.as_mut() } else { self.named.get_mut(name) }
    }

    fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    fn insert(&mut self, name: Vec<u8>, value: T) -> Option<T> {
        if name.is_empty() { self.unnamed.replace(value) } else { self.named.insert(name, value) }
    }

    fn remove(&mut self, name: &[u8]) -> Option<T> {
        if name.is_empty() { self.unnamed.take() } else { self.named.remove(name) }
    }

    fn len(&self) -> usize {
        self.named.len() + usize::from(self.unnamed.is_some())
    }

    fn clear(&mut self) {
        self.unnamed = None;
        self.named.clear();
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.unnamed.iter_mut().chain(self.named.values_mut())
    }

    fn retain(&mut self, mut keep: impl FnMut(&[u8], &mut T) -> bool) {
        if self.unnamed.as_mut().is_some_and(|v| !keep(b"", v)) {
            self.unnamed = None;
        }
        self.named.retain(|name, v| keep(name, v));
    }
}

/// Two names the same, an empty one compared without `memcmp` (see `Named`).
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Prepared statements and portals tracked per session, at most: a session that keeps creating
/// them without closing them ends with a protocol error rather than growing without bound.
const MAX_TRACKED: usize = 100_000;
/// Answers the server may owe one session at most: a client that pipelines more without reading
/// is refused rather than held in memory (a real pipeline stays far below).
const MAX_PENDING: usize = 200_000;

/// Whether a statement may change how later text is lexed (a SET, a ROLLBACK undoing one, code
/// the proxy cannot read); one forwarded without a judgement may.
fn may_change_settings(r: &Running) -> bool {
    r.judgement.as_ref().is_none_or(|j| j.may_change_settings())
}

/// COPY sub-protocol in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    None,
    /// Client sends CopyData until CopyDone / CopyFail.
    In,
    /// Server sends CopyData until CopyDone.
    Out,
    Both,
}

/// What the backend relay should do with a server message.
#[derive(Debug, PartialEq, Eq)]
pub enum BackendAction {
    Forward,
    /// Send these bytes instead of the message.
    Replace(Vec<u8>),
}

/// A protocol violation: who caused it and what it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("client: {0}")]
    Client(String),
    /// The client broke the framing where the server would close without a word (a length it
    /// will not read).
    #[error("client: {0}")]
    ClientFraming(String),
    #[error("server: {0}")]
    Server(String),
}

impl ProtocolError {
    pub fn client_decode(e: DecodeError) -> Self {
        Self::Client(e.to_string())
    }
    pub fn server_decode(e: DecodeError) -> Self {
        Self::Server(e.to_string())
    }
}

/// A prepared statement as the client created it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Its text (empty while it is ambiguous: the proxy cannot tell which of two texts the
    /// server holds under this name until the server answers; a statement run from it meanwhile
    /// is judged and recorded as unknown).
    pub sql: Arc<str>,
    pub param_types: Vec<u32>,
    /// How the server lexed it: at Parse time, with the session's settings then.
    pub lexing: Lexing,
    /// Which text the server holds under this name is not known (see `sql`).
    pub ambiguous: bool,
    /// Its result columns, once the server described it (formats not yet chosen: text).
    pub columns: Option<Arc<[ResultColumn]>>,
    /// Which creation it is (as a portal's).
    made: u64,
}

use crate::session::Judgement;
pub use crate::session::Lexing;

/// A stopped statement's cancel on its way to the server.
#[derive(Debug, Clone)]
pub struct CancelOutstanding {
    pub taken: tokio::sync::watch::Receiver<bool>,
    /// The client's messages wait no longer than this.
    pub deadline: tokio::time::Instant,
}

impl CancelOutstanding {
    /// Whether the client's messages still wait for it.
    pub fn holds(&self) -> bool {
        !*self.taken.borrow() && self.taken.has_changed().is_ok() && tokio::time::Instant::now() < self.deadline
    }

    /// Until it no longer holds (taken, its sender gone, or the deadline passed).
    pub async fn released(&mut self) {
        let _ = tokio::time::timeout_at(self.deadline, self.taken.wait_for(|taken| *taken)).await;
    }
}

/// The session's protocol state.
#[derive(Debug)]
pub struct ProtocolState {
    pub phase: Phase,
    /// 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block.
    pub tx_status: u8,
    pub copy: Copy,
    /// The server asked the client to authenticate (what the client sends now is its answer).
    pub auth_asked: bool,
    /// A statement stopped at a volume limit is being cancelled: what the client sends next
    /// waits until the server has taken the cancel (the receiver sees true, or its sender is
    /// gone), which could otherwise land on it, or until the deadline.
    pub cancel_outstanding: Option<CancelOutstanding>,
    statements: Named<Prepared>,
    /// Portal name -> the SQL it runs.
    portals: Named<Portal>,
    /// SQL declared a cursor in this session: a named portal's Bind is known only once the
    /// server accepts it (the name may be a cursor's).
    sql_cursors: bool,
    pending: PendingQueue,
    /// Server-side process id and cancel key, once the server sent them.
    pub backend_key: Option<(i32, Vec<u8>)>,
    /// Statements the server completed (CommandComplete / EmptyQueryResponse).
    pub completed: u64,
    /// Rows the server returned.
    pub rows: u64,
    /// The session's `standard_conforming_strings`, as the server reports it: when off, a
    /// backslash escapes in plain string literals, which changes how statements are lexed.
    pub standard_conforming_strings: bool,
    /// The session's client encoding lets ASCII bytes appear inside multibyte characters.
    pub client_encoding_unsafe: bool,
    /// The id of the last statement forwarded.
    last_id: u64,
    /// The last `on_frontend` call started a statement (`newest`).
    started_now: bool,
    /// Statements forwarded but skipped by the server after an earlier error in their batch;
    /// taken by the relay (`take_skipped`) to report that they did not run.
    skipped: Vec<Running>,
    /// An extended-protocol error left the server skipping every message until Sync, and no
    /// Sync had been sent yet: client messages up to the next Sync are not run.
    ignoring_till_sync: bool,
    /// Messages asking for a ReadyForQuery (Sync, Query, FunctionCall) sent so far.
    readies_asked: u64,
    /// Entries pushed onto `pending` so far (the next one's `seq`).
    pushed: u64,
    /// Statements and portals created so far (each one's `made`).
    made: u64,
    /// The text last looked at by `may_copy`, and what it said: executions of one portal share
    /// one text, which is not read again for each.
    copy_checked: Option<(Arc<str>, bool)>,
    /// The newest entry pushed that may begin a COPY FROM STDIN (`copy_may_begin`).
    copy_candidate: Option<u64>,
    /// A statement that may change settings completed and its ReadyForQuery has not come yet:
    /// the server reports changed settings (ParameterStatus) only just before it.
    settings_in_flight: bool,
    /// The server's and the client's encodings (reported by the server): when they differ the
    /// server converts names before it keys them.
    server_encoding: Vec<u8>,
    client_encoding: Vec<u8>,
    /// An extended-protocol message was sent since the last Sync: the server is inside a batch
    /// (an implicit transaction, the unnamed statement and portals live), even when it has
    /// answered everything flushed so far.
    batch_open: bool,
    /// The answer to the proxy's own query so far, and once its ReadyForQuery came.
    internal: Option<InternalAnswer>,
    internal_done: Option<InternalAnswer>,
}

impl Default for ProtocolState {
    fn default() -> Self {
        Self::new()
    }
}

impl ProtocolState {
    pub fn new() -> Self {
        Self {
            phase: Phase::Authenticating,
            tx_status: b'I',
            copy: Copy::None,
            auth_asked: false,
            cancel_outstanding: None,
            statements: Named::default(),
            portals: Named::default(),
            sql_cursors: false,
            pending: PendingQueue::default(),
            backend_key: None,
            completed: 0,
            rows: 0,
            standard_conforming_strings: true,
            client_encoding_unsafe: false,
            last_id: 0,
            started_now: false,
            skipped: Vec::new(),
            ignoring_till_sync: false,
            batch_open: false,
            readies_asked: 0,
            pushed: 0,
            made: 0,
            copy_checked: None,
            copy_candidate: None,
            settings_in_flight: false,
            server_encoding: Vec::new(),
            client_encoding: Vec::new(),
            internal: None,
            internal_done: None,
        }
    }

    fn start(&mut self, sql: Arc<str>, protocol: QueryProtocol) -> Running {
        self.last_id += 1;
        Running::new(self.last_id, sql, protocol, self.lexing())
    }

    /// How a statement sent now is lexed by the server: the settings known now, settled when no
    /// statement is outstanding that could change them first (a pipelined `SET`).
    pub fn lexing(&self) -> Lexing {
        Lexing {
            standard_conforming_strings: self.standard_conforming_strings,
            dialect: crate::session::Dialect::Postgres,
            settled: !self.settings_in_flight && !self.pending.any_unsettling(),
            ascii_safe: !self.client_encoding_unsafe,
        }
    }

    /// The statement the last client message started (a Query, Execute or FunctionCall just
    /// recorded with `on_frontend`), if it started one.
    pub fn newest(&self) -> Option<&Running> {
        if !self.started_now {
            return None;
        }
        match self.pending.back().map(|p| &p.expect) {
            Some(Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r)) if r.id == self.last_id => {
                Some(r)
            }
            _ => None,
        }
    }

    /// Statements the server skipped after an error in their batch, since the last call.
    pub fn take_skipped(&mut self) -> Vec<Running> {
        std::mem::take(&mut self.skipped)
    }

    /// Statements forwarded whose outcome the server has not reported yet.
    pub fn unfinished(&self) -> impl Iterator<Item = &Running> {
        self.pending.iter().filter_map(|p| match &p.expect {
            Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r) if p.replace_error.is_none() => {
                Some(r)
            }
            _ => None,
        })
    }

    /// The SQL a portal runs (the unnamed portal is "").
    pub fn portal_sql(&self, portal: &[u8]) -> Option<Arc<str>> {
        self.portals.get(key(portal)).map(|p| p.sql.clone())
    }

    /// A prepared statement by name (the unnamed statement is "").
    pub fn statement(&self, name: &[u8]) -> Option<&Prepared> {
        self.statements.get(key(name))
    }

    /// Whether the next ErrorResponse will be replaced (it answers a poison message).
    pub fn replaces_next_error(&self) -> bool {
        self.pending.front().is_some_and(|p| p.replace_error.is_some())
    }

    /// How many responses the server still owes.
    /// Whether `n` more messages awaiting answers can be recorded.
    pub fn room_for(&self, n: usize) -> bool {
        self.pending.len() + n <= MAX_PENDING
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The statement whose results are arriving now, if any.
    pub fn running(&self) -> Option<&Running> {
        match self.pending.front().map(|p| &p.expect) {
            Some(Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r)) => Some(r),
            _ => None,
        }
    }

    /// Records a client message the hooks judged, and carries their judgement: with the
    /// statement it starts (Query, FunctionCall, Execute) or the portal it creates (Bind).
    pub fn on_frontend_judged(
        &mut self,
        msg: &Frontend<'_>,
        judgement: Option<Arc<Judgement>>,
    ) -> Result<(), ProtocolError> {
        // A message the server discards (an error came before it) is not recorded: its
        // judgement belongs to nothing.
        let ignored = self.ignoring_till_sync;
        self.on_frontend(msg, None)?;
        let Some(judgement) = judgement.filter(|_| !ignored) else { return Ok(()) };
        match msg {
            // What `EXECUTE p` or `FETCH c` runs is looked up when the Execute runs, and
            // messages between the Bind and it can change that: such a portal is judged again
            // at its Execute.
            Frontend::Bind(_) if judgement.session_dependent() => {}
            Frontend::Bind(bind) => {
                let name = key(bind.portal);
                if let Some(Pending { expect: Expect::Bind { confirm: Some((_, portal)), .. }, .. }) =
                    self.pending.back_mut()
                {
                    // A replacement of a portal the server may refuse: judged when it is accepted.
                    portal.judgement = Some(judgement);
                } else if let Some(portal) = self.portals.get_mut(name) {
                    portal.judgement = Some(judgement);
                }
            }
            Frontend::Query(_) | Frontend::FunctionCall { .. } | Frontend::Execute { .. } => {
                self.pending.judge_back(self.last_id, judgement);
            }
            _ => {}
        }
        Ok(())
    }

    /// The answer to a Describe at the front: the statement's or portal's columns.
    fn described(&mut self, columns: Arc<[ResultColumn]>) {
        let Some(Expect::Describe(kind, name, made)) = self.pending.front().map(|p| &p.expect) else {
            return;
        };
        // Only to what the name held when the Describe was sent: a Parse or Bind sent after it
        // (already applied to the tables) made another statement or portal of the name.
        let made = *made;
        match kind {
            b'S' => {
                if let Some(s) = self.statements.get_mut(name).filter(|s| Some(s.made) == made) {
                    s.columns = Some(columns);
                }
            }
            _ => {
                let name = name.clone();
                if let Some(p) = self.portals.get_mut(&name).filter(|p| Some(p.made) == made) {
                    p.columns = Some(columns.clone());
                }
                // Executions of it already sent (pipelined after the Describe) learn them too,
                // up to the next message that may bind the name anew (a Bind, a Close, a simple
                // query, which drops the unnamed portal, a statement that may declare a cursor):
                // the executions after it may run another portal of the name, with its own
                // columns and result formats.
                for pending in self.pending.iter_mut().skip(1) {
                    let changes = changes_portals(pending);
                    match &mut pending.expect {
                        Expect::Bind { .. } | Expect::Close | Expect::SimpleQuery(_) => break,
                        Expect::Execute(r) if same_name(key(&r.portal), &name) && r.columns.is_none() => {
                            r.columns = Some(columns.clone());
                        }
                        _ => {}
                    }
                    // What it runs may replace the portal for the executions after it.
                    if changes {
                        break;
                    }
                }
            }
        }
    }

    /// Whether the proxy may send a query of its own now without changing what the client's
    /// messages do: the server owes nothing, is outside a transaction block, and no extended
    /// batch or COPY is open.
    pub fn idle_for_internal(&self) -> bool {
        self.phase == Phase::Ready
            && self.pending.is_empty()
            && self.tx_status == b'I'
            && self.copy == Copy::None
            && !self.ignoring_till_sync
            && !self.batch_open
            && self.internal.is_none()
    }

    /// The proxy sent a simple query of its own: its answers are kept from the client and
    /// collected (`take_internal_answer`).
    pub fn on_internal_query(&mut self) {
        self.readies_asked += 1;
        self.internal = Some(InternalAnswer::default());
        self.internal_done = None;
        self.pushed += 1;
        self.pending.push_back(
            Pending {
                expect: Expect::Internal,
                replace_error: None,
                undo: None,
                readies: self.readies_asked,
                seq: self.pushed,
                portals: false,
            },
            true,
        );
    }

    /// The server is answering the proxy's own query.
    pub fn answering_internal(&self) -> bool {
        matches!(self.pending.front().map(|p| &p.expect), Some(Expect::Internal))
    }

    /// Whether the answer to the proxy's own query is complete and not yet taken.
    pub fn internal_answered(&self) -> bool {
        self.internal_done.is_some()
    }

    /// The complete answer to the proxy's own query, once.
    pub fn take_internal_answer(&mut self) -> Option<InternalAnswer> {
        self.internal_done.take()
    }

    /// A server message answering the proxy's own query: kept from the client (`Replace` with
    /// nothing), but for what is not an answer (settings changes, notifications).
    fn on_internal_backend(&mut self, msg: &Backend<'_>) -> Result<Option<BackendAction>, ProtocolError> {
        let answer = self.internal.get_or_insert_with(InternalAnswer::default);
        match msg {
            Backend::ParameterStatus { .. } | Backend::NotificationResponse { .. } => return Ok(None),
            Backend::RowDescription(_)
            | Backend::CommandComplete { .. }
            | Backend::EmptyQueryResponse
            | Backend::NoticeResponse { .. } => {}
            Backend::DataRow(body) => {
                answer.bytes += body.len();
                if answer.bytes > MAX_INTERNAL_ROWS {
                    answer.rows.clear();
                    answer.error.get_or_insert_with(|| format!("more than {MAX_INTERNAL_ROWS} bytes of rows"));
                } else if answer.error.is_none() {
                    answer.rows.push(body.to_vec());
                }
            }
            Backend::ErrorResponse { fields } if crate::pg::backend::field(fields, b'S') == Some(b"FATAL") => {
                // The server ends the session: the client is told why.
                answer.error = Some("the server ended the session".into());
                self.internal_done = self.internal.take();
                return Ok(Some(BackendAction::Forward));
            }
            Backend::ErrorResponse { fields } => {
                let code = crate::pg::backend::field(fields, b'C').map(text).unwrap_or_default();
                let message = crate::pg::backend::field(fields, b'M').map(text).unwrap_or_default();
                answer.error = Some(format!("{code}: {message}"));
            }
            Backend::ReadyForQuery { status } => {
                self.tx_status = *status;
                self.pending.pop_front();
                self.internal_done = self.internal.take();
            }
            _ => {
                return Err(ProtocolError::Server(
                    "a message other than rows, a result or an error in the answer to the proxy's own query".into(),
                ));
            }
        }
        Ok(Some(BackendAction::Replace(Vec::new())))
    }

    /// Whether the server will skip every message up to the next Sync: a poison standing in for
    /// a refused extended-protocol message was sent since the last one (its error makes the
    /// server discard the rest of the batch), or an error already arrived.
    pub fn skipping_to_sync(&self) -> bool {
        self.ignoring_till_sync || self.pending.poisoned_since_sync()
    }

    /// Whether the server may key `name` differently: it converts names from the client's
    /// encoding to its own first, so two names the proxy tells apart can be one to the server
    /// (and the other way round) when the encodings differ and the name is not ASCII.
    fn name_converted(&self, name: &[u8]) -> bool {
        !name.is_ascii() && self.client_encoding != self.server_encoding
    }

    /// The text a portal runs and how it lexed, if the proxy knows it.
    pub fn portal_text(&self, portal: &[u8]) -> Option<(Arc<str>, Lexing)> {
        self.portals.get(key(portal)).filter(|p| !p.unknown).map(|p| (p.sql.clone(), p.lexing))
    }

    /// The Bind message body that made `portal` (its parameters), when its text is known.
    pub fn portal_bind(&self, portal: &[u8]) -> Option<Arc<[u8]>> {
        self.portals.get(key(portal)).filter(|p| !p.unknown).map(|p| p.bind.clone())
    }

    /// The judgement a portal's Bind carries to its Executes.
    pub fn portal_judgement(&self, portal: &[u8]) -> Option<&Arc<Judgement>> {
        self.portals.get(key(portal)).filter(|p| !p.unknown).and_then(|p| p.judgement.as_ref())
    }

    /// Whether SQL still running ahead may have declared a cursor under the named portal's
    /// name (after closing it) by the time an Execute of it sent now runs: then what it runs is
    /// not known (the unnamed portal cannot be a cursor's).
    pub fn portal_may_be_replaced(&self, portal: &[u8]) -> bool {
        !portal.is_empty() && self.pending.any_portal_changing()
    }

    /// Whether an Execute of `portal` runs what a judged Bind created.
    pub fn portal_judged(&self, portal: &[u8]) -> bool {
        self.portals.get(key(portal)).is_some_and(|p| !p.unknown && p.judgement.is_some())
    }

    /// Records a client message the relay is about to forward. `replace_error` is set when the
    /// message forwarded is a poison standing in for a refused one.
    pub fn on_frontend(&mut self, msg: &Frontend<'_>, replace_error: Option<Vec<u8>>) -> Result<(), ProtocolError> {
        self.started_now = replace_error.is_none()
            && matches!(msg, Frontend::Query(_) | Frontend::Execute { .. } | Frontend::FunctionCall { .. });
        let push_undo = |s: &mut Self, expect: Expect, replace_error: Option<Vec<u8>>, undo: Option<Undo>| {
            if expect.ends_with_ready() {
                s.readies_asked += 1;
            }
            s.pushed += 1;
            let may_begin_copy = replace_error.is_none()
                && match &expect {
                    // A portal's text may be unknown (empty); an empty query string runs nothing.
                    Expect::Execute(r) => r.sql.is_empty() || s.may_copy(&r.sql),
                    Expect::SimpleQuery(r) => s.may_copy(&r.sql),
                    _ => false,
                };
            if may_begin_copy {
                s.copy_candidate = Some(s.pushed);
            }
            let seq = s.pushed;
            let runs = !s.skipping_to_sync();
            let pending = Pending { expect, replace_error, undo, readies: s.readies_asked, seq, portals: false };
            s.pending.push_back(pending, runs);
        };
        let push =
            |s: &mut Self, expect: Expect, replace_error: Option<Vec<u8>>| push_undo(s, expect, replace_error, None);
        match self.phase {
            Phase::Authenticating => {
                return match msg {
                    Frontend::AuthResponse(_) => {
                        // Answered: what the client sends next waits for the server's next step.
                        self.auth_asked = false;
                        Ok(())
                    }
                    Frontend::Terminate => {
                        self.phase = Phase::Terminating;
                        Ok(())
                    }
                    _ => Err(ProtocolError::Client(
                        "message other than an authentication response during authentication".into(),
                    )),
                };
            }
            Phase::Starting => {
                return Err(ProtocolError::Client("message sent before the server was ready".into()));
            }
            Phase::Terminating => {
                return Err(ProtocolError::Client("message after Terminate".into()));
            }
            Phase::Ready => {}
        }
        if let Frontend::AuthResponse(_) = msg {
            // Not a message type of a started session: the server ends it, skipping or not.
            return Err(ProtocolError::Client("authentication response after authentication".into()));
        }
        if self.ignoring_till_sync {
            // The server discards everything up to Sync (Terminate ends the session).
            match msg {
                Frontend::Sync => self.ignoring_till_sync = false,
                Frontend::Terminate => self.phase = Phase::Terminating,
                _ => {
                    self.started_now = false;
                    return Ok(());
                }
            }
            if self.phase == Phase::Terminating {
                return Ok(());
            }
        }
        match msg {
            Frontend::Sync => self.batch_open = false,
            Frontend::Parse { .. }
            | Frontend::Bind(_)
            | Frontend::Describe { .. }
            | Frontend::Execute { .. }
            | Frontend::Close { .. }
            | Frontend::Flush => self.batch_open = true,
            _ => {}
        }
        if self.copy == Copy::In {
            match msg {
                // The server ignores Sync and Flush during COPY FROM STDIN.
                Frontend::Sync | Frontend::Flush => return Ok(()),
                Frontend::CopyData(_) | Frontend::CopyDone | Frontend::CopyFail(_) | Frontend::Terminate => {}
                // The server reads and discards any other message there, failing the COPY: what
                // it did would never be answered, and every later answer would be taken for the
                // wrong statement's.
                _ => return Err(ProtocolError::Client("a message other than COPY data during COPY FROM STDIN".into())),
            }
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(ProtocolError::Client(format!(
                "more than {MAX_PENDING} messages awaiting the server's answers: the client does not read them"
            )));
        }
        if self.statements.len() + self.portals.len() >= MAX_TRACKED
            && replace_error.is_none()
            && matches!(msg, Frontend::Parse { .. } | Frontend::Bind(_))
        {
            return Err(ProtocolError::Client(format!(
                "more than {MAX_TRACKED} prepared statements and portals open in one session"
            )));
        }
        match msg {
            Frontend::Query(sql) => {
                let running = self.start(Arc::from(text(sql)), QueryProtocol::Simple);
                push(self, Expect::SimpleQuery(running), replace_error);
            }
            Frontend::Parse { name, sql, param_types } => {
                let name = key(name);
                let unnamed = name.is_empty();
                let mut undo = None;
                let mut confirm = None;
                if replace_error.is_none() {
                    let sql = text(sql);
                    // Drivers re-parse the same unnamed statement over and over: keep its text.
                    let sql = match self.statements.get(name) {
                        Some(old) if *old.sql == *sql => old.sql.clone(),
                        _ => Arc::from(sql),
                    };
                    // A name the server converts to its own encoding before keying it may be
                    // another name's to the server: what it holds is then not known.
                    let converted = self.name_converted(name);
                    self.made += 1;
                    let new = Prepared {
                        sql: if converted { Arc::from("") } else { sql },
                        param_types: param_types.clone(),
                        lexing: self.lexing(),
                        ambiguous: converted,
                        columns: None,
                        made: self.made,
                    };
                    let exists = self.statements.contains_key(name);
                    // A named statement the proxy believes exists: the server refuses the Parse
                    // (42P05) and keeps it, unless it was dropped in a way the proxy did not see
                    // (SQL the proxy could not read). Until the server answers, which text the
                    // name holds is not known.
                    let now = if exists && !unnamed {
                        confirm = Some((name.to_vec(), new));
                        Prepared {
                            sql: Arc::from(""),
                            param_types: Vec::new(),
                            lexing: self.lexing(),
                            ambiguous: true,
                            columns: None,
                            made: self.made,
                        }
                    } else {
                        new
                    };
                    let previous = self.statements.insert(name.to_vec(), now);
                    undo = Some(Undo::Statement { name: name.to_vec(), previous });
                }
                push_undo(self, Expect::Parse { unnamed, confirm }, replace_error, undo);
            }
            Frontend::Bind(bind) => {
                let portal_name = key(bind.portal);
                let unnamed = portal_name.is_empty();
                let mut undo = None;
                let mut confirm = None;
                if replace_error.is_none() {
                    // A statement the proxy does not know (or an ambiguous one) runs as "".
                    let (sql, lexing, unknown, described) = self.statements.get(key(bind.statement)).map_or_else(
                        || (Arc::from(""), self.lexing(), true, None),
                        |s| (s.sql.clone(), s.lexing, s.ambiguous, s.columns.clone()),
                    );
                    let columns = described.and_then(|c| with_formats(&c, bind.body));
                    let unknown = unknown || self.name_converted(bind.statement) || self.name_converted(portal_name);
                    let readies = self.readies_asked;
                    self.made += 1;
                    let new = Portal {
                        sql,
                        lexing,
                        bind: Arc::from(bind.body),
                        suspended: None,
                        unknown,
                        readies,
                        judgement: None,
                        columns,
                        made: self.made,
                    };
                    // Likewise a named portal the proxy believes exists (42P03, or accepted), or
                    // any named portal once SQL declared cursors (a cursor is a portal the proxy
                    // does not track by name: a Bind onto its name fails, and an Execute of that
                    // name runs the cursor).
                    let now = if !unnamed && (self.sql_cursors || self.portals.contains_key(portal_name)) {
                        let unknown =
                            Portal { sql: Arc::from(""), unknown: true, judgement: None, columns: None, ..new.clone() };
                        confirm = Some((portal_name.to_vec(), new));
                        unknown
                    } else {
                        new
                    };
                    let previous = self.portals.insert(portal_name.to_vec(), now);
                    undo = Some(Undo::Portal { name: portal_name.to_vec(), previous });
                }
                push_undo(self, Expect::Bind { unnamed, confirm }, replace_error, undo);
            }
            Frontend::Describe { kind, name } => {
                let name = key(name);
                let made = if *kind == b'S' {
                    self.statements.get(name).map(|s| s.made)
                } else {
                    self.portals.get(name).map(|p| p.made)
                };
                push(self, Expect::Describe(*kind, name.to_vec(), made), replace_error)
            }
            Frontend::Execute { portal, .. } => {
                let replaced = self.portal_may_be_replaced(portal);
                let (sql, bind, resumes, lexing, judgement, columns) = match self.portals.get(key(portal)) {
                    // What it runs is not known: recorded (and judged) as a portal the proxy
                    // never saw created.
                    Some(p) if p.unknown || replaced => (Arc::from(""), None, p.suspended, Some(p.lexing), None, None),
                    Some(p) => (
                        p.sql.clone(),
                        Some(p.bind.clone()),
                        p.suspended,
                        Some(p.lexing),
                        p.judgement.clone(),
                        p.columns.clone(),
                    ),
                    None => (Arc::from(""), None, None, None, None, None),
                };
                let mut running = self.start(sql, QueryProtocol::Extended);
                // The text was lexed when it was parsed, not now.
                running.lexing = lexing.unwrap_or(running.lexing);
                running.parameters = bind.map(|b| (b, bind_parameters as crate::session::DecodeParameters));
                running.resumes = resumes;
                running.portal = portal.to_vec();
                running.judgement = judgement;
                running.columns = columns;
                push(self, Expect::Execute(running), replace_error);
            }
            Frontend::Close { kind, name } => {
                // Forgotten at once (later messages of the flight see it closed), taken back if
                // the server skips the Close.
                let name = key(name);
                let undo = if *kind == b'S' {
                    Undo::Statement { name: name.to_vec(), previous: self.statements.remove(name) }
                } else {
                    Undo::Portal { name: name.to_vec(), previous: self.portals.remove(name) }
                };
                push_undo(self, Expect::Close, replace_error, Some(undo));
            }
            Frontend::Sync => push(self, Expect::Sync, replace_error),
            Frontend::FunctionCall { function_oid } => {
                let mut running = self.start(Arc::from(""), QueryProtocol::FunctionCall);
                running.function_oid = Some(*function_oid);
                push(self, Expect::FunctionCall(running), replace_error);
            }
            Frontend::Flush => {}
            Frontend::CopyData(_) | Frontend::CopyDone | Frontend::CopyFail(_) => {
                // Outside COPY IN the server ignores these (a client may send them after an
                // error ended the copy); they are relayed as PostgreSQL would see them.
                if matches!(msg, Frontend::CopyDone | Frontend::CopyFail(_)) && self.copy == Copy::In {
                    self.copy = Copy::None;
                }
            }
            Frontend::Terminate => self.phase = Phase::Terminating,
            Frontend::AuthResponse(_) => {
                return Err(ProtocolError::Client("authentication response after authentication".into()));
            }
        }
        Ok(())
    }

    /// Whether a statement sent may still begin a COPY FROM STDIN: its text says COPY (or is not
    /// known), and it is not answered yet, nor is the COPY under way (a COPY TO in the same
    /// query string may come first). Replication commands that take COPY data
    /// (UPLOAD_MANIFEST) do not say COPY: on a replication connection, messages pipelined behind
    /// one end the session at its CopyInResponse, unrun. What the client sends
    /// behind it waits until the server shows which: in COPY the server ignores a Sync and reads
    /// CopyData, outside it the server answers a Sync and ignores CopyData, and the proxy must
    /// expect what the server will do.
    pub fn copy_may_begin(&self) -> bool {
        // Entries leave from the front only: the newest candidate is still pending while the
        // front is not newer than it. (Constant time: this is asked for every client message.)
        self.copy != Copy::In
            && self.copy_candidate.is_some_and(|c| self.pending.front().is_some_and(|front| front.seq <= c))
    }

    /// Whether a statement's text may run COPY (`may_copy`), remembered for the last text.
    fn may_copy(&mut self, sql: &Arc<str>) -> bool {
        if let Some((checked, answer)) = &self.copy_checked
            && Arc::ptr_eq(checked, sql)
        {
            return *answer;
        }
        let answer = may_copy(sql);
        self.copy_checked = Some((sql.clone(), answer));
        answer
    }

    /// The client sent something other than COPY data during COPY FROM STDIN: the server fails
    /// the COPY and ends the session without reading on.
    pub fn on_copy_broken(&mut self) {
        self.copy = Copy::None;
        self.phase = Phase::Terminating;
    }

    /// Records a server message and says what to relay to the client.
    pub fn on_backend(&mut self, msg: &Backend<'_>) -> Result<BackendAction, ProtocolError> {
        if self.answering_internal()
            && let Some(action) = self.on_internal_backend(msg)?
        {
            return Ok(action);
        }
        match msg {
            Backend::Authentication { code, .. } => {
                if self.phase != Phase::Authenticating {
                    return Err(ProtocolError::Server("authentication request after authentication".into()));
                }
                if *code == AUTH_OK {
                    self.phase = Phase::Starting;
                } else if *code != AUTH_SASL_FINAL {
                    self.auth_asked = true;
                }
            }
            Backend::BackendKeyData { pid, key } => {
                // Once, during start-up: cancel keys registered later would pile up.
                if self.phase != Phase::Starting || self.backend_key.is_some() {
                    return Err(ProtocolError::Server("BackendKeyData outside start-up".into()));
                }
                self.backend_key = Some((*pid, key.to_vec()));
            }
            Backend::ParameterStatus { name, value } => {
                if *name == b"standard_conforming_strings" {
                    self.standard_conforming_strings = *value != b"off";
                }
                if *name == b"server_encoding" {
                    self.server_encoding = value.to_ascii_uppercase();
                }
                if *name == b"client_encoding" {
                    self.client_encoding = value.to_ascii_uppercase();
                    const UNSAFE: [&[u8]; 7] =
                        [b"SJIS", b"SHIFT_JIS_2004", b"BIG5", b"GBK", b"UHC", b"GB18030", b"JOHAB"];
                    self.client_encoding_unsafe = UNSAFE.iter().any(|e| e.eq_ignore_ascii_case(value));
                }
            }
            Backend::NoticeResponse { .. } | Backend::NotificationResponse { .. } => {}
            Backend::NegotiateProtocolVersion { .. } => {}
            Backend::ReadyForQuery { status } => {
                self.tx_status = *status;
                self.settings_in_flight = false;
                self.copy = Copy::None;
                if self.phase == Phase::Starting {
                    self.phase = Phase::Ready;
                    return Ok(BackendAction::Forward);
                }
                // Everything up to the message that asked for this ReadyForQuery is settled
                // (after an error the server skipped the rest of the batch).
                while let Some(p) = self.pending.pop_front() {
                    if p.expect.ends_with_ready() {
                        if *status == b'I' {
                            // Outside a transaction block the portals bound before it are gone
                            // (they end with their transaction); those bound after it, in a
                            // pipeline, are not.
                            self.portals.retain(|_, portal| portal.readies >= p.readies);
                        }
                        if let (Expect::Sync, Some(mut error)) = (&p.expect, p.replace_error) {
                            // A malformed Sync sent while the server skipped to Sync: its error
                            // comes before the ReadyForQuery, as the server sends it.
                            crate::pg::frame::put_message(&mut error, b'Z', &[*status]);
                            return Ok(BackendAction::Replace(error));
                        }
                        return Ok(BackendAction::Forward);
                    }
                }
                return Err(ProtocolError::Server("ReadyForQuery nothing asked for".into()));
            }
            Backend::ErrorResponse { .. } => {
                if matches!(self.phase, Phase::Authenticating | Phase::Starting) {
                    return Ok(BackendAction::Forward); // fatal; the server closes
                }
                self.copy = Copy::None;
                let replacement = self.pending.take_front_replace_error();
                if let Some(Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r)) =
                    self.pending.front_mut().map(|p| &mut p.expect)
                {
                    r.failed = true;
                }
                self.on_error();
                return Ok(replacement.map_or(BackendAction::Forward, BackendAction::Replace));
            }
            Backend::ParseComplete => match self.pending.pop_front() {
                Some(Pending { expect: Expect::Parse { confirm, .. }, .. }) => {
                    // The server accepted a Parse of a name the proxy believed in use: it holds
                    // the new text.
                    if let Some((name, prepared)) = confirm {
                        self.statements.insert(name, prepared);
                    }
                }
                _ => return Err(ProtocolError::Server("ParseComplete nothing asked for".into())),
            },
            Backend::BindComplete => match self.pending.pop_front() {
                Some(Pending { expect: Expect::Bind { confirm, .. }, .. }) => {
                    if let Some((name, portal)) = confirm {
                        self.portals.insert(name, portal);
                    }
                }
                _ => return Err(ProtocolError::Server("BindComplete nothing asked for".into())),
            },
            Backend::CloseComplete => self.complete(|e| matches!(e, Expect::Close), "CloseComplete")?,
            Backend::NoData => {
                self.described(Arc::from(Vec::new()));
                self.complete(|e| matches!(e, Expect::Describe(..)), "NoData")?
            }
            Backend::ParameterDescription { .. } => {
                if !matches!(self.pending.front().map(|p| &p.expect), Some(Expect::Describe(..))) {
                    return Err(ProtocolError::Server("ParameterDescription nothing asked for".into()));
                }
            }
            Backend::RowDescription(desc) => match self.pending.front().map(|p| &p.expect) {
                Some(Expect::Describe(..)) => {
                    self.described(result_columns(desc));
                    self.pending.pop_front();
                }
                Some(Expect::SimpleQuery(_)) => {}
                _ => {
                    return Err(ProtocolError::Server("RowDescription nothing asked for".into()));
                }
            },
            Backend::DataRow(_) => self.data_rows(1)?,
            Backend::CommandComplete { tag } => {
                self.sql_level_statements(tag);
                self.command_complete()?;
            }
            Backend::EmptyQueryResponse => self.command_complete()?,
            Backend::PortalSuspended => {
                let Some(Expect::Execute(r)) = self.pending.front().map(|p| &p.expect) else {
                    return Err(ProtocolError::Server("PortalSuspended nothing asked for".into()));
                };
                let first = r.resumes.unwrap_or(r.id);
                self.settings_in_flight |= may_change_settings(r);
                if let Some(portal) = self.portals.get_mut(key(&r.portal)) {
                    portal.suspended = Some(first);
                }
                self.after_code_ran();
                self.pending.pop_front();
            }
            Backend::CopyResponse { tag, .. } => {
                if !matches!(self.pending.front().map(|p| &p.expect), Some(Expect::Execute(_) | Expect::SimpleQuery(_)))
                {
                    return Err(ProtocolError::Server("COPY response outside a query".into()));
                }
                self.copy = match tag {
                    b'G' => Copy::In,
                    b'H' => Copy::Out,
                    _ => Copy::Both,
                };
                if self.copy == Copy::In {
                    // Nothing the client sends behind a statement that may begin a COPY FROM
                    // STDIN is relayed before the server shows whether it does
                    // (`copy_may_begin`): the server would take it as COPY data.
                    if self.pending.len() > 1 {
                        // Sent before the COPY began and discarded by the server in it.
                        return Err(ProtocolError::Client("messages pipelined after a COPY FROM STDIN".into()));
                    }
                }
            }
            Backend::CopyData(_) => {
                if !matches!(self.copy, Copy::Out | Copy::Both) {
                    return Err(ProtocolError::Server("CopyData outside COPY OUT".into()));
                }
            }
            Backend::CopyDone => {
                if !matches!(self.copy, Copy::Out | Copy::Both) {
                    return Err(ProtocolError::Server("CopyDone outside COPY OUT".into()));
                }
            }
            Backend::FunctionCallResponse(_) => {
                if !matches!(self.pending.front().map(|p| &p.expect), Some(Expect::FunctionCall(_))) {
                    return Err(ProtocolError::Server("FunctionCallResponse nothing asked for".into()));
                }
                self.after_code_ran();
            }
        }
        Ok(BackendAction::Forward)
    }

    /// Records `n` DataRows at once (the relay counts runs of rows without decoding them).
    pub fn data_rows(&mut self, n: u64) -> Result<(), ProtocolError> {
        match self.pending.front_mut().map(|p| &mut p.expect) {
            Some(Expect::Execute(r) | Expect::SimpleQuery(r)) => {
                r.rows += n;
                self.rows += n;
                Ok(())
            }
            _ => Err(ProtocolError::Server("DataRow outside a query".into())),
        }
    }

    fn complete(&mut self, is: impl Fn(&Expect) -> bool, what: &str) -> Result<(), ProtocolError> {
        match self.pending.front() {
            Some(p) if is(&p.expect) => {
                self.pending.pop_front();
                Ok(())
            }
            _ => Err(ProtocolError::Server(format!("{what} nothing asked for"))),
        }
    }

    /// CommandComplete or EmptyQueryResponse: the current statement of the front query ended.
    fn command_complete(&mut self) -> Result<(), ProtocolError> {
        self.completed += 1;
        self.copy = Copy::None;
        match self.pending.front_mut().map(|p| &mut p.expect) {
            Some(Expect::Execute(r)) => {
                self.settings_in_flight |= may_change_settings(r);
                self.pending.pop_front();
            }
            // A simple query string may hold several statements.
            Some(Expect::SimpleQuery(r)) => {
                r.rows = 0;
                r.completed += 1;
            }
            _ => {
                return Err(ProtocolError::Server("CommandComplete nothing asked for".into()));
            }
        }
        Ok(())
    }

    /// The statement at the front ran (its part at `completed`), however it ends: a
    /// CommandComplete, a PortalSuspended, a FunctionCallResponse. Code of unknown effect as
    /// judged (DO, a function the catalog could not clear; a function it cleared is a read) can
    /// close a portal and open a cursor of its name from PL/pgSQL, whatever its tag: what a
    /// bound portal runs is then not known, and a named portal's Bind is known only once the
    /// server accepts it. (Every statement the relay forwards is judged; one without a
    /// judgement ran where nothing governs.)
    fn after_code_ran(&mut self) {
        let ran_unknown_code = self.running().is_some_and(|r| {
            r.judgement.as_ref().is_some_and(|j| {
                let part = j.parts.get((r.completed as usize).min(j.parts.len().saturating_sub(1)));
                part.is_none_or(|p| p.effects.with(p.class).contains(crate::sql::Class::Unknown))
            })
        });
        if ran_unknown_code {
            for portal in self.portals.values_mut() {
                portal.unknown = true;
                portal.judgement = None;
            }
            self.sql_cursors = true;
        }
    }

    /// Prepared statements created or dropped with SQL (PREPARE, DEALLOCATE, DISCARD ALL) are
    /// the same objects a protocol Bind names: the statement table follows them once the server
    /// says they completed.
    fn sql_level_statements(&mut self, tag: &[u8]) {
        self.after_code_ran();
        if matches!(
            tag,
            b"CLOSE CURSOR"
                | b"CLOSE CURSOR ALL"
                | b"DECLARE CURSOR"
                | b"COMMIT"
                | b"ROLLBACK"
                | b"PREPARE TRANSACTION"
        ) {
            // SQL can close a portal, declare a cursor under a bound portal's name, or end the
            // transaction portals live in: a bound portal may no longer be what its Bind
            // created, and an Execute of one is judged as unknown.
            for portal in self.portals.values_mut() {
                portal.unknown = true;
                portal.judgement = None;
            }
            if tag == b"DECLARE CURSOR" {
                self.sql_cursors = true;
            }
            return;
        }
        if !matches!(tag, b"PREPARE" | b"DEALLOCATE" | b"DEALLOCATE ALL" | b"DISCARD ALL") {
            return;
        }
        if tag == b"DISCARD ALL" {
            self.statements.clear();
            self.portals.clear();
            self.sql_cursors = false;
            return;
        }
        if tag == b"DEALLOCATE ALL" {
            self.statements.clear();
            return;
        }
        let Some(running) = self.running() else { return };
        let options = running.lexing.options();
        let command = if running.lexing.ascii_safe && running.lexing.settled {
            let parts = crate::sql::split_statements_with(&running.sql, options);
            parts
                .get(running.completed as usize)
                .or(parts.first())
                .and_then(|part| crate::sql::prepared_statement_command(part, options))
        } else {
            None
        };
        match command {
            Some(crate::sql::PreparedCommand::Prepare { name, body }) => {
                let sql = Arc::from(body);
                let lexing = self.lexing();
                self.made += 1;
                let made = self.made;
                self.statements.insert(
                    name.into_bytes(),
                    Prepared { sql, param_types: Vec::new(), lexing, ambiguous: false, columns: None, made },
                );
            }
            Some(crate::sql::PreparedCommand::Deallocate { name }) => {
                self.statements.remove(name.as_bytes());
            }
            // A statement was created under a name the proxy could not read: binding it runs as
            // unknown (it is not in the table), and no tracked name can be it (the server
            // refuses a PREPARE of a name in use).
            None if tag == b"PREPARE" => {}
            // A statement was dropped and the proxy cannot tell which: every tracked one becomes
            // ambiguous, judged as unknown until it is parsed again.
            None => {
                for statement in self.statements.values_mut() {
                    statement.sql = Arc::from("");
                    statement.ambiguous = true;
                }
            }
        }
    }

    /// An ErrorResponse ends the current operation. After an extended-protocol message fails
    /// the server skips every message up to the next Sync (simple queries and function calls
    /// included); what those messages did to the statement and portal tables is taken back. A
    /// simple query or a function call still ends with ReadyForQuery.
    fn on_error(&mut self) {
        let Some(front) = self.pending.front() else {
            return;
        };
        if front.expect.ends_with_ready() {
            return;
        }
        let mut skipped = Vec::new();
        let mut popped = Vec::new();
        while let Some(p) = self.pending.front() {
            if matches!(p.expect, Expect::Sync) {
                break;
            }
            popped.extend(self.pending.pop_front());
        }
        if self.pending.is_empty() {
            self.ignoring_till_sync = true;
        }
        // Take back the skipped messages' changes, newest first, then the failed one's: an
        // unnamed statement or portal is gone after its own failed Parse or Bind.
        for (i, p) in popped.into_iter().enumerate().rev() {
            match (i, &p.expect, p.undo) {
                (0, Expect::Parse { unnamed: true, .. }, _) => {
                    self.statements.remove(&b""[..]);
                }
                (0, Expect::Bind { unnamed: true, .. }, _) => {
                    self.portals.remove(&b""[..]);
                }
                (_, _, Some(Undo::Statement { name, previous })) => match previous {
                    Some(previous) => {
                        self.statements.insert(name, previous);
                    }
                    None => {
                        self.statements.remove(&name);
                    }
                },
                (_, _, Some(Undo::Portal { name, previous })) => match previous {
                    Some(previous) => {
                        self.portals.insert(name, previous);
                    }
                    None => {
                        self.portals.remove(&name);
                    }
                },
                _ => {}
            }
            if i > 0
                && p.replace_error.is_none()
                && let Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r) = p.expect
            {
                // Forwarded, never run: the server skipped it.
                skipped.push(r);
            }
        }
        self.skipped.extend(skipped.into_iter().rev());
    }
}

/// Whether a statement's text may run COPY: it says so, in any case.
fn may_copy(sql: &str) -> bool {
    sql.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::frontend::Frontend as F;

    fn ready() -> ProtocolState {
        let mut s = ProtocolState::new();
        s.on_backend(&Backend::Authentication { code: 0, data: b"" }).unwrap();
        s.on_backend(&Backend::BackendKeyData { pid: 42, key: b"abcd" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.phase, Phase::Ready);
        s
    }

    fn bind(portal: &'static str, statement: &'static str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(portal.as_bytes());
        b.push(0);
        b.extend(statement.as_bytes());
        b.push(0);
        b.extend([0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn the_proxys_own_query_is_answered_to_it_alone() {
        let mut s = ready();
        assert!(s.idle_for_internal());
        s.on_internal_query();
        assert!(!s.idle_for_internal(), "one at a time");
        let hidden =
            |s: &mut ProtocolState, m: &Backend<'_>| s.on_backend(m).unwrap() == BackendAction::Replace(Vec::new());
        assert!(hidden(&mut s, &Backend::NoticeResponse { fields: vec![(b'M', b"SET LOCAL".as_slice())] }));
        assert!(hidden(&mut s, &Backend::CommandComplete { tag: b"SET" }));
        assert!(hidden(&mut s, &Backend::DataRow(b"\0\x01\0\0\0\x01x")));
        // A setting change or a notification is the client's, whenever it comes.
        assert_eq!(
            s.on_backend(&Backend::ParameterStatus { name: b"standard_conforming_strings", value: b"off" }).unwrap(),
            BackendAction::Forward
        );
        assert!(!s.standard_conforming_strings);
        assert!(s.take_internal_answer().is_none(), "not complete yet");
        assert!(hidden(&mut s, &Backend::ReadyForQuery { status: b'I' }));
        let answer = s.take_internal_answer().expect("complete");
        assert_eq!((answer.rows.len(), answer.error), (1, None));
        assert!(s.idle_for_internal());
        // The client's next query is answered to it as before.
        s.on_frontend(&F::Query(b"select 1"), None).unwrap();
        assert_eq!(s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap(), BackendAction::Forward);
        assert_eq!(s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap(), BackendAction::Forward);
    }

    #[test]
    fn the_proxys_own_query_waits_for_the_end_of_a_batch_and_its_errors_are_its_own() {
        let mut s = ready();
        // Parse + Flush answered: nothing owed, but the batch (an implicit transaction) is open.
        s.on_frontend(&F::Parse { name: b"", sql: b"select 1", param_types: Vec::new() }, None).unwrap();
        s.on_frontend(&F::Flush, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        assert!(!s.idle_for_internal(), "inside an extended batch");
        s.on_frontend(&F::Sync, None).unwrap();
        assert!(!s.idle_for_internal(), "its ReadyForQuery is owed");
        s.on_backend(&Backend::ReadyForQuery { status: b'T' }).unwrap();
        assert!(!s.idle_for_internal(), "inside a transaction block");
        s.on_frontend(&F::Query(b"commit"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"COMMIT" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(s.idle_for_internal());
        s.on_internal_query();
        let error =
            Backend::ErrorResponse { fields: vec![(b'S', b"ERROR".as_slice()), (b'C', b"42501"), (b'M', b"denied")] };
        assert_eq!(s.on_backend(&error).unwrap(), BackendAction::Replace(Vec::new()), "never the client's");
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.take_internal_answer().and_then(|a| a.error).as_deref(), Some("42501: denied"));
        // A FATAL one ends the session: the client is told, and the wait ends.
        s.on_internal_query();
        let fatal =
            Backend::ErrorResponse { fields: vec![(b'S', b"FATAL".as_slice()), (b'C', b"57P01"), (b'M', b"bye")] };
        assert_eq!(s.on_backend(&fatal).unwrap(), BackendAction::Forward);
        assert!(s.take_internal_answer().is_some());
        // Anything else in its answer is the server's protocol error.
        let mut s = ready();
        s.on_internal_query();
        assert!(s.on_backend(&Backend::ParseComplete).is_err());
    }

    #[test]
    fn simple_query_with_two_statements() {
        let mut s = ready();
        s.on_frontend(&F::Query(b"select 1; select 2"), None).unwrap();
        assert_eq!(s.running().unwrap().protocol, QueryProtocol::Simple);
        for _ in 0..2 {
            s.on_backend(&Backend::decode(b'T', &[0, 0]).unwrap()).unwrap();
            s.on_backend(&Backend::DataRow(b"\0\0")).unwrap();
            s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap();
        }
        assert_eq!(s.on_backend(&Backend::ReadyForQuery { status: b'I' }), Ok(BackendAction::Forward));
        assert_eq!((s.pending(), s.completed, s.rows), (0, 2, 2));
    }

    #[test]
    fn pipelined_extended_batch_attributes_rows_to_each_execute() {
        let mut s = ready();
        let b = bind("", "s1");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&F::Parse { name: b"s1", sql: b"select $1", param_types: vec![23] }, None).unwrap();
        for _ in 0..2 {
            s.on_frontend(&F::Bind(bound), None).unwrap();
            s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        }
        s.on_frontend(&F::Sync, None).unwrap();
        assert_eq!(s.pending(), 6);
        s.on_backend(&Backend::ParseComplete).unwrap();
        for _ in 0..2 {
            s.on_backend(&Backend::BindComplete).unwrap();
            assert_eq!(&*s.running().unwrap().sql, "select $1");
            let parameters = s.running().unwrap().parameters().expect("bound");
            let Ok(Frontend::Bind(bind)) = Frontend::decode(b'B', parameters.message) else { panic!("a Bind") };
            assert_eq!(bind.statement, b"s1");
            s.on_backend(&Backend::DataRow(b"\0\x01")).unwrap();
            assert_eq!(s.running().unwrap().rows, 1);
            s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap();
        }
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
        assert!(s.statement(b"s1").is_some());
    }

    #[test]
    fn a_described_portal_lends_its_columns_only_to_its_own_executions() {
        let mut s = ready();
        s.on_frontend(&F::Parse { name: b"s1", sql: b"select 1", param_types: vec![] }, None).unwrap();
        s.on_frontend(&F::Parse { name: b"s2", sql: b"select 'x'", param_types: vec![] }, None).unwrap();
        let first = bind("", "s1");
        // The second binding of the unnamed portal asks for binary results.
        let mut second = bind("", "s2");
        second.truncate(second.len() - 2);
        second.extend([0, 1, 0, 1]);
        for b in [&first, &second] {
            let Ok(F::Bind(bound)) = F::decode(b'B', b) else { panic!() };
            s.on_frontend(&F::Bind(bound), None).unwrap();
            if std::ptr::eq(b, &first) {
                s.on_frontend(&F::Describe { kind: b'P', name: b"" }, None).unwrap();
            }
            s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        }
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        let t = int4_row_description();
        s.on_backend(&Backend::decode(b'T', &t).unwrap()).unwrap();
        let columns = s.running().unwrap().columns.clone().expect("the described execution's");
        assert_eq!((columns.len(), columns[0].type_oid, columns[0].binary), (1, 23, false));
        s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        assert_eq!(&*s.running().unwrap().sql, "select 'x'");
        // Not the first binding's text int4: its rows are read as of unknown columns, in the
        // formats its own Bind asked for.
        assert!(s.running().unwrap().columns.is_none(), "{:?}", s.running().unwrap().columns);
    }

    /// A RowDescription with one int4 column of no table, in text.
    fn int4_row_description() -> Vec<u8> {
        let mut t = vec![0, 1];
        t.extend(b"n\0");
        t.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0]);
        t
    }

    #[test]
    fn a_describes_answer_is_not_given_to_what_its_name_holds_since() {
        // A portal bound again after its Describe was sent (the answer comes after a Flush).
        let mut s = ready();
        s.on_frontend(&F::Parse { name: b"s1", sql: b"select 1", param_types: vec![] }, None).unwrap();
        s.on_frontend(&F::Parse { name: b"s2", sql: b"select 'x'", param_types: vec![] }, None).unwrap();
        for (statement, describe) in [("s1", true), ("s2", false)] {
            let b = bind("", statement);
            let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
            s.on_frontend(&F::Bind(bound), None).unwrap();
            if describe {
                s.on_frontend(&F::Describe { kind: b'P', name: b"" }, None).unwrap();
            }
        }
        s.on_frontend(&F::Flush, None).unwrap();
        for m in [Backend::ParseComplete, Backend::ParseComplete, Backend::BindComplete] {
            s.on_backend(&m).unwrap();
        }
        let t = int4_row_description();
        s.on_backend(&Backend::decode(b'T', &t).unwrap()).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        assert_eq!(&*s.running().unwrap().sql, "select 'x'");
        assert!(s.running().unwrap().columns.is_none(), "not s1's columns");
        // A statement parsed again after its Describe was sent.
        let mut s = ready();
        s.on_frontend(&F::Parse { name: b"", sql: b"select 1", param_types: vec![] }, None).unwrap();
        s.on_frontend(&F::Describe { kind: b'S', name: b"" }, None).unwrap();
        s.on_frontend(&F::Parse { name: b"", sql: b"select 'x'", param_types: vec![] }, None).unwrap();
        s.on_frontend(&F::Flush, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::decode(b't', &[0, 0]).unwrap()).unwrap();
        s.on_backend(&Backend::decode(b'T', &t).unwrap()).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        assert_eq!(&*s.statement(b"").unwrap().sql, "select 'x'");
        assert!(s.statement(b"").unwrap().columns.is_none(), "not the first text's columns");
        // Described with nothing in between: its own.
        s.on_frontend(&F::Describe { kind: b'S', name: b"" }, None).unwrap();
        s.on_frontend(&F::Flush, None).unwrap();
        s.on_backend(&Backend::decode(b't', &[0, 0]).unwrap()).unwrap();
        s.on_backend(&Backend::decode(b'T', &t).unwrap()).unwrap();
        assert!(s.statement(b"").unwrap().columns.is_some());
    }

    /// In a transaction block, portal `p` bound (and judged) to a harmless statement.
    fn bound_in_a_transaction() -> ProtocolState {
        let mut s = ready();
        s.on_frontend(&F::Query(b"begin"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"BEGIN" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'T' }).unwrap();
        s.on_frontend(&parse(b"s", b"select 'harmless'"), None).unwrap();
        let b = bind("p", "s");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend_judged(&F::Bind(bound), Some(judged("select 'harmless'"))).unwrap();
        s
    }

    #[test]
    fn a_named_portal_executed_behind_sql_that_may_replace_it_runs_what_is_not_known() {
        for sql in [
            &b"declare p cursor for select * from secret"[..],
            b"/* x */ DECLARE p CURSOR FOR select * from secret",
            b"do $$begin null; end$$",
        ] {
            let mut s = bound_in_a_transaction();
            s.on_backend(&Backend::ParseComplete).unwrap();
            s.on_backend(&Backend::BindComplete).unwrap();
            assert!(s.portal_judged(b"p") && !s.portal_may_be_replaced(b"p"));
            // Pipelined: the SQL, then an Execute of p, before the server answers either.
            s.on_frontend_judged(&F::Query(sql), Some(judged(std::str::from_utf8(sql).unwrap()))).unwrap();
            assert!(s.portal_may_be_replaced(b"p"), "{}", String::from_utf8_lossy(sql));
            assert!(!s.portal_may_be_replaced(b""), "the unnamed portal cannot be a cursor's");
            s.on_frontend(&F::Execute { portal: b"p", max_rows: 0 }, None).unwrap();
            let Some(Pending { expect: Expect::Execute(r), .. }) = s.pending.back() else { panic!() };
            assert!(r.sql.is_empty() && r.judgement.is_none() && r.columns.is_none(), "{r:?}");
            // Once it completed (whatever its tag), the portal is not known either.
            let tag: &[u8] = if sql.starts_with(b"do") { b"DO" } else { b"DECLARE CURSOR" };
            s.on_backend(&Backend::CommandComplete { tag }).unwrap();
            assert!(!s.portal_judged(b"p") && s.portal_text(b"p").is_none(), "{}", String::from_utf8_lossy(sql));
        }
        // What does not touch portals leaves a pipelined Execute its Bind's judgement.
        let mut s = bound_in_a_transaction();
        for sql in ["select 1", "savepoint a", "fetch 1 from c", "close p", "rollback to savepoint a", "commit"] {
            s.on_frontend(&F::Query(sql.as_bytes()), None).unwrap();
            assert!(s.portal_may_be_replaced(b"p"), "not judged yet: taken to");
            s.pending.judge_back(s.last_id, judged(sql));
            assert!(!s.portal_may_be_replaced(b"p"), "{sql}");
        }
        s.on_frontend(&F::Execute { portal: b"p", max_rows: 0 }, None).unwrap();
        let Some(Pending { expect: Expect::Execute(r), .. }) = s.pending.back() else { panic!() };
        assert_eq!(&*r.sql, "select 'harmless'");
        // However code of unknown effect ends (a fast-path call, a suspended portal), the
        // portals are not known after it; a function the catalog cleared is a read and is not that.
        let unknown = judged("do $$begin null; end$$");
        let mut s = bound_in_a_transaction();
        s.on_frontend_judged(&F::FunctionCall { function_oid: 16_500 }, Some(unknown.clone())).unwrap();
        for m in [Backend::ParseComplete, Backend::BindComplete, Backend::FunctionCallResponse(b"\xff\xff\xff\xff")] {
            s.on_backend(&m).unwrap();
        }
        assert!(!s.portal_judged(b"p"), "after a fast-path call of unknown effect");
        let mut s = bound_in_a_transaction();
        let b = bind("x", "s");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend_judged(&F::Bind(bound), Some(unknown)).unwrap();
        s.on_frontend(&F::Execute { portal: b"x", max_rows: 1 }, None).unwrap();
        for m in [Backend::ParseComplete, Backend::BindComplete, Backend::BindComplete, Backend::PortalSuspended] {
            s.on_backend(&m).unwrap();
        }
        assert!(!s.portal_judged(b"p"), "after a suspended execution of unknown effect");
        let mut s = bound_in_a_transaction();
        let mut cleared = (*judged("select app.stable_fn()")).clone();
        assert!(cleared.parts[0].effects.contains(crate::sql::Class::Unknown), "unknown until the catalog answers");
        cleared.parts[0].class = crate::sql::Class::Read;
        cleared.parts[0].effects = crate::sql::ClassSet::of(&[crate::sql::Class::Read]);
        s.on_frontend_judged(&F::Query(b"select app.stable_fn()"), Some(Arc::new(cleared))).unwrap();
        assert!(!s.portal_may_be_replaced(b"p"), "a read");
        for m in [Backend::ParseComplete, Backend::BindComplete, Backend::CommandComplete { tag: b"SELECT 1" }] {
            s.on_backend(&m).unwrap();
        }
        assert!(s.portal_judged(b"p"), "a read leaves the portals as they are");
        // A string past MAX_PARTS statements is judged with its tail as one part, whose first
        // word says nothing of what follows in it: counted.
        let mut s = bound_in_a_transaction();
        s.on_frontend(&F::Query(b"select 1"), None).unwrap();
        let one = judged("select 1");
        let parts = vec![one.parts[0].clone(); crate::govern::describe::MAX_PARTS];
        s.pending.judge_back(s.last_id, Arc::new(Judgement { parts, ..(*one).clone() }));
        assert!(s.portal_may_be_replaced(b"p"), "a merged tail");
        // What is pushed behind a refusal's poison is skipped by the server: not counted.
        let mut s = bound_in_a_transaction();
        s.on_frontend(&parse(b"", b"select 1"), Some(b"refused".to_vec())).unwrap();
        s.on_frontend(&F::Query(b"declare p cursor for select * from secret"), None).unwrap();
        assert!(!s.portal_may_be_replaced(b"p"), "skipped to the Sync");
    }

    #[test]
    fn error_skips_the_rest_of_the_batch_and_forgets_a_failed_parse() {
        let mut s = ready();
        let b = bind("", "bad");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&F::Parse { name: b"bad", sql: b"selec", param_types: vec![] }, None).unwrap();
        s.on_frontend(&F::Bind(bound), None).unwrap();
        s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ErrorResponse { fields: vec![] }).unwrap();
        assert!(s.statement(b"bad").is_none());
        assert_eq!(s.pending(), 1, "only the Sync is still owed");
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn pending_counts_answer_as_a_scan_of_the_queue_would() {
        fn check(s: &ProtocolState) {
            let unsettled = s.pending.iter().filter(|p| unsettling(p)).count();
            assert_eq!(s.pending.unsettling, unsettled);
            assert_eq!(s.pending.any_unsettling(), unsettled > 0);
            let skipping = s.pending.iter().rev().take_while(|p| !matches!(p.expect, Expect::Sync)).any(poisoned_parse);
            assert_eq!(s.pending.poisoned_since_sync(), skipping);
        }
        let quiet = || Some(Arc::new(Judgement { parts: vec![], role: None, basis: (0, 0) }));
        let poison = || F::Parse { name: b"", sql: b"WARDEN REFUSED", param_types: vec![] };
        let mut s = ready();
        s.on_frontend_judged(&F::Query(b"select 1"), quiet()).unwrap();
        check(&s);
        assert!(s.lexing().settled, "judged to change no setting");
        s.on_frontend(&F::Query(b"set x = 1"), None).unwrap();
        check(&s);
        assert!(!s.lexing().settled, "unjudged: may change settings");
        s.on_frontend(&poison(), Some(b"refused".to_vec())).unwrap();
        check(&s);
        assert!(s.skipping_to_sync());
        s.on_frontend(&F::Sync, None).unwrap();
        check(&s);
        assert!(!s.skipping_to_sync());
        s.on_frontend(&poison(), Some(b"refused again".to_vec())).unwrap();
        check(&s);
        assert!(s.skipping_to_sync());
        for answer in [
            Backend::CommandComplete { tag: b"SELECT 1" },
            Backend::ReadyForQuery { status: b'I' },
            Backend::CommandComplete { tag: b"SET" },
            Backend::ReadyForQuery { status: b'I' },
        ] {
            s.on_backend(&answer).unwrap();
            check(&s);
        }
        assert!(!s.pending.any_unsettling());
        assert_eq!(
            s.on_backend(&Backend::ErrorResponse { fields: vec![] }),
            Ok(BackendAction::Replace(b"refused".to_vec()))
        );
        check(&s);
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        check(&s);
        assert!(s.skipping_to_sync(), "the second poison is still ahead of any Sync");
        s.on_frontend(&F::Sync, None).unwrap();
        check(&s);
        assert!(!s.skipping_to_sync());
        assert_eq!(
            s.on_backend(&Backend::ErrorResponse { fields: vec![] }),
            Ok(BackendAction::Replace(b"refused again".to_vec()))
        );
        check(&s);
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        check(&s);
        assert_eq!(s.pending(), 0);
        assert_eq!((s.pending.syncs.len(), s.pending.poisoned_parses.len()), (0, 0));
        // A poisoned Query: not counted while its stand-in error is owed, counted once taken
        // (as an unfinished statement of unknown effect), gone at its ReadyForQuery.
        s.on_frontend(&F::Query(b"WARDEN REFUSED"), Some(b"no".to_vec())).unwrap();
        check(&s);
        assert!(s.lexing().settled);
        s.on_backend(&Backend::ErrorResponse { fields: vec![] }).unwrap();
        check(&s);
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        check(&s);
        // The proxy's own query counts for nothing.
        s.on_internal_query();
        check(&s);
        assert!(s.lexing().settled && !s.skipping_to_sync());
    }

    #[test]
    fn poisoned_message_gets_its_error_replaced() {
        let mut s = ready();
        s.on_frontend(&F::Query(b"WARDEN DENIED"), Some(b"mine".to_vec())).unwrap();
        assert_eq!(
            s.on_backend(&Backend::ErrorResponse { fields: vec![] }),
            Ok(BackendAction::Replace(b"mine".to_vec()))
        );
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        s.on_frontend(&F::Query(b"select 1"), None).unwrap();
        assert_eq!(s.on_backend(&Backend::ErrorResponse { fields: vec![] }), Ok(BackendAction::Forward));
    }

    #[test]
    fn copy_in_and_out() {
        let mut s = ready();
        s.on_frontend(&F::Query(b"copy t from stdin"), None).unwrap();
        s.on_backend(&Backend::CopyResponse { tag: b'G', binary: false, columns: 1 }).unwrap();
        assert_eq!(s.copy, Copy::In);
        s.on_frontend(&F::CopyData(b"1\n"), None).unwrap();
        s.on_frontend(&F::CopyDone, None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"COPY 1" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        s.on_frontend(&F::Query(b"copy t to stdout"), None).unwrap();
        s.on_backend(&Backend::CopyResponse { tag: b'H', binary: false, columns: 1 }).unwrap();
        s.on_backend(&Backend::CopyData(b"1\n")).unwrap();
        s.on_backend(&Backend::CopyDone).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"COPY 1" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!((s.copy, s.pending()), (Copy::None, 0));
    }

    fn error() -> Backend<'static> {
        Backend::ErrorResponse { fields: vec![] }
    }

    fn parse(name: &'static [u8], sql: &'static [u8]) -> F<'static> {
        F::Parse { name, sql, param_types: vec![] }
    }

    #[test]
    fn a_statement_name_in_use_keeps_the_statement_the_server_keeps() {
        let mut s = ready();
        s.on_frontend(&parse(b"s", b"delete from accounts"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        // The server refuses the second Parse (42P05) and keeps the DELETE, which the Bind then
        // runs; until the server has answered, the proxy cannot know which text "s" holds.
        let b = bind("", "s");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&parse(b"s", b"select 1"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_frontend(&F::Bind(bound), None).unwrap();
        s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        assert_eq!(&*s.newest().unwrap().sql, "", "ambiguous: judged and recorded as unknown");
        assert!(s.newest().unwrap().parameters.is_none(), "run as a portal the proxy does not know");
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&error()).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(&*s.statement(b"s").unwrap().sql, "delete from accounts", "a failed re-Parse forgets nothing");
        s.on_backend(&Backend::BindComplete).unwrap();
        assert_eq!(&*s.running().unwrap().sql, "");
    }

    #[test]
    fn a_re_parse_the_server_accepts_holds_the_new_text() {
        let mut s = ready();
        s.on_frontend(&parse(b"s", b"select 1"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        // Dropped by SQL the proxy could not read, then re-parsed: the server accepts it.
        s.on_frontend(&parse(b"s", b"delete from accounts"), None).unwrap();
        assert_eq!(&*s.statement(b"s").unwrap().sql, "", "ambiguous until the server answers");
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(&*s.statement(b"s").unwrap().sql, "delete from accounts");
    }

    #[test]
    fn a_portal_bound_after_a_pipelined_sync_outlives_its_answer() {
        let mut s = ready();
        s.on_frontend(&parse(b"s", b"delete from accounts"), None).unwrap();
        let b1 = bind("p1", "s");
        let Ok(F::Bind(p1)) = F::decode(b'B', &b1) else { panic!() };
        s.on_frontend(&F::Bind(p1), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        let b2 = bind("p2", "s");
        let Ok(F::Bind(p2)) = F::decode(b'B', &b2) else { panic!() };
        s.on_frontend(&F::Bind(p2), None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        // p1 ended with the first transaction; p2 belongs to the next one.
        assert!(s.portal_sql(b"p1").is_none());
        s.on_frontend(&F::Execute { portal: b"p2", max_rows: 0 }, None).unwrap();
        assert_eq!(&*s.newest().unwrap().sql, "delete from accounts");
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"DELETE 1" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(s.portal_sql(b"p2").is_none());
    }

    fn judged(sql: &str) -> Arc<Judgement> {
        let described = crate::sql::DescriptionCache::new(4).describe(sql);
        Arc::new(Judgement {
            parts: vec![crate::session::PartJudgement {
                span: 0..sql.len(),
                class: described.analysis.class,
                effects: described.analysis.effects,
                class_reason: None,
                described,
                ambiguous: false,
                decision: crate::session::Decision::Allow,
                policy: None,
                rule: None,
                reason: Arc::from("test"),
                approval: None,
                mask: None,
                would: None,
                names: None,
                limit: None,
                raw_reads: None,
            }],
            role: None,
            basis: (0, 0),
        })
    }

    #[test]
    fn a_bound_sql_execute_is_judged_again_when_it_runs() {
        let mut s = ready();
        s.on_frontend(&parse(b"x", b"execute p"), None).unwrap();
        let b = bind("", "x");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend_judged(&F::Bind(bound), Some(judged("execute p"))).unwrap();
        // p can be replaced before the Execute: the Bind's judgement is not carried.
        assert!(!s.portal_judged(b""));
        assert_eq!(s.portal_text(b"").map(|(sql, _)| sql.to_string()).as_deref(), Some("execute p"));
        let b = bind("r", "x");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend_judged(&F::Bind(bound), Some(judged("select 1"))).unwrap();
        assert!(s.portal_judged(b"r"), "an ordinary statement's judgement rides with its portal");
    }

    #[test]
    fn settings_are_unsettled_until_the_ready_for_query_after_a_set() {
        let mut s = ready();
        s.on_frontend(&parse(b"", b"set standard_conforming_strings = off"), None).unwrap();
        let b = bind("", "");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&F::Bind(bound), None).unwrap();
        s.on_frontend_judged(
            &F::Execute { portal: b"", max_rows: 0 },
            Some(judged("set standard_conforming_strings = off")),
        )
        .unwrap();
        s.on_frontend(&F::Flush, None).unwrap();
        assert!(!s.lexing().settled);
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"SET" }).unwrap();
        // Completed, but the server reports the new setting only before ReadyForQuery.
        assert!(!s.lexing().settled, "a completed SET leaves the settings unsettled");
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParameterStatus { name: b"standard_conforming_strings", value: b"off" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(s.lexing().settled && !s.lexing().standard_conforming_strings);
        // A pipelined read does not unsettle anything.
        s.on_frontend_judged(&F::Query(b"select 1"), Some(judged("select 1"))).unwrap();
        assert!(s.lexing().settled);
    }

    #[test]
    fn sql_that_can_close_or_replace_a_portal_makes_bound_portals_unknown() {
        let mut s = bound_in_a_transaction();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'T' }).unwrap();
        assert!(s.portal_judged(b"p"));
        s.on_frontend(&F::Query(b"close p; declare p cursor for select * from t"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"CLOSE CURSOR" }).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"DECLARE CURSOR" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'T' }).unwrap();
        assert!(!s.portal_judged(b"p") && s.portal_text(b"p").is_none(), "judged again, as unknown");
    }

    #[test]
    fn after_a_sql_cursor_a_named_portal_is_judged_only_once_the_server_accepts_its_bind() {
        let mut s = ready();
        s.on_frontend(&F::Query(b"declare p cursor with hold for select * from secret"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"DECLARE CURSOR" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        s.on_frontend(&parse(b"x", b"select 1"), None).unwrap();
        let b = bind("p", "x");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend_judged(&F::Bind(bound), Some(judged("select 1"))).unwrap();
        // The server has not answered: the Bind may have failed onto the cursor's name.
        assert!(!s.portal_judged(b"p") && s.portal_text(b"p").is_none());
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        assert!(s.portal_judged(b"p"), "accepted: the judgement is the portal's");
    }

    #[test]
    fn names_are_keyed_by_their_first_63_bytes() {
        let mut s = ready();
        static LONG: [u8; 70] = [b'a'; 70];
        let long = &LONG;
        s.on_frontend(&parse(long, b"delete from accounts"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(&*s.statement(&long[..63]).unwrap().sql, "delete from accounts");
        assert_eq!(&*s.statement(&[b'a'; 64]).unwrap().sql, "delete from accounts");
    }

    #[test]
    fn messages_skipped_after_an_error_are_taken_back() {
        let mut s = ready();
        s.on_frontend(&parse(b"keep", b"select 1"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        // A failing Parse, then a Close the server skips, a query it skips, and a new Parse.
        s.on_frontend(&parse(b"bad", b"selec"), None).unwrap();
        s.on_frontend(&F::Close { kind: b'S', name: b"keep" }, None).unwrap();
        s.on_frontend(&F::Query(b"delete from t"), None).unwrap();
        s.on_frontend(&parse(b"later", b"select 2"), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        assert!(s.statement(b"keep").is_none(), "closed as far as later messages of the flight know");
        s.on_backend(&error()).unwrap();
        assert!(s.statement(b"keep").is_some(), "the skipped Close is taken back");
        assert!(s.statement(b"bad").is_none() && s.statement(b"later").is_none());
        let skipped = s.take_skipped();
        assert_eq!(skipped.iter().map(|r| &*r.sql).collect::<Vec<_>>(), vec!["delete from t"], "the query did not run");
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
        // After an error with no Sync sent yet, what follows up to Sync is not run either.
        s.on_frontend(&parse(b"bad2", b"selec"), None).unwrap();
        s.on_backend(&error()).unwrap();
        s.on_frontend(&F::Query(b"delete from t"), None).unwrap();
        assert!(s.newest().is_none(), "skipped by the server: not a statement that runs");
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
        s.on_frontend(&F::Query(b"select 3"), None).unwrap();
        assert_eq!(&*s.newest().unwrap().sql, "select 3");
    }

    #[test]
    fn what_follows_a_statement_that_may_begin_a_copy_waits_to_see_whether_it_does() {
        let mut s = ready();
        let b = bind("", "");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&parse(b"", b"copy t from stdin"), None).unwrap();
        s.on_frontend(&F::Bind(bound), None).unwrap();
        s.on_frontend(&F::Execute { portal: b"", max_rows: 0 }, None).unwrap();
        assert!(s.copy_may_begin(), "a Sync sent now could be ignored in COPY or answered outside it");
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::CopyResponse { tag: b'G', binary: false, columns: 1 }).unwrap();
        assert!(!s.copy_may_begin(), "in COPY: a Sync goes as a Flush, data as data");
        s.on_frontend(&F::CopyData(b"1\n"), None).unwrap();
        assert!(s.newest().is_none(), "CopyData starts no statement");
        s.on_frontend(&F::CopyDone, None).unwrap();
        assert!(s.copy_may_begin(), "until the COPY is answered");
        s.on_backend(&Backend::CommandComplete { tag: b"COPY 1" }).unwrap();
        assert!(!s.copy_may_begin());
        s.on_frontend(&F::Sync, None).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
        s.on_frontend(&F::Query(b"select 1"), None).unwrap();
        assert!(!s.copy_may_begin(), "not a COPY");
        s.on_backend(&Backend::decode(b'T', &[0, 0]).unwrap()).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"SELECT 0" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        // A COPY TO first in a query string: a COPY FROM may still follow.
        s.on_frontend(&F::Query(b"copy t to stdout; copy t from stdin"), None).unwrap();
        s.on_backend(&Backend::CopyResponse { tag: b'H', binary: false, columns: 1 }).unwrap();
        assert!(s.copy_may_begin());
        s.on_backend(&Backend::CopyDone).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"COPY 1" }).unwrap();
        s.on_backend(&Backend::CopyResponse { tag: b'G', binary: false, columns: 1 }).unwrap();
        assert!(!s.copy_may_begin());
        s.on_frontend(&F::CopyDone, None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"COPY 0" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(!s.copy_may_begin(), "answered");
        // A poison standing in for a refused statement runs nothing.
        s.on_frontend(&F::Query(b"WARDEN STATEMENT REFUSED copy"), Some(Vec::new())).unwrap();
        assert!(!s.copy_may_begin());
        // An empty query string runs nothing (each would otherwise make the next one wait).
        s.on_frontend(&F::Query(b""), None).unwrap();
        assert!(!s.copy_may_begin());
    }

    #[test]
    fn portals_end_with_their_transaction_and_sql_prepare_is_tracked() {
        let mut s = ready();
        let b = bind("p1", "");
        let Ok(F::Bind(bound)) = F::decode(b'B', &b) else { panic!() };
        s.on_frontend(&parse(b"", b"select 1"), None).unwrap();
        s.on_frontend(&F::Bind(bound), None).unwrap();
        s.on_frontend(&F::Sync, None).unwrap();
        assert!(s.portal_sql(b"p1").is_some());
        s.on_backend(&Backend::ParseComplete).unwrap();
        s.on_backend(&Backend::BindComplete).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(s.portal_sql(b"p1").is_none(), "the implicit transaction ended: its portals are gone");
        s.on_frontend(&F::Query(b"PREPARE Del AS delete from t; select 1"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"PREPARE" }).unwrap();
        assert_eq!(&*s.statement(b"del").unwrap().sql, "delete from t");
        s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        s.on_frontend(&F::Query(b"deallocate all"), None).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"DEALLOCATE ALL" }).unwrap();
        assert!(s.statement(b"del").is_none() && s.statement(b"").is_none());
    }

    #[test]
    fn lexing_follows_the_session_settings_and_what_is_in_flight() {
        let mut s = ready();
        assert!(s.lexing().settled && s.lexing().ascii_safe && s.lexing().standard_conforming_strings);
        s.on_frontend(&F::Query(b"set standard_conforming_strings = off"), None).unwrap();
        assert!(!s.lexing().settled, "a statement is outstanding: the setting may change first");
        s.on_backend(&Backend::ParameterStatus { name: b"standard_conforming_strings", value: b"off" }).unwrap();
        s.on_backend(&Backend::CommandComplete { tag: b"SET" }).unwrap();
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert!(s.lexing().settled && !s.lexing().standard_conforming_strings);
        s.on_backend(&Backend::ParameterStatus { name: b"client_encoding", value: b"SJIS" }).unwrap();
        assert!(!s.lexing().ascii_safe);
        s.on_backend(&Backend::ParameterStatus { name: b"client_encoding", value: b"UTF8" }).unwrap();
        assert!(s.lexing().ascii_safe);
        // A prepared statement keeps how it was lexed when parsed.
        s.on_frontend(&parse(b"p", b"select 'x\\'"), None).unwrap();
        s.on_backend(&Backend::ParameterStatus { name: b"standard_conforming_strings", value: b"on" }).unwrap();
        assert!(!s.statement(b"p").unwrap().lexing.standard_conforming_strings);
    }

    #[test]
    fn key_data_comes_once_during_start_up() {
        let mut s = ready();
        assert!(s.on_backend(&Backend::BackendKeyData { pid: 7, key: b"wxyz" }).is_err());
    }

    #[test]
    fn desynchronised_server_is_an_error_not_a_panic() {
        let mut s = ready();
        assert!(s.on_backend(&Backend::ParseComplete).is_err());
        assert!(s.on_backend(&Backend::DataRow(b"")).is_err());
        assert!(s.on_backend(&Backend::ReadyForQuery { status: b'I' }).is_err());
        assert!(s.on_backend(&Backend::Authentication { code: 0, data: b"" }).is_err());
        let mut s = ProtocolState::new();
        assert!(s.on_frontend(&F::Query(b"select 1"), None).is_err(), "query before authentication");
    }
}
