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
    backend::{AUTH_OK, Backend},
    frontend::{Bind, Frontend},
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

/// How a statement reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryProtocol {
    Simple,
    Extended,
    FunctionCall,
}

/// A statement whose results are on their way.
#[derive(Debug, Clone)]
pub struct Running {
    /// Numbers the statements a session forwards (Query, Execute, FunctionCall), from 1.
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
    /// The function a fast-path FunctionCall invokes.
    pub function_oid: Option<u32>,
    /// This Execute resumes a portal suspended by an earlier one (its id): the same statement,
    /// more of its rows.
    pub resumes: Option<u64>,
    /// The session's `standard_conforming_strings` when it was sent (how its text lexes).
    pub standard_conforming_strings: bool,
    /// The portal an Execute runs.
    portal: Vec<u8>,
    /// The Bind message body that created the portal (extended protocol).
    bind: Option<Arc<[u8]>>,
}

impl Running {
    /// The parameters the statement runs with (extended protocol).
    pub fn bind(&self) -> Option<Bind<'_>> {
        match Frontend::decode(b'B', self.bind.as_deref()?) {
            Ok(Frontend::Bind(bind)) => Some(bind),
            _ => None,
        }
    }
}

/// A portal: the statement it runs and the Bind that created it.
#[derive(Debug, Clone)]
struct Portal {
    sql: Arc<str>,
    bind: Arc<[u8]>,
    /// Set when an Execute of it ended in PortalSuspended: the id of that first execution.
    suspended: Option<u64>,
}

/// A response the server owes, in order.
#[derive(Debug, Clone)]
enum Expect {
    /// ParseComplete (a named statement is forgotten again if parsing fails).
    Parse {
        name: Option<Vec<u8>>,
    },
    Bind,
    /// ParameterDescription (statements only), then RowDescription or NoData.
    Describe,
    Close,
    /// Rows, then CommandComplete / EmptyQueryResponse / PortalSuspended (or COPY first).
    Execute(Running),
    /// Any number of result sets, then ReadyForQuery.
    SimpleQuery(Running),
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall(Running),
    /// ReadyForQuery.
    Sync,
}

impl Expect {
    fn ends_with_ready(&self) -> bool {
        matches!(self, Self::SimpleQuery(_) | Self::FunctionCall(_) | Self::Sync)
    }
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    /// The proxy forwarded a poison message in place of a refused one: the server's error for
    /// it is replaced by this ErrorResponse.
    replace_error: Option<Vec<u8>>,
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
    pub sql: Arc<str>,
    pub param_types: Vec<u32>,
}

