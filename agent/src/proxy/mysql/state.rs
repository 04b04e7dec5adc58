//! What the server owes: one ordered queue of the answers outstanding for the commands
//! forwarded (or refused), and where the front one is. Every packet the server sends in the
//! command phase is read against the front answer's shape, so a row is never taken for a
//! terminator (or a terminator for a row) and the client sees answers in the order it asked.
//!
//! The shapes, as MySQL 8 and MariaDB 10.11 send them (CLIENT_PROTOCOL_41; with
//! CLIENT_DEPRECATE_EOF the EOF packets that close column definitions are left out and rows
//! end with an OK packet whose header is 0xfe):
//! - results (COM_QUERY, COM_STMT_EXECUTE): OK | ERR | column count, definitions, [EOF], rows,
//!   EOF/OK/ERR; again while the status says more results exist. An execute that opens a
//!   cursor ends after its definitions, with SERVER_STATUS_CURSOR_EXISTS.
//! - prepare: ERR | OK(statement id, columns, parameters), parameter definitions [EOF],
//!   column definitions [EOF].
//! - fetch: rows, EOF/OK | ERR.
//! - field list: definitions until EOF | ERR. status: one OK/EOF/ERR packet. any: one packet.

use std::collections::VecDeque;

use super::packet::{self, MAX_FRAGMENT};

pub const OK: u8 = 0x00;
pub const EOF: u8 = 0xfe;
pub const ERR: u8 = 0xff;
pub const LOCAL_INFILE: u8 = 0xfb;

pub const MORE_RESULTS: u16 = 0x0008;
pub const CURSOR_EXISTS: u16 = 0x0040;
/// A fetch read the cursor's last row.
pub const LAST_ROW_SENT: u16 = 0x0080;
pub const NO_BACKSLASH_ESCAPES: u16 = 0x0200;
/// MariaDB's: the session's sql_mode has ANSI_QUOTES.
pub const ANSI_QUOTES: u16 = 0x8000;

/// The shape of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Result sets, text rows (COM_QUERY) or binary rows (COM_STMT_EXECUTE).
    Results {
        binary: bool,
    },
    Prepare,
    Fetch,
    FieldList,
    /// One OK, EOF or ERR packet.
    Status,
    /// One packet, whatever it holds (COM_STATISTICS answers with bare text).
    Any,
}

/// Where in its answer the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first packet of a result (or of the answer).
    First,
    Columns {
        left: u64,
    },
    ColumnsEof,
    Rows,
    Params {
        left: u64,
        columns: u64,
    },
    ParamsEof {
        columns: u64,
    },
    PrepareColumns {
        left: u64,
    },
    PrepareColumnsEof,
    /// The server asked for a client file (LOAD DATA LOCAL): its OK or ERR follows the data.
    Infile,
}

/// What a server packet was, for the session and its hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A result set begins with this many columns.
    ResultStart {
        columns: u64,
    },
    /// A column definition of the current result set.
    Column,
    Row,
    /// A statement (or one of a multi-statement text) ended well: `affected` rows changed
    /// (OK), or a result set ended; the status flags it ended with.
    Done {
        affected: Option<u64>,
        status: u16,
    },
    /// The server refused or failed the statement: the answer ends here.
    Error,
    /// The server asks the client for a file (LOAD DATA LOCAL INFILE): the client's next
    /// packets, up to an empty one, are its content.
    LocalInfile,
    /// A prepared statement's id and shape.
    Prepared {
        id: u32,
        params: u16,
        columns: u16,
    },
    /// Anything else the answer holds (definitions of a prepare, an EOF between parts, the
    /// one packet of a status answer).
    Other,
}

/// What the client gets for an answer.
#[derive(Debug)]
pub enum Answer<T> {
    /// The server's.
    Server { shape: Shape, tag: T },
    /// The proxy's own (a refusal): these packets, in order, once everything before is sent.
    Own(Vec<u8>),
}

/// A server packet the shape of the answer does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unexpected(pub String);

/// The answers owed, oldest first. `T` is what the session keeps with each (its statement).
pub struct Owed<T> {
    queue: VecDeque<Answer<T>>,
    stage: Stage,
    deprecate_eof: bool,
}

impl<T> Owed<T> {
    pub fn new(deprecate_eof: bool) -> Self {
        Self { queue: VecDeque::new(), stage: Stage::First, deprecate_eof }
    }

