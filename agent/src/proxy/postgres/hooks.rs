//! Statement-level hooks: where the policy engine, masking and the audit trail plug into a
//! session. The codec and the state machine never make policy decisions themselves.

use std::{future::Future, pin::Pin};

use super::state::{QueryProtocol, Running};
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

    fn on_row_description(&self, _running: Option<&Running>, _description: &RowDescription<'_>) {}

    fn on_row(&self, _running: Option<&Running>, _row: &[u8]) {}

    /// A statement finished with this command tag (e.g. "SELECT 3", "DELETE 1").
    fn on_complete(&self, _running: Option<&Running>, _tag: &str) {}

    /// A statement failed with this SQLSTATE (errors that replace a refused statement's are
    /// not reported: the hook refused it itself).
    fn on_error(&self, _running: Option<&Running>, _sqlstate: &str) {}
}

/// The hooks of a session with no policy: everything is allowed.
pub struct AllowAll;

impl SessionHooks for AllowAll {
    fn inspects_statements(&self) -> bool {
        false
    }
}
