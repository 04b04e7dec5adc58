//! What a statement does, from its text: classes of effect (by the most consequential one), the
//! relations and functions it names, whether a write is unscoped, and the session objects
//! (prepared statements, cursors) whose own analysis the caller has to supply.
//!
//! Fail closed: only shapes positively known to be reads are `read`, and anything the analyser
//! does not recognise is `unknown` with a reason, never a harmless class by default. Without a
//! catalog, what a name resolves to is not known: see `functions` for what that leaves open.
//!
//! How a text is read, and why:
//! - A text whose last string, quoted identifier or comment never closes is rejected whole by
//!   the server: `unknown`, nothing analysed.
//! - Statements are split by PostgreSQL's lexical rules (`split_statements`), and each is parsed
//!   on its own, so a statement sqlparser cannot parse leaves the others analysed.
//! - What sqlparser parses is a canonical text rebuilt from PostgreSQL's tokens: comments become
//!   spaces and literals other than simple `'...'` become `'?'`, so sqlparser's lexer (which is
//!   not the server's) never decides where a comment or string ends; identifiers containing `$`
//!   are quoted (sqlparser would read a dollar quote in `x$a$`); `U&"..."` identifiers are
//!   decoded; operators that are not built-in are refused from the token stream (sqlparser
//!   splits `!=-` where PostgreSQL reads one user-defined operator). A few PostgreSQL forms
//!   sqlparser lacks are rewritten token by token with the same meaning (`ANALYSE`, `FOR NO KEY
//!   UPDATE`, `FOR KEY SHARE`, `WHERE CURRENT OF c`; on a retry, `ROWS FROM (...)` and numbers
//!   normalised into `'?'`).
//! - A statement sqlparser cannot parse is classed by its leading keywords where PostgreSQL's
//!   grammar for it has no expressions (CHECKPOINT, VACUUM, REINDEX, CLUSTER, FETCH, MOVE, SET,
//!   ...); otherwise it is `unknown` (with the class its keyword implies, such as `ddl` for an
//!   unparsed CREATE, alongside).

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
    sync::Arc,
};

use sqlparser::{
    ast::{
        self, AlterFunctionAction, AlterFunctionOperation, AlterSchemaOperation, AlterTableOperation,
        AlterViewOperation, ArrayElemTypeDef, BinaryOperator, CommentObject, CopySource, CopyTarget, DataType,
        DiscardObject, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, FunctionSecurity, GrantObjects, Ident,
        ObjectType, Query, Reset, SchemaName, Select, SetExpr, Statement, TableFactor, UtilityOption, Value, Visit,
        Visitor,
    },
    dialect::PostgreSqlDialect,
    parser::Parser,
};

use super::{
    LexOptions, Lexer, StringKind, TokenKind,
    class::{Class, ClassSet, ObjectName},
    functions::{self, Builtin},
    quoted_identifier, split_statements, unterminated,
};

/// Statements longer than this are not parsed (class `unknown`, with the reason).
pub const MAX_ANALYSED: usize = 1024 * 1024;

/// Operators, casts and chaining keywords a statement may hold and still be parsed. sqlparser
/// builds `1+1+...+1` as a left-deep tree and drops it recursively: 50,000 terms overflow a
/// thread's stack and abort the agent. Real statements stay far below this.
const MAX_CHAINED: usize = 2_000;

/// NAMEDATALEN - 1: the server cuts identifiers to this many bytes.
const MAX_IDENTIFIER: usize = 63;

/// What a statement (or a string of them: the union) does, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The most consequential effect (`effects.primary()`).
    pub class: Class,
    /// Every class of effect found.
    pub effects: ClassSet,
    /// Why it has its class: always for `unknown`, and for classes not obvious from the first
    /// keyword (`write` of a data-modifying CTE, `ddl` of SELECT INTO, ...).
    pub class_reason: Option<Arc<str>>,
    /// Tables, views, sequences and indexes named anywhere (not CTE names), normalised as the
    /// server reads them, each once, in order of appearance.
    pub relations: Arc<[ObjectName]>,
    /// Functions called anywhere (table functions in FROM too), normalised likewise.
    pub functions: Arc<[ObjectName]>,
    /// An UPDATE or DELETE (or MERGE) whose condition does not narrow it: none, a constant, an
    /// OR with a constant branch, `x = x`, or one that only reads other tables.
    pub unscoped: bool,
    /// `PREPARE name AS body`: the name (the class is the body's).
    pub prepares: Option<String>,
    /// `EXECUTE name`: its class is `unknown` here; the caller, which knows what `name` was
    /// prepared as, replaces it with that body's analysis.
    pub executes: Option<String>,
    /// `DECLARE name CURSOR FOR query`: the cursor (the class is the query's).
    pub declares: Option<String>,
    /// `FETCH` / `MOVE` of a cursor: the class here is `read`; the caller substitutes the class
    /// of the cursor's query (which runs as it is fetched).
    pub fetches: Option<String>,
    /// Names only the database's catalog can say are harmless (user functions, types that are
    /// not built in): each made the statement `unknown` here (`catalog::settle` answers them).
    pub lookups: Lookups,
    /// The class reason once every lookup is answered as a read.
    pub lookups_reason: Option<Arc<str>>,
    /// MySQL `USE db`: the database the session's unqualified names resolve to afterwards
    /// (as written: database names are case-sensitive on Linux servers).
    pub use_database: Option<String>,
}

/// A name the analyser cannot judge without the database's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A function that is not a known built-in (or a built-in's name in another schema).
    Function(ObjectName),
    /// A cast to a type that is not built in.
    Type(ObjectName),
}

/// The lookups of an analysis, and whether they are all its `unknown` stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    pub pending: Arc<[Lookup]>,
    /// Nothing but these lookups made the statement `unknown`.
    pub only: bool,
}

impl Analysis {
    /// An analysis of class `unknown` and nothing else, for `reason`.
    pub fn unknown(reason: impl Into<Arc<str>>) -> Analysis {
        let mut found = Found::default();
        found.add(Class::Unknown, Some(reason.into().to_string()));
        found.into_analysis()
    }
}

/// Analyses a (possibly multi-statement) string: the union of its statements' analyses.
/// Statement boundaries and literals are read with `standard_conforming_strings` on: pass
/// normalised text (as [`super::DescriptionCache`] does), whose strings lex alike either way
/// (see [`super::normalise_for_analysis`]). Session objects (`prepares`, `executes`, `declares`, `fetches`) are named
/// only when the text is one statement.
pub fn analyse(text: &str) -> Analysis {
    if text.len() > MAX_ANALYSED {
        // Bulk loads as one statement: parsing them would stall the session for no insight.
        return Analysis::unknown(format!("{} bytes: too large to analyse", text.len()));
    }
    let trimmed = text.trim_start().as_bytes();
    if trimmed.len() >= 3
        && trimmed[..2].eq_ignore_ascii_case(b"do")
        && (trimmed[2].is_ascii_whitespace() || trimmed[2] == b'$')
    {
        return Analysis::unknown("DO runs arbitrary procedural code");
    }
    if let Some(reason) = too_complex(text) {
        return Analysis::unknown(reason);
    }
    if let Some(what) = unterminated(text) {
        return Analysis::unknown(format!(
            "an unterminated {what}: the server rejects the whole text and runs none of it"
        ));
    }
    let parts = split_statements(text);
    let mut total = Found::default();
    if parts.is_empty() {
        // An empty query: the server answers EmptyQueryResponse and runs nothing.
        total.add(Class::Utility, None);
        return total.into_analysis();
    }
    let several = parts.len() > 1;
    for part in &parts {
        let found = analyse_statement(part);
        if several && (found.executes.is_some() || found.fetches.is_some()) {
            // The caller substitutes one prepared statement's or cursor's class: in a string of
            // several statements it could not tell whose.
            total
                .add(Class::Unknown, Some("EXECUTE or FETCH among several statements: analyse them one by one".into()));
        }
        total.merge(found, !several);
    }
    total.into_analysis()
}

/// Why a statement is not parsed (its expression chains are too long), if so.
fn too_complex(text: &str) -> Option<String> {
    const CHAINING: &[&str] = &[
        "and",
        "or",
        "not",
        "union",
        "intersect",
        "except",
        "is",
        "like",
        "ilike",
        "similar",
        "between",
        "collate",
        "at",
        "in",
        "when",
        "then",
        "else",
    ];
    let mut chained = 0usize;
    for t in Lexer::new(text, LexOptions::default()) {
        let word = &text[t.range()];
        let counts = match t.kind {
            TokenKind::Operator => true,
            TokenKind::Punctuation => word == "::" || word == "[",
            TokenKind::Identifier => word.len() <= 9 && CHAINING.iter().any(|k| word.eq_ignore_ascii_case(k)),
            _ => false,
        };
        if counts {
            chained += 1;
            if chained > MAX_CHAINED {
                return Some(format!("more than {MAX_CHAINED} operators: too complex to analyse"));
            }
        }
    }
    None
}

/// One statement's text (as split by PostgreSQL's rules).
fn analyse_statement(text: &str) -> Found {
    let canonical = match Canonical::of(text) {
        Ok(c) => c,
        Err(reason) => {
            let mut found = Found::default();
            found.add(Class::Unknown, Some(reason));
            return found;
        }
    };
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, &canonical.text);
    if parsed.is_err()
        && let Some(retry) = &canonical.retry
        && let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, retry)
    {
        parsed = Ok(statements);
    }
    match parsed {
        Ok(statements) if statements.len() == 1 => {
            let mut walker = Walker::new(&canonical.words);
            let _ = statements[0].visit(&mut walker);
            walker.found
        }
        Ok(statements) => {
            let mut found = Found::default();
            found.add(
                Class::Unknown,
                Some(format!("1 statement by PostgreSQL's lexical rules, {} as parsed", statements.len())),
            );
            found
        }
        Err(e) => by_keywords(&canonical.words, &e.to_string()),
    }
}

/// One statement's text parsed as the analyser parses it (literals normalised away): the
/// syntax tree, or why there is none.
pub(super) fn parse_statement(text: &str) -> Result<ast::Statement, String> {
    let canonical = Canonical::of(text)?;
    let parsed = match Parser::parse_sql(&PostgreSqlDialect {}, &canonical.text) {
        Ok(s) => s,
        Err(e) => match &canonical.retry {
            Some(retry) => Parser::parse_sql(&PostgreSqlDialect {}, retry).map_err(|_| e.to_string())?,
            None => return Err(e.to_string()),
        },
    };
    let count = parsed.len();
    let mut statements = parsed.into_iter();
    match (statements.next(), count) {
        (Some(statement), 1) => Ok(statement),
        _ => Err(format!("{count} statements where one was expected")),
    }
}

/// A statement's text as sqlparser is given it, and its significant tokens.
struct Canonical {
    text: String,
    /// Tried when `text` does not parse, if it differs: every `'?'` literal as `1`
    /// (normalisation turns numbers into `'?'` too, and sqlparser wants numbers in type
    /// modifiers, `varchar(255)`, TABLESAMPLE and the like; where a literal's value decides a
    /// class, `1` reads the cautious way: ANALYZE on, no setting name), and `ROWS FROM (f(),
    /// g())`, which sqlparser lacks, as `LATERAL (SELECT f(), g())` (the same calls).
    retry: Option<String>,
    words: Vec<Word>,
}

/// A significant token: its kind and (canonical) text.
#[derive(Debug, Clone)]
pub(super) struct Word {
    pub(super) kind: TokenKind,
    pub(super) text: String,
}

impl Word {
    /// Whether it is the unquoted keyword or identifier `kw` (lower case).
    pub(super) fn is(&self, kw: &str) -> bool {
        self.kind == TokenKind::Identifier && self.text.eq_ignore_ascii_case(kw)
    }

    fn is_punct(&self, p: &str) -> bool {
        self.kind == TokenKind::Punctuation && self.text == p
    }

    /// The name it is, as the server reads it, if it is an identifier.
    fn name(&self) -> Option<String> {
        match self.kind {
            TokenKind::Identifier => Some(cut(self.text.to_ascii_lowercase())),
            TokenKind::QuotedIdentifier { unicode: false } => quoted_identifier(&self.text).map(cut),
            _ => None,
        }
    }
}

impl Canonical {
    fn of(text: &str) -> Result<Canonical, String> {
        let tokens: Vec<_> = Lexer::new(text, LexOptions::default()).collect();
        let significant: Vec<usize> = (0..tokens.len()).filter(|&i| !tokens[i].kind.is_trivia()).collect();
        let word = |n: usize| significant.get(n).map(|&i| (tokens[i].kind, &text[tokens[i].range()]));
        let is =
            |n: usize, kw: &str| word(n).is_some_and(|(k, w)| k == TokenKind::Identifier && w.eq_ignore_ascii_case(kw));
        // Forms sqlparser lacks, rewritten to ones it has with the same meaning (in PostgreSQL's
        // grammar these token sequences occur only there): the tokens to leave out.
        let mut dropped = HashSet::new();
        // Escape characters of `U&"..."` identifiers, by token (after dropping their UESCAPE).
        let mut escapes = HashMap::new();
        // `ROWS FROM (` of a FROM item, by the token of ROWS.
        let mut rows_from = HashSet::new();
        for n in 0..significant.len() {
            if word(n).is_some_and(|(k, _)| k == TokenKind::QuotedIdentifier { unicode: true }) {
                let mut escape = '\\';
                if is(n + 1, "uescape")
                    && let Some((TokenKind::StringLiteral(StringKind::Plain), quoted)) = word(n + 2)
                {
                    let mut chars = quoted.chars();
                    escape = match (chars.next(), chars.next(), chars.next(), chars.next()) {
                        (Some('\''), Some(c), Some('\''), None) if !c.is_ascii_hexdigit() && !"+'\" ".contains(c) => c,
                        _ => return Err("an invalid UESCAPE: the server rejects it".into()),
                    };
                    dropped.extend([n + 1, n + 2]);
                }
                escapes.insert(n, escape);
            }
            let item_start = n == 0
                || word(n - 1).is_some_and(|(k, w)| {
                    (k == TokenKind::Identifier
                        && ["from", "join", "lateral"].iter().any(|kw| w.eq_ignore_ascii_case(kw)))
                        || (k == TokenKind::Punctuation && w == ",")
                });
            if item_start && is(n, "rows") && is(n + 1, "from") && word(n + 2) == Some((TokenKind::Punctuation, "(")) {
                rows_from.insert(n);
            }
            if is(n, "for") && is(n + 1, "no") && is(n + 2, "key") && is(n + 3, "update") {
                // FOR NO KEY UPDATE locks rows as FOR UPDATE does, for policy's purposes.
                dropped.extend([n + 1, n + 2]);
            } else if is(n, "for") && is(n + 1, "key") && is(n + 2, "share") {
                dropped.insert(n + 1);
            } else if is(n, "where") && is(n + 1, "current") && is(n + 2, "of") {
                // WHERE CURRENT OF c: one row, the cursor's; read as a column reference.
                dropped.extend([n + 1, n + 2]);
            }
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut retry = String::with_capacity(text.len() + 8);
        let mut rewritten = false;
        let mut words = Vec::with_capacity(significant.len());
        let mut n = 0;
        for t in &tokens {
            let raw = &text[t.range()];
            if t.kind.is_trivia() {
                // Comments become a space: sqlparser never decides where one ends.
                let blank = if t.kind == TokenKind::Whitespace { raw } else { " " };
                out.push_str(blank);
                retry.push_str(blank);
                continue;
            }
            let this = n;
            n += 1;
            if dropped.contains(&this) {
                out.push(' ');
                retry.push(' ');
                continue;
            }
            // The retry text: ROWS, FROM, ( become LATERAL, nothing, (SELECT.
            let rows_from_part = if rows_from.contains(&this) {
                Some("LATERAL")
            } else if this > 0 && rows_from.contains(&(this - 1)) {
                Some(" ")
            } else if this > 1 && rows_from.contains(&(this - 2)) {
                Some("(SELECT ")
            } else {
                None
            };
            let mut kind = t.kind;
            let canonical: std::borrow::Cow<str> = match t.kind {
                TokenKind::StringLiteral(StringKind::Plain) if simple_string(raw) => raw.into(),
                TokenKind::StringLiteral(_) | TokenKind::DollarString => "'?'".into(),
                TokenKind::QuotedIdentifier { unicode: true } => {
                    // Decoded as the server decodes it, and quoted plainly for sqlparser.
                    let escape = escapes.get(&this).copied().unwrap_or('\\');
                    let name = unicode_identifier(raw, escape)?;
                    kind = TokenKind::QuotedIdentifier { unicode: false };
                    format!("\"{}\"", name.replace('"', "\"\"")).into()
                }
                TokenKind::Operator if functions::BUILTIN_OPERATORS.binary_search(&raw).is_err() => {
                    return Err(format!("operator {raw}: not a built-in operator, not known to be read-only"));
                }
                TokenKind::Identifier if raw.contains('$') => {
                    // PostgreSQL reads `x$a$` as one identifier; quoted, sqlparser does too.
                    kind = TokenKind::QuotedIdentifier { unicode: false };
                    format!("\"{}\"", raw.to_ascii_lowercase()).into()
                }
                TokenKind::Identifier if raw.eq_ignore_ascii_case("analyse") => "analyze".into(),
                _ => raw.into(),
            };
            out.push_str(&canonical);
            if let Some(part) = rows_from_part {
                rewritten = true;
                retry.push_str(part);
            } else if canonical == "'?'" {
                rewritten = true;
                retry.push('1');
            } else {
                retry.push_str(&canonical);
            }
            words.push(Word { kind, text: canonical.into_owned() });
        }
        Ok(Canonical { text: out, retry: rewritten.then_some(retry), words })
    }
}

/// The name a `U&"..."` identifier stands for: `""` is `"`, the escape character twice is
/// itself, and the escape character introduces four hex digits or `+` and six; surrogate
/// pairs combine. Anything else is an error of the server's too.
fn unicode_identifier(raw: &str, escape: char) -> Result<String, String> {
    let invalid = || "an invalid Unicode escape in a U&\"...\" identifier: the server rejects it".to_string();
    let body = raw.get(2..).and_then(quoted_identifier).ok_or_else(invalid)?;
    let mut name = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != escape {
            if high.is_some() {
                return Err(invalid());
            }
            name.push(c);
            continue;
        }
        if chars.peek() == Some(&escape) {
            chars.next();
            name.push(escape);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let hex: String = chars.by_ref().take(digits).collect();
        if hex.len() != digits || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let code = u32::from_str_radix(&hex, 16).map_err(|_| invalid())?;
        match (high.take(), code) {
            (None, 0xD800..=0xDBFF) => high = Some(code),
            (Some(h), 0xDC00..=0xDFFF) => {
                let combined = 0x10000 + ((h - 0xD800) << 10) + (code - 0xDC00);
                name.push(char::from_u32(combined).ok_or_else(invalid)?);
            }
            (None, 0) | (Some(_), _) => return Err(invalid()),
            (None, code) => name.push(char::from_u32(code).ok_or_else(invalid)?),
        }
    }
    if high.is_some() || name.is_empty() {
        return Err(invalid());
    }
    Ok(name)
}

/// Whether a plain string token is a terminated `'...'` without backslashes or continuation
/// (which sqlparser reads as the server does); others become `'?'`.
fn simple_string(raw: &str) -> bool {
    let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) else { return false };
    !inner.contains('\\') && !inner.replace("''", "").contains('\'')
}

