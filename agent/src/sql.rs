//! Statement analysis for the audit trail: class (by the most consequential effect), the
//! relations named, literal normalisation, and sqlcommenter tags. Parsed with sqlparser's
//! PostgreSQL dialect; results are cached by statement text.
//!
//! The policy engine builds on this; until it lands, the class is what the audit records.

use std::{
    collections::{BTreeMap, HashMap},
    ops::ControlFlow,
    sync::{Arc, Mutex},
};

use sqlparser::{
    ast::{Expr, SetExpr, Statement, visit_expressions, visit_relations},
    dialect::PostgreSqlDialect,
    parser::Parser,
};

/// Statements longer than this are not parsed (class `unknown`, with the reason).
pub const MAX_ANALYSED: usize = 1024 * 1024;
/// Statement texts longer than this are not kept in the description cache.
const MAX_CACHED: usize = 64 * 1024;

/// What a statement does, as far as the audit trail is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub class: &'static str,
    pub class_reason: Option<Arc<str>>,
    pub relations: Arc<[String]>,
}

fn rank(class: &str) -> u8 {
    match class {
        "ddl" => 7,
        "dcl" => 6,
        "write" => 5,
        "unknown" => 4,
        "read" => 3,
        "utility" => 2,
        "session" | "transaction" => 1,
        _ => 0,
    }
}

/// Functions known not to modify data (a call to anything else makes a read `unknown`).
fn read_only_function(name: &str) -> bool {
    const SAFE: &[&str] = &[
        "now",
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "coalesce",
        "lower",
        "upper",
        "length",
        "md5",
        "abs",
        "round",
        "concat",
        "substring",
        "substr",
        "trim",
        "repeat",
        "generate_series",
        "current_date",
        "current_timestamp",
        "date_trunc",
        "extract",
        "to_char",
        "to_timestamp",
        "array_agg",
        "string_agg",
        "json_build_object",
        "jsonb_build_object",
        "row_number",
        "rank",
        "greatest",
        "least",
        "nullif",
        "encode",
        "decode",
        "random",
        "version",
        "current_user",
        "current_database",
        "inet_client_addr",
        "inet_client_port",
        "pg_backend_pid",
        "pg_sleep",
        "format",
        "replace",
        "split_part",
        "left",
        "right",
        "position",
        "ceil",
        "floor",
        "mod",
        "array_length",
        "unnest",
        "exists",
        "cast",
        "date_part",
        "age",
        "clock_timestamp",
        "statement_timestamp",
    ];
    let base = name.rsplit('.').next().unwrap_or(name).trim_matches('"').to_ascii_lowercase();
    SAFE.contains(&base.as_str())
}

fn classify_one(stmt: &Statement) -> (&'static str, Option<String>) {
    use Statement as S;
    match stmt {
        S::Query(q) => {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    if matches!(
                        *cte.query.body,
                        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
                    ) {
                        return ("write", Some(format!("data-modifying CTE {}", cte.alias.name)));
                    }
                }
            }
            if let SetExpr::Select(select) = &*q.body
                && select.into.is_some()
            {
                return ("ddl", Some("SELECT INTO creates a table".into()));
            }
            let mut unknown_fn = None;
            let _ = visit_expressions(stmt, |e| {
                if let Expr::Function(f) = e {
                    let name = f.name.to_string();
                    if !read_only_function(&name) {
                        unknown_fn = Some(name);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            });
            match unknown_fn {
                Some(name) => ("unknown", Some(format!("calls {name}, not known to be read-only"))),
                None => ("read", None),
            }
        }
        S::Insert(_) | S::Update { .. } | S::Delete(_) | S::Merge { .. } => ("write", None),
        S::Copy { to, .. } => {
            if *to {
                ("read", None)
            } else {
                ("write", None)
            }
        }
        S::Truncate { .. } => ("ddl", Some("TRUNCATE removes all rows".into())),
        S::CreateTable(_)
        | S::CreateIndex(_)
        | S::CreateView { .. }
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction(_)
        | S::CreateExtension { .. }
        | S::CreateSequence { .. }
        | S::CreateType { .. }
        | S::AlterTable { .. }
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::Drop { .. }
        | S::DropFunction { .. } => ("ddl", None),
        S::Grant { .. } | S::Revoke { .. } | S::CreateRole { .. } | S::AlterRole { .. } => ("dcl", None),
        S::StartTransaction { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. } => ("transaction", None),
        S::Set(_) | S::ShowVariable { .. } | S::Discard { .. } | S::Reset(_) => ("session", None),
        S::Explain { analyze, statement, .. } => {
            if *analyze {
                let (class, reason) = classify_one(statement);
                (class, reason.or_else(|| Some("EXPLAIN ANALYZE executes the statement".into())))
            } else {
                ("read", None)
            }
        }
        S::Call(f) => ("unknown", Some(format!("CALL {}", f.name))),
        S::Execute { name, .. } => (
            "unknown",
            Some(format!("EXECUTE of prepared statement {}", name.as_ref().map(|n| n.to_string()).unwrap_or_default())),
        ),
        _ => ("utility", None),
    }
}

