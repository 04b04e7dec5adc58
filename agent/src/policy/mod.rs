//! Policy: which statements an identity may run, from declarative files shaped like Kubernetes
//! objects. Pure (no I/O but reading the files, no tokio), compiled at load into a
//! [`PolicySet`] that is immutable and cheap to share; selectors are evaluated once per
//! identity ([`PolicySet::select`]), then each statement costs a walk over a few compiled rules.
//!
//! ```yaml
//! apiVersion: warden.dev/v1alpha1
//! kind: DatabasePolicy
//! metadata: {name: ai-agents}
//! spec:
//!   selector: {matchLabels: {warden/kind: agent}}
//!   databases: [orders]        # absent or empty: every database
//!   users: [app, "etl_*"]      # roles the session acts as (globs); absent or empty: every role
//!   rules:
//!     - {name: no-ddl, match: {class: [ddl, dcl]}, action: deny}
//!     - {name: unscoped-writes, match: {class: [write], unscoped: true}, action: require_approval}
//!     - {name: billing, match: {relations: ["billing.*"]}, action: deny}
//!   default: allow             # absent: allow
//! ```
//!
//! # Matching, and why it is sound against the client
//! The client is the adversary, so wherever a statement's facts are uncertain the uncertainty
//! must never help it:
//! - The statement's classes are its primary class and every other effect found (a SELECT with a
//!   data-modifying CTE is read and write). A deny or require_approval rule's `class` matches if
//!   ANY of them is listed; an allow rule's only if ALL are.
//! - An unqualified name may resolve to several schemas (the session's search_path is the
//!   client's to change), so each relation and function comes with its candidate resolutions. A
//!   deny-type rule's `relations`/`functions` match if ANY candidate of ANY name matches a
//!   pattern; an allow rule's only if EVERY candidate of EVERY name does, and at least one name
//!   is present (otherwise `functions: [pg_catalog.now]` would allow every statement that calls
//!   no function at all). A name with no candidate (unresolvable) matches every deny pattern and
//!   no allow pattern. So an allow rule can never widen through ambiguity.
//! - `tags` (sqlcommenter tags the client declares) can only narrow: they are refused on allow
//!   rules, and when a tagged rule is the first to match, the policy still decides at least as
//!   strictly as it would without its tagged rules. Declaring or omitting a tag can never make a
//!   statement more allowed.
//! - All conditions of a `match` must hold; an empty `match: {}` matches every statement.
//! - Within a policy the first matching rule decides, else its `default`. Across the policies
//!   that select an identity the most restrictive decision wins (deny > require_approval >
//!   allow); among equals, the first policy by name is reported. No policy selecting an identity
//!   means allow ("no policy selects this identity").
//!
//! Unparseable statements are class `unknown`; refusing them for identities whose policies
//! guard ([`Selection::guards`]) is the caller's rule (DESIGN.md, "Fail modes").

mod error;
pub mod explain;
pub mod limits;
mod load;
pub mod masking;
pub(crate) mod pattern;
mod selector;
mod yaml;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use self::pattern::{Glob, ObjectPattern, Unresolved};
pub use self::{
    error::{PolicyError, PolicyErrors},
    load::{API_VERSION, KIND},
    selector::{LabelSelector, check_label_key, check_label_value},
};
use crate::sql::{Class, ClassSet, ObjectName};

/// What a policy says about a statement (or a connection).
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    /// Hold until an approver decides, or the timeout passes (refused then).
    RequireApproval,
}

impl Action {
    /// The name in policy files and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }

    /// The action named `name` in a policy file.
    pub fn from_name(name: &str) -> Option<Action> {
        [Action::Allow, Action::Deny, Action::RequireApproval].into_iter().find(|a| a.as_str() == name)
    }