/// An identifier cut to NAMEDATALEN - 1 bytes at a character boundary.
fn cut(mut name: String) -> String {
    let mut at = name.len().min(MAX_IDENTIFIER);
    while !name.is_char_boundary(at) {
        at -= 1;
    }
    name.truncate(at);
    name
}

/// An identifier as the server reads it: unquoted ones fold ASCII letters to lower case.
pub(super) fn ident(i: &Ident) -> String {
    cut(match i.quote_style {
        None => i.value.to_ascii_lowercase(),
        Some(_) => i.value.clone(),
    })
}

/// A (possibly qualified) name; a database part before the schema is dropped.
pub(super) fn object_name(name: &ast::ObjectName) -> Option<ObjectName> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map(ident)).collect::<Option<_>>()?;
    let (last, rest) = parts.split_last()?;
    Some(ObjectName { schema: rest.last().cloned(), name: last.clone() })
}

/// Everything found in one statement (or merged over several).
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) effects: ClassSet,
    /// The first reason given for each class, by its position in `Class::ALL`.
    pub(super) reasons: [Option<String>; Class::ALL.len()],
    pub(super) relations: Vec<ObjectName>,
    pub(super) seen_relations: HashSet<ObjectName>,
    pub(super) functions: Vec<ObjectName>,
    pub(super) seen_functions: HashSet<ObjectName>,
    pub(super) unscoped: bool,
    pub(super) prepares: Option<String>,
    pub(super) executes: Option<String>,
    pub(super) declares: Option<String>,
    pub(super) fetches: Option<String>,
    pub(super) lookups: Vec<Lookup>,
    /// Something other than a lookup made it `unknown`.
    pub(super) hard_unknown: bool,
    pub(super) use_database: Option<String>,
}

impl Found {
    /// An `unknown` the catalog may answer.
    pub(super) fn lookup(&mut self, lookup: Lookup, reason: String) {
        let hard = self.hard_unknown;
        self.add(Class::Unknown, Some(reason));
        self.hard_unknown = hard;
        if !self.lookups.contains(&lookup) {
            self.lookups.push(lookup);
        }
    }

    pub(super) fn add(&mut self, class: Class, reason: Option<String>) {
        self.effects.insert(class);
        self.hard_unknown |= class == Class::Unknown;
        let slot = &mut self.reasons[class_index(class)];
        if slot.is_none() {
            *slot = reason;
        }
    }

    pub(super) fn relation(&mut self, name: ObjectName) {
        if self.seen_relations.insert(name.clone()) {
            self.relations.push(name);
        }
    }

    pub(super) fn function(&mut self, name: ObjectName) {
        if self.seen_functions.insert(name.clone()) {
            self.functions.push(name);
        }
    }

    /// Adds another statement's findings; its session objects only if `objects`.
    pub(super) fn merge(&mut self, other: Found, objects: bool) {
        let hard = self.hard_unknown || other.hard_unknown;
        for class in other.effects.iter() {
            self.add(class, other.reasons[class_index(class)].clone());
        }
        self.hard_unknown = hard;
        for lookup in other.lookups {
            if !self.lookups.contains(&lookup) {
                self.lookups.push(lookup);
            }
        }
        other.relations.into_iter().for_each(|r| self.relation(r));
        other.functions.into_iter().for_each(|f| self.function(f));
        self.unscoped |= other.unscoped;
        if objects {
            self.prepares = self.prepares.take().or(other.prepares);
            self.executes = self.executes.take().or(other.executes);
            self.declares = self.declares.take().or(other.declares);
            self.fetches = self.fetches.take().or(other.fetches);
        }
        if other.use_database.is_some() {
            self.use_database = other.use_database;
        }
    }

    pub(super) fn into_analysis(mut self) -> Analysis {
        let class = match self.effects.primary() {
            Some(class) => class,
            None => {
                // Nothing recognised at all: that is not a harmless statement.
                self.add(Class::Unknown, Some("no effect recognised".into()));
                Class::Unknown
            }
        };
        let settled = self.effects.without(Class::Unknown).primary().unwrap_or(Class::Read);
        let lookups_reason = self.reasons[class_index(settled)].clone().map(Arc::from);
        let mut reason = self.reasons[class_index(class)].take();
        if class == Class::Unknown && reason.is_none() {
            reason = Some("not recognised".into());
        }
        let only = !self.hard_unknown && !self.lookups.is_empty();
        Analysis {
            class,
            effects: self.effects,
            class_reason: reason.map(Arc::from),
            relations: Arc::from(self.relations),
            functions: Arc::from(self.functions),
            unscoped: self.unscoped,
            prepares: self.prepares,
            executes: self.executes,
            declares: self.declares,
            fetches: self.fetches,
            lookups: Lookups { pending: Arc::from(self.lookups), only },
            lookups_reason,
            use_database: self.use_database,
        }
    }
}

fn class_index(class: Class) -> usize {
    Class::ALL.iter().position(|c| *c == class).unwrap_or(0)
}

/// The CTE names a query brings into scope.
struct CteScope {
    /// Normalised name -> position in the WITH list.
    names: HashMap<String, usize>,
    /// Address of each CTE's body -> its position.
    bodies: HashMap<usize, usize>,
    recursive: bool,
    /// How many of the CTEs are visible now: in a non-recursive WITH a CTE's body sees only the
    /// ones before it (its own name there is a table); the main query sees them all.
    visible: usize,
    /// The relations each CTE's body names (by position).
    reads: Vec<Vec<String>>,
}

/// What a statement being walked pushed, popped when its walk ends.
#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) kind: Kind,
    pub(super) muted: bool,
    pub(super) explain: bool,
    pub(super) runs_explained: bool,
}

/// The kind of a statement others nest in, for the reasons of what they nest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Query,
    Copy,
    Prepare,
    Other,
}

/// Walks one parsed statement (and everything nested in it).
pub(super) struct Walker<'w> {
    pub(super) found: Found,
    /// MySQL: names keep their case, functions are MySQL's, statements MySQL's.
    pub(super) mysql: bool,
    words: &'w [Word],
    scopes: Vec<CteScope>,
    /// Addresses of table factors that are the targets of INSERT/UPDATE/DELETE/MERGE: real
    /// tables even where a CTE of the same name is in scope (the server does not look there).
    targets: HashSet<usize>,
    /// Address of the name of the table factor being visited (seen there; its relation visit
    /// is not a second one).
    factor_name: usize,
    frames: Vec<Frame>,
    /// Inside a plain EXPLAIN: the statement is planned, not run.
    muted: usize,
    explain: usize,
    /// Inside EXPLAIN ANALYZE: the statement runs.
    runs_explained: usize,
}

fn addr<T>(r: &T) -> usize {
    r as *const T as usize
}

impl<'w> Walker<'w> {
    pub(super) fn new(words: &'w [Word]) -> Self {
        Walker {
            found: Found::default(),
            mysql: false,
            words,
            scopes: Vec::new(),
            targets: HashSet::new(),
            factor_name: 0,
            frames: Vec::new(),
            muted: 0,
            explain: 0,
            runs_explained: 0,
        }
    }

    /// An effect of what runs (nothing inside a plain EXPLAIN).
    pub(super) fn add(&mut self, class: Class, reason: Option<String>) {
        if self.muted > 0 {
            return;
        }
        let reason = reason.or_else(|| {
            (self.runs_explained > 0 && class != Class::Read).then(|| "EXPLAIN ANALYZE runs the statement".to_string())
        });
        self.found.add(class, reason);
    }

    pub(super) fn unknown(&mut self, reason: impl Into<String>) {
        self.add(Class::Unknown, Some(reason.into()));
    }

    /// An unknown that counts inside a plain EXPLAIN too: the planner evaluates immutable (and,
    /// to estimate, stable) functions, operators and casts of constants, and the volatility of
    /// a function that is not built in is only its author's claim.
    fn unknown_even_planned(&mut self, reason: String) {
        if self.muted > 0 {
            self.found.add(Class::Unknown, Some(format!("planning may evaluate it: {reason}")));
        } else {
            self.unknown(reason);
        }
    }

    /// Like [`Self::unknown_even_planned`], for a name the database's catalog can answer.
    pub(super) fn lookup_even_planned(&mut self, lookup: Lookup, reason: String) {
        let reason = if self.muted > 0 { format!("planning may evaluate it: {reason}") } else { reason };
        self.found.lookup(lookup, reason);
    }

    pub(super) fn relation(&mut self, name: &ast::ObjectName) {
        let read = if self.mysql { super::mysql_classify::object_name(name) } else { object_name(name) };
        match read {
            Some(n) => self.found.relation(n),
            None => self.unknown(format!("relation {name}: a name the analyser cannot read")),
        }
    }

