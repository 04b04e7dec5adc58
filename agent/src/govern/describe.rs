//! A message's text, cut into the statements the server will run and described (normalised,
//! analysed), or found ambiguous: a text whose reading depends on what the proxy cannot be
//! sure of is one statement of class unknown, never a guess.

use std::{ops::Range, sync::Arc};

use crate::{
    session::Lexing,
    sql::{
        Analysis, Class, ClassSet, Described, DescriptionCache, LexOptions, Lexer, TokenKind, normalise_with_options,
        split_statements_with,
    },
};

/// Statements of one simple-query string described one by one; the rest of a longer string is
/// one part (a string of millions of statements would otherwise cost gigabytes).
pub const MAX_PARTS: usize = 10_000;

/// One statement of a message.
#[derive(Debug, Clone)]
pub struct DescribedPart {
    /// Where it is in the message's text.
    pub span: Range<usize>,
    pub described: Described,
    /// Its reading is ambiguous: `described` holds no text, only the class unknown and why.
    pub ambiguous: bool,
}

/// Describes each statement of a (simple-query, when `simple`) string.
pub fn describe_parts(cache: &DescriptionCache, sql: &str, lexing: Lexing, simple: bool) -> Vec<DescribedPart> {
    let options = lexing.options();
    if !lexing.ascii_safe {
        // A quote or backslash byte may be the second half of a character: the text cannot
        // be split or normalised from its bytes (the wrong reading could hide a statement or
        // leak literals).
        return vec![ambiguous(sql, "the client encoding lets quote bytes hide inside characters")];
    }
    if options.dialect.is_mysql() {
        if let Some(reason) = mysql_ambiguity(sql, lexing, simple) {
            return vec![ambiguous(sql, reason)];
        }
    } else if !lexing.settled && sql.contains('\\') && lexes_both_ways_differently(sql, simple) {
        // A SET of standard_conforming_strings may be ahead of it in the pipeline, and the
        // text means something else under each setting: neither reading can be trusted.
        return vec![ambiguous(
            sql,
            "standard_conforming_strings may change before it runs, and the text reads differently under each",
        )];
    }
    if !lexing.settled && !sql.is_ascii() {
        // A SET of client_encoding may be ahead of it: its non-ASCII bytes may be read as
        // characters holding quote or backslash bytes.
        return vec![ambiguous(sql, "the client encoding may change before it runs, and the text is not ASCII")];
    }
    let mut parts = if simple { split_statements_with(sql, options) } else { vec![sql] };
    if parts.is_empty() {
        parts = vec![sql];
    }
    if parts.len() > MAX_PARTS {
        // Past the cap the rest of the string is one part: described as a whole, with its
        // outcome the last one the server reports.
        let start = offset(sql, parts[MAX_PARTS - 1]);
        parts.truncate(MAX_PARTS - 1);
        parts.push(&sql[start..]);
    }
    parts
        .into_iter()
        .map(|part| {
            let start = offset(sql, part);
            DescribedPart {
                span: start..start + part.len(),
                described: if simple { cache.describe_sent(part, options) } else { cache.describe_with(part, options) },
                ambiguous: false,
            }
        })
        .collect()
}

fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Whether `sql` splits or normalises differently with `standard_conforming_strings` on and off.
pub fn lexes_both_ways_differently(sql: &str, simple: bool) -> bool {
    let on = LexOptions::postgres(true);
    let off = LexOptions::postgres(false);
    (simple && split_statements_with(sql, on) != split_statements_with(sql, off))
        || normalise_with_options(sql, on) != normalise_with_options(sql, off)
}

