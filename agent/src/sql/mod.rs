//! Statement text for the audit trail and for policy: splitting simple-query strings into
//! statements, literal normalisation, analysis and sqlcommenter tags. Splitting and normalising
//! read one tokenizer (`lexer`), which follows PostgreSQL's own scanner; analysis (`classify`:
//! classes of effect by the most consequential one, the relations and functions named, with
//! the built-in function lists in `functions`) parses with sqlparser's PostgreSQL dialect, and
//! results are cached by statement text here.

pub mod catalog;
mod class;
mod classify;
mod functions;
mod lexer;
pub mod lineage;
mod mysql_classify;
#[cfg(test)]
mod mysql_corpus_tests;
mod mysql_functions;
pub use class::{Class, ClassSet, ObjectName};
pub use classify::{Analysis, Lookup, Lookups, MAX_ANALYSED, analyse};

pub use lexer::{Dialect, LexOptions, Lexer, StringKind, Token, TokenKind};
pub use mysql_classify::{LOAD_DATA_LOCAL, analyse_mysql, mysql_version_dependent};
pub use mysql_functions::{opaque_function as mysql_opaque_function, system_relation as mysql_system_relation};
use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    sync::{Arc, Mutex},
};

/// Splits a list of identifiers at `separator` as the server reads such a list (a search_path
/// setting, a qualified name): double-quoted parts verbatim (`""` is a quote), unquoted parts
/// folded to ASCII lower case, whitespace outside quotes dropped.
/// Whether `haystack` contains `needle` (ASCII lower case), ignoring ASCII case.
/// Runs for every statement, several times: candidates are found by their first byte (memchr,
/// either case), not by comparing every window.
pub fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = n.split_first() else { return true };
    let Some(last_start) = h.len().checked_sub(n.len()) else { return false };
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), &h[..=last_start])
        .any(|i| h[i + 1..i + n.len()].eq_ignore_ascii_case(rest))
}

/// Whether `name` (unqualified, normalised) is a function PostgreSQL itself defines, as far as
/// the analyser knows.
pub fn is_builtin_function(name: &str) -> bool {
    functions::builtin(name).is_some()
}

/// Whether `name` is a table of PostgreSQL's system catalog.
pub fn is_catalog_relation(name: &str) -> bool {
    functions::is_catalog(name)
}

pub fn split_identifiers(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            c if !quoted && c == separator => parts.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c if c.is_whitespace() => {}
            c => current.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(current);
    parts
}

/// Statement texts longer than this are not kept in the description cache.
const MAX_CACHED: usize = 64 * 1024;

/// A statement text as the audit trail records it: normalised, and analysed.
#[derive(Debug, Clone)]
pub struct Described {
    /// Literals replaced by `?`.
    pub normalised: Arc<str>,
    pub analysis: Arc<Analysis>,
    /// The form analysed (`normalise_for_analysis_with_options`), which masking plans by.
    pub parsable: Arc<str>,
    /// sqlcommenter tags of its trailing comment (computed once per text, like the rest).
    pub tags: Arc<BTreeMap<String, String>>,
}

/// Descriptions by raw statement text (prepared statements repeat their text exactly: no
/// lexing or parsing on the hot path), over analyses by normalised text (simple queries that
/// differ only in literals share one parse).
pub struct DescriptionCache {
    /// By the options the text was lexed with: the same text lexes differently under each
    /// (`standard_conforming_strings`, the dialect and its modes).
    raw: Mutex<HashMap<LexOptions, HashMap<Arc<str>, Described>>>,
    analyses: AnalysisCache,
    capacity: usize,
}

impl DescriptionCache {
    pub fn new(capacity: usize) -> Self {
        Self { raw: Mutex::new(HashMap::new()), analyses: AnalysisCache::new(capacity), capacity }
    }

    /// Whether `text` is described already (describing it again costs one lookup).
    pub fn is_cached(&self, text: &str, options: LexOptions) -> bool {
        self.raw.lock().unwrap_or_else(|p| p.into_inner()).get(&options).is_some_and(|m| m.contains_key(text))
    }

    /// Describes a statement lexed with `standard_conforming_strings` on.
    pub fn describe(&self, text: &str) -> Described {
        self.describe_with(text, LexOptions::default())
    }

    /// Describes a statement lexed under the session's settings.
    pub fn describe_with(&self, text: &str, options: LexOptions) -> Described {
        self.describe_kept(text, options, true)
    }

    /// Describes a statement sent with its values in its text (the simple protocol): kept by
    /// its text only when it holds no literal. One with literals is seldom sent again as it is
    /// (a session that does is given its judgement by text before it is described), and
    /// keeping each would push the texts that prepared statements repeat out of the cache.
    pub fn describe_sent(&self, text: &str, options: LexOptions) -> Described {
        self.describe_kept(text, options, false)
    }

    fn describe_kept(&self, text: &str, options: LexOptions, literals: bool) -> Described {
        if let Some(d) = self.raw.lock().unwrap_or_else(|p| p.into_inner()).get(&options).and_then(|m| m.get(text)) {
            return d.clone();
        }
        // PostgreSQL: normalised text lexes the same under either setting (its strings are
        // `'?'`, or kept ones without a backslash), so analyses are shared. MySQL: analysed
        // under the dialect's modes (ANSI_QUOTES changes what `"x"` is).
        let (normalised, parsable) = normalise_both(text, options);
        let parsable: Arc<str> = Arc::from(parsable);
        let described = Described {
            tags: Arc::new(sqlcommenter_tags(text)),
            normalised: Arc::from(normalised),
            analysis: self.analyses.analyse_with(&parsable, options.dialect),
            parsable,
        };
        if text.len() <= MAX_CACHED && (literals || *described.normalised == *text) {
            let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
            let raw = raw.entry(options).or_default();
            if raw.len() >= self.capacity {
                raw.clear();
            }
            raw.insert(Arc::from(text), described.clone());
        }
        described
    }
}

/// Analyses by statement text, of one dialect.
type Analyses = HashMap<Arc<str>, Arc<Analysis>>;

/// A bounded cache of analyses by statement text.
pub struct AnalysisCache {
    /// By dialect: a normalised text means something else to each.
    entries: Mutex<HashMap<Dialect, Analyses>>,
    capacity: usize,
}

impl AnalysisCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The analysis of a PostgreSQL text.
    pub fn analyse(&self, text: &Arc<str>) -> Arc<Analysis> {
        self.analyse_with(text, Dialect::Postgres)
    }

    /// The analysis of a text in `dialect`.
    pub fn analyse_with(&self, text: &Arc<str>, dialect: Dialect) -> Arc<Analysis> {
        if let Some(a) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&dialect).and_then(|m| m.get(text))
        {
            return a.clone();
        }
        let analysis = Arc::new(match dialect {
            Dialect::Postgres => analyse(text),
            Dialect::MySql { .. } => analyse_mysql(text, dialect),
        });
        if text.len() > MAX_CACHED {
            return analysis;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entries = entries.entry(dialect).or_default();
        if entries.len() >= self.capacity {
            // Crude but bounded: start over (statement sets of applications are small).
            entries.clear();
        }
        entries.insert(text.clone(), analysis.clone());
        analysis
    }
}