/// Analyses a (possibly multi-statement) string; the class is the most consequential one.
pub fn analyse(text: &str) -> Analysis {
    if text.len() > MAX_ANALYSED {
        // Bulk loads as one statement: parsing them would stall the session for no insight.
        return Analysis {
            class: "unknown",
            class_reason: Some(Arc::from(format!("{} bytes: too large to analyse", text.len()))),
            relations: Arc::from(Vec::new()),
        };
    }
    let trimmed = text.trim_start().as_bytes();
    if trimmed.len() >= 3
        && trimmed[..2].eq_ignore_ascii_case(b"do")
        && (trimmed[2].is_ascii_whitespace() || trimmed[2] == b'$')
    {
        return Analysis {
            class: "unknown",
            class_reason: Some("DO runs arbitrary procedural code".into()),
            relations: Arc::from(Vec::new()),
        };
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, text) {
        Ok(s) => s,
        Err(e) => {
            return Analysis {
                class: "unknown",
                class_reason: Some(Arc::from(format!("not parsed: {e}"))),
                relations: Arc::from(Vec::new()),
            };
        }
    };
    let mut class = "";
    let mut reason = None;
    let mut relations = Vec::new();
    for stmt in &statements {
        let (c, r) = classify_one(stmt);
        if rank(c) > rank(class) {
            class = c;
            reason = r;
        }
        let _ = visit_relations(stmt, |name| {
            let name = name.to_string();
            if !relations.contains(&name) {
                relations.push(name);
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Analysis {
        class: if class.is_empty() { "utility" } else { class },
        class_reason: reason.map(Arc::from),
        relations: Arc::from(relations),
    }
}

/// A statement text as the audit trail records it: normalised, and analysed.
#[derive(Debug, Clone)]
pub struct Described {
    /// Literals replaced by `?`.
    pub normalised: Arc<str>,
    pub analysis: Arc<Analysis>,
}

/// Descriptions by raw statement text (prepared statements repeat their text exactly: no
/// lexing or parsing on the hot path), over analyses by normalised text (simple queries that
/// differ only in literals share one parse).
pub struct DescriptionCache {
    raw: Mutex<HashMap<Arc<str>, Described>>,
    analyses: AnalysisCache,
    capacity: usize,
}

impl DescriptionCache {
    pub fn new(capacity: usize) -> Self {
        Self { raw: Mutex::new(HashMap::new()), analyses: AnalysisCache::new(capacity), capacity }
    }

    pub fn describe(&self, text: &str) -> Described {
        if let Some(d) = self.raw.lock().unwrap_or_else(|p| p.into_inner()).get(text) {
            return d.clone();
        }
        let parsable: Arc<str> = Arc::from(normalise_for_analysis(text));
        let described =
            Described { normalised: Arc::from(normalise(text)), analysis: self.analyses.analyse(&parsable) };
        if text.len() <= MAX_CACHED {
            let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
            if raw.len() >= self.capacity {
                raw.clear();
            }
            raw.insert(Arc::from(text), described.clone());
        }
        described
    }
}

/// A bounded cache of analyses by statement text.
pub struct AnalysisCache {
    entries: Mutex<HashMap<Arc<str>, Arc<Analysis>>>,
    capacity: usize,
}

impl AnalysisCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    pub fn analyse(&self, text: &Arc<str>) -> Arc<Analysis> {
        if let Some(a) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(text) {
            return a.clone();
        }
        let analysis = Arc::new(analyse(text));
        if text.len() > MAX_CACHED {
            return analysis;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            // Crude but bounded: start over (statement sets of applications are small).
            entries.clear();
        }
        entries.insert(text.clone(), analysis.clone());
        analysis
    }
}

/// Replaces literals (strings, escape/bit/hex/Unicode strings, dollar-quoted strings, numbers)
/// with `?`, leaving identifiers, keywords, parameters (`$1`) and comments.
pub fn normalise(text: &str) -> String {
    normalise_with(text, "?")
}

/// The normalised form that still parses (literals become `'?'`), for analysis and its cache.
pub fn normalise_for_analysis(text: &str) -> String {
    normalise_with(text, "'?'")
}

/// Splits a simple-query string into its statements at top-level semicolons (not inside
/// quotes, dollar quotes or comments); empty statements are dropped, as the server drops them.
pub fn split_statements(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        i = match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => text[i..].find('\n').map_or(b.len(), |n| i + n),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
            b'\'' => skip_quoted(b, i, b'\'', i > 0 && matches!(b[i - 1], b'e' | b'E')),
            b'"' => skip_quoted(b, i, b'"', false),
            b'$' => skip_dollar(text, i),
            b';' => {
                let stmt = text[start..i].trim();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                start = i + 1;
                i + 1
            }
            _ => i + 1,
        };
    }
    let stmt = text[start.min(text.len())..].trim();
    if !stmt.is_empty() && !stmt.starts_with("/*") {
        out.push(stmt);
    } else if let Some(last) = out.last_mut().filter(|_| !stmt.is_empty()) {
        // A trailing comment after the last semicolon (sqlcommenter) belongs to the last statement.
        let begin = last.as_ptr() as usize - text.as_ptr() as usize;
        *last = text[begin..].trim();
    }
    out
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash_escapes: bool) -> usize {
    i += 1;
    while i < b.len() {
        if backslash_escapes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn skip_dollar(text: &str, i: usize) -> usize {
    let b = text.as_bytes();
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_' || (j > i + 1 && b[j].is_ascii_digit())) {
        j += 1;
    }
    if j < b.len() && b[j] == b'$' && !(j > i + 1 && b[i + 1].is_ascii_digit()) {
        let tag = &text[i..=j];
        if let Some(end) = text[j + 1..].find(tag) {
            return j + 1 + end + tag.len();
        }
    }
    j.max(i + 1)
}

fn normalise_with(text: &str, placeholder: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    let mut literal = |from: usize, upto: usize, last: &mut usize| {
        out.push_str(&text[*last..from]);
        out.push_str(placeholder);
        *last = upto;
    };
    while i < b.len() {
        i = match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => text[i..].find('\n').map_or(b.len(), |n| i + n),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
            b'"' => skip_quoted(b, i, b'"', false),
            b'\'' => {
                let prev = |k: usize| i.checked_sub(k).map(|j| b[j]);
                let standalone = |k: usize| prev(k).is_none_or(|c| !is_ident(c));
                let escapes = matches!(prev(1), Some(b'e' | b'E')) && standalone(2);
                let upto = skip_quoted(b, i, b'\'', escapes);
                // Include a prefix: E'..', B'..', X'..', U&'..'.
                let from = match prev(1) {
                    Some(b'&') if matches!(prev(2), Some(b'u' | b'U')) => i - 2,
                    Some(b'e' | b'E' | b'b' | b'B' | b'x' | b'X') if standalone(2) => i - 1,
                    _ => i,
                };
                literal(from.max(last), upto, &mut last);
                upto
            }
            b'$' => {
                let upto = skip_dollar(text, i);
                // $tag$...$tag$ is a string; $1 is a parameter and stays.
                if b.get(i + 1).is_some_and(|c| !c.is_ascii_digit()) && upto > i + 1 && b[upto - 1] == b'$' {
                    literal(i, upto, &mut last);
                }
                upto
            }
            c if c.is_ascii_digit() && i.checked_sub(1).is_none_or(|j| !is_ident(b[j]) && b[j] != b'$') => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                    j += 1;
                }
                literal(i, j, &mut last);
                j
            }
            _ => i + 1,
        };
    }
    out.push_str(&text[last.min(text.len())..]);
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Tags of a trailing sqlcommenter comment: `... /*key='value',traceparent='00-..'*/`, keys and
/// values URL-encoded.
pub fn sqlcommenter_tags(text: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    let trimmed = text.trim_end().trim_end_matches(';').trim_end();
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
    fn classes_by_most_consequential_effect() {
        assert_eq!(analyse("select * from orders where id = 1").class, "read");
        assert_eq!(analyse("insert into t values (1)").class, "write");
        let cte = analyse("with d as (delete from orders returning *) select count(*) from d");
        assert_eq!(cte.class_reason.as_deref(), Some("data-modifying CTE d"));
        assert_eq!(cte.class, "write", "{cte:?}");
        assert_eq!(analyse("copy orders to stdout").class, "read");
        assert_eq!(analyse("copy orders from stdin").class, "write");
        assert_eq!(analyse("select 1; drop table orders").class, "ddl");
        assert_eq!(analyse("grant select on t to bob").class, "dcl");
        assert_eq!(analyse("begin").class, "transaction");
        assert_eq!(analyse("set search_path = x").class, "session");
        let f = analyse("select pg_terminate_backend(42)");
        assert_eq!((f.class, f.class_reason.is_some()), ("unknown", true));
        assert_eq!(analyse("do $$ begin perform 1; end $$").class, "unknown");
        assert_eq!(analyse("select from where").class, "unknown");
        assert_eq!(analyse("éé").class, "unknown", "non-ASCII start is not a panic");
        assert_eq!(analyse(&"select 1,".repeat(MAX_ANALYSED / 8)).class, "unknown");
        assert_eq!(analyse("explain analyze delete from t").class, "write");
        assert_eq!(analyse("explain delete from t").class, "read");
    }

    #[test]
    fn relations_named() {
        let a = analyse("select o.id from public.orders o join customers c on c.id = o.customer_id");
        assert_eq!(&*a.relations, &["public.orders".to_string(), "customers".to_string()]);
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
        assert_eq!(analyse(&n).class, "write");
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
