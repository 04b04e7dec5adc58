//! What a MySQL / MariaDB statement does: the MySQL side of `classify`, sharing its findings
//! (`Found`) and its walker over sqlparser's tree (parsed with `MySqlDialect`), with MySQL's
//! own statements, functions and names.
//!
//! How a text is read, and why:
//! - Statements are split by MySQL's lexical rules (`mysql_lexer`), each analysed alone. The
//!   server parses and runs a multi-statement text one statement at a time, so a statement
//!   that does not lex (an unterminated string or comment) is `unknown` alone.
//! - sqlparser is given a canonical text rebuilt from MySQL's tokens: comments become spaces,
//!   the content of executable comments stays as code (the server runs it), literals other than
//!   simple `'...'` become `'?'`, quoted identifiers are re-quoted with backticks, charset
//!   introducers (`_utf8mb4'x'`) are dropped. So sqlparser's lexer never decides where a string
//!   or comment ends, nor what `"x"` is under ANSI_QUOTES.
//! - Statements MySQL has and sqlparser lacks, or parses as another dialect's, are classed from
//!   their leading keywords (LOAD DATA, HANDLER, PREPARE ... FROM, INSTALL PLUGIN, SHOW, ...);
//!   `SELECT ... INTO OUTFILE/DUMPFILE` is found in the tokens, wherever it is.
//! - An executable comment whose running depends on the server's version (`/*!80000`,
//!   `/*M!`) makes the statement `unknown`: which server runs it is not known here.
//! - Names: databases and tables keep their case (case-sensitive on Linux servers, the
//!   default `lower_case_table_names = 0`); function names are folded to lower case (MySQL's are
//!   case-insensitive); identifiers are not cut (MySQL rejects long ones instead).

use sqlparser::{
    ast::{self, Statement, Visit},
    dialect::MySqlDialect,
    parser::Parser,
};

use super::{
    Analysis, Class, Dialect, LexOptions, Lexer, ObjectName, StringKind, TokenKind,
    classify::{Found, Frame, Kind, Lookup, MAX_ANALYSED, Walker, Word, by_keywords},
    functions::Builtin,
    lexer::version_dependent_marker,
    mysql_functions, split_statements_with,
};

/// Analyses a (possibly multi-statement) MySQL text lexed under `dialect`'s modes: the union of
/// its statements' analyses. Pass normalised text ([`super::normalise_for_analysis_with_options`]).
/// The name `LOAD DATA LOCAL INFILE` is recorded and judged under, as a function of schema
/// `mysql`: the client sends the server a file of its own.
pub const LOAD_DATA_LOCAL: &str = "load_data_local";

pub fn analyse_mysql(text: &str, dialect: Dialect) -> Analysis {
    let mut total = Found::default();
    if text.len() > MAX_ANALYSED {
        total.add(Class::Unknown, Some(format!("{} bytes: too large to analyse", text.len())));
        return total.into_analysis();
    }
    let options = LexOptions { dialect, ..LexOptions::default() };
    let parts = split_statements_with(text, options);
    if parts.is_empty() {
        total.add(Class::Utility, None);
        return total.into_analysis();
    }
    let several = parts.len() > 1;
    for part in &parts {
        let found = statement(part, options);
        if several && found.executes.is_some() {
            total.add(Class::Unknown, Some("EXECUTE among several statements: analyse them one by one".into()));
        }
        total.merge(found, !several);
    }
    total.into_analysis()
}

/// Whether the server's version decides how `text` splits or what its literals are: it holds
/// an executable comment only some servers run (see `mysql_lexer`), and reading that comment
/// as skipped changes the statements or their normalised text. Callers treat such a text as
/// ambiguous (one statement of class unknown).
pub fn mysql_version_dependent(text: &str, options: LexOptions) -> bool {
    if !options.dialect.is_mysql() || !(text.contains("/*!") || text.contains("/*M!")) {
        return false;
    }
    let skipped = LexOptions { skip_versioned: true, ..options };
    split_statements_with(text, options) != split_statements_with(text, skipped)
        || super::normalise_with_options(text, options) != super::normalise_with_options(text, skipped)
}

/// Operators and chaining keywords beyond which a statement is not parsed (see classify).
const MAX_CHAINED: usize = 2_000;

