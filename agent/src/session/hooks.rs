//! Statement-level hooks: where the policy engine, masking and the audit trail plug into a
//! session, whatever its protocol. A protocol module calls them; it never makes policy
//! decisions itself, and nothing here names a protocol's messages.

use std::{future::Future, pin::Pin, sync::Arc};

use super::{Judgement, Lexing, Parameters, QueryProtocol, Running, SessionFacts, SqlState};

/// The columns of a result set, as the protocol described them.
pub trait ResultColumns {
    fn count(&self) -> usize;
    /// The name of column `index` (from 0).
    fn name(&self, index: usize) -> Option<&[u8]>;
}

/// What a value becomes on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    Keep,
    Null,
    /// Its new bytes were appended to the output buffer.
    Written,
}

/// Rewrites the values of one result set (masking), made by the hooks when it begins.
pub trait ResultFilter: Send + Sync {
    /// Whether values of column `index` (from 0) may be rewritten.
    fn rewrites(&self, index: usize) -> bool;
    /// What a (non-NULL) value of column `index` becomes; a new value is appended to `out`.
    fn rewrite(&self, index: usize, value: &[u8], out: &mut Vec<u8>) -> Rewrite;
    /// For COPY data: how its rows are laid out (`None`: not known; the text layout is assumed
    /// for a text-format COPY).
    fn copy_layout(&self) -> Option<CopyLayout> {
        None
    }
}

/// How COPY data is laid out (default options: the only ones masking rewrites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyLayout {
    Text,
    Csv { header: bool },
    Binary,
}

/// A hook's decision about a statement.
pub enum Verdict {
    /// Forward it; the judgement (if the hooks made one) is carried with the statement to its
    /// records.
    Allow(Option<Arc<Judgement>>),
    /// Refuse with this SQLSTATE and message; the session stays usable.
    Deny { sqlstate: SqlState, message: String },
    /// Hold the statement (the client simply waits) until the future decides.
    Hold(Pin<Box<dyn Future<Output = Verdict> + Send>>),
    /// (From a held future only.) Judge the statement again: the hold prepared what judging
    /// it needs.
    AskAgain,
}

/// What the client asked for at start-up, once the session is established.
#[derive(Debug, Clone, Copy)]
pub struct SessionStart<'a> {
    /// The login user.
    pub user: Option<&'a str>,
    /// The database name the client asked for.
    pub database: Option<&'a str>,
    /// A role set at start-up (`options=-c role=...`): who the session acts as.
    pub role: Option<&'a str>,
    /// A search_path set at start-up (`options=-c search_path=...`), as the setting's text.
    pub search_path: Option<&'a str>,
}

/// What a judged message does with its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Runs it now (a simple Query, a FunctionCall).
    Run,
    /// Prepares it (an extended-protocol Parse): nothing of it runs now but what parsing itself
    /// runs.
    Prepare,
    /// Binds it to parameters in a portal (an extended-protocol Bind; `portal` names it).
    Bind,
    /// Runs a portal (an extended-protocol Execute; `portal` names it).
    Execute,
}

/// Looks up a SQL-level prepared statement by name: its text and how it lexed.
pub type PreparedLookup<'a> = dyn Fn(&str) -> Option<(Arc<str>, Lexing)> + 'a;

/// A statement about to be sent to the server.
#[derive(Clone, Copy)]
pub struct StatementInfo<'a> {
    /// The SQL text (empty for a fast-path function call).
    pub sql: &'a str,
    /// Whether `sql` is surely what runs: false for an Execute of a portal, or a Bind of a
    /// statement, the proxy did not see created, or whose name's text the server has not yet
    /// confirmed.
    pub text_known: bool,
    /// A SQL-level prepared statement by name (for `EXECUTE name`): its text and how it lexed.
    pub prepared: &'a PreparedLookup<'a>,
    pub protocol: QueryProtocol,
    /// The parameters it is about to run with (extended protocol: a Bind's, or for an Execute
    /// the parameters its portal was bound with).
    pub parameters: Option<Parameters<'a>>,
    /// The declared types (OIDs) of its parameters that users made (OID 16384 and above): a
    /// Parse's own, or for a Bind its statement's. Empty otherwise.
    pub parameter_types: &'a [u32],
    /// The function a fast-path FunctionCall invokes.
    pub function_oid: Option<u32>,
    /// How the server lexes the text (`standard_conforming_strings`, and whether it is settled).
    pub lexing: Lexing,
    /// What the message does with the statement.
    pub step: Step,
    /// The portal a Bind creates or an Execute runs (empty otherwise, and for the unnamed one).
    pub portal: &'a [u8],
    /// Numbers the session's judged messages: the same number when a message is judged again
    /// (after a hold), another for every other message.
    pub message: u64,
}

