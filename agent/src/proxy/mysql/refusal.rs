//! What the proxy itself tells a MySQL client: ERR packets with the error number and SQLSTATE a
//! MySQL server would use for the same condition, so drivers raise the error class their
//! callers already handle (a refused statement is 1142, as a missing privilege is).

use mysql_common::{
    packets::{ErrPacket, ServerError, SqlState as MySqlState},
    proto::MySerialize as _,
};

use super::packet;
use crate::session::SqlState;

/// ER_TABLEACCESS_DENIED_ERROR: what a statement the policy refuses gets.
pub const ACCESS_DENIED: u16 = 1142;
/// ER_ACCESS_DENIED_ERROR: the connection itself is refused.
pub const CONNECTION_DENIED: u16 = 1045;
/// ER_UNKNOWN_COM_ERROR: a command the proxy does not relay.
pub const UNKNOWN_COMMAND: u16 = 1047;
/// ER_NOT_SUPPORTED_YET.
pub const NOT_SUPPORTED: u16 = 1235;
/// ER_UNKNOWN_ERROR.
pub const UNKNOWN_ERROR: u16 = 1105;
/// ER_CON_COUNT_ERROR: too many connections.
pub const TOO_MANY_CONNECTIONS: u16 = 1040;
/// ER_BAD_HOST_ERROR-like: the server cannot be reached (CR_CONN_HOST_ERROR is the client's).
pub const SERVER_UNREACHABLE: u16 = 2003;

/// The MySQL error number and SQLSTATE for a refusal the session hooks made with `sqlstate`.
pub fn code_for(sqlstate: SqlState) -> (u16, [u8; 5]) {
    match sqlstate.as_str() {
        "42501" => (ACCESS_DENIED, *b"42000"),
        // Volume limits, resource limits: ER_USER_LIMIT_REACHED.
        s if s.starts_with("54") || s.starts_with("53") => (1226, *b"42000"),
        // ER_QUERY_INTERRUPTED.
        "57014" => (1317, *b"70100"),
        _ => (UNKNOWN_ERROR, *b"HY000"),
    }
}

/// The payload of an ERR packet.
pub fn err_payload(code: u16, sqlstate: [u8; 5], message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    ErrPacket::Error(ServerError::new(code, Some(MySqlState::new(sqlstate)), message.as_bytes())).serialize(&mut out);
    out
}

/// An ERR packet, framed with sequence id `seq`.
pub fn err_packet(seq: u8, code: u16, sqlstate: [u8; 5], message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    packet::put(&mut out, seq, &err_payload(code, sqlstate, message));
    out
}

/// The error number, SQLSTATE and message of an ERR packet a server sent.
pub fn read_err(payload: &[u8]) -> Option<(u16, Option<SqlState>, String)> {
    let caps = mysql_common::constants::CapabilityFlags::CLIENT_PROTOCOL_41;
    let packet: ErrPacket<'_> = mysql_common::io::ParseBuf(payload).parse(caps).ok()?;
    match packet {
        ErrPacket::Error(e) => Some((
            e.error_code(),
            e.sql_state_ref().and_then(|s| SqlState::parse(&s.as_bytes())),
            e.message_str().into_owned(),
        )),
        ErrPacket::Progress(_) => None,
    }
}

/// The server's ERR packet with its message replaced (code and SQLSTATE kept); `None` when
/// it does not read as one.
pub fn with_message(payload: &[u8], message: &str) -> Option<Vec<u8>> {
    let caps = mysql_common::constants::CapabilityFlags::CLIENT_PROTOCOL_41;
    let packet: ErrPacket<'_> = mysql_common::io::ParseBuf(payload).parse(caps).ok()?;
    let ErrPacket::Error(e) = packet else { return None };
    let state = e.sql_state_ref().map_or(*b"HY000", |s| s.as_bytes());
    Some(err_payload(e.error_code(), state, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_error_1142_with_sqlstate_42000() {
        let (code, state) = code_for(SqlState::INSUFFICIENT_PRIVILEGE);
        let payload = err_payload(code, state, "warden: refused by policy \"p\" rule \"r\"");
        assert_eq!(&payload[..9], b"\xff\x76\x04#42000");
        assert_eq!(&payload[9..], b"warden: refused by policy \"p\" rule \"r\"");
        let (code, state, message) = read_err(&payload).unwrap();
        assert_eq!((code, state.map(|s| s.to_string()).as_deref()), (1142, Some("42000")));
        assert!(message.contains("rule \"r\""));
        let framed = err_packet(1, code, *b"42000", "x");
        assert_eq!(&framed[..4], &[10, 0, 0, 1]);
    }

    #[test]
    fn malformed_error_packets_are_not_read() {
        for bad in [&b""[..], b"\xff", b"\xff\x01"] {
            assert!(read_err(bad).is_none(), "{bad:?}");
        }
    }
}
