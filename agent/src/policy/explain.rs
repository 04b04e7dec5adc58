//! `warden policy explain`: for an identity and a SQL text, the analysis policy sees, the
//! policies that select the identity, and the rule that decides each statement and why.
//!
//! It also holds the adapter from the analyser's [`Analysis`] to [`StatementFacts`]
//! ([`facts_from_analysis`]).
//!
//! Unqualified names are resolved here without a server, so the candidates are an assumption,
//! stated in the output: relations in `public`, functions in `pg_catalog` then `public` (the
//! server always searches `pg_catalog`, implicitly first, and the dangerous built-ins live
//! there). `--search-path a,b` replaces `public` with the schemas given (functions still get
//! `pg_catalog` first unless it is listed).

use std::{collections::BTreeMap, fmt};

use super::{Decision, PolicySet, StatementFacts, Subject, describe_scope};
use crate::sql::{self, Analysis, Class, ClassSet, ObjectName};

/// The schemas an unqualified name may resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    relations: Vec<String>,
    functions: Vec<String>,
}

impl Default for SearchPath {
    /// Relations in `public`; functions in `pg_catalog`, then `public`.
    fn default() -> Self {
        SearchPath::new(&["public".to_string()])
    }
}

impl SearchPath {
    /// A search_path as the session would set it (`pg_catalog` is added first for functions
    /// unless listed, as the server does).
    pub fn new(schemas: &[String]) -> Self {
        let relations: Vec<String> = schemas.to_vec();
        let mut functions = relations.clone();
        if !functions.iter().any(|s| s == "pg_catalog") {
            functions.insert(0, "pg_catalog".to_string());
        }
        SearchPath { relations, functions }
    }

    /// Parses `a,b` (names folded as unquoted identifiers; quoted ones kept).
    pub fn parse(text: &str) -> Result<Self, String> {
        let schemas: Vec<String> = text
            .split(',')
            .map(|s| parse_object_name(s.trim()))
            .map(|n| if n.schema.is_none() { Ok(n.name) } else { Err(n) })
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--search-path {text:?}: expected schema names separated by commas"))?;
        if schemas.iter().any(String::is_empty) {
            return Err(format!("--search-path {text:?}: an empty schema name"));
        }
        Ok(SearchPath::new(&schemas))
    }

    fn resolve(name: &ObjectName, schemas: &[String]) -> Vec<ObjectName> {
        match &name.schema {
            Some(_) => vec![name.clone()],
            None => schemas.iter().map(|s| ObjectName::new(Some(s), &name.name)).collect(),
        }
    }

    /// The candidates of a relation name.
    pub fn relation(&self, name: &ObjectName) -> Vec<ObjectName> {
        SearchPath::resolve(name, &self.relations)
    }

    /// The candidates of a function name.
    pub fn function(&self, name: &ObjectName) -> Vec<ObjectName> {
        SearchPath::resolve(name, &self.functions)
    }

    fn describe(&self) -> String {
        format!(
            "unqualified relations resolve in [{}], functions in [{}]",
            self.relations.join(", "),
            self.functions.join(", ")
        )
    }
}

/// A name as written in SQL (`a.b.c`, `"My Schema".t`), normalised as the server reads it:
/// unquoted parts folded to lower case, quotes removed; a database before the schema dropped.
fn parse_object_name(text: &str) -> ObjectName {
    let mut parts = crate::sql::split_identifiers(text, '.');
    let name = parts.pop().unwrap_or_default();
    ObjectName { schema: parts.pop(), name }
}

/// Facts that own their data (what [`StatementFacts`] borrows).
#[derive(Debug, Clone)]
pub struct OwnedFacts {
    pub class: Class,
    pub effects: ClassSet,
    pub relations: Vec<Vec<ObjectName>>,
    pub functions: Vec<Vec<ObjectName>>,
    pub unscoped: bool,
    pub tags: BTreeMap<String, String>,
    pub reason: Option<String>,
}

impl OwnedFacts {
    pub fn facts(&self) -> StatementFacts<'_> {
        StatementFacts {
            class: self.class,
            effects: self.effects,
            relations: &self.relations,
            functions: &self.functions,
            unscoped: self.unscoped,
            tags: &self.tags,
            reason: self.reason.as_deref(),
        }
    }
}

/// The analyser's output as policy facts, with each unqualified name's candidate schemas from
/// `path`. The one place that knows both shapes.
pub fn facts_from_analysis(analysis: &Analysis, tags: BTreeMap<String, String>, path: &SearchPath) -> OwnedFacts {
    OwnedFacts {
        class: analysis.class,
        effects: analysis.effects.with(analysis.class),
        relations: analysis.relations.iter().map(|r| path.relation(r)).collect(),
        functions: analysis.functions.iter().map(|f| path.function(f)).collect(),
        unscoped: analysis.unscoped,
        tags,
        reason: analysis.class_reason.as_deref().map(str::to_string),
    }
}