    /// Whether an unqualified name is a CTE in scope.
    fn is_cte(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.names.get(name).is_some_and(|&i| i < s.visible))
    }

    /// Whether the CTE `name` in scope (innermost first) names a relation called `table`.
    fn cte_reads(&self, name: &str, table: &str) -> bool {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.names.get(name).filter(|&&i| i < s.visible).map(|&i| (s, i)))
            .is_some_and(|(s, i)| {
                s.reads.get(i).is_some_and(|names| names.iter().any(|n| n == "*" || n.eq_ignore_ascii_case(table)))
            })
    }

    /// The first keyword of the statement text, for reasons.
    pub(super) fn keyword(&self) -> String {
        self.words.first().map(|w| w.text.to_ascii_uppercase()).unwrap_or_default()
    }

    /// A function call: recorded, and classed by what it is known to do.
    fn call(&mut self, name: &ast::ObjectName, args: Option<&[FunctionArg]>) {
        if self.mysql {
            self.mysql_call(name);
            return;
        }
        let Some(n) = object_name(name) else {
            self.unknown(format!("calls {name}: a name the analyser cannot read"));
            return;
        };
        self.found.function(n.clone());
        let built_in = n.schema.as_deref().is_none_or(|s| s == "pg_catalog");
        match built_in.then(|| functions::builtin(&n.name)).flatten() {
            Some(Builtin::ReadOnly) => {}
            // Volatile built-ins are not evaluated when a statement is only planned; the others
            // may be, on constants (a LIMIT's estimate).
            Some(Builtin::Effect(_, why)) if self.muted > 0 => {
                if functions::evaluated_when_planned(&n.name) {
                    self.unknown_even_planned(format!("calls {n}: {why}"));
                }
            }
            Some(Builtin::SetConfig) if self.muted > 0 => {}
            Some(Builtin::Effect(classes, why)) => {
                for class in classes {
                    self.add(*class, Some(format!("calls {n}: {why}")));
                }
            }
            Some(Builtin::SetConfig) => self.set_config(&n, args),
            None => {
                self.lookup_even_planned(Lookup::Function(n.clone()), format!("calls {n}, not known to be read-only"))
            }
        }
    }

    /// `set_config(name, ...)`: a session setting, a change of role if it names one.
    fn set_config(&mut self, n: &ObjectName, args: Option<&[FunctionArg]>) {
        let first = args.and_then(|a| a.first()).and_then(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => string_value(&v.value),
            _ => None,
        });
        match first {
            // '?' is what normalisation leaves of any literal (and names no setting).
            Some(name) if name != "?" => {
                if functions::privileged_setting(name) {
                    self.add(Class::Dcl, Some(format!("calls {n} of {name}: changes the role the session acts as")));
                } else if functions::superuser_setting(name) {
                    self.add(Class::Admin, Some(format!("calls {n} of {name}: a setting only a superuser may change")));
                } else {
                    self.add(Class::Session, Some(format!("calls {n}: changes a setting")));
                }
            }
            _ => {
                // It may be role: both the change of role and the unknown are effects.
                let why = format!("calls {n} of a setting named by an expression (or a literal normalised away)");
                self.add(Class::Session, Some(format!("calls {n}: changes a setting")));
                self.add(Class::Dcl, Some(format!("{why}: it may be role")));
                self.unknown(why);
            }
        }
    }

    /// A cast or typed literal runs the type's input and cast functions: built-in types only.
    fn check_type(&mut self, data_type: &DataType) {
        if self.mysql {
            // MySQL has no user-defined types: every cast is to a built-in one.
            return;
        }
        if let Some(name) = unknown_type(data_type) {
            let why = format!("casts to {name}, a type not known to be built in (a domain's CHECK can call anything)");
            match custom_type(data_type) {
                Some(n) => self.lookup_even_planned(Lookup::Type(n), why),
                None => self.unknown_even_planned(why),
            }
        }
    }

    fn check_operator(&mut self, op: &BinaryOperator) {
        match op {
            BinaryOperator::PGCustomBinaryOperator(parts) => {
                let (symbol, schema) = parts.split_last().map(|(s, r)| (s.as_str(), r.last())).unwrap_or(("", None));
                let built_in = schema.is_none_or(|s| s == "pg_catalog");
                if !built_in || functions::BUILTIN_OPERATORS.binary_search(&symbol).is_err() {
                    self.unknown_even_planned(format!("operator {op}: not known to be built in"));
                }
            }
            BinaryOperator::Custom(symbol) => {
                self.unknown_even_planned(format!("operator {symbol}: not known to be built in"))
            }
            _ => {}
        }
    }

    /// Marks the table factors that are DML targets.
    pub(super) fn target(&mut self, factor: &TableFactor) {
        self.targets.insert(addr(factor));
    }

    pub(super) fn unscoped_where(&mut self, condition: Option<&Expr>, target: &Target) {
        let mut target = Target { mysql: self.mysql, ..target.clone() };
        // A CTE that reads the target's table is a derived table over it.
        if let Some(table) = target.table.clone() {
            let over: Vec<String> =
                target.named.iter().filter(|(name, _)| self.cte_reads(name, &table)).map(|(_, a)| a.clone()).collect();
            target.derived_same.extend(over);
        }
        let target = &target;
        if self.muted == 0 && condition.is_none_or(|c| scope(c, target).1) {
            self.found.unscoped = true;
        }
    }

    /// A DML write to a system catalog is a change of the schema (`ddl`), or of roles and
    /// privileges (`dcl`) when it touches those; `pg_settings` is a view whose rules run
    /// set_config, so writing it sets any setting, `role` too.
    pub(super) fn catalog_write(&mut self, target: &ast::ObjectName, columns: &[String], condition: Option<&Expr>) {
        if self.mysql {
            self.mysql_catalog_write(target);
            return;
        }
        let Some(n) = object_name(target) else { return };
        // The system views PostgreSQL 15 can update (`pg_relation_is_updatable`): a write of one
        // is a write of the catalog under it.
        match (n.schema.as_deref(), n.name.as_str()) {
            (None | Some("pg_catalog"), "pg_group") | (None | Some("information_schema"), "enabled_roles") => {
                self.add(Class::Ddl, Some(format!("writes the system catalog pg_authid through {n}")));
                self.add(Class::Dcl, Some(format!("writes roles through {n}")));
                return;
            }
            (None | Some("pg_catalog"), "pg_stat_database_conflicts") => {
                self.add(Class::Ddl, Some(format!("writes the system catalog pg_database through {n}")));
                return;
            }
            _ => {}
        }
        if n.schema.as_deref().is_some_and(|s| s != "pg_catalog") {
            return;
        }
        if n.name == "pg_settings" {
            // Which settings: `name = 'x'` (or IN a list) in the condition, if that says.
            let mut names = Vec::new();
            let known = condition.is_some_and(|c| setting_names(c, &mut names))
                && !names.iter().any(|s| s == "?" || functions::privileged_setting(s));
            self.add(Class::Session, Some(format!("writes {n}: sets configuration")));
            if let Some(s) = names.iter().find(|s| functions::superuser_setting(s)) {
                self.add(Class::Admin, Some(format!("writes {n}: sets {s}, a setting only a superuser may change")));
            }
            if !known {
                self.add(Class::Dcl, Some(format!("writes {n}, which can set role and session_authorization")));
            }
            return;
        }
        if !functions::is_catalog(&n.name) {
            return;
        }
        self.add(Class::Ddl, Some(format!("writes the system catalog {n}")));
        if functions::is_privilege_catalog(&n.name) || columns.iter().any(|c| functions::is_privilege_column(c)) {
            self.add(Class::Dcl, Some(format!("writes roles, owners or privileges in the system catalog {n}")));
        }
    }

    fn statement(&mut self, statement: &Statement) -> Frame {
        use Statement as S;
        if self.mysql
            && let Some(frame) = self.mysql_statement(statement)
        {
            return frame;
        }
        let kind = match statement {
            S::Query(_) => Kind::Query,
            S::Copy { .. } => Kind::Copy,
            S::Prepare { .. } => Kind::Prepare,
            _ => Kind::Other,
        };
        let mut frame = Frame { kind, muted: false, explain: false, runs_explained: false };
        // Why a data-modifying statement nested in another is a write of that other.
        let nested_write = match self.frames.last().map(|f| f.kind) {
            Some(Kind::Query) => Some("a data-modifying statement inside a query (WITH ... or a subquery)".to_string()),
            Some(Kind::Copy) => Some("COPY of a data-modifying statement runs it".to_string()),
            Some(Kind::Prepare) => Some("PREPARE: the class of the statement it prepares".to_string()),
            _ => None,
        };
        match statement {
            S::Query(_) => self.add(Class::Read, None),
            S::Insert(insert) => {
                self.add(Class::Write, nested_write);
                match &insert.table {
                    ast::TableObject::TableName(name) => {
                        let columns: Vec<String> = match insert.columns.as_slice() {
                            [] => vec!["*".to_string()],
                            columns => columns.iter().filter_map(|c| object_name(c).map(|n| n.name)).collect(),
                        };
                        self.catalog_write(name, &columns, None);
                        let every_row = if self.mysql {
                            super::mysql_classify::overwrites_every_row(insert, name)
                        } else {
                            upserts_every_row(insert, name)
                        };
                        if self.muted == 0 && every_row {
                            self.found.unscoped = true;
                        }
                    }
                    _ => self.unknown("INSERT into something other than a table"),
                }
            }
            S::Update(update)
                if self.mysql
                    && (!update.table.joins.is_empty()
                        || !matches!(update.table.relation, TableFactor::Table { .. })) =>
            {
                self.add(Class::Write, nested_write);
                self.mysql_multi_table_update(update);
            }
            S::Delete(delete) if self.mysql && (!delete.tables.is_empty() || delete.using.is_some()) => {
                self.add(Class::Write, nested_write);
                self.mysql_multi_table_delete(delete);
            }
            S::Update(update) => {
                self.add(Class::Write, nested_write);
                self.target(&update.table.relation);
                let columns: Vec<String> = update
                    .assignments
                    .iter()
                    .flat_map(|a| match &a.target {
                        ast::AssignmentTarget::ColumnName(c) => std::slice::from_ref(c),
                        ast::AssignmentTarget::Tuple(cs) => cs.as_slice(),
                    })
                    .filter_map(|c| object_name(c).map(|n| n.name))
                    .collect();
                if let TableFactor::Table { name, .. } = &update.table.relation {
                    // With a FROM list, a condition on some `x.name` may be on another relation's
                    // column: which settings a pg_settings write sets is then not read.
                    let condition = if update.from.is_none() { update.selection.as_ref() } else { None };
                    self.catalog_write(name, &columns, condition);
                }
                let from = match &update.from {
                    Some(ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) => {
                        f.as_slice()
                    }
                    None => &[],
                };
                let target = Target::of(&update.table.relation, factors(from.iter().chain([&update.table])));
                self.unscoped_where(update.selection.as_ref(), &target);
            }
            S::Delete(delete) => {
                self.add(Class::Write, nested_write);
                let tables = match &delete.from {
                    ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
                };
                for t in tables {
                    self.target(&t.relation);
                    if let TableFactor::Table { name, .. } = &t.relation {
                        self.catalog_write(name, &[], None);
                    }
                }
                for name in &delete.tables {
                    self.relation(name);
                }
                if let Some(first) = tables.first() {
                    let using = delete.using.iter().flatten().chain(tables);
                    let target = Target::of(&first.relation, factors(using));
                    self.unscoped_where(delete.selection.as_ref(), &target);
                }
            }
            S::Merge(merge) => {
                self.add(Class::Write, nested_write);
                self.target(&merge.table);
                if let TableFactor::Table { name, .. } = &merge.table {
                    self.catalog_write(name, &["*".to_string()], None);
                }
                let target = Target::of(&merge.table, [&merge.source]);
                self.unscoped_where(Some(&merge.on), &target);
            }
            S::Copy { source, to, target, .. } => {
                if let CopySource::Table { table_name, .. } = source {
                    self.relation(table_name);
                }
                self.add(if *to { Class::Read } else { Class::Write }, None);
                match target {
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                    CopyTarget::File { .. } => self.unknown(if *to {
                        "COPY TO a file writes a file on the database server"
                    } else {
                        "COPY FROM a file reads a file on the database server"
                    }),
                    CopyTarget::Program { .. } => {
                        self.unknown("COPY ... PROGRAM runs a program on the database server")
                    }
                }
            }
            S::Explain { analyze, options, describe_alias, .. } => {
                if !matches!(describe_alias, ast::DescribeAlias::Explain) {
                    self.unknown("DESCRIBE is not PostgreSQL");
                }
                self.add(Class::Read, None);
                let runs = *analyze || options.iter().flatten().any(runs_analyze);
                frame = Frame { kind, muted: !runs, explain: true, runs_explained: runs };
            }
            S::Prepare { name, data_types, .. } => {
                if self.explain == 0 {
                    self.found.prepares = Some(ident(name));
                }
                // Parameters are coerced to these types when it is executed.
                data_types.iter().for_each(|t| self.check_type(t));
            }
            S::Execute { name, immediate, using, into, parameters, .. } => match name.as_ref().and_then(object_name) {
                // The caller replaces this analysis with the prepared body's: only when the
                // parameters are plain values is there nothing of the EXECUTE's own to lose.
                Some(n) if parameters.iter().any(computed) => self.found.add(
                    Class::Unknown,
                    Some(format!("EXECUTE of prepared statement {} with computed parameters", n.name)),
                ),
                Some(n) if n.schema.is_none() && !immediate && using.is_empty() && into.is_empty() => {
                    self.found.add(Class::Unknown, Some(format!("EXECUTE of prepared statement {}", n.name)));
                    self.found.executes = Some(n.name);
                }
                _ => {
                    self.found.add(Class::Unknown, Some("EXECUTE of something other than a prepared statement".into()))
                }
            },
            S::Declare { stmts, .. } => match stmts.as_slice() {
                [declare] if declare.for_query.is_some() && declare.names.len() == 1 => {
                    self.add(Class::Read, None);
                    if self.explain == 0 {
                        self.found.declares = Some(ident(&declare.names[0]));
                    }
                }
                _ => self.unknown("DECLARE of something other than one cursor"),
            },
            S::Fetch { name, into, .. } => {
                self.add(Class::Read, None);
                if into.is_some() {
                    self.unknown("FETCH INTO is not PostgreSQL");
                }
                if self.explain == 0 {
                    self.found.fetches = Some(ident(name));
                }
            }
            S::Close { .. } | S::Deallocate { .. } => self.add(Class::Utility, None),
            S::Call(f) => {
                self.call_procedure(&f.name);
            }
            S::Load { .. } => self.unknown("LOAD loads a shared library into the server"),
            S::StartTransaction { statements, exception, .. } => {
                if statements.is_empty() && exception.is_none() {
                    self.add(Class::Transaction, None);
                } else {
                    self.unknown("a BEGIN ... END block is not PostgreSQL");
                }
            }
            S::Commit { .. } | S::Rollback { .. } | S::Savepoint { .. } | S::ReleaseSavepoint { .. } => {
                self.add(Class::Transaction, None)
            }
            S::Set(set) => self.set(set),
            S::Reset(reset) => match &reset.reset {
                Reset::ALL => self.add(Class::Session, None),
                Reset::SessionAuthorization => self
                    .add(Class::Dcl, Some("RESET SESSION AUTHORIZATION changes the role the session acts as".into())),
                Reset::ConfigurationParameter(name) => self.setting(name, "RESET"),
            },
            S::ShowVariable { .. } => self.add(Class::Session, None),
            S::Discard { object_type } => {
                self.add(Class::Session, None);
                if matches!(object_type, DiscardObject::ALL) {
                    self.add(Class::Dcl, Some("DISCARD ALL resets the session authorization".into()));
                }
            }
            S::LISTEN { .. } | S::UNLISTEN { .. } => self.add(Class::Utility, None),
            S::NOTIFY { .. } => self.add(Class::Write, Some("NOTIFY sends data to other sessions".into())),
            S::Lock(_) => self.add(Class::Admin, Some("LOCK takes table locks".into())),
            S::Vacuum(v) => {
                self.add(Class::Admin, None);
                if let Some(t) = &v.table_name {
                    self.relation(t);
                }
            }
            S::Analyze(_) | S::RefreshMaterializedView(_) => self.add(Class::Admin, None),
            S::Truncate(_) => self.add(Class::Ddl, Some("TRUNCATE removes all rows".into())),
            S::Comment { object_type, object_name, .. } => {
                self.add(Class::Ddl, None);
                match object_type {
                    CommentObject::Table
                    | CommentObject::View
                    | CommentObject::MaterializedView
                    | CommentObject::ForeignTable
                    | CommentObject::Sequence
                    | CommentObject::Index => self.relation(object_name),
                    CommentObject::Column if object_name.0.len() > 1 => {
                        let table = ast::ObjectName(object_name.0[..object_name.0.len() - 1].to_vec());
                        self.relation(&table);
                    }
                    _ => {}
                }
            }
            S::CreateTable(t) => {
                self.add(Class::Ddl, None);
                if let Some(ast::CreateTableLikeKind::Parenthesized(like) | ast::CreateTableLikeKind::Plain(like)) =
                    &t.like
                {
                    self.relation(&like.name);
                }
                for name in t.inherits.iter().flatten().chain(&t.clone) {
                    self.relation(name);
                }
                for column in &t.columns {
                    self.references_of_column(column);
                }
                for constraint in &t.constraints {
                    self.references_of_constraint(constraint);
                }
            }
            S::CreateView(_) => self.add(Class::Ddl, None),
            S::CreateIndex(i) => {
                self.add(Class::Ddl, None);
                if let Some(name) = &i.name {
                    self.relation(name);
                }
            }
            S::CreateSequence { name, .. } => {
                self.add(Class::Ddl, None);
                self.relation(name);
            }
            S::AlterIndex { name, .. } => {
                self.add(Class::Ddl, None);
                self.relation(name);
            }
            S::AlterTable(t) => {
                self.add(Class::Ddl, None);
                for op in &t.operations {
                    match op {
                        AlterTableOperation::AddConstraint { constraint, .. } => {
                            self.references_of_constraint(constraint)
                        }
                        AlterTableOperation::AddColumn { column_def, .. } => self.references_of_column(column_def),
                        // MySQL's may move it to another database: the new name is named too
                        // (PostgreSQL's stays in the table's schema).
                        AlterTableOperation::RenameTable {
                            table_name: ast::RenameTableNameKind::As(name) | ast::RenameTableNameKind::To(name),
                        } if self.mysql => self.relation(name),
                        AlterTableOperation::OwnerTo { .. } => {
                            self.add(Class::Dcl, Some("changes a table's owner (and so its privileges)".into()))
                        }
                        AlterTableOperation::EnableRowLevelSecurity
                        | AlterTableOperation::DisableRowLevelSecurity
                        | AlterTableOperation::ForceRowLevelSecurity
                        | AlterTableOperation::NoForceRowLevelSecurity => {
                            self.add(Class::Dcl, Some("changes row-level security".into()))
                        }
                        _ => {}
                    }
                }
            }
            S::AlterSchema(s) => {
                self.add(Class::Ddl, None);
                if s.operations.iter().any(|op| matches!(op, AlterSchemaOperation::OwnerTo { .. })) {
                    self.add(Class::Dcl, Some("changes a schema's owner (and so its privileges)".into()));
                }
            }
            S::AlterView(v) => {
                self.add(Class::Ddl, None);
                if matches!(v.operation, AlterViewOperation::OwnerTo(_)) {
                    self.add(Class::Dcl, Some("changes a view's owner (and so its privileges)".into()));
                }
            }
            S::AlterFunction(f) => {
                self.add(Class::Ddl, None);
                let privileged = match &f.operation {
                    AlterFunctionOperation::OwnerTo(_) => true,
                    AlterFunctionOperation::Actions { actions, .. } => actions.iter().any(|a| {
                        matches!(a, AlterFunctionAction::Security { security: FunctionSecurity::Definer, .. })
                    }),
                    _ => false,
                };
                if privileged {
                    self.add(
                        Class::Dcl,
                        Some("makes a function run with its owner's privileges (SECURITY DEFINER or OWNER TO)".into()),
                    );
                }
            }
            S::CreateFunction(f) => {
                self.add(Class::Ddl, None);
                if matches!(f.security, Some(FunctionSecurity::Definer)) {
                    self.add(Class::Dcl, Some("creates a SECURITY DEFINER function".into()));
                }
            }
            S::CreateSchema { schema_name, .. } => {
                self.add(Class::Ddl, None);
                if !matches!(schema_name, SchemaName::Simple(_)) {
                    self.add(Class::Dcl, Some("creates a schema owned by another role".into()));
                }
            }
            S::CreateTrigger(t) => {
                self.add(Class::Ddl, None);
                self.relation(&t.table_name);
            }
            S::DropTrigger(t) => {
                self.add(Class::Ddl, None);
                if let Some(table) = &t.table_name {
                    self.relation(table);
                }
            }
            S::CreatePolicy(_) | S::AlterPolicy(_) | S::DropPolicy(_) => {
                self.add(Class::Ddl, None);
                self.add(Class::Dcl, Some("row-level security policies decide who sees which rows".into()));
            }
            S::CreateUserMapping(_) => {
                self.add(Class::Ddl, None);
                self.add(Class::Dcl, Some("user mappings hold credentials for other servers".into()));
            }
            S::CreateRule(_)
            | S::DropRule(_)
            | S::AlterTrigger(_)
            | S::CreateDatabase { .. }
            | S::CreateProcedure { .. }
            | S::CreateExtension(_)
            | S::DropExtension(_)
            | S::CreateType { .. }
            | S::AlterType(_)
            | S::CreateDomain(_)
            | S::DropDomain(_)
            | S::CreateForeignTable(_)
            | S::CreateServer(_)
            | S::CreateForeignDataWrapper(_)
            | S::CreateOperator(_)
            | S::CreateOperatorFamily(_)
            | S::CreateOperatorClass(_)
            | S::AlterOperator(_)
            | S::AlterOperatorFamily(_)
            | S::AlterOperatorClass(_)
            | S::DropOperator(_)
            | S::DropOperatorFamily(_)
            | S::DropOperatorClass(_)
            | S::CreateTextSearch(_)
            | S::AlterTextSearch(_)
            | S::CreateAggregate(_)
            | S::CreateCollation(_)
            | S::AlterCollation(_)
            | S::DropFunction(_)
            | S::DropProcedure { .. } => self.add(Class::Ddl, None),
            S::Drop { object_type, names, .. } => match object_type {
                ObjectType::Role | ObjectType::User | ObjectType::Group => self.add(Class::Dcl, None),
                ObjectType::Table
                | ObjectType::View
                | ObjectType::MaterializedView
                | ObjectType::Index
                | ObjectType::Sequence
                | ObjectType::ForeignTable => {
                    self.add(Class::Ddl, None);
                    names.iter().for_each(|n| self.relation(n));
                }
                _ => self.add(Class::Ddl, None),
            },
            S::CreateRole(_) | S::AlterRole { .. } | S::CreateUser(_) | S::AlterUser(_) => self.add(Class::Dcl, None),
            S::Grant(g) => {
                self.add(Class::Dcl, None);
                self.grant_objects(g.objects.as_ref());
            }
            S::Revoke(r) => {
                self.add(Class::Dcl, None);
                self.grant_objects(r.objects.as_ref());
            }
            S::GrantRole(_) | S::RevokeRole(_) | S::AlterDefaultPrivileges(_) => self.add(Class::Dcl, None),
            _ => self.unknown(format!("{} statement not recognised", self.keyword())),
        }
        frame
    }

    /// The table a foreign key refers to is named too (REFERENCES needs a privilege on it).
    fn references_of_column(&mut self, column: &ast::ColumnDef) {
        for option in &column.options {
            if let ast::ColumnOption::ForeignKey(fk) = &option.option {
                self.relation(&fk.foreign_table);
            }
        }
    }

    fn references_of_constraint(&mut self, constraint: &ast::TableConstraint) {
        if let ast::TableConstraint::ForeignKey(fk) = constraint {
            self.relation(&fk.foreign_table);
        }
    }

    fn call_procedure(&mut self, name: &ast::ObjectName) {
        if let Some(n) = object_name(name) {
            self.found.function(n);
        }
        self.unknown(format!("CALL runs procedural code ({name})"));
    }

    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        if let Some(GrantObjects::Tables(names) | GrantObjects::Sequences(names)) = objects {
            names.iter().for_each(|n| self.relation(n));
        }
    }

    fn set(&mut self, set: &ast::Set) {
        use ast::Set as S;
        match set {
            S::SingleAssignment { variable, .. } => self.setting(variable, "SET"),
            S::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.setting(&a.name, "SET");
                }
            }
            S::ParenthesizedAssignments { variables, .. } => variables.iter().for_each(|v| self.setting(v, "SET")),
            S::SetSessionAuthorization(_) => {
                self.add(Class::Dcl, Some("SET SESSION AUTHORIZATION changes the role the session acts as".into()))
            }
            S::SetRole { .. } => self.add(Class::Dcl, Some("SET ROLE changes the role the session acts as".into())),
            S::SetTimeZone { .. } | S::SetNames { .. } | S::SetNamesDefault {} => self.add(Class::Session, None),
            S::SetTransaction { session: false, .. } => self.add(Class::Transaction, None),
            S::SetTransaction { session: true, .. } => self.add(Class::Session, None),
            S::SetSessionParam(_) => self.unknown("SET of a session parameter PostgreSQL does not have"),
        }
    }

    /// `SET name ...` / `RESET name`: a session setting, or a change of role.
    fn setting(&mut self, variable: &ast::ObjectName, verb: &str) {
        let name = match variable.0.as_slice() {
            [part] => part.as_ident().map(|i| i.value.as_str()),
            _ => None,
        };
        // A qualified (extension's) setting: `SET pgaudit.log = 'none'`.
        let qualified: Option<String> = (variable.0.len() > 1).then(|| {
            variable.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.as_str()).collect::<Vec<_>>().join(".")
        });
        if let Some(q) = qualified.filter(|q| functions::superuser_setting(q)) {
            self.add(
                Class::Admin,
                Some(format!("{verb} {}: a setting only a superuser may change", q.to_ascii_lowercase())),
            );
            return;
        }
        match name {
            Some(name) if functions::privileged_setting(name) => self.add(
                Class::Dcl,
                Some(format!("{verb} {} changes the role the session acts as", name.to_ascii_lowercase())),
            ),
            Some(name) if functions::superuser_setting(name) => self.add(
                Class::Admin,
                Some(format!("{verb} {}: a setting only a superuser may change", name.to_ascii_lowercase())),
            ),
            _ => self.add(Class::Session, None),
        }
    }

    /// Checks a query's own clauses (not its nested queries, which are visited in turn).
    fn query(&mut self, q: &Query) {
        if !q.locks.is_empty() {
            self.add(
                Class::Write,
                Some("SELECT ... FOR UPDATE/SHARE locks rows (it needs the UPDATE privilege)".into()),
            );
        }
        if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() || !q.pipe_operators.is_empty() {
            self.unknown("a query clause PostgreSQL does not have");
        }
        // `TABLE name` in a set operation reads a table (or a CTE).
        let mut bodies = vec![q.body.as_ref()];
        while let Some(body) = bodies.pop() {
            match body {
                SetExpr::SetOperation { left, right, .. } => bodies.extend([left.as_ref(), right.as_ref()]),
                SetExpr::Table(t) => match (&t.schema_name, &t.table_name) {
                    (schema, Some(name)) => {
                        let name = ident(name);
                        if schema.is_some() || !self.is_cte(&name) {
                            self.found.relation(ObjectName { schema: schema.as_ref().map(ident), name });
                        }
                    }
                    (_, None) => self.unknown("TABLE without a name"),
                },
                _ => {}
            }
        }
    }

    fn select(&mut self, s: &Select) {
        if self.mysql && s.into.is_some() {
            // MySQL's SELECT ... INTO names variables (files are found from the tokens).
            self.add(Class::Session, Some("SELECT ... INTO sets variables".into()));
        } else if let Some(into) = &s.into {
            self.add(Class::Ddl, Some("SELECT INTO creates a table".into()));
            for target in &into.targets {
                match target {
                    Expr::Identifier(i) => self.found.relation(ObjectName { schema: None, name: ident(i) }),
                    Expr::CompoundIdentifier(parts) if parts.len() >= 2 => self.found.relation(ObjectName {
                        schema: Some(ident(&parts[parts.len() - 2])),
                        name: ident(&parts[parts.len() - 1]),
                    }),
                    _ => self.unknown("SELECT INTO something other than a table"),
                }
            }
        }
        if !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || s.qualify.is_some()
            || s.top.is_some()
        {
            self.unknown("a SELECT clause PostgreSQL does not have");
        }
    }

    fn table_factor(&mut self, factor: &TableFactor) {
        // A column definition list (`AS t(x mytype)`) coerces each value to its type.
        let alias = match factor {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::TableFunction { alias, .. } => alias.as_ref(),
            _ => None,
        };
        for column in alias.map(|a| a.columns.as_slice()).unwrap_or_default() {
            if let Some(t) = &column.data_type {
                self.check_type(t);
            }
        }
        match factor {
            TableFactor::Table { name, args, .. } => {
                self.factor_name = addr(name);
                match args {
                    Some(args) => self.call(name, Some(&args.args)),
                    None => {
                        let cte = name.0.len() == 1
                            && !self.targets.contains(&addr(factor))
                            && name.0[0].as_ident().is_some_and(|i| self.is_cte(&ident(i)));
                        if !cte {
                            self.relation(name);
                            if !self.mysql
                                && let Some(n) = object_name(name)
                                && n.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                                && let Some(why) = functions::view_effect(&n.name)
                            {
                                self.unknown(format!("reads {n}, {why}"));
                            }
                        }
                    }
                }
            }
            TableFactor::Function { name, args, .. } => self.call(name, Some(args)),
            TableFactor::UNNEST { .. } => self.found.function(ObjectName::new(None, "unnest")),
            TableFactor::JsonTable { columns, .. } => {
                self.found.function(ObjectName::new(None, "json_table"));
                for column in columns {
                    if let ast::JsonTableColumn::Named(c) = column {
                        self.check_type(&c.r#type);
                    }
                }
            }
            TableFactor::XmlTable { columns, .. } => {
                self.found.function(ObjectName::new(None, "xmltable"));
                for column in columns {
                    if let ast::XmlTableColumnOption::NamedInfo { r#type, .. } = &column.option {
                        self.check_type(r#type);
                    }
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } | TableFactor::TableFunction { .. } => {}
            _ => self.unknown("a FROM item PostgreSQL does not have"),
        }
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Function(f) => {
                let args = match &f.args {
                    FunctionArguments::List(list) => Some(list.args.as_slice()),
                    _ => None,
                };
                self.call(&f.name, args);
            }
            Expr::Cast { data_type, .. } => self.check_type(data_type),
            Expr::TypedString(t) => self.check_type(&t.data_type),
            Expr::BinaryOp { op, .. } => self.check_operator(op),
            Expr::AnyOp { compare_op, .. } | Expr::AllOp { compare_op, .. } => self.check_operator(compare_op),
            Expr::Convert { .. }
            | Expr::MatchAgainst { .. }
            | Expr::Lambda(_)
            | Expr::Dictionary(_)
            | Expr::Map(_)
            | Expr::Struct { .. }
            | Expr::Named { .. }
            | Expr::OuterJoin(_)
            | Expr::Prior(_)
            | Expr::MemberOf(_)
            | Expr::RLike { .. }
            | Expr::Prefixed { .. } => {
                // MySQL's own forms (CONVERT, MATCH ... AGAINST, RLIKE, MEMBER OF, `_utf8mb4'x'`).
                let mysql_form = matches!(
                    e,
                    Expr::Convert { .. }
                        | Expr::MatchAgainst { .. }
                        | Expr::RLike { .. }
                        | Expr::MemberOf(_)
                        | Expr::Prefixed { .. }
                );
                if !(self.mysql && mysql_form) {
                    self.unknown("an expression PostgreSQL does not have")
                }
            }
            _ => {}
        }
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let frame = self.statement(statement);
        self.muted += usize::from(frame.muted);
        self.explain += usize::from(frame.explain);
        self.runs_explained += usize::from(frame.runs_explained);
        self.frames.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        if let Some(frame) = self.frames.pop() {
            self.muted -= usize::from(frame.muted);
            self.explain -= usize::from(frame.explain);
            self.runs_explained -= usize::from(frame.runs_explained);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let at = addr(query);
        if let Some(top) = self.scopes.last_mut()
            && let Some(&k) = top.bodies.get(&at)
        {
            top.visible = if top.recursive { top.names.len() } else { k };
        }
        let mut scope = CteScope {
            names: HashMap::new(),
            bodies: HashMap::new(),
            recursive: false,
            visible: usize::MAX,
            reads: Vec::new(),
        };
        if let Some(with) = &query.with {
            scope.recursive = with.recursive;
            for (k, cte) in with.cte_tables.iter().enumerate() {
                scope.names.entry(ident(&cte.alias.name)).or_insert(k);
                scope.bodies.insert(addr(cte.query.as_ref()), k);
                scope.reads.push(relation_names(&cte.query));
            }
        }
        self.scopes.push(scope);
        self.query(query);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        let at = addr(query);
        if let Some(top) = self.scopes.last_mut()
            && top.bodies.contains_key(&at)
        {
            top.visible = usize::MAX;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.select(select);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        self.table_factor(factor);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> ControlFlow<()> {
        // A table factor's name was seen with its factor (where a CTE or a function is told
        // apart); every other relation position names a real relation.
        if addr(relation) != self.factor_name {
            self.relation(relation);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        self.expr(expr);
        ControlFlow::Continue(())
    }
}

/// Whether an expression computes anything beyond literals, parameters and built-in casts (a
/// function call, a subquery, an operator on them).
fn computed(e: &Expr) -> bool {
    struct Computed;
    impl Visitor for Computed {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            ControlFlow::Break(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Function(_) | Expr::TypedString(_) => ControlFlow::Break(()),
                Expr::Cast { data_type, .. } if unknown_type(data_type).is_some() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    e.visit(&mut Computed).is_break()
}

/// A string literal's value.
fn string_value(v: &Value) -> Option<&str> {
    match v {
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) | Value::NationalStringLiteral(s) => Some(s),
        Value::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

/// Whether an EXPLAIN option turns ANALYZE on: anything but a value PostgreSQL reads as false.
fn runs_analyze(option: &UtilityOption) -> bool {
    if !option.name.value.eq_ignore_ascii_case("analyze") && !option.name.value.eq_ignore_ascii_case("analyse") {
        return false;
    }
    let word = match &option.arg {
        None => return true,
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => return *b,
            Value::Number(n, _) => n.as_str(),
            other => match string_value(other) {
                Some(s) => s,
                None => return true,
            },
        },
        Some(Expr::Identifier(i)) => i.value.as_str(),
        Some(_) => return true,
    };
    // parse_bool: false, off, no, 0 and their unambiguous prefixes.
    let w = word.trim().to_ascii_lowercase();
    !matches!(w.as_str(), "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "of" | "off" | "0")
}

/// The name of a type a cast names, if it is not known to be built in.
/// The user type a cast names (an array of it: the element type), if it is one by name.
fn custom_type(data_type: &DataType) -> Option<ObjectName> {
    match data_type {
        DataType::Custom(name, _) => object_name(name),
        other => element_type(other).and_then(custom_type),
    }
}

/// The element type of an array type.
fn element_type(data_type: &DataType) -> Option<&DataType> {
    match data_type {
        DataType::Array(
            ArrayElemTypeDef::SquareBracket(inner, _)
            | ArrayElemTypeDef::AngleBracket(inner)
            | ArrayElemTypeDef::Parenthesis(inner)
            | ArrayElemTypeDef::ParenthesisNotNull(inner)
            | ArrayElemTypeDef::Qualified(inner, _),
        ) => Some(inner),
        _ => None,
    }
}

fn unknown_type(data_type: &DataType) -> Option<String> {
    match data_type {
        DataType::Custom(name, _) => match object_name(name) {
            Some(n)
                if n.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                    && functions::BUILTIN_TYPES.binary_search(&n.name.as_str()).is_ok() =>
            {
                None
            }
            _ => Some(name.to_string()),
        },
        other if element_type(other).is_some() => element_type(other).and_then(unknown_type),
        other => {
            // Types sqlparser knows by keyword: their SQL spelling, without modifiers.
            let shown = other.to_string().to_ascii_lowercase();
            let mut base = String::with_capacity(shown.len());
            let mut depth = 0usize;
            for c in shown.chars() {
                match c {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth = depth.saturating_sub(1),
                    _ if depth == 0 => base.push(c),
                    _ => {}
                }
            }
            let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
            let base = base.strip_suffix(" array").unwrap_or(&base);
            let known =
                functions::BUILTIN_TYPES.binary_search(&base).is_ok() || base.strip_prefix("interval ").is_some();
            (!known).then_some(shown)
        }
    }
}

/// The target of an UPDATE, DELETE or MERGE, as its condition is judged.
#[derive(Clone)]
pub(super) struct Target {
    /// The target table's name (its last part).
    table: Option<String>,
    /// The names its columns can be qualified by: its table name, its alias.
    names: Vec<String>,
    /// The names of other FROM / USING / source items that are the same table: a condition
    /// equating a column with its own in such an item (a self-join) holds for every row.
    same_table: Vec<String>,
    /// Derived tables that read the target's table: any of their columns may be the target's
    /// own under another name, so a condition equating a column with one of them may hold for
    /// every row.
    derived_same: Vec<String>,
    /// Other items named by one unqualified name (which may be a CTE), and what qualifies them.
    named: Vec<(String, String)>,
    /// MySQL: `<=>` is its null-safe equality (true of `x <=> x` for every row).
    mysql: bool,
}

impl Target {
    pub(super) fn of<'a>(factor: &TableFactor, others: impl IntoIterator<Item = &'a TableFactor>) -> Target {
        let mut target = Target {
            table: None,
            names: Vec::new(),
            same_table: Vec::new(),
            derived_same: Vec::new(),
            named: Vec::new(),
            mysql: false,
        };
        if let TableFactor::Table { name, alias, .. } = factor {
            target.table = object_name(name).map(|n| n.name);
            target.names.extend(target.table.clone());
            if let Some(a) = alias {
                target.names = vec![ident(&a.name)];
            }
        }
        for item in others {
            if addr(item) == addr(factor) {
                continue;
            }
            if let TableFactor::Table { name, alias, args: None, .. } = item
                && let Some(n) = object_name(name)
            {
                let qualifier = alias.as_ref().map_or(n.name.clone(), |a| ident(&a.name));
                if target.table.as_ref() == Some(&n.name) {
                    target.same_table.push(qualifier);
                } else if n.schema.is_none() {
                    target.named.push((n.name, qualifier));
                }
            }
            // A derived table that reads the target's table: its columns may be the target's
            // own (`JOIN (SELECT id FROM t) x ON t.id = x.id` is every row).
            if let TableFactor::Derived { subquery, alias: Some(a), .. } = item
                && let Some(table) = &target.table
                && reads_table(subquery, table)
            {
                target.derived_same.push(ident(&a.name));
            }
        }
        target
    }

    /// The same target, judged by MySQL's operators.
    pub(super) fn mysql(self) -> Target {
        Target { mysql: true, ..self }
    }
}

/// The last part of every relation name a query names.
fn relation_names(query: &Query) -> Vec<String> {
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> std::ops::ControlFlow<()> {
            if self.0.len() >= 256 {
                // Too many to keep: any table.
                self.0 = vec!["*".to_string()];
                return std::ops::ControlFlow::Break(());
            }
            if let Some(i) = relation.0.last().and_then(|p| p.as_ident()) {
                self.0.push(i.value.clone());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut names = Names(Vec::new());
    let _ = query.visit(&mut names);
    names.0
}

/// Whether a query names a relation called `table` anywhere (any schema, any case).
fn reads_table(query: &Query, table: &str) -> bool {
    struct Names<'a>(&'a str, bool);
    impl Visitor for Names<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> std::ops::ControlFlow<()> {
            if relation.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case(self.0)) {
                self.1 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut names = Names(table, false);
    let _ = query.visit(&mut names);
    names.1
}

/// The settings a condition on pg_settings limits an UPDATE to (`name = 'x' [AND ...]`, `name
/// IN ('x', 'y')`), collected into `names`; false if it does not limit it to literal names.
fn setting_names(condition: &Expr, names: &mut Vec<String>) -> bool {
    let is_name = |e: &Expr| match strip(e) {
        Expr::Identifier(i) => ident(i) == "name",
        Expr::CompoundIdentifier(parts) => parts.last().is_some_and(|i| ident(i) == "name"),
        _ => false,
    };
    let literal = |e: &Expr| match strip(e) {
        Expr::Value(v) => string_value(&v.value).map(str::to_string),
        _ => None,
    };
    match strip(condition) {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            // Either side limiting it is enough.
            let mut l = Vec::new();
            let mut r = Vec::new();
            match (setting_names(left, &mut l), setting_names(right, &mut r)) {
                (true, true) => names.extend(l.into_iter().filter(|n| r.contains(n))),
                (true, false) => names.extend(l),
                (false, true) => names.extend(r),
                (false, false) => return false,
            }
            true
        }
        Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
            let value = if is_name(left) {
                literal(right)
            } else if is_name(right) {
                literal(left)
            } else {
                None
            };
            value.map(|v| names.push(v)).is_some()
        }
        Expr::In { expr, target: ast::InTarget::List(list), negated: false, .. } if is_name(expr) => {
            list.iter().all(|e| literal(e).map(|v| names.push(v)).is_some())
        }
        _ => false,
    }
}

/// The table factors of FROM items, joined ones too.
fn factors<'a>(items: impl IntoIterator<Item = &'a ast::TableWithJoins>) -> impl Iterator<Item = &'a TableFactor> {
    items.into_iter().flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
}

/// (references the target's columns, does not narrow its rows), bottom-up over AND, OR and
/// NOT. A condition does not narrow when it is a constant; an OR with such a branch or with
/// complementary branches (`x IS NULL OR x IS NOT NULL`, `a = 1 OR a <> 1`, `p OR NOT p`); an
/// AND of such sides; a self-comparison (`x = x`, `"ID" = (id)`, `id = (SELECT t.id)`), or
/// the negation of a self-contradiction (`NOT (x <> x)`); a self-join on one column; `x IN
/// (SELECT x FROM target)`; a presence test (`x IS NOT NULL`: it names no rows, and on a key
/// it is every row); or a condition on other tables only (all rows or none).
pub(super) fn scope(e: &Expr, t: &Target) -> (bool, bool) {
    match e {
        Expr::Nested(inner) | Expr::IsTrue(inner) | Expr::IsNotFalse(inner) => scope(inner, t),
        Expr::BinaryOp { left, op: op @ (BinaryOperator::Or | BinaryOperator::And), right } => {
            let (lr, lu) = scope(left, t);
            let (rr, ru) = scope(right, t);
            let refs = lr || rr;
            let unscoped =
                !refs || if *op == BinaryOperator::Or { lu || ru || complementary(left, right, t) } else { lu && ru };
            (refs, unscoped)
        }
        Expr::UnaryOp { op: ast::UnaryOperator::Not, expr } | Expr::IsFalse(expr) | Expr::IsNotTrue(expr) => {
            let (refs, _) = scope(expr, t);
            (refs, !refs || contradiction(expr, t))
        }
        Expr::IsNotNull(x) if matches!(key(x, t), Key::Column(_)) => (true, true),
        // `ROW(x) IS NOT NULL`, `(x, y) IS NOT NULL`: the same presence test.
        Expr::IsNotNull(x) if row_of_columns(x, t) => (true, true),
        // `x IS DISTINCT FROM NULL` is `x IS NOT NULL`.
        Expr::IsDistinctFrom(a, b) if is_null(b) && matches!(key(a, t), Key::Column(_)) => (true, true),
        Expr::IsDistinctFrom(a, b) if is_null(a) && matches!(key(b, t), Key::Column(_)) => (true, true),
        Expr::In { expr, target: ast::InTarget::Subquery(subquery), negated: false, .. }
            if own_keys(expr, subquery, t) =>
        {
            (true, true)
        }
        // `x = ANY (SELECT x FROM target)` is `x IN (SELECT x FROM target)`.
        Expr::AnyOp { left, compare_op: BinaryOperator::Eq, right, .. } if matches!(strip(right), Expr::Subquery(q) if own_keys(left, q, t)) => {
            (true, true)
        }
        _ if tautology(e, t) => (true, true),
        _ => {
            let refs = references(e, t);
            (refs, !refs)
        }
    }
}

/// What an operand is, for comparing operands: a column of the target (however it is quoted,
/// qualified or wrapped in parentheses or `(SELECT ...)`), a column of another item, or an
/// expression (compared as parsed, spans aside).
#[derive(PartialEq)]
enum Key<'e> {
    Column(String),
    Qualified(String, String),
    Expr(&'e Expr),
}

fn key<'e>(e: &'e Expr, t: &Target) -> Key<'e> {
    match e {
        Expr::Nested(inner) => key(inner, t),
        Expr::Identifier(i) => Key::Column(ident(i)),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let (qualifier, column) = (ident(&parts[parts.len() - 2]), ident(&parts[parts.len() - 1]));
            if t.names.contains(&qualifier) { Key::Column(column) } else { Key::Qualified(qualifier, column) }
        }
        Expr::Subquery(q) => match trivial_select(q) {
            Some(inner) => key(inner, t),
            None => Key::Expr(e),
        },
        _ => Key::Expr(e),
    }
}

/// `(SELECT x)`: no FROM, no clauses, one expression.
fn trivial_select(q: &Query) -> Option<&Expr> {
    let SetExpr::Select(s) = q.body.as_ref() else { return None };
    let plain = q.with.is_none() && q.order_by.is_none() && q.limit_clause.is_none() && q.fetch.is_none();
    match s.projection.as_slice() {
        [ast::SelectItem::UnnamedExpr(x) | ast::SelectItem::ExprWithAlias { expr: x, .. }]
            if plain && s.from.is_empty() && s.selection.is_none() && s.having.is_none() =>
        {
            Some(x)
        }
        _ => None,
    }
}

fn same(a: &Expr, b: &Expr, t: &Target) -> bool {
    key(a, t) == key(b, t)
}

/// `NULL`, however parenthesised.
fn is_null(e: &Expr) -> bool {
    matches!(strip(e), Expr::Value(v) if matches!(v.value, ast::Value::Null))
}

/// `ROW(x, ...)` or `(x, ...)` of the target's columns only.
fn row_of_columns(e: &Expr, t: &Target) -> bool {
    let columns = |items: &[Expr]| !items.is_empty() && items.iter().all(|i| matches!(key(i, t), Key::Column(_)));
    match strip(e) {
        Expr::Tuple(items) => columns(items),
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("row") => match &f.args {
            FunctionArguments::List(list) => {
                let items: Vec<Expr> = list
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x.clone()),
                        _ => None,
                    })
                    .collect();
                items.len() == list.args.len() && columns(&items)
            }
            _ => false,
        },
        _ => false,
    }
}