/// Why a MySQL text cannot be read with confidence, if so:
/// - an executable comment that only some server versions run changes how it splits or what
///   its literals are;
/// - its `sql_mode` (ANSI_QUOTES, NO_BACKSLASH_ESCAPES) may change before it runs (not
///   settled), or is changed by one of its own statements before a later one (the server
///   lexes each statement of a string only when it reaches it), and the text reads otherwise
///   under another mode;
/// - its character set may change by one of its own statements (`SET NAMES`), and the rest is
///   not ASCII.
pub fn mysql_ambiguity(sql: &str, lexing: Lexing, simple: bool) -> Option<&'static str> {
    let options = lexing.options();
    if crate::sql::mysql_version_dependent(sql, options) {
        return Some("an executable comment that only some server versions run changes how the text reads");
    }
    let modes = [(false, false), (false, true), (true, false), (true, true)].map(|(a, n)| LexOptions::mysql(a, n));
    let differs = || {
        modes.iter().any(|m| {
            (simple && split_statements_with(sql, *m) != split_statements_with(sql, options))
                || normalise_with_options(sql, *m) != normalise_with_options(sql, options)
        })
    };
    let parts = if simple { split_statements_with(sql, options) } else { vec![sql] };
    let before_last = parts.len().saturating_sub(1);
    let mentions = |words: &[&str]| {
        parts[..before_last].iter().any(|part| {
            Lexer::new(part, options).any(|t| {
                matches!(t.kind, TokenKind::Identifier | TokenKind::Variable | TokenKind::QuotedIdentifier { .. })
                    && words.iter().any(|w| part[t.range()].to_ascii_lowercase().trim_start_matches('@').ends_with(w))
            })
        })
    };
    if !lexing.settled && differs() {
        return Some("sql_mode may change before it runs, and the text reads differently under another mode");
    }
    // EXECUTE and CALL may set sql_mode too; an executable comment can hide any of these words
    // only as code, which the lexer reads as tokens.
    if before_last > 0 && mentions(&["sql_mode", "execute", "call"]) && differs() {
        return Some("a statement of the text may change sql_mode before a later one that reads differently under it");
    }
    // The server finds settings by an accent-insensitive name: an earlier statement with
    // non-ASCII letters may set sql_mode or the character set under another spelling.
    if before_last > 0 && parts[..before_last].iter().any(|p| !p.is_ascii()) && (differs() || !sql.is_ascii()) {
        return Some(
            "an earlier statement of the text, spelled with non-ASCII letters, may change how later ones read",
        );
    }
    // EXECUTE / PREPARE may run a SET NAMES held in a string, which `mentions` cannot see.
    if before_last > 0
        && !sql.is_ascii()
        && mentions(&["names", "character", "charset", "character_set_client", "execute", "prepare"])
    {
        return Some("a statement of the text may change the character set before later non-ASCII ones");
    }
    None
}

/// A text whose reading is ambiguous: class unknown, no text kept.
fn ambiguous(sql: &str, reason: &str) -> DescribedPart {
    DescribedPart { span: 0..sql.len(), described: unknown_described(reason), ambiguous: true }
}

/// A description of a statement whose text is not known or not readable.
pub fn unknown_described(reason: &str) -> Described {
    Described {
        tags: Arc::default(),
        normalised: Arc::from(""),
        parsable: Arc::from(""),
        analysis: Arc::new(Analysis::unknown(reason)),
    }
}

/// The class set of an analysis, never empty.
pub fn effects_of(analysis: &Analysis) -> ClassSet {
    if analysis.effects.is_empty() { ClassSet::of(&[analysis.class]) } else { analysis.effects }
}