/// The session's protocol state.
#[derive(Debug)]
pub struct ProtocolState {
    pub phase: Phase,
    /// 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block.
    pub tx_status: u8,
    pub copy: Copy,
    statements: HashMap<Vec<u8>, Prepared>,
    /// Portal name -> the SQL it runs.
    portals: HashMap<Vec<u8>, Portal>,
    pending: VecDeque<Pending>,
    /// Server-side process id and cancel key, once the server sent them.
    pub backend_key: Option<(i32, Vec<u8>)>,
    /// Statements the server completed (CommandComplete / EmptyQueryResponse).
    pub completed: u64,
    /// Rows the server returned.
    pub rows: u64,
    /// The session's `standard_conforming_strings`, as the server reports it: when off, a
    /// backslash escapes in plain string literals, which changes how statements are lexed.
    pub standard_conforming_strings: bool,
    /// The id of the last statement forwarded.
    last_id: u64,
    /// Statements forwarded but skipped by the server after an earlier error in their batch;
    /// taken by the relay (`take_skipped`) to report that they did not run.
    skipped: Vec<Running>,
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
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            backend_key: None,
            completed: 0,
            rows: 0,
            standard_conforming_strings: true,
            last_id: 0,
            skipped: Vec::new(),
        }
    }

    fn start(&mut self, sql: Arc<str>, protocol: QueryProtocol) -> Running {
        self.last_id += 1;
        Running {
            id: self.last_id,
            sql,
            protocol,
            rows: 0,
            started: std::time::Instant::now(),
            completed: 0,
            failed: false,
            function_oid: None,
            resumes: None,
            standard_conforming_strings: self.standard_conforming_strings,
            portal: Vec::new(),
            bind: None,
        }
    }

    /// The statement the last client message started (a Query, Execute or FunctionCall just
    /// recorded with `on_frontend`), if it started one.
    pub fn newest(&self) -> Option<&Running> {
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
        self.portals.get(portal).map(|p| p.sql.clone())
    }

    /// A prepared statement by name (the unnamed statement is "").
    pub fn statement(&self, name: &[u8]) -> Option<&Prepared> {
        self.statements.get(name)
    }

    /// Whether the next ErrorResponse will be replaced (it answers a poison message).
    pub fn replaces_next_error(&self) -> bool {
        self.pending.front().is_some_and(|p| p.replace_error.is_some())
    }

    /// How many responses the server still owes.
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

    /// Records a client message the relay is about to forward. `replace_error` is set when the
    /// message forwarded is a poison standing in for a refused one.
    pub fn on_frontend(&mut self, msg: &Frontend<'_>, replace_error: Option<Vec<u8>>) -> Result<(), ProtocolError> {
        let push = |s: &mut Self, expect: Expect, replace_error: Option<Vec<u8>>| {
            s.pending.push_back(Pending { expect, replace_error });
        };
        match self.phase {
            Phase::Authenticating => {
                return match msg {
                    Frontend::AuthResponse(_) => Ok(()),
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
        match msg {
            Frontend::Query(sql) => {
                let running = self.start(Arc::from(text(sql)), QueryProtocol::Simple);
                push(self, Expect::SimpleQuery(running), replace_error);
            }
            Frontend::Parse { name, sql, param_types } => {
                let named = (!name.is_empty()).then(|| name.to_vec());
                if replace_error.is_none() {
                    let sql = text(sql);
                    // Drivers re-parse the same unnamed statement over and over: keep its text.
                    let sql = match self.statements.get(*name) {
                        Some(old) if *old.sql == *sql => old.sql.clone(),
                        _ => Arc::from(sql),
                    };
                    self.statements.insert(name.to_vec(), Prepared { sql, param_types: param_types.clone() });
                }
                push(self, Expect::Parse { name: named }, replace_error);
            }
            Frontend::Bind(bind) => {
                if replace_error.is_none() {
                    let sql = self.statements.get(bind.statement).map_or_else(|| Arc::from(""), |s| s.sql.clone());
                    self.portals
                        .insert(bind.portal.to_vec(), Portal { sql, bind: Arc::from(bind.body), suspended: None });
                } else {
                    // A refused Bind creates no portal: an Execute naming it must not be taken
                    // for an earlier portal of the same name.
                    self.portals.remove(bind.portal);
                }
                push(self, Expect::Bind, replace_error);
            }
            Frontend::Describe { .. } => push(self, Expect::Describe, replace_error),
            Frontend::Execute { portal, .. } => {
                let (sql, bind, resumes) = match self.portals.get(*portal) {
                    Some(p) => (p.sql.clone(), Some(p.bind.clone()), p.suspended),
                    None => (Arc::from(""), None, None),
                };
                let mut running = self.start(sql, QueryProtocol::Extended);
                running.bind = bind;
                running.resumes = resumes;
                running.portal = portal.to_vec();
                push(self, Expect::Execute(running), replace_error);
            }
            Frontend::Close { kind, name } => {
                // Forgotten at once: the server will have closed it before any later message.
                if *kind == b'S' {
                    self.statements.remove(*name);
                } else {
                    self.portals.remove(*name);
                }
                push(self, Expect::Close, replace_error);
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

    /// Records a server message and says what to relay to the client.
    pub fn on_backend(&mut self, msg: &Backend<'_>) -> Result<BackendAction, ProtocolError> {
        match msg {
            Backend::Authentication { code, .. } => {
                if self.phase != Phase::Authenticating {
                    return Err(ProtocolError::Server("authentication request after authentication".into()));
                }
                if *code == AUTH_OK {
                    self.phase = Phase::Starting;
                }
            }
            Backend::BackendKeyData { pid, key } => self.backend_key = Some((*pid, key.to_vec())),
            Backend::ParameterStatus { name, value } => {
                if *name == b"standard_conforming_strings" {
                    self.standard_conforming_strings = *value != b"off";
                }
            }
            Backend::NoticeResponse { .. } | Backend::NotificationResponse { .. } => {}
            Backend::NegotiateProtocolVersion { .. } => {}
            Backend::ReadyForQuery { status } => {
                self.tx_status = *status;
                self.copy = Copy::None;
                if self.phase == Phase::Starting {
                    self.phase = Phase::Ready;
                    return Ok(BackendAction::Forward);
                }
                // Everything up to the message that asked for this ReadyForQuery is settled
                // (after an error the server skipped the rest of the batch).
                while let Some(p) = self.pending.pop_front() {
                    if p.expect.ends_with_ready() {
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
                let replacement = self.pending.front_mut().and_then(|p| p.replace_error.take());
                if let Some(Expect::Execute(r) | Expect::SimpleQuery(r) | Expect::FunctionCall(r)) =
                    self.pending.front_mut().map(|p| &mut p.expect)
                {
                    r.failed = true;
                }
                self.on_error();
                return Ok(replacement.map_or(BackendAction::Forward, BackendAction::Replace));
            }
            Backend::ParseComplete => self.complete(|e| matches!(e, Expect::Parse { .. }), "ParseComplete")?,
            Backend::BindComplete => self.complete(|e| matches!(e, Expect::Bind), "BindComplete")?,
            Backend::CloseComplete => self.complete(|e| matches!(e, Expect::Close), "CloseComplete")?,
            Backend::NoData => self.complete(|e| matches!(e, Expect::Describe), "NoData")?,
            Backend::ParameterDescription { .. } => {
                if !matches!(self.pending.front().map(|p| &p.expect), Some(Expect::Describe)) {
                    return Err(ProtocolError::Server("ParameterDescription nothing asked for".into()));
                }
            }
            Backend::RowDescription(_) => match self.pending.front().map(|p| &p.expect) {
                Some(Expect::Describe) => {
                    self.pending.pop_front();
                }
                Some(Expect::SimpleQuery(_)) => {}
                _ => {
                    return Err(ProtocolError::Server("RowDescription nothing asked for".into()));
                }
            },
            Backend::DataRow(_) => self.data_rows(1)?,
            Backend::CommandComplete { .. } | Backend::EmptyQueryResponse => {
                self.completed += 1;
                self.copy = Copy::None;
                match self.pending.front_mut().map(|p| &mut p.expect) {
                    Some(Expect::Execute(_)) => {
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
            }
            Backend::PortalSuspended => {
                let Some(Expect::Execute(r)) = self.pending.front().map(|p| &p.expect) else {
                    return Err(ProtocolError::Server("PortalSuspended nothing asked for".into()));
                };
                let first = r.resumes.unwrap_or(r.id);
                if let Some(portal) = self.portals.get_mut(&r.portal) {
                    portal.suspended = Some(first);
                }
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

    /// An ErrorResponse ends the current operation. In the extended protocol the server then
    /// skips everything up to the next Sync; a simple query still ends with ReadyForQuery.
    fn on_error(&mut self) {
        let Some(front) = self.pending.front() else {
            return;
        };
        if front.expect.ends_with_ready() {
            return;
        }
        if let Expect::Parse { name: Some(name) } = &front.expect {
            self.statements.remove(name);
        }
        let mut first = true;
        while let Some(p) = self.pending.front() {
            if p.expect.ends_with_ready() {
                break;
            }
            if let Some(Pending { expect: Expect::Execute(r), replace_error: None }) = self.pending.pop_front()
                && !first
            {
                // Forwarded, never run: the server skips to Sync after an error.
                self.skipped.push(r);
            }
            first = false;
        }
    }
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
            assert_eq!(s.running().unwrap().bind().unwrap().statement, b"s1");
            s.on_backend(&Backend::DataRow(b"\0\x01")).unwrap();
            assert_eq!(s.running().unwrap().rows, 1);
            s.on_backend(&Backend::CommandComplete { tag: b"SELECT 1" }).unwrap();
        }
        s.on_backend(&Backend::ReadyForQuery { status: b'I' }).unwrap();
        assert_eq!(s.pending(), 0);
        assert!(s.statement(b"s1").is_some());
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
