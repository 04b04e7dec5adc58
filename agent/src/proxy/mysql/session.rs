//! The command phase: every client command is read whole, judged by the session hooks when it
//! runs or prepares a statement, and forwarded or answered with an ERR; every server packet is
//! read against what the server owes (`state`) and relayed.
//!
//! Commands are read one at a time and written on at once; answers are written on as they
//! come, one write per read of the server. A command the proxy cannot read (replication,
//! MariaDB's bulk execute, anything unknown) is refused: what is not understood is not
//! forwarded.

use std::{collections::HashMap, io, sync::Arc};

use bytes::{BufMut as _, BytesMut};
use mysql_common::constants::CapabilityFlags as Caps;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    catalog,
    handshake::{Auth, Established},
    packet::{self, Packet},
    params, refusal,
    rows::{self, Definition},
    state::{self, Answer, Event, Owed, Shape},
};
use crate::{
    proxy::postgres::{SessionContext, SessionError, SessionReport, state::ProtocolError, stream::MaybeTls},
    session::{
        DecodeParameters, Dialect, Judgement, Lexing, Parameters, QueryProtocol, ResultColumn, Running, SessionFacts,
        SqlState,
        hooks::{Cut, Measure, ResultFilter, SessionHooks, SessionStart, StatementInfo, Step, Verdict},
    },
    sql::catalog::Catalog,
};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PROCESS_KILL: u8 = 0x0c;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// The most one read of either socket takes.
const MAX_READ: usize = 128 * 1024;

/// What the client may send while a statement is held, kept for after the decision.
const MAX_HELD_INPUT: usize = 1 << 20;
/// Answers owed at most: beyond, the client's further commands wait in its socket.
const MAX_OWED: usize = 256;
/// Statements prepared at most (MySQL's own max_prepared_stmt_count defaults to 16,382).
const MAX_PREPARED: usize = 16_384;
/// What the proxy asks the server for its facts: the current database, the account the
/// session acts as, and what decides how statement text is lexed.
/// Each value is cast to binary: the server converts text results to the session's
/// character_set_results, which the client chooses (UTF-16 would garble every fact).
const FACTS_QUERY: &str = "SELECT CAST(DATABASE() AS BINARY), CAST(CURRENT_USER() AS BINARY), \
     CAST(@@character_set_client AS BINARY), CAST(@@sql_mode AS BINARY), \
     CAST(@@character_set_results AS BINARY)";

/// What the proxy keeps of the answer to its own query at most.
const MAX_INTERNAL_ANSWER: usize = 16 << 20;

/// Character sets whose text is not ASCII-compatible (what masking cannot read or write in).
const WIDE_CHARSETS: &[&str] = &["ucs2", "utf16", "utf16le", "utf32"];

/// Character sets whose multibyte characters can hold the bytes of `'`, `"` or `\`: text in
/// them cannot be lexed from its bytes.
const UNSAFE_CHARSETS: &[&str] = &["big5", "sjis", "cp932", "gbk", "gb18030"];

/// What an answer the server owes belongs to.
struct Owner {
    kind: Kind,
    running: Option<Running>,
    /// The server asked for a client file this statement was not judged to send (the
    /// sequence id of its request): the server was sent none, and the client gets an ERR in
    /// place of the server's answer.
    infile_refused: Option<u8>,
    /// Its rows are binary (an execution's or a fetch's).
    binary: bool,
    /// The prepared statement it executes or fetches from.
    stmt: Option<u32>,
    /// A fetch: rows of a cursor an execution opened.
    fetch: bool,
    /// The result set being relayed, when results are masked or measured.
    result: Option<ResultState>,
    /// Stopped at a volume limit: what the client is told, and whether it was.
    stopped: Option<(Cut, bool)>,
    /// The sequence id of the next packet the client gets of this answer.
    next_seq: u8,
}

impl Owner {
    fn new(kind: Kind, running: Option<Running>, shape: Shape) -> Self {
        Owner {
            kind,
            running,
            infile_refused: None,
            binary: matches!(shape, Shape::Results { binary: true } | Shape::Fetch),
            stmt: None,
            fetch: shape == Shape::Fetch,
            result: None,
            stopped: None,
            next_seq: 1,
        }
    }
}

/// A result set as masking and volume limits see it: its column definitions, then the filter
/// its values pass through and the limit its rows count against.
struct ResultState {
    expected: usize,
    columns: Vec<Definition>,
    filter: Option<Box<dyn ResultFilter>>,
    measure: Option<Measure>,
}

enum Kind {
    /// A statement's results (COM_QUERY, COM_STMT_EXECUTE, COM_STMT_FETCH).
    Statement,
    /// COM_STMT_PREPARE of this text, in this database.
    Prepare(Arc<str>, Lexing, Db),
    /// COM_INIT_DB: the database it selects.
    InitDb(String),
    ResetConnection,
    /// The proxy's own facts query: its rows, kept from the client.
    Facts {
        rows: Vec<Vec<Option<Vec<u8>>>>,
        error: Option<String>,
    },
    Other,
}

/// A statement the server prepared.
/// The current database as far as the proxy knows it: `None` when it may have changed since
/// the facts were read, `Some(None)` when there is none.
type Db = Option<Option<String>>;

struct Prepared {
    sql: Arc<str>,
    lexing: Lexing,
    /// The database it was prepared in: it runs there, whatever is current when executed.
    database: Db,
    /// Closed by the client while answers of it were still owed.
    closed: bool,
    /// The last execution that opened a cursor: what its fetches continue.
    cursor: Option<(u64, Option<Arc<Judgement>>)>,
    /// The columns of that cursor's rows.
    cursor_columns: Option<Arc<[Definition]>>,
    /// How many parameters it takes, the types the client bound last, and the parameters sent
    /// as long data since its last execution.
    params: usize,
    param_types: Vec<params::ParamType>,
    long_data: Vec<u16>,
}

struct Session<'a> {
    ctx: &'a SessionContext,
    client: MaybeTls,
    server: MaybeTls,
    client_buf: BytesMut,
    server_buf: BytesMut,
    to_client: Vec<u8>,
    /// What the proxy itself sends the server (the end of a refused file transfer).
    to_server: Vec<u8>,
    /// The client is sending a file the server asked for: its packets are data, not commands,
    /// up to an empty one; the sequence id the server expects of the next.
    infile_open: bool,
    infile_seq: u8,
    /// CLIENT_LOCAL_FILES was agreed: the server may ask for a file in answer to any query.
    local_files: bool,
    owed: Owed<Owner>,
    user: String,
    database: Option<String>,
    charset: String,
    ansi_quotes: bool,
    no_backslash_escapes: bool,
    /// Something forwarded may have changed the database, the account, the character set or
    /// the sql_mode: the facts are read again before the next statement is judged.
    facts_stale: bool,
    /// Something forwarded may have changed the character set: until the facts say which,
    /// text is not lexed from its bytes.
    charset_unsettled: bool,
    prepared: HashMap<u32, Prepared>,
    /// SQL-level prepared statements by name (lower case): their text and how it lexed.
    sql_prepared: HashMap<String, (Arc<str>, Lexing, Db)>,
    /// The text of the statement the server prepared last, as far as the proxy knows (MariaDB's
    /// statement id -1 names it): set when a prepare is forwarded, cleared when one is refused
    /// or fails.
    last_prepare: Option<(Arc<str>, Lexing, Db)>,
    statements: u64,
    judged: u64,
    mariadb: bool,
    /// The relations as last read (what a result column's origin is resolved through).
    catalog: Arc<Catalog>,
    /// Collation ids whose text is not ASCII-compatible (as last read with the catalog).
    wide: Arc<std::collections::HashSet<u16>>,
    /// character_set_results is not ASCII-compatible: the server's messages are in it too.
    results_wide: bool,
    /// A row as rewritten for the client.
    row_buf: Vec<u8>,
}

