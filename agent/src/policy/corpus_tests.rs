//! The attack corpus (tests/corpus/baseline.yaml) judged without a database: every statement
//! of every case is analysed and decided under policies/baseline.yaml for an identity labelled
//! `warden/kind=agent`, as the governor judges it (the message split into statements, each
//! normalised and analysed, relations and functions with no resolved schema, EXECUTE and FETCH
//! resolved against what the session prepared and declared), and compared with the class and
//! verdict the corpus expects. Every mismatch is reported, one line each, before the test fails.
//!
//! The corpus holds what is correct, not what the analyser says: a failure here is a finding
//! (or a corpus mistake), never a reason to change the corpus to match.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use serde::Deserialize;

use super::{Action, PolicySet, StatementFacts, Subject};
use crate::sql::{
    Analysis, Class, ClassSet, DescriptionCache, LexOptions, ObjectName, PreparedCommand, prepared_statement_command,
    split_statements_with,
};

#[derive(Debug, Deserialize)]
struct Corpus {
    cases: Vec<Case>,
}

/// A case as this test reads it (the runner's fields it does not need are ignored).
#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    sql: Option<String>,
    protocol: Option<Vec<String>>,
    class: Option<String>,
    verdict: Option<String>,
    session: Option<Vec<Step>>,
    /// A trap the analyser does not catch yet: its mismatch is expected (and its absence is
    /// reported, so the mark is removed once it is caught).
    known_gap: Option<String>,
    /// Judged right only with the database's catalog, which this test does not have: held to
    /// its mismatch like a known gap (the live runner judges it with the catalog).
    offline_gap: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Step {
    sql: String,
    class: String,
    verdict: String,
}

/// How one statement of a message was judged.
struct Part {
    class: Class,
    action: Action,
    /// The deciding policy and rule, and why (for the report).
    why: String,
    /// The analyser's reason for the class.
    reason: Option<String>,
    /// An EXECUTE or FETCH: its class is the prepared statement's or the cursor's.
    session_dependent: bool,
}

/// What a session remembers between messages, as the proxy does: the lexical setting, the
/// prepared statements and the cursors its forwarded statements created.
#[derive(Clone)]
struct Session {
    standard_conforming_strings: bool,
    prepared: HashMap<String, String>,
    cursors: HashMap<String, Class>,
    /// The search_path no longer puts pg_catalog first (govern::search_path).
    builtins_untrusted: bool,
}

impl Session {
    fn new() -> Session {
        Session {
            standard_conforming_strings: true,
            prepared: HashMap::new(),
            cursors: HashMap::new(),
            builtins_untrusted: false,
        }
    }

    fn options(&self) -> LexOptions {
        LexOptions::postgres(self.standard_conforming_strings)
    }
}

struct Judge {
    set: PolicySet,
    selection: super::Selection,
    cache: DescriptionCache,
}

impl Judge {
    fn new(policies: PathBuf) -> Judge {
        let set =
            PolicySet::load(std::slice::from_ref(&policies)).unwrap_or_else(|e| panic!("{}: {e}", policies.display()));
        let labels: BTreeMap<String, String> = [("warden/kind".to_string(), "agent".to_string())].into();
        let selection = set.select(&Subject { labels: &labels, database: "gov", user: Some("postgres") });
        assert!(!selection.is_empty(), "the baseline pack must select warden/kind=agent");
        Judge { set, selection, cache: DescriptionCache::new(4096) }
    }

    /// Judges one message (a simple-query string, or with `simple` false one extended-protocol
    /// statement) in `session`, and, if it would be forwarded, applies its effects on the
    /// session as the proxy would.
    fn message(&self, session: &mut Session, text: &str, simple: bool) -> Vec<Part> {
        let options = session.options();
        let mut texts = if simple { split_statements_with(text, options) } else { vec![text] };
        if texts.is_empty() {
            texts = vec![text];
        }
        // A PREPARE earlier in the same string is what a later EXECUTE of it runs (as the
        // governor resolves it).
        let mut here = session.clone();
        let parts: Vec<Part> = texts
            .iter()
            .map(|t| {
                let part = self.part(&here, t, options);
                if let Some(PreparedCommand::Prepare { name, body }) = prepared_statement_command(t, options) {
                    here.prepared.insert(name, body);
                }
                let analysis = self.cache.describe_with(t, options).analysis;
                if search_path_after(&here, t, &analysis, options, &self.cache) {
                    here.builtins_untrusted = true;
                }
                part
            })
            .collect();
        if parts.iter().all(|p| p.action == Action::Allow) {
            for t in &texts {
                forwarded(session, t, options, &self.cache);
            }
        }
        parts
    }