    /// How restrictive: deny > require_approval > allow.
    fn strictness(self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::RequireApproval => 1,
            Action::Deny => 2,
        }
    }

    /// Whether `self` refuses more than `other`.
    pub fn is_stricter_than(self, other: Action) -> bool {
        self.strictness() > other.strictness()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What policy needs to know about one statement (filled by the analyser and the session).
#[derive(Debug, Clone, Copy)]
pub struct StatementFacts<'a> {
    /// The primary class (most consequential effect).
    pub class: Class,
    /// Every class of effect found (the primary class counts even if absent here).
    pub effects: ClassSet,
    /// One entry per relation named: its candidate resolutions, each with `schema` set. An
    /// unqualified name has one candidate per schema of the search_path it could resolve in.
    pub relations: &'a [Vec<ObjectName>],
    /// Likewise for the functions called.
    pub functions: &'a [Vec<ObjectName>],
    /// An UPDATE or DELETE without WHERE (or the like): it touches every row.
    pub unscoped: bool,
    /// The client's sqlcommenter tags.
    pub tags: &'a BTreeMap<String, String>,
    /// Why the analyser chose the class (for `unknown` especially), shown in reasons.
    pub reason: Option<&'a str>,
}

/// Who is asking: the identity's labels, the database (as named in the agent's config) and the
/// role the session acts as.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub database: &'a str,
    /// `None` when not known (a `protocol: tcp` connection, or a role changed in a way the proxy
    /// cannot read): every `users` filter then selects it. Selecting more policies can only make
    /// the decision stricter (the most restrictive wins), so not knowing never widens.
    pub user: Option<&'a str>,
}

/// The verdict for a statement or connection, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub action: Action,
    /// The policy that decided (none when no policy selects the identity).
    pub policy: Option<Arc<str>>,
    /// The rule that decided (none when a policy's default did).
    pub rule: Option<Arc<str>>,
    /// For people: why this rule matched, e.g. "class write is in [write, ddl] and it is unscoped".
    pub reason: String,
    /// How the hold is decided (present exactly when the action is `require_approval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Arc<ApprovalTerms>>,
}

/// How a held statement is decided: how long it waits for an approver, what an approval grants,
/// and where the request is announced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalTerms {
    /// Refused (42501) when no approver decided within this.
    #[serde(rename = "timeout_s", serialize_with = "seconds")]
    pub timeout: Duration,
    pub grant: Grant,
    /// Where each request is POSTed as JSON (validated at load: http or https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Arc<str>>,
}

/// What an approval lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The held statement, this once.
    Once,
    /// Also, for this long, every statement of the same identity, database and role with the
    /// same fingerprint (its normalised text: literals and parameters may differ).
    For(Duration),
}

impl serde::Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Once => f.write_str("once"),
            Grant::For(d) => write!(f, "for {}", format_duration(*d)),
        }
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// `90s`, `5m`, `2h`, `1h30m` (as written in policy files).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

impl ApprovalTerms {
    /// Five minutes, the held statement only, no webhook.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    pub fn standard() -> Self {
        ApprovalTerms { timeout: Self::DEFAULT_TIMEOUT, grant: Grant::Once, webhook: None }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        match (&self.policy, &self.rule) {
            (Some(p), Some(r)) => write!(f, " by policy {p}, rule {r}")?,
            (Some(p), None) => write!(f, " by policy {p} (its default)")?,
            _ => {}
        }
        write!(f, ": {}", self.reason)?;
        if let Some(terms) = &self.approval {
            write!(f, " (approval within {}, grants {})", format_duration(terms.timeout), terms.grant)?;
        }
        Ok(())
    }
}

/// The conditions of a rule (all must hold; none means every statement).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Match {
    pub class: Option<ClassSet>,
    pub relations: Option<Vec<ObjectPattern>>,
    pub functions: Option<Vec<ObjectPattern>>,
    pub unscoped: Option<bool>,
    pub tags: Option<BTreeMap<String, String>>,
}

/// The class set a statement has: its effects and its primary class.
fn effects_of(facts: &StatementFacts<'_>) -> ClassSet {
    facts.effects.with(facts.class)
}

