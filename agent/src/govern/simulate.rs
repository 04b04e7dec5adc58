//! `warden policy simulate`: the statements in the audit ring judged again by a candidate policy
//! set, to see what enforcing it would have done before it is enforced.
//!
//! Each statement record keeps the facts policy judged it by (`facts`: its effects, the places
//! each relation and function it names may resolve to, whether it is unscoped; with its class,
//! tags and role beside them), so a statement is judged again exactly as the live agent judged
//! it, whatever its text looked like: literals normalised away or a text cut to
//! `audit.max_text_bytes` change nothing of its facts. The session's labels come from its
//! `connection_open` record (and `identity_relabelled` after it). What the ring cannot tell is
//! counted and said, never guessed: a record without facts (condensed by fair share, written by
//! an older agent, or forwarded unjudged), a session whose connection record was overwritten,
//! facts too large to record, and masking (which columns a statement returns is known only to
//! the server when it runs: the simulation says which statements read a relation a masking rule
//! names).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::{
    policy::{Action, PolicySet, Selection, Subject, explain::OwnedFacts, fail_closed, masking::Untraced},
    sql::{Class, ClassSet, ObjectName},
};

/// Examples kept per identity and rule.
const EXAMPLES: usize = 3;
/// Example texts are cut to this many characters.
const EXAMPLE_CHARS: usize = 200;

/// What enforcing the candidate set would have done to the statements of the ring.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The candidate policies, by name.
    pub policies: Vec<String>,
    /// Statement records that matched the filters.
    pub statements: usize,
    /// Of them, judged again.
    pub simulated: usize,
    /// When the first and the last of them was recorded (ms since the epoch).
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Records not judged again, by why.
    pub not_simulated: BTreeMap<&'static str, usize>,
    /// Per identity, what the candidate set decides.
    pub identities: Vec<IdentityReport>,
    /// What the ring cannot tell, for these statements.
    pub notes: Vec<String>,
}

/// One identity's statements under the candidate set.
#[derive(Debug, Serialize)]
pub struct IdentityReport {
    /// Its `warden/identity` label, else its command name.
    pub identity: String,
    pub labels: BTreeMap<String, String>,
    pub statements: usize,
    pub allowed: usize,
    pub denied: usize,
    pub held: usize,
    /// Statements reading a relation a masking rule names for it (see the notes).
    pub may_mask: usize,
    /// Statements allowed when they ran that the candidate set would deny or hold: what would
    /// break for this workload.
    pub would_break: usize,
    /// Per deciding rule (and masking rule), with examples.
    pub rules: Vec<RuleReport>,
}

/// One rule's share of an identity's statements.
#[derive(Debug, Serialize)]
pub struct RuleReport {
    /// deny, hold or mask.
    pub decision: &'static str,
    pub policy: Option<String>,
    /// The rule (none: the policy's default).
    pub rule: Option<String>,
    pub count: usize,
    /// Of them, allowed when they ran.
    pub allowed_now: usize,
    /// A few distinct statement texts as recorded (normalised literals show as `?`).
    pub examples: Vec<String>,
}

/// Why a statement record is not judged again.
const NO_FACTS: &str = "no judged facts in the record (forwarded unjudged, or written by an agent before simulation)";
const CONDENSED: &str = "condensed by the ring's fair share (facts dropped)";
const INCOMPLETE: &str = "names too many relations or functions for the record to keep them all";
const NO_SESSION: &str = "its session's connection record is no longer in the ring (labels unknown)";
const UNREADABLE: &str = "unreadable record";

/// A session as its records describe it.
struct Session {
    identity: String,
    labels: BTreeMap<String, String>,
    comm: Option<String>,
    /// The executable's file name.
    exe: Option<String>,
}

/// Which statements are simulated.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Its session's `warden/identity` label, command name or executable's file name.
    pub identity: Option<String>,
    /// KEY=VALUE labels its session must have (when the statement was judged).
    pub labels: Vec<(String, String)>,
    pub database: Option<String>,
    /// Recorded at or after (ms since the epoch).
    pub since_ms: Option<u64>,
}

