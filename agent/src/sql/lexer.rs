//! PostgreSQL's lexical grammar, as far as statement boundaries and literals depend on it: one
//! tokenizer that the splitter and the normaliser both read, so they can never disagree about
//! where a string, comment or statement ends.
//!
//! The ground truth is the server's scanner (`src/backend/parser/scan.l`, PostgreSQL 16-18); rule
//! names in comments (`{quotecontinue}`, `{dolqfailed}`, ...) are that file's. Workloads are
//! adversarial, so two properties matter more than anything else:
//! - Fidelity: wherever this lexer ends a token somewhere the server does not, a statement can
//!   hide inside what we took for a string or comment (or appear from one).
//! - Cost: every byte is visited a bounded number of times (no rescans, no searches for closing
//!   delimiters), and lexing allocates nothing. Unterminated constructs run to the end of the
//!   text, where the server stops with an error: faithful, and linear.
//!
//! A simple-query string is lexed whole by the server before anything runs, so a lexical error
//! anywhere (an unterminated string, `123abc`) means no statement of the string runs; such
//! tokens only need a sensible extent here, not an exact error.

use std::ops::Range;

#[path = "mysql_lexer.rs"]
mod mysql;

/// Which server's lexical grammar a text follows, with the modes that change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// PostgreSQL (`scan.l`); its one mode is `LexOptions::standard_conforming_strings`.
    #[default]
    Postgres,
    /// MySQL 8 / MariaDB 10.11 (`sql_lex.cc`), under the session's `sql_mode`.
    MySql {
        /// `ANSI_QUOTES`: `"..."` quotes an identifier, not a string.
        ansi_quotes: bool,
        /// `NO_BACKSLASH_ESCAPES`: backslash is an ordinary character inside strings.
        no_backslash_escapes: bool,
    },
}

impl Dialect {
    /// MySQL's default modes (neither `ANSI_QUOTES` nor `NO_BACKSLASH_ESCAPES`).
    pub const MYSQL: Dialect = Dialect::MySql { ansi_quotes: false, no_backslash_escapes: false };

    pub fn is_mysql(self) -> bool {
        matches!(self, Dialect::MySql { .. })
    }
}

/// Server settings that change how text is lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LexOptions {
    /// `standard_conforming_strings` (reported by the server in ParameterStatus). When off, a
    /// plain `'...'` (and `N'...'`) string treats backslash as an escape, as `E'...'` always does.
    /// PostgreSQL only.
    pub standard_conforming_strings: bool,
    /// The grammar, and its modes.
    pub dialect: Dialect,
    /// MySQL only: read version-gated executable comments (`/*!80000 ...*/`) as the comments a
    /// server older than that version skips, instead of as code. Never set for a session: the
    /// other reading of a text, to find whether the server's version decides how it splits.
    pub skip_versioned: bool,
}

impl Default for LexOptions {
    /// The server default since PostgreSQL 9.1: `standard_conforming_strings = on`.
    fn default() -> Self {
        Self::postgres(true)
    }
}

impl LexOptions {
    /// PostgreSQL with `standard_conforming_strings` as given.
    pub const fn postgres(standard_conforming_strings: bool) -> Self {
        Self { standard_conforming_strings, dialect: Dialect::Postgres, skip_versioned: false }
    }

    /// MySQL / MariaDB under the given modes.
    pub const fn mysql(ansi_quotes: bool, no_backslash_escapes: bool) -> Self {
        Self {
            standard_conforming_strings: true,
            dialect: Dialect::MySql { ansi_quotes, no_backslash_escapes },
            skip_versioned: false,
        }
    }
}