    pub fn push(&mut self, answer: Answer<T>) {
        self.queue.push_back(answer);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether a text query's answer is owed (the server may ask it for a LOCAL INFILE).
    pub fn owes_query(&self) -> bool {
        self.queue.iter().any(|a| matches!(a, Answer::Server { shape: Shape::Results { binary: false }, .. }))
    }

    /// Whether an answer owed is the server's with a tag `f` holds for.
    pub fn any_pending(&self, f: impl Fn(&T) -> bool) -> bool {
        self.queue.iter().any(|a| matches!(a, Answer::Server { tag, .. } if f(tag)))
    }

    /// The front answer, when it is the server's.
    pub fn front(&self) -> Option<(Shape, &T)> {
        match self.queue.front()? {
            Answer::Server { shape, tag } => Some((*shape, tag)),
            Answer::Own(_) => None,
        }
    }

    pub fn front_mut(&mut self) -> Option<&mut T> {
        match self.queue.front_mut()? {
            Answer::Server { tag, .. } => Some(tag),
            Answer::Own(_) => None,
        }
    }

    /// The proxy's own answers now at the front (everything before them was answered), to send.
    pub fn take_own(&mut self, out: &mut Vec<u8>) {
        while let Some(Answer::Own(_)) = self.queue.front() {
            if let Some(Answer::Own(bytes)) = self.queue.pop_front() {
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Every answer still owed, oldest first (the session ended).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.stage = Stage::First;
        self.queue.drain(..).filter_map(|a| match a {
            Answer::Server { tag, .. } => Some(tag),
            Answer::Own(_) => None,
        })
    }

    /// Reads one server packet against the front answer. Returns what it was and whether it
    /// ended that answer (which is then popped and returned).
    pub fn on_server(&mut self, packet: &packet::Packet) -> Result<(Event, Option<T>), Unexpected> {
        let Some((shape, _)) = self.front() else {
            return Err(Unexpected(format!(
                "sent a packet (header {:#04x}) when no answer was owed",
                packet.header().unwrap_or(0)
            )));
        };
        let (event, ended) = self.step(shape, packet)?;
        let done = if ended {
            self.stage = Stage::First;
            match self.queue.pop_front() {
                Some(Answer::Server { tag, .. }) => Some(tag),
                _ => None,
            }
        } else {
            None
        };
        Ok((event, done))
    }

    fn step(&mut self, shape: Shape, packet: &packet::Packet) -> Result<(Event, bool), Unexpected> {
        let p = &packet.payload[..];
        let header = p.first().copied();
        // 0xfe opens a terminator only in a packet shorter than a full fragment: a row whose
        // first value is 16 MiB or longer starts with 0xfe too (its length's prefix).
        let terminator = header == Some(EOF) && packet.fragments == 1 && p.len() < MAX_FRAGMENT;
        let unexpected = |what: &str| {
            Unexpected(format!("sent {what} (header {:#04x}) where {:?} was expected", header.unwrap_or(0), shape))
        };
        match shape {
            Shape::Any => return Ok((Event::Other, true)),
            Shape::Status => {
                return match header {
                    Some(ERR) => Ok((Event::Error, true)),
                    Some(OK) | Some(EOF) => {
                        Ok((Event::Done { affected: ok_affected(p), status: status_of(p).unwrap_or(0) }, true))
                    }
                    _ => Err(unexpected("a packet that is not OK, EOF or ERR")),
                };
            }
            Shape::FieldList => {
                return Ok(match header {
                    Some(ERR) => (Event::Error, true),
                    _ if terminator => (Event::Done { affected: None, status: status_of(p).unwrap_or(0) }, true),
                    _ => (Event::Column, false),
                });
            }
            _ => {}
        }
        if header == Some(ERR) && !matches!(self.stage, Stage::Columns { .. } | Stage::Params { .. }) {
            return Ok((Event::Error, true));
        }
        match self.stage {
            Stage::First if shape == Shape::Prepare => {
                if header != Some(OK) || p.len() < 12 {
                    return Err(unexpected("a prepare answer that is neither OK nor ERR"));
                }
                let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                let columns = u16::from_le_bytes([p[5], p[6]]);
                let params = u16::from_le_bytes([p[7], p[8]]);
                let ended = self.after_prepare_params(u64::from(params), u64::from(columns));
                Ok((Event::Prepared { id, params, columns }, ended))
            }
            Stage::First if shape == Shape::Fetch => {
                self.stage = Stage::Rows;
                self.step(shape, packet)
            }
            Stage::First => match header {
                Some(OK) => {
                    let status = status_of(p).ok_or_else(|| unexpected("a malformed OK packet"))?;
                    Ok((Event::Done { affected: ok_affected(p), status }, status & MORE_RESULTS == 0))
                }
                Some(LOCAL_INFILE) if shape == Shape::Results { binary: false } => {
                    self.stage = Stage::Infile;
                    Ok((Event::LocalInfile, false))
                }
                Some(LOCAL_INFILE) => Err(unexpected("a LOCAL INFILE request to a command that is not a query")),
                _ => {
                    let mut rest = p;
                    let columns = packet::lenenc_int(&mut rest)
                        .filter(|&n| n > 0 && rest.is_empty() && header != Some(EOF))
                        .ok_or_else(|| unexpected("a malformed column count"))?;
                    self.stage = Stage::Columns { left: columns };
                    Ok((Event::ResultStart { columns }, false))
                }
            },
            Stage::Infile => match header {
                Some(OK) => {
                    let status = status_of(p).ok_or_else(|| unexpected("a malformed OK packet"))?;
                    self.stage = Stage::First;
                    Ok((Event::Done { affected: ok_affected(p), status }, status & MORE_RESULTS == 0))
                }
                _ => Err(unexpected("a packet that is neither OK nor ERR after a LOCAL INFILE transfer")),
            },
            Stage::Columns { left } => {
                self.stage = match left - 1 {
                    0 if self.deprecate_eof => Stage::Rows,
                    0 => Stage::ColumnsEof,
                    left => Stage::Columns { left },
                };
                Ok((Event::Column, false))
            }
            Stage::ColumnsEof => {
                if !terminator {
                    return Err(unexpected("a packet that is not the EOF after column definitions"));
                }
                let status = status_of(p).unwrap_or(0);
                if status & CURSOR_EXISTS != 0 {
                    // The rows wait in a cursor for COM_STMT_FETCH.
                    return Ok((Event::Done { affected: None, status }, status & MORE_RESULTS == 0));
                }
                self.stage = Stage::Rows;
                Ok((Event::Other, false))
            }
            Stage::Rows if terminator => {
                let status = status_of(p).ok_or_else(|| unexpected("a malformed result terminator"))?;
                let more = status & MORE_RESULTS != 0 && shape != Shape::Fetch;
                self.stage = Stage::First;
                Ok((Event::Done { affected: None, status }, !more))
            }
            Stage::Rows => Ok((Event::Row, false)),
            Stage::Params { left, columns } => {
                let ended = if left == 1 {
                    if self.deprecate_eof {
                        self.after_prepare_params(0, columns)
                    } else {
                        self.stage = Stage::ParamsEof { columns };
                        false
                    }
                } else {
                    self.stage = Stage::Params { left: left - 1, columns };
                    false
                };
                Ok((Event::Other, ended))
            }
            Stage::ParamsEof { columns } => {
                if !terminator {
                    return Err(unexpected("a packet that is not the EOF after parameter definitions"));
                }
                Ok((Event::Other, self.after_prepare_params(0, columns)))
            }
            Stage::PrepareColumns { left } => {
                let ended = match left - 1 {
                    0 if self.deprecate_eof => true,
                    0 => {
                        self.stage = Stage::PrepareColumnsEof;
                        false
                    }
                    left => {
                        self.stage = Stage::PrepareColumns { left };
                        false
                    }
                };
                Ok((Event::Other, ended))
            }
            Stage::PrepareColumnsEof => {
                if !terminator {
                    return Err(unexpected("a packet that is not the EOF after column definitions"));
                }
                Ok((Event::Other, true))
            }
        }
    }

    /// Moves past a prepare's parameters (`params` still to come) to its columns; whether the
    /// answer is complete.
    fn after_prepare_params(&mut self, params: u64, columns: u64) -> bool {
        if params > 0 {
            self.stage = Stage::Params { left: params, columns };
            false
        } else if columns > 0 {
            self.stage = Stage::PrepareColumns { left: columns };
            false
        } else {
            true
        }
    }
}

/// The status flags of an OK or EOF packet.
pub fn status_of(p: &[u8]) -> Option<u16> {
    match p.first()? {
        // The old EOF: header, warnings, status.
        &EOF if p.len() < 9 => p.get(3..5).map(|s| u16::from_le_bytes([s[0], s[1]])),
        &OK | &EOF => {
            let mut rest = &p[1..];
            packet::lenenc_int(&mut rest)?;
            packet::lenenc_int(&mut rest)?;
            rest.get(..2).map(|s| u16::from_le_bytes([s[0], s[1]]))
        }
        _ => None,
    }
}

/// The affected-rows count of an OK packet (header 0x00).
pub fn ok_affected(p: &[u8]) -> Option<u64> {
    if p.first() != Some(&OK) {
        return None;
    }
    let mut rest = &p[1..];
    packet::lenenc_int(&mut rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn pk(payload: &[u8]) -> packet::Packet {
        packet::Packet { seq: 1, fragments: 1, payload: BytesMut::from(payload) }
    }

    const COLUMN: &[u8] = b"\x03def\x00\x01t\x01t\x01a\x01a\x0c\x21\x00\x0b\x00\x00\x00\xfd\x00\x00\x00\x00\x00";
    const OLD_EOF: &[u8] = b"\xfe\x00\x00\x02\x00";
    const OLD_EOF_MORE: &[u8] = b"\xfe\x00\x00\x0a\x00";
    const OK_EOF: &[u8] = b"\xfe\x00\x00\x02\x00\x00\x00";
    const OK_PLAIN: &[u8] = b"\x00\x03\x00\x02\x00\x00\x00";
    const OK_MORE: &[u8] = b"\x00\x01\x00\x0a\x00\x00\x00";
    const ERR_PACKET: &[u8] = b"\xff\x7a\x04#42000denied";

    /// Feeds packets and returns (events, how many answers ended).
    fn feed(owed: &mut Owed<u32>, packets: &[&[u8]]) -> (Vec<Event>, Vec<u32>) {
        let mut events = Vec::new();
        let mut ended = Vec::new();
        for p in packets {
            let (e, done) = owed.on_server(&pk(p)).unwrap();
            events.push(e);
            ended.extend(done);
        }
        (events, ended)
    }

    #[test]
    fn a_text_result_with_old_eofs() {
        let mut owed = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        let (events, ended) = feed(&mut owed, &[b"\x01", COLUMN, OLD_EOF, b"\x011", b"\x012"]);
        assert_eq!(events, [Event::ResultStart { columns: 1 }, Event::Column, Event::Other, Event::Row, Event::Row]);
        assert!(ended.is_empty());
        let (events, ended) = feed(&mut owed, &[OLD_EOF]);
        assert_eq!(events, [Event::Done { affected: None, status: 2 }]);
        assert_eq!(ended, [1]);
        assert!(owed.is_empty());
    }

    #[test]
    fn a_multi_statement_answer_runs_until_no_more_results() {
        let mut owed = Owed::new(true);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 7 });
        // INSERT (OK, more), SELECT (rows, more), UPDATE (OK, last).
        let more_rows_end: &[u8] = b"\xfe\x00\x00\x0a\x00\x00\x00";
        let (events, ended) = feed(&mut owed, &[OK_MORE, b"\x01", COLUMN, b"\x01x", more_rows_end, OK_PLAIN]);
        assert_eq!(
            events,
            [
                Event::Done { affected: Some(1), status: 0x0a },
                Event::ResultStart { columns: 1 },
                Event::Column,
                Event::Row,
                Event::Done { affected: None, status: 0x0a },
                Event::Done { affected: Some(3), status: 2 },
            ]
        );
        assert_eq!(ended, [7]);
    }

    #[test]
    fn an_error_ends_the_answer_even_after_earlier_results() {
        let mut owed = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        owed.push(Answer::Server { shape: Shape::Status, tag: 2 });
        let (events, ended) = feed(&mut owed, &[b"\x01", COLUMN, OLD_EOF, OLD_EOF_MORE, ERR_PACKET, OK_PLAIN]);
        assert_eq!(events[3], Event::Done { affected: None, status: 0x0a });
        assert_eq!(&events[4..], [Event::Error, Event::Done { affected: Some(3), status: 2 }]);
        assert_eq!(ended, [1, 2]);
    }

    #[test]
    fn a_row_of_16_mib_is_not_a_terminator() {
        let mut owed = Owed::new(true);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        feed(&mut owed, &[b"\x01", COLUMN]);
        let big = packet::Packet {
            seq: 4,
            fragments: 2,
            payload: BytesMut::from(&b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"[..]),
        };
        assert_eq!(owed.on_server(&big).unwrap(), (Event::Row, None));
        assert_eq!(owed.on_server(&pk(OK_EOF)).unwrap().1, Some(1));
    }

    #[test]
    fn a_prepare_reads_its_parameter_and_column_definitions() {
        for deprecate in [false, true] {
            let mut owed = Owed::new(deprecate);
            owed.push(Answer::Server { shape: Shape::Prepare, tag: 1 });
            let prepare_ok: &[u8] = b"\x00\x05\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00";
            let mut packets: Vec<&[u8]> = vec![prepare_ok, COLUMN, COLUMN];
            if !deprecate {
                packets.push(OLD_EOF);
            }
            packets.push(COLUMN);
            if !deprecate {
                packets.push(OLD_EOF);
            }
            let (events, ended) = feed(&mut owed, &packets);
            assert_eq!(events[0], Event::Prepared { id: 5, params: 2, columns: 1 });
            assert_eq!(ended, [1], "deprecate_eof {deprecate}");
            assert!(owed.is_empty());
        }
        // No parameters, no columns: the OK is the whole answer.
        let mut owed = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Prepare, tag: 2 });
        assert_eq!(feed(&mut owed, &[b"\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"]).1, [2]);
    }

    #[test]
    fn an_execute_that_opens_a_cursor_ends_after_its_definitions_and_fetch_reads_rows() {
        let cursor_eof: &[u8] = b"\xfe\x00\x00\x42\x00";
        let mut owed = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Results { binary: true }, tag: 1 });
        owed.push(Answer::Server { shape: Shape::Fetch, tag: 2 });
        let (_, ended) = feed(&mut owed, &[b"\x01", COLUMN, cursor_eof]);
        assert_eq!(ended, [1]);
        let last: &[u8] = b"\xfe\x00\x00\x82\x00";
        let (events, ended) = feed(&mut owed, &[b"\x00\x00\x01", b"\x00\x00\x02", last]);
        assert_eq!(events[..2], [Event::Row, Event::Row]);
        assert_eq!(ended, [2]);
    }

    #[test]
    fn a_local_infile_request_is_answered_by_an_ok_after_the_data() {
        let mut owed = Owed::new(true);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        let (events, ended) = feed(&mut owed, &[b"\xfb/tmp/x.csv", b"\x00\x03\x00\x02\x00\x00\x00"]);
        assert_eq!(events, [Event::LocalInfile, Event::Done { affected: Some(3), status: 2 }]);
        assert_eq!(ended, [1]);
        let mut owed = Owed::new(true);
        owed.push(Answer::Server { shape: Shape::Results { binary: true }, tag: 1 });
        assert!(owed.on_server(&pk(b"\xfb/etc/passwd")).is_err(), "an execute cannot load a file");
    }

    #[test]
    fn the_proxys_own_answers_wait_their_turn() {
        let mut owed = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Status, tag: 1 });
        owed.push(Answer::Own(b"refusal".to_vec()));
        let mut out = Vec::new();
        owed.take_own(&mut out);
        assert!(out.is_empty(), "the server's answer comes first");
        feed(&mut owed, &[OK_PLAIN]);
        owed.take_own(&mut out);
        assert_eq!(out, b"refusal");
        assert!(owed.is_empty());
    }

    #[test]
    fn packets_no_answer_allows_are_the_servers_fault() {
        let mut owed: Owed<u32> = Owed::new(false);
        assert!(owed.on_server(&pk(OK_PLAIN)).is_err(), "nothing owed");
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        assert_eq!(owed.on_server(&pk(b"\xfb/tmp/x.csv")).unwrap(), (Event::LocalInfile, None));
        assert!(owed.on_server(&pk(b"\x01")).is_err(), "only OK or ERR ends a transfer");
        let mut owed: Owed<u32> = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Results { binary: false }, tag: 1 });
        assert!(owed.on_server(&pk(b"\x01\x02")).is_err(), "trailing bytes after the column count");
        let mut owed: Owed<u32> = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Prepare, tag: 1 });
        assert!(owed.on_server(&pk(b"\x00\x01")).is_err(), "a short prepare OK");
        let mut owed: Owed<u32> = Owed::new(false);
        owed.push(Answer::Server { shape: Shape::Status, tag: 1 });
        assert!(owed.on_server(&pk(b"\x05")).is_err());
    }
}