fn class_list(set: ClassSet) -> String {
    let names: Vec<&str> = set.iter().map(Class::as_str).collect();
    format!("[{}]", names.join(", "))
}

fn pattern_list(patterns: &[ObjectPattern]) -> String {
    let texts: Vec<&str> = patterns.iter().map(|p| p.text.as_str()).collect();
    format!("[{}]", texts.join(", "))
}

/// ANY (deny-type) or ALL (allow) matching of names against patterns; see the module doc.
fn objects_match(patterns: &[ObjectPattern], objects: &[Vec<ObjectName>], all: bool) -> bool {
    if all {
        !objects.is_empty()
            && objects.iter().all(|candidates| {
                !candidates.is_empty()
                    && candidates.iter().all(|c| patterns.iter().any(|p| p.matches(c, Unresolved::MustMatch)))
            })
    } else {
        objects.iter().any(|candidates| {
            candidates.is_empty()
                || candidates.iter().any(|c| patterns.iter().any(|p| p.matches(c, Unresolved::MayMatch)))
        })
    }
}

/// Why ANY/ALL matching held, for the decision's reason.
fn describe_objects(kind: &str, patterns: &[ObjectPattern], objects: &[Vec<ObjectName>], all: bool) -> String {
    if all {
        let names: Vec<String> =
            objects.iter().flat_map(|candidates| candidates.iter().map(ToString::to_string)).collect();
        return format!("every {kind} ({}) matches {}", names.join(", "), pattern_list(patterns));
    }
    for candidates in objects {
        if candidates.is_empty() {
            return format!("a {kind} could not be resolved, so it may match {}", pattern_list(patterns));
        }
        for c in candidates {
            if let Some(p) = patterns.iter().find(|p| p.matches(c, Unresolved::MayMatch)) {
                return if c.schema.is_none() {
                    format!("{kind} {c} (schema unknown) may be one that matches {p}")
                } else if candidates.len() > 1 {
                    format!(
                        "{kind} {} matches {p} ({c} is one of {} places it may resolve to)",
                        c.name,
                        candidates.len()
                    )
                } else {
                    format!("{kind} {c} matches {p}")
                };
            }
        }
    }
    String::new()
}

impl Match {
    pub(crate) fn is_catch_all(&self) -> bool {
        *self == Match::default()
    }

    /// `all`: the ALL semantics of allow rules; otherwise ANY.
    fn matches(&self, all: bool, facts: &StatementFacts<'_>) -> bool {
        if let Some(class) = self.class {
            let effects = effects_of(facts);
            let ok = if all { effects.is_subset(class) } else { effects.intersects(class) };
            if !ok {
                return false;
            }
        }
        if self.unscoped.is_some_and(|u| u != facts.unscoped) {
            return false;
        }
        if let Some(tags) = &self.tags
            && !tags.iter().all(|(k, v)| facts.tags.get(k) == Some(v))
        {
            return false;
        }
        if let Some(p) = &self.relations
            && !objects_match(p, facts.relations, all)
        {
            return false;
        }
        if let Some(p) = &self.functions
            && !objects_match(p, facts.functions, all)
        {
            return false;
        }
        true
    }