impl Filter {
    fn keeps_record(&self, record: &Value) -> bool {
        self.since_ms.is_none_or(|t| record["at_ms"].as_u64().is_some_and(|at| at >= t))
            && self.database.as_ref().is_none_or(|d| record["database"].as_str() == Some(d))
    }

    fn by_session(&self) -> bool {
        self.identity.is_some() || !self.labels.is_empty()
    }

    fn keeps_session(&self, session: &Session) -> bool {
        self.identity.as_ref().is_none_or(|want| {
            session.labels.get("warden/identity") == Some(want)
                || session.comm.as_ref() == Some(want)
                || session.exe.as_ref() == Some(want)
        }) && self.labels.iter().all(|(k, v)| session.labels.get(k) == Some(v))
    }
}

#[derive(Default)]
struct Tally {
    statements: usize,
    allowed: usize,
    denied: usize,
    held: usize,
    may_mask: usize,
    would_break: usize,
    rules: BTreeMap<RuleKey, RuleTally>,
}

/// A deciding rule: (decision, policy, rule).
type RuleKey = (&'static str, Option<String>, Option<String>);
/// Its statements, of them allowed now, and examples.
type RuleTally = (usize, usize, Vec<String>);

/// Judges again, with `set`, every statement record of `records` (the ring's, oldest first) that
/// `filter` keeps, by its session as it was when the statement was judged (its labels after any
/// relabelling before it). The candidate set's dry-run policies and rules are simulated as
/// enforced: the question is what enforcing the set would do.
pub fn simulate<'r>(set: &PolicySet, records: impl IntoIterator<Item = &'r Value>, filter: &Filter) -> Report {
    let mut sessions: HashMap<u64, Session> = HashMap::new();
    let mut selections: HashMap<(String, String, Option<String>), Selection> = HashMap::new();
    let mut tallies: BTreeMap<(String, String), (BTreeMap<String, String>, Tally)> = BTreeMap::new();
    let mut report = Report {
        policies: set.names().map(str::to_string).collect(),
        statements: 0,
        simulated: 0,
        from_ms: None,
        to_ms: None,
        not_simulated: BTreeMap::new(),
        identities: Vec::new(),
        notes: Vec::new(),
    };
    let (mut truncated, mut without_catalog, mut role_unknown, mut dropped) = (0usize, 0usize, 0usize, 0u64);
    for record in records {
        match record["kind"].as_str() {
            Some("connection_open") => {
                if let Some(id) = record["session"].as_u64() {
                    let identity = &record["identity"];
                    let labels = string_map(&identity["labels"]);
                    let comm = identity["comm"].as_str().map(str::to_string);
                    let exe = identity["exe"].as_str().and_then(|x| x.rsplit('/').next()).map(str::to_string);
                    let name = labels
                        .get("warden/identity")
                        .cloned()
                        .or_else(|| comm.clone())
                        .unwrap_or_else(|| format!("uid:{}", identity["uid"]));
                    sessions.insert(id, Session { identity: name, labels, comm, exe });
                }
                continue;
            }
            Some("identity_relabelled") => {
                // Its statements from here on were judged by the new labels.
                if let Some(session) = record["session"].as_u64().and_then(|s| sessions.get_mut(&s)) {
                    session.labels = string_map(&record["labels"]);
                }
                continue;
            }
            Some("connection_close") => {
                if let Some(id) = record["session"].as_u64() {
                    sessions.remove(&id);
                }
                continue;
            }
            Some("audit_flood") => {
                // Statement records not written, in the period simulated (of any identity: a
                // flood record names the ring's tenant, not the workload's labels).
                if report.from_ms.is_some() {
                    dropped += record["dropped"].as_u64().unwrap_or(0);
                }
                continue;
            }
            Some("statement") => {}
            _ => continue,
        }
        if !filter.keeps_record(record) {
            continue;
        }
        let session = record["session"].as_u64().and_then(|s| sessions.get(&s));
        if filter.by_session() && session.is_some_and(|s| !filter.keeps_session(s)) {
            continue;
        }
        report.statements += 1;
        let at = record["at_ms"].as_u64();
        report.from_ms = report.from_ms.or(at);
        report.to_ms = at.or(report.to_ms);
        let skip = |report: &mut Report, why: &'static str| *report.not_simulated.entry(why).or_default() += 1;
        let facts = &record["facts"];
        if facts.is_null() {
            skip(&mut report, if record["condensed"] == true { CONDENSED } else { NO_FACTS });
            continue;
        }
        if facts["incomplete"] == true {
            skip(&mut report, INCOMPLETE);
            continue;
        }
        let Some(session) = session else {
            skip(&mut report, NO_SESSION);
            continue;
        };
        let Some(owned) = read_facts(record) else {
            skip(&mut report, UNREADABLE);
            continue;
        };
        report.simulated += 1;
        truncated += usize::from(record["text_sha256"].is_string());
        without_catalog += usize::from(facts["catalog"] == false);
        let role = record["role"].as_str().map(str::to_string);
        role_unknown += usize::from(role.is_none());
        let database = record["database"].as_str().unwrap_or_default().to_string();
        let labels_key = serde_json::to_string(&session.labels).unwrap_or_default();
        let selection = selections
            .entry((labels_key.clone(), database.clone(), role.clone()))
            .or_insert_with(|| {
                set.select(&Subject { labels: &session.labels, database: &database, user: role.as_deref() })
            })
            .clone();
        let view = owned.facts();
        // The candidate's dry-run parts count as enforced.
        let masking = if selection.dryrun_masks() {
            selection.masking_would(set, &session.labels)
        } else {
            selection.masking(set, &session.labels)
        };
        let guards = selection.guards() || selection.would_guard();
        let mut decided = selection.decide_would(set, &view).unwrap_or_else(|| selection.decide(set, &view));
        if decided.action != Action::Deny
            && owned.effects.contains(Class::Unknown)
            && masking.as_ref().is_some_and(|m| m.masks && m.untraced == Untraced::Refuse)
        {
            // As enforced: masking is planned before failing closed, and what a statement of
            // unknown effect returns cannot be traced.
            decided = crate::policy::Decision {
                action: Action::Deny,
                policy: None,
                rule: Some("masking".into()),
                reason: "what it returns cannot be traced (its effects are unknown); refused".into(),
                approval: None,
            };
        }
        let decided = fail_closed(decided, &view, guards);
        let allowed_now = record["verdict"]["decision"] == "allow";
        let text = example(record);
        let (_, tally) = tallies
            .entry((session.identity.clone(), labels_key))
            .or_insert_with(|| (session.labels.clone(), Tally::default()));
        tally.statements += 1;
        let decision = match decided.action {
            Action::Allow => {
                tally.allowed += 1;
                None
            }
            Action::Deny => {
                tally.denied += 1;
                Some("deny")
            }
            Action::RequireApproval => {
                tally.held += 1;
                Some("hold")
            }
        };
        if decision.is_some() && allowed_now {
            tally.would_break += 1;
        }
        if let Some(decision) = decision {
            count(tally, (decision, decided.policy.as_deref(), decided.rule.as_deref()), allowed_now, &text);
        } else if let Some(masking) = &masking {
            // What a statement returns is known only when it runs: the rules that name a
            // relation it reads may mask some of its columns.
            let rules = masking.rules_naming(owned.relations.iter().flatten());
            if !rules.is_empty() {
                tally.may_mask += 1;
            }
            for (policy, rule) in rules {
                count(tally, ("mask", Some(&policy), Some(&rule)), allowed_now, &text);
            }
        }
    }
    report.identities = tallies
        .into_iter()
        .map(|((identity, _), (labels, t))| IdentityReport {
            identity,
            labels,
            statements: t.statements,
            allowed: t.allowed,
            denied: t.denied,
            held: t.held,
            may_mask: t.may_mask,
            would_break: t.would_break,
            rules: t
                .rules
                .into_iter()
                .map(|((decision, policy, rule), (count, allowed_now, examples))| RuleReport {
                    decision,
                    policy,
                    rule,
                    count,
                    allowed_now,
                    examples,
                })
                .collect(),
        })
        .collect();
    report.notes = notes(&report, truncated, without_catalog, role_unknown, dropped);
    report
}

