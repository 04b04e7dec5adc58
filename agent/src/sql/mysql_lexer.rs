//! MySQL's lexical grammar (MySQL 8 and MariaDB 10.11, `sql/sql_lex.cc`: `lex_one_token`,
//! `consume_comment`, `get_text`, `scan_ident_delimited`), producing the same tokens as the
//! PostgreSQL lexer so one splitter and one normaliser read either. State names in comments
//! (`MY_LEX_NUMBER_IDENT`, ...) are that file's.
//!
//! The traps, each followed as the server follows it:
//! - `#` comments run to the end of the line; `--` starts a comment only when a space or a
//!   control character follows (`--1` is minus minus one; `--` at the very end is a comment, as
//!   the server peeks the terminating NUL). A NUL byte also ends either kind.
//! - `/* */` comments do not nest: the first `*/` closes one.
//! - Executable comments (`/*!`, `/*!50001`, MariaDB's `/*M!100500`) are code to the server: the
//!   marker and the closing `*/` are dropped and what is between them is lexed as tokens, here
//!   too (`ExecutableMarker` tokens for the markers). A version the server is older than makes
//!   the server skip the comment instead (allowing one nested comment inside); which versions
//!   those are depends on the server, so the other reading is `LexOptions::skip_versioned`,
//!   and callers compare the two (see `sql::mysql_version_dependent`).
//! - `'...'` and `"..."` are strings (`"..."` an identifier under `ANSI_QUOTES`); a doubled
//!   quote is a quote; a backslash escapes the next byte unless `NO_BACKSLASH_ESCAPES`.
//!   `` `...` `` quotes an identifier (doubled backticks, no escapes).
//! - `X'..'`, `B'..'`, `N'..'` prefixes only directly before the quote; `0x1F` and `0b101` are
//!   numbers only when no identifier character follows (`0x1g` and `0X1F` are identifiers), and
//!   identifiers may start with digits (`1abc`), though `1e5` is a number.
//!
//! Costs are those of the PostgreSQL lexer: no byte read more than a bounded number of times,
//! nothing allocated, unterminated constructs run to the end of the text.

use super::{Lexer, StringKind, TokenKind};
use crate::sql::Dialect;