/// True of every row (where its operands are not null): `x = x`, `x >= x`, a self-join, `x IN
/// (x, ...)`, `x BETWEEN x AND x`.
fn tautology(e: &Expr, t: &Target) -> bool {
    match e {
        Expr::In { expr, target: ast::InTarget::List(list), negated: false, .. } => {
            list.iter().any(|item| same(expr, item, t))
        }
        Expr::Between { expr, negated: false, low, high } => same(expr, low, t) && same(expr, high, t),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq | BinaryOperator::GtEq | BinaryOperator::LtEq | BinaryOperator::Spaceship,
            right,
        }
        | Expr::IsNotDistinctFrom(left, right) => {
            if matches!(e, Expr::BinaryOp { op: BinaryOperator::Spaceship, .. }) && !t.mysql {
                return false;
            }
            same(left, right, t) || {
                // `target.c = other.c` where other is the target's table again.
                let self_join = |a: &Key, b: &Key| match (a, b) {
                    (Key::Column(c), Key::Qualified(q, d)) => {
                        (c == d && t.same_table.contains(q)) || t.derived_same.contains(q)
                    }
                    _ => false,
                };
                let (l, r) = (key(left, t), key(right, t));
                self_join(&l, &r) || self_join(&r, &l)
            }
        }
        _ => false,
    }
}

