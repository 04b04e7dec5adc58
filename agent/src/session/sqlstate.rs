//! SQLSTATE: the five-character class-and-condition code of the SQL standard, which every
//! protocol's errors carry.

use std::fmt;

/// A SQLSTATE code (five ASCII digits or upper-case letters).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// Refused by policy (insufficient_privilege).
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    /// An internal error (also what a malformed code from a server is recorded as).
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");
    /// A resource the statement needs (the audit trail) is unavailable.
    pub const INSUFFICIENT_RESOURCES: SqlState = SqlState(*b"53000");
    /// A volume limit stopped or refused the statement.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState(*b"54000");

    /// A code as a server sent it: `None` unless it is five digits or upper-case letters.
    pub fn parse(code: &[u8]) -> Option<SqlState> {
        let code: [u8; 5] = code.try_into().ok()?;
        code.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()).then_some(SqlState(code))
    }

    pub fn as_str(&self) -> &str {
        // Checked ASCII at construction.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_codes_parse() {
        assert_eq!(SqlState::parse(b"42501"), Some(SqlState::INSUFFICIENT_PRIVILEGE));
        assert_eq!(SqlState::parse(b"42501").map(|s| s.to_string()).as_deref(), Some("42501"));
        for bad in [&b"4250"[..], b"425011", b"42a01", b"42\x0001"] {
            assert_eq!(SqlState::parse(bad), None, "{bad:?}");
        }
    }
}
