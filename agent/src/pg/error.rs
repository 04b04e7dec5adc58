//! ErrorResponse / NoticeResponse construction, with the SQLSTATEs Warden uses.

use super::frame::put_message;

/// SQLSTATEs Warden sends, named for what they mean to a client.
pub mod sqlstate {
    /// The database could not be reached.
    pub const UNABLE_TO_CONNECT: &str = "08001";
    /// The upstream connection was lost mid-session.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// The client broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Refused by policy.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// A resource the statement needs (the audit trail) is unavailable.
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    /// Too many connections (globally, or for the client's identity).
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// The agent itself failed.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// The request needs something the agent is not configured for (e.g. replication).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// The connection cannot be served yet (as PostgreSQL says while it starts up).
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// An operator ended the session (as pg_terminate_backend does).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
}

/// Severity of a synthesised error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// Appends an ErrorResponse ('E') message.
pub fn put_error(out: &mut Vec<u8>, severity: Severity, sqlstate: &str, message: &str) {
    let s = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [(b'S', s), (b'V', s), (b'C', sqlstate), (b'M', message)] {
        body.push(field);
        // A NUL would end the field early: the protocol has no escape for it.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    put_message(out, b'E', &body);
}

/// An ErrorResponse message on its own.
pub fn error_message(severity: Severity, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_error(&mut out, severity, sqlstate, message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let m = error_message(Severity::Fatal, "08001", "no");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len, m.len() - 1);
        assert_eq!(&m[5..], b"SFATAL\0VFATAL\0C08001\0Mno\0\0");
        let m = error_message(Severity::Error, "42501", "a\0b");
        assert_eq!(&m[5..], b"SERROR\0VERROR\0C42501\0Mab\0\0");
    }
}