/// One statement's text.
fn statement(text: &str, options: LexOptions) -> Found {
    let mut found = Found::default();
    let canonical = match Canonical::of(text, options) {
        Ok(c) => c,
        Err(reason) => {
            found.add(Class::Unknown, Some(reason));
            return found;
        }
    };
    if let Some(reason) = &canonical.version_dependent {
        found.add(Class::Unknown, Some(reason.clone()));
    }
    let words = &canonical.words;
    let kw = |i: usize| words.get(i).filter(|w| w.kind == TokenKind::Identifier).map(|w| w.text.to_ascii_lowercase());
    let (first, second) = (kw(0).unwrap_or_default(), kw(1).unwrap_or_default());
    // Files written by a query, wherever the clause is.
    for pair in words.windows(2) {
        if pair[0].is("into") && (pair[1].is("outfile") || pair[1].is("dumpfile")) {
            found.add(Class::Read, None);
            found.add(
                Class::Unknown,
                Some("SELECT ... INTO OUTFILE/DUMPFILE writes a file on the database server".into()),
            );
        }
    }
    let mut sql = canonical.text.clone();
    match (first.as_str(), second.as_str()) {
        ("load", "data" | "xml") => {
            // LOAD DATA [LOW_PRIORITY | CONCURRENT] [LOCAL] INFILE.
            let local = words[2..].iter().take(2).any(|w| w.is("local"));
            found.add(Class::Write, Some("LOAD DATA inserts rows".into()));
            if local {
                // The server asks the client for a file of the client's: named as the call it
                // is, so a policy decides on it like any function (`functions:`), and the
                // proxy relays the server's file request only for a statement that names it.
                found.function(ObjectName::new(Some("mysql"), LOAD_DATA_LOCAL));
            } else {
                found.add(Class::Unknown, Some("LOAD DATA INFILE reads a file on the database server".into()));
            }
            if let Some(at) = words.windows(2).position(|p| p[0].is("into") && p[1].is("table"))
                && let (Some(n), _) = qualified_name(&words[at + 2..])
            {
                found.relation(n);
            }
            return found;
        }
        ("load", "index") | ("cache", "index") => {
            found.add(Class::Admin, None);
            return found;
        }
        ("handler", _) => {
            // HANDLER t OPEN / READ / CLOSE: reads rows of t, bypassing the optimiser.
            found.add(Class::Read, None);
            if let (Some(n), _) = qualified_name(&words[1..]) {
                found.relation(n);
            }
            return found;
        }
        ("install" | "uninstall", _) => {
            found.add(Class::Admin, None);
            found.add(Class::Unknown, Some("INSTALL / UNINSTALL loads or unloads code in the server".into()));
            return found;
        }
        ("binlog", _) => {
            found.add(Class::Unknown, Some("BINLOG replays binary log events: any change".into()));
            return found;
        }
        ("kill", _)
            if words[1..].iter().take(3).any(|w| w.is("query"))
                && !words[1..].iter().take(3).any(|w| w.is("connection") || w.is("user")) =>
        {
            // KILL [HARD | SOFT] QUERY [ID] n: a cancel, as a driver's (the client's Ctrl-C)
            // sends on a second connection; the server lets an account cancel only its own
            // statements unless it holds the privilege to cancel others'.
            found.add(Class::Utility, Some("KILL QUERY cancels a running statement".into()));
            return found;
        }
        ("kill" | "flush" | "shutdown" | "restart" | "purge" | "clone", _)
        // Every RESET is administration (MySQL has no RESET of a session setting; MariaDB takes
        // a list: RESET QUERY CACHE, MASTER).
        | ("reset", _)
        | ("change", "master" | "replication")
        | ("start" | "stop", "slave" | "replica" | "group_replication" | "all")
        | ("alter", "instance") => {
            found.add(Class::Admin, None);
            return found;
        }
        ("analyze", _) if analyzed_statement(words).is_some() => {
            // MariaDB's ANALYZE <statement> runs the statement (and reports its plan with what
            // running it measured): judged as that statement.
            let at = analyzed_statement(words).unwrap_or(1);
            found.merge(statement(canonical.rest(at), options), false);
            return found;
        }
        ("analyze" | "optimize" | "check" | "repair" | "checksum", _) => {
            found.add(Class::Admin, None);
            let at = usize::from(words.get(1).is_some_and(|w| w.is("table") || w.is("tables")))
                + 1
                + usize::from(words.get(1).is_some_and(|w| w.is("no_write_to_binlog") || w.is("local")));
            let mut rest = words.get(at..).unwrap_or_default();
            while let (Some(n), after) = qualified_name(rest) {
                found.relation(n);
                match after.split_first() {
                    Some((comma, after)) if comma.text == "," => rest = after,
                    _ => break,
                }
            }
            return found;
        }
        ("show", _) => {
            found.add(Class::Read, Some("SHOW reads metadata".into()));
            return found;
        }
        ("describe" | "desc", _) | ("explain", _)
            if words.get(1).is_some_and(|w| name_of(w).is_some()) && !is_verb(&second) =>
        {
            found.add(Class::Read, Some("DESCRIBE reads metadata".into()));
            if let (Some(n), _) = qualified_name(&words[1..]) {
                found.relation(n);
            }
            return found;
        }
        ("help", _) | ("signal" | "resignal", _) | ("get", "diagnostics" | "current" | "stacked") => {
            found.add(Class::Utility, None);
            return found;
        }
        ("use", _) => {
            found.add(Class::Session, Some("USE changes the current database".into()));
            match words.get(1).and_then(name_of) {
                Some(db) if words.len() == 2 => found.use_database = Some(db),
                _ => found.add(Class::Unknown, Some("USE of something other than one database name".into())),
            }
            return found;
        }
        ("prepare", _) => {
            prepare(words, options, &mut found);
            return found;
        }
        ("execute", "immediate") if words.len() > 2 => {
            // MariaDB's EXECUTE IMMEDIATE <expression>: prepares and runs the text at once.
            match (words.get(2), words.len()) {
                (Some(body), 3) if matches!(body.kind, TokenKind::StringLiteral(_)) => {
                    match string_value(&body.text, options.dialect).filter(|t| t != "?") {
                        Some(text) => body_of(&text, "EXECUTE IMMEDIATE", options, &mut found),
                        None => found.add(Class::Unknown, Some("EXECUTE IMMEDIATE of a text not known here".into())),
                    }
                }
                (Some(_), 3) => found.add(
                    Class::Unknown,
                    Some("EXECUTE IMMEDIATE of a variable or expression: the statement's text is not known".into()),
                ),
                _ => found.add(
                    Class::Unknown,
                    Some("EXECUTE IMMEDIATE of an expression, or with parameters: not analysed".into()),
                ),
            }
            return found;
        }
        ("execute", _) => {
            match words.get(1).and_then(name_of) {
                Some(name) => {
                    found.add(Class::Unknown, Some(format!("EXECUTE of prepared statement {name}")));
                    found.executes = Some(name.to_lowercase());
                }
                None => found.add(Class::Unknown, Some("EXECUTE of something other than a prepared statement".into())),
            }
            return found;
        }
        ("deallocate" | "drop", "prepare") => {
            found.add(Class::Utility, None);
            return found;
        }
        ("begin", "not") => {
            found.add(Class::Unknown, Some("BEGIN NOT ATOMIC runs a compound statement (procedural code)".into()));
            return found;
        }
        ("begin", "" | "work") => {
            found.add(Class::Transaction, None);
            return found;
        }
        // Under sql_mode=ORACLE, BEGIN opens an anonymous block (`BEGIN DELETE FROM t; END`),
        // which the splitter cuts where the server does not; DECLARE opens one too.
        ("begin" | "end" | "declare", _) => {
            found.add(
                Class::Unknown,
                Some("BEGIN, END or DECLARE other than a transaction's: an anonymous block under sql_mode=ORACLE".into()),
            );
            return found;
        }
        ("xa", _) => {
            found.add(Class::Transaction, None);
            return found;
        }
        ("lock", _) | ("unlock", _) => {
            found.add(Class::Admin, Some("LOCK / UNLOCK TABLES takes or releases table locks".into()));
            names_in(words, &mut found);
            return found;
        }
        ("rename", "user") | ("set", "password") | ("set", "role") | ("set", "default")
            if !(first == "set" && second == "default" && !words.get(2).is_some_and(|w| w.is("role"))) =>
        {
            found.add(Class::Dcl, Some("changes accounts, passwords or roles".into()));
            return found;
        }
        ("rename", "table" | "tables") => {
            found.add(Class::Ddl, None);
            names_in(&words[2..], &mut found);
            return found;
        }
        ("create" | "alter" | "drop", "user" | "role") | ("grant" | "revoke", _) => {
            found.add(Class::Dcl, None);
            return found;
        }
        ("create", _) if words.iter().any(|w| w.is("soname")) => {
            found.add(Class::Ddl, None);
            found.add(Class::Unknown, Some("CREATE FUNCTION ... SONAME loads a shared library into the server".into()));
            return found;
        }
        ("create", _)
            if words
                .iter()
                .take(8)
                .any(|w| w.is("procedure") || w.is("function") || w.is("trigger") || w.is("event")) =>
        {
            // A stored program's body runs later (CALL, a trigger, the scheduler), with its
            // definer's privileges when it says so.
            found.add(Class::Ddl, None);
            if words.iter().any(|w| w.is("definer")) {
                found.add(Class::Dcl, Some("creates stored code that runs with another account's privileges".into()));
            }
            return found;
        }
        ("set", "statement") => return set_statement(&canonical, options, found),
        ("update" | "delete", _) => {
            if let Some(edits) = dml_edits(words) {
                sql = canonical.edited(&edits);
            }
        }
        ("set", _) => {
            set(words, &mut found);
            sql = set_for_parsing(words);
        }
        ("do", _) => {
            // DO evaluates expressions and discards them: what SELECT of them does.
            sql = format!("SELECT {}", canonical.text.trim_start()[2..].trim_start());
        }
        _ => {}
    }
    parse(&sql, &canonical, found)
}