fn count(tally: &mut Tally, key: (&'static str, Option<&str>, Option<&str>), allowed_now: bool, text: &str) {
    let key = (key.0, key.1.map(str::to_string), key.2.map(str::to_string));
    let (n, allowed, examples) = tally.rules.entry(key).or_default();
    *n += 1;
    *allowed += usize::from(allowed_now);
    if examples.len() < EXAMPLES && !examples.iter().any(|e| e == text) {
        examples.push(text.to_string());
    }
}

/// The statement's text as an example: as recorded, cut, with what stands for a missing text.
fn example(record: &Value) -> String {
    let text = record["text"].as_str().unwrap_or_default();
    let mut out: String = text.chars().take(EXAMPLE_CHARS).collect();
    if out.is_empty() {
        out = format!("<{} bytes, not recorded: its reading is ambiguous>", record["text_bytes"]);
    } else if record["text_sha256"].is_string() || text.chars().count() > EXAMPLE_CHARS {
        out.push_str(" …");
    }
    out
}

/// What the ring cannot tell about these statements.
fn notes(report: &Report, truncated: usize, without_catalog: usize, role_unknown: usize, dropped: u64) -> Vec<String> {
    let mut notes = vec![
        "Dry-run policies and rules of the candidate set are simulated as enforced.".to_string(),
        "Each statement is judged alone: where the candidate set refuses one, what came after it in the same \
         batch or transaction would not have run as it did then."
            .to_string(),
        "Held statements are counted as held: an approval granted for a while would let repeats through.".to_string(),
    ];
    if report.identities.iter().any(|i| i.may_mask > 0) {
        notes.push(
            "Masking depends on the columns a statement returns, which only the server knows when it runs: \
             `mask` counts statements that read a relation a masking rule names (they may return none of its \
             columns); refusals for inference or untraced values are simulated only for statements of unknown \
             effect."
                .to_string(),
        );
    }
    if truncated > 0 {
        notes.push(format!(
            "{truncated} statement(s) had their text cut in the record (audit.max_text_bytes): they are judged by \
             their recorded facts, exactly; their examples are prefixes."
        ));
    }
    if without_catalog > 0 {
        notes.push(format!(
            "{without_catalog} statement(s) were judged without the session's catalog (no policy guarded the \
             identity then): unqualified names count as any schema and user functions as unknown, so the \
             candidate set may refuse them where, enforced, it would read the catalog and allow them."
        ));
    }
    if role_unknown > 0 {
        notes.push(format!(
            "{role_unknown} statement(s) ran while the session's role was not known: every `users` filter selects \
             them (as enforcing would)."
        ));
    }
    if dropped > 0 {
        notes.push(format!(
            "{dropped} statement record(s) of this period were not written (their identity was over its fair \
             share of the ring; see `warden audit query --kind audit_flood`): they are not simulated."
        ));
    }
    notes.push(
        "Literals are recorded normalised (`?`) unless audit.literals is keep; no decision depends on them.".into(),
    );
    notes
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// A statement's facts as its record keeps them.
fn read_facts(record: &Value) -> Option<OwnedFacts> {
    let facts = &record["facts"];
    let class = Class::from_name(record["class"].as_str()?)?;
    let mut effects = ClassSet::of(&[class]);
    for e in facts["effects"].as_array()? {
        effects.insert(Class::from_name(e.as_str()?)?);
    }
    let names = |v: &Value| -> Option<Vec<Vec<ObjectName>>> {
        v.as_array()?
            .iter()
            .map(|places| {
                places
                    .as_array()?
                    .iter()
                    .map(|pair| {
                        let pair = pair.as_array()?;
                        let [schema, name] = pair.as_slice() else { return None };
                        Some(ObjectName::new(schema.as_str(), name.as_str()?))
                    })
                    .collect()
            })
            .collect()
    };
    Some(OwnedFacts {
        class,
        effects,
        relations: names(&facts["relations"])?,
        functions: names(&facts["functions"])?,
        unscoped: facts["unscoped"] == true,
        tags: string_map(&record["tags"]),
        reason: record["class_reason"].as_str().map(str::to_string),
    })
}

impl std::fmt::Display for Report {
    /// The report as a table; every text from the ring passes through
    /// [`crate::audit::cli::escape_controls`] (it is the workloads' input, shown on a terminal).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::audit::cli::{escape_controls as esc, utc};
        writeln!(
            f,
            "candidate policies: {}",
            if self.policies.is_empty() { "none".into() } else { self.policies.join(", ") }
        )?;
        let span = match (self.from_ms, self.to_ms) {
            (Some(from), Some(to)) => format!(" recorded {} to {}", utc(from), utc(to)),
            _ => String::new(),
        };
        writeln!(f, "statements: {}{span}; simulated: {}", self.statements, self.simulated)?;
        for (why, n) in &self.not_simulated {
            writeln!(f, "  not simulated: {n}: {why}")?;
        }
        if self.identities.is_empty() {
            writeln!(f, "no statement to simulate")?;
        } else {
            let width = self.identities.iter().map(|i| esc(&i.identity).chars().count()).max().unwrap_or(8).max(8);
            writeln!(f)?;
            writeln!(
                f,
                "{:<width$}  {:>10}  {:>8}  {:>7}  {:>6}  {:>8}  {:>11}",
                "IDENTITY", "STATEMENTS", "ALLOWED", "DENIED", "HELD", "MAY MASK", "WOULD BREAK"
            )?;
            for i in &self.identities {
                writeln!(
                    f,
                    "{:<width$}  {:>10}  {:>8}  {:>7}  {:>6}  {:>8}  {:>11}",
                    esc(&i.identity),
                    i.statements,
                    i.allowed,
                    i.denied,
                    i.held,
                    i.may_mask,
                    i.would_break
                )?;
            }
            for i in self.identities.iter().filter(|i| !i.rules.is_empty()) {
                writeln!(f)?;
                let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(f, "{} ({}):", esc(&i.identity), esc(&labels.join(", ")))?;
                for r in &i.rules {
                    let by = match (&r.policy, &r.rule) {
                        (Some(p), Some(rule)) => format!("{p}/{rule}"),
                        (Some(p), None) => format!("{p} (default)"),
                        (None, Some(rule)) => rule.clone(),
                        (None, None) => "-".into(),
                    };
                    writeln!(
                        f,
                        "  {:<5} {}: {} statement(s), {} of them allowed now",
                        r.decision,
                        esc(&by),
                        r.count,
                        r.allowed_now
                    )?;
                    for e in &r.examples {
                        writeln!(f, "        e.g. {}", esc(e))?;
                    }
                }
            }
            let breaking: Vec<String> = self
                .identities
                .iter()
                .filter(|i| i.would_break > 0)
                .map(|i| format!("{} ({} statement(s) allowed now)", esc(&i.identity), i.would_break))
                .collect();
            writeln!(f)?;
            if breaking.is_empty() {
                writeln!(f, "would break: nothing allowed now would be denied or held")?;
            } else {
                writeln!(f, "would break: {}", breaking.join(", "))?;
            }
        }
        writeln!(f, "notes:")?;
        for n in &self.notes {
            writeln!(f, "  - {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{
        audit::{JudgedFacts, SessionId, Statement, Verdict},
        session::JudgedNames,
    };

    const CANDIDATE: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: candidate}\nspec:\n  selector: {matchLabels: {team: data}}\n  rules:\n    - {name: no-deletes, match: {class: [write], relations: ['public.orders']}, action: deny}\n    - {name: ddl-held, match: {class: [ddl]}, action: require_approval}\n    - {name: emails, match: {columns: ['public.customers.email']}, mask: redact}\n";

    fn set() -> PolicySet {
        PolicySet::from_sources(&[("c.yaml".into(), CANDIDATE.to_string())]).expect("valid")
    }

    /// A statement record as the agent writes it (through the real serialiser).
    fn statement(session: u64, class: Class, relations: &[(Option<&str>, &str)], decision: &'static str) -> Value {
        let names = JudgedNames {
            relations: relations.iter().map(|(s, n)| vec![ObjectName::new(*s, n)]).collect(),
            functions: Vec::new(),
            unscoped: false,
            catalog: true,
        };
        let record = Statement {
            session: SessionId(session),
            statement: 1,
            part: 0,
            database: "main".into(),
            protocol: "simple",
            text: Arc::from(format!("{} ?", class.as_str())),
            text_bytes: 8,
            text_sha256: None,
            params: None,
            function_oid: None,
            class: class.as_str(),
            class_reason: None,
            relations: Arc::from(Vec::new()),
            verdict: Verdict { decision, policy: None, rule: None, reason: None },
            masked: Arc::default(),
            tags: Arc::default(),
            role: Some("app".into()),
            would: None,
            facts: Some(JudgedFacts { effects: ClassSet::of(&[class]), names: Arc::new(names) }),
            limits: Vec::new(),
        };
        let mut v = serde_json::to_value(crate::audit::Event::Statement(Box::new(record))).expect("serialises");
        v["at_ms"] = json!(1_000);
        v
    }

    fn open(session: u64, labels: Value) -> Value {
        json!({"kind": "connection_open", "session": session, "identity": {"comm": "psql", "uid": 1000, "labels": labels}})
    }

    #[test]
    fn statements_are_judged_again_by_their_recorded_facts_and_labels() {
        let records = vec![
            open(1, json!({"warden/identity": "etl", "team": "data"})),
            open(2, json!({"warden/identity": "web"})),
            statement(1, Class::Write, &[(Some("public"), "orders")], "allow"),
            statement(1, Class::Write, &[(Some("public"), "orders")], "allow"),
            statement(1, Class::Ddl, &[(Some("public"), "orders")], "deny"),
            statement(1, Class::Read, &[(None, "customers")], "allow"),
            statement(1, Class::Read, &[(Some("public"), "orders")], "allow"),
            // Not selected by the candidate (labels): allowed.
            statement(2, Class::Write, &[(Some("public"), "orders")], "allow"),
            // A session whose connection record is gone, and a record without facts.
            statement(3, Class::Write, &[(Some("public"), "orders")], "allow"),
            json!({"kind": "statement", "session": 1, "class": "read", "condensed": true, "at_ms": 2000}),
            json!({"kind": "identity_relabelled", "session": 1, "labels": {"warden/identity": "etl"}}),
            // After the relabelling the candidate no longer selects it.
            statement(1, Class::Write, &[(Some("public"), "orders")], "allow"),
        ];
        let report = simulate(&set(), &records, &Filter::default());
        assert_eq!((report.statements, report.simulated), (9, 7));
        assert_eq!(report.not_simulated.get(NO_SESSION), Some(&1));
        assert_eq!(report.not_simulated.get(CONDENSED), Some(&1));
        let etl: Vec<&IdentityReport> = report.identities.iter().filter(|i| i.identity == "etl").collect();
        assert_eq!(etl.len(), 2, "the labels before and after the relabelling are two identities");
        let before = etl.iter().find(|i| i.labels.contains_key("team")).expect("labelled data");
        assert_eq!((before.statements, before.denied, before.held, before.allowed), (5, 2, 1, 2));
        assert_eq!((before.would_break, before.may_mask), (2, 1), "two allowed writes would be denied");
        let deny = before.rules.iter().find(|r| r.decision == "deny").expect("deny rule");
        assert_eq!(
            (deny.policy.as_deref(), deny.rule.as_deref(), deny.count, deny.allowed_now),
            (Some("candidate"), Some("no-deletes"), 2, 2)
        );
        assert_eq!(deny.examples, vec!["write ?".to_string()], "distinct examples only");
        let mask = before.rules.iter().find(|r| r.decision == "mask").expect("mask rule");
        assert_eq!(mask.rule.as_deref(), Some("emails"));
        let after = etl.iter().find(|i| !i.labels.contains_key("team")).expect("relabelled");
        assert_eq!((after.statements, after.denied), (1, 0));
        let web = report.identities.iter().find(|i| i.identity == "web").expect("web");
        assert_eq!((web.statements, web.denied, web.would_break), (1, 0, 0));
        let table = report.to_string();
        assert!(table.contains("would break: etl (2 statement(s) allowed now)"), "{table}");
        assert!(table.contains("deny  candidate/no-deletes: 2 statement(s), 2 of them allowed now"), "{table}");
    }

    #[test]
    fn a_dry_run_candidate_is_simulated_as_enforced_and_filters_see_the_labels_of_the_time() {
        let dry =
            PolicySet::from_sources(&[("c.yaml".into(), CANDIDATE.replace("spec:\n", "spec:\n  mode: dryrun\n"))])
                .expect("valid");
        let records = vec![
            open(1, json!({"warden/identity": "etl", "team": "data"})),
            statement(1, Class::Write, &[(Some("public"), "orders")], "allow"),
            json!({"kind": "identity_relabelled", "session": 1, "labels": {"warden/identity": "etl"}}),
            statement(1, Class::Write, &[(Some("public"), "orders")], "allow"),
        ];
        let report = simulate(&dry, &records, &Filter::default());
        let denied: usize = report.identities.iter().map(|i| i.denied).sum();
        assert_eq!(denied, 1, "the dry-run deny counts as enforced: {report}");
        assert!(report.notes[0].contains("simulated as enforced"));
        let by_label = Filter { labels: vec![("team".into(), "data".into())], ..Filter::default() };
        assert_eq!(simulate(&dry, &records, &by_label).statements, 1, "only the statement judged with team=data");
        let by_name = Filter { identity: Some("etl".into()), ..Filter::default() };
        assert_eq!(simulate(&dry, &records, &by_name).statements, 2);
        let by_comm = Filter { identity: Some("psql".into()), ..Filter::default() };
        assert_eq!(simulate(&dry, &records, &by_comm).statements, 2);
        let elsewhere = Filter { database: Some("other".into()), ..Filter::default() };
        assert_eq!(simulate(&dry, &records, &elsewhere).statements, 0);
    }

    #[test]
    fn unknown_effects_fail_closed_and_what_cannot_be_told_is_said() {
        let mut unknown = statement(1, Class::Unknown, &[], "allow");
        unknown["text"] = json!("");
        unknown["text_bytes"] = json!(42);
        let mut cut = statement(1, Class::Read, &[(Some("public"), "t")], "allow");
        cut["text_sha256"] = json!("ab");
        let mut many = statement(1, Class::Read, &[], "allow");
        many["facts"]["incomplete"] = json!(true);
        let records = vec![open(1, json!({"team": "data"})), unknown, cut, many];
        let report = simulate(&set(), &records, &Filter::default());
        let id = &report.identities[0];
        assert_eq!(id.identity, "psql", "no warden/identity label: the command name");
        // Masking applies to the identity: it refuses first (as enforced), else failing closed.
        let refused = |report: &Report, rule: &str| {
            let r = report.identities[0].rules.iter().find(|r| r.rule.as_deref() == Some(rule));
            r.map(|r| (r.decision, r.count, r.examples.clone()))
        };
        let ambiguous = vec!["<42 bytes, not recorded: its reading is ambiguous>".to_string()];
        assert_eq!(refused(&report, "masking"), Some(("deny", 1, ambiguous.clone())));
        let no_masks = PolicySet::from_sources(&[(
            "c.yaml".into(),
            CANDIDATE.lines().filter(|l| !l.contains("mask:")).collect::<Vec<_>>().join("\n"),
        )])
        .expect("valid");
        let report_without = simulate(&no_masks, &records, &Filter::default());
        assert_eq!(refused(&report_without, "fail-closed"), Some(("deny", 1, ambiguous)));
        assert_eq!(report.not_simulated.get(INCOMPLETE), Some(&1));
        assert!(report.notes.iter().any(|n| n.contains("1 statement(s) had their text cut")), "{:?}", report.notes);
        // A control character in a recorded text is shown escaped.
        let mut nasty = statement(1, Class::Ddl, &[], "allow");
        nasty["text"] = json!("drop \u{1b}[2J table");
        let report = simulate(&set(), &[open(1, json!({"team": "data"})), nasty], &Filter::default());
        assert!(report.to_string().contains("drop \\x1b[2J table"), "{report}");
    }
}