    /// Why a match held (call only when it did).
    fn describe(&self, all: bool, facts: &StatementFacts<'_>) -> String {
        let mut parts = Vec::new();
        if let Some(class) = self.class {
            let effects = effects_of(facts);
            let why = |c: Class| match facts.reason {
                Some(r) if c == facts.class => format!(" ({r})"),
                _ => String::new(),
            };
            if all {
                if effects.iter().count() > 1 {
                    parts.push(format!(
                        "every class of the statement {} is in {}",
                        class_list(effects),
                        class_list(class)
                    ));
                } else {
                    parts.push(format!("class {}{} is in {}", facts.class, why(facts.class), class_list(class)));
                }
            } else {
                // The most consequential class that matched is the one worth naming.
                let matched: Vec<Class> = effects.iter().filter(|c| class.contains(*c)).collect();
                let c = ClassSet::of(&matched).primary().unwrap_or(facts.class);
                let noun = if c == facts.class { "class" } else { "effect" };
                parts.push(format!("{noun} {c}{} is in {}", why(c), class_list(class)));
            }
        }
        if let Some(u) = self.unscoped {
            parts.push(if u { "it is unscoped".to_string() } else { "it is scoped".to_string() });
        }
        if let Some(p) = &self.relations {
            parts.push(describe_objects("relation", p, facts.relations, all));
        }
        if let Some(p) = &self.functions {
            parts.push(describe_objects("function", p, facts.functions, all));
        }
        if let Some(tags) = &self.tags {
            let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("the client tagged it {}", pairs.join(", ")));
        }
        if parts.is_empty() { "the rule matches every statement".to_string() } else { parts.join(" and ") }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub matcher: Match,
    /// Where its name was written (for messages about later rules).
    pub line: u32,
    /// The rule's own approval terms (`approval:`), over the policy's.
    pub approval: Option<load::TermsOverride>,
    /// The terms in force for it (a `require_approval` rule only), merged at load.
    pub terms: Option<Arc<ApprovalTerms>>,
    /// `mode: dryrun` (its own, or its policy's): it takes part only in the would-be verdict.
    pub dryrun: bool,
}

impl Rule {
    fn matches(&self, facts: &StatementFacts<'_>) -> bool {
        self.matcher.matches(self.action == Action::Allow, facts)
    }

    fn describe(&self, facts: &StatementFacts<'_>) -> String {
        self.matcher.describe(self.action == Action::Allow, facts)
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub name: Arc<str>,
    pub file: Arc<Path>,
    pub line: u32,
    pub selector: LabelSelector,
    /// Empty: every database.
    pub databases: Vec<String>,
    /// Empty: every role. (As written, and compiled.)
    pub users: Vec<(String, Glob)>,
    pub rules: Vec<Rule>,
    pub default: Action,
    /// The policy's approval terms (`spec.approval`), for its default and its rules.
    pub terms: Arc<ApprovalTerms>,
    /// Some rule or the default is not allow.
    pub guards: bool,
    /// What a connection of a `protocol: tcp` database gets: the first catch-all rule, else the
    /// default (index of the rule).
    pub connection: (Action, Option<usize>),
    /// Masking rules that are enforced, and what the policy does where masking cannot reach.
    pub masks: Vec<masking::MaskRule>,
    pub masking: masking::MaskingSpec,
    /// `spec.mode: dryrun`: the policy takes part only in the would-be verdict.
    pub dryrun: bool,
    /// The policy or some rule of it is in dryrun mode.
    pub has_dryrun: bool,
    /// What `guards` would be with its dry-run rules enforced.
    pub would_guard: bool,
    /// Every masking rule, dry-run ones included (what the would-be verdict masks).
    pub would_masks: Vec<masking::MaskRule>,
    /// Volume limit rules (every one whose match holds applies).
    pub limits: Vec<limits::LimitRule>,
}

impl Policy {
    pub(crate) fn new(name: Arc<str>, file: Arc<Path>, line: u32, spec: load::Spec) -> Policy {
        let dryrun = spec.dryrun;
        let would_guard = spec.default != Action::Allow
            || spec.rules.iter().any(|r| r.action != Action::Allow)
            || !spec.masks.is_empty()
            || !spec.limits.is_empty();
        let guards = !dryrun
            && (spec.default != Action::Allow
                || spec.rules.iter().any(|r| !r.dryrun && r.action != Action::Allow)
                || spec.masks.iter().any(|m| !m.dryrun)
                || !spec.limits.is_empty());
        let has_dryrun = dryrun || spec.rules.iter().any(|r| r.dryrun) || spec.masks.iter().any(|m| m.dryrun);
        let connection = match spec.rules.iter().position(|r| !r.dryrun && r.matcher.is_catch_all()) {
            Some(i) => (spec.rules[i].action, Some(i)),
            None => (spec.default, None),
        };
        let terms = Arc::new(spec.approval);
        let mut rules = spec.rules;
        for rule in &mut rules {
            if rule.action == Action::RequireApproval {
                rule.terms = Some(match &rule.approval {
                    Some(o) => Arc::new(ApprovalTerms {
                        timeout: o.timeout.unwrap_or(terms.timeout),
                        grant: o.grant.unwrap_or(terms.grant),
                        webhook: terms.webhook.clone(),
                    }),
                    None => terms.clone(),
                });
            }
        }
        Policy {
            name,
            file,
            line,
            selector: spec.selector,
            databases: spec.databases,
            users: spec.users,
            rules,
            default: spec.default,
            terms,
            guards,
            connection,
            masks: if dryrun { Vec::new() } else { spec.masks.iter().filter(|m| !m.dryrun).cloned().collect() },
            masking: spec.masking,
            dryrun,
            has_dryrun,
            would_guard,
            would_masks: spec.masks,
            limits: spec.limits,
        }
    }