    fn part(&self, session: &Session, text: &str, options: LexOptions) -> Part {
        let described = self.cache.describe_with(text, options);
        let own = described.analysis.clone();
        // EXECUTE and FETCH are judged as what they run (govern::SessionGovern::resolve).
        let (class, reason, of, session_dependent) = if let Some(name) = &own.executes {
            match session.prepared.get(name) {
                Some(body) => {
                    let body = self.cache.describe_with(body, options).analysis;
                    (body.class, body.class_reason.as_deref().map(str::to_string), body, true)
                }
                None => {
                    let why = format!("EXECUTE of prepared statement {name}, which the proxy did not see prepared");
                    (Class::Unknown, Some(why.clone()), std::sync::Arc::new(Analysis::unknown(why)), true)
                }
            }
        } else if let Some(name) = &own.fetches {
            match session.cursors.get(name) {
                Some(class) => (*class, Some(format!("FETCH from cursor {name}")), own.clone(), true),
                None => {
                    let why = format!("FETCH from cursor {name}, which the proxy did not see declared");
                    (Class::Unknown, Some(why), own.clone(), true)
                }
            }
        } else {
            (own.class, own.class_reason.as_deref().map(str::to_string), own.clone(), false)
        };
        let mut effects = if class == of.class { of.effects.with(of.class) } else { ClassSet::of(&[class]) };
        let (class, reason) = if session.builtins_untrusted
            && (of.functions.iter().any(|f| f.schema.is_none())
                || crate::sql::catalog::resolves_by_name(&described.normalised))
        {
            effects.insert(Class::Unknown);
            (Class::Unknown, Some("an unqualified function after the search_path changed".to_string()))
        } else {
            (class, reason)
        };
        // As the governor passes them: the name as written, its schema unresolved.
        let relations: Vec<Vec<ObjectName>> = of.relations.iter().map(|r| vec![r.clone()]).collect();
        let functions: Vec<Vec<ObjectName>> = of.functions.iter().map(|f| vec![f.clone()]).collect();
        let facts = StatementFacts {
            class,
            effects,
            relations: &relations,
            functions: &functions,
            unscoped: of.unscoped,
            tags: &described.tags,
            reason: reason.as_deref(),
        };
        let decision = self.selection.decide(&self.set, &facts);
        Part { class, action: decision.action, why: decision.to_string(), reason, session_dependent }
    }
}

/// What a forwarded statement leaves in the session: prepared statements, cursors, and
/// `standard_conforming_strings` (which the proxy learns from the server's ParameterStatus;
/// here read from the statement, for the SET/RESET forms the corpus uses).
fn forwarded(session: &mut Session, text: &str, options: LexOptions, cache: &DescriptionCache) {
    match prepared_statement_command(text, options) {
        Some(PreparedCommand::Prepare { name, body }) => {
            session.prepared.insert(name, body);
        }
        Some(PreparedCommand::Deallocate { name }) => {
            session.prepared.remove(&name);
        }
        None => {}
    }
    let analysis = cache.describe_with(text, options).analysis;
    if search_path_after(session, text, &analysis, options, cache) {
        session.builtins_untrusted = true;
    }
    if let Some(name) = &analysis.declares {
        session.cursors.insert(name.clone(), analysis.class);
    }
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == '=' || c == '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["set", "standard_conforming_strings", rest @ ..]
        | ["set", "session", "standard_conforming_strings", rest @ ..] => {
            let value = rest.iter().find(|w| **w != "to").copied().unwrap_or("default");
            session.standard_conforming_strings = !matches!(value, "off" | "false" | "no" | "0");
        }
        ["reset", "standard_conforming_strings"] | ["reset", "all"] => session.standard_conforming_strings = true,
        _ => {}
    }
}

/// What a statement does to the search_path, judged as what it runs (an EXECUTE as its body).
fn search_path_after(
    session: &Session,
    text: &str,
    analysis: &Analysis,
    options: LexOptions,
    cache: &DescriptionCache,
) -> bool {
    let effects = match analysis.executes.as_ref().and_then(|name| session.prepared.get(name)) {
        Some(body) => {
            let body = cache.describe_with(body, options).analysis;
            body.effects.with(body.class)
        }
        None => analysis.effects.with(analysis.class),
    };
    crate::govern::search_path::RawReads::of(text, options).may_distrust_judged(analysis, effects)
}

/// The most consequential class of a message (its statements' classes by rank).
fn message_class(parts: &[Part]) -> Class {
    parts.iter().map(|p| p.class).max_by_key(|c| c.rank()).unwrap_or(Class::Utility)
}