/// Replaces literals (strings, escape/bit/hex/Unicode strings, dollar-quoted strings, numbers)
/// with `?`, leaving identifiers, keywords, parameters (`$1`) and comments;
/// `standard_conforming_strings` on.
pub fn normalise(text: &str) -> String {
    normalise_forms(text, LexOptions::default(), true, false).0
}

/// [`normalise`] under the session's lexical settings.
pub fn normalise_with_options(text: &str, options: LexOptions) -> String {
    normalise_forms(text, options, true, false).0
}

/// The normalised form that still parses, for analysis and its cache: literals become `'?'`,
/// except those whose value decides a class and is not data (EXPLAIN's options, the setting
/// `set_config` and `UPDATE pg_settings` name) when they read alike under either
/// `standard_conforming_strings`; a final literal never closed stays unclosed.
pub fn normalise_for_analysis(text: &str) -> String {
    normalise_forms(text, LexOptions::default(), false, true).1
}

/// [`normalise_for_analysis`] under the session's lexical settings.
pub fn normalise_for_analysis_with_options(text: &str, options: LexOptions) -> String {
    normalise_forms(text, options, false, true).1
}

/// Splits a simple-query string into its statements at top-level semicolons (not inside
/// quotes, dollar quotes or comments), with `standard_conforming_strings` on.
pub fn split_statements(text: &str) -> Vec<&str> {
    split_statements_with(text, LexOptions::default())
}

/// Splits a simple-query string into its statements as the server will: at semicolon tokens.
///
/// Statements the server does not see are dropped: empty ones and those of comments only (an
/// extra statement here would shift every later one, so the audit would record the text of one
/// statement against the execution of the next). A statement keeps the comments before it
/// (after the previous semicolon), and comments after the last statement belong to it
/// (sqlcommenter appends its comment after the semicolon too). Leading and trailing whitespace
/// is not part of a statement.
pub fn split_statements_with(text: &str, options: LexOptions) -> Vec<&str> {
    // Most texts are one statement: one allocation, no second vector.
    let mut out: Vec<&str> = Vec::with_capacity(1);
    // The current statement: from its first non-whitespace token to its last one so far.
    let mut current: Option<Range<usize>> = None;
    let mut has_code = false;
    let mut tail_end = None;
    // A semicolon inside parentheses does not end a statement (`CREATE RULE ... DO ALSO (a; b)`;
    // anywhere else it is a syntax error, and the server runs nothing of the string).
    let mut depth = 0usize;
    let mut blocks = CompoundBlocks::default();
    let mysql = options.dialect.is_mysql();
    for token in Lexer::new(text, options) {
        if token.kind == TokenKind::Punctuation {
            match &text[token.range()] {
                "(" => depth += 1,
                ")" => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if mysql && !token.kind.is_trivia() {
            blocks.see(token.kind, &text[token.range()]);
        }
        match token.kind {
            TokenKind::Whitespace => {}
            TokenKind::Semicolon if depth == 0 && blocks.depth == 0 => {
                blocks = CompoundBlocks::default();
                if let Some(stmt) = current.take().filter(|_| has_code) {
                    out.push(&text[stmt]);
                }
                has_code = false;
            }
            kind => {
                let stmt = current.get_or_insert(token.start..token.end);
                stmt.end = token.end;
                has_code |= !kind.is_comment();
                tail_end = Some(token.end);
            }
        }
    }
    match current {
        Some(stmt) if has_code => out.push(&text[stmt]),
        // Only comments after the last statement: they are part of it.
        _ => {
            if let (Some(last), Some(end)) = (out.last_mut(), tail_end) {
                let start = last.as_ptr() as usize - text.as_ptr() as usize;
                *last = &text[start..end];
            }
        }
    }
    out
}

/// MySQL: the `BEGIN ... END` blocks of a stored program's definition (`CREATE PROCEDURE p()
/// BEGIN SELECT 1; SELECT 2; END` is one statement to the server, which parses it whole), and
/// MariaDB's `BEGIN NOT ATOMIC ... END`. Semicolons inside them do not end the statement.
/// `CASE ... END` nests too (a CASE expression's END must not close a block); `END IF`, `END
/// LOOP`, `END REPEAT`, `END WHILE` close what was never counted, and `END CASE` a CASE.
#[derive(Default)]
struct CompoundBlocks {
    /// Significant tokens of the statement so far (counted to 3).
    seen: u8,
    /// The statement defines a stored program (or is `BEGIN NOT ATOMIC`): blocks are counted.
    program: bool,
    /// The statement starts with CREATE: a program word makes it one.
    create: bool,
    /// The previous token was an END that closed nothing yet.
    after_end: bool,
    depth: usize,
}

impl CompoundBlocks {
    fn see(&mut self, kind: TokenKind, word: &str) {
        let is = |w: &str| kind == TokenKind::Identifier && word.eq_ignore_ascii_case(w);
        let first = self.seen == 0;
        self.seen = self.seen.saturating_add(1).min(3);
        if first {
            self.create = is("create");
            self.program = is("begin");
            return;
        }
        if self.seen == 2 && self.program {
            // `BEGIN NOT ATOMIC` opens a block; `BEGIN` then anything else is a transaction.
            self.program = is("not");
            self.depth = usize::from(self.program);
            return;
        }
        if self.create && (is("procedure") || is("function") || is("trigger") || is("event")) {
            self.program = true;
        }
        if !self.program {
            return;
        }
        if std::mem::take(&mut self.after_end) {
            if is("if") || is("loop") || is("repeat") || is("while") {
                // `END IF`: the END closed a construct not counted; undo its close.
                self.depth += 1;
                return;
            }
            if is("case") {
                return;
            }
        }
        if is("begin") || is("case") {
            self.depth += 1;
        } else if is("end") {
            self.depth = self.depth.saturating_sub(1);
            self.after_end = true;
        }
    }
}

/// Both normalised forms from one pass of the lexer: `(normalise_with_options,
/// normalise_for_analysis_with_options)` (every statement of the simple protocol with a new
/// literal needs both).
pub fn normalise_both(text: &str, options: LexOptions) -> (String, String) {
    normalise_forms(text, options, true, true)
}

/// The normalised forms asked for (an empty string for the other): `shown` replaces every
/// literal with `?`; `parsable`, the form that still parses, replaces literals with `'?'` except
/// those `Meaningful` keeps, and a final literal never closed with `'`.
fn normalise_forms(text: &str, options: LexOptions, shown: bool, parsable: bool) -> (String, String) {
    let mut meaningful = Meaningful::new();
    meaningful.mysql = options.dialect.is_mysql();
    let (mut shown, mut parsable) = (Normalised::new(text, shown), Normalised::new(text, parsable));
    let mut lexer = Lexer::new(text, options);
    while let Some(token) = lexer.next() {
        let mut end = token.end;
        if token.kind.is_trivia() {
            continue;
        }
        let keep = meaningful.keeps(text, &token);
        meaningful.see(text, &token);
        match token.kind {
            TokenKind::StringLiteral(StringKind::Unicode) => {
                // `U&'...' UESCAPE '!'` is one constant to the parser: one placeholder.
                if let Some((after, clause_end)) = uescape_clause(text, &lexer) {
                    lexer = after;
                    end = clause_end;
                }
                shown.replace(text, token.start, end, "?");
                parsable.replace_parsable(text, token.start, end, options, true);
            }
            TokenKind::QuotedIdentifier { unicode: true } => {
                // The escape character of an identifier is not data: keep the clause as it is.
                if let Some((after, _)) = uescape_clause(text, &lexer) {
                    lexer = after;
                }
            }
            kind if kind.is_literal() => {
                shown.replace(text, token.start, end, "?");
                if !keep {
                    // A number is never left open (only quotes are): not probed.
                    parsable.replace_parsable(text, token.start, end, options, token.kind != TokenKind::Number);
                }
            }
            _ => {}
        }
    }
    (shown.finish(text), parsable.finish(text))
}

/// A normalised text being written: what was copied of the original, and up to where.
struct Normalised {
    out: String,
    copied: usize,
    /// Asked for: otherwise nothing is written.
    wanted: bool,
}

impl Normalised {
    fn new(text: &str, wanted: bool) -> Self {
        Normalised { out: String::with_capacity(if wanted { text.len() } else { 0 }), copied: 0, wanted }
    }

    /// Replaces `text[start..end]` with `placeholder`.
    fn replace(&mut self, text: &str, start: usize, end: usize, placeholder: &str) {
        if !self.wanted {
            return;
        }
        self.out.push_str(&text[self.copied..start]);
        // Keep the placeholder a token of its own: `b'1''x'` must not become `'?''?'` (one
        // string) nor `x.5` become `x'?'` (a hex string) to the parser that reads the result.
        if self
            .out
            .bytes()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'\'' | b'&' | b'?') || c >= 0x80)
        {
            self.out.push(' ');
        }
        self.out.push_str(placeholder);
        self.copied = end;
    }

    /// Replaces a literal with `'?'`; one that is `quoted`, the last token and never closed,
    /// with `'`.
    fn replace_parsable(&mut self, text: &str, start: usize, end: usize, options: LexOptions, quoted: bool) {
        if !self.wanted {
            return;
        }
        // The server rejects the whole text: the analysis form must not read as complete.
        let unterminated = quoted && end == text.len() && unterminated_at(text, start, options);
        self.replace(text, start, end, if unterminated { "'" } else { "'?'" });
    }

    fn finish(mut self, text: &str) -> String {
        if self.wanted {
            self.out.push_str(&text[self.copied..]);
        }
        self.out
    }
}