    fn selects(&self, subject: &Subject<'_>) -> bool {
        self.selector.matches(subject.labels)
            && (self.databases.is_empty() || self.databases.iter().any(|d| d == subject.database))
            && (self.users.is_empty()
                || subject.user.is_none_or(|user| self.users.iter().any(|(_, g)| g.matches(user))))
    }

    /// The action and the deciding rule (index), first match wins; tags only narrow. `would`:
    /// dry-run rules take part (the would-be verdict); otherwise they are passed over.
    fn evaluate(&self, facts: &StatementFacts<'_>, would: bool) -> (Action, Option<usize>) {
        let counts = |r: &Rule| would || !r.dryrun;
        let first = self.rules.iter().position(|r| counts(r) && r.matches(facts));
        match first {
            Some(i) if self.rules[i].matcher.tags.is_some() => {
                // A tagged rule decided: what would the policy say if the client had declared no
                // tags? The stricter of the two stands, so a tag can never loosen.
                let untagged =
                    self.rules.iter().position(|r| counts(r) && r.matcher.tags.is_none() && r.matches(facts));
                let without = untagged.map_or(self.default, |u| self.rules[u].action);
                if without.is_stricter_than(self.rules[i].action) {
                    (without, untagged)
                } else {
                    (self.rules[i].action, Some(i))
                }
            }
            Some(i) => (self.rules[i].action, Some(i)),
            None => (self.default, None),
        }
    }

    /// The approval terms of a `require_approval` decision by `rule` (or the default).
    fn terms_for(&self, action: Action, rule: Option<usize>) -> Option<Arc<ApprovalTerms>> {
        (action == Action::RequireApproval)
            .then(|| rule.and_then(|i| self.rules[i].terms.clone()).unwrap_or_else(|| self.terms.clone()))
    }

    fn decision(&self, action: Action, rule: Option<usize>, reason: impl FnOnce(&Rule) -> String) -> Decision {
        match rule {
            Some(i) => Decision {
                action,
                policy: Some(self.name.clone()),
                rule: Some(self.rules[i].name.clone()),
                reason: reason(&self.rules[i]),
                approval: self.terms_for(action, Some(i)),
            },
            None => Decision {
                action,
                policy: Some(self.name.clone()),
                rule: None,
                reason: format!("no rule matched; the policy's default is {action}"),
                approval: self.terms_for(action, None),
            },
        }
    }
}

/// Every policy set gets its own id, so a [`Selection`] made against one is never read against
/// another (indexes would point at the wrong policies after a reload).
static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// Compiled policies, sorted by name; immutable (a reload compiles a new set).
#[derive(Debug)]
pub struct PolicySet {
    id: u64,
    policies: Vec<Policy>,
}

impl PolicySet {
    /// No policies: everything is allowed.
    pub fn empty() -> Self {
        PolicySet { id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed), policies: Vec::new() }
    }