/// The prefix (and so the escape rules) of a quoted string literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringKind {
    /// `'...'`
    Plain,
    /// `E'...'`: backslash escapes.
    Escape,
    /// `N'...'`: lexed as a plain string after the `N`.
    National,
    /// `B'...'`: bit string.
    Bit,
    /// `X'...'`: hexadecimal bit string.
    Hex,
    /// `U&'...'`: Unicode escapes (decoded by the parser; `UESCAPE` is a separate token).
    Unicode,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A run of `[ \t\n\r\f\v]`.
    Whitespace,
    /// `--` to the end of the line (the newline is not part of it).
    LineComment,
    /// `/* ... */`, nested.
    BlockComment,
    /// A quoted string with its prefix, including any continuation (`'a'` newline `'b'`).
    StringLiteral(StringKind),
    /// `$tag$...$tag$` or `$$...$$`.
    DollarString,
    /// A keyword or unquoted identifier (which may contain digits and `$`).
    Identifier,
    /// `"..."`, or `U&"..."` (`unicode`).
    QuotedIdentifier { unicode: bool },
    /// A numeric literal, including the malformed forms the server rejects as one token
    /// ("trailing junk after numeric literal": `123abc`, `0x`, `1e+`).
    Number,
    /// `$1` (and the erroneous `$1abc`, one token to the server too).
    Parameter,
    /// `;`: ends a statement.
    Semicolon,
    /// An operator: a run of `~!@#^&|`?+-*/%<>=`, split as the server splits it.
    Operator,
    /// `, ( ) [ ] . : :: := ..`
    Punctuation,
    /// Anything else (a lone `$`, `\`, `{`): one byte.
    Other,
    /// MySQL: `@name`, `@'name'`, `@@name` (a user or system variable; not data).
    Variable,
    /// MySQL: the opening `/*!`, `/*!50001`, `/*M!100500` of an executable comment, or its
    /// closing `*/`. The server drops the markers and runs what is between them as code, so
    /// that is lexed as tokens; the markers themselves are comments.
    ExecutableMarker,
}

impl TokenKind {
    /// Whitespace and comments: nothing to the server's grammar.
    pub fn is_trivia(self) -> bool {
        matches!(self, Self::Whitespace | Self::LineComment | Self::BlockComment | Self::ExecutableMarker)
    }

    /// Comments only.
    pub fn is_comment(self) -> bool {
        matches!(self, Self::LineComment | Self::BlockComment | Self::ExecutableMarker)
    }

    /// A constant whose text is data: strings of every kind and numbers.
    pub fn is_literal(self) -> bool {
        matches!(self, Self::StringLiteral(_) | Self::DollarString | Self::Number)
    }
}

/// One token: its kind and byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The byte range of the token.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// An iterator over the tokens of a text. Token boundaries always fall next to an ASCII byte
/// (or at the end), so every range slices the `&str` safely.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    options: LexOptions,
    /// End of a run of `+`/`-` the server returns one character at a time (see `operator`).
    single_ops_until: usize,
    /// MySQL: inside an executable comment (`/*! ... */`), whose `*/` ends it.
    executable: bool,
    /// MySQL: where an identifier must start (after `name.`, digits begin an identifier).
    ident_at: usize,
}

/// Whether an executable comment's opening marker (`/*!80000`) runs its content only on some
/// servers (see `mysql_lexer`).
pub(super) fn version_dependent_marker(raw: &str) -> bool {
    mysql::version_dependent(raw.as_bytes())
}

