//! Whether the session's search_path may no longer put pg_catalog first for functions,
//! operators and types. The analyser trusts an unqualified built-in name (`lower`, `||`,
//! `::text`) only because PostgreSQL searches pg_catalog before every schema of the search_path
//! unless the search_path lists it later. Once a session may have changed that, the trust is
//! gone for good: a statement that resolves such a name is then `unknown`.
//!
//! One-way on purpose: a change back (a later SET, RESET, DISCARD) may be undone by the server
//! without the proxy seeing it (a ROLLBACK reverts a SET, a SET LOCAL ends with its
//! transaction, a RESET restores a role's default the proxy never sees), so nothing restores
//! trust but a new session. A session starts trusted: PostgreSQL 15 does not report the
//! search_path, and a role's or database's default (`ALTER ROLE ... SET search_path`) is not
//! seen (docs/decisions.md).

use crate::sql::{Analysis, Class, ClassSet, LexOptions, Lexer, TokenKind};

/// Like [`may_distrust`], for a statement judged as what it runs (`effects`): SQL EXECUTE and
/// FETCH run a prepared query or a cursor, which cannot be a SET but can call `set_config`.
pub fn may_distrust_judged(raw: &str, analysis: &Analysis, effects: ClassSet, options: LexOptions) -> bool {
    if analysis.executes.is_some() || analysis.fetches.is_some() {
        return effects.intersects(ClassSet::of(&[Class::Session, Class::Unknown, Class::Dcl]));
    }
    may_distrust(raw, analysis, options)
}

/// Whether a forwarded statement may have changed the search_path so that pg_catalog is no
/// longer first: anything that names the search_path in a way not read exactly as a SET that
/// keeps pg_catalog first (or unlisted), and any code the proxy cannot read.
pub fn may_distrust(raw: &str, analysis: &Analysis, options: LexOptions) -> bool {
    if analysis.effects.contains(Class::Unknown) || analysis.class == Class::Unknown {
        return true;
    }
    let words: Vec<Word> = Lexer::new(raw, options)
        .filter(|t| !t.kind.is_trivia())
        .map(|t| {
            let text = &raw[t.range()];
            match t.kind {
                TokenKind::Identifier => Word::Plain(text.to_ascii_lowercase()),
                // A plain quoted identifier or string, without escapes or doubled quotes.
                TokenKind::QuotedIdentifier { unicode: false } if !text[1..text.len() - 1].contains('"') => {
                    Word::Plain(text[1..text.len() - 1].to_string())
                }
                TokenKind::StringLiteral(kind)
                    if kind == crate::sql::StringKind::Plain
                        && text.starts_with('\'')
                        && text.len() >= 2
                        && !text[1..text.len() - 1].contains(['\'', '\\']) =>
                {
                    Word::Plain(text[1..text.len() - 1].to_string())
                }
                TokenKind::Punctuation if text == "," => Word::Comma,
                TokenKind::Operator if text == "=" => Word::Equals,
                _ => Word::Other,
            }
        })
        .collect();
    let plain = |w: &Word, s: &str| matches!(w, Word::Plain(p) if p == s);
    let is_set = words.first().is_some_and(|w| plain(w, "set") || plain(w, "reset"));
    if !is_set {
        // Not a SET or RESET: a function (set_config), an UPDATE of pg_settings, a DISCARD, ...
        return raw.to_ascii_lowercase().contains("search_path") || words.first().is_some_and(|w| plain(w, "discard"));
    }
    let mut rest = &words[1..];
    if rest.first().is_some_and(|w| plain(w, "session") || plain(w, "local")) {
        rest = &rest[1..];
    }
    match rest.first() {
        Some(Word::Plain(name)) if name == "search_path" => {}
        // SET/RESET of another setting, read exactly: no change.
        Some(Word::Plain(name)) if name != "all" && !name.contains("search") => return false,
        // RESET ALL, an escaped or unreadable name, a lone SET: may change it.
        _ => return true,
    }
    if plain(&words[0], "reset") {
        return true;
    }
    let values = &rest[1..];
    let values = match values.first() {
        Some(w) if plain(w, "to") || matches!(w, Word::Equals) => &values[1..],
        _ => values,
    };
    let mut listed = Vec::new();
    for (i, w) in values.iter().enumerate() {
        match (i % 2, w) {
            (0, Word::Plain(v)) => listed.push(v.as_str()),
            (1, Word::Comma) => {}
            _ => return true,
        }
    }
    match listed.as_slice() {
        [] | ["default"] => true,
        list => list.iter().position(|v| *v == "pg_catalog").is_some_and(|i| i > 0),
    }
}

enum Word {
    Plain(String),
    Comma,
    Equals,
    Other,
}

/// Whether a statement's text resolves an operator or a type by name (which the search_path
/// decides, as it does for unqualified functions).
pub fn resolves_operators_or_types(normalised: &str) -> bool {
    Lexer::new(normalised, LexOptions::default()).any(|t| {
        let text = &normalised[t.range()];
        match t.kind {
            // `?` is what normalisation leaves for a literal (a jsonb `?` operator is missed).
            TokenKind::Operator => text != "?",
            TokenKind::Punctuation => text == "::",
            TokenKind::Identifier => text.eq_ignore_ascii_case("cast"),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::analyse;

    fn check(sql: &str) -> bool {
        may_distrust(sql, &analyse(sql), LexOptions::default())
    }

    #[test]
    fn anything_that_may_put_a_schema_before_pg_catalog_voids_the_trust() {
        for sql in [
            "SET search_path = public, pg_catalog",
            "set search_path to \"public\", 'pg_catalog'",
            "SET search_path = public, E'pg_catalog'",
            "SET search_path = public, U&\"pg_catalog\"",
            "SET search_path = public, $$pg_catalog$$",
            "SET U&\"search\\005fpath\" = public, pg_catalog",
            "/* c */ SET /* c */ search_path = public, /* x */ pg_catalog",
            "select set_config('search_path', 'public, pg_catalog', false)",
            "RESET search_path",
            "SET search_path TO DEFAULT",
            "RESET ALL",
            "DISCARD ALL",
            "DO $$ begin perform 1; end $$",
        ] {
            assert!(check(sql), "{sql}");
        }
        let long = format!("SET search_path = {}, pg_catalog", vec!["public"; 60].join(", "));
        assert!(check(&long), "a long list is read whole");
    }

    #[test]
    fn settings_that_keep_pg_catalog_first_keep_the_trust() {
        for sql in [
            "SET search_path = pg_catalog, public",
            "SET LOCAL search_path TO app, public",
            "SET work_mem = '64MB'",
            "RESET work_mem",
            "select 1",
        ] {
            assert!(!check(sql), "{sql}");
        }
    }

    #[test]
    fn operators_casts_and_types_resolve_through_the_search_path() {
        assert!(resolves_operators_or_types("select ? || ?"));
        assert!(resolves_operators_or_types("select ?::text"));
        assert!(resolves_operators_or_types("select cast(? as int)"));
        assert!(!resolves_operators_or_types("select id from t"));
        assert!(!resolves_operators_or_types("select pg_catalog.upper(?)"), "a normalised literal");
    }
}