/// Whether a word after EXPLAIN starts a statement (EXPLAIN SELECT ...) rather than names a
/// table (EXPLAIN t is DESCRIBE t).
fn is_verb(word: &str) -> bool {
    matches!(
        word,
        "select"
            | "insert"
            | "update"
            | "delete"
            | "replace"
            | "table"
            | "with"
            | "analyze"
            | "format"
            | "extended"
            | "partitions"
            | "for"
            | "values"
    )
}

/// Parses the canonical text and walks it, adding to what the keywords found.
fn parse(sql: &str, canonical: &Canonical, mut found: Found) -> Found {
    match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(statements) if statements.len() == 1 => {
            let mut walker = Walker::new(&canonical.words);
            walker.mysql = true;
            let _ = statements[0].visit(&mut walker);
            found.merge(walker.found, true);
        }
        Ok(statements) => found
            .add(Class::Unknown, Some(format!("1 statement by MySQL's lexical rules, {} as parsed", statements.len()))),
        Err(e) => {
            let first = canonical.words.first().map(|w| w.text.to_ascii_lowercase()).unwrap_or_default();
            let mut by = by_keywords(&canonical.words, &e.to_string());
            if first == "show" || first == "set" {
                by = Found::default();
                by.add(Class::Unknown, Some(format!("not parsed: {e}")));
            }
            found.merge(by, true);
        }
    }
    found
}

/// `PREPARE name FROM 'text'`: the class of the text, prepared under the name (MySQL
/// prepared-statement names are case-insensitive: lower-cased). From a variable, the text is
/// not known.
fn prepare(words: &[Word], options: LexOptions, found: &mut Found) {
    let Some(name) = words.get(1).and_then(name_of) else {
        found.add(Class::Unknown, Some("PREPARE of something other than a named statement".into()));
        return;
    };
    found.prepares = Some(name.to_lowercase());
    match (words.get(2), words.get(3), words.len()) {
        (Some(from), Some(body), 4) if from.is("from") => match string_value(&body.text, options.dialect) {
            Some(text) if text != "?" => body_of(&text, "PREPARE", options, found),
            _ => found.add(Class::Unknown, Some(format!("PREPARE {name} of a text not known here"))),
        },
        _ => found.add(
            Class::Unknown,
            Some(format!("PREPARE {name} FROM a variable or expression: the statement's text is not known")),
        ),
    }
}

/// The analysis of a statement's text given as a string (PREPARE ... FROM 'text', EXECUTE
/// IMMEDIATE 'text'), added to `found`.
fn body_of(text: &str, verb: &str, options: LexOptions, found: &mut Found) {
    let inner = analyse_mysql(text, options.dialect);
    if split_statements_with(text, options).len() != 1 {
        found.add(Class::Unknown, Some(format!("{verb} of other than one statement: the server refuses it")));
    }
    let mut body = Found::default();
    for class in inner.effects.iter() {
        body.add(class, inner.class_reason.as_deref().filter(|_| class == inner.class).map(String::from));
    }
    inner.relations.iter().for_each(|r| body.relation(r.clone()));
    inner.functions.iter().for_each(|f| body.function(f.clone()));
    body.unscoped = inner.unscoped;
    found.merge(body, false);
}

/// Where the statement MariaDB's `ANALYZE [FORMAT = ...] <statement>` runs starts, if it is one
/// (not `ANALYZE TABLE`).
fn analyzed_statement(words: &[Word]) -> Option<usize> {
    let at =
        if words.get(1).is_some_and(|w| w.is("format")) && words.get(2).is_some_and(|w| w.text == "=") { 4 } else { 1 };
    let verb = words.get(at)?;
    ["select", "delete", "update", "insert", "replace", "with", "values"].iter().any(|v| verb.is(v)).then_some(at)
}

