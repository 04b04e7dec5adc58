//! Whether the session's search_path may no longer put pg_catalog first for functions,
//! operators and types. Without the database's facts (a session no policy guards is not
//! asked), the analyser trusts an unqualified built-in name (`lower`, `||`, `::text`) only
//! because PostgreSQL searches pg_catalog before every schema of the search_path unless the
//! search_path lists it later; once a session may have changed that, the trust is gone until
//! the server's own search_path is read again (`SessionGovern::on_facts`, at an idle point).
//! With the facts, the schemas an unqualified name reaches are taken from the server and the
//! catalog says which user objects there may shadow a built-in (`sql/catalog.rs`).

pub use crate::sql::contains_ci;
use crate::sql::{Analysis, Class, ClassSet, LexOptions, Lexer, TokenKind};

/// Whether a forwarded statement may have changed the search_path so that pg_catalog is no
/// longer first: anything that names the search_path in a way not read exactly as a SET that
/// keeps pg_catalog first (or unlisted), and any code the proxy cannot read.
pub fn may_distrust(raw: &str, effects: ClassSet, options: LexOptions) -> bool {
    if effects.contains(Class::Unknown) {
        return true;
    }
    // Most statements name none of it: not lexed (this runs for every statement).
    if !["set", "search_path", "discard"].iter().any(|w| contains_ci(raw, w)) {
        return false;
    }
    let mut tokens = Lexer::new(raw, options).filter(|t| !t.kind.is_trivia()).map(|t| Word::of(raw, t));
    let first = tokens.next();
    let plain = |w: &Word, s: &str| matches!(w, Word::Plain(p) if p == s);
    let is_set = first.as_ref().is_some_and(|w| plain(w, "set") || plain(w, "reset"));
    if !is_set {
        // Not a SET or RESET: a function (set_config), an UPDATE of pg_settings, a DISCARD, ...
        // (the rest of the text is not lexed: every UPDATE gets here).
        return contains_ci(raw, "search_path") || first.is_some_and(|w| plain(&w, "discard"));
    }
    let words: Vec<Word> = first.into_iter().chain(tokens).collect();
    let mut rest = &words[1..];
    if rest.first().is_some_and(|w| plain(w, "session") || plain(w, "local")) {
        rest = &rest[1..];
    }
    // A setting's name is looked up without ASCII case, quoted or not (`SET "Search_Path"`).
    match rest.first().map(|w| match w {
        Word::Plain(name) => Some(name.to_ascii_lowercase()),
        _ => None,
    }) {
        Some(Some(name)) if name == "search_path" => {}
        // SET/RESET of another setting, read exactly: no change.
        Some(Some(name)) if name != "all" && !name.contains("search") => return false,
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

/// `SET [SESSION | LOCAL] SCHEMA 'name'`: PostgreSQL's other spelling of `SET search_path TO
/// name` (one schema: pg_catalog stays first, but unqualified relations resolve elsewhere).
fn sets_schema(raw: &str, options: LexOptions) -> bool {
    if !(contains_ci(raw, "set") && contains_ci(raw, "schema")) {
        return false;
    }
    let words: Vec<Word> =
        Lexer::new(raw, options).filter(|t| !t.kind.is_trivia()).take(3).map(|t| Word::of(raw, t)).collect();
    let is = |w: Option<&Word>, s: &str| matches!(w, Some(Word::Plain(p)) if p.eq_ignore_ascii_case(s));
    if !is(words.first(), "set") {
        return false;
    }
    let name = if is(words.get(1), "session") || is(words.get(1), "local") { words.get(2) } else { words.get(1) };
    is(name, "schema")
}

/// Whether a statement writes `pg_settings` (its rules run `set_config` for every row written).
fn writes_settings(analysis: &Analysis) -> bool {
    analysis.relations.iter().any(|r| r.name == "pg_settings" && r.schema.as_deref().is_none_or(|s| s == "pg_catalog"))
}

/// The text between an opening and a closing `quote`, if `text` has both.
fn between(text: &str, quote: char) -> Option<&str> {
    text.strip_prefix(quote)?.strip_suffix(quote)
}

/// What judging and forwarding a statement read of its raw text, beyond its description (its
/// normalised and analysed forms): whether the text may define code, and what its words,
/// literals included, say of the search_path. Every reading of a statement's raw text that
/// judging makes goes through this (SQL PREPARE's body and a string's sqlcommenter tags
/// aside, which are never given again by shape): two texts of one shape with the same
/// `RawReads` are judged alike, so `reuse` gives a kept judgement to a statement that differs
/// from it only by its literals when their `RawReads` are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawReads {
    /// It may define functions, operators, types or casts (`describe::may_define`).
    pub defines: bool,
    /// It names the search_path, a DISCARD, a temporary object, or a RESET of all settings.
    names_path: bool,
    /// Read as a SET (or not one), it may have put pg_catalog after another schema.
    distrusts: bool,
}

impl RawReads {
    pub fn of(raw: &str, options: LexOptions) -> Self {
        RawReads {
            defines: super::describe::may_define(raw, options),
            names_path: contains_ci(raw, "search_path")
                || contains_ci(raw, "discard")
                // A temporary object creates the session's temporary schema, searched first.
                || contains_ci(raw, "temp")
                || (contains_ci(raw, "reset") && contains_ci(raw, "all"))
                || sets_schema(raw, options),
            distrusts: may_distrust(raw, ClassSet::EMPTY, options),
        }
    }

    /// Like [`may_distrust`], for the statement judged as what it runs (`effects`): SQL EXECUTE
    /// and FETCH run a prepared query or a cursor, which cannot be a SET but can call
    /// `set_config`.
    pub fn may_distrust_judged(self, analysis: &Analysis, effects: ClassSet) -> bool {
        if analysis.executes.is_some() || analysis.fetches.is_some() {
            return effects.intersects(ClassSet::of(&[Class::Session, Class::Unknown, Class::Dcl]));
        }
        effects.contains(Class::Unknown)
            || self.distrusts
            // A write of pg_settings whose settings the analyser could not name (it is `Dcl`
            // then: it can set the role too), however its name is spelled.
            || (effects.contains(Class::Dcl) && writes_settings(analysis))
    }

    /// Whether the forwarded statement may change the schemas of the search_path at all (even
    /// keeping pg_catalog first): it names the search_path, resets settings, or runs code.
    pub fn may_change_path(self, analysis: &Analysis, effects: ClassSet) -> bool {
        effects.intersects(ClassSet::of(&[Class::Unknown, Class::Dcl]))
            // MySQL's USE: unqualified names resolve in another database from here.
            || analysis.use_database.is_some()
            || self.names_path
            || self.may_distrust_judged(analysis, effects)
    }
}

/// Whether a search_path setting as the server shows it (`SHOW search_path`) keeps pg_catalog
/// first for functions and operators: it is not listed, or nothing but pg_temp (never searched
/// for them) comes before it.
pub fn setting_trusts_builtins(setting: &str) -> bool {
    let entries = entries(setting);
    match entries.iter().position(|e| e == "pg_catalog") {
        None => true,
        Some(i) => entries[..i].iter().all(|e| e == "pg_temp"),
    }
}

/// The schemas a search_path setting (as the server shows it) names, `$user` as `user`.
pub fn schemas(setting: &str, user: &str) -> Vec<String> {
    entries(setting).into_iter().map(|e| if e == "$user" { user.to_string() } else { e }).collect()
}

/// The entries of a search_path setting, read as the server reads the list.
fn entries(setting: &str) -> Vec<String> {
    crate::sql::split_identifiers(setting, ',').into_iter().map(cut).collect()
}

/// A name cut to NAMEDATALEN - 1 bytes at a character boundary, as the server cuts it.
fn cut(mut name: String) -> String {
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

enum Word {
    Plain(String),
    Comma,
    Equals,
    Other,
}

impl Word {
    fn of(raw: &str, token: crate::sql::Token) -> Word {
        let text = &raw[token.range()];
        match token.kind {
            TokenKind::Identifier => Word::Plain(text.to_ascii_lowercase()),
            // A plain quoted identifier or string, closed, without escapes or doubled
            // quotes (an unclosed one, at the end of the text, is not read as a word).
            TokenKind::QuotedIdentifier { unicode: false }
                if let Some(inside) = between(text, '"').filter(|i| !i.contains('"')) =>
            {
                Word::Plain(inside.to_string())
            }
            TokenKind::StringLiteral(crate::sql::StringKind::Plain)
                if let Some(inside) = between(text, '\'').filter(|i| !i.contains(['\'', '\\'])) =>
            {
                Word::Plain(inside.to_string())
            }
            TokenKind::Punctuation if text == "," => Word::Comma,
            TokenKind::Operator if text == "=" => Word::Equals,
            _ => Word::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::analyse;

    /// An unclosed quote at the end of the text, after a multi-byte character, is no word (it
    /// was sliced inside the character, and the session's task panicked).
    #[test]
    fn an_unclosed_quote_is_read_without_a_panic() {
        for text in ["set 'aé", "set \"aé", "discard \"é", "set search_path = 'é", "set \"", "set '"] {
            assert!(may_distrust(text, ClassSet::EMPTY, LexOptions::default()), "{text}: may change it");
        }
        assert!(!may_distrust("set work_mem = '64MB'", ClassSet::EMPTY, LexOptions::default()));
        assert!(may_distrust("set search_path = 'app', 'pg_catalog'", ClassSet::EMPTY, LexOptions::default()));
        assert!(!may_distrust("set search_path = \"pg_catalog\", app", ClassSet::EMPTY, LexOptions::default()));
    }
    #[test]
    fn contains_ci_finds_a_word_in_any_case_anywhere() {
        for (hay, needle, found) in [
            ("SET search_path", "set", true),
            ("x sEt", "set", true),
            ("Search_Pat", "search_path", false),
            ("se", "set", false),
            ("", "temp", false),
            ("ssset", "set", true),
            ("é TEMP é", "temp", true),
            ("tem", "temp", false),
            ("t e m p", "temp", false),
        ] {
            assert_eq!(contains_ci(hay, needle), found, "{hay:?} {needle:?}");
        }
    }

    fn check(sql: &str) -> bool {
        let analysis = analyse(sql);
        may_distrust(sql, analysis.effects.with(analysis.class), LexOptions::default())
    }

    #[test]
    fn settings_as_the_server_shows_them() {
        for trusted in ["\"$user\", public", "", "pg_catalog, public", "pg_temp, pg_catalog", "PG_CATALOG, x"] {
            assert!(setting_trusts_builtins(trusted), "{trusted}");
        }
        for untrusted in ["public, pg_catalog", "\"$user\", evil, pg_catalog", "\"a,b\", pg_catalog", "x, PG_Catalog"] {
            assert!(!setting_trusts_builtins(untrusted), "{untrusted}");
        }
        assert!(!setting_trusts_builtins("\"PG_CATALOG\", pg_catalog"), "a quoted name keeps its case");
        assert_eq!(schemas("\"$user\", Public, \"A b\"", "bot"), ["bot", "public", "A b"]);
        let escaped = "SET U&\"search\\005fpath\" = evil, pg_catalog";
        assert!(
            RawReads::of(escaped, LexOptions::default()).may_change_path(&analyse(escaped), analyse(escaped).effects)
        );
        let long = format!("{}, pg_catalog", "a".repeat(70));
        assert_eq!(schemas(&long, "u")[0].len(), 63, "cut as the server cuts names");
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
            // Adjacent strings, which the server joins into one name.
            "select set_config('search_'\n'path', 'public, pg_catalog', false)",
            "RESET search_path",
            "SET search_path TO DEFAULT",
            "RESET ALL",
            "DISCARD ALL",
            "/* set */ discard temp",
            // A setting's name is looked up without ASCII case, quoted too.
            "SET \"Search_Path\" TO evil, pg_catalog",
            "SET LOCAL \"SEARCH_PATH\" = evil, pg_catalog",
            "RESET \"Search_Path\"",
            "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
            "DO $$ begin perform 1; end $$",
        ] {
            assert!(check(sql), "{sql}");
        }
        let long = format!("SET search_path = {}, pg_catalog", vec!["public"; 60].join(", "));
        assert!(check(&long), "a long list is read whole");
    }

    #[test]
    fn a_write_of_pg_settings_by_a_computed_name_voids_the_trust() {
        let judged = |sql: &str| {
            let analysis = analyse(sql);
            let effects = analysis.effects.with(analysis.class);
            RawReads::of(sql, LexOptions::default()).may_distrust_judged(&analysis, effects)
        };
        for sql in [
            "UPDATE pg_settings SET setting = 'evil, pg_catalog' WHERE name = 'search'||'_path'",
            "update PG_SETTINGS set setting = 'evil, pg_catalog' where name ilike 'SEARCH%PATH'",
            "UPDATE U&\"pg\\005fsettings\" SET setting = 'evil, pg_catalog' WHERE name = 'search'||'_path'",
            // A FROM list's own `name` says nothing of which settings are written.
            "UPDATE pg_settings s SET setting = 'evil, pg_catalog' FROM (VALUES ('work_mem')) v(name) WHERE v.name = 'work_mem' AND s.name LIKE 'search%path'",
        ] {
            assert!(judged(sql), "{sql}");
        }
        for sql in [
            "select name, setting from pg_settings",
            "UPDATE pg_settings SET setting = '64MB' WHERE name = 'work_mem'",
            "GRANT SELECT ON t TO bot",
        ] {
            assert!(!judged(sql), "{sql}");
        }
    }

    #[test]
    fn set_schema_may_change_where_relations_resolve() {
        for sql in ["SET SCHEMA 'crm'", "set session /* x */ schema 'crm'", "SET LOCAL SCHEMA 'crm'"] {
            let analysis = analyse(sql);
            let effects = analysis.effects.with(analysis.class);
            let reads = RawReads::of(sql, LexOptions::default());
            assert!(reads.may_change_path(&analysis, effects), "{sql}");
            assert!(!reads.may_distrust_judged(&analysis, effects), "one schema, pg_catalog still first: {sql}");
        }
        for sql in ["create schema crm", "select * from information_schema.tables offset 1", "set search_path_x = 1"] {
            assert!(!sets_schema(sql, LexOptions::default()), "{sql}");
        }
    }

    #[test]
    fn settings_that_keep_pg_catalog_first_keep_the_trust() {
        for sql in [
            "SET search_path = pg_catalog, public",
            "SET LOCAL search_path TO app, public",
            "SET work_mem = '64MB'",
            "RESET work_mem",
            "SET \"Work_Mem\" = '64MB'",
            "select 1",
            // Not a SET, though the word is in it: read from the first word alone.
            "update t set a = 1 where b = 'reset'",
            "/* set */ insert into settings values ('set')",
        ] {
            assert!(!check(sql), "{sql}");
        }
    }

    #[test]
    fn operators_casts_and_types_resolve_through_the_search_path() {
        assert!(crate::sql::catalog::resolves_by_name("select ? || ?"));
        assert!(crate::sql::catalog::resolves_by_name("select ?::text"));
        assert!(crate::sql::catalog::resolves_by_name("select cast(? as int)"));
        assert!(!crate::sql::catalog::resolves_by_name("select id from t"));
        assert!(!crate::sql::catalog::resolves_by_name("select pg_catalog.upper(?)"), "a normalised literal");
    }
}
