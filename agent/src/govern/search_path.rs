//! Whether the session's search_path still puts pg_catalog first for functions and operators.
//! The analyser trusts an unqualified built-in name (`lower`, `upper`) only because PostgreSQL
//! searches pg_catalog before every schema of the search_path unless the search_path lists
//! pg_catalog later. A session that lists it after another schema, or changes the search_path
//! in a way the proxy cannot read, may call a user function of that name instead.
//!
//! A session starts trusted: PostgreSQL 15 does not report the search_path, and a role's or
//! database's default (`ALTER ROLE ... SET search_path`) is not seen (docs/decisions.md).

use crate::sql::{Analysis, Class, ClassSet, LexOptions, Lexer, TokenKind};

/// Like [`after`], for a statement judged as what it runs (`effects`): SQL EXECUTE and FETCH run
/// a prepared query or a cursor, which cannot be a SET but can call `set_config`.
pub fn after_judged(raw: &str, analysis: &Analysis, effects: ClassSet, options: LexOptions) -> Option<bool> {
    if analysis.executes.is_some() || analysis.fetches.is_some() {
        let changing = ClassSet::of(&[Class::Session, Class::Unknown, Class::Dcl]);
        return effects.intersects(changing).then_some(false);
    }
    after(raw, analysis, options)
}

/// What a forwarded statement does to the trust in unqualified built-in names: `Some(trusted)`
/// if it changes the search_path, `None` if it leaves it alone.
pub fn after(raw: &str, analysis: &Analysis, options: LexOptions) -> Option<bool> {
    if analysis.effects.contains(Class::Unknown) || analysis.class == Class::Unknown {
        // Code the proxy cannot read may run SET search_path.
        return Some(false);
    }
    let lower = raw.to_ascii_lowercase();
    if !lower.contains("search_path") {
        return match words(raw, options, 2).as_slice() {
            [a, b] if (a == "reset" || a == "discard") && b == "all" => Some(true),
            _ => None,
        };
    }
    let words = words(raw, options, 64);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["reset", "search_path", ..] => Some(true),
        ["set", "search_path", rest @ ..]
        | ["set", "session", "search_path", rest @ ..]
        | ["set", "local", "search_path", rest @ ..] => {
            let values: Vec<&str> = rest.iter().copied().skip_while(|v| *v == "to" || *v == "=").collect();
            if values.first() == Some(&"default") {
                return Some(true);
            }
            let listed: Vec<&str> = values.into_iter().filter(|v| *v != ",").collect();
            Some(match listed.iter().position(|v| *v == "pg_catalog") {
                None => true,
                Some(i) => i == 0,
            })
        }
        // set_config('search_path', ...), UPDATE pg_settings, anything else naming it: not read.
        _ => Some(false),
    }
}

/// The first `max` words of a statement: keywords and identifiers folded as the server folds
/// them, quoted identifiers and string contents verbatim, punctuation as itself; comments and
/// whitespace dropped.
fn words(raw: &str, options: LexOptions, max: usize) -> Vec<String> {
    Lexer::new(raw, options)
        .filter(|t| !t.kind.is_trivia())
        .take(max)
        .map(|t| {
            let text = &raw[t.range()];
            match t.kind {
                TokenKind::Identifier => text.to_ascii_lowercase(),
                TokenKind::QuotedIdentifier { unicode: false } => text.trim_matches('"').replace("\"\"", "\""),
                TokenKind::StringLiteral(_) => text.trim_matches('\'').to_string(),
                _ => text.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::analyse;

    fn check(sql: &str) -> Option<bool> {
        after(sql, &analyse(sql), LexOptions::default())
    }

    #[test]
    fn a_search_path_that_puts_a_schema_before_pg_catalog_is_not_trusted() {
        assert_eq!(check("SET search_path = public, pg_catalog"), Some(false));
        assert_eq!(check("set search_path to \"public\", 'pg_catalog'"), Some(false));
        assert_eq!(check("SET search_path = pg_catalog, public"), Some(true));
        assert_eq!(check("SET LOCAL search_path TO app, public"), Some(true), "pg_catalog implicitly first");
        assert_eq!(check("SET search_path TO DEFAULT"), Some(true));
        assert_eq!(check("RESET search_path"), Some(true));
        assert_eq!(check("select set_config('search_path', 'public, pg_catalog', false)"), Some(false));
        assert_eq!(check("/* c */ SET /* c */ search_path = public, /* x */ pg_catalog"), Some(false));
        assert_eq!(check("select 1"), None);
        assert_eq!(check("DISCARD ALL"), Some(true));
        assert_eq!(check("DO $$ begin perform 1; end $$"), Some(false), "unknown code may set it");
    }
}
