//! What every protocol's session shares, protocol-neutral: the judgement a statement carries
//! from before it is forwarded to its completion. A protocol module carries judgements without
//! reading them; govern makes them; the audit trail records them.

pub mod hooks;
mod judgement;
mod sqlstate;
mod statement;

pub use judgement::{Decision, JudgedNames, Judgement, PartJudgement, WouldBe};
pub use sqlstate::SqlState;
pub use statement::{DecodeParameters, Parameters, QueryProtocol, ResultColumn, Running};

use std::sync::Arc;

pub use crate::sql::Dialect;
use crate::sql::catalog::Catalog;

/// What the database says of a session when it starts (read by the protocol session on the
/// server's own connection, before the client's first statement is judged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    /// The role it acts as (the login user, or a role set at start-up or by the role's and
    /// database's defaults).
    pub current_user: String,
    /// The login (or session-authorization) user.
    pub session_user: String,
    /// Its search_path setting as the server shows it.
    pub search_path: String,
    /// The schemas the server searches now (`current_schemas(true)`: existing ones, in order,
    /// the implicit pg_catalog and temporary schema included).
    pub schemas: Vec<String>,
    /// The user objects of its database that change what statements do.
    pub catalog: Arc<Catalog>,
}

/// How the server lexes a statement's text: its dialect and modes (`standard_conforming_strings`
/// for PostgreSQL, the `sql_mode` flags for MySQL) when it was sent, and whether they were
/// settled (no statement was outstanding that could have changed them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexing {
    pub standard_conforming_strings: bool,
    /// The server's grammar (PostgreSQL or MySQL) and, for MySQL, its lexical `sql_mode` flags.
    pub dialect: Dialect,
    pub settled: bool,
    /// False in client encodings whose multibyte characters can contain ASCII bytes (SJIS,
    /// BIG5, GBK, UHC, GB18030, JOHAB): a quote or backslash byte may be half a character, so
    /// the text cannot be lexed from its bytes.
    pub ascii_safe: bool,
}

impl Lexing {
    /// The options the statement's text is lexed with.
    pub fn options(&self) -> crate::sql::LexOptions {
        crate::sql::LexOptions {
            standard_conforming_strings: self.standard_conforming_strings,
            dialect: self.dialect,
            skip_versioned: false,
        }
    }
}