/// False of every row: `x <> x`, `x < x`, `x IS DISTINCT FROM x`, and `x IS NULL` of a column
/// (on a key, no row: the lone presence test's reading).
fn contradiction(e: &Expr, t: &Target) -> bool {
    match e {
        Expr::Nested(inner) => contradiction(inner, t),
        Expr::IsNull(x) => matches!(key(x, t), Key::Column(_)),
        Expr::IsNotDistinctFrom(a, b) => {
            (is_null(b) && matches!(key(a, t), Key::Column(_))) || (is_null(a) && matches!(key(b, t), Key::Column(_)))
        }
        Expr::BinaryOp { left, op: BinaryOperator::NotEq | BinaryOperator::Lt | BinaryOperator::Gt, right }
        | Expr::IsDistinctFrom(left, right) => same(left, right, t),
        _ => false,
    }
}

/// Whether two OR branches cover every row between them.
fn complementary(a: &Expr, b: &Expr, t: &Target) -> bool {
    let (a, b) = (strip(a), strip(b));
    let opposite = |x: &BinaryOperator, y: &BinaryOperator| {
        use BinaryOperator::*;
        matches!((x, y), (Eq, NotEq) | (NotEq, Eq) | (Lt, GtEq) | (GtEq, Lt) | (Gt, LtEq) | (LtEq, Gt))
    };
    let mirrored = |x: &BinaryOperator| {
        use BinaryOperator::*;
        match x {
            Lt => Gt,
            Gt => Lt,
            LtEq => GtEq,
            GtEq => LtEq,
            other => other.clone(),
        }
    };
    match (a, b) {
        (Expr::IsNull(x), Expr::IsNotNull(y)) | (Expr::IsNotNull(x), Expr::IsNull(y)) => same(x, y, t),
        (Expr::UnaryOp { op: ast::UnaryOperator::Not, expr: x }, y)
        | (y, Expr::UnaryOp { op: ast::UnaryOperator::Not, expr: x }) => strip(x) == y,
        (Expr::BinaryOp { left: l1, op: o1, right: r1 }, Expr::BinaryOp { left: l2, op: o2, right: r2 }) => {
            (same(l1, l2, t) && same(r1, r2, t) && opposite(o1, o2))
                || (same(l1, r2, t) && same(r1, l2, t) && opposite(o1, &mirrored(o2)))
        }
        _ => false,
    }
}

/// An expression without its parentheses.
fn strip(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// `x IN (SELECT x FROM target)`: every row whose x is not null.
fn own_keys(x: &Expr, subquery: &Query, t: &Target) -> bool {
    let Key::Column(column) = key(x, t) else { return false };
    let SetExpr::Select(s) = subquery.body.as_ref() else { return false };
    let whole = subquery.with.is_none() && subquery.limit_clause.is_none() && subquery.fetch.is_none();
    let selects_column = match s.projection.as_slice() {
        [ast::SelectItem::UnnamedExpr(p)] => match p {
            Expr::Identifier(i) => ident(i) == column,
            Expr::CompoundIdentifier(parts) => parts.last().is_some_and(|i| ident(i) == column),
            _ => false,
        },
        _ => false,
    };
    let from_target = match s.from.as_slice() {
        [ast::TableWithJoins { relation: TableFactor::Table { name, args: None, .. }, joins }] => {
            joins.is_empty() && object_name(name).map(|n| n.name) == t.table
        }
        _ => false,
    };
    whole && selects_column && from_target && s.selection.is_none() && s.having.is_none()
}

/// `INSERT INTO t SELECT ... FROM t ... ON CONFLICT DO UPDATE`: the insert conflicts with every
/// row it read, so the update touches every row of the table.
fn upserts_every_row(insert: &ast::Insert, target: &ast::ObjectName) -> bool {
    let Some(ast::OnInsert::OnConflict(ast::OnConflict { action: ast::OnConflictAction::DoUpdate(update), .. })) =
        &insert.on
    else {
        return false;
    };
    let Some(source) = &insert.source else { return false };
    let SetExpr::Select(s) = source.body.as_ref() else { return false };
    let table = object_name(target).map(|n| n.name);
    let reads_target = match s.from.as_slice() {
        [ast::TableWithJoins { relation: TableFactor::Table { name, args: None, .. }, joins }] => {
            joins.is_empty() && object_name(name).map(|n| n.name) == table
        }
        _ => false,
    };
    reads_target
        && s.selection.is_none()
        && source.limit_clause.is_none()
        && update.selection.as_ref().is_none_or(|c| {
            !references(
                c,
                &Target {
                    table,
                    names: Vec::new(),
                    same_table: Vec::new(),
                    derived_same: Vec::new(),
                    named: Vec::new(),
                    mysql: false,
                },
            )
        })
}

/// Whether an expression references a column of the target: an unqualified column outside
/// subqueries, or one qualified by the target's name or alias anywhere (a column of another
/// table, as in `UPDATE t ... FROM u WHERE u.x = 1`, narrows nothing of the target; one of a
/// self-joined copy of the target may).
fn references(e: &Expr, t: &Target) -> bool {
    struct Refs<'a> {
        target: &'a Target,
        depth: usize,
    }
    impl Refs<'_> {
        fn qualified_by_target(&self, parts: &[Ident]) -> bool {
            parts.len() >= 2 && {
                let qualifier = ident(&parts[parts.len() - 2]);
                self.target.names.contains(&qualifier) || self.target.same_table.contains(&qualifier)
            }
        }
    }
    impl Visitor for Refs<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let found = match e {
                Expr::Identifier(_) => self.depth == 0,
                Expr::CompoundIdentifier(parts) => self.qualified_by_target(parts),
                Expr::CompoundFieldAccess { root, .. } => match root.as_ref() {
                    Expr::Identifier(_) => self.depth == 0,
                    Expr::CompoundIdentifier(parts) => self.qualified_by_target(parts),
                    _ => false,
                },
                _ => false,
            };
            if found { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    e.visit(&mut Refs { target: t, depth: 0 }).is_break()
}

/// Classes a statement sqlparser could not parse by its leading keywords.
pub(super) fn by_keywords(words: &[Word], error: &str) -> Found {
    let mut found = Found::default();
    let not_parsed = format!("not parsed: {error}");
    let kw = |i: usize| words.get(i).filter(|w| w.kind == TokenKind::Identifier).map(|w| w.text.to_ascii_lowercase());
    let first = kw(0).unwrap_or_default();
    let second = kw(1).unwrap_or_default();
    // Statements whose grammar holds no expression (no function call, no subquery can hide in
    // them): their keywords say all there is to say.
    match (first.as_str(), second.as_str()) {
        ("checkpoint", _) => found.add(Class::Admin, None),
        ("vacuum" | "analyze" | "cluster" | "reindex", _) => {
            found.add(Class::Admin, None);
            // REINDEX SCHEMA / DATABASE / SYSTEM name no relation.
            let schema_wide = first == "reindex"
                && words.iter().take(8).any(|w| w.is("schema") || w.is("database") || w.is("system"));
            if !schema_wide {
                names_after(&words[1..], &mut found);
            }
        }
        ("alter", "system") => found.add(Class::Admin, Some("ALTER SYSTEM changes the server's configuration".into())),
        ("security", "label") => found.add(Class::Ddl, None),
        ("fetch" | "move", _) => {
            found.add(Class::Read, None);
            match words.last().and_then(Word::name) {
                Some(cursor) if words.len() > 1 => found.fetches = Some(cursor),
                _ => found.add(Class::Unknown, Some(not_parsed)),
            }
        }
        ("prepare", "transaction") | ("commit" | "rollback", "prepared") => found.add(Class::Transaction, None),
        ("begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release", _) => {
            found.add(Class::Transaction, None)
        }
        ("reassign", _) => found.add(Class::Dcl, Some("REASSIGN OWNED changes the owner of objects".into())),
        ("drop", "owned") => {
            found.add(Class::Ddl, None);
            found.add(Class::Dcl, Some("DROP OWNED revokes privileges".into()));
        }
        ("lock", _) => found.add(Class::Admin, Some("LOCK takes table locks".into())),
        ("truncate", _) => found.add(Class::Ddl, Some("TRUNCATE removes all rows".into())),
        ("refresh", _) => found.add(Class::Admin, None),
        ("listen" | "unlisten" | "close" | "deallocate", _) => found.add(Class::Utility, None),
        ("notify", _) => found.add(Class::Write, Some("NOTIFY sends data to other sessions".into())),
        ("discard", _) => {
            found.add(Class::Session, None);
            if second == "all" {
                found.add(Class::Dcl, Some("DISCARD ALL resets the session authorization".into()));
            }
        }
        ("show", _) => found.add(Class::Session, None),
        ("set" | "reset", _) => setting_by_keywords(words, &mut found),
        ("table", _) => {
            // `TABLE [ONLY] name [*]` and nothing more is `SELECT * FROM name`.
            let mut rest = &words[1..];
            if rest.first().is_some_and(|w| w.is("only")) {
                rest = &rest[1..];
            }
            let (name, after) = qualified_name(rest);
            let done = after.is_empty() || (after.len() == 1 && after[0].text == "*");
            match name {
                Some(n) if done => {
                    found.add(Class::Read, None);
                    found.relation(n);
                }
                _ => found.add(Class::Unknown, Some(not_parsed)),
            }
        }
        ("load", _) => found.add(Class::Unknown, Some("LOAD loads a shared library into the server".into())),
        ("do", _) => found.add(Class::Unknown, Some("DO runs arbitrary procedural code".into())),
        ("call", _) => found.add(Class::Unknown, Some(format!("CALL runs procedural code; {not_parsed}"))),
        ("create" | "alter" | "drop" | "comment" | "import" | "grant" | "revoke", _) => {
            definition_by_keywords(words, &mut found);
            found.add(Class::Unknown, Some(not_parsed));
        }
        ("insert" | "update" | "delete" | "merge", _) => {
            found.add(Class::Write, None);
            found.add(Class::Unknown, Some(not_parsed));
        }
        _ => found.add(Class::Unknown, Some(not_parsed)),
    }
    found
}

/// SET / RESET, unparsed: a change of role, of the transaction, or of a setting.
fn setting_by_keywords(words: &[Word], found: &mut Found) {
    let mut i = 1;
    while words.get(i).is_some_and(|w| w.is("session") || w.is("local")) {
        if words[i].is("session") && words.get(i + 1).is_some_and(|w| w.is("authorization")) {
            found.add(Class::Dcl, Some("SET SESSION AUTHORIZATION changes the role the session acts as".into()));
            return;
        }
        i += 1;
    }
    let qualified = words.get(i + 1).is_some_and(|w| w.is_punct("."));
    match words.get(i) {
        Some(w) if w.is("transaction") || w.is("constraints") => found.add(Class::Transaction, None),
        Some(w)
            if !qualified
                && matches!(w.kind, TokenKind::Identifier | TokenKind::QuotedIdentifier { .. })
                && w.name().is_some_and(|n| functions::privileged_setting(&n)) =>
        {
            found.add(Class::Dcl, Some("a change of the role the session acts as".into()))
        }
        Some(w)
            if !qualified
                && matches!(w.kind, TokenKind::Identifier | TokenKind::QuotedIdentifier { .. })
                && w.name().is_some_and(|n| functions::superuser_setting(&n)) =>
        {
            found.add(Class::Admin, Some("a setting only a superuser may change".into()))
        }
        _ => found.add(Class::Session, None),
    }
}