    /// Reads files and directories (their `*.yaml` and `*.yml`, sorted) and compiles them;
    /// every mistake of every file is reported in one pass.
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, PolicyErrors> {
        let (sources, mut errors) = load::read_sources(paths);
        match PolicySet::from_sources(&sources) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(PolicyErrors(errors)),
            Err(PolicyErrors(more)) => {
                errors.extend(more);
                Err(PolicyErrors(errors))
            }
        }
    }

    /// Compiles policy texts (path, contents); paths only name the files in messages.
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<PolicySet, PolicyErrors> {
        let policies = load::compile(sources)?;
        Ok(PolicySet { id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed), policies })
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Policy names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.policies.iter().map(|p| &*p.name)
    }

    /// Where the policy `name` was defined (file, line of its name).
    pub fn location(&self, name: &str) -> Option<(&Path, u32)> {
        self.policies.iter().find(|p| &*p.name == name).map(|p| (&*p.file, p.line))
    }

    /// The policies that apply to `subject`: evaluate once per identity (and again when its
    /// labels change), keep, and reuse for each statement.
    pub fn select(&self, subject: &Subject<'_>) -> Selection {
        let chosen: Vec<u32> =
            (0..self.policies.len() as u32).filter(|i| self.policies[*i as usize].selects(subject)).collect();
        let guards = chosen.iter().any(|i| self.policies[*i as usize].guards);
        let would_guard = chosen.iter().any(|i| self.policies[*i as usize].would_guard);
        let dryrun = chosen.iter().any(|i| self.policies[*i as usize].has_dryrun);
        let dryrun_masks = chosen.iter().any(|i| {
            let p = &self.policies[*i as usize];
            p.would_masks.len() != p.masks.len()
        });
        let limits = chosen.iter().any(|i| !self.policies[*i as usize].limits.is_empty());
        Selection { set: self.id, policies: Arc::from(chosen), guards, would_guard, dryrun, dryrun_masks, limits }
    }

    /// Whether any policy has a dry-run part.
    pub fn has_dryrun(&self) -> bool {
        self.policies.iter().any(|p| p.has_dryrun)
    }
}

/// The policies selecting one subject, within one [`PolicySet`].
#[derive(Debug, Clone)]
pub struct Selection {
    set: u64,
    policies: Arc<[u32]>,
    guards: bool,
    /// `guards` with dry-run policies and rules counted as enforced.
    would_guard: bool,
    /// Some selected policy or rule is in dryrun mode: statements get a would-be verdict.
    dryrun: bool,
    /// Some selected policy has masking rules in dryrun mode (the would-be verdict masks more).
    dryrun_masks: bool,
    /// Some selected policy has volume limit rules.
    limits: bool,
}

/// The decision when the selection belongs to another set: fail closed (a caller bug).
fn stale() -> Decision {
    Decision {
        action: Action::Deny,
        policy: None,
        rule: None,
        reason: "internal error: the policy selection was made against another policy set".into(),
        approval: None,
    }
}

fn unselected() -> Decision {
    Decision {
        action: Action::Allow,
        policy: None,
        rule: None,
        reason: "no policy selects this identity".into(),
        approval: None,
    }
}

impl Selection {
    /// Whether any selected policy can refuse something (a rule or default that is not allow);
    /// dry-run policies and rules refuse nothing, so they do not count.
    pub fn guards(&self) -> bool {
        self.guards
    }

    /// Whether it would guard with its dry-run policies and rules enforced.
    pub fn would_guard(&self) -> bool {
        self.would_guard
    }

    /// Whether a selected policy or rule is in dryrun mode (statements get a would-be verdict).
    pub fn dryrun(&self) -> bool {
        self.dryrun
    }

    /// Whether a selected policy has masking rules in dryrun mode.
    pub fn dryrun_masks(&self) -> bool {
        self.dryrun_masks
    }

    /// Whether a selected policy has volume limit rules.
    pub fn has_limits(&self) -> bool {
        self.limits
    }