/// Where literal values decide a class, and so are kept in the analysis form: the options of
/// EXPLAIN (`ANALYZE 0` does not run the statement, `ANALYZE 1` does), the setting that
/// `set_config` names (`role` or `work_mem`), and those of an `UPDATE pg_settings` (whose rules
/// call set_config). None of them is data.
struct Meaningful {
    /// The next significant token starts a statement.
    started: bool,
    /// The statement is an UPDATE, and the tokens after it so far: `pg_catalog`, `.`.
    update: Option<usize>,
    /// The statement is an UPDATE of pg_settings: every literal is kept.
    settings: bool,
    /// The statement is an EXPLAIN, and its option list may follow or is open.
    explain: bool,
    /// Parentheses open in EXPLAIN's option list (0: not in it).
    options: usize,
    last: Last,
    /// MySQL: the statement text of `PREPARE name FROM '...'` and `EXECUTE IMMEDIATE '...'` is
    /// kept (it is what runs), and
    /// nothing of PostgreSQL's.
    mysql: bool,
    /// MySQL: the tokens of `PREPARE name FROM` (1 to 3) or `EXECUTE IMMEDIATE` (4, then 3)
    /// seen so far at the start of a statement.
    prepare: u8,
}

/// The significant tokens just before: `set_config`, then `(`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Other,
    SetConfig,
    SetConfigParen,
}

impl Meaningful {
    fn new() -> Self {
        Meaningful {
            started: true,
            update: None,
            settings: false,
            explain: false,
            options: 0,
            last: Last::Other,
            mysql: false,
            prepare: 0,
        }
    }

    /// Only literals that lex alike whatever `standard_conforming_strings` is (no backslash):
    /// the analysis form is lexed with it on, and a kept `'a\' /* '` read that way would open
    /// a comment that hides the rest of the statement.
    fn keeps(&self, text: &str, token: &Token) -> bool {
        if self.mysql {
            // Analysed under the same modes as the original: no need for it to lex alike.
            return self.prepare == 3 && matches!(token.kind, TokenKind::StringLiteral(StringKind::Plain));
        }
        let alike = match token.kind {
            TokenKind::Number => true,
            TokenKind::StringLiteral(StringKind::Plain) => !text[token.range()].contains('\\'),
            _ => false,
        };
        alike && (self.settings || self.options > 0 || self.last == Last::SetConfigParen)
    }

    fn see(&mut self, text: &str, token: &Token) {
        if token.kind == TokenKind::Semicolon {
            *self = Meaningful { mysql: self.mysql, ..Meaningful::new() };
            return;
        }
        let word = &text[token.range()];
        if self.mysql {
            let identifier = |w: &str| token.kind == TokenKind::Identifier && word.eq_ignore_ascii_case(w);
            self.prepare = match self.prepare {
                0 if self.started && identifier("prepare") => 1,
                1 if matches!(token.kind, TokenKind::Identifier | TokenKind::QuotedIdentifier { .. }) => 2,
                2 if identifier("from") => 3,
                // MariaDB's EXECUTE IMMEDIATE 'text' runs the text as PREPARE's would be.
                0 if self.started && identifier("execute") => 4,
                4 if identifier("immediate") => 3,
                _ => 0,
            };
            self.started = false;
            return;
        }
        let paren = |p: &str| token.kind == TokenKind::Punctuation && word == p;
        let set_config = token.kind == TokenKind::Identifier && word.eq_ignore_ascii_case("set_config");
        let identifier = |w: &str| token.kind == TokenKind::Identifier && word.eq_ignore_ascii_case(w);
        self.update = match self.update {
            // UPDATE [ONLY] [pg_catalog .] pg_settings
            Some(_) if identifier("pg_settings") => {
                self.settings = true;
                None
            }
            Some(n) if n < 3 && (identifier("only") || identifier("pg_catalog") || paren(".")) => Some(n + 1),
            _ => None,
        };
        if std::mem::replace(&mut self.started, false) {
            self.explain = identifier("explain");
            self.update = identifier("update").then_some(0);
        } else if self.options > 0 {
            if paren("(") {
                self.options += 1;
            } else if paren(")") {
                self.options -= 1;
                self.explain = self.options > 0;
            }
        } else if self.explain && paren("(") {
            // Only right after the keyword: `EXPLAIN (options) statement`.
            self.options = 1;
        } else {
            self.explain = false;
        }
        self.last = match self.last {
            _ if set_config => Last::SetConfig,
            Last::SetConfig if paren("(") => Last::SetConfigParen,
            _ => Last::Other,
        };
    }
}