/// Session hooks. Every method has a do-nothing default.
pub trait SessionHooks: Send + Sync {
    /// Whether `before_statement` needs to see statements; when false, client messages are
    /// relayed without building a `StatementInfo` (the fast path of a session with no policy).
    fn inspects_statements(&self) -> bool {
        true
    }

    /// The session is established: who it is.
    fn on_session_start(&self, _start: &SessionStart<'_>) {}

    /// Whether the hooks need the database's facts about the session (its role, search_path,
    /// catalog) before judging the next statement. The protocol session then reads them on
    /// the server connection at the first point the server is idle, and answers `on_facts`.
    fn wants_facts(&self) -> bool {
        false
    }

    /// Whether the facts must include the database's user relations and their columns (what
    /// masking resolves result columns through).
    fn wants_relations(&self) -> bool {
        false
    }

    /// The facts asked for, or why they could not be read.
    fn on_facts(&self, _facts: Result<SessionFacts, String>) {}

    /// Before a statement reaches the server: a simple Query, an extended-protocol Bind (the
    /// point where both the statement and its parameters are known), an Execute of a portal no
    /// judged Bind created, or a FunctionCall.
    fn before_statement(&self, _statement: &StatementInfo<'_>) -> Verdict {
        Verdict::Allow(None)
    }

    /// Whether a judgement these hooks made earlier (carried by a bound portal) still stands:
    /// when the policy set or what the session knows of its database changed since, the
    /// execution is judged again.
    fn judgement_current(&self, _judgement: &Judgement) -> bool {
        true
    }

    /// A message the hooks refused (not forwarded): its judgement, for the record.
    fn on_refused(&self, _statement: &StatementInfo<'_>, _judgement: &Judgement) {}

    /// Whether `on_row` wants DataRows; when false, rows are relayed without being looked at.
    fn wants_rows(&self) -> bool {
        false
    }

    /// A statement was forwarded to the server (a simple Query, an Execute or a FunctionCall):
    /// from here it runs, whatever becomes of the client. Called once per message, after the
    /// verdict allowed it.
    fn on_forward(&self, _running: &Running) {}

    fn on_row_description(&self, _running: Option<&Running>, _columns: &dyn ResultColumns) {}

    fn on_row(&self, _running: Option<&Running>, _row: &[u8]) {}

    /// Whether results may need rewriting (`result_filter`, `scrub_fields`): when false, rows
    /// and messages pass untouched.
    fn filters_results(&self) -> bool {
        false
    }

    /// A result set begins (rows, or COPY data): the filter its values pass through, if any.
    /// `part` is the statement of the message that produced it (from 0), `columns` how the
    /// protocol describes them, `copy` whether it is COPY data.
    fn result_filter(
        &self,
        _running: Option<&Running>,
        _part: usize,
        _columns: &[super::ResultColumn],
        _copy: bool,
    ) -> Option<Box<dyn ResultFilter>> {
        None
    }

    /// The fields (code, text) of an error or notice the server sends about `running` (or
    /// about nothing in particular): replacements, when some text must not reach the client.
    fn scrub_fields(&self, _running: Option<&Running>, _fields: &[(u8, &[u8])]) -> Option<Vec<(u8, Vec<u8>)>> {
        None
    }

    /// A notification's channel and payload (from any session): replacements, if needed.
    fn scrub_notification(&self, _channel: &[u8], _payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }

    /// A statement finished with this command tag (e.g. "SELECT 3", "DELETE 1").
    fn on_complete(&self, _running: Option<&Running>, _tag: &str) {}

    /// A statement failed with this SQLSTATE (errors that replace a refused statement's are
    /// not reported: the hook refused it itself).
    fn on_error(&self, _running: Option<&Running>, _sqlstate: SqlState) {}

    /// An Execute stopped at its row limit (PortalSuspended): it ran, and may be resumed.
    fn on_suspended(&self, _running: &Running) {}

    /// A simple-query string is answered (ReadyForQuery): statements of it that neither
    /// completed nor failed did not run.
    fn on_query_end(&self, _running: &Running) {}

    /// A forwarded statement the server skipped (an earlier message of its batch failed).
    fn on_not_run(&self, _running: &Running) {}

    /// The session ended before the server reported this statement's outcome.
    fn on_abandoned(&self, _running: &Running) {}

    /// The session's client sent a cancel request (on another connection, as the protocol
    /// does): a statement held for approval is cancelled, never run later.
    fn on_cancel_request(&self) {}

    /// Whether any result of the session may be capped (`result_limit`): when false, rows are
    /// relayed without being counted against a limit (asked once per batch of messages read).
    fn limits_results(&self) -> bool {
        false
    }

    /// A result begins (rows, or COPY data) of `running` (statement `part` of its message, or
    /// more rows of a portal it resumes): the volume limit its rows are counted against, if any.
    fn result_limit(&self, _running: &Running, _part: usize) -> Option<std::sync::Arc<dyn ResultLimit>> {
        None
    }

    /// A statement was stopped at a volume limit (`cut`): what the server sends to end it is
    /// replaced by the cut's error, and this is called in place of `on_complete` / `on_error`.
    fn on_stopped(&self, _running: &Running, _cut: &Cut) {}
}

/// A volume limit on what one statement returns (rows and bytes of DataRows, or of COPY data:
/// PostgreSQL sends one CopyData per row). The relay asks for an allowance, sends up to it,
/// reports what it sent, and asks again when the next row would not fit.
pub trait ResultLimit: Send + Sync {
    /// Rows and bytes that may still be sent now (`u64::MAX`: no limit of that kind), asked
    /// before a row of `next_row` bytes (0: not known).
    fn allowance(&self, next_row: u64) -> (u64, u64);
    /// `rows` rows of `bytes` bytes were sent to the client.
    fn sent(&self, rows: u64, bytes: u64);
    /// The next row does not fit: why the statement is stopped.
    fn crossed(&self) -> Cut;
}

/// A result's volume limit as a relay counts against it: what it may still send (asked of the
/// limit when the result begins and whenever the next row would not fit), and what it sent
/// since it last told.
pub struct Measure {
    limit: std::sync::Arc<dyn ResultLimit>,
    rows_left: u64,
    bytes_left: u64,
    rows: u64,
    bytes: u64,
}

impl Measure {
    /// Begins measuring a result whose first row has `next_row` bytes (0: not known).
    pub fn new(limit: std::sync::Arc<dyn ResultLimit>, next_row: u64) -> Self {
        let (rows_left, bytes_left) = limit.allowance(next_row);
        Measure { limit, rows_left, bytes_left, rows: 0, bytes: 0 }
    }

    /// Counts a row of `bytes` about to be sent; the cut when it does not fit.
    pub fn admit(&mut self, bytes: u64) -> Option<Cut> {
        if self.rows_left == 0 || self.bytes_left < bytes {
            // What another session of the same tenant used is counted too: asked again first.
            self.report();
            (self.rows_left, self.bytes_left) = self.limit.allowance(bytes);
            if self.rows_left == 0 || self.bytes_left < bytes {
                return Some(self.limit.crossed());
            }
        }
        self.rows_left -= 1;
        self.bytes_left -= bytes;
        self.rows += 1;
        self.bytes += bytes;
        None
    }

    /// Tells the limit what was sent, and asks again what may be.
    pub fn report(&mut self) {
        if self.rows > 0 || self.bytes > 0 {
            self.limit.sent(self.rows, self.bytes);
            (self.rows, self.bytes) = (0, 0);
            (self.rows_left, self.bytes_left) = self.limit.allowance(0);
        }
    }
}

/// Why a statement was stopped at a volume limit, and how much of it was sent.
#[derive(Debug, Clone)]
pub struct Cut {
    pub sqlstate: SqlState,
    /// What the client is told (names the policy and rule).
    pub message: String,
    pub policy: std::sync::Arc<str>,
    pub rule: std::sync::Arc<str>,
    /// Rows and bytes of this statement the client got.
    pub rows: u64,
    pub bytes: u64,
}

/// The hooks of a session with no policy: everything is allowed.
pub struct AllowAll;

impl SessionHooks for AllowAll {
    fn inspects_statements(&self) -> bool {
        false
    }
}
