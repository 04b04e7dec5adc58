//! Statement-level hooks: where the policy engine, masking and the audit trail plug into a
//! session. The codec and the state machine never make policy decisions themselves.

use std::{future::Future, pin::Pin};

use super::state::{Lexing, QueryProtocol, Running};
use crate::pg::{backend::RowDescription, frontend::Bind};

/// A hook's decision about a statement.
pub enum Verdict {
    Allow,
    /// Refuse with this SQLSTATE and message; the session stays usable.
    Deny {
        sqlstate: String,
        message: String,
    },
    /// Hold the statement (the client simply waits) until the future decides.
    Hold(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// A statement about to be sent to the server.
#[derive(Debug, Clone, Copy)]
pub struct StatementInfo<'a> {
    /// The SQL text (empty for a fast-path function call).
    pub sql: &'a str,
    pub protocol: QueryProtocol,
    /// The Bind that is about to run it (extended protocol).
    pub bind: Option<Bind<'a>>,
    /// The function a fast-path FunctionCall invokes.
    pub function_oid: Option<u32>,
    /// How the server lexes the text (`standard_conforming_strings`, and whether it is settled).
    pub lexing: Lexing,
}

/// Session hooks. Every method has a do-nothing default.
pub trait SessionHooks: Send + Sync {
    /// Whether `before_statement` needs to see statements; when false, client messages are
    /// relayed without building a `StatementInfo` (the fast path of a session with no policy).
    fn inspects_statements(&self) -> bool {
        true
    }

    /// Before a statement reaches the server: a simple Query, an extended-protocol Bind (the
    /// point where both the statement and its parameters are known), or a FunctionCall.
    fn before_statement(&self, _statement: &StatementInfo<'_>) -> Verdict {
        Verdict::Allow
    }

    /// Whether `on_row` wants DataRows; when false, rows are relayed without being looked at.
    fn wants_rows(&self) -> bool {
        false
    }

    /// A statement was forwarded to the server (a simple Query, an Execute or a FunctionCall):
    /// from here it runs, whatever becomes of the client. Called once per message, after the
    /// verdict allowed it.
    fn on_forward(&self, _running: &Running) {}

    fn on_row_description(&self, _running: Option<&Running>, _description: &RowDescription<'_>) {}

    fn on_row(&self, _running: Option<&Running>, _row: &[u8]) {}

    /// A statement finished with this command tag (e.g. "SELECT 3", "DELETE 1").
    fn on_complete(&self, _running: Option<&Running>, _tag: &str) {}

    /// A statement failed with this SQLSTATE (errors that replace a refused statement's are
    /// not reported: the hook refused it itself).
    fn on_error(&self, _running: Option<&Running>, _sqlstate: &str) {}

    /// An Execute stopped at its row limit (PortalSuspended): it ran, and may be resumed.
    fn on_suspended(&self, _running: &Running) {}

    /// A simple-query string is answered (ReadyForQuery): statements of it that neither
    /// completed nor failed did not run.
    fn on_query_end(&self, _running: &Running) {}

    /// A forwarded statement the server skipped (an earlier message of its batch failed).
    fn on_not_run(&self, _running: &Running) {}

    /// The session ended before the server reported this statement's outcome.
    fn on_abandoned(&self, _running: &Running) {}
}

/// The hooks of a session with no policy: everything is allowed.
pub struct AllowAll;

impl SessionHooks for AllowAll {
    fn inspects_statements(&self) -> bool {
        false
    }
}