/// MariaDB's `SET STATEMENT var = value [, ...] FOR <statement>`: the statement, run with the
/// settings made for it, is judged with the settings' own class (as SET's).
fn set_statement(canonical: &Canonical, options: LexOptions, mut found: Found) -> Found {
    let words = &canonical.words;
    let mut depth = 0usize;
    let mut at = None;
    for (i, w) in words.iter().enumerate().skip(2) {
        match w.text.as_str() {
            "(" => depth += 1,
            ")" => depth = depth.saturating_sub(1),
            _ if depth == 0 && w.is("for") => {
                at = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(at) = at.filter(|&at| at > 2) else {
        found.add(Class::Unknown, Some("SET STATEMENT without settings or FOR <statement>".into()));
        return found;
    };
    if words.get(at + 1).is_some_and(|w| w.is("set")) && words.get(at + 2).is_some_and(|w| w.is("statement")) {
        found.add(Class::Unknown, Some("SET STATEMENT ... FOR SET STATEMENT: the server refuses it".into()));
        return found;
    }
    let settings: Vec<Word> = words[..1].iter().chain(&words[2..at]).cloned().collect();
    let mut own = Found::default();
    set(&settings, &mut own);
    found.merge(parse(&set_for_parsing(&settings), canonical, own), false);
    found.merge(statement(canonical.rest(at + 1), options), false);
    found
}

/// The edits that let sqlparser read MySQL's UPDATE and DELETE forms it lacks, if any are
/// needed: the modifiers `LOW_PRIORITY`, `QUICK` and `IGNORE` after the verb dropped (they change
/// locking and error handling, not what is written), and the tables of `UPDATE a, b SET ...`
/// joined with `CROSS JOIN` (what a comma join is; sqlparser reads only JOIN there).
fn dml_edits(words: &[Word]) -> Option<Vec<(usize, &'static str)>> {
    let update = words.first()?.is("update");
    let mut edits = Vec::new();
    let mut i = 1;
    while let Some(w) = words.get(i) {
        if w.is("low_priority") || w.is("ignore") || (!update && w.is("quick")) {
            edits.push((i, " "));
            i += 1;
        } else {
            break;
        }
    }
    if update {
        let mut depth = 0usize;
        for (n, w) in words.iter().enumerate().skip(i) {
            match w.text.as_str() {
                "(" => depth += 1,
                ")" => depth = depth.saturating_sub(1),
                "," if depth == 0 && w.kind == TokenKind::Punctuation => edits.push((n, " CROSS JOIN ")),
                _ if depth == 0 && w.is("set") => break,
                _ => {}
            }
        }
    }
    (!edits.is_empty()).then_some(edits)
}

/// SET, from its tokens: each assignment's scope and variable. Values are walked after parsing.
fn set(words: &[Word], found: &mut Found) {
    let mut i = 1;
    let mut scope_global = false;
    let mut expect_name = true;
    let mut depth = 0usize;
    while let Some(w) = words.get(i) {
        i += 1;
        if w.text == "(" {
            depth += 1;
            continue;
        }
        if w.text == ")" {
            depth = depth.saturating_sub(1);
            continue;
        }
        if depth > 0 {
            continue;
        }
        if w.text == "," {
            expect_name = true;
            scope_global = false;
            continue;
        }
        if !expect_name {
            continue;
        }
        if w.is("global") || w.is("persist") || w.is("persist_only") {
            scope_global = true;
            continue;
        }
        if w.is("session") || w.is("local") {
            continue;
        }
        expect_name = false;
        let text = w.text.to_ascii_lowercase();
        let (global, name) = match w.kind {
            TokenKind::Variable if text.starts_with("@@") => {
                let mut name = text.trim_start_matches("@@").to_string();
                let mut global = false;
                if matches!(name.as_str(), "global" | "persist" | "persist_only" | "session" | "local")
                    && words.get(i).is_some_and(|d| d.text == ".")
                {
                    global = matches!(name.as_str(), "global" | "persist" | "persist_only");
                    name = words.get(i + 1).map(|n| n.text.to_ascii_lowercase()).unwrap_or_default();
                    i += 2;
                }
                (global, name)
            }
            TokenKind::Variable => {
                found.add(Class::Session, Some("sets a user variable".into()));
                continue;
            }
            _ if w.is("names") || w.is("character") || w.is("charset") => {
                found.add(
                    Class::Session,
                    Some("SET NAMES / CHARACTER SET changes how later statements are read".into()),
                );
                continue;
            }
            _ if w.is("transaction") => {
                if scope_global {
                    found.add(Class::Admin, Some("SET GLOBAL TRANSACTION changes every new session".into()));
                } else {
                    found.add(Class::Transaction, None);
                }
                continue;
            }
            _ => (false, name_of(w).unwrap_or(text.clone()).to_ascii_lowercase()),
        };
        if !name.is_ascii() {
            // The server finds settings by an accent-insensitive name (`sql_lög_bin` is
            // sql_log_bin): one spelled with non-ASCII letters may be any setting.
            found.add(
                Class::Unknown,
                Some("a setting named with non-ASCII letters may be any setting (the server folds accents)".into()),
            );
        } else if scope_global || global {
            found.add(Class::Admin, Some(format!("SET GLOBAL / PERSIST {name} changes the server's configuration")));
        } else if mysql_functions::privileged_setting(&name) {
            found.add(
                Class::Admin,
                Some(format!("SET {name} needs an administrative privilege and hides or changes what is recorded")),
            );
        } else if name == "sql_mode" {
            found.add(Class::Session, Some("SET sql_mode changes how later statements are lexed and checked".into()));
        } else {
            found.add(Class::Session, None);
        }
    }
    if found.effects.is_empty() {
        found.add(Class::Session, None);
    }
}

/// A SET statement as sqlparser parses it, its scopes (already classed) dropped: `SET GLOBAL
/// x = 1` and `SET @@persist.x = 1` as `SET x = 1`, so the values are walked.
fn set_for_parsing(words: &[Word]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(w) = words.get(i) {
        i += 1;
        let scope = |t: &str| {
            ["global", "persist", "persist_only", "session", "local"].iter().any(|s| t.eq_ignore_ascii_case(s))
        };
        if w.kind == TokenKind::Identifier && scope(&w.text) {
            continue;
        }
        if w.kind == TokenKind::Variable
            && w.text.starts_with("@@")
            && scope(&w.text[2..])
            && words.get(i).is_some_and(|d| d.text == ".")
        {
            if let Some(name) = words.get(i + 1) {
                out.push_str(&name.text);
                out.push(' ');
            }
            i += 2;
            continue;
        }
        out.push_str(&w.text);
        out.push(' ');
    }
    out
}

/// Names listed in LOCK TABLES / RENAME TABLE (skipping keywords of their grammars).
fn names_in(words: &[Word], found: &mut Found) {
    const SKIP: &[&str] = &[
        "lock",
        "unlock",
        "tables",
        "table",
        "read",
        "write",
        "local",
        "low_priority",
        "to",
        "as",
        "instance",
        "for",
        "backup",
    ];
    let mut rest = words;
    while let Some(w) = rest.first() {
        if w.text == "," || SKIP.iter().any(|k| w.is(k)) {
            rest = &rest[1..];
            continue;
        }
        match qualified_name(rest) {
            (Some(n), after) => {
                found.relation(n);
                // `t AS alias`: the alias is not a relation.
                rest = match after.split_first() {
                    Some((a, after)) if a.is("as") => after.get(1..).unwrap_or_default(),
                    _ => after,
                };
            }
            (None, _) => rest = &rest[1..],
        }
    }
}

/// The name a word is, as the server reads it: as written (backticks removed).
fn name_of(w: &Word) -> Option<String> {
    match w.kind {
        TokenKind::Identifier => Some(w.text.clone()),
        TokenKind::QuotedIdentifier { .. } => quoted_name(&w.text),
        _ => None,
    }
}

/// A qualified name at the start of `words`, and what follows it.
fn qualified_name(words: &[Word]) -> (Option<ObjectName>, &[Word]) {
    let mut parts = Vec::new();
    let mut i = 0;
    while let Some(part) = words.get(i).and_then(name_of) {
        parts.push(part);
        if words.get(i + 1).is_some_and(|w| w.kind == TokenKind::Punctuation && w.text == ".") {
            i += 2;
        } else {
            i += 1;
            break;
        }
    }
    let Some((name, rest)) = parts.split_last() else { return (None, words) };
    (Some(ObjectName { schema: rest.last().cloned(), name: name.clone() }), &words[i.min(words.len())..])
}

/// A MySQL statement's text as sqlparser is given it, and its significant tokens.
struct Canonical {
    text: String,
    words: Vec<Word>,
    /// `text` before `LOCK IN SHARE MODE` is rewritten, and where each word starts in it.
    raw: String,
    starts: Vec<usize>,
    /// Why the statement runs differently by server version, if it does.
    version_dependent: Option<String>,
}

impl Canonical {
    fn of(text: &str, options: LexOptions) -> Result<Canonical, String> {
        let mut lexer = Lexer::new(text, options);
        let mut out = String::with_capacity(text.len() + 8);
        let mut words: Vec<Word> = Vec::new();
        let mut starts = Vec::new();
        let mut version_dependent = None;
        let mut chained = 0usize;
        let mut last_end = 0;
        let mut last_kind = None;
        let tokens: Vec<_> = lexer.by_ref().collect();
        if lexer.in_executable_comment() {
            return Err("an unterminated executable comment: the server rejects the statement".into());
        }
        for (n, t) in tokens.iter().enumerate() {
            let raw = &text[t.range()];
            last_end = t.end;
            last_kind = Some(t.kind);
            match t.kind {
                TokenKind::Whitespace => {
                    out.push_str(raw);
                    continue;
                }
                TokenKind::ExecutableMarker => {
                    if version_dependent_marker(raw) {
                        version_dependent.get_or_insert(format!(
                            "an executable comment {raw}: whether the server runs it depends on its version"
                        ));
                    }
                    out.push(' ');
                    continue;
                }
                kind if kind.is_trivia() => {
                    out.push(' ');
                    continue;
                }
                _ => {}
            }
            let next_is_string = tokens[n + 1..]
                .iter()
                .find(|t| !t.kind.is_trivia())
                .is_some_and(|t| matches!(t.kind, TokenKind::StringLiteral(_)));
            let mut kind = t.kind;
            let canonical: String = match t.kind {
                // A charset introducer: `_utf8mb4'x'` is the string.
                TokenKind::Identifier if raw.starts_with('_') && next_is_string => {
                    out.push(' ');
                    continue;
                }
                TokenKind::StringLiteral(StringKind::Plain) if simple_string(raw) => raw.to_string(),
                TokenKind::StringLiteral(_) => "'?'".to_string(),
                TokenKind::QuotedIdentifier { .. } => {
                    let name = quoted_name(raw)
                        .ok_or("an unterminated quoted identifier: the server rejects the statement")?;
                    format!("`{}`", name.replace('`', "``"))
                }
                TokenKind::Identifier
                    if !raw.bytes().next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                        || raw.contains('$')
                        || !raw.is_ascii() =>
                {
                    kind = TokenKind::QuotedIdentifier { unicode: false };
                    format!("`{raw}`")
                }
                // Without PIPES_AS_CONCAT (which the proxy does not track) `||` is OR, `&&` AND:
                // read as concatenation, `id = 1 || 1` would look like a condition on id.
                TokenKind::Operator if raw == "||" => {
                    chained += 1;
                    " OR ".to_string()
                }
                TokenKind::Operator if raw == "&&" => {
                    chained += 1;
                    " AND ".to_string()
                }
                TokenKind::Operator => {
                    chained += 1;
                    raw.to_string()
                }
                // sqlparser binds XOR tighter than `=` (MySQL: between AND and OR), so
                // `id = 1 XOR id <> 1` would read as a condition on id: not analysed.
                TokenKind::Identifier if raw.eq_ignore_ascii_case("xor") => {
                    return Err("XOR, which the parser binds otherwise than the server: not analysed".into());
                }
                TokenKind::Identifier if raw.eq_ignore_ascii_case("and") || raw.eq_ignore_ascii_case("or") => {
                    chained += 1;
                    raw.to_string()
                }
                _ => raw.to_string(),
            };
            if chained > MAX_CHAINED {
                return Err(format!("more than {MAX_CHAINED} operators: too complex to analyse"));
            }
            starts.push(out.len());
            out.push_str(&canonical);
            words.push(Word { kind, text: canonical });
        }
        // A string, quoted identifier or comment running to the end: the server rejects the
        // statement (only it: earlier ones of the text have run).
        if last_end == text.len()
            && let Some(kind) = last_kind
            && unterminated(text, tokens.last().map(|t| t.start).unwrap_or(0), kind, options)
        {
            return Err("an unterminated string, quoted identifier or comment: the server rejects the statement".into());
        }
        // `LOCK IN SHARE MODE` is `FOR SHARE`.
        let text = replace_words(&out, &["lock", "in", "share", "mode"], "FOR SHARE", &words);
        Ok(Canonical { text, words, raw: out, starts, version_dependent })
    }

    /// The canonical text from word `at` on (before `LOCK IN SHARE MODE` is rewritten).
    fn rest(&self, at: usize) -> &str {
        self.starts.get(at).map_or("", |&s| &self.raw[s..])
    }

    /// The canonical text with some words replaced (by index), as sqlparser is given it.
    fn edited(&self, edits: &[(usize, &str)]) -> String {
        let mut out = String::with_capacity(self.raw.len() + 16);
        let mut at = 0;
        for &(i, with) in edits {
            let (Some(&start), Some(w)) = (self.starts.get(i), self.words.get(i)) else { continue };
            out.push_str(&self.raw[at..start]);
            out.push_str(with);
            at = start + w.text.len();
        }
        out.push_str(&self.raw[at..]);
        replace_words(&out, &["lock", "in", "share", "mode"], "FOR SHARE", &self.words)
    }
}

/// Whether the last token (from `start`) never closes.
fn unterminated(text: &str, start: usize, kind: TokenKind, options: LexOptions) -> bool {
    if !matches!(kind, TokenKind::StringLiteral(_) | TokenKind::QuotedIdentifier { .. } | TokenKind::BlockComment) {
        return false;
    }
    let probe = format!("{}\n;", &text[start..]);
    Lexer::new(&probe, options).next().is_some_and(|t| t.end > text.len() - start)
}

/// `text` with the word sequence replaced, if the statement's words hold it (rare: a plain
/// case-insensitive search of the canonical text).
fn replace_words(text: &str, seq: &[&str], with: &str, words: &[Word]) -> String {
    if !words.windows(seq.len()).any(|w| w.iter().zip(seq).all(|(w, s)| w.is(s))) {
        return text.to_string();
    }
    let lower = text.to_ascii_lowercase();
    let mut at = 0;
    let mut out = String::with_capacity(text.len());
    while let Some(i) = lower[at..].find("lock") {
        let start = at + i;
        out.push_str(&text[at..start]);
        let rest: Vec<&str> = lower[start..].split_ascii_whitespace().take(seq.len()).collect();
        if rest == seq {
            let mut end = start;
            for s in seq {
                end = lower[end..].find(s).map(|p| end + p + s.len()).unwrap_or(end);
            }
            out.push_str(with);
            at = end;
        } else {
            out.push_str("lock");
            at = start + 4;
        }
    }
    out.push_str(&text[at..]);
    out
}

/// A `'...'` string sqlparser reads as the server does: terminated, no backslash, no doubled
/// quote inside; others become `'?'`.
fn simple_string(raw: &str) -> bool {
    let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) else { return false };
    !inner.contains('\\') && !inner.contains('\'')
}

/// The name inside a terminated `` `...` `` or `"..."` identifier (the quote doubled is one).
fn quoted_name(raw: &str) -> Option<String> {
    let quote = raw.chars().next()?;
    let inner = raw.strip_prefix(quote)?.strip_suffix(quote)?;
    let doubled: String = [quote, quote].iter().collect();
    let single = quote.to_string();
    let name = inner.replace(&doubled, &single);
    // A lone quote inside means the token ended earlier: not this shape.
    (name.matches(quote).count() * 2 == inner.matches(quote).count()).then_some(name)
}

/// The value of a MySQL string literal token (`'...'` or `"..."`), escapes decoded under
/// `dialect`'s modes; None if it is not one, or is unterminated.
pub(super) fn string_value(raw: &str, dialect: Dialect) -> Option<String> {
    let backslash = !matches!(dialect, Dialect::MySql { no_backslash_escapes: true, .. });
    let quote = raw.chars().next().filter(|q| *q == '\'' || *q == '"')?;
    let mut chars = raw[1..].chars();
    let mut out = String::with_capacity(raw.len());
    while let Some(c) = chars.next() {
        match c {
            '\\' if backslash => {
                let escaped = chars.next()?;
                let decoded = match escaped {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    'b' => '\u{8}',
                    'Z' => '\u{1a}',
                    // `\%` and `\_` keep their backslash (for LIKE).
                    '%' | '_' => {
                        out.push('\\');
                        escaped
                    }
                    other => other,
                };
                out.push(decoded);
            }
            c if c == quote => match chars.next() {
                Some(q) if q == quote => out.push(quote),
                None => return Some(out),
                Some(_) => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// A (possibly qualified) MySQL name as the server reads it: database and table as written.
pub(super) fn object_name(name: &ast::ObjectName) -> Option<ObjectName> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map(|i| i.value.clone())).collect::<Option<_>>()?;
    let (last, rest) = parts.split_last()?;
    Some(ObjectName { schema: rest.last().cloned(), name: last.clone() })
}

impl Walker<'_> {
    /// MySQL's statements (and PostgreSQL's ones that read otherwise here); None for the shared
    /// arms of the walker.
    pub(super) fn mysql_statement(&mut self, statement: &Statement) -> Option<Frame> {
        use Statement as S;
        let frame = Frame { kind: Kind::Other, muted: false, explain: false, runs_explained: false };
        match statement {
            S::Explain { analyze, .. } => {
                self.add(Class::Read, None);
                let runs = *analyze;
                return Some(Frame { kind: Kind::Other, muted: !runs, explain: true, runs_explained: runs });
            }
            S::ExplainTable { table_name, .. } => {
                self.add(Class::Read, Some("DESCRIBE reads metadata".into()));
                self.relation(table_name);
            }
            S::Set(_) => {}
            S::Kill { .. } | S::Flush { .. } | S::UnlockTables | S::OptimizeTable { .. } => {
                self.add(Class::Admin, None)
            }
            S::LockTables { .. } => self.add(Class::Admin, Some("LOCK TABLES takes table locks".into())),
            S::RenameTable(renames) => {
                self.add(Class::Ddl, None);
                for r in renames {
                    self.relation(&r.old_name);
                    self.relation(&r.new_name);
                }
            }
            S::Use(_) => self.add(Class::Session, Some("USE changes the current database".into())),
            S::ShowFunctions { .. }
            | S::ShowVariable { .. }
            | S::ShowStatus { .. }
            | S::ShowVariables { .. }
            | S::ShowCreate { .. }
            | S::ShowColumns { .. }
            | S::ShowDatabases { .. }
            | S::ShowProcessList { .. }
            | S::ShowSchemas { .. }
            | S::ShowCharset(_)
            | S::ShowTables { .. }
            | S::ShowViews { .. }
            | S::ShowCollation { .. } => self.add(Class::Read, Some("SHOW reads metadata".into())),
            S::LoadData { .. } | S::Load { .. } | S::Install { .. } => {
                self.unknown("loads files or code into the server")
            }
            S::Prepare { .. } | S::Execute { .. } | S::Deallocate { .. } => {
                self.unknown("a prepared-statement command not read as MySQL's")
            }
            S::Copy { .. } | S::Declare { .. } | S::Fetch { .. } | S::Close { .. } | S::Vacuum(_) => {
                self.unknown(format!("{} is not MySQL", self.first_keyword()))
            }
            _ => return None,
        }
        Some(frame)
    }

    fn first_keyword(&self) -> String {
        self.keyword()
    }

    /// A MySQL function call: built-ins by their lower-case name; stored functions (qualified,
    /// or not known) are unknown, for the catalog to answer.
    pub(super) fn mysql_call(&mut self, name: &ast::ObjectName) {
        let Some(mut n) = object_name(name) else {
            self.unknown(format!("calls {name}: a name the analyser cannot read"));
            return;
        };
        n.name = n.name.to_lowercase();
        self.found.function(n.clone());
        match n.schema.is_none().then(|| mysql_functions::builtin(&n.name)).flatten() {
            Some(Builtin::ReadOnly) => {}
            Some(Builtin::Effect(classes, why)) => {
                for class in classes {
                    self.add(*class, Some(format!("calls {n}: {why}")));
                }
            }
            Some(Builtin::SetConfig) | None => {
                self.lookup_even_planned(Lookup::Function(n.clone()), format!("calls {n}, not known to be read-only"))
            }
        }
    }

    /// A DML write to the `mysql` system schema changes accounts and privileges.
    pub(super) fn mysql_catalog_write(&mut self, target: &ast::ObjectName) {
        let Some(n) = object_name(target) else { return };
        if n.schema.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("mysql")) {
            self.add(Class::Ddl, Some(format!("writes the system schema's {n}")));
            self.add(Class::Dcl, Some(format!("writes {n}: the mysql schema holds accounts and privileges")));
        }
    }
}

/// The table factors of FROM items (joined ones, and those inside parenthesised joins, too).
fn all_factors<'a>(items: impl IntoIterator<Item = &'a ast::TableWithJoins>, out: &mut Vec<&'a ast::TableFactor>) {
    for t in items {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            out.push(f);
            if let ast::TableFactor::NestedJoin { table_with_joins, .. } = f {
                all_factors(std::slice::from_ref(table_with_joins.as_ref()), out);
            }
        }
    }
}