/// Whether the token starting at `start` (the last of `text`) is never closed: a string,
/// quoted identifier, dollar quote or comment running to the end, which the server rejects
/// with the whole text. Lexed again with a newline and `;` after it: a closed token does not
/// take them in.
fn unterminated_at(text: &str, start: usize, options: LexOptions) -> bool {
    let tail = &text[start..];
    let probe = format!("{tail}\n;");
    Lexer::new(&probe, options).next().is_some_and(|t| {
        let closable = matches!(
            t.kind,
            TokenKind::StringLiteral(_)
                | TokenKind::DollarString
                | TokenKind::QuotedIdentifier { .. }
                | TokenKind::BlockComment
        );
        closable && t.end > tail.len()
    })
}

/// Why the server rejects `text` whole, if its last token is never closed.
pub(crate) fn unterminated(text: &str) -> Option<&'static str> {
    let last = Lexer::new(text, LexOptions::default()).last()?;
    if last.end != text.len() || !unterminated_at(text, last.start, LexOptions::default()) {
        return None;
    }
    Some(match last.kind {
        TokenKind::BlockComment => "comment",
        TokenKind::QuotedIdentifier { .. } => "quoted identifier",
        TokenKind::DollarString => "dollar-quoted string",
        _ => "string",
    })
}

/// A `UESCAPE '<char>'` clause right after a `U&` string or identifier (the parser joins the
/// three tokens; `parser.c` looks ahead for it): the lexer past it, and where it ends. Each
/// byte looked at here is lexed at most once more when there is no such clause.
fn uescape_clause<'a>(text: &str, lexer: &Lexer<'a>) -> Option<(Lexer<'a>, usize)> {
    let mut ahead = lexer.clone();
    let word = ahead.next_significant()?;
    if word.kind != TokenKind::Identifier || !text[word.range()].eq_ignore_ascii_case("uescape") {
        return None;
    }
    let escape = ahead.next_significant()?;
    matches!(escape.kind, TokenKind::StringLiteral(StringKind::Plain | StringKind::Escape))
        .then_some((ahead, escape.end))
}

/// How far from the end of a statement text a sqlcommenter comment is looked for.
const MAX_TAGS_TAIL: usize = 8 * 1024;

/// A statement that creates or drops a prepared statement by SQL: the same objects the
/// extended protocol's Bind names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedCommand {
    /// `PREPARE name [(types)] AS body`
    Prepare { name: String, body: String },
    /// `DEALLOCATE [PREPARE] name`
    Deallocate { name: String },
}

/// Reads `PREPARE` / `DEALLOCATE` (one statement's text) as the server names the statement:
/// unquoted names folded to lower case, quoted ones as written, both cut to 63 bytes.
pub fn prepared_statement_command(text: &str, options: LexOptions) -> Option<PreparedCommand> {
    if options.dialect.is_mysql() {
        return mysql_prepared_statement_command(text, options);
    }
    let mut tokens = Lexer::new(text, options)
        .filter(|t| !matches!(t.kind, TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment));
    let word = |t: &Token| text[t.range()].to_ascii_lowercase();
    let name = |t: &Token| -> Option<String> {
        let raw = &text[t.range()];
        let mut name = match t.kind {
            // The server folds only ASCII letters of an unquoted identifier.
            TokenKind::Identifier => raw.to_ascii_lowercase(),
            TokenKind::QuotedIdentifier { unicode: false } => quoted_identifier(raw)?,
            _ => return None,
        };
        // NAMEDATALEN - 1, at a character boundary, as the server truncates identifiers.
        let mut cut = name.len().min(63);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        Some(name)
    };
    let first = tokens.next()?;
    match word(&first).as_str() {
        "prepare" => {
            let name = name(&tokens.next()?)?;
            // Skip an optional parenthesised type list, then AS.
            let mut depth = 0usize;
            for t in tokens.by_ref() {
                let w = &text[t.range()];
                match w {
                    "(" => depth += 1,
                    ")" => depth = depth.saturating_sub(1),
                    _ if depth == 0 && t.kind == TokenKind::Identifier && w.eq_ignore_ascii_case("as") => {
                        return Some(PreparedCommand::Prepare { name, body: text[t.end..].trim().to_string() });
                    }
                    _ => {}
                }
            }
            None
        }
        "deallocate" => {
            let mut next = tokens.next()?;
            if next.kind == TokenKind::Identifier && word(&next) == "prepare" {
                next = tokens.next()?;
            }
            Some(PreparedCommand::Deallocate { name: name(&next)? })
        }
        _ => None,
    }
}

/// MySQL's `PREPARE name FROM 'text'` and `{DEALLOCATE | DROP} PREPARE name`: names are
/// case-insensitive (lower-cased here); the body is the string's value. `PREPARE name FROM
/// @var` names no body: None (its analysis is unknown).
fn mysql_prepared_statement_command(text: &str, options: LexOptions) -> Option<PreparedCommand> {
    let tokens: Vec<Token> = Lexer::new(text, options).filter(|t| !t.kind.is_trivia()).take(5).collect();
    let word = |i: usize| tokens.get(i).map(|t| &text[t.range()]);
    let is = |i: usize, w: &str| {
        tokens.get(i).is_some_and(|t| t.kind == TokenKind::Identifier)
            && word(i).is_some_and(|x| x.eq_ignore_ascii_case(w))
    };
    let name = |i: usize| -> Option<String> {
        let t = tokens.get(i)?;
        let raw = &text[t.range()];
        match t.kind {
            TokenKind::Identifier => Some(raw.to_lowercase()),
            TokenKind::QuotedIdentifier { .. } => {
                let q = raw.chars().next()?;
                let inner = raw.strip_prefix(q)?.strip_suffix(q)?;
                Some(inner.replace(&format!("{q}{q}"), &q.to_string()).to_lowercase())
            }
            _ => None,
        }
    };
    if is(0, "prepare") && is(2, "from") && tokens.len() == 4 {
        let body = tokens.get(3).filter(|t| matches!(t.kind, TokenKind::StringLiteral(StringKind::Plain)))?;
        let body = mysql_classify::string_value(&text[body.range()], options.dialect)?;
        return Some(PreparedCommand::Prepare { name: name(1)?, body });
    }
    if (is(0, "deallocate") || is(0, "drop")) && is(1, "prepare") && tokens.len() == 3 {
        return Some(PreparedCommand::Deallocate { name: name(2)? });
    }
    None
}