#[cfg(test)]
thread_local! {
    /// Bytes read by lexers on this thread: the linearity tests count work instead of timing it.
    pub(super) static VISITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'a> Lexer<'a> {
    /// Lexes `text` under `options`.
    pub fn new(text: &'a str, options: LexOptions) -> Self {
        Self { text: text.as_bytes(), pos: 0, options, single_ops_until: 0, executable: false, ident_at: usize::MAX }
    }

    /// MySQL: whether the text so far ended inside an executable comment (never closed: the
    /// server rejects the statement).
    pub fn in_executable_comment(&self) -> bool {
        self.executable
    }

    /// The next token that is not whitespace or a comment.
    pub fn next_significant(&mut self) -> Option<Token> {
        self.find(|t| !t.kind.is_trivia())
    }

    /// Every read of the text goes through here, so the tests can count them.
    #[inline]
    fn at(&self, i: usize) -> Option<u8> {
        #[cfg(test)]
        VISITS.with(|v| v.set(v.get() + 1));
        self.text.get(i).copied()
    }

    fn is(&self, i: usize, pred: impl Fn(u8) -> bool) -> bool {
        self.at(i).is_some_and(pred)
    }

    fn run_end(&self, mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
        while self.is(i, &pred) {
            i += 1;
        }
        i
    }

    fn scan(&mut self, start: usize, c: u8) -> TokenKind {
        use TokenKind as K;
        let (kind, end) = match c {
            _ if start < self.single_ops_until => (K::Operator, start + 1),
            c if is_space(c) => (K::Whitespace, self.run_end(start + 1, is_space)),
            b'-' if self.at(start + 1) == Some(b'-') => (K::LineComment, self.line_end(start + 2)),
            b'/' if self.at(start + 1) == Some(b'*') => (K::BlockComment, self.block_comment_end(start + 2)),
            b'\'' => (K::StringLiteral(StringKind::Plain), self.string_end(start + 1, self.plain_body())),
            b'"' => (K::QuotedIdentifier { unicode: false }, self.quoted_identifier_end(start + 1)),
            b'$' => self.dollar(start),
            b';' => (K::Semicolon, start + 1),
            b'0'..=b'9' => (K::Number, self.number_end(start)),
            b'.' => match self.at(start + 1) {
                Some(b'0'..=b'9') => (K::Number, self.exponent_end(self.decinteger_end(start + 1))),
                Some(b'.') => (K::Punctuation, start + 2),
                _ => (K::Punctuation, start + 1),
            },
            b':' => {
                (K::Punctuation, if matches!(self.at(start + 1), Some(b':' | b'=')) { start + 2 } else { start + 1 })
            }
            b',' | b'(' | b')' | b'[' | b']' => (K::Punctuation, start + 1),
            c if is_op_char(c) => (K::Operator, self.operator_end(start)),
            c if is_ident_start(c) => self.word(start, c),
            _ => (K::Other, start + 1),
        };
        self.pos = end;
        kind
    }

    /// How a plain `'...'` string's body is lexed: `{xqstart}` enters `<xe>` when
    /// standard_conforming_strings is off.
    fn plain_body(&self) -> Body {
        if self.options.standard_conforming_strings { Body::Standard } else { Body::Escaped }
    }

    /// An identifier or keyword, unless its first letter is a string prefix: flex takes the
    /// longest match, so `e'` is `{xestart}`, not the identifier `e` (and `ue'` is the identifier
    /// `ue`, then a plain string).
    fn word(&mut self, start: usize, c: u8) -> (TokenKind, usize) {
        use StringKind as S;
        use TokenKind as K;
        let quote = self.at(start + 1) == Some(b'\'');
        match c.to_ascii_lowercase() {
            b'e' if quote => (K::StringLiteral(S::Escape), self.string_end(start + 2, Body::Escaped)),
            // {xnstart} gives back the quote, which then starts an ordinary {xqstart} string.
            b'n' if quote => (K::StringLiteral(S::National), self.string_end(start + 2, self.plain_body())),
            // {xbinside}/{xhinside} are [^']*: no '' doubling (see Body::Raw).
            b'b' if quote => (K::StringLiteral(S::Bit), self.string_end(start + 2, Body::Raw)),
            b'x' if quote => (K::StringLiteral(S::Hex), self.string_end(start + 2, Body::Raw)),
            b'u' if self.at(start + 1) == Some(b'&') => match self.at(start + 2) {
                // {xusstart}: like <xq>, whatever standard_conforming_strings says (when it is
                // off the server refuses U& strings, failing the whole query string).
                Some(b'\'') => (K::StringLiteral(S::Unicode), self.string_end(start + 3, Body::Standard)),
                Some(b'"') => (K::QuotedIdentifier { unicode: true }, self.quoted_identifier_end(start + 3)),
                // {xufailed}: the `u` alone is an identifier.
                _ => (K::Identifier, start + 1),
            },
            _ => (K::Identifier, self.run_end(start + 1, is_ident_cont)),
        }
    }

    /// `--` comment: {non_newline}* up to, not including, `\n` or `\r`.
    fn line_end(&self, i: usize) -> usize {
        self.run_end(i, |c| c != b'\n' && c != b'\r')
    }

    /// After `/*`: comments nest (`<xc>{xcstart}` deepens, `{xcstop}` = `\*+\/` closes one level).
    /// The depth is a counter, so nesting costs no memory.
    fn block_comment_end(&self, mut i: usize) -> usize {
        let mut depth = 0usize;
        loop {
            match self.at(i) {
                None => return i,
                Some(b'/') if self.at(i + 1) == Some(b'*') => {
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

    /// After the opening quote of a string whose body follows `body`: the end of the literal,
    /// including any continuations.
    fn string_end(&self, mut i: usize, body: Body) -> usize {
        loop {
            match self.at(i) {
                None => return i,
                Some(b'\'') => {
                    // {xqdouble}; bit and hex strings have no such rule: there `''` ends the
                    // literal and starts another (which matters when that one is lexed <xe>).
                    if body != Body::Raw && self.at(i + 1) == Some(b'\'') {
                        i += 2;
                        continue;
                    }
                    match self.continuation(i + 1) {
                        // The continued literal keeps its body rules: `E'a'` newline `'\''` is
                        // still <xe> (the <xqs> state returns to state_before_str_stop).
                        Some(next) => i = next,
                        None => return i + 1,
                    }
                }
                // {xeescape}, {xeoctesc}, ...: whatever follows a backslash is not a terminator
                // (a backslash just before the end is `<xe>.`).
                Some(b'\\') if body == Body::Escaped => i = (i + 2).min(self.text.len()),
                Some(_) => i += 1,
            }
        }
    }

    /// After a closing quote: `{quotecontinue}` = whitespace containing at least one newline,
    /// in which every `--` comment ends at a newline, then another quote (SQL's rule that
    /// `'a'` newline `'b'` is the literal `'ab'`). Returns the position after that quote.
    /// Comments of the `/* */` kind do not continue a literal. On failure the bytes looked at
    /// are lexed again as whitespace and comments: each once more, at most.
    fn continuation(&self, mut i: usize) -> Option<usize> {
        let mut newline = false;
        loop {
            match self.at(i)? {
                b'\n' | b'\r' => {
                    newline = true;
                    i += 1;
                }
                c if is_space(c) => i += 1,
                b'-' if self.at(i + 1) == Some(b'-') => {
                    i = self.line_end(i + 2);
                    // A comment at the very end cannot be followed by the required newline.
                    self.at(i)?;
                }
                b'\'' if newline => return Some(i + 1),
                _ => return None,
            }
        }
    }

    /// After `"` (or `U&"`): `""` doubles, `"` ends.
    fn quoted_identifier_end(&self, mut i: usize) -> usize {
        loop {
            match self.at(i) {
                None => return i,
                Some(b'"') if self.at(i + 1) == Some(b'"') => i += 2,
                Some(b'"') => return i + 1,
                Some(_) => i += 1,
            }
        }
    }

    /// At `$`: a parameter, a dollar quote, or a lone `$`.
    fn dollar(&mut self, start: usize) -> (TokenKind, usize) {
        match self.at(start + 1) {
            Some(b'0'..=b'9') => {
                let digits = self.run_end(start + 2, |c| c.is_ascii_digit());
                // {param_junk}: `$1abc` is one (erroneous) token. `$1$a$` is `$1` then a
                // dollar quote, as an identifier cannot start with `$`.
                let end = if self.is(digits, is_ident_start) { self.run_end(digits, is_ident_cont) } else { digits };
                (TokenKind::Parameter, end)
            }
            Some(b'$') => (TokenKind::DollarString, self.dollar_body_end(start + 2, start + 1..start + 1)),
            Some(c) if is_ident_start(c) => {
                let tag_end = self.run_end(start + 2, is_dolq_cont);
                if self.at(tag_end) == Some(b'$') {
                    (TokenKind::DollarString, self.dollar_body_end(tag_end + 1, start + 1..tag_end))
                } else {
                    // {dolqfailed}: only the `$` is a token; what followed is lexed again
                    // (as an identifier, once more at most).
                    (TokenKind::Other, start + 1)
                }
            }
            _ => (TokenKind::Other, start + 1),
        }
    }

    /// After the opening `$tag$` (the tag at `tag`): the end of the first identical delimiter.
    /// One pass: each `$` starts a candidate, compared with the tag while it is read; a
    /// candidate that fails gives back its final `$`, which may begin the real delimiter
    /// (`$a$ ... $b$a$`), so no byte is read more than twice (plus the tag, at most once per
    /// candidate of its length, which is bounded by the candidate's own bytes).
    fn dollar_body_end(&self, mut i: usize, tag: Range<usize>) -> usize {
        let tag_len = tag.end - tag.start;
        loop {
            match self.at(i) {
                None => return i,
                Some(b'$') => {
                    let mut j = i + 1;
                    let mut same = true;
                    if self.is(j, is_ident_start) {
                        while let Some(c) = self.at(j).filter(|&c| is_dolq_cont(c)) {
                            let k = j - (i + 1);
                            same = same && k < tag_len && self.at(tag.start + k) == Some(c);
                            j += 1;
                        }
                    }
                    if self.at(j) == Some(b'$') && same && j - (i + 1) == tag_len {
                        return j + 1;
                    }
                    // A failed `$junk$` gives back its last `$`; a `$junk` or lone `$` is body.
                    i = j;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// At an operator character (not starting a comment): `{operator}` takes the longest run
    /// of operator characters, then
    /// - cuts it where `/*` or `--` begins inside it (those start comments: `+--x` is `+`);
    /// - unless it contains one of `~!@#^&|`?%`, drops trailing `+`/`-` (so `=-1` is `=`, `-`,
    ///   `1`), which then come back as one-character tokens.
    ///
    /// The server rescans the dropped characters; remembering where the run ended instead keeps
    /// `+-+-+-...` linear.
    fn operator_end(&mut self, start: usize) -> usize {
        let mut prev = self.at(start).unwrap_or(0);
        let mut qualifies = is_qualifying_op_char(prev);
        let mut end = start + 1;
        while let Some(c) = self.at(end).filter(|&c| is_op_char(c)) {
            if (prev == b'/' && c == b'*') || (prev == b'-' && c == b'-') {
                // `prev` starts a comment; it is not the operator's first character (that case
                // was lexed as a comment), so the operator keeps at least one.
                end -= 1;
                break;
            }
            qualifies |= is_qualifying_op_char(c);
            prev = c;
            end += 1;
        }
        let mut token_end = end;
        if !qualifies {
            while token_end > start + 1 && matches!(self.at(token_end - 1), Some(b'+' | b'-')) {
                token_end -= 1;
            }
        }
        self.single_ops_until = end;
        token_end
    }

    /// At a digit: the end of the number, by the longest match among `{decinteger}`,
    /// `{hexinteger}`/`{octinteger}`/`{bininteger}` (and their `fail` rules), `{numeric}`,
    /// `{numericfail}`, `{real}`, `{realfail}` and the `*_junk` rules (PostgreSQL 16+:
    /// `0x1F`, `0o17`, `0b101`, `1_000`; since 15, a number followed by identifier characters
    /// is one erroneous token).
    fn number_end(&self, start: usize) -> usize {
        if self.at(start) == Some(b'0') && self.is(start + 1, |c| matches!(c, b'x' | b'X' | b'o' | b'O' | b'b' | b'B'))
        {
            // A radix literal, or `0` followed by an identifier ({integer_junk}, which ties with
            // and so loses to a valid radix literal): either way the token runs to the end of
            // the identifier characters after the `0`.
            return self.run_end(start + 1, is_ident_cont);
        }
        let int_end = self.decinteger_end(start);
        if self.at(int_end) != Some(b'.') {
            return self.exponent_end(int_end);
        }
        match self.at(int_end + 1) {
            // {numericfail}: `1..10` is `1`, `..`, `10`.
            Some(b'.') => int_end,
            Some(b'0'..=b'9') => self.exponent_end(self.decinteger_end(int_end + 1)),
            _ => self.exponent_end(int_end + 1),
        }
    }

    /// At a digit: `{decinteger}` = digit (`_`? digit)*.
    fn decinteger_end(&self, mut i: usize) -> usize {
        loop {
            match self.at(i) {
                Some(b'0'..=b'9') => i += 1,
                Some(b'_') if self.is(i + 1, |c| c.is_ascii_digit()) => i += 2,
                _ => return i,
            }
        }
    }

    /// After a mantissa ending at `i`: a signed exponent (`1e-5`), or identifier characters,
    /// which cover an unsigned exponent (`1e5`) and the junk rules (`1e5x`, `123abc`) alike.
    /// `1e+` alone is {realfail}.
    fn exponent_end(&self, i: usize) -> usize {
        if self.is(i, |c| c == b'e' || c == b'E') && self.is(i + 1, |c| c == b'+' || c == b'-') {
            if !self.is(i + 2, |c| c.is_ascii_digit()) {
                return i + 2;
            }
            let exponent_end = self.decinteger_end(i + 2);
            return self.junk_end(exponent_end);
        }
        self.junk_end(i)
    }

    fn junk_end(&self, i: usize) -> usize {
        if self.is(i, is_ident_start) { self.run_end(i, is_ident_cont) } else { i }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let c = self.at(start)?;
        let kind = if self.options.dialect.is_mysql() { self.scan_mysql(start, c) } else { self.scan(start, c) };
        debug_assert!(self.pos > start, "the lexer always advances");
        Some(Token { kind, start, end: self.pos })
    }
}

/// How a quoted string's body treats quotes and backslashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// <xq>, <xus>: `''` is a quote; backslash is an ordinary character.
    Standard,
    /// <xe>: also, a backslash escapes the next byte (so `\'` does not end the string).
    Escaped,
    /// <xb>, <xh>: a quote always ends the string.
    Raw,
}

/// {space}: `\v` too (PostgreSQL 16+; earlier servers reject it as a character).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// {ident_start}: letters, `_` and every byte of a multi-byte character.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// {ident_cont}: identifiers may also contain digits and `$` (so `x$a$` is one identifier).
fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// {dolq_cont}: a dollar-quote tag is an identifier without `$`.
fn is_dolq_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// {op_chars}
fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

/// Operator characters that are not SQL operators: with one of them, an operator may end in
/// `+` or `-`.
fn is_qualifying_op_char(c: u8) -> bool {
    matches!(c, b'~' | b'!' | b'@' | b'#' | b'^' | b'&' | b'|' | b'`' | b'?' | b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCS_ON: LexOptions = LexOptions::postgres(true);
    const SCS_OFF: LexOptions = LexOptions::postgres(false);

    /// The significant tokens of `text`, as (kind, text).
    fn tokens(text: &str, options: LexOptions) -> Vec<(TokenKind, &str)> {
        Lexer::new(text, options)
            .filter(|t| t.kind != TokenKind::Whitespace)
            .map(|t| (t.kind, &text[t.range()]))
            .collect()
    }

    fn kinds(text: &str) -> Vec<TokenKind> {
        tokens(text, SCS_ON).into_iter().map(|(k, _)| k).collect()
    }

    use StringKind as S;
    use TokenKind as K;

    #[test]
    fn tokens_cover_the_text_exactly() {
        let text = "select E'a\\'b' || $x$ ; $x$ /* /* */ */ -- c\n from \"t\"\"x\" where a=-1.5e-3 and b = $1;";
        let mut at = 0;
        for t in Lexer::new(text, SCS_ON) {
            assert_eq!(t.start, at, "tokens are contiguous: {t:?}");
            assert!(t.end > t.start, "tokens are not empty: {t:?}");
            at = t.end;
        }
        assert_eq!(at, text.len());
    }

    #[test]
    fn identifiers_may_contain_dollars_and_digits() {
        // scan.l {ident_cont} includes `$`: `x$a$` is one identifier, not `x` and a dollar quote.
        assert_eq!(
            tokens("x$a$ t1 x$1 _y é1", SCS_ON),
            vec![
                (K::Identifier, "x$a$"),
                (K::Identifier, "t1"),
                (K::Identifier, "x$1"),
                (K::Identifier, "_y"),
                (K::Identifier, "é1"),
            ]
        );
    }

    #[test]
    fn dollar_forms() {
        assert_eq!(
            tokens("$1 $12$a$x$a$ $$a$b$$", SCS_ON),
            vec![
                (K::Parameter, "$1"),
                (K::Parameter, "$12"),
                (K::DollarString, "$a$x$a$"),
                (K::DollarString, "$$a$b$$"),
            ]
        );
        // {dolqfailed}: `$abc` not followed by `$` is a lone `$`, then an identifier.
        assert_eq!(tokens("$abc+", SCS_ON), vec![(K::Other, "$"), (K::Identifier, "abc"), (K::Operator, "+")]);
        // A failed candidate gives back its final `$`: `$b$a$` closes `$a$`.
        assert_eq!(tokens("$a$ x $b$a$ y", SCS_ON), vec![(K::DollarString, "$a$ x $b$a$"), (K::Identifier, "y")]);
        // Tags are case-sensitive and cannot start with a digit.
        assert_eq!(tokens("$A$ $a$ $1$ $A$", SCS_ON), vec![(K::DollarString, "$A$ $a$ $1$ $A$")]);
        // {param_junk} is one token; a dollar quote may follow a parameter.
        assert_eq!(
            tokens("$1abc $1$q$;$q$", SCS_ON),
            vec![(K::Parameter, "$1abc"), (K::Parameter, "$1"), (K::DollarString, "$q$;$q$"),]
        );
        assert_eq!(kinds("$"), vec![K::Other]);
        assert_eq!(tokens("$a$ unterminated", SCS_ON), vec![(K::DollarString, "$a$ unterminated")]);
    }

    #[test]
    fn comments_nest_and_run_to_line_ends() {
        assert_eq!(
            tokens("/* a /* b */ c */ x", SCS_ON),
            vec![(K::BlockComment, "/* a /* b */ c */"), (K::Identifier, "x")]
        );
        assert_eq!(
            tokens("/**/x/*/ */y", SCS_ON),
            vec![(K::BlockComment, "/**/"), (K::Identifier, "x"), (K::BlockComment, "/*/ */"), (K::Identifier, "y"),]
        );
        assert_eq!(
            tokens("a -- b ; c\rd", SCS_ON),
            vec![(K::Identifier, "a"), (K::LineComment, "-- b ; c"), (K::Identifier, "d")]
        );
        // A comment start inside an operator ends the operator.
        assert_eq!(
            tokens("1 +--x\n2 */*y*/", SCS_ON),
            vec![
                (K::Number, "1"),
                (K::Operator, "+"),
                (K::LineComment, "--x"),
                (K::Number, "2"),
                (K::Operator, "*"),
                (K::BlockComment, "/*y*/"),
            ]
        );
        assert_eq!(tokens("/* unterminated /* */", SCS_ON), vec![(K::BlockComment, "/* unterminated /* */")]);
    }

    #[test]
    fn string_prefixes_and_escapes() {
        assert_eq!(
            tokens(r"'a''b' E'c\'d' e'\\' N'n' b'01' X'fF' U&'\0061' ue'x'", SCS_ON),
            vec![
                (K::StringLiteral(S::Plain), "'a''b'"),
                (K::StringLiteral(S::Escape), r"E'c\'d'"),
                (K::StringLiteral(S::Escape), r"e'\\'"),
                (K::StringLiteral(S::National), "N'n'"),
                (K::StringLiteral(S::Bit), "b'01'"),
                (K::StringLiteral(S::Hex), "X'fF'"),
                (K::StringLiteral(S::Unicode), r"U&'\0061'"),
                (K::Identifier, "ue"),
                (K::StringLiteral(S::Plain), "'x'"),
            ]
        );
        // With standard_conforming_strings off, plain and national strings take backslash escapes.
        assert_eq!(
            tokens(r"'a\'b' N'\''", SCS_OFF),
            vec![(K::StringLiteral(S::Plain), r"'a\'b'"), (K::StringLiteral(S::National), r"N'\''"),]
        );
        // ... and with it on, `\'` ends the string, and `b'` opens a bit string.
        assert_eq!(
            tokens(r"'a\'b'", SCS_ON),
            vec![(K::StringLiteral(S::Plain), r"'a\'"), (K::StringLiteral(S::Bit), "b'")]
        );
        // Bit strings have no '' doubling: the second quote opens a new (plain) string.
        assert_eq!(
            tokens(r"b'1''\'", SCS_OFF),
            vec![(K::StringLiteral(S::Bit), "b'1'"), (K::StringLiteral(S::Plain), r"'\'")]
        );
        // `u&` not followed by a quote is the identifier `u`.
        assert_eq!(tokens("u&v", SCS_ON), vec![(K::Identifier, "u"), (K::Operator, "&"), (K::Identifier, "v")]);
        assert_eq!(
            tokens("U&\"a\"\"b\" \"c\"", SCS_ON),
            vec![
                (K::QuotedIdentifier { unicode: true }, "U&\"a\"\"b\""),
                (K::QuotedIdentifier { unicode: false }, "\"c\""),
            ]
        );
        assert_eq!(tokens(r"E'\", SCS_ON), vec![(K::StringLiteral(S::Escape), r"E'\")]);
    }

    #[test]
    fn quote_continuation_needs_a_newline() {
        assert_eq!(tokens("'a'\n'b'", SCS_ON), vec![(K::StringLiteral(S::Plain), "'a'\n'b'")]);
        assert_eq!(
            tokens("'a' -- c\n  -- d\r\n 'b' x", SCS_ON),
            vec![(K::StringLiteral(S::Plain), "'a' -- c\n  -- d\r\n 'b'"), (K::Identifier, "x"),]
        );
        assert_eq!(
            tokens("'a' 'b'", SCS_ON),
            vec![(K::StringLiteral(S::Plain), "'a'"), (K::StringLiteral(S::Plain), "'b'")]
        );
        assert_eq!(
            tokens("'a'\n/* */'b'", SCS_ON),
            vec![(K::StringLiteral(S::Plain), "'a'"), (K::BlockComment, "/* */"), (K::StringLiteral(S::Plain), "'b'"),]
        );
        assert_eq!(tokens("'a' --c", SCS_ON), vec![(K::StringLiteral(S::Plain), "'a'"), (K::LineComment, "--c")]);
        // The continued part keeps the first part's rules: still <xe> here, so `\'` is escaped.
        assert_eq!(tokens("E'a'\n'\\'; x'", SCS_ON), vec![(K::StringLiteral(S::Escape), "E'a'\n'\\'; x'")]);
        assert_eq!(
            tokens("'a'\n'\\'; x'", SCS_ON),
            vec![(K::StringLiteral(S::Plain), "'a'\n'\\'"), (K::Semicolon, ";"), (K::StringLiteral(S::Hex), "x'"),]
        );
        assert_eq!(tokens("b'1'\n'0'", SCS_ON), vec![(K::StringLiteral(S::Bit), "b'1'\n'0'")]);
    }

    #[test]
    fn numbers() {
        for n in [
            "42",
            "1.5",
            "1.",
            ".5",
            "1e5",
            "1e-5",
            "1.5E+3",
            ".5e3",
            "0x1F",
            "0o17",
            "0b101",
            "1_000",
            "0x_1f",
            "1_0.2_5e1_0",
        ] {
            assert_eq!(tokens(n, SCS_ON), vec![(K::Number, n)], "{n}");
        }
        // Trailing junk is one (erroneous) token, as in PostgreSQL 15+.
        for n in ["123abc", "0x", "0x1g", "1e", "1e+", "1.5x", "1__0", "1e5$a$"] {
            assert_eq!(tokens(n, SCS_ON), vec![(K::Number, n)], "{n}");
        }
        assert_eq!(tokens("1..10", SCS_ON), vec![(K::Number, "1"), (K::Punctuation, ".."), (K::Number, "10")]);
        assert_eq!(tokens("1$a$;$a$", SCS_ON), vec![(K::Number, "1"), (K::DollarString, "$a$;$a$")]);
        assert_eq!(tokens("1e+5$a$;$a$", SCS_ON), vec![(K::Number, "1e+5"), (K::DollarString, "$a$;$a$")]);
        assert_eq!(tokens("-1", SCS_ON), vec![(K::Operator, "-"), (K::Number, "1")]);
        assert_eq!(tokens("t.c", SCS_ON), vec![(K::Identifier, "t"), (K::Punctuation, "."), (K::Identifier, "c")]);
    }

    #[test]
    fn operators_split_as_the_server_splits_them() {
        assert_eq!(
            tokens("a=-1", SCS_ON),
            vec![(K::Identifier, "a"), (K::Operator, "="), (K::Operator, "-"), (K::Number, "1")]
        );
        assert_eq!(tokens("a@-1", SCS_ON), vec![(K::Identifier, "a"), (K::Operator, "@-"), (K::Number, "1")]);
        assert_eq!(
            tokens("<=+-x", SCS_ON),
            vec![(K::Operator, "<="), (K::Operator, "+"), (K::Operator, "-"), (K::Identifier, "x"),]
        );
        assert_eq!(
            tokens("a::int", SCS_ON),
            vec![(K::Identifier, "a"), (K::Punctuation, "::"), (K::Identifier, "int")]
        );
    }
}