    /// The volume limits that apply to a statement: every limit rule of the selected policies
    /// whose match holds.
    pub fn limits(&self, set: &PolicySet, facts: &StatementFacts<'_>) -> Vec<limits::Limit> {
        if !self.limits || set.id != self.set {
            return Vec::new();
        }
        self.policies
            .iter()
            .map(|i| &set.policies[*i as usize])
            .flat_map(|p| {
                p.limits.iter().filter(|l| l.applies(facts)).map(|l| limits::Limit {
                    policy: p.name.clone(),
                    rule: l.name.clone(),
                    cap: l.cap,
                })
            })
            .collect()
    }

    /// Whether no policy selects the subject.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The names of the selected policies, in order.
    pub fn names<'s>(&self, set: &'s PolicySet) -> Vec<&'s str> {
        if set.id != self.set {
            return Vec::new();
        }
        self.policies.iter().map(|i| &*set.policies[*i as usize].name).collect()
    }

    /// The verdict for a statement: the most restrictive of the selected policies' decisions
    /// (dry-run policies and rules passed over).
    pub fn decide(&self, set: &PolicySet, facts: &StatementFacts<'_>) -> Decision {
        self.decide_as(set, facts, false)
    }

    /// The would-be verdict: what `decide` would say with every dry-run policy and rule
    /// enforced (`None` when none is selected).
    pub fn decide_would(&self, set: &PolicySet, facts: &StatementFacts<'_>) -> Option<Decision> {
        self.dryrun.then(|| self.decide_as(set, facts, true))
    }

    fn decide_as(&self, set: &PolicySet, facts: &StatementFacts<'_>, would: bool) -> Decision {
        if set.id != self.set {
            return stale();
        }
        let mut best: Option<(&Policy, Action, Option<usize>)> = None;
        for i in self.policies.iter() {
            let policy = &set.policies[*i as usize];
            if policy.dryrun && !would {
                continue;
            }
            let (action, rule) = policy.evaluate(facts, would);
            if best.as_ref().is_none_or(|(_, a, _)| action.is_stricter_than(*a)) {
                best = Some((policy, action, rule));
                if action == Action::Deny {
                    break; // nothing is stricter, and later policies lose ties
                }
            }
        }
        match best {
            Some((policy, action, rule)) => policy.decision(action, rule, |r| r.describe(facts)),
            // Every selected policy was passed over: each is in dryrun mode.
            None if !self.is_empty() => Decision {
                action: Action::Allow,
                policy: None,
                rule: None,
                reason: "only dry-run policies select this identity".into(),
                approval: None,
            },
            None => unselected(),
        }
    }

    /// The masking the selected policies give an identity with `labels` (`None`: no selected
    /// policy masks anything).
    pub fn masking(&self, set: &PolicySet, labels: &BTreeMap<String, String>) -> Option<masking::MaskPolicy> {
        self.masking_as(set, labels, false)
    }

    /// The masking with every dry-run masking rule enforced (`None` when no selected policy or
    /// rule is in dryrun mode, or nothing would be masked).
    pub fn masking_would(&self, set: &PolicySet, labels: &BTreeMap<String, String>) -> Option<masking::MaskPolicy> {
        if !self.dryrun_masks {
            return None;
        }
        self.masking_as(set, labels, true)
    }

    fn masking_as(
        &self,
        set: &PolicySet,
        labels: &BTreeMap<String, String>,
        would: bool,
    ) -> Option<masking::MaskPolicy> {
        if set.id != self.set {
            return None;
        }
        masking::MaskPolicy::build(
            self.policies.iter().map(|i| {
                let p = &set.policies[*i as usize];
                (&p.name, if would { p.would_masks.as_slice() } else { p.masks.as_slice() }, &p.masking)
            }),
            labels,
        )
    }

    /// Each selected policy's own decision, in order (for `warden policy explain`): as
    /// enforced (none for a dry-run policy: nothing of it is), and with its dry-run rules
    /// enforced when it has any.
    pub fn decide_each(
        &self,
        set: &PolicySet,
        facts: &StatementFacts<'_>,
    ) -> Vec<(Option<Decision>, Option<Decision>)> {
        if set.id != self.set {
            return vec![(Some(stale()), None)];
        }
        self.policies
            .iter()
            .map(|i| {
                let policy = &set.policies[*i as usize];
                let (action, rule) = policy.evaluate(facts, false);
                let enforced = (!policy.dryrun).then(|| policy.decision(action, rule, |r| r.describe(facts)));
                let would = policy.has_dryrun.then(|| {
                    let (action, rule) = policy.evaluate(facts, true);
                    policy.decision(action, rule, |r| r.describe(facts))
                });
                (enforced, would)
            })
            .collect()
    }

    /// The verdict for a connection to a `protocol: tcp` database, whose statements are never
    /// seen: the most restrictive of the selected policies' defaults (a catch-all rule, if a
    /// policy has one, is its default in effect).
    pub fn decide_connection(&self, set: &PolicySet) -> Decision {
        if set.id != self.set {
            return stale();
        }
        let mut best: Option<(&Policy, Action, Option<usize>)> = None;
        for i in self.policies.iter().filter(|i| !set.policies[**i as usize].dryrun) {
            let policy = &set.policies[*i as usize];
            let (action, rule) = policy.connection;
            if best.as_ref().is_none_or(|(_, a, _)| action.is_stricter_than(*a)) {
                best = Some((policy, action, rule));
            }
        }
        match best {
            Some((policy, action, Some(rule))) => Decision {
                action,
                approval: policy.terms_for(action, Some(rule)),
                policy: Some(policy.name.clone()),
                rule: Some(policy.rules[rule].name.clone()),
                reason: format!(
                    "connection-level governance only (statements are not seen); rule {} matches every statement",
                    policy.rules[rule].name
                ),
            },
            Some((policy, action, None)) => Decision {
                action,
                approval: policy.terms_for(action, None),
                policy: Some(policy.name.clone()),
                rule: None,
                reason: format!(
                    "connection-level governance only (statements are not seen); the policy's default is {action}"
                ),
            },
            None => unselected(),
        }
    }
}