/// The name inside a terminated `"..."` token (`""` is one quote); None if it is unterminated.
fn quoted_identifier(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?;
    let mut name = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => name.push('"'),
            // The closing quote must end the token.
            None => return Some(name),
            Some(_) => return None,
        }
    }
    None
}

/// Tags of a trailing sqlcommenter comment: `... /*key='value',traceparent='00-..'*/`, keys and
/// values URL-encoded. Only the last `MAX_TAGS_TAIL` bytes are read: the audit asks for the tags
/// of a simple-query string once per statement in it, so reading the whole text each time would
/// make a string of many statements quadratic. (The comment is the client's own claim, so there
/// is nothing to gain from lexing the whole text to confirm it is one.)
pub fn sqlcommenter_tags(text: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    let mut from = text.len().saturating_sub(MAX_TAGS_TAIL);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let trimmed = text[from..].trim_end().trim_end_matches(';').trim_end();
    let Some(body) = trimmed.strip_suffix("*/") else { return tags };
    let Some(start) = body.rfind("/*") else { return tags };
    for pair in body[start + 2..].split(',') {
        let Some((k, v)) = pair.split_once('=') else { continue };
        let v = v.trim();
        let Some(v) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else { continue };
        let key = url_decode(k.trim());
        if !key.is_empty() {
            tags.insert(key, url_decode(&v.replace("\\'", "'")));
        }
    }
    tags
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not `&s[..]`: a '%' followed by a multi-byte character must not split it.
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_sent_with_its_values_is_described_but_kept_only_without_literals() {
        let cache = DescriptionCache::new(16);
        let options = LexOptions::default();
        let sent = cache.describe_sent("select abalance from accounts where aid = 5", options);
        assert_eq!(&*sent.normalised, "select abalance from accounts where aid = ?");
        assert!(!cache.is_cached("select abalance from accounts where aid = 5", options), "its values change");
        cache.describe_sent("commit", options);
        assert!(cache.is_cached("commit", options), "sent again as it is");
        cache.describe_with("select abalance from accounts where aid = 5", options);
        assert!(cache.is_cached("select abalance from accounts where aid = 5", options), "a prepared text repeats");
    }

    #[test]
    fn the_two_normalised_forms_differ_where_they_should() {
        let on = LexOptions::default();
        for (text, shown, parsable) in [
            ("select 1, 'a' from t", "select ?, ? from t", "select '?', '?' from t"),
            // The setting set_config names decides the class: kept in the analysed form only.
            (
                "select set_config('role', 'x', false)",
                "select set_config(?, ?, false)",
                "select set_config('role', '?', false)",
            ),
            ("explain (analyze 1) select 2", "explain (analyze ?) select ?", "explain (analyze 1) select '?'"),
            // A last literal never closed stays open in the analysed form: it cannot read as
            // complete.
            ("select 'open", "select ?", "select '"),
            ("select $$open", "select ?", "select '"),
            ("select x.5", "select x ?", "select x '?'"),
            // A number last is closed whatever follows.
            ("select 1 where aid = 12345", "select ? where aid = ?", "select '?' where aid = '?'"),
            ("select 1e", "select ?", "select '?'"),
        ] {
            assert_eq!(normalise_both(text, on), (shown.to_string(), parsable.to_string()), "{text:?}");
        }
    }

    #[test]
    fn both_normalised_forms_in_one_pass_equal_each_made_alone() {
        let texts = [
            "select abalance from pgbench_accounts where aid = 123",
            "select 'a', e'b\\'', b'101', x'ff', 1.5e3, $1, $$dollar$$ from t",
            "select U&'d\\0061t' UESCAPE '!', U&\"x\" UESCAPE '#' from t",
            "select set_config('search_path', 'evil', false)",
            "explain (analyze 0, format 'json') select 1",
            "update pg_catalog.pg_settings set setting = '1' where name = 'work_mem'",
            "select x.5, 'a''b', 'unterminated",
            "select 1; select 'x' /* c */ ; select $t$ open",
            "insert into t values ('é', 'ü''x')",
            "select 'a\\' -- ' , 'secret'",
            "",
            "'",
            "select U&'x' UESCAPE '!",
            "select U&'x' uescape ' ; drop table t",
            "select U&\"x\" UESCAPE '",
            "explain (format'json'1) select 1",
            "select set_config('a'1, 'b'",
            "update only pg_catalog . pg_settings set setting = 1'2'",
            "select é'x', b'1''x', 1e, x.5",
            "select 'a' -- c\n 'b'",
            "select $a$ x",
        ];
        for text in texts {
            for scs in [true, false] {
                let options = LexOptions::postgres(scs);
                assert_eq!(
                    normalise_both(text, options),
                    (normalise_with_options(text, options), normalise_for_analysis_with_options(text, options)),
                    "{text:?} (standard_conforming_strings {scs})"
                );
            }
        }
    }

    #[test]
    fn classes_by_most_consequential_effect() {
        assert_eq!(analyse("select * from orders where id = 1").class, Class::Read);
        assert_eq!(analyse("insert into t values (1)").class, Class::Write);
        let cte = analyse("with d as (delete from orders returning *) select count(*) from d");
        assert_eq!(cte.class, Class::Write, "{cte:?}");
        assert_eq!(analyse("copy orders to stdout").class, Class::Read);
        assert_eq!(analyse("copy orders from stdin").class, Class::Write);
        assert_eq!(analyse("select 1; drop table orders").class, Class::Ddl);
        assert_eq!(analyse("grant select on t to bob").class, Class::Dcl);
        assert_eq!(analyse("begin").class, Class::Transaction);
        assert_eq!(analyse("set search_path = x").class, Class::Session);
        let f = analyse("select pg_terminate_backend(42)");
        assert_eq!((f.class, f.class_reason.is_some()), (Class::Admin, true));
        assert_eq!(analyse("do $$ begin perform 1; end $$").class, Class::Unknown);
        assert_eq!(analyse("select from where").class, Class::Unknown);
        assert_eq!(analyse("éé").class, Class::Unknown, "non-ASCII start is not a panic");
        assert_eq!(analyse(&"select 1,".repeat(MAX_ANALYSED / 8)).class, Class::Unknown);
        assert_eq!(analyse("explain analyze delete from t").class, Class::Write);
        assert_eq!(analyse("explain delete from t").class, Class::Read);
    }

    #[test]
    fn prepared_statements_named_as_the_server_names_them() {
        let o = LexOptions::default();
        assert_eq!(
            prepared_statement_command("PREPARE Del (int) AS delete from t where id = $1", o),
            Some(PreparedCommand::Prepare { name: "del".into(), body: "delete from t where id = $1".into() })
        );
        assert_eq!(
            prepared_statement_command("prepare \"Mixed\"\"Q\" as select 1", o),
            Some(PreparedCommand::Prepare { name: "Mixed\"Q".into(), body: "select 1".into() })
        );
        assert_eq!(
            prepared_statement_command("/* c */ DEALLOCATE PREPARE s1", o),
            Some(PreparedCommand::Deallocate { name: "s1".into() })
        );
        assert_eq!(
            prepared_statement_command("deallocate \"S1\"", o),
            Some(PreparedCommand::Deallocate { name: "S1".into() })
        );
        assert_eq!(prepared_statement_command("select 1", o), None);
        // Unterminated quoted names (which the server rejects) are not read, and never panic.
        for text in ["deallocate \"", "deallocate \"a\"\"", "prepare \" as select 1", "prepare \"\u{e9}"] {
            assert_eq!(prepared_statement_command(text, o), None, "{text}");
        }
        // Only ASCII letters fold.
        assert_eq!(
            prepared_statement_command("DEALLOCATE \u{c9}A", o),
            Some(PreparedCommand::Deallocate { name: "\u{c9}a".into() })
        );
    }

    #[test]
    fn a_statement_too_deep_to_parse_safely_is_unknown_not_a_crash() {
        let sum = format!("select {}", vec!["1"; 50_000].join("+"));
        let a = analyse(&sum);
        assert_eq!(a.class, Class::Unknown);
        assert!(a.class_reason.as_deref().is_some_and(|r| r.contains("too complex")), "{a:?}");
        let casts = format!("select 1{}", "::int".repeat(5_000));
        assert_eq!(analyse(&casts).class, Class::Unknown);
        assert_eq!(analyse("select a + b * c from t where x and y or not z").class, Class::Read);
    }

    #[test]
    fn semicolons_inside_parentheses_do_not_end_a_statement() {
        assert_eq!(
            split_statements("create rule r as on insert to t do also (select 1; select 2); drop table v"),
            vec!["create rule r as on insert to t do also (select 1; select 2)", "drop table v"]
        );
        assert_eq!(split_statements("select 1); drop table t").len(), 2, "an unbalanced ) changes nothing");
    }

    #[test]
    fn relations_named() {
        let a = analyse("select o.id from public.orders o join customers c on c.id = o.customer_id");
        assert_eq!(&*a.relations, &[ObjectName::new(Some("public"), "orders"), ObjectName::new(None, "customers")]);
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            normalise("select * from t where a = 'x''y' and b = 42 and c = $1"),
            "select * from t where a = ? and b = ? and c = $1"
        );
        assert_eq!(normalise("select E'a\\'b', X'ff', 1.5e3, t1.c2 from t1"), "select ?, ?, ?, t1.c2 from t1");
        assert_eq!(normalise("select $tag$ secret ' $tag$, $$x$$"), "select ?, ?");
        assert_eq!(
            normalise("select \"col 1\" /* keep 'me' */ -- and 'me'\n, 7"),
            "select \"col 1\" /* keep 'me' */ -- and 'me'\n, ?"
        );
        assert_eq!(normalise("select U&'d\\0061t'"), "select ?");
    }

    #[test]
    fn normalised_for_analysis_still_parses() {
        let n = normalise_for_analysis("insert into t values (1, 'x', E'y') returning id");
        assert_eq!(n, "insert into t values ('?', '?', '?') returning id");
        assert_eq!(analyse(&n).class, Class::Write);
    }

    #[test]
    fn simple_query_strings_split_into_statements() {
        assert_eq!(
            split_statements("select 1; select ';' ; ;select $$a;b$$ /* ; */"),
            vec!["select 1", "select ';'", "select $$a;b$$ /* ; */"]
        );
        assert_eq!(
            split_statements("insert into t values (1); select 2; /*app='x'*/"),
            vec!["insert into t values (1)", "select 2; /*app='x'*/"]
        );
        assert_eq!(
            split_statements("select 'it''s'; -- c;\nselect \"a;b\""),
            vec!["select 'it''s'", "-- c;\nselect \"a;b\""]
        );
        assert!(split_statements(" ; ").is_empty());
    }

    #[test]
    fn statements_hide_nowhere_postgresql_does_not_hide_them() {
        const ON: LexOptions = LexOptions::postgres(true);
        const OFF: LexOptions = LexOptions::postgres(false);
        // (text, standard_conforming_strings, the statements PostgreSQL runs)
        let cases: &[(&str, LexOptions, &[&str])] = &[
            // {ident_cont} includes `$`: `x$a$` is an identifier, not the start of a dollar quote.
            ("select 1 as x$a$; drop table t; --$a$", ON, &["select 1 as x$a$", "drop table t; --$a$"]),
            ("select é$a$; drop table t", ON, &["select é$a$", "drop table t"]),
            ("select $a$;$a$; select 2", ON, &["select $a$;$a$", "select 2"]),
            // A number cannot continue into `$`: here the dollar quote is real.
            ("select 1$a$; drop table t; --$a$", ON, &["select 1$a$; drop table t; --$a$"]),
            // Tags are case-sensitive; a failed candidate gives back its final `$`.
            ("select $A$;$a$; drop table t; --$A$", ON, &["select $A$;$a$; drop table t; --$A$"]),
            ("select $a$$b$a$; drop table t", ON, &["select $a$$b$a$", "drop table t"]),
            // Block comments nest.
            ("/* /* */ ; */ select 1", ON, &["/* /* */ ; */ select 1"]),
            ("select /*/ ; drop table t */ 1", ON, &["select /*/ ; drop table t */ 1"]),
            // A line comment ends at \r as well as \n; a comment start ends an operator.
            ("select 1; --x\rdrop table t", ON, &["select 1", "--x\rdrop table t"]),
            ("select 1 @--x\n; drop table t", ON, &["select 1 @--x", "drop table t"]),
            // standard_conforming_strings decides whether `\'` ends a plain string.
            ("select 'a\\'; drop table t; --'", ON, &["select 'a\\'", "drop table t; --'"]),
            ("select 'a\\'; drop table t; --'", OFF, &["select 'a\\'; drop table t; --'"]),
            ("select 'a\\''; drop table t; --'", ON, &["select 'a\\''; drop table t; --'"]),
            ("select 'a\\''; drop table t; --'", OFF, &["select 'a\\''", "drop table t; --'"]),
            ("select n'a\\'; drop table t; --'", OFF, &["select n'a\\'; drop table t; --'"]),
            // E'' always takes escapes; U&'' never does.
            ("select e'\\\\'; drop table t", ON, &["select e'\\\\'", "drop table t"]),
            ("select E'a\\'; drop table t; --'", ON, &["select E'a\\'; drop table t; --'"]),
            ("select U&'a\\'; drop table t; --'", ON, &["select U&'a\\'", "drop table t; --'"]),
            ("select U&\"a;b\"", ON, &["select U&\"a;b\""]),
            ("select \"a\"\"; drop table t; --\"", ON, &["select \"a\"\"; drop table t; --\""]),
            // A continued literal keeps its escape rules: the second part is still E''.
            ("select E'a'\n'b\\'; drop table t; --'", ON, &["select E'a'\n'b\\'; drop table t; --'"]),
            ("select 'a'\n'b\\'; drop table t; --'", ON, &["select 'a'\n'b\\'", "drop table t; --'"]),
            // Bit strings have no '' doubling: the second quote opens a plain string, which
            // takes escapes when standard_conforming_strings is off.
            ("select b'1''\\'; drop table t; --'", OFF, &["select b'1''\\'; drop table t; --'"]),
            ("select b'1''\\'; drop table t; --'", ON, &["select b'1''\\'", "drop table t; --'"]),
            // Empty and comment-only statements are not statements.
            ("select 1; /* c */; select 2", ON, &["select 1", "select 2"]),
            ("; ;select 1;;", ON, &["select 1"]),
            ("/* only a comment */", ON, &[]),
            // Unterminated constructs run to the end, where the server fails the whole string.
            ("select 1; select 'x; drop table t", ON, &["select 1", "select 'x; drop table t"]),
            ("select 1; select $q$; drop table t", ON, &["select 1", "select $q$; drop table t"]),
        ];
        for (text, options, expected) in cases {
            assert_eq!(&split_statements_with(text, *options), expected, "{text:?} with {options:?}");
        }
    }

    #[test]
    fn comments_after_the_last_statement_belong_to_it() {
        assert_eq!(split_statements("select 1; -- trailing"), vec!["select 1; -- trailing"]);
        assert_eq!(split_statements("select 1; /*a='b'*/;\n"), vec!["select 1; /*a='b'*/"]);
        assert_eq!(split_statements("select 1; /* a */; /* b */ "), vec!["select 1; /* a */; /* b */"]);
        assert_eq!(split_statements("select 1 /* a */;"), vec!["select 1 /* a */"]);
    }

    #[test]
    fn every_literal_kind_is_normalised() {
        for (text, normalised) in [
            ("select 'a'\n'b'", "select ?"),
            ("select 'a' -- c\n 'b', 'c'", "select ?, ?"),
            ("select 0x1F, 0o17, 0b101, 1_000, 1e-5, .5, 1.5E+3, 1.", "select ?, ?, ?, ?, ?, ?, ?, ?"),
            ("select t1, x$1, t1.c2, $1, -1, a-1", "select t1, x$1, t1.c2, $1, -?, a-?"),
            ("select N'x', B'01', X'ff', E'\\'', U&'x', $$y$$", "select ?, ?, ?, ?, ?, ?"),
            ("select U&'d!0061t' UESCAPE '!', U&\"d!0061t\" uescape '!'", "select ?, U&\"d!0061t\" uescape '!'"),
            ("select U&'a' uescape", "select ? uescape"),
            ("select \"it's\" from x$a$", "select \"it's\" from x$a$"),
            // Adjacent literals stay two tokens.
            ("select b'1''x', x.5", "select ? ?, x ?"),
        ] {
            assert_eq!(normalise(text), normalised, "{text:?}");
        }
        let off = LexOptions::postgres(false);
        assert_eq!(normalise_with_options("select 'a\\'b', 2", off), "select ?, ?");
        // With it on, `\'` ends the string and `b'` opens a bit string, to the end.
        assert_eq!(normalise_with_options("select 'a\\'b', 2", LexOptions::default()), "select ? ?");
        assert_eq!(normalise_for_analysis("select b'1''x'"), "select '?' '?'");
    }

    #[test]
    fn analysis_refuses_when_the_parser_sees_other_statements() {
        // sqlparser understands BEGIN ATOMIC bodies, which contain semicolons; the splitter follows
        // only PostgreSQL's lexical rules, so the two disagree and the parse is not trusted.
        // Each part is parsed alone: the BEGIN ATOMIC head does not parse, and is unknown.
        let a =
            analyse("create function f() returns int language sql begin atomic select 1; select 2; end; drop table t");
        assert_eq!(a.class, Class::Ddl, "{a:?}");
        assert!(a.effects.contains(Class::Unknown), "{a:?}");
    }

    /// Inputs built to make a naive lexer rescan: unique unterminated dollar tags, nesting
    /// openers, unterminated quotes, escapes, failed quote continuations, operator runs.
    fn adversarial_inputs() -> Vec<(&'static str, String)> {
        const MB: usize = 1024 * 1024;
        fn repeat_to(unit: &str, len: usize) -> String {
            unit.repeat(len / unit.len())
        }
        let mut tags = String::new();
        for i in 0.. {
            if tags.len() >= 3 * MB / 2 {
                break;
            }
            tags.push_str(&format!("$t{i}$ "));
        }
        vec![
            ("unique unterminated dollar tags", tags),
            ("comment nesting openers", repeat_to("/*", MB)),
            ("quotes, odd count", "'".repeat(MB + 1)),
            ("one unterminated quote", format!("'{}", "x".repeat(MB))),
            ("escape string openers", repeat_to("E'\\", MB)),
            ("line comment openers", repeat_to("--", MB)),
            ("empty dollar quotes", repeat_to("$$", MB)),
            ("one dollar quote, many near-miss delimiters", format!("$abc${}", repeat_to("$abd$", MB))),
            ("lone dollar tags", repeat_to("$a ", MB)),
            ("failed continuation", format!("'a'{}x", " ".repeat(MB))),
            ("continued strings", repeat_to("'a'\n", MB)),
            ("strings then comments", repeat_to("'a' --x\n", MB)),
            ("sign runs", repeat_to("+-", MB)),
            ("unicode strings and uescape", repeat_to("U&'' uescape ", MB)),
            ("unicode identifiers and uescape", repeat_to("U&\"x\" uescape ", MB)),
            ("radix openers", repeat_to("0x", MB)),
            ("exponent openers", repeat_to("1e+", MB)),
            ("quoted identifiers, odd count", "\"".repeat(MB + 1)),
            ("semicolons", repeat_to(";", MB)),
        ]
    }

    /// Bytes read per byte of input, at most. Reads are counted, not timed: a byte is read
    /// once when lexed, again when peeked at as the next byte, and once more when a lookahead
    /// (quote continuation, `{dolqfailed}`, a failed dollar delimiter, UESCAPE) gives it back.
    const READS_PER_BYTE: usize = 4;

    fn reads(f: impl FnOnce()) -> usize {
        lexer::VISITS.with(|v| v.set(0));
        f();
        lexer::VISITS.with(|v| v.get())
    }

    #[test]
    fn lexing_is_linear_in_the_input() {
        for (name, text) in adversarial_inputs() {
            let bound = READS_PER_BYTE * text.len() + 16;
            for options in [LexOptions::postgres(false), LexOptions::default()] {
                let n = reads(|| {
                    Lexer::new(&text, options).for_each(drop);
                });
                assert!(n <= bound, "{name} ({options:?}): {n} reads for {} bytes", text.len());
            }
            let n = reads(|| {
                split_statements(&text);
            });
            assert!(n <= bound, "{name}: splitting read {n} bytes for {}", text.len());
            let n = reads(|| {
                normalise(&text);
            });
            assert!(n <= bound, "{name}: normalising read {n} bytes for {}", text.len());
        }
    }

    #[test]
    fn tag_lookup_reads_a_bounded_tail() {
        let many = "select 1;".repeat(100_000);
        assert!(sqlcommenter_tags(&format!("{many}*/")).is_empty());
        assert_eq!(sqlcommenter_tags(&format!("{many} /*app='x'*/"))["app"], "x");
        assert!(sqlcommenter_tags(&format!("/*app='x'*/{}", " ".repeat(MAX_TAGS_TAIL))).is_empty());
    }

    /// A generated text and what PostgreSQL makes of it, known by construction.
    struct Generated {
        text: String,
        /// Byte ranges of everything but whitespace, comments and semicolons, by statement.
        statements: Vec<Vec<Range<usize>>>,
        /// Text that appears only inside string literals.
        secrets: Vec<String>,
        /// Text of identifiers and comments, which normalisation keeps.
        kept: Vec<String>,
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Characters that end or open something somewhere: the hard part of every kind of body.
    const NOISE: &[&str] = &[";", "--", "/*", "*/", "$$", "$a$", "\"", "'", "\\", "x$a$", "E'", " ", "\n"];

    fn generate(rng: &mut Rng, options: LexOptions, fragments: usize) -> Generated {
        let mut g =
            Generated { text: String::new(), statements: vec![Vec::new()], secrets: Vec::new(), kept: Vec::new() };
        let mut after_string = false;
        for n in 0..fragments {
            let secret = format!("SECRET{n}Z");
            let mut noise = || -> String { (0..3).map(|_| rng.pick(NOISE)).collect::<Vec<_>>().join("") + &secret };
            let body = noise();
            let kind = rng.below(14);
            // Whitespace with a newline between two string literals continues the first: keep
            // literals apart (continuation has a fragment of its own).
            if after_string && matches!(kind, 0 | 10) {
                push_code(&mut g, "||");
            }
            let literal = |quote: &str, backslash: &str| body.replace('\\', backslash).replace('\'', quote);
            let scs = options.standard_conforming_strings;
            let (text, is_string) = match kind {
                0 => (format!("'{}'", literal("''", if scs { "\\" } else { "\\\\" })), true),
                1 => (format!("E'{}'", literal("\\'", "\\\\")), true),
                2 => (format!("$q1${body}$q1$"), true),
                3 => (format!("N'{}'", literal("''", if scs { "\\" } else { "\\\\" })), true),
                4 => (format!("B'01{secret}'"), true),
                5 => (format!("X'fF{secret}'"), true),
                6 => (format!("U&'{}'", literal("''", "\\")), true),
                7 => (rng.pick(&["1", "42", "1.5e-3", ".5", "0x1F", "1_000", "1e5"]).to_string(), false),
                8 => {
                    let name =
                        rng.pick(&["select", "t1", "x$a$", "é", "_x$1", "e", "u", "$1", "\"a;b\"", "U&\"q\"\"'\""]);
                    g.kept.push(name.to_string());
                    (name.to_string(), false)
                }
                9 => (rng.pick(&["=", "+", "-", "<>", "@>", "::", ",", "[", "]", "*", "%"]).to_string(), false),
                10 => (format!("'{secret}'\n'{secret}'"), true),
                11 => {
                    g.statements.push(Vec::new());
                    g.text.push_str(";\n");
                    continue;
                }
                12 => {
                    let comment = format!("-- {}{secret}", body.replace('\n', " "));
                    g.kept.push(comment.clone());
                    g.text.push_str(&comment);
                    g.text.push('\n');
                    continue;
                }
                _ => {
                    let inner = body.replace("/*", "/ *").replace("*/", "* /");
                    let comment = format!("/* {inner} /* nested */ {secret}*/");
                    g.kept.push(comment.clone());
                    g.text.push_str(&comment);
                    g.text.push(rng.pick(&[" ", "\n"]).chars().next().unwrap_or(' '));
                    continue;
                }
            };
            if is_string {
                g.secrets.push(secret);
            }
            push_code(&mut g, &text);
            after_string = is_string;
        }
        g.statements.retain(|s| !s.is_empty());
        g
    }

    fn push_code(g: &mut Generated, text: &str) {
        let start = g.text.len();
        g.text.push_str(text);
        g.text.push(' ');
        if let Some(current) = g.statements.last_mut() {
            current.push(start..start + text.len());
        }
    }

    #[test]
    fn generated_mixes_split_and_normalise_as_postgresql_would() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        for round in 0..400 {
            let options = LexOptions::postgres(round % 2 == 0);
            let fragments = 1 + rng.below(40);
            let g = generate(&mut rng, options, fragments);
            let text = g.text.as_str();
            let base = text.as_ptr() as usize;
            let split: Vec<Range<usize>> = split_statements_with(text, options)
                .into_iter()
                .map(|s| {
                    let start = s.as_ptr() as usize - base;
                    start..start + s.len()
                })
                .collect();
            assert_eq!(split.len(), g.statements.len(), "statement count of {text:?} ({options:?}): {split:?}");
            for (statement, fragments) in split.iter().zip(&g.statements) {
                for fragment in fragments {
                    assert!(
                        statement.start <= fragment.start && fragment.end <= statement.end,
                        "{:?} lost from its statement {:?} in {text:?} ({options:?})",
                        &text[fragment.clone()],
                        &text[statement.clone()]
                    );
                }
            }
            for placeholder_form in
                [normalise_with_options(text, options), normalise_for_analysis_with_options(text, options)]
            {
                for secret in &g.secrets {
                    assert!(
                        !placeholder_form.contains(secret.as_str()),
                        "{secret} survives in {placeholder_form:?} of {text:?}"
                    );
                }
                for kept in &g.kept {
                    assert!(
                        placeholder_form.contains(kept.as_str()),
                        "{kept:?} lost from {placeholder_form:?} of {text:?}"
                    );
                }
                // The normalised text has the same statements, whatever the setting.
                assert_eq!(split_statements(&placeholder_form).len(), split.len(), "{placeholder_form:?} of {text:?}");
            }
        }
    }

    #[test]
    fn sqlcommenter_tags_are_read() {
        let t = sqlcommenter_tags(
            "select 1 /*application='recsys',route='%2Fapi%2Fv1',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/;",
        );
        assert_eq!(t["application"], "recsys");
        assert_eq!(t["route"], "/api/v1");
        assert!(t["traceparent"].starts_with("00-5bd6"));
        assert!(sqlcommenter_tags("select 1").is_empty());
        // Malformed escapes are kept as they are, never a panic (a '%' before a 3-byte char).
        assert_eq!(sqlcommenter_tags("select 1 /*a='%€x',b='%zz',c='%'*/")["a"], "%€x");
    }
}
