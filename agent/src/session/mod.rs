//! What every protocol's session shares, protocol-neutral: the judgement a statement carries
//! from before it is forwarded to its completion. A protocol module carries judgements without
//! reading them; govern makes them; the audit trail records them.

mod judgement;

pub use judgement::{Decision, Judgement, PartJudgement};

/// How the server lexes a statement's text: `standard_conforming_strings` when it was sent, and
/// whether that was settled (no statement was outstanding that could have changed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexing {
    pub standard_conforming_strings: bool,
    pub settled: bool,
    /// False in client encodings whose multibyte characters can contain ASCII bytes (SJIS,
    /// BIG5, GBK, UHC, GB18030, JOHAB): a quote or backslash byte may be half a character, so
    /// the text cannot be lexed from its bytes.
    pub ascii_safe: bool,
}