/// One statement's analysis and judgement.
#[derive(Debug, Clone)]
pub struct StatementExplanation {
    pub text: String,
    pub facts: OwnedFacts,
    /// Each selected policy's decision (none: a dry-run policy), and with its dry-run rules
    /// enforced (when it has any).
    pub per_policy: Vec<(Option<Decision>, Option<Decision>)>,
    pub decision: Decision,
    /// The would-be decision with every dry-run policy and rule enforced (when one selects).
    pub would: Option<Decision>,
    /// The volume limits its results would be measured against.
    pub limits: Vec<super::limits::Limit>,
}

/// What `warden policy explain` prints.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub subject: String,
    pub loaded: Vec<String>,
    /// Name, location, scope of each selecting policy.
    pub selected: Vec<(String, String, String)>,
    pub search_path: String,
    pub statements: Vec<StatementExplanation>,
    /// The most restrictive of the statements' decisions (the first among equals).
    pub decision: Decision,
}

/// Explains `text` (split into statements as the proxy splits a simple query) for `subject`.
pub fn explain(set: &PolicySet, subject: &Subject<'_>, text: &str, path: &SearchPath) -> Explanation {
    let selection = set.select(subject);
    let selected = selection
        .names(set)
        .into_iter()
        .map(|name| {
            let location = set.location(name).map(|(f, l)| format!("{}:{l}", f.display())).unwrap_or_default();
            let scope = set.policy(name).map(describe_scope).unwrap_or_default();
            (name.to_string(), location, scope)
        })
        .collect();
    let tags = sql::sqlcommenter_tags(text);
    let mut statements = Vec::new();
    for statement in sql::split_statements(text) {
        // As the proxy does: literals become '?' before parsing, so analyses are shared.
        let analysis = sql::analyse(&sql::normalise_for_analysis(statement));
        let facts = facts_from_analysis(&analysis, tags.clone(), path);
        let view = facts.facts();
        statements.push(StatementExplanation {
            text: statement.to_string(),
            per_policy: selection.decide_each(set, &view),
            decision: super::fail_closed(selection.decide(set, &view), &view, selection.guards()),
            would: selection
                .decide_would(set, &view)
                .map(|would| super::fail_closed(would, &view, selection.would_guard())),
            limits: selection.limits(set, &view),
            facts,
        });
    }
    let decision = statements
        .iter()
        .map(|s| &s.decision)
        .fold(None::<&Decision>, |best, d| match best {
            Some(b) if !d.action.is_stricter_than(b.action) => Some(b),
            _ => Some(d),
        })
        .cloned()
        .unwrap_or_else(|| Decision {
            action: super::Action::Allow,
            policy: None,
            rule: None,
            reason: "no statement (empty or only comments)".into(),
            approval: None,
        });
    let labels: Vec<String> = subject.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Explanation {
        subject: format!(
            "labels {}; database {}; user {}",
            if labels.is_empty() { "(none)".to_string() } else { labels.join(", ") },
            subject.database,
            subject.user.unwrap_or("(unknown: every `users` filter applies)")
        ),
        loaded: set.names().map(str::to_string).collect(),
        selected,
        search_path: path.describe(),
        statements,
        decision,
    }
}

