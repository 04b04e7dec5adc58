//! A statement on its way through a session, as every protocol describes it: how it was sent,
//! its text, its parameters, what it has returned so far, and the judgement it carries. The
//! protocol module fills it in; hooks (policy, audit) read it without knowing the protocol.

use std::sync::Arc;

use super::{Judgement, Lexing};

/// How a statement reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryProtocol {
    /// A text of one or more statements, run as it is sent.
    Simple,
    /// A statement prepared, then bound to parameters and executed.
    Extended,
    /// A function called by identifier, without SQL.
    FunctionCall,
}

impl QueryProtocol {
    /// The name in records: "simple", "extended" or "function_call".
    pub fn as_str(self) -> &'static str {
        match self {
            QueryProtocol::Simple => "simple",
            QueryProtocol::Extended => "extended",
            QueryProtocol::FunctionCall => "function_call",
        }
    }
}

/// Decodes a protocol's parameter message into (value, binary) pairs.
pub type DecodeParameters = for<'b> fn(&'b [u8]) -> Vec<(Option<&'b [u8]>, bool)>;

/// The parameters a statement runs with, as the protocol sent them (decoded on demand).
#[derive(Clone, Copy)]
pub struct Parameters<'a> {
    pub message: &'a [u8],
    pub decode: DecodeParameters,
}

impl Parameters<'_> {
    /// Each parameter's value (`None`: NULL) and whether it is in binary form.
    pub fn values(&self) -> Vec<(Option<&[u8]>, bool)> {
        (self.decode)(self.message)
    }

    /// At most `max` of them as text (`None`: NULL), each cut to `max_bytes`; binary values as
    /// `\x` and hex.
    pub fn rendered(&self, max: usize, max_bytes: usize) -> Vec<Option<String>> {
        self.values()
            .into_iter()
            .take(max)
            .map(|(value, binary)| {
                value.map(|v| {
                    let v = &v[..v.len().min(max_bytes)];
                    if binary {
                        format!("\\x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    } else {
                        String::from_utf8_lossy(v).into_owned()
                    }
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for Parameters<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parameters({} bytes)", self.message.len())
    }
}

/// A statement whose results are on their way.
#[derive(Debug, Clone)]
pub struct Running {
    /// Numbers the statements a session forwards (a query, an execution, a function call),
    /// from 1.
    pub id: u64,
    pub sql: Arc<str>,
    pub protocol: QueryProtocol,
    pub rows: u64,
    /// When the statement was sent to the server.
    pub started: std::time::Instant,
    /// Statements of this (simple-query) string completed so far: the index of the current one.
    pub completed: u32,
    /// The server reported an error for the current statement (the rest of a simple-query
    /// string then does not run).
    pub failed: bool,
    /// The function a fast-path call invokes.
    pub function_oid: Option<u32>,
    /// This execution resumes one suspended by an earlier one (its id): the same statement,
    /// more of its rows.
    pub resumes: Option<u64>,
    /// How the server lexed its text.
    pub lexing: Lexing,
    /// The portal (cursor) an execution runs: empty for the unnamed one and other protocols.
    pub portal: Vec<u8>,
    /// The message that bound its parameters, and how to read it.
    pub parameters: Option<(Arc<[u8]>, DecodeParameters)>,
    /// What the hooks judged it to be before it was forwarded (none: no hook judges).
    pub judgement: Option<Arc<Judgement>>,
    /// The columns its rows have, when the protocol described them before it ran (an
    /// extended-protocol statement described when it was prepared, with its Bind's formats).
    pub columns: Option<Arc<[ResultColumn]>>,
}

/// One column of a result, as the protocol describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultColumn {
    /// The table it comes from (0: none, a computed value) and its attribute number there.
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    /// Sent in binary format.
    pub binary: bool,
}

impl Running {
    /// A statement sent now, not yet answered.
    pub fn new(id: u64, sql: Arc<str>, protocol: QueryProtocol, lexing: Lexing) -> Running {
        Running {
            id,
            sql,
            protocol,
            rows: 0,
            started: std::time::Instant::now(),
            completed: 0,
            failed: false,
            function_oid: None,
            resumes: None,
            lexing,
            portal: Vec::new(),
            parameters: None,
            judgement: None,
            columns: None,
        }
    }

    /// The portal an execution runs.
    pub fn portal_name(&self) -> &[u8] {
        &self.portal
    }

    /// The parameters it runs with.
    pub fn parameters(&self) -> Option<Parameters<'_>> {
        self.parameters.as_ref().map(|(message, decode)| Parameters { message, decode: *decode })
    }
}