/// CREATE / ALTER / DROP / COMMENT / IMPORT / GRANT / REVOKE, unparsed: the class the keywords
/// imply, and the relation a table-like object names.
fn definition_by_keywords(words: &[Word], found: &mut Found) {
    let first = &words[0];
    let object = words.iter().skip(1).find(|w| {
        !(w.is("or")
            || w.is("replace")
            || w.is("unique")
            || w.is("temp")
            || w.is("temporary")
            || w.is("unlogged")
            || w.is("materialized")
            || w.is("foreign")
            || w.is("global")
            || w.is("local")
            || w.is("recursive"))
    });
    let role = object.is_some_and(|w| w.is("role") || w.is("user") || w.is("group"));
    let mapping = words.iter().any(|w| w.is("mapping"));
    let default_privileges =
        words.get(1).is_some_and(|w| w.is("default")) && words.get(2).is_some_and(|w| w.is("privileges"));
    if first.is("grant") || first.is("revoke") || (role && !mapping) || default_privileges {
        found.add(Class::Dcl, None);
        return;
    }
    found.add(Class::Ddl, None);
    let pairs = words.windows(2);
    let privileges = mapping
        || words.iter().any(|w| w.is("authorization") || w.is("policy"))
        || pairs.clone().any(|p| (p[0].is("owner") && p[1].is("to")) || (p[0].is("security") && p[1].is("definer")))
        || pairs.clone().any(|p| p[0].is("level") && p[1].is("security"));
    if privileges {
        found.add(Class::Dcl, Some("changes owners, privileges or row-level security".into()));
    }
    if let Some(pos) = words.iter().position(|w| w.is("table") || w.is("sequence") || w.is("view") || w.is("index"))
        && !first.is("comment")
        && !first.is("grant")
    {
        let mut rest = &words[pos + 1..];
        while rest
            .first()
            .is_some_and(|w| w.is("if") || w.is("not") || w.is("exists") || w.is("concurrently") || w.is("only"))
        {
            rest = &rest[1..];
        }
        if let (Some(name), _) = qualified_name(rest) {
            found.relation(name);
        }
    }
}

/// Relations listed after VACUUM / ANALYZE / CLUSTER / REINDEX and their options.
fn names_after(mut words: &[Word], found: &mut Found) {
    const SKIP: &[&str] = &["full", "freeze", "verbose", "analyze", "concurrently", "index", "table", "using", "on"];
    while let Some(w) = words.first() {
        if w.is_punct("(") {
            // An option list or a column list: skip to its end.
            let mut depth = 0usize;
            let mut n = 0;
            for (i, w) in words.iter().enumerate() {
                if w.is_punct("(") {
                    depth += 1;
                } else if w.is_punct(")") {
                    depth -= 1;
                    if depth == 0 {
                        n = i + 1;
                        break;
                    }
                }
                n = i + 1;
            }
            words = &words[n..];
        } else if w.is_punct(",") || SKIP.iter().any(|k| w.is(k)) {
            words = &words[1..];
        } else {
            let (name, rest) = qualified_name(words);
            match name {
                Some(n) => found.relation(n),
                None => return,
            }
            words = rest;
        }
    }
}