impl Lexer<'_> {
    /// One MySQL token at `start` (whose first byte is `c`).
    pub(super) fn scan_mysql(&mut self, start: usize, c: u8) -> TokenKind {
        use TokenKind as K;
        let (ansi_quotes, backslash) = match self.options.dialect {
            Dialect::MySql { ansi_quotes, no_backslash_escapes } => (ansi_quotes, !no_backslash_escapes),
            Dialect::Postgres => (false, true),
        };
        // After `name.`: the identifier starts here; the dot itself is one before it.
        let ident_here = self.ident_at == start;
        let dot_before_ident = self.ident_at == start + 1;
        if start >= self.ident_at {
            self.ident_at = usize::MAX;
        }
        let (kind, end) = match c {
            c if is_space(c) => (K::Whitespace, self.run_end(start + 1, is_space)),
            b'#' => (K::LineComment, self.mysql_line_end(start + 1)),
            b'-' if self.at(start + 1) == Some(b'-')
                && self.at(start + 2).is_none_or(|c| is_space(c) || c < 0x20 || c == 0x7f) =>
            {
                (K::LineComment, self.mysql_line_end(start + 2))
            }
            b'/' if self.at(start + 1) == Some(b'*') => self.mysql_comment(start),
            b'*' if self.executable && self.at(start + 1) == Some(b'/') => {
                self.executable = false;
                (K::ExecutableMarker, start + 2)
            }
            b'\'' => (K::StringLiteral(StringKind::Plain), self.mysql_quoted_end(start + 1, b'\'', backslash)),
            b'"' if ansi_quotes => {
                (K::QuotedIdentifier { unicode: false }, self.mysql_quoted_end(start + 1, b'"', false))
            }
            b'"' => (K::StringLiteral(StringKind::Plain), self.mysql_quoted_end(start + 1, b'"', backslash)),
            b'`' => (K::QuotedIdentifier { unicode: false }, self.mysql_quoted_end(start + 1, b'`', false)),
            b';' => (K::Semicolon, start + 1),
            b'?' => (K::Parameter, start + 1),
            b'@' => self.mysql_variable(start, ansi_quotes, backslash),
            b'0'..=b'9' if ident_here => (K::Identifier, self.run_end(start + 1, is_ident_char)),
            b'0'..=b'9' => self.mysql_number(start),
            // MY_LEX_REAL_OR_POINT: `.5` is a number.
            b'.' if self.is(start + 1, |c| c.is_ascii_digit()) && !dot_before_ident => {
                (K::Number, self.mysql_real_end(self.run_end(start + 1, |c| c.is_ascii_digit())))
            }
            b'.' | b',' | b'(' | b')' => (K::Punctuation, start + 1),
            b':' if self.at(start + 1) == Some(b'=') => (K::Punctuation, start + 2),
            c if is_ident_char(c) => self.mysql_word(start, c, backslash),
            c if is_op_char(c) => (K::Operator, self.mysql_operator_end(start, c)),
            _ => (K::Other, start + 1),
        };
        // MY_LEX_IDENT_SEP: an unquoted identifier directly followed by `.` and an identifier
        // character: what follows the dot is an identifier even if it starts with a digit.
        if kind == K::Identifier && self.at(end) == Some(b'.') && self.is(end + 1, is_ident_char) {
            self.ident_at = end + 1;
        }
        self.pos = end;
        kind
    }

    /// MY_LEX_COMMENT: to the newline (not part of it), or a NUL byte, or the end.
    fn mysql_line_end(&self, i: usize) -> usize {
        self.run_end(i, |c| c != b'\n' && c != 0)
    }

    /// At `/*`: an executable comment's opening marker, or a whole comment.
    fn mysql_comment(&mut self, start: usize) -> (TokenKind, usize) {
        let mark = match (self.at(start + 2), self.at(start + 3)) {
            (Some(b'!'), _) => start + 3,
            // MariaDB's own executable comments (MySQL reads them as plain comments: the
            // server decides, and the version check below finds such texts).
            (Some(b'M'), Some(b'!')) => start + 4,
            // `/*+ hints */` are comments to the lexer (MySQL 8 parses them after SELECT, INSERT,
            // ...; MariaDB 10.11 ignores them), `/* */` never nests.
            _ => return (TokenKind::BlockComment, self.comment_end(start + 2, 0)),
        };
        let digits = self.run_end(mark, |c| c.is_ascii_digit()) - mark;
        let end = match digits {
            0..=4 => mark,
            5 => mark + 5,
            // MariaDB reads six digits; MySQL 8.4 too when whitespace follows, and older
            // servers five (the sixth is then code). Either way the server's version decides.
            _ => mark + 6,
        };
        if self.options.skip_versioned && version_dependent(&self.text[start..end]) {
            // The reading of a server that skips it: MySQL reads `/*M!` as a plain comment
            // (no nesting); a version comment is skipped with one nested comment allowed.
            let nested = usize::from(self.at(start + 2) == Some(b'!'));
            return (TokenKind::BlockComment, self.comment_end(end, nested));
        }
        self.executable = true;
        (TokenKind::ExecutableMarker, end)
    }

    /// `consume_comment`: after an opening `/*`, the end of the first `*/`; `nested` more
    /// levels of `/* */` allowed inside (one in a version comment the server skips).
    fn comment_end(&self, mut i: usize, mut nested: usize) -> usize {
        let mut depth = 0usize;
        loop {
            match self.at(i) {
                None => return i,
                Some(b'/') if nested > 0 && self.at(i + 1) == Some(b'*') => {
                    nested -= 1;
                    depth += 1;
                    i += 2;
                }
                Some(b'*') if self.at(i + 1) == Some(b'/') => {
                    if depth == 0 {
                        return i + 2;
                    }
                    depth -= 1;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// `get_text` / `scan_ident_delimited`: after an opening `quote`, the end of the literal:
    /// a doubled quote is one, a backslash (when `backslash`) escapes the next byte.
    fn mysql_quoted_end(&self, mut i: usize, quote: u8, backslash: bool) -> usize {
        loop {
            match self.at(i) {
                None => return i,
                Some(b'\\') if backslash => i = (i + 2).min(self.text.len()),
                Some(c) if c == quote => {
                    if self.at(i + 1) == Some(quote) {
                        i += 2;
                    } else {
                        return i + 1;
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// At `@`: `@name`, `@'name'` (and the other quotes), `@@name`; a lone `@` otherwise (as
    /// in `'user'@'host'`, which reads the same way).
    fn mysql_variable(&self, start: usize, ansi_quotes: bool, backslash: bool) -> (TokenKind, usize) {
        let name = if self.at(start + 1) == Some(b'@') { start + 2 } else { start + 1 };
        let end = match self.at(name) {
            Some(b'\'') if name == start + 1 => self.mysql_quoted_end(name + 1, b'\'', backslash),
            Some(b'"') if name == start + 1 => self.mysql_quoted_end(name + 1, b'"', backslash && !ansi_quotes),
            Some(b'`') if name == start + 1 => self.mysql_quoted_end(name + 1, b'`', false),
            // User variable names may also contain `.` (`@a.b`); system ones are split there.
            Some(c) if is_ident_char(c) && name == start + 1 => {
                self.run_end(name + 1, |c| is_ident_char(c) || c == b'.')
            }
            Some(c) if is_ident_char(c) => self.run_end(name + 1, is_ident_char),
            _ => return (TokenKind::Operator, start + 1),
        };
        (TokenKind::Variable, end)
    }

    /// MY_LEX_NUMBER_IDENT at a digit: a number, or an identifier that starts with digits.
    fn mysql_number(&self, start: usize) -> (TokenKind, usize) {
        use TokenKind as K;
        if self.at(start) == Some(b'0') {
            // Only lower-case `x` and `b`: `0X1F` is an identifier.
            let radix: Option<fn(u8) -> bool> = match self.at(start + 1) {
                Some(b'x') => Some(|c: u8| c.is_ascii_hexdigit()),
                Some(b'b') => Some(|c: u8| c == b'0' || c == b'1'),
                _ => None,
            };
            if let Some(digit) = radix {
                let end = self.run_end(start + 2, digit);
                if end > start + 2 && !self.is(end, is_ident_char) {
                    return (K::Number, end);
                }
                return (K::Identifier, self.run_end(end, is_ident_char));
            }
        }
        let int_end = self.run_end(start + 1, |c| c.is_ascii_digit());
        match self.at(int_end) {
            Some(b'e' | b'E') => {
                // `1e5`, `1e+5`: a float; `1e`, `1ex`, `1e+x`: an identifier (`1e` then `+`).
                let sign = usize::from(self.is(int_end + 1, |c| c == b'+' || c == b'-'));
                if self.is(int_end + 1 + sign, |c| c.is_ascii_digit()) {
                    return (K::Number, self.run_end(int_end + 1 + sign, |c| c.is_ascii_digit()));
                }
                (K::Identifier, self.run_end(int_end, is_ident_char))
            }
            Some(c) if is_ident_char(c) => (K::Identifier, self.run_end(int_end, is_ident_char)),
            // MY_LEX_INT_OR_REAL, MY_LEX_REAL.
            Some(b'.') => {
                let frac_end = self.run_end(int_end + 1, |c| c.is_ascii_digit());
                (K::Number, self.mysql_real_end(frac_end))
            }
            _ => (K::Number, int_end),
        }
    }

    /// After a mantissa with a point: an exponent, if any (`1.5e` without digits is one
    /// erroneous token to the server, which then rejects the statement).
    fn mysql_real_end(&self, i: usize) -> usize {
        if !self.is(i, |c| c == b'e' || c == b'E') {
            return i;
        }
        let sign = usize::from(self.is(i + 1, |c| c == b'+' || c == b'-'));
        self.run_end(i + 1 + sign, |c| c.is_ascii_digit())
    }

    /// An identifier or keyword, unless it is a string prefix directly before a quote
    /// (MY_LEX_IDENT_OR_HEX, MY_LEX_IDENT_OR_BIN, MY_LEX_IDENT_OR_NCHAR).
    fn mysql_word(&self, start: usize, c: u8, backslash: bool) -> (TokenKind, usize) {
        use StringKind as S;
        use TokenKind as K;
        if self.at(start + 1) == Some(b'\'') {
            match c {
                // Hex and bit strings end at the next quote: no escapes, no doubling.
                b'x' | b'X' => return (K::StringLiteral(S::Hex), self.raw_string_end(start + 2)),
                b'b' | b'B' => return (K::StringLiteral(S::Bit), self.raw_string_end(start + 2)),
                b'n' | b'N' => {
                    return (K::StringLiteral(S::National), self.mysql_quoted_end(start + 2, b'\'', backslash));
                }
                _ => {}
            }
        }
        (K::Identifier, self.run_end(start + 1, is_ident_char))
    }

    /// After `X'` or `B'`: the next quote ends the literal.
    fn raw_string_end(&self, i: usize) -> usize {
        let end = self.run_end(i, |c| c != b'\'');
        if end < self.text.len() { end + 1 } else { end }
    }

    /// An operator: the multi-character ones the server knows, else one character. `--`
    /// not followed by a space is two minus signs; a `/*` right after an operator character is
    /// a comment (lexed next).
    fn mysql_operator_end(&self, start: usize, c: u8) -> usize {
        let next = self.at(start + 1);
        let two = match (c, next) {
            (b'<', Some(b'=')) => return if self.at(start + 2) == Some(b'>') { start + 3 } else { start + 2 },
            (b'-', Some(b'>')) => return if self.at(start + 2) == Some(b'>') { start + 3 } else { start + 2 },
            (b'<', Some(b'>' | b'<')) | (b'>', Some(b'=' | b'>')) | (b'!', Some(b'=')) => true,
            (b'&', Some(b'&')) | (b'|', Some(b'|')) => true,
            _ => false,
        };
        start + if two { 2 } else { 1 }
    }
}

/// Whether the opening marker of an executable comment runs its content only on some of the
/// servers this lexer follows: MariaDB's `/*M!` (a plain comment to MySQL), and versions of
/// 5.7 and later (MariaDB skips `/*!50700`..`/*!99999`, MySQL those newer than itself) or of
/// six digits (read as five by older MySQL). `/*!` and `/*!40101` run everywhere.
pub(in crate::sql) fn version_dependent(marker: &[u8]) -> bool {
    let Some(digits) = marker.strip_prefix(b"/*!") else { return marker.starts_with(b"/*M!") };
    match digits.len() {
        0 => false,
        5 => digits >= b"50700".as_slice(),
        _ => true,
    }
}

/// `my_isspace` of the ASCII-compatible character sets.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `ident_map`: letters, digits, `_`, `$`, and every byte of a multi-byte character.
fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_op_char(c: u8) -> bool {
    matches!(c, b'~' | b'!' | b'^' | b'&' | b'|' | b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b':')
}