/// The condition a multi-table UPDATE or DELETE narrows its rows by: its WHERE and the ON
/// conditions of its top-level inner joins (each filters the joined rows as the WHERE does).
/// Outer joins' ON conditions keep every row of their preserved side, and those of joins nested
/// in parentheses may not filter the whole: neither counts.
fn joined_condition<'a>(
    selection: Option<&ast::Expr>,
    items: impl IntoIterator<Item = &'a ast::TableWithJoins>,
) -> Option<ast::Expr> {
    use ast::{JoinConstraint as C, JoinOperator as J};
    let ons = items.into_iter().flat_map(|t| &t.joins).filter_map(|j| match &j.join_operator {
        J::Join(C::On(c)) | J::Inner(C::On(c)) | J::StraightJoin(C::On(c)) | J::CrossJoin(C::On(c)) => Some(c),
        _ => None,
    });
    selection.into_iter().chain(ons).cloned().reduce(|a, b| ast::Expr::BinaryOp {
        left: Box::new(a),
        op: ast::BinaryOperator::And,
        right: Box::new(b),
    })
}

/// The factors a target name of a multi-table statement may mean: those it names by alias, and
/// tables of that name (qualified alike when it is qualified). Every one is taken: the server
/// refuses an ambiguous name, and judging more tables written fails closed.
fn named<'a>(name: &ast::ObjectName, factors: &[&'a ast::TableFactor]) -> Vec<&'a ast::TableFactor> {
    let Some(n) = object_name(name) else { return Vec::new() };
    factors
        .iter()
        .copied()
        .filter(|f| {
            let ast::TableFactor::Table { name: table, alias, .. } = f else {
                return n.schema.is_none() && f_alias(f).is_some_and(|a| a == n.name);
            };
            let by_alias = n.schema.is_none() && alias.as_ref().is_some_and(|a| a.name.value == n.name);
            let by_name = object_name(table).is_some_and(|t| {
                t.name == n.name && (n.schema.is_none() || t.schema.is_none() || t.schema == n.schema)
            });
            by_alias || by_name
        })
        .collect()
}