/// Runs the command phase until the client quits or either side goes.
pub async fn relay(ctx: &SessionContext, est: Established, report: &mut SessionReport) -> Result<(), SessionError> {
    let mut session = Session {
        ctx,
        ansi_quotes: est.status & state::ANSI_QUOTES != 0,
        no_backslash_escapes: est.status & state::NO_BACKSLASH_ESCAPES != 0,
        client: est.client,
        server: est.server,
        client_buf: est.client_buf,
        server_buf: est.server_buf,
        to_client: Vec::with_capacity(16 * 1024),
        to_server: Vec::new(),
        infile_open: false,
        infile_seq: 0,
        local_files: est.caps.contains(Caps::CLIENT_LOCAL_FILES),
        owed: Owed::new(est.caps.contains(Caps::CLIENT_DEPRECATE_EOF)),
        user: est.user,
        database: est.database,
        charset: est.charset,
        facts_stale: true,
        charset_unsettled: false,
        prepared: HashMap::new(),
        sql_prepared: HashMap::new(),
        last_prepare: None,
        statements: 0,
        judged: 0,
        mariadb: est.mariadb,
        catalog: Arc::default(),
        wide: Arc::default(),
        results_wide: false,
        row_buf: Vec::new(),
    };
    let ended = async {
        match &ctx.live {
            Some(live) => live.ended().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        by = ended => Err(SessionError::Terminated(by)),
        r = session.run(report) => r,
    };
    if let Err(SessionError::Terminated(by)) = &outcome {
        // ER_CONNECTION_KILLED, as the server's own KILL CONNECTION says.
        let message = by.client_message();
        let _ = session.client.write_all(&refusal::err_packet(0, 1927, *b"70100", &message)).await;
        let _ = session.client.flush().await;
    }
    for owner in session.owed.drain() {
        if let Some(running) = &owner.running {
            ctx.hooks.on_abandoned(running);
        }
    }
    report.statements = session.statements;
    outcome
}

impl Session<'_> {
    async fn run(&mut self, report: &mut SessionReport) -> Result<(), SessionError> {
        let limit = self.ctx.max_message;
        loop {
            while let Some(p) = packet::take(&mut self.server_buf, limit)
                .map_err(|e| SessionError::Protocol(ProtocolError::Server(e.to_string())))?
            {
                report.bytes_from_server += p.payload.len() as u64 + 4 * u64::from(p.fragments);
                self.on_server(p, report)?;
            }
            self.flush_client().await?;
            if !self.to_server.is_empty() {
                let bytes = std::mem::take(&mut self.to_server);
                self.server.write_all(&bytes).await.map_err(SessionError::UpstreamIo)?;
                self.server.flush().await.map_err(SessionError::UpstreamIo)?;
            }
            // A command is taken only when the client's earlier answers are written, and while
            // the client may be asked for a file, only its data.
            let takes = self.infile_open || !self.awaiting_infile() && self.owed.len() < MAX_OWED;
            if takes
                && let Some(p) = packet::take(&mut self.client_buf, limit)
                    .map_err(|e| SessionError::Protocol(ProtocolError::Client(e.to_string())))?
            {
                report.bytes_from_client += p.payload.len() as u64 + 4 * u64::from(p.fragments);
                if !self.on_command(p).await? {
                    return Ok(());
                }
                continue;
            }
            // What the client sends while its commands wait stays in its socket, beyond a
            // packet's worth.
            let read_client = takes || self.client_buf.len() < 64 * 1024;
            if read_client {
                self.client_buf.reserve(16 * 1024);
            }
            self.server_buf.reserve(16 * 1024);
            // Each read takes at most MAX_READ, whatever room a grown buffer has: a stream that
            // outruns its rewriting would otherwise be read (and its rows rewritten) in ever
            // larger pieces.
            let mut server_room = (&mut self.server_buf).limit(MAX_READ);
            let mut client_room = (&mut self.client_buf).limit(MAX_READ);
            tokio::select! {
                read = self.server.read_buf(&mut server_room) => match read {
                    Ok(0) => return Err(SessionError::UpstreamClosed),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::UpstreamIo(e)),
                },
                read = self.client.read_buf(&mut client_room), if read_client => match read {
                    // The client left: what it sent runs to its end on the server, which sees
                    // the close as the client's quit.
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.to_client.is_empty() {
            self.client.write_all(&self.to_client).await.map_err(SessionError::ClientIo)?;
            self.client.flush().await.map_err(SessionError::ClientIo)?;
            self.to_client.clear();
            if self.to_client.capacity() > 1 << 20 {
                self.to_client = Vec::with_capacity(16 * 1024);
            }
        }
        Ok(())
    }

    /// Whether the server may ask the client for a file before the client's next command is
    /// read: a query is owed on a connection that allows LOCAL INFILE. (The client's next
    /// packets might be the file; taken as a command, the server would read them otherwise.)
    fn awaiting_infile(&self) -> bool {
        self.local_files && self.owed.owes_query()
    }

    /// The current database, when the proxy knows it.
    fn current_db(&self) -> Db {
        (!self.facts_stale).then(|| self.database.clone())
    }

    fn lexing(&self) -> Lexing {
        Lexing {
            standard_conforming_strings: true,
            settled: !self.facts_stale,
            ascii_safe: !self.charset_unsettled
                && !UNSAFE_CHARSETS.contains(&self.charset.as_str())
                && !self.charset.is_empty(),
            dialect: Dialect::MySql { ansi_quotes: self.ansi_quotes, no_backslash_escapes: self.no_backslash_escapes },
        }
    }

    /// One server packet: read against what is owed, relayed (or kept, for the proxy's own
    /// query), and told to the hooks.
    fn on_server(&mut self, p: Packet, report: &mut SessionReport) -> Result<(), SessionError> {
        let (event, mut done) =
            self.owed.on_server(&p).map_err(|e| SessionError::Protocol(ProtocolError::Server(e.0)))?;
        let hooks = &self.ctx.hooks;
        // The owner of the packet: the answer just ended, or the one still at the front.
        let owner = match done {
            Some(ref mut o) => Some(o),
            None => self.owed.front_mut(),
        };
        let Some(owner) = owner else { return Ok(()) };
        if self.infile_open && matches!(event, Event::Done { .. } | Event::Error) {
            // The server ended the statement while the proxy still relays the client's file:
            // the two no longer agree on what the client's next packets are.
            return Err(SessionError::Protocol(ProtocolError::Server(
                "answered a LOCAL INFILE statement before its file was sent".into(),
            )));
        }
        if let Kind::Facts { rows, error } = &mut owner.kind {
            match event {
                Event::Row => rows.push(text_row(&p.payload)),
                Event::Error => {
                    *error = Some(refusal::read_err(&p.payload).map_or_else(
                        || "the server refused the facts query".into(),
                        |(c, _, m)| format!("the server refused the facts query: {c} {m}"),
                    ))
                }
                _ => {}
            }
        } else if let Some(seq) = owner.infile_refused
            && matches!(event, Event::Done { .. } | Event::Error)
            && owner.stopped.is_none()
        {
            // The server's answer to the file it was not sent: the client hears why instead.
            let message = "warden: the server asked for a client file (LOAD DATA LOCAL INFILE), which this statement was not judged to send; refused";
            packet::put(&mut self.to_client, seq, &refusal::err_payload(refusal::ACCESS_DENIED, *b"42000", message));
            if let Some(r) = owner.running.as_mut() {
                hooks.on_error(Some(r), SqlState::INSUFFICIENT_PRIVILEGE);
                r.failed = true;
            }
            if let Event::Done { status, .. } = event
                && status & state::MORE_RESULTS != 0
            {
                // The ERR ends the client's answer: the server's further results are not its.
                return Err(SessionError::Protocol(ProtocolError::Server(
                    "went on with more results after a refused file transfer".into(),
                )));
            }
        } else if event == Event::LocalInfile {
            if owner.stopped.is_none()
                && owner.running.as_ref().is_none_or(|r| names_load_data_local(r.judgement.as_deref()))
            {
                packet::put(&mut self.to_client, p.seq, &p.payload);
                self.infile_open = true;
                self.infile_seq = p.seq.wrapping_add(1);
            } else {
                // No file goes to the server: an empty transfer, as a client that has none.
                packet::put(&mut self.to_server, p.seq.wrapping_add(1), &[]);
                owner.infile_refused = Some(p.seq);
            }
        } else {
            // What the client gets of the packet: as it is, rewritten (masking), replaced by an
            // ERR (a volume limit's cut, a scrubbed message), or nothing (rows after a cut).
            // A fetch reads the columns its cursor's execution described (looked up now: the
            // fetch may have been sent before that answer came).
            let cursor = match (owner.fetch, owner.stmt) {
                (true, Some(id)) => self.prepared.get(&id).and_then(|s| s.cursor_columns.clone()),
                _ => None,
            };
            let known = Known { catalog: &self.catalog, wide: &self.wide, results_wide: self.results_wide };
            let outcome = govern_packet(owner, &event, &p, cursor, &**hooks, known, &mut self.row_buf)?;
            if let Event::Done { status, .. } = event
                && status & state::CURSOR_EXISTS != 0
                && !owner.fetch
                && let (Some(id), Some(columns)) = (owner.stmt, outcome.columns)
                && let Some(prepared) = self.prepared.get_mut(&id)
            {
                // The cursor's fetches read rows of these columns.
                prepared.cursor_columns = Some(columns);
            }
            let relayed = !matches!(outcome.relay, Relay::Dropped);
            match outcome.relay {
                Relay::Same => owner.next_seq = packet::put(&mut self.to_client, p.seq, &p.payload),
                Relay::Rewritten => owner.next_seq = packet::put(&mut self.to_client, p.seq, &self.row_buf),
                Relay::Replaced(payload, seq) => owner.next_seq = packet::put(&mut self.to_client, seq, &payload),
                Relay::Dropped => {}
            }
            match event {
                Event::Done { .. } if outcome.cut => {
                    // Recorded as stopped (`on_stopped`), in place of its completion.
                    if let Some(r) = owner.running.as_mut() {
                        r.rows = 0;
                        r.completed += 1;
                    }
                }
                Event::Error if outcome.cut => {
                    if let Some(r) = owner.running.as_mut() {
                        r.failed = true;
                    }
                }
                Event::Row if !relayed => {}
                Event::Row => {
                    report.rows += 1;
                    if let Some(r) = owner.running.as_mut() {
                        r.rows += 1;
                    }
                }
                Event::Done { affected, status } => {
                    self.no_backslash_escapes = status & state::NO_BACKSLASH_ESCAPES != 0;
                    if self.mariadb {
                        self.ansi_quotes = status & state::ANSI_QUOTES != 0;
                    }
                    if let Some(r) = owner.running.as_mut() {
                        let db = (!self.facts_stale).then(|| self.database.clone());
                        track_sql_prepared(&mut self.sql_prepared, r, db);
                        if status & state::CURSOR_EXISTS != 0 && status & state::LAST_ROW_SENT == 0 {
                            // An execution that opened a cursor, or a fetch with rows left: it
                            // goes on with the next fetch (its volume counted on).
                            hooks.on_suspended(r);
                        } else {
                            let tag = match affected {
                                Some(n) => format!("OK {n}"),
                                None => format!("SELECT {}", r.rows),
                            };
                            hooks.on_complete(Some(r), &tag);
                        }
                        r.rows = 0;
                        r.completed += 1;
                    }
                }
                Event::Error => {
                    if matches!(owner.kind, Kind::Prepare(..)) {
                        // What the server's "last prepared statement" is now is not known.
                        self.last_prepare = None;
                    }
                    if let Some(r) = owner.running.as_mut() {
                        if crate::sql::contains_ci(&r.sql, "prepare") {
                            // A PREPARE that fails leaves no statement of its name.
                            self.sql_prepared.clear();
                        }
                        let code =
                            refusal::read_err(&p.payload).and_then(|(_, s, _)| s).unwrap_or(SqlState::INTERNAL_ERROR);
                        hooks.on_error(Some(r), code);
                        r.failed = true;
                    }
                }
                Event::Prepared { id, params, .. } => {
                    if let Kind::Prepare(sql, lexing, database) = &owner.kind {
                        self.prepared.insert(
                            id,
                            Prepared {
                                sql: sql.clone(),
                                lexing: *lexing,
                                database: database.clone(),
                                closed: false,
                                cursor: None,
                                cursor_columns: None,
                                params: usize::from(params),
                                param_types: Vec::new(),
                                long_data: Vec::new(),
                            },
                        );
                    }
                }
                Event::ResultStart { .. } | Event::Column | Event::Other | Event::LocalInfile => {}
            }
        }
        if let Some(owner) = done {
            self.answered(owner, &event);
        }
        self.owed.take_own(&mut self.to_client);
        Ok(())
    }

    /// An answer ended.
    fn answered(&mut self, owner: Owner, last: &Event) {
        let ok = !matches!(last, Event::Error);
        if let Some(id) = owner.stmt
            && self.prepared.get(&id).is_some_and(|s| s.closed)
            && !self.owed.any_pending(|o| o.stmt == Some(id))
        {
            self.prepared.remove(&id);
        }
        match owner.kind {
            Kind::InitDb(db) if ok => {
                self.database = Some(db);
                self.facts_stale = true;
            }
            Kind::ResetConnection if ok => {
                self.prepared.clear();
                self.sql_prepared.clear();
                self.facts_stale = true;
            }
            _ => {}
        }
        if let Some(r) = &owner.running
            && r.protocol == QueryProtocol::Simple
        {
            self.ctx.hooks.on_query_end(r);
        }
    }

    /// One client command. Returns false when the client quit.
    async fn on_command(&mut self, p: Packet) -> Result<bool, SessionError> {
        if self.infile_open {
            // The file the server asked for, relayed as it comes, in the sequence the server
            // expects (whatever ids the client put on it); an empty packet ends it.
            self.infile_open = !p.payload.is_empty();
            let framed = framed(self.infile_seq, &p.payload);
            self.infile_seq = self.infile_seq.wrapping_add(p.fragments.max(1));
            self.server.write_all(&framed).await.map_err(SessionError::UpstreamIo)?;
            self.server.flush().await.map_err(SessionError::UpstreamIo)?;
            return Ok(true);
        }
        if p.seq != 0 {
            return Err(SessionError::Protocol(ProtocolError::Client(format!(
                "sent a command with sequence id {} (a command starts at 0)",
                p.seq
            ))));
        }
        let Some(&command) = p.payload.first() else {
            return Err(SessionError::Protocol(ProtocolError::Client("sent an empty packet as a command".into())));
        };
        let (shape, kind) = match command {
            COM_QUIT => {
                let _ = self.server.write_all(&framed(0, &p.payload)).await;
                let _ = self.server.flush().await;
                return Ok(false);
            }
            COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE | COM_STMT_FETCH | COM_PROCESS_KILL | COM_INIT_DB
            | COM_FIELD_LIST => {
                return self.statement(p, command).await.map(|()| true);
            }
            COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => {
                // No answer. Long data is part of the parameters the statement's execution is
                // judged with; a close ends what a statement id names.
                match (command, stmt_id(&p.payload)) {
                    (COM_STMT_CLOSE, Some(id)) => {
                        // Answers still owed for it (a pipelined fetch) are read with what it
                        // was; it is forgotten once they end.
                        if self.owed.any_pending(|o| o.stmt == Some(id)) {
                            if let Some(prepared) = self.prepared.get_mut(&id) {
                                prepared.closed = true;
                            }
                        } else {
                            self.prepared.remove(&id);
                        }
                    }
                    (_, Some(id)) => {
                        if let (Some(prepared), Some(param)) = (self.prepared.get_mut(&id), p.payload.get(5..7)) {
                            let param = u16::from_le_bytes([param[0], param[1]]);
                            if !prepared.long_data.contains(&param) && prepared.long_data.len() < prepared.params {
                                prepared.long_data.push(param);
                            }
                        }
                    }
                    _ => {}
                }
                self.forward(&p).await?;
                return Ok(true);
            }
            COM_CHANGE_USER => return self.change_user(p).await.map(|()| true),
            COM_RESET_CONNECTION => {
                // The session's sql_mode and character set go back to the server's defaults:
                // from now, not from the answer (a pipelined statement would be lexed wrongly).
                self.facts_stale = true;
                self.charset_unsettled = true;
                self.last_prepare = None;
                (Shape::Status, Kind::ResetConnection)
            }
            COM_STMT_RESET => {
                // Long data sent so far is dropped.
                if let Some(prepared) = stmt_id(&p.payload).and_then(|id| self.prepared.get_mut(&id)) {
                    prepared.long_data.clear();
                }
                (Shape::Status, Kind::Other)
            }
            COM_PING | COM_SET_OPTION => (Shape::Status, Kind::Other),
            COM_STATISTICS => (Shape::Any, Kind::Other),
            other => {
                let message = format!(
                    "warden: command {other:#04x} is not relayed (replication, debugging, bulk execution and unknown commands are refused)"
                );
                self.refuse(refusal::UNKNOWN_COMMAND, *b"08S01", &message);
                return Ok(true);
            }
        };
        self.owed.push(Answer::Server { shape, tag: Owner::new(kind, None, shape) });
        self.forward(&p).await?;
        Ok(true)
    }

    async fn forward(&mut self, p: &Packet) -> Result<(), SessionError> {
        self.server.write_all(&framed(p.seq, &p.payload)).await.map_err(SessionError::UpstreamIo)?;
        self.server.flush().await.map_err(SessionError::UpstreamIo)
    }

    /// Answers the current command with an ERR of the proxy's own, in its turn.
    fn refuse(&mut self, code: u16, sqlstate: [u8; 5], message: &str) {
        self.owed.push(Answer::Own(refusal::err_packet(1, code, sqlstate, message)));
        self.owed.take_own(&mut self.to_client);
    }

    /// A command that runs or prepares a statement: judged, then forwarded or refused.
    async fn statement(&mut self, p: Packet, command: u8) -> Result<(), SessionError> {
        let hooks = self.ctx.hooks.clone();
        let inspect = hooks.inspects_statements();
        if inspect && self.owed.is_empty() && (self.facts_stale || hooks.wants_facts()) {
            let facts = self.read_facts().await?;
            hooks.on_facts(facts);
        }
        let now = self.lexing();
        let (sql, text_known, lexing, step, kind, cursor_of): (Arc<str>, bool, Lexing, Step, Kind, Option<u32>) =
            match command {
                COM_QUERY => {
                    let (sql, lexing) = statement_text(&p.payload[1..], now, &self.charset);
                    (sql, true, lexing, Step::Run, Kind::Statement, None)
                }
                COM_INIT_DB => {
                    // Judged and recorded as the statement it is: USE `db`.
                    let db = String::from_utf8_lossy(&p.payload[1..]).into_owned();
                    let sql: Arc<str> = Arc::from(format!("USE {}", backticked(&db)));
                    (sql, true, now, Step::Run, Kind::InitDb(db), None)
                }
                COM_FIELD_LIST => {
                    // The columns of a table: SHOW COLUMNS FROM `t` [LIKE 'wild'].
                    let body = &p.payload[1..];
                    let end = memchr::memchr(0, body).unwrap_or(body.len());
                    let table = String::from_utf8_lossy(&body[..end]).into_owned();
                    let wild = body.get(end + 1..).filter(|w| !w.is_empty());
                    let mut sql = format!("SHOW COLUMNS FROM {}", backticked(&table));
                    if let Some(w) = wild {
                        sql.push_str(&format!(" LIKE {}", quoted(&String::from_utf8_lossy(w))));
                    }
                    (Arc::from(sql), true, now, Step::Run, Kind::Other, None)
                }
                COM_PROCESS_KILL => {
                    // The command form of KILL CONNECTION: judged and recorded as that statement.
                    let id = stmt_id(&p.payload).ok_or_else(|| {
                        SessionError::Protocol(ProtocolError::Client("sent COM_PROCESS_KILL without an id".into()))
                    })?;
                    (Arc::from(format!("KILL CONNECTION {id}")), true, now, Step::Run, Kind::Statement, None)
                }
                COM_STMT_PREPARE => {
                    if self.prepared.len() >= MAX_PREPARED {
                        self.last_prepare = None;
                        let message = "warden: too many prepared statements on this connection (close some)";
                        self.refuse(1461, *b"42000", message);
                        return Ok(());
                    }
                    let (sql, lexing) = statement_text(&p.payload[1..], now, &self.charset);
                    let db = self.current_db();
                    (sql.clone(), true, lexing, Step::Prepare, Kind::Prepare(sql, lexing, db), None)
                }
                _ => {
                    let id = stmt_id(&p.payload).ok_or_else(|| {
                        SessionError::Protocol(ProtocolError::Client("sent a statement command without an id".into()))
                    })?;
                    let known = if id == u32::MAX {
                        // MariaDB: the statement prepared last, once the server said it was
                        // (a prepare it refuses leaves the one before as the last).
                        let unconfirmed = self.owed.any_pending(|o| matches!(o.kind, Kind::Prepare(..)));
                        if unconfirmed { None } else { self.last_prepare.clone() }
                    } else {
                        self.prepared
                            .get(&id)
                            .filter(|s| !s.closed)
                            .map(|s| (s.sql.clone(), s.lexing, s.database.clone()))
                    };
                    let (sql, known, lexing) = match known {
                        // It runs in the database it was prepared in: judged as its text only
                        // while that is the current one.
                        Some((sql, lexing, db)) => {
                            let same = db.is_some() && db == self.current_db();
                            (sql, same, lexing)
                        }
                        None => (Arc::from(""), false, now),
                    };
                    (sql, known, lexing, Step::Run, Kind::Statement, Some(id))
                }
            };
        // An execution's parameters, read with the types its statement was bound with.
        let parameters: Option<Arc<[u8]>> = match (command, cursor_of) {
            (COM_STMT_EXECUTE, Some(id)) => self.prepared.get_mut(&id).filter(|s| !s.closed).and_then(|prepared| {
                // Long data is cleared when the execution is forwarded (a refused one leaves
                // the server holding it).
                params::normalise(&p.payload, prepared.params, &mut prepared.param_types, &prepared.long_data)
                    .map(Arc::from)
            }),
            _ => None,
        };
        if command == COM_STMT_FETCH {
            // A fetch reads more rows of the cursor an execution opened: judged with it.
            let cursor =
                cursor_of.and_then(|id| self.prepared.get(&id)).filter(|s| !s.closed).and_then(|s| s.cursor.clone());
            if cursor.is_none() && inspect && (hooks.filters_results() || hooks.limits_results()) {
                // Its rows could be neither masked nor counted (MariaDB's id -1, a cursor opened
                // by an execution the proxy could not tie to a statement).
                let message = "warden: a fetch from a cursor the proxy did not see opened is not relayed while results are masked or limited";
                self.refuse(refusal::ACCESS_DENIED, *b"42000", message);
                return Ok(());
            }
            let running = cursor.map(|(resumes, judgement)| Running {
                resumes: Some(resumes),
                judgement,
                ..Running::new(self.next_statement(), sql.clone(), QueryProtocol::Extended, lexing)
            });
            let owner = Owner { stmt: cursor_of, ..Owner::new(Kind::Statement, running, Shape::Fetch) };
            self.owed.push(Answer::Server { shape: Shape::Fetch, tag: owner });
            return self.forward(&p).await;
        }
        let protocol = if matches!(command, COM_QUERY | COM_PROCESS_KILL | COM_INIT_DB | COM_FIELD_LIST) {
            QueryProtocol::Simple
        } else {
            QueryProtocol::Extended
        };
        if !inspect {
            let running =
                (command != COM_STMT_PREPARE).then(|| self.running(sql, protocol, lexing, None, parameters.clone()));
            return self.send_statement(p, command, kind, running, cursor_of).await;
        }

        self.judged += 1;
        let message = self.judged;
        let mut verdict = self.judge(&sql, text_known, protocol, lexing, step, message, parameters.as_deref());
        for _ in 0..3 {
            let Verdict::Hold(decision) = verdict else { break };
            verdict = match self.wait_for(decision).await? {
                Verdict::AskAgain => {
                    self.judge(&sql, text_known, protocol, lexing, step, message, parameters.as_deref())
                }
                decided => decided,
            };
        }
        match verdict {
            Verdict::Allow(judgement) => {
                let running = (command != COM_STMT_PREPARE)
                    .then(|| self.running(sql, protocol, lexing, judgement, parameters.clone()));
                self.send_statement(p, command, kind, running, cursor_of).await
            }
            Verdict::Deny { sqlstate, message } => {
                if command == COM_STMT_PREPARE {
                    self.last_prepare = None;
                }
                let (code, state) = refusal::code_for(sqlstate);
                self.refuse(code, state, &message);
                Ok(())
            }
            Verdict::Hold(_) | Verdict::AskAgain => {
                if command == COM_STMT_PREPARE {
                    self.last_prepare = None;
                }
                self.refuse(refusal::ACCESS_DENIED, *b"42000", "warden: the held statement was not decided");
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        sql: &str,
        text_known: bool,
        protocol: QueryProtocol,
        lexing: Lexing,
        step: Step,
        message: u64,
        parameters: Option<&[u8]>,
    ) -> Verdict {
        // SQL-level prepared statements (PREPARE name FROM '...'), as the server confirmed
        // them; while answers are owed, one of them may change what a name holds: not known
        // (an EXECUTE of it is judged as running unknown text).
        let prepared = |name: &str| {
            // Run in the database it was prepared in: known only while that is the current one.
            let current = self.current_db();
            match self.sql_prepared.get(&name.to_lowercase()) {
                Some((text, lexing, db)) if self.owed.is_empty() && db.is_some() && *db == current => {
                    Some((text.clone(), *lexing))
                }
                _ => None,
            }
        };
        self.ctx.hooks.before_statement(&StatementInfo {
            sql,
            text_known,
            prepared: &prepared,
            protocol,
            parameters: parameters.map(|message| Parameters { message, decode: params::decode }),
            parameter_types: &[],
            function_oid: None,
            lexing,
            step,
            portal: b"",
            message,
        })
    }

    fn next_statement(&mut self) -> u64 {
        self.statements += 1;
        self.statements
    }

    fn running(
        &mut self,
        sql: Arc<str>,
        protocol: QueryProtocol,
        lexing: Lexing,
        judgement: Option<Arc<Judgement>>,
        parameters: Option<Arc<[u8]>>,
    ) -> Running {
        Running {
            judgement,
            parameters: parameters.map(|m| (m, params::decode as DecodeParameters)),
            ..Running::new(self.next_statement(), sql, protocol, lexing)
        }
    }

    async fn send_statement(
        &mut self,
        p: Packet,
        command: u8,
        kind: Kind,
        running: Option<Running>,
        stmt: Option<u32>,
    ) -> Result<(), SessionError> {
        if let Some(r) = &running {
            self.ctx.hooks.on_forward(r);
            if let Some(live) = &self.ctx.live {
                live.forwarded(&r.sql, r.lexing);
            }
        }
        match &kind {
            Kind::Prepare(sql, lexing, db) => self.last_prepare = Some((sql.clone(), *lexing, db.clone())),
            Kind::InitDb(_) => self.facts_stale = true,
            _ => {}
        }
        if let Some(r) = &running {
            match may_change_session(&r.sql) {
                Change::Nothing => {}
                Change::Facts => self.facts_stale = true,
                Change::Charset => {
                    self.facts_stale = true;
                    self.charset_unsettled = true;
                }
            }
        }
        if command == COM_STMT_EXECUTE
            && let Some(prepared) = stmt.and_then(|id| self.prepared.get_mut(&id))
        {
            // The server binds (and then drops) the long data sent since the last execution.
            prepared.long_data.clear();
        }
        if command == COM_STMT_EXECUTE
            && let (Some(id), Some(r)) = (stmt, &running)
            && let Some(prepared) = self.prepared.get_mut(&id)
        {
            // Cursor flags: the rows wait for COM_STMT_FETCH.
            if p.payload.get(5).is_some_and(|f| f & 0x0f != 0) {
                prepared.cursor = Some((r.id, r.judgement.clone()));
            }
        }
        let shape = match command {
            COM_STMT_PREPARE => Shape::Prepare,
            COM_STMT_EXECUTE => Shape::Results { binary: true },
            COM_PROCESS_KILL | COM_INIT_DB => Shape::Status,
            COM_FIELD_LIST => Shape::FieldList,
            _ => Shape::Results { binary: false },
        };
        let owner = Owner { stmt, ..Owner::new(kind, running, shape) };
        self.owed.push(Answer::Server { shape, tag: owner });
        self.forward(&p).await
    }

    /// Waits for a held statement's decision while keeping what the client sends meanwhile; a
    /// client that leaves ends the session (and so drops the hold).
    async fn wait_for(
        &mut self,
        mut decision: std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send>>,
    ) -> Result<Verdict, SessionError> {
        self.flush_client().await?;
        loop {
            if self.client_buf.len() >= MAX_HELD_INPUT {
                return Ok(decision.await);
            }
            self.client_buf.reserve(16 * 1024);
            tokio::select! {
                verdict = &mut decision => return Ok(verdict),
                read = self.client.read_buf(&mut self.client_buf) => match read {
                    Ok(0) => return Err(SessionError::ClientIo(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client disconnected while a statement was held",
                    ))),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    /// Asks the (idle) server for the session's facts (with its relations, when the hooks
    /// want them) and reads its answers, kept from the client.
    async fn read_facts(&mut self) -> Result<Result<SessionFacts, String>, SessionError> {
        let facts = match self.internal_query("facts", FACTS_QUERY).await? {
            Ok(rows) => self.take_facts(rows),
            Err(e) => Err(e),
        };
        let Ok(mut facts) = facts else {
            // What the session's text is in is not known: not lexed from its bytes.
            self.charset_unsettled = true;
            return Ok(facts);
        };
        if self.ctx.hooks.wants_relations() {
            // Without them masking withholds every value: the session goes on.
            match self.internal_query("catalog", catalog::QUERY).await?.and_then(|rows| catalog::catalog(&rows)) {
                Ok(read) => {
                    facts.catalog = Arc::new(read.catalog);
                    self.wide = Arc::new(read.wide);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the MySQL catalog could not be read: masked results are withheld")
                }
            }
        }
        self.catalog = facts.catalog.clone();
        Ok(Ok(facts))
    }

    /// Runs one query of the proxy's own on the idle server and returns its rows (or the
    /// server's refusal), kept from the client.
    async fn internal_query(
        &mut self,
        what: &str,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<Vec<u8>>>>, String>, SessionError> {
        let mut payload = vec![COM_QUERY];
        payload.extend_from_slice(sql.as_bytes());
        let shape = Shape::Results { binary: false };
        self.owed.push(Answer::Server {
            shape,
            tag: Owner::new(Kind::Facts { rows: Vec::new(), error: None }, None, shape),
        });
        self.server.write_all(&framed(0, &payload)).await.map_err(SessionError::UpstreamIo)?;
        self.server.flush().await.map_err(SessionError::UpstreamIo)?;
        let limit = self.ctx.max_message;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        // What is kept of the answer at most (a catalog of very many columns): beyond, it is
        // read to its end and refused.
        let mut kept = 0usize;
        loop {
            while let Some(p) = packet::take(&mut self.server_buf, limit)
                .map_err(|e| SessionError::Protocol(ProtocolError::Server(e.to_string())))?
            {
                let (event, done) =
                    self.owed.on_server(&p).map_err(|e| SessionError::Protocol(ProtocolError::Server(e.0)))?;
                let owner = match done {
                    Some(o) => o,
                    None => {
                        if let (Event::Row, Some(Owner { kind: Kind::Facts { rows, error }, .. })) =
                            (&event, self.owed.front_mut())
                        {
                            kept += p.payload.len();
                            if kept > MAX_INTERNAL_ANSWER {
                                rows.clear();
                                error.get_or_insert_with(|| {
                                    format!("the {what} answer is larger than {} MiB", MAX_INTERNAL_ANSWER >> 20)
                                });
                            } else {
                                rows.push(text_row(&p.payload));
                            }
                        }
                        continue;
                    }
                };
                let Kind::Facts { rows, error } = owner.kind else { continue };
                let error = match event {
                    Event::Error => Some(refusal::read_err(&p.payload).map_or_else(
                        || format!("the server refused the {what} query"),
                        |(c, _, m)| format!("the server refused the {what} query: {c} {m}"),
                    )),
                    _ => error,
                };
                return Ok(match error {
                    Some(e) => Err(e),
                    None => Ok(rows),
                });
            }
            self.server_buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.server.read_buf(&mut self.server_buf)).await {
                Err(_) => {
                    return Err(SessionError::Protocol(ProtocolError::Server(format!(
                        "did not answer the {what} query within 10 s"
                    ))));
                }
                Ok(Ok(0)) => return Err(SessionError::UpstreamClosed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(SessionError::UpstreamIo(e)),
            }
        }
    }

    fn take_facts(&mut self, rows: Vec<Vec<Option<Vec<u8>>>>) -> Result<SessionFacts, String> {
        let [row] = &rows[..] else { return Err(format!("the facts query answered {} rows", rows.len())) };
        let text = |i: usize| -> Result<Option<String>, String> {
            match row.get(i).cloned().flatten() {
                None => Ok(None),
                Some(v) => {
                    String::from_utf8(v).map(Some).map_err(|_| format!("the facts query's value {i} is not UTF-8"))
                }
            }
        };
        let database = text(0)?;
        let account = text(1)?.ok_or("the facts query gave no account")?;
        let charset = text(2)?.ok_or("the facts query gave no character set")?;
        let sql_mode = text(3)?.unwrap_or_default();
        // NULL: results in each column's own character set, messages in the system's (UTF-8).
        let results = text(4)?.unwrap_or_default().to_ascii_lowercase();
        self.results_wide = WIDE_CHARSETS.contains(&results.as_str());
        if charset.is_empty() || !charset.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("the facts query gave a character set that is not a name: {charset:?}"));
        }
        if !sql_mode.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b',') {
            return Err(format!("the facts query gave an sql_mode that is not a list of modes: {sql_mode:?}"));
        }
        self.database = database.clone();
        self.charset = charset.to_ascii_lowercase();
        self.charset_unsettled = false;
        let modes: Vec<&str> = sql_mode.split(',').collect();
        self.ansi_quotes =
            modes.iter().any(|m| m.eq_ignore_ascii_case("ANSI_QUOTES") || m.eq_ignore_ascii_case("ANSI"));
        self.no_backslash_escapes = modes.iter().any(|m| m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"));
        self.facts_stale = false;
        // 'user'@'host': the account's user part is the role policies name.
        let current_user = match account.rfind('@') {
            Some(at) => account[..at].to_string(),
            None => account,
        };
        let schemas: Vec<String> = database.iter().cloned().collect();
        Ok(SessionFacts {
            current_user,
            session_user: self.user.clone(),
            search_path: database.unwrap_or_default(),
            schemas,
            catalog: Arc::default(),
        })
    }

    /// COM_CHANGE_USER: a new authentication on the same connection; what the hooks know of
    /// the session starts again.
    async fn change_user(&mut self, p: Packet) -> Result<(), SessionError> {
        if !self.owed.is_empty() {
            self.refuse(refusal::NOT_SUPPORTED, *b"HY000", "warden: COM_CHANGE_USER while answers are outstanding");
            return Ok(());
        }
        self.flush_client().await?;
        let (user, database, plugin) = change_user_names(&p.payload);
        let client_tls = matches!(self.client, MaybeTls::ServerTls(_));
        let server_tls = matches!(self.server, MaybeTls::ClientTls(_));
        if client_tls && !server_tls && super::handshake::sends_cleartext(&plugin) {
            let message = "warden: the client sends its password in clear text, and Warden's connection to the server is not encrypted (set the database's tls.mode)";
            let _ =
                self.client.write_all(&refusal::err_packet(1, refusal::CONNECTION_DENIED, *b"28000", message)).await;
            let _ = self.client.flush().await;
            return Err(SessionError::Protocol(ProtocolError::Client(
                "sent a cleartext password in COM_CHANGE_USER, which an unencrypted upstream must not carry".into(),
            )));
        }
        self.forward(&p).await?;
        let mut auth = Auth {
            client: &mut self.client,
            server: &mut self.server,
            client_buf: &mut self.client_buf,
            server_buf: &mut self.server_buf,
            shift: 0,
            cleartext_forbidden: client_tls && !server_tls,
        };
        let result = tokio::time::timeout(std::time::Duration::from_secs(60), auth.relay()).await;
        match result {
            Err(_) => {
                return Err(SessionError::ClientIo(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "COM_CHANGE_USER took too long",
                )));
            }
            Ok(r) => {
                r?;
            }
        }
        self.user = user;
        self.database = database;
        self.prepared.clear();
        self.sql_prepared.clear();
        self.last_prepare = None;
        self.facts_stale = true;
        if let Some(live) = &self.ctx.live {
            live.set_user(Some(&self.user));
        }
        self.ctx.hooks.on_session_start(&SessionStart {
            user: Some(&self.user),
            database: self.database.as_deref(),
            role: None,
            search_path: None,
        });
        if self.ctx.hooks.inspects_statements() {
            // Nothing is owed: the new session's facts now, before a pipelined statement of it
            // is judged.
            let facts = self.read_facts().await?;
            self.ctx.hooks.on_facts(facts);
        }
        Ok(())
    }
}

/// The user and database a COM_CHANGE_USER names.
/// How a server packet reaches the client.
enum Relay {
    Same,
    /// As the session's row buffer holds it.
    Rewritten,
    /// Replaced by this payload, with this sequence id.
    Replaced(Vec<u8>, u8),
    Dropped,
}

/// What governing a server packet decided.
struct Governed {
    relay: Relay,
    /// The statement was stopped at a volume limit by this packet's place (its ERR replaced
    /// the server's end of the result, and the hooks were told).
    cut: bool,
    /// A result set ended: its columns (what a cursor's fetches read).
    columns: Option<Arc<[Definition]>>,
}

/// Masking and volume limits on one server packet of a statement's answer, when the hooks
/// filter or limit results: column definitions are read, rows rewritten into `row_buf` and
/// counted, an error's message scrubbed; after a cut, the rest is dropped. `cursor`: for a
/// fetch, the columns of its cursor.
fn govern_packet(
    owner: &mut Owner,
    event: &Event,
    p: &Packet,
    cursor: Option<Arc<[Definition]>>,
    hooks: &dyn SessionHooks,
    known: Known<'_>,
    row_buf: &mut Vec<u8>,
) -> Result<Governed, SessionError> {
    let server = |why: String| SessionError::Protocol(ProtocolError::Server(why));
    let mut out = Governed { relay: Relay::Same, cut: false, columns: None };
    // Asked where a result begins, not for every row.
    let governs = |owner: &Owner| owner.running.is_some() && (hooks.filters_results() || hooks.limits_results());
    if matches!(owner.stopped, Some((_, true))) {
        // The client's answer ended with the cut's ERR: the rest of the server's is not its.
        out.relay = Relay::Dropped;
        if let Event::Done { .. } | Event::Error = event {
            owner.result = None;
        }
        return Ok(out);
    }
    match event {
        Event::ResultStart { columns } if governs(owner) => {
            let expected = usize::try_from(*columns).map_err(|_| server("sent too many columns".into()))?;
            owner.result = Some(ResultState { expected, columns: Vec::new(), filter: None, measure: None });
        }
        Event::Column => {
            if let Some(result) = owner.result.as_mut()
                && result.columns.len() < result.expected
            {
                let definition =
                    rows::definition(&p.payload).ok_or_else(|| server("sent a malformed column definition".into()))?;
                result.columns.push(definition);
                if result.columns.len() == result.expected {
                    result.begin(owner.running.as_ref(), owner.binary, hooks, known);
                }
            }
        }
        Event::Row => {
            if owner.result.is_none() && owner.fetch {
                // A fetch: rows of the cursor its execution opened.
                let mut result = ResultState { expected: 0, columns: Vec::new(), filter: None, measure: None };
                if governs(owner) {
                    match cursor {
                        Some(columns) => {
                            result = ResultState { expected: columns.len(), columns: columns.to_vec(), ..result };
                            result.begin(owner.running.as_ref(), owner.binary, hooks, known);
                        }
                        None => {
                            // Rows that cannot be read are not relayed unmasked or uncounted.
                            return Err(server("sent rows of a cursor whose columns the proxy did not see".into()));
                        }
                    }
                }
                owner.result = Some(result);
            }
            if owner.stopped.is_some() {
                out.relay = Relay::Dropped;
                return Ok(out);
            }
            let Some(result) = owner.result.as_mut() else { return Ok(out) };
            let mut len = p.payload.len();
            if let Some(filter) = &result.filter {
                let rewritten = if owner.binary {
                    rows::rewrite_binary(&p.payload, &result.columns, filter.as_ref(), row_buf)
                } else {
                    rows::rewrite_text(&p.payload, result.columns.len(), filter.as_ref(), row_buf)
                };
                rewritten.map_err(|e| server(e.to_string()))?;
                if row_buf.len() / packet::MAX_FRAGMENT != p.payload.len() / packet::MAX_FRAGMENT {
                    // Its packets would no longer number as the server numbered the rest.
                    return Err(server("sent a row whose masked form changes its packet count (16 MiB rows)".into()));
                }
                len = row_buf.len();
                out.relay = Relay::Rewritten;
            }
            if let Some(measure) = result.measure.as_mut()
                && let Some(cut) = measure.admit(len as u64)
            {
                owner.stopped = Some((cut, false));
                out.relay = Relay::Dropped;
            }
        }
        Event::Done { .. } | Event::Error => {
            if let Some(mut result) = owner.result.take() {
                if let Some(measure) = result.measure.as_mut() {
                    measure.report();
                }
                out.columns = Some(Arc::from(result.columns));
            }
            if let Some((cut, told)) = owner.stopped.as_mut() {
                out.relay = Relay::Dropped;
                if !std::mem::replace(told, true) {
                    // The server's end of the result becomes the cut's ERR.
                    let (code, state) = refusal::code_for(cut.sqlstate);
                    out.relay = Relay::Replaced(refusal::err_payload(code, state, &cut.message), owner.next_seq);
                    out.cut = true;
                    if let Some(r) = owner.running.as_ref() {
                        hooks.on_stopped(r, cut);
                    }
                }
            } else if *event == Event::Error && owner.running.is_some() && known.results_wide && hooks.filters_results()
            {
                // A message in UTF-16 or the like: the scrubbing cannot read it.
                let message = "message withheld by warden: the session's character_set_results is not ASCII-compatible";
                let payload = refusal::with_message(&p.payload, message)
                    .ok_or_else(|| server("sent a malformed ERR packet".into()))?;
                out.relay = Relay::Replaced(payload, p.seq);
            } else if *event == Event::Error
                && owner.running.is_some()
                && hooks.filters_results()
                && let Some((_, _, message)) = refusal::read_err(&p.payload)
                && let Some(fields) = hooks.scrub_fields(owner.running.as_ref(), &[(b'M', message.as_bytes())])
            {
                // A duplicate key quotes the key, a conversion error the value.
                let message = fields.iter().find(|(code, _)| *code == b'M').map_or_else(
                    || "message withheld by warden".into(),
                    |(_, t)| String::from_utf8_lossy(t).into_owned(),
                );
                let payload = refusal::with_message(&p.payload, &message)
                    .ok_or_else(|| server("sent a malformed ERR packet".into()))?;
                out.relay = Relay::Replaced(payload, p.seq);
            }
        }
        _ => {}
    }
    Ok(out)
}

/// What the session read of its database that results are read with.
#[derive(Clone, Copy)]
struct Known<'a> {
    catalog: &'a Catalog,
    wide: &'a std::collections::HashSet<u16>,
    /// Messages come in a character set the scrubbing cannot read.
    results_wide: bool,
}

impl ResultState {
    /// The columns are known: asks the hooks for the filter and the limit.
    fn begin(&mut self, running: Option<&Running>, binary: bool, hooks: &dyn SessionHooks, known: Known<'_>) {
        let Some(running) = running else { return };
        let part = running.completed as usize;
        let columns: Vec<ResultColumn> = self
            .columns
            .iter()
            .map(|d| d.result_column(catalog::origin(known.catalog, &d.schema, &d.org_table, &d.org_name), binary))
            .collect();
        if hooks.filters_results() {
            self.filter = hooks.result_filter(Some(running), part, &columns, false).map(|filter| {
                let wide: Vec<bool> = self.columns.iter().map(|d| known.wide.contains(&d.charset)).collect();
                if wide.contains(&true) { Box::new(rows::WideWithheld { inner: filter, wide }) as _ } else { filter }
            });
        }
        if hooks.limits_results() {
            self.measure = hooks.result_limit(running, part).map(|l| Measure::new(l, 0));
        }
    }
}

fn change_user_names(p: &[u8]) -> (String, Option<String>, Vec<u8>) {
    let body = &p[1..];
    let user_end = memchr::memchr(0, body).unwrap_or(body.len());
    let user = String::from_utf8_lossy(&body[..user_end]).into_owned();
    let mut rest = body.get(user_end + 1..).unwrap_or(&[]);
    // The authentication response: one length byte (CLIENT_SECURE_CONNECTION).
    if let Some((&len, after)) = rest.split_first() {
        rest = after.get(usize::from(len)..).unwrap_or(&[]);
    }
    let db_end = memchr::memchr(0, rest).unwrap_or(rest.len());
    let database = (db_end > 0).then(|| String::from_utf8_lossy(&rest[..db_end]).into_owned());
    // Then the character set (2 bytes) and the plugin the response is for.
    let plugin = rest.get(db_end + 3..).unwrap_or(&[]);
    let plugin = plugin[..memchr::memchr(0, plugin).unwrap_or(plugin.len())].to_vec();
    (user, database, plugin)
}

/// A statement of `running` completed: if it was a SQL-level PREPARE or DEALLOCATE, what the
/// name holds now. A PREPARE whose text the proxy cannot read (`FROM @var`) forgets every name.
fn track_sql_prepared(names: &mut HashMap<String, (Arc<str>, Lexing, Db)>, running: &Running, db: Db) {
    let Some(part) = running.judgement.as_ref().and_then(|j| j.parts.get(running.completed as usize)) else {
        return;
    };
    let raw = running.sql.get(part.span.clone()).unwrap_or_default();
    if part.described.analysis.prepares.is_none() && !crate::sql::contains_ci(raw, "prepare") {
        return;
    }
    match crate::sql::prepared_statement_command(raw, running.lexing.options()) {
        Some(crate::sql::PreparedCommand::Prepare { name, body }) => {
            names.insert(name.to_lowercase(), (Arc::from(body), running.lexing, db));
        }
        Some(crate::sql::PreparedCommand::Deallocate { name }) => {
            names.remove(&name.to_lowercase());
        }
        None => names.clear(),
    }
}

/// Whether a statement was judged as sending the server a client file (LOAD DATA LOCAL); one
/// not judged (no policy inspects this session) may.
fn names_load_data_local(judgement: Option<&Judgement>) -> bool {
    judgement.is_none_or(|j| {
        j.parts.iter().any(|p| {
            p.described
                .analysis
                .functions
                .iter()
                .any(|f| f.schema.as_deref() == Some("mysql") && f.name == crate::sql::LOAD_DATA_LOCAL)
        })
    })
}

fn stmt_id(p: &[u8]) -> Option<u32> {
    p.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    packet::put(&mut out, seq, payload);
    out
}

/// The values of a text-protocol row (NULL: `None`).
fn text_row(p: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut rest = p;
    let mut values = Vec::new();
    while !rest.is_empty() {
        if rest[0] == 0xfb {
            values.push(None);
            rest = &rest[1..];
            continue;
        }
        match packet::lenenc_bytes(&mut rest) {
            Some(v) => values.push(Some(v.to_vec())),
            None => break,
        }
    }
    values
}

/// What a statement may change of what the facts say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Nothing,
    /// The database, the account or the sql_mode: the facts are read again before the next
    /// statement is judged.
    Facts,
    /// The character set too: until the facts are read again, text is not lexed from its bytes.
    Charset,
}

/// What a statement may change, matched on its raw text, comments and executable comments
/// included, so that nothing the server runs escapes it. The server finds system variables by
/// a case- and accent-insensitive name (`sql_modé` is `sql_mode`): a SET with any non-ASCII
/// byte may change anything.
fn may_change_session(sql: &str) -> Change {
    const CHARSET: &[&str] = &["names", "character", "charset", "collation"];
    const FACTS: &[&str] = &["sql_mode", "@@", "execute", "reset"];
    // Runs for every statement forwarded: no copy of the text, each word found by memchr.
    let has = |w: &str| crate::sql::contains_ci(sql, w);
    let set = has_word(sql, "set");
    if CHARSET.iter().any(|w| has(w)) || (set && !sql.is_ascii()) {
        Change::Charset
    } else if FACTS.iter().any(|w| has(w)) || has_word(sql, "use") || (set && has("mode")) {
        Change::Facts
    } else {
        Change::Nothing
    }
}

/// A statement's text, and how to lex it: bytes that are not UTF-8, or that are not ASCII in
/// a client character set other than UTF-8's, do not read as the server reads them (the
/// statement is then judged as text that cannot be lexed from its bytes).
fn statement_text(bytes: &[u8], lexing: Lexing, charset: &str) -> (Arc<str>, Lexing) {
    let utf8 = matches!(charset, "utf8" | "utf8mb3" | "utf8mb4");
    match std::str::from_utf8(bytes) {
        // No byte of a multibyte character: ASCII reads as ASCII in every character set a
        // client may use (MySQL refuses UCS-2, UTF-16 and UTF-32 for the client's), GBK and
        // SJIS included, whatever set the session is in or moving to.
        Ok(text) if text.is_ascii() => (Arc::from(text), Lexing { ascii_safe: true, ..lexing }),
        Ok(text) if utf8 => (Arc::from(text), lexing),
        _ => (Arc::from(String::from_utf8_lossy(bytes).as_ref()), Lexing { ascii_safe: false, ..lexing }),
    }
}

/// `name` as a backticked identifier.
fn backticked(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `text` as a string literal: quotes doubled, backslashes doubled.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Whether `word` (ASCII lower case) stands in `text` as a word of its own, in any case.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    let (bytes, w) = (text.as_bytes(), word.as_bytes());
    let Some((&first, _)) = w.split_first() else { return false };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), bytes).any(|at| {
        let whole = bytes.get(at..at + w.len()).is_some_and(|c| c.eq_ignore_ascii_case(w));
        let before = at.checked_sub(1).is_none_or(|i| !ident(bytes[i]));
        let after = bytes.get(at + w.len()).is_none_or(|&b| !ident(b));
        whole && before && after
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_may_change_the_session_are_noticed() {
        for sql in [
            "SET NAMES gbk",
            "set character set sjis",
            "/*!40101 SET NAMES utf8 */",
            "SET chäracter_set_client = gbk",
            "SET sql_modé = 'ANSI_QUOTES'",
        ] {
            assert_eq!(may_change_session(sql), Change::Charset, "{sql}");
        }
        for sql in [
            "SET SESSION sql_mode='ANSI_QUOTES'",
            "SET @@session.sql_mode = ''",
            "USE other",
            "select 1; use`other`",
            "EXECUTE s",
            "select 1; USE`other`",
        ] {
            assert_eq!(may_change_session(sql), Change::Facts, "{sql}");
        }
        for sql in ["SELECT * FROM users", "UPDATE t SET a = 1 WHERE id = 2", "select used from t", "select 'é'"] {
            assert_eq!(may_change_session(sql), Change::Nothing, "{sql}");
        }
    }

    #[test]
    fn text_that_does_not_read_as_the_server_reads_it_is_not_lexed() {
        let lexing = Lexing {
            standard_conforming_strings: true,
            settled: true,
            ascii_safe: true,
            dialect: Dialect::MySql { ansi_quotes: false, no_backslash_escapes: false },
        };
        assert!(statement_text(b"select 1", lexing, "latin1").1.ascii_safe);
        let gbk = Lexing { ascii_safe: false, ..lexing };
        assert!(statement_text(b"set names utf8mb4", gbk, "gbk").1.ascii_safe, "ASCII reads as ASCII in GBK");
        assert!(!statement_text(b"select '\xbf\\'", gbk, "gbk").1.ascii_safe, "a GBK lead byte");
        assert!(statement_text("select 'é'".as_bytes(), lexing, "utf8mb4").1.ascii_safe);
        assert!(!statement_text("select 'é'".as_bytes(), lexing, "latin1").1.ascii_safe, "é in latin1 reads otherwise");
        assert!(!statement_text(b"select '\xe9'", lexing, "utf8mb4").1.ascii_safe, "not UTF-8");
        assert_eq!(backticked("a`b"), "`a``b`");
        assert_eq!(quoted("it's \\"), "'it''s \\\\'");
    }

    #[test]
    fn text_rows_are_read_with_nulls() {
        assert_eq!(text_row(b"\x02db\xfb\x03abc"), vec![Some(b"db".to_vec()), None, Some(b"abc".to_vec())]);
        assert_eq!(text_row(b"\x05ab"), Vec::<Option<Vec<u8>>>::new(), "a truncated value ends the row");
    }

    #[test]
    fn change_user_names_its_user_and_database() {
        let p = b"\x11bob\0\x03abcshop\0\x2d\x00mysql_clear_password\0";
        assert_eq!(change_user_names(p), ("bob".into(), Some("shop".into()), b"mysql_clear_password".to_vec()));
        assert_eq!(change_user_names(b"\x11bob\0\x00\0"), ("bob".into(), None, Vec::new()));
        assert_eq!(change_user_names(b"\x11"), (String::new(), None, Vec::new()));
    }
}