/// The message is refused if any statement of it is (a hold is a refusal until approvals exist).
fn message_verdict(parts: &[Part]) -> &'static str {
    if parts.iter().all(|p| p.action == Action::Allow) { "allow" } else { "deny" }
}

fn describe(parts: &[Part]) -> String {
    let shown: Vec<String> = parts
        .iter()
        .map(|p| {
            let reason = p.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            format!("{}{reason}; {}", p.class, p.why)
        })
        .collect();
    shown.join(" | ")
}

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn corpus_cases_are_judged_as_expected() {
    let corpus_path = workspace_file("tests/corpus/baseline.yaml");
    let text = std::fs::read_to_string(&corpus_path).unwrap_or_else(|e| panic!("{}: {e}", corpus_path.display()));
    let corpus: Corpus = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", corpus_path.display()));
    let judge = Judge::new(workspace_file("policies/baseline.yaml"));

    let mut mismatches = Vec::new();
    let mut statements = 0;
    let mut gaps = 0usize;
    for case in &corpus.cases {
        let before = mismatches.len();
        check_case(case, &judge, &mut mismatches, &mut statements);
        match case.known_gap.as_ref().or(case.offline_gap.as_ref()) {
            Some(_) if mismatches.len() == before => {
                mismatches.push(format!("{}: marked as a gap but judged as expected: remove the mark", case.name))
            }
            Some(_) => {
                gaps += 1;
                mismatches.truncate(before);
            }
            None => {}
        }
    }
    eprintln!("{gaps} corpus cases are known gaps (judged wrongly, as their known_gap says)");
    if !mismatches.is_empty() {
        eprintln!(
            "{} mismatches in {} statements of {} corpus cases ({}):",
            mismatches.len(),
            statements,
            corpus.cases.len(),
            corpus_path.display()
        );
        for m in &mismatches {
            eprintln!("  {m}");
        }
        panic!("{} corpus mismatches (listed above)", mismatches.len());
    }
}

/// Judges every statement of one case, adding a line per mismatch.
fn check_case(case: &Case, judge: &Judge, mismatches: &mut Vec<String>, statements: &mut usize) {
    {
        let protocols = case.protocol.clone().unwrap_or_else(|| {
            if case.session.is_some() { vec!["simple".into()] } else { vec!["simple".into(), "extended".into()] }
        });
        let steps: Vec<(&str, &str, &str)> = match (&case.sql, &case.session) {
            (Some(sql), None) => {
                vec![(sql.as_str(), case.class.as_deref().unwrap_or("?"), case.verdict.as_deref().unwrap_or("?"))]
            }
            (None, Some(steps)) => {
                steps.iter().map(|s| (s.sql.as_str(), s.class.as_str(), s.verdict.as_str())).collect()
            }
            _ => {
                mismatches.push(format!("{}: corpus: give either sql or session", case.name));
                return;
            }
        };
        *statements += steps.len();
        // What each step was judged as under the first protocol: a later protocol's mismatch is
        // reported only where it judges differently.
        let mut first: Vec<Option<(Class, &str)>> = vec![None; steps.len()];
        for (p, protocol) in protocols.iter().enumerate() {
            let simple = protocol == "simple";
            let mut session = Session::new();
            for (i, (sql, class, verdict)) in steps.iter().enumerate() {
                let mut at =
                    if case.session.is_some() { format!("{} step {}", case.name, i + 1) } else { case.name.clone() };
                if p > 0 {
                    at = format!("{at} ({protocol})");
                }
                if !simple && split_statements_with(sql, session.options()).len() > 1 {
                    mismatches.push(format!("{at}: corpus: several statements cannot run under the extended protocol"));
                    continue;
                }
                let parts = judge.message(&mut session, sql, simple);
                let got = (message_class(&parts), message_verdict(&parts));
                let same_as_first = p > 0 && first[i] == Some(got);
                if p == 0 {
                    first[i] = Some(got);
                }
                // EXECUTE and FETCH take the class of the prepared statement or cursor they run,
                // which this session state only approximates (the proxy learns it from the
                // protocol): their class is not checked, their verdict is.
                let session_dependent = parts.iter().any(|p| p.session_dependent);
                let class_wrong = !session_dependent && got.0.as_str() != *class;
                let verdict_wrong = got.1 != *verdict;
                if (class_wrong || verdict_wrong) && !same_as_first {
                    let mut what = Vec::new();
                    if class_wrong {
                        what.push(format!("class {class} expected, judged {}", got.0));
                    }
                    if verdict_wrong {
                        what.push(format!("{verdict} expected, judged {}", got.1));
                    }
                    mismatches.push(format!("{at}: {}: {:?} -> {}", what.join(", "), sql, describe(&parts)));
                }
            }
        }
    }
}