/// The alias of a factor other than a table (a derived table's).
fn f_alias(f: &ast::TableFactor) -> Option<&str> {
    match f {
        ast::TableFactor::Derived { alias, .. } | ast::TableFactor::Function { alias, .. } => {
            alias.as_ref().map(|a| a.name.value.as_str())
        }
        _ => None,
    }
}

/// Whether an INSERT ... ON DUPLICATE KEY UPDATE or a REPLACE reads its own table without
/// narrowing it: every row it reads conflicts with itself, so every row of the table is updated
/// (or deleted and inserted again). Its source is searched in every branch of a set operation,
/// its CTEs and derived tables; a condition narrows the table only where it narrows the factor
/// that reads it (LIMIT does not, as for DELETE).
pub(super) fn overwrites_every_row(insert: &ast::Insert, target: &ast::ObjectName) -> bool {
    let upsert = matches!(insert.on, Some(ast::OnInsert::DuplicateKeyUpdate(_)));
    if !(upsert || insert.replace_into) {
        return false;
    }
    let (Some(source), Some(table)) = (&insert.source, object_name(target)) else { return false };
    reads_whole(source, &table)
}

fn same_table(name: &ast::ObjectName, table: &ObjectName) -> bool {
    object_name(name).is_some_and(|n| {
        n.name == table.name && (n.schema.is_none() || table.schema.is_none() || n.schema == table.schema)
    })
}