/// Statement text on one line, control characters escaped (it is the user's input, and it
/// goes to a terminal).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => " ".to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn names(objects: &[Vec<ObjectName>]) -> String {
    if objects.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = objects
        .iter()
        .map(|c| match c.as_slice() {
            [one] => one.to_string(),
            many => {
                let all: Vec<String> = many.iter().map(ToString::to_string).collect();
                format!("one of {{{}}}", all.join(", "))
            }
        })
        .collect();
    shown.join(", ")
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "identity: {}", self.subject)?;
        writeln!(
            f,
            "policies loaded: {}",
            if self.loaded.is_empty() { "none".into() } else { self.loaded.join(", ") }
        )?;
        if self.selected.is_empty() {
            writeln!(f, "selecting this identity: none")?;
        } else {
            writeln!(f, "selecting this identity:")?;
            for (name, location, scope) in &self.selected {
                writeln!(f, "  {name} ({location}): {scope}")?;
            }
        }
        writeln!(f, "names: {}", self.search_path)?;
        for (i, s) in self.statements.iter().enumerate() {
            let facts = &s.facts;
            writeln!(f)?;
            writeln!(f, "statement {}: {}", i + 1, printable(&s.text))?;
            let effects: Vec<&str> = facts.effects.with(facts.class).iter().map(Class::as_str).collect();
            write!(f, "  class: {} (effects: {})", facts.class, effects.join(", "))?;
            match &facts.reason {
                Some(r) => writeln!(f, " — {r}")?,
                None => writeln!(f)?,
            }
            writeln!(f, "  relations: {}", names(&facts.relations))?;
            writeln!(f, "  functions: {}", names(&facts.functions))?;
            writeln!(f, "  unscoped: {}", if facts.unscoped { "yes" } else { "no" })?;
            let tags: Vec<String> = facts.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  tags: {}", if tags.is_empty() { "none".into() } else { tags.join(", ") })?;
            for (d, would) in &s.per_policy {
                let by = |d: &Decision| d.rule.as_ref().map(|r| format!(" by rule {r}")).unwrap_or_default();
                match (d, would) {
                    (Some(d), would) => {
                        writeln!(f, "  {}: {}{}: {}", d.policy.as_deref().unwrap_or("-"), d.action, by(d), d.reason)?;
                        if let Some(w) = would.as_ref().filter(|w| *w != d) {
                            writeln!(f, "    with its dry-run rules: would {}{}: {}", w.action, by(w), w.reason)?;
                        }
                    }
                    (None, Some(w)) => writeln!(
                        f,
                        "  {} (dryrun, not enforced): would {}{}: {}",
                        w.policy.as_deref().unwrap_or("-"),
                        w.action,
                        by(w),
                        w.reason
                    )?,
                    (None, None) => {}
                }
            }
            writeln!(f, "  decision: {}", s.decision)?;
            if let Some(would) = &s.would {
                writeln!(f, "  would-be decision (dry-run enforced): {would}")?;
            }
            for l in &s.limits {
                writeln!(f, "  volume limit: {} by policy {}, rule {}", l.cap, l.policy, l.rule)?;
            }
        }
        if self.statements.len() != 1 {
            writeln!(f)?;
            writeln!(f, "decision: {}", self.decision)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn names_parse_as_the_server_reads_them() {
        assert_eq!(parse_object_name("Orders"), ObjectName::new(None, "orders"));
        assert_eq!(parse_object_name("Billing.Invoices"), ObjectName::new(Some("billing"), "invoices"));
        assert_eq!(parse_object_name("\"My Schema\".\"T\""), ObjectName::new(Some("My Schema"), "T"));
        assert_eq!(parse_object_name("db.s.t"), ObjectName::new(Some("s"), "t"));
        assert_eq!(parse_object_name("\"a.b\".\"x\"\"y\""), ObjectName::new(Some("a.b"), "x\"y"));
    }

    #[test]
    fn search_paths() {
        let d = SearchPath::default();
        assert_eq!(d.relation(&ObjectName::new(None, "t")), vec![ObjectName::new(Some("public"), "t")]);
        assert_eq!(
            d.function(&ObjectName::new(None, "f")),
            vec![ObjectName::new(Some("pg_catalog"), "f"), ObjectName::new(Some("public"), "f")]
        );
        assert_eq!(d.relation(&ObjectName::new(Some("s"), "t")), vec![ObjectName::new(Some("s"), "t")]);
        let p = SearchPath::parse("App, pg_catalog").expect("valid");
        assert_eq!(p.function(&ObjectName::new(None, "f")).len(), 2, "pg_catalog is not added twice");
        assert_eq!(p.relation(&ObjectName::new(None, "t"))[0], ObjectName::new(Some("app"), "t"));
        assert!(SearchPath::parse("a.b").is_err());
        assert!(SearchPath::parse("a,,b").is_err());
    }

    #[test]
    fn the_adapter_carries_effects_functions_and_unscoped() {
        let path = SearchPath::default();
        let delete = facts_from_analysis(&sql::analyse("delete from Orders"), BTreeMap::new(), &path);
        assert_eq!((delete.class, delete.unscoped), (Class::Write, true));
        assert_eq!(delete.relations, vec![vec![ObjectName::new(Some("public"), "orders")]]);
        let call = facts_from_analysis(&sql::analyse("select pg_read_file('x')"), BTreeMap::new(), &path);
        assert_eq!(
            call.functions,
            vec![vec![
                ObjectName::new(Some("pg_catalog"), "pg_read_file"),
                ObjectName::new(Some("public"), "pg_read_file")
            ]]
        );
        assert!(call.effects.contains(call.class), "the primary class is among the effects");
    }

    #[test]
    fn explains_which_rule_decides() {
        let set = PolicySet::from_sources(&[(
            PathBuf::from("p.yaml"),
            "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: agents}\nspec:\n  \
             selector: {matchLabels: {warden/kind: agent}}\n  rules:\n    \
             - {name: billing, match: {relations: [\"billing.*\"]}, action: deny}\n    \
             - {name: no-ddl, match: {class: [ddl]}, action: deny}\n"
                .to_string(),
        )])
        .expect("valid");
        let labels: BTreeMap<String, String> = [("warden/kind".to_string(), "agent".to_string())].into();
        let subject = Subject { labels: &labels, database: "orders", user: Some("app") };
        let e = explain(&set, &subject, "select * from Billing.Invoices; drop table t", &SearchPath::default());
        assert_eq!(e.statements.len(), 2);
        assert_eq!(e.statements[0].decision.rule.as_deref(), Some("billing"));
        assert_eq!(e.statements[1].decision.rule.as_deref(), Some("no-ddl"));
        assert_eq!(e.decision.rule.as_deref(), Some("billing"), "first among equals");
        let text = e.to_string();
        assert!(text.contains("agents (p.yaml:3): selector warden/kind=agent"), "{text}");
        assert!(text.contains("relation billing.invoices matches billing.*"), "{text}");

        let nobody = BTreeMap::new();
        let other = Subject { labels: &nobody, database: "orders", user: Some("app") };
        let e = explain(&set, &other, "drop table t", &SearchPath::default());
        assert_eq!(e.decision.reason, "no policy selects this identity");
    }
}