/// Whether a statement may define, change or drop what the catalog facts hold (functions,
/// operators, types, casts, and what contains them), read from its words: `CREATE`, `ALTER`,
/// `DROP` or `IMPORT` with any of those object words after it.
pub fn may_define(raw: &str, options: LexOptions) -> bool {
    const VERBS: &[&str] = &["alter", "create", "drop", "import"];
    // Most statements hold none of the verbs: not lexed (this runs for every statement).
    if !VERBS.iter().any(|v| super::search_path::contains_ci(raw, v)) {
        return false;
    }
    const OBJECTS: &[&str] = &[
        "aggregate",
        "cast",
        "domain",
        "extension",
        "function",
        "language",
        "operator",
        "procedure",
        "routine",
        "schema",
        "transform",
        "type",
    ];
    let mut words = Lexer::new(raw, options)
        .filter(|t| t.kind == TokenKind::Identifier)
        .map(|t| raw[t.range()].to_ascii_lowercase());
    match words.next() {
        Some(first) if VERBS.contains(&first.as_str()) => words.any(|w| OBJECTS.contains(&w.as_str())),
        _ => false,
    }
}

/// Whether a class of effect may change who the session acts as or how names resolve.
pub fn may_change_session_identity(effects: ClassSet) -> bool {
    effects.contains(Class::Dcl) || effects.contains(Class::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lexing() -> Lexing {
        Lexing {
            standard_conforming_strings: true,
            dialect: crate::session::Dialect::Postgres,
            settled: true,
            ascii_safe: true,
        }
    }

    #[test]
    fn a_mysql_mode_change_spelled_with_accents_makes_the_rest_ambiguous() {
        let mysql = Lexing { dialect: crate::session::Dialect::MYSQL, ..lexing() };
        let trap = "SET sql_modé='ANSI_QUOTES'; SELECT 1 AS \"a\\\"; DROP TABLE accounts; -- \"";
        assert!(mysql_ambiguity(trap, mysql, true).is_some(), "{trap}");
        let charset = "SET chäracter_set_client = gbk; SELECT '\u{bf}\\'; DROP TABLE accounts; -- '";
        assert!(mysql_ambiguity(charset, mysql, true).is_some(), "{charset}");
        assert!(mysql_ambiguity("SELECT 1; SELECT 2", mysql, true).is_none());
        let hidden = "EXECUTE IMMEDIATE 'SET NAMES gbk'; SELECT 1 AS `中``; DROP TABLE accounts; -- `";
        assert!(mysql_ambiguity(hidden, mysql, true).is_some(), "{hidden}");
    }

    #[test]
    fn texts_that_read_differently_under_each_setting_are_found() {
        assert!(lexes_both_ways_differently("select 'a\\'; drop table t; --'", true));
        assert!(lexes_both_ways_differently("select 'a\\' -- ' , 'secret'", false), "normalised differently");
        assert!(!lexes_both_ways_differently("select E'a\\'b' from t", true), "E-strings read alike");
        assert!(!lexes_both_ways_differently("select 1; select 2", true));
    }

    #[test]
    fn definitions_of_what_the_catalog_facts_hold_are_found() {
        let o = LexOptions::default();
        for sql in [
            "create or replace function lower(int) returns int language sql as 'select 1'",
            "CREATE OPERATOR + (function = f, leftarg = int)",
            "alter function f() volatile",
            "drop type t",
            "create domain d as int check (value > 0)",
            "create schema s",
            "/* x */ create cast (t as text) with function f(t)",
        ] {
            assert!(may_define(sql, o), "{sql}");
        }
        for sql in ["create table t (a int)", "select 'create function'", "insert into function values (1)"] {
            assert!(!may_define(sql, o), "{sql}");
        }
    }

    #[test]
    fn parts_have_their_spans_and_ambiguous_texts_none() {
        let cache = DescriptionCache::new(16);
        let sql = "select 1; delete from t";
        let parts = describe_parts(&cache, sql, lexing(), true);
        assert_eq!(parts.iter().map(|p| &sql[p.span.clone()]).collect::<Vec<_>>(), vec!["select 1", "delete from t"]);
        let unsettled = Lexing { settled: false, ..lexing() };
        let parts = describe_parts(&cache, "select 'a\\'; drop table t; --'", unsettled, true);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].ambiguous && parts[0].described.normalised.is_empty());
        assert_eq!(parts[0].described.analysis.class, Class::Unknown);
    }
}