/// Whether a query reads every row of `table` somewhere (see [`overwrites_every_row`]).
fn reads_whole(query: &ast::Query, table: &ObjectName) -> bool {
    query.with.iter().flat_map(|w| &w.cte_tables).any(|cte| reads_whole(&cte.query, table))
        || set_reads_whole(&query.body, table)
}

fn set_reads_whole(body: &ast::SetExpr, table: &ObjectName) -> bool {
    use ast::SetExpr as E;
    match body {
        E::Select(s) => {
            let mut factors = Vec::new();
            all_factors(&s.from, &mut factors);
            let condition = joined_condition(s.selection.as_ref(), &s.from);
            factors.iter().any(|f| match f {
                ast::TableFactor::Table { name, args: None, .. } if same_table(name, table) => {
                    let target = super::classify::Target::of(f, factors.iter().copied()).mysql();
                    condition.as_ref().is_none_or(|c| super::classify::scope(c, &target).1)
                }
                ast::TableFactor::Derived { subquery, .. } => reads_whole(subquery, table),
                _ => false,
            })
        }
        E::Query(q) => reads_whole(q, table),
        E::SetOperation { left, right, .. } => set_reads_whole(left, table) || set_reads_whole(right, table),
        E::Table(t) => t.table_name.as_ref().is_some_and(|n| {
            let schema = t.schema_name.as_ref().map(|s| s.value.clone());
            n.value == table.name && (schema.is_none() || table.schema.is_none() || schema == table.schema)
        }),
        _ => false,
    }
}