/// A qualified name at the start of `words`, and what follows it.
pub(super) fn qualified_name(words: &[Word]) -> (Option<ObjectName>, &[Word]) {
    let mut parts = Vec::new();
    let mut i = 0;
    while let Some(part) = words.get(i).and_then(Word::name) {
        parts.push(part);
        if words.get(i + 1).is_some_and(|w| w.is_punct(".")) {
            i += 2;
        } else {
            i += 1;
            break;
        }
    }
    let Some((name, rest)) = parts.split_last() else { return (None, words) };
    (Some(ObjectName { schema: rest.last().cloned(), name: name.clone() }), &words[i.min(words.len())..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::*;

    /// An analysis under test, with the text it came from for messages.
    struct Check {
        text: String,
        a: Analysis,
    }

    fn check(text: &str) -> Check {
        Check { text: text.to_string(), a: analyse(text) }
    }

    impl Check {
        fn class(self, class: Class) -> Self {
            assert_eq!(self.a.class, class, "class of {:?}: {:#?}", self.text, self.a);
            assert_eq!(self.a.effects.primary(), Some(class), "{:?}", self.text);
            if class == Unknown {
                assert!(self.a.class_reason.is_some(), "an unknown always says why: {:?}", self.text);
            }
            self
        }

        /// Classes among the effects (besides the primary one).
        fn effects(self, classes: &[Class]) -> Self {
            for c in classes {
                assert!(self.a.effects.contains(*c), "{c} in the effects of {:?}: {:#?}", self.text, self.a);
            }
            self
        }

        fn not_effects(self, classes: &[Class]) -> Self {
            for c in classes {
                assert!(!self.a.effects.contains(*c), "{c} not in the effects of {:?}: {:#?}", self.text, self.a);
            }
            self
        }

        fn reason(self, part: &str) -> Self {
            let reason = self.a.class_reason.as_deref().unwrap_or_default();
            assert!(reason.contains(part), "reason of {:?} should say {part:?}: {:#?}", self.text, self.a);
            self
        }

        /// Exactly these relations, as displayed, in any order.
        fn relations(self, expected: &[&str]) -> Self {
            let mut got: Vec<String> = self.a.relations.iter().map(ToString::to_string).collect();
            let mut expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "relations of {:?}", self.text);
            self
        }

        fn functions(self, expected: &[&str]) -> Self {
            let mut got: Vec<String> = self.a.functions.iter().map(ToString::to_string).collect();
            let mut expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "functions of {:?}", self.text);
            self
        }

        fn unscoped(self, unscoped: bool) -> Self {
            assert_eq!(self.a.unscoped, unscoped, "unscoped of {:?}: {:#?}", self.text, self.a);
            self
        }

        fn prepares(self, name: Option<&str>) -> Self {
            assert_eq!(self.a.prepares.as_deref(), name, "prepares of {:?}", self.text);
            self
        }

        fn executes(self, name: Option<&str>) -> Self {
            assert_eq!(self.a.executes.as_deref(), name, "executes of {:?}", self.text);
            self
        }

        fn declares(self, name: Option<&str>) -> Self {
            assert_eq!(self.a.declares.as_deref(), name, "declares of {:?}", self.text);
            self
        }

        fn fetches(self, name: Option<&str>) -> Self {
            assert_eq!(self.a.fetches.as_deref(), name, "fetches of {:?}", self.text);
            self
        }
    }

    #[test]
    fn data_modifying_ctes_are_writes_wherever_they_hide() {
        check("WITH x AS (SELECT 1) DELETE FROM t")
            .class(Write)
            .relations(&["t"])
            .unscoped(true)
            .reason("inside a query");
        check("with d as (delete from orders returning *) select count(*) from d")
            .class(Write)
            .effects(&[Read])
            .relations(&["orders"])
            .functions(&["count"]);
        check("SELECT (WITH i AS (INSERT INTO log VALUES (1) RETURNING 1) SELECT 1 FROM i)")
            .class(Write)
            .relations(&["log"]);
        check("SELECT * FROM (WITH u AS (UPDATE t SET a = 1 WHERE id = 2 RETURNING *) SELECT * FROM u) s")
            .class(Write)
            .relations(&["t"])
            .unscoped(false);
        check(
            "WITH a AS (SELECT 1), b AS (WITH c AS (DELETE FROM deep RETURNING *) SELECT * FROM c) SELECT * FROM a, b",
        )
        .class(Write)
        .relations(&["deep"])
        .unscoped(true);
        check("SELECT * FROM t WHERE id IN (WITH m AS (MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE RETURNING t.id) SELECT * FROM m)")
            .effects(&[Write]);
        check("WITH /* comment */ x AS (SELECT 1)\n-- DELETE? no\nSELECT * FROM x").class(Read).relations(&[]);
        check("WITH x AS (INSERT INTO audit_log SELECT * FROM secrets RETURNING 1) SELECT 1")
            .class(Write)
            .relations(&["audit_log", "secrets"]);
        check("WITH src AS (SELECT 1 AS id) MERGE INTO t USING src ON t.id = src.id WHEN MATCHED THEN DELETE")
            .class(Write)
            .relations(&["t"])
            .unscoped(false);
    }

    #[test]
    fn cte_names_are_not_relations_where_they_are_in_scope() {
        check("WITH t AS (SELECT 1) SELECT * FROM t").class(Read).relations(&[]);
        check("WITH x AS (SELECT 1) SELECT * FROM X").relations(&[]);
        // A non-recursive CTE sees only the ones before it: `b` there is a table.
        check("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").relations(&["b"]);
        check("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").relations(&[]);
        // Inside its own (non-recursive) body a CTE's name is the table.
        check("WITH t AS (SELECT * FROM t) SELECT * FROM t").relations(&["t"]);
        check("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r")
            .class(Read)
            .relations(&[]);
        // DML targets are always tables.
        check("WITH t AS (SELECT 1) UPDATE t SET a = 1").class(Write).relations(&["t"]).unscoped(true);
        check("WITH x AS (SELECT 1) INSERT INTO x VALUES (1)").relations(&["x"]);
        check("WITH t AS (SELECT 1) SELECT * FROM public.t").relations(&["public.t"]);
        check("WITH \"T\" AS (SELECT 1) SELECT * FROM t").relations(&["t"]);
        check("WITH \"t\" AS (SELECT 1) SELECT * FROM T").relations(&[]);
        // A CTE is in scope in its query only.
        check("SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) q, s").relations(&["s"]);
        check("WITH s AS (SELECT 1) SELECT * FROM (SELECT * FROM s) q JOIN LATERAL (SELECT * FROM s) r ON true")
            .relations(&[]);
        check("WITH w AS (SELECT 1) SELECT 1 UNION TABLE w").relations(&[]);
        check("SELECT 1 UNION TABLE secret").class(Read).relations(&["secret"]);
    }

    #[test]
    fn select_into_and_row_locks() {
        check("SELECT * INTO newt FROM t").class(Ddl).reason("SELECT INTO").relations(&["newt", "t"]);
        check("select 1 into temp x").class(Ddl).relations(&["x"]);
        check("SELECT a INTO s.copy FROM t WHERE a > 1").class(Ddl).relations(&["s.copy", "t"]);
        check("SELECT * FROM t FOR UPDATE").class(Write).reason("locks rows").relations(&["t"]);
        check("SELECT * FROM t FOR NO KEY UPDATE OF t SKIP LOCKED").class(Write);
        check("select * from t for key share").class(Write);
        check("SELECT * FROM t FOR SHARE NOWAIT").class(Write);
        check("SELECT * FROM t for/**/no key/**/update").class(Write);
        check("SELECT * FROM (SELECT * FROM t FOR UPDATE) s").class(Write);
        check("SELECT * FROM t WHERE a IN (SELECT id FROM u FOR UPDATE)").class(Write).relations(&["t", "u"]);
        // Not a locking clause: words in a string, and FOR as a column alias.
        check("SELECT 'for update' FROM t").class(Read);
    }

    #[test]
    fn explain_runs_what_it_analyzes() {
        check("EXPLAIN (ANALYZE) DELETE FROM t").class(Write).unscoped(true).reason("EXPLAIN ANALYZE");
        check("EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM t").class(Write);
        check("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1").class(Write).unscoped(false);
        check("EXPLAIN ANALYZE VERBOSE UPDATE t SET a = 1").class(Write).unscoped(true);
        check("explain analyse delete from t").class(Write);
        check("EXPLAIN (FORMAT JSON, ANALYZE) INSERT INTO t VALUES (1)").class(Write);
        check("EXPLAIN (ANALYZE on) CREATE TABLE x AS SELECT 1").class(Ddl);
        check("EXPLAIN (ANALYZE false) DELETE FROM t").class(Read).unscoped(false).relations(&["t"]);
        check("EXPLAIN (ANALYZE off, VERBOSE) UPDATE t SET a = 1").class(Read).unscoped(false);
        check("EXPLAIN (ANALYZE 0) DELETE FROM t").class(Read);
        check("EXPLAIN DELETE FROM t").class(Read).not_effects(&[Write]);
        check("EXPLAIN /* ANALYZE */ DELETE FROM t").class(Read);
        // A normalised literal could have been `on`; a later ANALYZE overrides an earlier one.
        check("EXPLAIN (ANALYZE '?') DELETE FROM t").class(Write);
        check("EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM t").class(Write);
        // Planning evaluates functions of constants: only the built-in volatile ones are safe.
        check("EXPLAIN SELECT evil(1)").class(Unknown).reason("planning may evaluate it: calls evil");
        check("EXPLAIN SELECT '?'::mydomain").class(Unknown).reason("planning");
        check("EXPLAIN SELECT 1 OPERATOR(evil.+) 2").class(Unknown);
        check("EXPLAIN SELECT nextval('s')").class(Read).functions(&["nextval"]);
        check("EXPLAIN ANALYZE SELECT nextval('s')").class(Write).reason("changes a sequence");
        check("EXPLAIN ANALYZE SELECT * INTO x FROM t").class(Ddl);
        check("EXPLAIN EXECUTE p").class(Unknown).executes(Some("p"));
    }

    #[test]
    fn copy_by_direction_and_endpoint() {
        check("COPY t TO STDOUT").class(Read).relations(&["t"]);
        check("COPY public.t (a, b) TO STDOUT WITH (FORMAT csv)").class(Read).relations(&["public.t"]);
        check("COPY (SELECT * FROM t JOIN u USING (id)) TO STDOUT").class(Read).relations(&["t", "u"]);
        check("COPY (DELETE FROM t RETURNING *) TO STDOUT").class(Write).unscoped(true).reason("COPY");
        check("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT").class(Write);
        check("COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT").class(Unknown).reason("server files");
        check("COPY t FROM STDIN").class(Write).relations(&["t"]);
        check("copy t from program 'curl x'").class(Unknown).effects(&[Write]).reason("PROGRAM");
        check("COPY t TO PROGRAM 'gzip > /tmp/x'").class(Unknown).effects(&[Read]);
        check("COPY t TO '/tmp/x'").class(Unknown).reason("writes a file");
        check("COPY t FROM '/etc/passwd'").class(Unknown).effects(&[Write]).reason("reads a file");
        check("COPY t FROM '?'").class(Unknown).effects(&[Write]);
    }

    #[test]
    fn table_functions_are_calls() {
        check("SELECT * FROM pg_sleep(0)").class(Read).relations(&[]).functions(&["pg_sleep"]);
        check("SELECT * FROM generate_series(1, 10) g").class(Read).functions(&["generate_series"]).relations(&[]);
        check("SELECT * FROM dblink('x', 'select 1') AS t(a int)").class(Unknown).reason("other connections");
        check("SELECT * FROM public.dblink('x', 'y') AS t(a int)").class(Unknown).functions(&["public.dblink"]);
        check("SELECT * FROM t, LATERAL evil(t.a) e").class(Unknown).relations(&["t"]).functions(&["evil"]);
        check("SELECT * FROM unnest(array[1,2]) WITH ORDINALITY").class(Read).functions(&["unnest"]);
        check("SELECT * FROM lo_import('/etc/passwd')").class(Unknown).effects(&[Write]);
        check("SELECT * FROM pg_catalog.pg_ls_dir('.') d").class(Unknown).reason("reads server files");
        check("SELECT * FROM json_table('[]', '$' COLUMNS (a int PATH '$.a')) jt").class(Read);
        check("SELECT * FROM (VALUES (1)) v(a) JOIN LATERAL (SELECT * FROM u WHERE u.a = v.a) s ON true")
            .class(Read)
            .relations(&["u"]);
    }

    #[test]
    fn functions_by_name_schema_and_family() {
        check("SELECT lower(name), upper(name), length(name) FROM users").class(Read).relations(&["users"]);
        check("SELECT \"lower\"(name) FROM users").class(Read);
        check("SELECT LOWER(name) FROM users").class(Read).functions(&["lower"]);
        check("SELECT \"Lower\"(name) FROM users").class(Unknown).functions(&["\"Lower\""]);
        check("SELECT pg_catalog.lower(name) FROM users").class(Read).functions(&["pg_catalog.lower"]);
        check("SELECT myschema.lower(name) FROM users").class(Unknown).reason("myschema.lower");
        check("SELECT \"PG_CATALOG\".lower(x)").class(Unknown);
        check("SELECT public.nextval('s')").class(Unknown);
        check("SELECT nextval('s')").class(Write).reason("changes a sequence");
        check("SELECT setval('s', 1)").class(Write);
        check("SELECT currval('s'), lastval()").class(Read);
        check("SELECT lo_export(1, '/tmp/x')").class(Unknown).effects(&[Write]).reason("large objects");
        check("SELECT loread(lo_open(1, 262144), 10)").class(Unknown).effects(&[Write]);
        check("SELECT pg_read_file('/etc/passwd')").class(Unknown).reason("reads server files");
        check("SELECT pg_read_binary_file('x'), pg_stat_file('x')").class(Unknown);
        check("SELECT pg_terminate_backend(pid) FROM pg_stat_activity")
            .class(Admin)
            .relations(&["pg_stat_activity"])
            .reason("server processes");
        check("SELECT pg_cancel_backend(1), pg_reload_conf(), pg_rotate_logfile()").class(Admin);
        check("SELECT pg_advisory_lock(1)").class(Admin).reason("advisory");
        check("select pg_try_advisory_xact_lock(1)").class(Admin);
        check("SELECT pg_notify('c', 'x')").class(Write);
        check("SELECT dblink_exec('x', 'delete from t')").class(Unknown).reason("other connections");
        check("SELECT query_to_xml('select 1', true, true, '')").class(Unknown).reason("SQL given as a string");
        check("SELECT table_to_xml('t', true, true, '')").class(Unknown);
        check("SELECT pg_sleep(10)").class(Read);
        check("SELECT random(), clock_timestamp(), gen_random_uuid(), now(), current_user, version(), current_date")
            .class(Read);
        check("SELECT count(*), sum(a), string_agg(b, ','), row_number() OVER (ORDER BY a) FROM t").class(Read);
        check("SELECT coalesce(a, b), nullif(a, b), greatest(a, b), least(a, b) FROM t").class(Read);
        check("SELECT jsonb_build_object('a', a), to_char(now(), 'YYYY'), md5(b), array_agg(c) FROM t").class(Read);
        check("SELECT evil(1)").class(Unknown).reason("calls evil, not known to be read-only");
        check("SELECT a FROM t ORDER BY evil(a)").class(Unknown);
        check("SELECT a FROM t GROUP BY a HAVING evil(a) > 1").class(Unknown);
        check("SELECT count(*) FILTER (WHERE evil(a)) FROM t").class(Unknown);
        check("SELECT sum(a) OVER (PARTITION BY evil(b)) FROM t").class(Unknown);
        check("SELECT CASE WHEN a THEN evil() END FROM t").class(Unknown);
        check("VALUES (evil(1))").class(Unknown);
        check("SELECT * FROM t WHERE a IN (SELECT evil(b) FROM u)").class(Unknown).relations(&["t", "u"]);
        check("SELECT * FROM t LIMIT evil()").class(Unknown);
        check("SELECT f(a => 1)").class(Unknown);
        for hidden in [
            "SELECT * FROM t WHERE x = (SELECT pg_read_file('x'))",
            "SELECT * FROM t ORDER BY 1 LIMIT (SELECT evil())",
            "SELECT a FROM t GROUP BY GROUPING SETS ((evil(a)))",
            "SELECT a, sum(b) OVER w FROM t WINDOW w AS (ORDER BY evil(a))",
            "SELECT ARRAY[evil()], ROW(evil())",
            "SELECT * FROM t JOIN u ON evil(t.a, u.b)",
            "SELECT DISTINCT ON (evil(a)) a FROM t",
            "SELECT * FROM (VALUES (evil())) v",
            "SELECT a FROM t UNION SELECT evil()",
            "SELECT CAST(evil() AS int)",
            "SELECT a AT TIME ZONE evil() FROM t",
            "SELECT EXTRACT(epoch FROM evil()), SUBSTRING(evil() FROM 1), TRIM(evil())",
            "SELECT * FROM t TABLESAMPLE BERNOULLI (evil())",
            "SELECT string_agg(a, ',' ORDER BY evil(a)) FROM t",
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY evil(a)) FROM t",
            "SELECT a FROM t WHERE (a, b) IN (SELECT 1, evil())",
            "SELECT * FROM t CROSS JOIN LATERAL (SELECT evil(t.a)) x",
            "UPDATE t SET (a, b) = (SELECT evil(), 1) WHERE id = 1",
            "DELETE FROM t WHERE id = 1 RETURNING evil()",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 1 WHERE t.c = evil()",
            "MERGE INTO t USING (SELECT evil() id) s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
        ] {
            check(hidden).effects(&[Unknown]);
        }
        check("SELECT ARRAY(SELECT 1), (1,2), row(1,2)").class(Read);
        check("SELECT extract(year from now()), substring('x' from 1), position('a' in 'b'), trim(both 'x' from 'y')")
            .class(Read);
    }

    #[test]
    fn set_config_by_what_it_sets() {
        // A query that changes a setting: read outranks session, and both are effects.
        check("SELECT set_config('search_path', 'x', false)").class(Read).effects(&[Session]);
        check("SELECT set_config('role', 'admin', false)").class(Dcl).reason("role");
        check("SELECT pg_catalog.set_config('Session_Authorization', 'admin', false)").class(Dcl);
        // Normalised text: the name is gone, so it could be role.
        check("SELECT set_config('?', '?', false)").class(Dcl).effects(&[Session, Unknown]).reason("may be role");
        check("SELECT set_config(name, 'x', false) FROM t").class(Dcl).effects(&[Unknown]);
        check("SELECT set_config(lower('RO') || 'le', 'x', false)").class(Dcl);
        check("EXPLAIN SELECT set_config('role', 'admin', false)").class(Read);
    }

    #[test]
    fn lexical_disguises_change_nothing() {
        check("SELECT lower/**/(x) FROM t").class(Read).functions(&["lower"]);
        check("SELECT nextval/* hidden */('s')").class(Write);
        check("SELECT pg_catalog . nextval ('s')").class(Write);
        check("SELECT $$a$$ || nextval('s')").class(Write);
        check("SELECT $q$ ' $q$, nextval('s')").class(Write);
        check("SELECT 'pg_terminate_backend(1)'").class(Read);
        check("SELECT E'\\'', nextval('s')").class(Write);
        check("select x$a$, nextval('s') as y$a$ from t").class(Write).relations(&["t"]);
        check("SELECT 1 -- ; SELECT nextval('s')").class(Read);
        check("SELECT 1 /* /* */ , nextval('s') */").class(Read);
        check("SELECT 1 /* /* */ */ , nextval('s')").class(Write);
        check("SELECT 1 --x\r, nextval('s')").class(Write);
        check("SELECT 'a'\n'b', nextval('s')").class(Write);
        check("SeLeCt NeXtVaL('s')").class(Write);
        // U& identifiers are decoded as the server decodes them.
        check("SELECT count(*) FROM U&\"\\0061ccounts\"").class(Read).relations(&["accounts"]);
        check("SELECT count(*) FROM U&\"!0061ccounts\" UESCAPE '!'").class(Read).relations(&["accounts"]);
        check("DELETE FROM U&\"\\006Cedger\"").class(Write).relations(&["ledger"]).unscoped(true);
        check("SELECT U&\"\\+01F600\\D83D\\DE00\" FROM t").class(Read);
        check("SELECT * FROM U&\"\\0070g_read_file\"('x') f").class(Unknown).functions(&["pg_read_file"]);
        check("SELECT U&\"\\D83D\" FROM t").class(Unknown).reason("invalid Unicode escape");
        check("SELECT U&\"a\" UESCAPE '+' FROM t").class(Unknown);
        check("select * from t where a = 'it''s'").class(Read);
        check("SELECT é, \"a\"\"b\" FROM tëst JOIN \"Q\"\"x\" ON true")
            .class(Read)
            .relations(&["\"tëst\"", "\"Q\"\"x\""]);
        // Only ASCII letters fold (and a name that is not plain ASCII displays quoted).
        assert_eq!(analyse("SELECT * FROM ÉTÉ").relations[0], ObjectName::new(None, "ÉtÉ"));
    }

    #[test]
    fn operators_and_casts_must_be_built_in() {
        check("SELECT a !=- 1 FROM t").class(Unknown).reason("operator !=-");
        check("SELECT a <+> b FROM t").class(Unknown);
        check("SELECT a OPERATOR(pg_catalog.+) b FROM t").class(Read);
        check("SELECT a OPERATOR(evil.+) b FROM t").class(Unknown);
        check("SELECT a FROM t WHERE a SIMILAR TO b AND a ~ '?' AND a @> b AND a -> 'x' = b AND a ->> 'y' <> c")
            .class(Read);
        check(
            "SELECT a::int, b::text[], c::timestamp with time zone, d::regclass, e::numeric(10,2), f::\"char\" FROM t",
        )
        .class(Read);
        check("SELECT CAST(a AS pg_catalog.int4), a::double precision, a::interval day to second FROM t").class(Read);
        check("SELECT 'x'::mytype").class(Unknown).reason("casts to mytype");
        check("SELECT CAST(a AS public.mood) FROM t").class(Unknown);
        check("SELECT mytype '?'").class(Unknown);
        check("SELECT a::string FROM t").class(Unknown);
        check("SELECT a::mood[] FROM t").class(Unknown);
        check("SELECT interval '1 day', date '?', timestamp '?'").class(Read);
    }

    #[test]
    fn relations_are_normalised_and_deduplicated() {
        check("SELECT * FROM Public.Orders o JOIN \"CRM\".\"Customers\" c ON c.id = o.cid")
            .relations(&["public.orders", "\"CRM\".\"Customers\""]);
        check("SELECT * FROM db.s.t").relations(&["s.t"]);
        check("SELECT * FROM t AS a, t AS b, T").relations(&["t"]);
        check("SELECT * FROM ONLY t").relations(&["t"]);
        let long = "a".repeat(70);
        check(&format!("SELECT * FROM {long}")).relations(&[&long[..63]]);
        check("SELECT (SELECT max(a) FROM u), EXISTS (SELECT 1 FROM v) FROM t WHERE b = (SELECT min(b) FROM w)")
            .class(Read)
            .relations(&["t", "u", "v", "w"]);
        check("TABLE secret").class(Read).relations(&["secret"]);
        check("TABLE ONLY s.secret *").class(Read).relations(&["s.secret"]);
        check("SELECT o.id FROM public.orders o WHERE o.customer_id IN (SELECT id FROM crm.customers)")
            .relations(&["public.orders", "crm.customers"]);
    }

    #[test]
    fn dml_classes_and_scope() {
        check("UPDATE t SET a = (SELECT evil(b) FROM u) WHERE id = 1 RETURNING lower(a)")
            .class(Unknown)
            .effects(&[Write])
            .relations(&["t", "u"])
            .functions(&["evil", "lower"])
            .unscoped(false);
        check("UPDATE t SET a = 1").class(Write).unscoped(true);
        check("UPDATE t SET a = 1 WHERE true").unscoped(true);
        check("DELETE FROM t").class(Write).unscoped(true);
        check("DELETE FROM t WHERE 1=1").unscoped(true);
        check("DELETE FROM t WHERE 'a' = 'a'").unscoped(true);
        check("DELETE FROM t WHERE NOT false").unscoped(true);
        check("DELETE FROM t WHERE id = 5 OR true").unscoped(true);
        check("DELETE FROM t WHERE (id = 5 OR (1 = 1))").unscoped(true);
        check("DELETE FROM t WHERE id = id").unscoped(true);
        check("DELETE FROM t WHERE $1").unscoped(true);
        check("DELETE FROM t WHERE (SELECT count(*) FROM u) > 0").unscoped(true);
        check("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.flag)").unscoped(true);
        check("UPDATE t SET a = 1 FROM u WHERE u.x = 1").unscoped(true).relations(&["t", "u"]);
        check("DELETE FROM t WHERE (id = 5) AND true").unscoped(false);
        check("DELETE FROM t WHERE id = 5").unscoped(false);
        check("DELETE FROM t WHERE id = $1").unscoped(false);
        check("DELETE FROM t WHERE CURRENT OF c").class(Write).unscoped(false).relations(&["t"]);
        check("UPDATE t SET a = 1 WHERE CURRENT OF c RETURNING *").class(Write).unscoped(false);
        check("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)").unscoped(false);
        check("DELETE FROM t AS x WHERE EXISTS (SELECT 1 FROM u WHERE u.id = x.id)").unscoped(false);
        check("DELETE FROM t USING u WHERE t.id = u.id").unscoped(false).relations(&["t", "u"]);
        // A derived table over the target's own table: equating with its columns holds for every row.
        check("DELETE FROM t USING (SELECT id FROM t) d WHERE t.id = d.id").unscoped(true);
        check("UPDATE t SET a = 1 FROM (SELECT id AS k FROM s.t) d WHERE d.k = t.id").unscoped(true);
        check("DELETE FROM t USING (SELECT id FROM u) d WHERE t.id = d.id").unscoped(false);
        check("WITH d AS (SELECT id FROM t) DELETE FROM t USING d WHERE t.id = d.id").unscoped(true);
        check("WITH d AS (SELECT id FROM u) DELETE FROM t USING d WHERE t.id = d.id").unscoped(false);
        check("UPDATE s.t SET a = 1 WHERE s.t.id = 1").unscoped(false).relations(&["s.t"]);
        check("MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE").class(Write).unscoped(true);
        check("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = evil(u.a)")
            .class(Unknown)
            .effects(&[Write])
            .unscoped(false);
        check("INSERT INTO t SELECT * FROM secret").class(Write).relations(&["t", "secret"]).unscoped(false);
        check("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a").class(Write).unscoped(false);
        check("INSERT INTO t (a) VALUES (nextval('s'))").class(Write);
        check("INSERT INTO t DEFAULT VALUES RETURNING evil(id)").class(Unknown).effects(&[Write]);
    }

    #[test]
    fn unscoped_tautologies_self_joins_and_presence_tests() {
        for text in [
            "DELETE FROM ledger WHERE \"id\" = id",
            "DELETE FROM ledger WHERE ID = id",
            "DELETE FROM ledger WHERE id = (id)",
            "DELETE FROM ledger WHERE id = (SELECT ledger.id)",
            "DELETE FROM ledger l WHERE l.id >= (((l.id)))",
            "DELETE FROM ledger WHERE NOT (id <> id)",
            "DELETE FROM ledger WHERE (id = id) IS NOT FALSE",
            "DELETE FROM ledger WHERE (id < id) IS FALSE",
            "DELETE FROM ledger WHERE memo IS NULL OR memo IS NOT NULL",
            "UPDATE ledger SET amount = 0 WHERE id = 1 OR id <> 1",
            "UPDATE ledger SET amount = 0 WHERE id < 5 OR 5 <= id",
            "UPDATE ledger SET amount = 0 WHERE (flag) OR NOT flag",
            "DELETE FROM ledger WHERE id IS NOT NULL",
            "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger)",
            "DELETE FROM ledger USING ledger l2 WHERE ledger.id = l2.id",
            "UPDATE ledger SET amount = 0 FROM ledger AS other WHERE other.account_id = ledger.account_id",
            "MERGE INTO ledger l USING ledger s ON l.id = s.id WHEN MATCHED THEN DELETE",
            "INSERT INTO ledger SELECT id, account_id, 0, memo FROM ledger ON CONFLICT (id) DO UPDATE SET amount = excluded.amount",
        ] {
            check(text).effects(&[Write]).unscoped(true);
        }
        for text in [
            "DELETE FROM ledger WHERE id = 1 OR id = 2",
            "DELETE FROM ledger WHERE id = 1 AND id <> 2",
            "DELETE FROM ledger WHERE memo IS NULL",
            "DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE amount < 0)",
            "DELETE FROM ledger WHERE id IN (SELECT ledger_id FROM refunds)",
            "DELETE FROM ledger USING refunds r WHERE ledger.id = r.id",
            "DELETE FROM ledger USING ledger l2 WHERE ledger.id = l2.id AND l2.amount < 0",
            "MERGE INTO ledger l USING refunds s ON l.id = s.id WHEN MATCHED THEN DELETE",
            "INSERT INTO ledger SELECT * FROM staging ON CONFLICT (id) DO UPDATE SET amount = excluded.amount",
            "INSERT INTO ledger SELECT * FROM ledger WHERE id = 3 ON CONFLICT (id) DO UPDATE SET amount = 0",
            "INSERT INTO ledger SELECT * FROM ledger ON CONFLICT DO NOTHING",
        ] {
            check(text).effects(&[Write]).unscoped(false);
        }
    }

    #[test]
    fn catalog_writes_and_file_reading_views() {
        check("UPDATE pg_authid SET rolsuper = true WHERE rolname = 'x'").class(Dcl).effects(&[Ddl, Write]);
        check("UPDATE pg_catalog.pg_class SET relname = relname WHERE relname = 'ledger'")
            .class(Ddl)
            .reason("system catalog");
        check("UPDATE pg_class SET relacl = NULL WHERE relname = 'accounts'").class(Dcl);
        check("UPDATE pg_catalog.pg_proc SET prosecdef = true WHERE proname = 'bump'").class(Dcl);
        check("UPDATE pg_proc SET prosrc = 'SELECT 1' WHERE proname = 'bump'").class(Ddl);
        check("DELETE FROM pg_description WHERE description = 'x'").class(Ddl);
        check("INSERT INTO pg_catalog.pg_class SELECT * FROM pg_class").class(Dcl);
        check("UPDATE pg_settings SET setting = 'x' WHERE name = 'role'").class(Dcl).effects(&[Session]);
        check("UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'").class(Write).effects(&[Session]);
        check("UPDATE pg_settings SET setting = 'x' WHERE name IN ('work_mem', 'ROLE')").class(Dcl);
        check("UPDATE pg_settings SET setting = 'x' WHERE name = 'work_mem' OR name = 'role'").class(Dcl);
        check("UPDATE pg_settings SET setting = 'x' WHERE lower(name) = 'role'").class(Dcl);
        check("UPDATE pg_settings SET setting = 'x' WHERE name = '?'").class(Dcl);
        let normalised = |text: &str| analyse(&super::super::normalise_for_analysis(text));
        assert_eq!(
            normalised("update pg_catalog.pg_settings set setting = 'x' where name = 'search_path'").class,
            Write
        );
        assert_eq!(normalised("update pg_settings set setting = 'x' where name = 'role'").class, Dcl);
        check("UPDATE myschema.pg_class SET a = 1 WHERE id = 1").class(Write);
        check("SELECT name, setting FROM pg_file_settings").class(Unknown).reason("reads server files");
        check("SELECT count(*) FROM pg_hba_file_rules").class(Unknown);
        check("SELECT count(*) FROM pg_catalog.pg_ident_file_mappings").class(Unknown);
        check("SELECT * FROM pg_settings, pg_stat_activity").class(Read);
    }

    #[test]
    fn column_definition_lists_and_parameter_types_are_casts() {
        check("SELECT x FROM json_to_record('{}') AS t(x audited_int)").class(Unknown).reason("audited_int");
        check("SELECT * FROM jsonb_to_recordset('[]') AS t(x int, y text)").class(Read);
        check("SELECT * FROM xmltable('/r' PASSING '<r/>' COLUMNS x audited_int PATH 'x')").class(Unknown);
        check("SELECT * FROM xmltable('/r' PASSING '<r/>' COLUMNS x int PATH 'x')").class(Read);
        check("PREPARE d(audited_int) AS SELECT $1").class(Unknown).prepares(Some("d"));
        check("PREPARE d(int, text[]) AS SELECT $1, $2").class(Read).prepares(Some("d"));
    }

    #[test]
    fn rows_from_and_unterminated_texts() {
        check("SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3)) AS r(a, b)")
            .class(Read)
            .functions(&["generate_series"]);
        check("SELECT * FROM t, ROWS FROM (evil(t.a)) AS r(x)").class(Unknown).relations(&["t"]);
        check("SELECT rows FROM (SELECT 1 AS rows) s").class(Read);
        check("SELECT 1 /* a /* b */; DELETE FROM ledger").class(Unknown).reason("unterminated comment");
        check("SELECT 1; SELECT 'abc").class(Unknown).reason("unterminated string");
        check("SELECT $a$ x").class(Unknown);
        check("SELECT \"abc").class(Unknown);
        // PostgreSQL continues a literal across a newline, `--` comments included (checked
        // on PostgreSQL 15: `SELECT 'a' -- c` newline `'b'` is 'ab').
        check("SELECT 'a' -- c\n'; DELETE FROM ledger; --' AS s").class(Read).relations(&[]);
    }

    #[test]
    fn definitions_and_privileges() {
        check("CREATE TABLE t (a int DEFAULT nextval('s'), b text CHECK (evil(b)))")
            .class(Ddl)
            .effects(&[Write, Unknown])
            .relations(&["t"])
            .functions(&["nextval", "evil"]);
        check("CREATE TABLE t AS SELECT * FROM u").class(Ddl).relations(&["t", "u"]);
        check("CREATE TABLE p PARTITION OF t FOR VALUES IN (1)").class(Ddl).relations(&["p", "t"]);
        check("CREATE TABLE t2 (a int REFERENCES u (id), b int, FOREIGN KEY (b) REFERENCES s.v (id)) INHERITS (t)")
            .class(Ddl)
            .relations(&["t2", "u", "s.v", "t"]);
        check("ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES u (id)").class(Ddl).relations(&["t", "u"]);
        check("ALTER TABLE t ALTER COLUMN a TYPE int USING evil(a)").class(Ddl).effects(&[Unknown]);
        check("CREATE TABLE t (a int GENERATED ALWAYS AS (evil()) STORED)").class(Ddl).effects(&[Unknown]);
        check("CREATE INDEX ON t (a) WHERE evil(a)").class(Ddl).effects(&[Unknown]).relations(&["t"]);
        check("CREATE INDEX CONCURRENTLY i ON t (lower(a))").class(Ddl).relations(&["i", "t"]);
        check("CREATE VIEW v AS SELECT * FROM u").class(Ddl).relations(&["v", "u"]);
        check("CREATE MATERIALIZED VIEW m AS SELECT evil()").class(Ddl).effects(&[Unknown]);
        check("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()")
            .class(Ddl)
            .relations(&["t"])
            .functions(&[]);
        check("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING").class(Ddl).relations(&["t"]);
        check("CREATE POLICY p ON t USING (true)").class(Dcl).effects(&[Ddl]).relations(&["t"]);
        check("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS '?'").class(Ddl);
        check("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS '?'").class(Dcl).effects(&[Ddl]);
        check("CREATE PROCEDURE p() LANGUAGE sql AS $$ delete from t $$").class(Ddl).effects(&[Unknown]);
        check("ALTER FUNCTION f() SECURITY DEFINER").class(Dcl).reason("SECURITY DEFINER");
        check("ALTER FUNCTION f() OWNER TO postgres").class(Dcl);
        check("ALTER FUNCTION f() IMMUTABLE").class(Ddl);
        check("ALTER TABLE t OWNER TO bob").class(Dcl).relations(&["t"]);
        check("ALTER TABLE t DISABLE ROW LEVEL SECURITY").class(Dcl).reason("row-level security");
        check("ALTER TABLE t ADD COLUMN c int DEFAULT evil()").class(Ddl).effects(&[Unknown]);
        check("ALTER TABLE IF EXISTS s.t RENAME TO u").class(Ddl).relations(&["s.t"]);
        check("ALTER SEQUENCE s RESTART").class(Ddl).effects(&[Unknown]).relations(&["s"]);
        check("ALTER SCHEMA s OWNER TO bob").class(Dcl);
        check("CREATE EXTENSION dblink").class(Ddl);
        check("CREATE TYPE mood AS ENUM ('a', 'b')").class(Ddl);
        check("CREATE SCHEMA s AUTHORIZATION bob").class(Dcl).effects(&[Ddl]);
        check("CREATE SEQUENCE s").class(Ddl).relations(&["s"]);
        check("CREATE DATABASE d").class(Ddl);
        check("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()").class(Ddl).effects(&[Unknown]);
        check("DROP TABLE t, s.u CASCADE").class(Ddl).relations(&["t", "s.u"]);
        check("DROP INDEX i").class(Ddl).relations(&["i"]);
        check("DROP FUNCTION f(int)").class(Ddl).functions(&[]).relations(&[]);
        check("DROP SCHEMA s CASCADE").class(Ddl).relations(&[]);
        check("TRUNCATE t, u").class(Ddl).relations(&["t", "u"]).reason("removes all rows");
        check("COMMENT ON TABLE t IS '?'").class(Ddl).relations(&["t"]);
        check("COMMENT ON COLUMN s.t.c IS '?'").class(Ddl).relations(&["s.t"]);
        check("SECURITY LABEL ON TABLE t IS '?'").class(Ddl);
        check("DROP OWNED BY bob").class(Dcl).effects(&[Ddl]);
        check("REASSIGN OWNED BY bob TO alice").class(Dcl);
        check("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob").class(Dcl);
        check("GRANT SELECT ON t TO bob").class(Dcl).relations(&["t"]);
        check("REVOKE ALL ON t FROM bob").class(Dcl).relations(&["t"]);
        check("GRANT admin TO bob").class(Dcl);
        check("CREATE ROLE bob LOGIN SUPERUSER").class(Dcl);
        check("CREATE USER bob").class(Dcl);
        check("ALTER USER bob SUPERUSER").class(Dcl);
        check("ALTER ROLE bob SET search_path = x").class(Dcl);
        check("DROP ROLE bob").class(Dcl);
        check("CREATE USER MAPPING FOR bob SERVER s").class(Dcl).effects(&[Ddl]);
        check("ALTER SYSTEM SET work_mem = '?'").class(Admin);
    }

    #[test]
    fn session_settings_and_roles() {
        check("SET ROLE bob").class(Dcl);
        check("RESET ROLE").class(Dcl);
        check("SET SESSION AUTHORIZATION bob").class(Dcl);
        check("SET role = 'bob'").class(Dcl);
        check("SET session_authorization TO 'bob'").class(Dcl);
        check("SET \"ROLE\" TO bob").class(Dcl);
        check("set local role none").class(Dcl);
        check("RESET SESSION AUTHORIZATION").class(Dcl);
        check("RESET session_authorization").class(Dcl);
        check("SET search_path TO a, b").class(Session);
        check("SET standard_conforming_strings = off").class(Session);
        check("SET LOCAL statement_timeout = '?'").class(Session);
        check("SET TIME ZONE 'UTC'").class(Session);
        check("SET myapp.role = 'x'").class(Session);
        check("SHOW search_path").class(Session);
        check("RESET ALL").class(Session);
        check("DISCARD PLANS").class(Session);
        check("DISCARD ALL").class(Dcl).effects(&[Session]).reason("session authorization");
        check("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").class(Transaction);
        check("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").class(Session);
    }

    #[test]
    fn transactions_admin_and_utility() {
        for text in [
            "BEGIN",
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "END",
            "ABORT",
            "ROLLBACK",
            "ROLLBACK TO SAVEPOINT a",
            "SAVEPOINT a",
            "RELEASE a",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
        ] {
            check(text).class(Transaction);
        }
        check("LOCK TABLE t IN ACCESS EXCLUSIVE MODE").class(Admin).relations(&["t"]);
        check("VACUUM FULL t").class(Admin).relations(&["t"]);
        check("VACUUM (FULL, ANALYZE) t, u (a)").class(Admin).relations(&["t", "u"]);
        check("ANALYZE t").class(Admin).relations(&["t"]);
        check("CLUSTER t USING i").class(Admin).relations(&["t", "i"]);
        check("REINDEX TABLE CONCURRENTLY t").class(Admin).relations(&["t"]);
        check("REINDEX DATABASE d").class(Admin).relations(&[]);
        check("CHECKPOINT").class(Admin);
        check("REFRESH MATERIALIZED VIEW CONCURRENTLY m").class(Admin).relations(&["m"]);
        check("LISTEN c").class(Utility);
        check("UNLISTEN *").class(Utility);
        check("NOTIFY c, 'x'").class(Write).reason("other sessions");
        check("LOAD 'x'").class(Unknown).reason("shared library");
        check("DO $$ BEGIN PERFORM 1; END $$").class(Unknown);
        check("/* x */ DO '?'").class(Unknown).reason("DO");
        check("CALL p(1)").class(Unknown).functions(&["p"]).reason("procedural");
        check("CALL p(nextval('s'))").class(Unknown).effects(&[Write]);
    }

    #[test]
    fn session_objects_are_named_for_the_caller() {
        check("PREPARE p AS DELETE FROM t").class(Write).prepares(Some("p")).unscoped(true).reason("PREPARE");
        check("PREPARE P (int) AS SELECT * FROM t WHERE id = $1").class(Read).prepares(Some("p"));
        check("prepare \"Q\" as select 1").prepares(Some("Q"));
        check("PREPARE p AS SELECT evil()").class(Unknown).prepares(Some("p"));
        check("EXECUTE p(1)").class(Unknown).executes(Some("p")).reason("EXECUTE of prepared statement p");
        check("EXECUTE \"P\"").executes(Some("P"));
        check("EXECUTE p(1, '?', $1, '?'::int)").class(Unknown).executes(Some("p"));
        // Its own effects would be lost when the caller substitutes the body: not named.
        check("EXECUTE p(pg_terminate_backend(1))").class(Unknown).effects(&[Admin]).executes(None).reason("computed");
        check("EXECUTE p((SELECT secret FROM t))").class(Unknown).executes(None).relations(&["t"]);
        check("DECLARE c CURSOR FOR SELECT * FROM t").class(Read).declares(Some("c")).relations(&["t"]);
        check("DECLARE c CURSOR WITH HOLD FOR SELECT evil()").class(Unknown).declares(Some("c"));
        check("DECLARE c SCROLL CURSOR FOR SELECT * FROM t FOR UPDATE").class(Write).declares(Some("c"));
        check("FETCH 10 FROM c").class(Read).fetches(Some("c"));
        check("FETCH ALL IN c").fetches(Some("c"));
        check("FETCH NEXT c").class(Read).fetches(Some("c"));
        check("FETCH FORWARD 5 FROM c").fetches(Some("c"));
        check("FETCH '?' FROM \"C\"").fetches(Some("C"));
        check("MOVE c").class(Read).fetches(Some("c"));
        check("MOVE ABSOLUTE '?' IN cur").fetches(Some("cur"));
        check("MOVE NEXT FROM C$1").fetches(Some("c$1"));
        check("CLOSE c").class(Utility);
        check("CLOSE ALL").class(Utility);
        check("DEALLOCATE p").class(Utility);
        // Several statements: whose object the caller should substitute is not one answer.
        check("EXECUTE p; SELECT 1").class(Unknown).executes(None);
        check("PREPARE p AS SELECT 1; EXECUTE p").class(Unknown).prepares(None).executes(None);
        check("PREPARE p AS DELETE FROM t; SELECT 1").class(Write).prepares(None);
    }

    #[test]
    fn what_does_not_parse_is_unknown_or_its_keywords_class() {
        check("SELECT FROM WHERE").class(Unknown).reason("not parsed");
        check("SELECT * FROM ROWS FROM (f(), g())").class(Unknown);
        check("SELECT xmlelement(name foo)").class(Unknown);
        check("SHOW TABLES").class(Unknown);
        check("DESCRIBE t").class(Unknown);
        check("").class(Utility);
        check("  ;  ").class(Utility);
        check("/* only a comment */").class(Utility);
        check("SELECT 1; SELECT 2").class(Read);
        check("SELECT 1; DELETE FROM t; SELECT 2").class(Write).unscoped(true);
        check("INSERT INTO t VALUES (1) garbage").class(Unknown).effects(&[Write]);
        check("TABLE t ORDER BY evil(a)").class(Unknown);
        check("éé").class(Unknown);
    }

    #[test]
    fn normalised_text_is_analysed_as_the_original() {
        // The caches analyse normalised text: every literal is '?', numbers too.
        for text in [
            "select x::varchar(255), y::numeric(10, 2) from t limit 10 offset 5",
            "select * from t tablesample system (10) repeatable (1)",
            "create table t (a varchar(10) default 'x', b numeric(5,2) default nextval('s'))",
            "select x::timestamp(3), '1'::bit(3) from t where a = 'it''s'",
            "delete from t where id = 42 or 1 = 1",
            "update t set a = E'\\'' where id = 1",
            "select $$x$$, nextval('s') from t",
            "vacuum (parallel 4) t",
            "fetch 10 from c",
            "copy t from '/etc/passwd'",
            "set role = 'admin'",
        ] {
            let raw = analyse(text);
            let normalised = analyse(&super::super::normalise_for_analysis(text));
            assert_eq!(
                (raw.class, raw.effects, raw.unscoped, &raw.relations, &raw.functions),
                (
                    normalised.class,
                    normalised.effects,
                    normalised.unscoped,
                    &normalised.relations,
                    &normalised.functions
                ),
                "{text:?}"
            );
        }
        // Where a literal's value decides the class, its placeholder reads the cautious way.
        // What decides a class is kept by normalisation: EXPLAIN's options, set_config's name.
        let normalised = |text: &str| analyse(&super::super::normalise_for_analysis(text));
        assert_eq!(normalised("explain (analyze 0, costs off) delete from t").class, Read);
        assert_eq!(normalised("explain (analyze 'no') delete from t").class, Read);
        assert_eq!(normalised("explain (analyze 'yes') delete from t where id = 7").class, Write);
        assert_eq!(normalised("select set_config('work_mem', '8MB', true)").effects, ClassSet::of(&[Read, Session]));
        assert_eq!(normalised("select pg_catalog.set_config('ROLE', 'x', false)").class, Dcl);
        // Kept literals lex alike under either standard_conforming_strings: none with a backslash.
        let off = crate::sql::LexOptions::postgres(false);
        let hidden = "select set_config('a\\' /* ', 'x', false), pg_terminate_backend(1) -- */";
        let analysed = analyse(&super::super::normalise_for_analysis_with_options(hidden, off));
        assert!(analysed.effects.contains(Admin), "{analysed:?}");
        // An unterminated literal stays unterminated.
        assert_eq!(normalised("select 1; select 'abc").class, Unknown);
    }

    #[test]
    fn every_input_is_analysed_without_panic_and_consistently() {
        const FRAGMENTS: &[&str] = &[
            "select",
            "with",
            "x",
            "as",
            "(",
            ")",
            "delete",
            "from",
            "t",
            "where",
            "update",
            "set",
            "=",
            "1",
            "'?'",
            ",",
            "insert",
            "into",
            "values",
            "explain",
            "analyze",
            "copy",
            "to",
            "stdout",
            "for",
            "key",
            "share",
            "current",
            "of",
            "lateral",
            "f(",
            "nextval(",
            "::",
            "int",
            "\"q\"",
            "$1",
            "--c\n",
            "/*c*/",
            ";",
            "union",
            "table",
            "only",
            "returning",
            "*",
            "or",
            "true",
            "not",
            "exists",
            "prepare",
            "execute",
            "fetch",
            "move",
            "declare",
            "cursor",
            "set",
            "role",
            "vacuum",
            "create",
            "drop",
            "grant",
            "merge",
            "using",
            "on",
            "$$x$$",
            "U&\"a\"",
            "x$a$",
            "!=-",
            "[",
            "]",
            ".",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..3000 {
            let len = 1 + next(24);
            let text: Vec<&str> = (0..len).map(|_| FRAGMENTS[next(FRAGMENTS.len())]).collect();
            let text = text.join(" ");
            let a = analyse(&text);
            assert_eq!(a.effects.primary(), Some(a.class), "{text:?}: {a:?}");
            if a.class == Unknown {
                assert!(a.class_reason.is_some(), "{text:?}");
            }
        }
    }

    #[test]
    fn nesting_and_width_stay_cheap() {
        // Past sqlparser's recursion limit: unknown, not a stack overflow.
        let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
        check(&deep).class(Unknown);
        let subqueries = format!("SELECT {}1{}", "(SELECT ".repeat(500), ")".repeat(500));
        check(&subqueries).class(Unknown);
        // Many CTEs and references: linear bookkeeping (hash lookups, not scans).
        let ctes: Vec<String> = (0..5_000).map(|i| format!("c{i} AS (SELECT a FROM t{i})")).collect();
        let refs: Vec<String> = (0..5_000).map(|i| format!("c{i}")).collect();
        let text = format!("WITH {} SELECT 1 FROM {}", ctes.join(", "), refs.join(", "));
        let started = std::time::Instant::now();
        let a = analyse(&text);
        assert_eq!(a.class, Read, "{:?}", a.class_reason);
        assert_eq!(a.relations.len(), 5_000, "t0..t4999, and no CTE name");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        // An OR chain as long as allowed is judged bottom-up once.
        let chain = format!("DELETE FROM t WHERE {} OR true", vec!["id = 1"; 900].join(" OR "));
        check(&chain).unscoped(true);
    }
}