/// The decision once failing closed: a statement `decided` allows whose effects include
/// `unknown` (what it does cannot be known) is refused for an identity whose policies can refuse
/// anything (`guards`), whatever their rules say of it; one only observe-only policies select is
/// not (DESIGN.md, "Fail modes").
pub fn fail_closed(decided: Decision, facts: &StatementFacts<'_>, guards: bool) -> Decision {
    if decided.action != Action::Allow || !effects_of(facts).contains(Class::Unknown) || !guards {
        return decided;
    }
    Decision {
        action: Action::Deny,
        policy: None,
        rule: Some(Arc::from("fail-closed")),
        reason: format!(
            "class unknown ({}), and this identity's policies guard it: refused, failing closed",
            facts.reason.unwrap_or("not analysed")
        ),
        approval: None,
    }
}

/// Describes a policy's selection criteria (for `explain`).
pub(crate) fn describe_scope(policy: &Policy) -> String {
    let mut parts = vec![format!("selector {}", policy.selector)];
    if policy.dryrun {
        parts.insert(0, "dryrun (evaluated and recorded, never enforced)".to_string());
    } else if policy.has_dryrun {
        let rules: Vec<&str> = policy
            .rules
            .iter()
            .filter(|r| r.dryrun)
            .map(|r| &*r.name)
            .chain(policy.would_masks.iter().filter(|m| m.dryrun).map(|m| &*m.name))
            .collect();
        parts.push(format!("dryrun rules [{}]", rules.join(", ")));
    }
    if !policy.databases.is_empty() {
        parts.push(format!("databases [{}]", policy.databases.join(", ")));
    }
    if !policy.users.is_empty() {
        let users: Vec<&str> = policy.users.iter().map(|(u, _)| u.as_str()).collect();
        parts.push(format!("users [{}]", users.join(", ")));
    }
    parts.join(", ")
}

impl PolicySet {
    /// The compiled policy named `name` (for `explain`).
    pub(crate) fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| &*p.name == name)
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;