impl Walker<'_> {
    /// A multi-table DELETE (`DELETE t1, t2 FROM <tables>` or `DELETE FROM t1, t2 USING
    /// <tables>`): every target, resolved through its alias, is a table written, and judged for
    /// scope.
    pub(super) fn mysql_multi_table_delete(&mut self, delete: &ast::Delete) {
        let from = match &delete.from {
            ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
        };
        for t in from {
            self.target(&t.relation);
        }
        let (names, items): (Vec<&ast::ObjectName>, &[ast::TableWithJoins]) = if delete.tables.is_empty() {
            let mut names = Vec::new();
            for t in from {
                match &t.relation {
                    ast::TableFactor::Table { name, .. } if t.joins.is_empty() => names.push(name),
                    _ => self.unknown("DELETE ... USING whose targets are not table names"),
                }
            }
            (names, delete.using.as_deref().unwrap_or_default())
        } else {
            for name in &delete.tables {
                self.relation(name);
            }
            (delete.tables.iter().collect(), from.as_slice())
        };
        let mut factors = Vec::new();
        all_factors(items, &mut factors);
        let mut written = Vec::new();
        for name in names {
            // A qualified target names its table as written, whatever it matches.
            self.catalog_write(name, &[], None);
            let matches = named(name, &factors);
            if matches.is_empty() {
                self.unknown(format!("DELETE target {name} is none of the statement's tables"));
            }
            written.extend(matches);
        }
        self.mysql_written(&written, &factors, delete.selection.as_ref(), items.iter());
    }

    /// A multi-table UPDATE: every table a SET assigns to (through its qualifier; every table of
    /// the statement for an unqualified column, which may be any of theirs) is written.
    pub(super) fn mysql_multi_table_update(&mut self, update: &ast::Update) {
        let from = match &update.from {
            Some(ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) => f.as_slice(),
            None => &[],
        };
        let items: Vec<&ast::TableWithJoins> = std::iter::once(&update.table).chain(from).collect();
        let mut factors = Vec::new();
        all_factors(items.iter().copied(), &mut factors);
        let mut written = Vec::new();
        for column in update.assignments.iter().flat_map(|a| match &a.target {
            ast::AssignmentTarget::ColumnName(c) => std::slice::from_ref(c),
            ast::AssignmentTarget::Tuple(cs) => cs.as_slice(),
        }) {
            match column.0.split_last() {
                Some((_, qualifier)) if !qualifier.is_empty() => {
                    let matches = named(&ast::ObjectName(qualifier.to_vec()), &factors);
                    if matches.is_empty() {
                        self.unknown(format!("UPDATE sets {column}, of none of the statement's tables"));
                    }
                    written.extend(matches);
                }
                _ => written.extend(
                    factors.iter().copied().filter(|f| matches!(f, ast::TableFactor::Table { args: None, .. })),
                ),
            }
        }
        self.mysql_written(&written, &factors, update.selection.as_ref(), items);
    }

    /// Each written table factor: a target, a write to its table, and unscoped unless the
    /// statement's condition narrows it.
    fn mysql_written<'a>(
        &mut self,
        written: &[&ast::TableFactor],
        factors: &[&ast::TableFactor],
        selection: Option<&ast::Expr>,
        items: impl IntoIterator<Item = &'a ast::TableWithJoins>,
    ) {
        let condition = joined_condition(selection, items);
        if written.is_empty() {
            self.unknown("writes no table the analyser can name");
        }
        let mut seen = std::collections::HashSet::new();
        for &f in written {
            if !seen.insert(f as *const ast::TableFactor) {
                continue;
            }
            self.target(f);
            match f {
                ast::TableFactor::Table { name, .. } => self.catalog_write(name, &[], None),
                _ => self.unknown("writes something other than a table"),
            }
            let target = super::classify::Target::of(f, factors.iter().copied());
            self.unscoped_where(condition.as_ref(), &target);
        }
    }
}

/// One statement's text parsed for lineage (which columns it reads): its canonical form with
/// every identifier folded to lower case (MySQL compares column names without case; a catalog
/// read for lineage folds table names too, so `People` and `people` are read as one: the
/// stricter protection wins). Not traced: a name with non-ASCII letters (the server matches
/// column names under its system collation, which folds more than case); `:=` (a user variable
/// assigned inside an expression carries the value out of the result); a relation, alias or
/// CTE name spelled in two cases (the server tells `A` from `a` there: folded, one would be
/// read as the other).
pub(super) fn lineage_statement(text: &str, options: LexOptions) -> Result<Statement, String> {
    let canonical = Canonical::of(text, options)?;
    if let Some(reason) = canonical.version_dependent {
        return Err(reason);
    }
    let word = |i: usize| canonical.words.get(i).map(|w| w.text.to_ascii_lowercase()).unwrap_or_default();
    let quoting = match (word(0).as_str(), word(1).as_str()) {
        // Messages of earlier statements (a conversion warning quotes the value), statement
        // texts of other sessions, engine and profiling internals, replication events.
        (
            "show",
            "warnings" | "errors" | "processlist" | "engine" | "profile" | "profiles" | "binlog" | "relaylog" | "slave"
            | "replica" | "all" | "full",
        ) => true,
        ("get", _) => true,
        _ => false,
    };
    if quoting {
        return Err(format!("{} {} shows texts that may quote values of other statements", word(0), word(1)));
    }
    // The canonical text quotes identifiers with backticks only, and keeps only strings that
    // read the same under every mode.
    let plain = LexOptions::mysql(false, false);
    let mut folded = String::with_capacity(canonical.text.len());
    // Each folded name's first spelling, and the names spelled in more than one case.
    let mut spellings: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut two_cases: std::collections::HashSet<String> = std::collections::HashSet::new();
    for t in Lexer::new(&canonical.text, plain) {
        let raw = &canonical.text[t.range()];
        match t.kind {
            TokenKind::Identifier | TokenKind::QuotedIdentifier { .. } | TokenKind::Variable if !raw.is_ascii() => {
                return Err(format!(
                    "the name {raw} has non-ASCII letters, which the server may match to another column"
                ));
            }
            TokenKind::Identifier | TokenKind::QuotedIdentifier { .. } => {
                let lower = raw.to_ascii_lowercase();
                let name = lower.trim_matches('`').to_string();
                let first = spellings.entry(name.clone()).or_insert(raw.trim_matches('`'));
                if *first != raw.trim_matches('`') {
                    two_cases.insert(name);
                }
                folded.push_str(&lower);
            }
            TokenKind::Punctuation if raw == ":=" => {
                return Err(
                    "assigns a user variable inside an expression (:=), which carries values out of the result".into(),
                );
            }
            _ => folded.push_str(raw),
        }
    }
    let mut statements = Parser::parse_sql(&MySqlDialect {}, &folded).map_err(|e| e.to_string())?;
    let statement = match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => s,
        _ => return Err("not one statement".into()),
    };
    if !two_cases.is_empty()
        && let Some(name) = relation_names(&statement).into_iter().find(|n| two_cases.contains(n))
    {
        return Err(format!(
            "names a relation, alias or CTE {name} in two cases, which the server tells apart and the analyser does not"
        ));
    }
    Ok(statement)
}

/// Every name a statement gives a relation: relation names (their last part), aliases of FROM
/// items, and CTE names.
fn relation_names(statement: &Statement) -> Vec<String> {
    use ast::TableFactor as F;
    struct Names(Vec<String>);
    impl ast::Visitor for Names {
        type Break = ();
        fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> std::ops::ControlFlow<()> {
            self.0.extend(relation.0.last().and_then(|p| p.as_ident()).map(|i| i.value.clone()));
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &F) -> std::ops::ControlFlow<()> {
            let alias = match factor {
                F::Table { alias, .. }
                | F::Derived { alias, .. }
                | F::TableFunction { alias, .. }
                | F::Function { alias, .. }
                | F::UNNEST { alias, .. }
                | F::JsonTable { alias, .. }
                | F::NestedJoin { alias, .. } => alias.as_ref(),
                _ => None,
            };
            self.0.extend(alias.map(|a| a.name.value.clone()));
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &ast::Query) -> std::ops::ControlFlow<()> {
            for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
                self.0.push(cte.alias.name.value.clone());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut names = Names(Vec::new());
    let _ = statement.visit(&mut names);
    names.0
}
