//! Policy files to compiled policies: reads files and directories, walks each YAML document,
//! and checks every field by hand, so that one pass reports every mistake of every file with
//! its line and column (serde would stop at the first). Besides shape and types it rejects
//! rules that can never match (an empty list, `unscoped: true` outside writes, a rule that an
//! earlier rule of the same policy always takes first), `tags` on allow rules, and duplicate
//! names.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Action, ApprovalTerms, Grant, Match, Policy, PolicyError, PolicyErrors, Rule,
    masking::{Inference, MaskRule, MaskingSpec, Untraced},
    pattern::{ColumnPattern, Glob, ObjectPattern},
    selector::{self, LabelSelector, Requirement},
    yaml::{self, Node, Pos, Value},
};
use crate::sql::{Class, ClassSet};

/// The only apiVersion understood.
pub const API_VERSION: &str = "warden.dev/v1alpha1";
/// The only kind understood.
pub const KIND: &str = "DatabasePolicy";

/// The policy files named: files as given, directories' `*.yaml` and `*.yml` (not recursive,
/// dot-files skipped: a Kubernetes ConfigMap volume keeps its real files under `..data`, and
/// editors leave swap files), sorted by name. A path given twice is read once.
pub(crate) fn read_sources(paths: &[PathBuf]) -> (Vec<(PathBuf, String)>, Vec<PolicyError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let unreadable = |path: &Path, what: &str, e: std::io::Error| PolicyError {
        file: path.to_path_buf(),
        position: None,
        message: format!("cannot read {what}: {e}"),
    };
    for path in paths {
        if path.is_dir() {
            let entries = match std::fs::read_dir(path) {
                Ok(entries) => entries,
                Err(e) => {
                    errors.push(unreadable(path, "the directory", e));
                    continue;
                }
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && p.is_file()
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut seen = HashSet::new();
    let mut sources = Vec::new();
    for file in files {
        if !seen.insert(std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone())) {
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => errors.push(unreadable(&file, "the file", e)),
        }
    }
    (sources, errors)
}

/// A policy name as first seen, for duplicate detection across files.
struct Seen {
    file: usize,
    pos: Pos,
}

/// Compiles every document of every source; the policies sorted by name, or every mistake.
pub(crate) fn compile(sources: &[(PathBuf, String)]) -> Result<Vec<Policy>, PolicyErrors> {
    // (file index, position, message): sorted at the end so the report reads top to bottom.
    let mut errors: Vec<(usize, Pos, String)> = Vec::new();
    let mut policies = Vec::new();
    let mut names: BTreeMap<String, Seen> = BTreeMap::new();
    for (index, (path, text)) in sources.iter().enumerate() {
        let file: Arc<Path> = Arc::from(path.as_path());
        let (docs, yaml_errors) = yaml::parse_documents(text);
        errors.extend(yaml_errors.into_iter().map(|(pos, m)| (index, pos, m)));
        for doc in &docs {
            // Empty documents (a trailing `---`, a file of comments) are not policies.
            if doc.is_null() {
                continue;
            }
            let mut cx = Cx::default();
            let (name, policy) = compile_document(&mut cx, doc, &file);
            if let Some((name, pos)) = name {
                match names.get(&name) {
                    Some(first) => cx.error(
                        pos,
                        format!(
                            "metadata.name: a policy named `{name}` is already defined at {}:{}",
                            sources[first.file].0.display(),
                            first.pos
                        ),
                    ),
                    None => {
                        names.insert(name, Seen { file: index, pos });
                    }
                }
            }
            if cx.errors.is_empty()
                && let Some(policy) = policy
            {
                policies.push(policy);
            }
            errors.extend(cx.errors.into_iter().map(|(pos, m)| (index, pos, m)));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|(file, pos, _)| (*file, *pos));
        return Err(PolicyErrors(
            errors
                .into_iter()
                .map(|(file, pos, message)| PolicyError {
                    file: sources[file].0.clone(),
                    position: Some((pos.line, pos.column)),
                    message,
                })
                .collect(),
        ));
    }
    policies.sort_by(|a: &Policy, b: &Policy| a.name.cmp(&b.name));
    Ok(policies)
}

/// The mistakes of one document.
#[derive(Default)]
struct Cx {
    errors: Vec<(Pos, String)>,
}

/// A mapping's fields, after unknown ones were reported.
struct Fields<'n> {
    pos: Pos,
    path: String,
    entries: Vec<(&'n Node, &'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(_, k, _)| *k == name).map(|(_, _, v)| *v)
    }

    /// The key node (for mistakes about the field as a whole).
    fn key(&self, name: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(_, k, _)| *k == name).map(|(k, _, _)| *k)
    }

    fn required(&self, cx: &mut Cx, name: &str, hint: &str) -> Option<&'n Node> {
        let found = self.get(name);
        if found.is_none() {
            let at = if self.path.is_empty() { String::new() } else { format!("{}: ", self.path) };
            cx.error(self.pos, format!("{at}missing field `{name}`{hint}"));
        }
        found
    }

    fn path(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }
}

/// Fields that are planned but not supported yet: named, so the message says so rather than
/// "unknown field".
fn not_yet(field: &str) -> Option<&'static str> {
    match field {
        "columns" | "classifications" => {
            Some("columns are matched by masking rules (a rule with `mask:` instead of `action:`)")
        }
        "where" => Some("conditions on WHERE are expressed with `unscoped`"),
        _ => None,
    }
}

/// Edit distance, for "did you mean" (names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca.eq_ignore_ascii_case(cb) { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

impl Cx {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push((pos, message.into()));
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        let mut message = format!("{path}: expected {expected}, found {}", node.describe());
        if expected.contains("string")
            && let Some(text) = node.scalar_text()
            && !node.is_null()
        {
            message.push_str(&format!(" (quote it: \"{text}\")"));
        }
        self.error(node.pos, message);
    }

    /// The fields of a mapping; unknown keys (and keys that are not strings) are reported at
    /// their own position.
    fn mapping<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(pairs) = &node.value else {
            let expected = format!("a mapping with {}", allowed.join(", "));
            self.type_error(node, if path.is_empty() { "the document" } else { path }, &expected);
            return None;
        };
        let mut entries = Vec::new();
        for (key, value) in pairs {
            let Some(name) = key.as_str() else {
                self.error(key.pos, format!("{path}: keys must be strings, found {}", key.describe()));
                continue;
            };
            if allowed.contains(&name) {
                entries.push((key, name, value));
                continue;
            }
            let mut message = format!(
                "{}unknown field `{name}`; expected one of {}",
                if path.is_empty() { String::new() } else { format!("{path}: ") },
                allowed.join(", ")
            );
            if let Some(why) = not_yet(name) {
                message = format!("{}: `{name}`: {why}", if path.is_empty() { "document" } else { path });
            } else if let Some(close) = allowed.iter().find(|a| distance(name, a) <= 2) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            }
            self.error(key.pos, message);
        }
        Some(Fields { pos: node.pos, path: path.to_string(), entries })
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        let s = node.as_str();
        if s.is_none() {
            self.type_error(node, path, "a string");
        }
        s
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Scalar { kind: yaml::ScalarType::Bool(b), .. } => Some(b),
            _ => {
                self.type_error(node, path, "true or false");
                None
            }
        }
    }

    /// A list of strings, each with its node; `never` says why an empty list is a mistake (when
    /// it is one).
    fn strings<'n>(&mut self, node: &'n Node, path: &str, never: Option<&str>) -> Option<Vec<(&'n Node, &'n str)>> {
        let Value::Seq(items) = &node.value else {
            self.type_error(node, path, "a list of strings");
            return None;
        };
        if items.is_empty()
            && let Some(why) = never
        {
            self.error(node.pos, format!("{path}: {why}"));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push((item, s)),
                None => {
                    self.type_error(item, &format!("{path}[{i}]"), "a string");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A mapping of strings to strings, with key nodes.
    fn string_map<'n>(&mut self, node: &'n Node, path: &str) -> Option<Vec<(&'n Node, &'n str, &'n str)>> {
        let Value::Map(pairs) = &node.value else {
            self.type_error(node, path, "a mapping of strings to strings");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in pairs {
            let Some(key) = k.as_str() else {
                self.error(k.pos, format!("{path}: keys must be strings, found {}", k.describe()));
                ok = false;
                continue;
            };
            match v.as_str() {
                Some(value) => out.push((k, key, value)),
                None => {
                    self.type_error(v, &format!("{path}.{key}"), "a string");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// `mode: enforce | dryrun`: whether it is dry-run.
    fn dryrun(&mut self, node: &Node, path: &str) -> Option<bool> {
        match self.string(node, path)? {
            "enforce" => Some(false),
            "dryrun" => Some(true),
            other => {
                let hint = if other.eq_ignore_ascii_case("dryrun")
                    || other.eq_ignore_ascii_case("dry-run")
                    || other == "dry_run"
                {
                    " (written `dryrun`)"
                } else {
                    ""
                };
                self.error(node.pos, format!("{path}: unknown mode `{other}`; expected enforce or dryrun{hint}"));
                None
            }
        }
    }

    fn action(&mut self, node: &Node, path: &str) -> Option<Action> {
        let text = self.string(node, path)?;
        let action = Action::from_name(text);
        if action.is_none() {
            let mut message = format!("{path}: unknown action `{text}`; expected allow, deny or require_approval");
            if text == "mask" {
                message.push_str(" (a masking rule has `mask: {method: ...}` instead of `action`)");
            }
            self.error(node.pos, message);
        }
        action
    }
}

/// A DNS-1123 subdomain, as Kubernetes object names are.
fn check_object_name(name: &str) -> Result<(), String> {
    if selector::dns_subdomain_ok(name) {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: `{name}` is not a valid name; expected at most 253 lower case alphanumerics, `-` \
             and `.`, beginning and ending with an alphanumeric"
        ))
    }
}

/// Rule names: what a label name may be (they appear in audit records and client errors).
fn check_rule_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "rule name `{name}`: expected at most 63 alphanumerics, `-`, `_` or `.`, beginning and ending with \
             an alphanumeric"
        ))
    }
}

/// The policy's name and where it was written (even if the rest has mistakes, so duplicates are
/// still found), and the policy if this document had no mistakes of its own.
fn compile_document(cx: &mut Cx, doc: &Node, file: &Arc<Path>) -> (Option<(String, Pos)>, Option<Policy>) {
    let Some(top) = cx.mapping(doc, "", &["apiVersion", "kind", "metadata", "spec"]) else {
        return (None, None);
    };
    let mut foreign = false;
    if let Some(node) = top.required(cx, "apiVersion", &format!(" (expected `apiVersion: {API_VERSION}`)"))
        && let Some(v) = cx.string(node, "apiVersion")
        && v != API_VERSION
    {
        cx.error(node.pos, format!("apiVersion: unsupported `{v}`; expected {API_VERSION}"));
        foreign = true;
    }
    if let Some(node) = top.required(cx, "kind", &format!(" (expected `kind: {KIND}`)"))
        && let Some(v) = cx.string(node, "kind")
        && v != KIND
    {
        cx.error(node.pos, format!("kind: unsupported `{v}`; expected {KIND}"));
        foreign = true;
    }
    // Another version or kind has another shape: its fields would only add noise.
    if foreign {
        return (None, None);
    }
    let mut name = None;
    if let Some(meta) = top.required(cx, "metadata", " (with at least `name`)")
        && let Some(meta) = cx.mapping(meta, "metadata", &["name", "labels", "annotations"])
    {
        if let Some(node) = meta.required(cx, "name", "")
            && let Some(text) = cx.string(node, "metadata.name")
        {
            match check_object_name(text) {
                Ok(()) => name = Some((text.to_string(), node.pos)),
                Err(e) => cx.error(node.pos, e),
            }
        }
        if let Some(node) = meta.get("labels")
            && let Some(pairs) = cx.string_map(node, "metadata.labels")
        {
            for (key, k, v) in pairs {
                if let Err(e) = selector::check_label_key(k).and_then(|()| selector::check_label_value(v)) {
                    cx.error(key.pos, format!("metadata.labels: {e}"));
                }
            }
        }
        if let Some(node) = meta.get("annotations")
            && let Some(pairs) = cx.string_map(node, "metadata.annotations")
        {
            for (key, k, _) in pairs {
                if let Err(e) = selector::check_label_key(k) {
                    cx.error(key.pos, format!("metadata.annotations: {}", e.replace("label key", "annotation key")));
                }
            }
        }
    }
    let spec = top.required(cx, "spec", "").and_then(|spec| compile_spec(cx, spec));
    let policy = match (&name, spec) {
        (Some((name, pos)), Some(spec)) => Some(Policy::new(Arc::from(name.as_str()), file.clone(), pos.line, spec)),
        _ => None,
    };
    (name, policy)
}

/// What `spec` holds, compiled.
pub(crate) struct Spec {
    pub selector: LabelSelector,
    pub databases: Vec<String>,
    pub users: Vec<(String, Glob)>,
    pub rules: Vec<Rule>,
    pub default: Action,
    pub approval: ApprovalTerms,
    pub masks: Vec<MaskRule>,
    pub masking: MaskingSpec,
    /// `mode: dryrun`: evaluated and recorded, never enforced.
    pub dryrun: bool,
    /// Volume limit rules.
    pub limits: Vec<super::limits::LimitRule>,
}

/// A rule's own approval terms: what it says, over its policy's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TermsOverride {
    pub timeout: Option<std::time::Duration>,
    pub grant: Option<Grant>,
}

/// The longest a statement may be held, or an approval may last.
const MAX_APPROVAL_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `90s`, `5m`, `2h`, `1h30m`: at least a second, at most a day.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut units = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("`{text}`: expected a duration such as 90s, 5m, 2h or 1h30m")),
        };
        let n: u64 =
            number.parse().map_err(|_| format!("`{text}`: expected a duration such as 90s, 5m, 2h or 1h30m"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
        units += 1;
    }
    if !number.is_empty() || units == 0 {
        return Err(format!("`{text}`: expected a duration with its unit, such as 90s, 5m, 2h or 1h30m"));
    }
    let d = std::time::Duration::from_secs(total);
    if d.is_zero() || d > MAX_APPROVAL_DURATION {
        return Err(format!("`{text}`: expected at least 1s and at most 24h"));
    }
    Ok(d)
}

impl Cx {
    fn duration(&mut self, node: &Node, path: &str) -> Option<std::time::Duration> {
        let text = match &node.value {
            Value::Scalar { .. } => node.scalar_text().map(str::to_string),
            _ => None,
        };
        let Some(text) = text else {
            self.type_error(node, path, "a duration such as 90s, 5m or 2h");
            return None;
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node.pos, format!("{path}: {e}"));
                None
            }
        }
    }

    /// `grant: once`, or `grant: 15m` (approve for 15 minutes for the identity and fingerprint).
    fn grant(&mut self, node: &Node, path: &str) -> Option<Grant> {
        let text = node.scalar_text().filter(|_| matches!(node.value, Value::Scalar { .. }));
        match text {
            Some("once") => Some(Grant::Once),
            Some(t) => match parse_duration(t) {
                Ok(d) => Some(Grant::For(d)),
                Err(e) => {
                    self.error(
                        node.pos,
                        format!("{path}: expected `once` or how long an approval lets the same statement through: {e}"),
                    );
                    None
                }
            },
            None => {
                self.type_error(node, path, "`once` or a duration such as 15m");
                None
            }
        }
    }

    /// An `approval` mapping: the policy's (`webhook` allowed) or a rule's.
    fn approval(&mut self, node: &Node, path: &str, policy: bool) -> Option<(TermsOverride, Option<Arc<str>>)> {
        let allowed: &[&str] = if policy { &["timeout", "grant", "webhook"] } else { &["timeout", "grant"] };
        let before = self.errors.len();
        let fields = self.mapping(node, path, allowed)?;
        let mut terms = TermsOverride::default();
        if let Some(n) = fields.get("timeout") {
            terms.timeout = self.duration(n, &fields.path("timeout"));
        }
        if let Some(n) = fields.get("grant") {
            terms.grant = self.grant(n, &fields.path("grant"));
        }
        let mut webhook = None;
        if let Some(n) = fields.get("webhook")
            && let Some(fields) = self.mapping(n, &format!("{path}.webhook"), &["url"])
            && let Some(url) = fields.required(self, "url", " (http:// or https://)")
            && let Some(text) = self.string(url, &fields.path("url"))
        {
            match crate::approval::webhook::WebhookUrl::parse(text) {
                Ok(_) => webhook = Some(Arc::from(text)),
                Err(e) => self.error(url.pos, format!("{path}.webhook.url: {e}")),
            }
        }
        (self.errors.len() == before).then_some((terms, webhook))
    }
}

fn compile_spec(cx: &mut Cx, node: &Node) -> Option<Spec> {
    let before = cx.errors.len();
    let spec = cx.mapping(
        node,
        "spec",
        &["selector", "databases", "users", "rules", "default", "approval", "masking", "mode"],
    )?;
    let dryrun = match spec.get("mode") {
        Some(node) => cx.dryrun(node, "spec.mode"),
        None => Some(false),
    };
    let policy_dryrun = dryrun.unwrap_or(false);
    let masking = match spec.get("masking") {
        Some(node) => compile_masking(cx, node),
        None => Some(MaskingSpec::default()),
    };
    let mut masks: Vec<MaskRule> = Vec::new();
    let selector = spec
        .required(cx, "selector", " (write `selector: {}` to select every identity)")
        .and_then(|node| compile_selector(cx, node));
    let mut databases = Vec::new();
    if let Some(node) = spec.get("databases")
        && let Some(items) = cx.strings(node, "spec.databases", None)
    {
        for (i, (item, text)) in items.into_iter().enumerate() {
            if text.is_empty() {
                cx.error(item.pos, format!("spec.databases[{i}]: empty database name"));
            }
            databases.push(text.to_string());
        }
    }
    let mut users = Vec::new();
    if let Some(node) = spec.get("users")
        && let Some(items) = cx.strings(node, "spec.users", None)
    {
        for (i, (item, text)) in items.into_iter().enumerate() {
            if text.is_empty() {
                cx.error(item.pos, format!("spec.users[{i}]: empty role name"));
            }
            users.push((text.to_string(), Glob::new(text)));
        }
    }
    let mut rules = Vec::new();
    let mut limits = Vec::new();
    if let Some(node) = spec.get("rules") {
        match &node.value {
            Value::Seq(items) => {
                let mut names: BTreeMap<String, Pos> = BTreeMap::new();
                // Action and masking rules share one namespace: a name is defined once.
                let mut unique = |cx: &mut Cx, name_node: &Node, path: &str| -> bool {
                    let name = name_node.as_str().unwrap_or_default();
                    if let Some(first) = names.get(name) {
                        cx.error(
                            name_node.pos,
                            format!("{path}.name: rule `{name}` is already defined at line {}", first.line),
                        );
                        return false;
                    }
                    names.insert(name.to_string(), name_node.pos);
                    true
                };
                for (i, item) in items.iter().enumerate() {
                    let path = format!("spec.rules[{i}]");
                    if is_limit_rule(item) {
                        if let Some((rule, name_node)) = compile_limit_rule(cx, item, &path, policy_dryrun)
                            && unique(cx, name_node, &path)
                        {
                            limits.push(rule);
                        }
                        continue;
                    }
                    if is_mask_rule(item) {
                        if let Some((rule, name_node)) =
                            compile_mask_rule(cx, item, &path, masking.as_ref(), policy_dryrun)
                            && unique(cx, name_node, &path)
                        {
                            masks.push(rule);
                        }
                        continue;
                    }
                    if let Some((rule, name_node)) = compile_rule(cx, item, &path, policy_dryrun) {
                        if !unique(cx, name_node, &path) {
                            continue;
                        }
                        check_reachable(cx, &rules, &rule, name_node.pos, &path);
                        rules.push(rule);
                    }
                }
            }
            _ => cx.type_error(node, "spec.rules", "a list of rules"),
        }
    }
    let default = match spec.get("default") {
        Some(node) => cx.action(node, "spec.default"),
        None => Some(Action::Allow),
    };
    let mut approval = ApprovalTerms::standard();
    if let Some(node) = spec.get("approval")
        && let Some((terms, webhook)) = cx.approval(node, "spec.approval", true)
    {
        approval.timeout = terms.timeout.unwrap_or(approval.timeout);
        approval.grant = terms.grant.unwrap_or(approval.grant);
        approval.webhook = webhook;
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Spec {
        selector: selector?,
        databases,
        users,
        rules,
        default: default?,
        approval,
        masks,
        masking: masking?,
        dryrun: dryrun?,
        limits,
    })
}

/// Whether a rule is a volume limit rule (it has `limit`).
fn is_limit_rule(node: &Node) -> bool {
    matches!(&node.value, Value::Map(pairs) if pairs.iter().any(|(k, _)| k.as_str() == Some("limit")))
}

/// `{name, match, limit: {rows, bytes, per}}`.
fn compile_limit_rule<'n>(
    cx: &mut Cx,
    node: &'n Node,
    path: &str,
    policy_dryrun: bool,
) -> Option<(super::limits::LimitRule, &'n Node)> {
    let before = cx.errors.len();
    let fields = cx.mapping(node, path, &["name", "match", "limit", "mode"])?;
    if let Value::Map(pairs) = &node.value
        && let Some((key, _)) = pairs.iter().find(|(k, _)| matches!(k.as_str(), Some("action" | "mask")))
    {
        cx.error(
            key.pos,
            format!("{path}: a rule either limits (`limit`), masks (`mask`) or acts (`action`), one of them"),
        );
    }
    if policy_dryrun || fields.get("mode").is_some_and(|m| m.as_str() == Some("dryrun")) {
        let at = fields.get("mode").map_or(node.pos, |m| m.pos);
        cx.error(
            at,
            format!(
                "{path}: volume limits cannot be dry-run yet (a dry-run policy has none); enforce it, or leave it out"
            ),
        );
    } else if let Some(mode) = fields.get("mode") {
        cx.dryrun(mode, &fields.path("mode"));
    }
    let name_node = fields.required(cx, "name", "");
    if let Some(n) = name_node
        && let Some(text) = cx.string(n, &fields.path("name"))
        && let Err(e) = check_rule_name(text)
    {
        cx.error(n.pos, format!("{path}.name: {e}"));
    }
    let matcher = fields
        .required(cx, "match", " (write `match: {}` to limit every statement)")
        .and_then(|n| compile_match(cx, n, &fields.path("match"), Some(Action::Deny)));
    let mut cap = None;
    if let Some(l) = fields.required(cx, "limit", " (rows, bytes, per)")
        && let Some(lf) = cx.mapping(l, &fields.path("limit"), &["rows", "bytes", "per"])
    {
        let rows = lf.get("rows").and_then(|n| match n.scalar_text().and_then(|t| t.parse::<u64>().ok()) {
            Some(r) if r > 0 && matches!(n.value, Value::Scalar { .. }) => Some(r),
            _ => {
                cx.error(n.pos, format!("{path}.limit.rows: expected a number of rows of at least 1"));
                None
            }
        });
        let bytes = lf.get("bytes").and_then(|n| match n.scalar_text().map(super::limits::parse_size) {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                cx.error(n.pos, format!("{path}.limit.bytes: {e}"));
                None
            }
            None => {
                cx.type_error(n, &lf.path("bytes"), "a size such as 1048576, 10MB or 64MiB");
                None
            }
        });
        let per = lf.get("per").and_then(|n| cx.duration(n, &lf.path("per")));
        if lf.get("rows").is_none() && lf.get("bytes").is_none() {
            cx.error(l.pos, format!("{path}.limit: a limit caps `rows`, `bytes` or both"));
        }
        cap = Some(super::limits::Cap { rows, bytes, per });
    }
    if cx.errors.len() != before {
        return None;
    }
    let name_node = name_node?;
    Some((super::limits::LimitRule { name: Arc::from(name_node.as_str()?), matcher: matcher?, cap: cap? }, name_node))
}

/// Whether a rule is a masking rule (it has `mask`).
fn is_mask_rule(node: &Node) -> bool {
    matches!(&node.value, Value::Map(pairs) if pairs.iter().any(|(k, _)| k.as_str() == Some("mask")))
}

/// `spec.masking`: classifications, what is done where masking cannot reach, detectors.
fn compile_masking(cx: &mut Cx, node: &Node) -> Option<MaskingSpec> {
    let before = cx.errors.len();
    let fields =
        cx.mapping(node, "spec.masking", &["classifications", "inference", "untraced", "detectors", "patterns"])?;
    let mut spec = MaskingSpec::default();
    if let Some(node) = fields.get("classifications") {
        match &node.value {
            Value::Map(pairs) => {
                for (key, value) in pairs {
                    let Some(name) = key.as_str() else {
                        cx.error(key.pos, "spec.masking.classifications: keys must be strings");
                        continue;
                    };
                    if !check_classification(name) {
                        cx.error(
                            key.pos,
                            format!(
                                "spec.masking.classifications: `{name}` is not a classification name; expected \
                                 lower-case words joined by `.`, `_` or `-` (e.g. pii.email)"
                            ),
                        );
                        continue;
                    }
                    let path = format!("spec.masking.classifications.{name}");
                    let Some(items) = cx.strings(value, &path, Some("an empty list tags no column")) else {
                        continue;
                    };
                    let mut patterns = Vec::new();
                    for (i, (item, text)) in items.into_iter().enumerate() {
                        match ColumnPattern::parse(text) {
                            Ok(p) => patterns.push(p),
                            Err(e) => cx.error(item.pos, format!("{path}[{i}]: {e}")),
                        }
                    }
                    spec.classifications.push((name.to_string(), patterns));
                }
            }
            _ => cx.type_error(
                node,
                "spec.masking.classifications",
                "a mapping of classification names to column patterns",
            ),
        }
    }
    if let Some(node) = fields.get("inference")
        && let Some(text) = cx.string(node, "spec.masking.inference")
    {
        match text {
            "refuse" => spec.inference = Inference::Refuse,
            "allow" => spec.inference = Inference::Allow,
            other => {
                cx.error(node.pos, format!("spec.masking.inference: `{other}`; expected refuse (the default) or allow"))
            }
        }
    }
    if let Some(node) = fields.get("untraced")
        && let Some(text) = cx.string(node, "spec.masking.untraced")
    {
        match text {
            "refuse" => spec.untraced = Untraced::Refuse,
            "detect" => spec.untraced = Untraced::Detect,
            other => {
                cx.error(node.pos, format!("spec.masking.untraced: `{other}`; expected refuse (the default) or detect"))
            }
        }
    }
    let mut kinds = crate::mask::detect::Kind::BUILTIN.to_vec();
    if let Some(node) = fields.get("detectors")
        && let Some(items) = cx.strings(node, "spec.masking.detectors", None)
    {
        kinds.clear();
        for (i, (item, text)) in items.into_iter().enumerate() {
            match crate::mask::detect::Kind::from_name(text) {
                Some(k) => kinds.push(k),
                None => {
                    let names: Vec<&str> = crate::mask::detect::Kind::BUILTIN.iter().map(|k| k.as_str()).collect();
                    cx.error(
                        item.pos,
                        format!(
                            "spec.masking.detectors[{i}]: unknown detector `{text}`; expected one of {}",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
    let mut custom = Vec::new();
    if let Some(node) = fields.get("patterns") {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("spec.masking.patterns[{i}]");
                    let Some(f) = cx.mapping(item, &path, &["name", "regex"]) else { continue };
                    let name = f.required(cx, "name", "").and_then(|n| cx.string(n, &f.path("name")));
                    let regex = f.required(cx, "regex", "").and_then(|n| cx.string(n, &f.path("regex")));
                    if let (Some(name), Some(regex)) = (name, regex) {
                        custom.push((name.to_string(), regex.to_string(), item.pos));
                    }
                }
            }
            _ => cx.type_error(node, "spec.masking.patterns", "a list of {name, regex}"),
        }
    }
    let pairs: Vec<(String, String)> = custom.iter().map(|(n, r, _)| (n.clone(), r.clone())).collect();
    match crate::mask::detect::Detectors::new(&kinds, &pairs) {
        Ok(d) => spec.detectors = Arc::new(d),
        Err(e) => cx.error(custom.first().map_or(node.pos, |c| c.2), format!("spec.masking.patterns: {e}")),
    }
    // Returned even with mistakes (they are reported): rules are checked against its
    // classifications, and the spec as a whole fails.
    let _ = before;
    Some(spec)
}

/// `pii.email`, `payment.card`, `secret`: lower-case words joined by `.`, `_` or `-`.
fn check_classification(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_lowercase()
}

/// A masking rule: `{name, match: {columns, classifications}, mask: method | {method, keep},
/// exempt: selector}`.
fn compile_mask_rule<'n>(
    cx: &mut Cx,
    node: &'n Node,
    path: &str,
    masking: Option<&MaskingSpec>,
    policy_dryrun: bool,
) -> Option<(MaskRule, &'n Node)> {
    let before = cx.errors.len();
    let fields = cx.mapping(node, path, &["name", "match", "mask", "exempt", "mode"])?;
    let dryrun = rule_mode(cx, &fields, path, policy_dryrun);
    if let Some(key) = fields.key("mask")
        && let Value::Map(pairs) = &node.value
        && pairs.iter().any(|(k, _)| k.as_str() == Some("action"))
    {
        cx.error(key.pos, format!("{path}: a rule either masks (`mask`) or acts (`action`), not both"));
    }
    let name_node = fields.required(cx, "name", "");
    if let Some(n) = name_node
        && let Some(text) = cx.string(n, &fields.path("name"))
        && let Err(e) = check_rule_name(text)
    {
        cx.error(n.pos, format!("{path}.name: {e}"));
    }
    let mut columns = Vec::new();
    let mut classifications = Vec::new();
    if let Some(m) = fields.required(cx, "match", " (with `columns` or `classifications`)")
        && let Some(mf) = cx.mapping(m, &fields.path("match"), &["columns", "classifications"])
    {
        if let Some(n) = mf.get("columns")
            && let Some(items) = cx.strings(n, &mf.path("columns"), Some("an empty list masks nothing"))
        {
            for (i, (item, text)) in items.into_iter().enumerate() {
                match ColumnPattern::parse(text) {
                    Ok(p) => columns.push(p),
                    Err(e) => cx.error(item.pos, format!("{path}.match.columns[{i}]: {e}")),
                }
            }
        }
        if let Some(n) = mf.get("classifications")
            && let Some(items) = cx.strings(n, &mf.path("classifications"), Some("an empty list masks nothing"))
        {
            for (i, (item, text)) in items.into_iter().enumerate() {
                let known = masking.is_none_or(|m| m.classifications.iter().any(|(c, _)| c == text));
                if !known {
                    cx.error(
                        item.pos,
                        format!(
                            "{path}.match.classifications[{i}]: `{text}` is not defined; tag columns with it in \
                             spec.masking.classifications"
                        ),
                    );
                }
                classifications.push(text.to_string());
            }
        }
        if mf.get("columns").is_none() && mf.get("classifications").is_none() {
            cx.error(m.pos, format!("{path}.match: a masking rule names `columns` or `classifications`"));
        }
    }
    let method = fields.required(cx, "mask", "").and_then(|n| compile_method(cx, n, &fields.path("mask")));
    let exempt = fields.get("exempt").and_then(|n| compile_selector_at(cx, n, &fields.path("exempt")));
    if cx.errors.len() != before {
        return None;
    }
    let name_node = name_node?;
    Some((
        MaskRule {
            name: Arc::from(name_node.as_str()?),
            columns,
            classifications,
            method: method?,
            exempt,
            dryrun: dryrun?,
        },
        name_node,
    ))
}

/// `redact`, or `{method: partial, keep: 4}`.
fn compile_method(cx: &mut Cx, node: &Node, path: &str) -> Option<crate::mask::method::Method> {
    use crate::mask::method::Method;
    let (name, keep, at) = match &node.value {
        Value::Map(_) => {
            let f = cx.mapping(node, path, &["method", "keep"])?;
            let m = f.required(cx, "method", " (redact, partial, token, format_preserving or null)")?;
            let name = cx.string(m, &f.path("method"))?;
            let keep = match f.get("keep") {
                Some(k) => match k.scalar_text().and_then(|t| t.parse::<u8>().ok()) {
                    Some(n) if (1..=32).contains(&n) => Some((n, k)),
                    _ => {
                        cx.error(k.pos, format!("{path}.keep: expected a number of characters from 1 to 32"));
                        return None;
                    }
                },
                None => None,
            };
            (name, keep, m)
        }
        _ => (cx.string(node, path)?, None, node),
    };
    let method = match name {
        "redact" => Method::Redact,
        "partial" => Method::Partial { keep_last: keep.map_or(4, |(n, _)| n) },
        "token" => Method::Token,
        "format_preserving" => Method::FormatPreserving,
        "null" => Method::Null,
        other => {
            cx.error(
                at.pos,
                format!("{path}: unknown method `{other}`; expected redact, partial, token, format_preserving or null"),
            );
            return None;
        }
    };
    if let (Some((_, k)), false) = (keep, matches!(method, Method::Partial { .. })) {
        cx.error(k.pos, format!("{path}.keep: only the partial method keeps characters"));
        return None;
    }
    Some(method)
}

fn compile_selector(cx: &mut Cx, node: &Node) -> Option<LabelSelector> {
    compile_selector_at(cx, node, "spec.selector")
}

fn compile_selector_at(cx: &mut Cx, node: &Node, path: &str) -> Option<LabelSelector> {
    let fields = cx.mapping(node, path, &["matchLabels", "matchExpressions"])?;
    let before = cx.errors.len();
    let mut selector = LabelSelector::default();
    if let Some(node) = fields.get("matchLabels")
        && let Some(pairs) = cx.string_map(node, &format!("{path}.matchLabels"))
    {
        for (key, k, v) in pairs {
            match selector::check_label_key(k).and_then(|()| selector::check_label_value(v)) {
                Ok(()) => {
                    selector.match_labels.insert(k.to_string(), v.to_string());
                }
                Err(e) => cx.error(key.pos, format!("{path}.matchLabels: {e}")),
            }
        }
    }
    if let Some(node) = fields.get("matchExpressions") {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{path}.matchExpressions[{i}]");
                    if let Some(r) = compile_requirement(cx, item, &path) {
                        selector.expressions.push(r);
                    }
                }
            }
            _ => cx.type_error(node, &format!("{path}.matchExpressions"), "a list of {key, operator, values}"),
        }
    }
    (cx.errors.len() == before).then_some(selector)
}

fn compile_requirement(cx: &mut Cx, node: &Node, path: &str) -> Option<Requirement> {
    let fields = cx.mapping(node, path, &["key", "operator", "values"])?;
    let key = fields.required(cx, "key", "").and_then(|n| {
        let k = cx.string(n, &fields.path("key"))?;
        match selector::check_label_key(k) {
            Ok(()) => Some(k.to_string()),
            Err(e) => {
                cx.error(n.pos, format!("{path}.key: {e}"));
                None
            }
        }
    });
    let operator_node = fields.required(cx, "operator", " (In, NotIn, Exists or DoesNotExist)")?;
    let operator = cx.string(operator_node, &fields.path("operator"))?;
    let values = match fields.get("values") {
        Some(node) => {
            let items = cx.strings(node, &fields.path("values"), None)?;
            let mut values = Vec::new();
            for (i, (item, v)) in items.into_iter().enumerate() {
                match selector::check_label_value(v) {
                    Ok(()) => values.push(v.to_string()),
                    Err(e) => cx.error(item.pos, format!("{path}.values[{i}]: {e}")),
                }
            }
            Some((node, values))
        }
        None => None,
    };
    let needs_values = match operator {
        "In" | "NotIn" => true,
        "Exists" | "DoesNotExist" => false,
        other => {
            let mut message =
                format!("{path}.operator: unknown operator `{other}`; expected In, NotIn, Exists or DoesNotExist");
            if let Some(close) =
                ["In", "NotIn", "Exists", "DoesNotExist"].iter().find(|o| o.eq_ignore_ascii_case(other))
            {
                message.push_str(&format!(" (operators are case-sensitive: `{close}`)"));
            }
            cx.error(operator_node.pos, message);
            return None;
        }
    };
    match (&values, needs_values) {
        (None, true) => {
            cx.error(node.pos, format!("{path}: operator {operator} needs a non-empty `values` list"));
            return None;
        }
        (Some((vnode, v)), true) if v.is_empty() => {
            cx.error(vnode.pos, format!("{path}.values: operator {operator} needs at least one value"));
            return None;
        }
        (Some((vnode, v)), false) if !v.is_empty() => {
            cx.error(vnode.pos, format!("{path}.values: operator {operator} takes no values; remove `values`"));
            return None;
        }
        _ => {}
    }
    let key = key?;
    let values = values.map(|(_, v)| v).unwrap_or_default();
    Some(match operator {
        "In" => Requirement::In(key, values),
        "NotIn" => Requirement::NotIn(key, values),
        "Exists" => Requirement::Exists(key),
        _ => Requirement::DoesNotExist(key),
    })
}

/// A rule, and its name node (for mistakes found across rules).
/// A rule's `mode` (that of its policy when absent); a rule of a dry-run policy cannot be
/// enforced.
fn rule_mode(cx: &mut Cx, fields: &Fields<'_>, path: &str, policy_dryrun: bool) -> Option<bool> {
    let Some(node) = fields.get("mode") else { return Some(policy_dryrun) };
    let dryrun = cx.dryrun(node, &fields.path("mode"))?;
    if policy_dryrun && !dryrun {
        cx.error(
            node.pos,
            format!("{path}.mode: the policy is in dryrun mode (spec.mode), so every rule of it is; enforce it there"),
        );
        return None;
    }
    Some(dryrun || policy_dryrun)
}

fn compile_rule<'n>(cx: &mut Cx, node: &'n Node, path: &str, policy_dryrun: bool) -> Option<(Rule, &'n Node)> {
    let before = cx.errors.len();
    let fields = cx.mapping(node, path, &["name", "match", "action", "approval", "mode"])?;
    let dryrun = rule_mode(cx, &fields, path, policy_dryrun);
    let name_node = fields.required(cx, "name", "");
    let name = name_node.and_then(|n| {
        let text = cx.string(n, &fields.path("name"))?;
        match check_rule_name(text) {
            Ok(()) => Some(text),
            Err(e) => {
                cx.error(n.pos, format!("{path}.name: {e}"));
                None
            }
        }
    });
    let action = fields
        .required(cx, "action", " (allow, deny or require_approval)")
        .and_then(|n| cx.action(n, &fields.path("action")));
    let matcher = fields
        .required(cx, "match", " (write `match: {}` to match every statement)")
        .and_then(|n| compile_match(cx, n, &fields.path("match"), action));
    let mut approval = None;
    if let Some(node) = fields.get("approval") {
        if action.is_some_and(|a| a != Action::RequireApproval) {
            cx.error(
                fields.key("approval").map_or(node.pos, |k| k.pos),
                format!("{path}.approval: only a require_approval rule is held for approval"),
            );
        } else {
            approval = cx.approval(node, &fields.path("approval"), false).map(|(terms, _)| terms);
        }
    }
    if cx.errors.len() != before {
        return None;
    }
    let (name, action, matcher, name_node, dryrun) = (name?, action?, matcher?, name_node?, dryrun?);
    Some((
        Rule { name: Arc::from(name), action, matcher, line: name_node.pos.line, approval, terms: None, dryrun },
        name_node,
    ))
}

fn compile_match(cx: &mut Cx, node: &Node, path: &str, action: Option<Action>) -> Option<Match> {
    let before = cx.errors.len();
    let fields = cx.mapping(node, path, &["class", "relations", "functions", "unscoped", "tags"])?;
    let mut m = Match::default();
    if let Some(node) = fields.get("class")
        && let Some(items) = cx.strings(
            node,
            &fields.path("class"),
            Some("an empty list matches no statement; remove `class` to match every class"),
        )
    {
        let mut set = ClassSet::EMPTY;
        for (i, (item, text)) in items.into_iter().enumerate() {
            match Class::from_name(text) {
                Some(c) => set.insert(c),
                None => {
                    let names: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
                    cx.error(
                        item.pos,
                        format!("{path}.class[{i}]: unknown class `{text}`; expected one of {}", names.join(", ")),
                    );
                }
            }
        }
        m.class = Some(set);
    }
    for field in ["relations", "functions"] {
        if let Some(node) = fields.get(field)
            && let Some(items) = cx.strings(
                node,
                &fields.path(field),
                Some(&format!("an empty list matches no statement; remove `{field}` to match any")),
            )
        {
            let mut patterns = Vec::new();
            for (i, (item, text)) in items.into_iter().enumerate() {
                match ObjectPattern::parse(text) {
                    Ok(p) => patterns.push(p),
                    Err(e) => cx.error(item.pos, format!("{path}.{field}[{i}]: {e}")),
                }
            }
            if field == "relations" {
                m.relations = Some(patterns);
            } else {
                m.functions = Some(patterns);
            }
        }
    }
    if let Some(node) = fields.get("unscoped")
        && let Some(b) = cx.boolean(node, &fields.path("unscoped"))
    {
        m.unscoped = Some(b);
        if b && let Some(class) = m.class
            && !class.contains(Class::Write)
        {
            cx.error(
                node.pos,
                format!(
                    "{path}.unscoped: only writes are unscoped, and `class` does not include write, so this rule \
                     can never match; add write to `class` or remove `unscoped`"
                ),
            );
        }
    }
    if let Some(node) = fields.get("tags") {
        let key = fields.key("tags").unwrap_or(node);
        if action == Some(Action::Allow) {
            cx.error(
                key.pos,
                format!(
                    "{path}.tags: tags are declared by the client (sqlcommenter), so they can only narrow what is \
                     allowed: use them on deny or require_approval rules, not on allow"
                ),
            );
        }
        if let Some(pairs) = cx.string_map(node, &fields.path("tags")) {
            if pairs.is_empty() {
                cx.error(node.pos, format!("{path}.tags: an empty mapping names no tag; remove `tags`"));
            }
            for (k, key, _) in &pairs {
                if key.is_empty() {
                    cx.error(k.pos, format!("{path}.tags: empty tag name"));
                }
            }
            m.tags = Some(pairs.into_iter().map(|(_, k, v)| (k.to_string(), v.to_string())).collect());
        }
    }
    (cx.errors.len() == before).then_some(m)
}

/// Reports `rule` if an earlier rule of the same policy matches every statement it would (the
/// first matching rule decides, so it could never decide). An enforced rule is passed over only
/// by enforced rules (dry-run rules before it never decide what is enforced); a dry-run rule by
/// any (the would-be verdict evaluates them all).
fn check_reachable(cx: &mut Cx, earlier: &[Rule], rule: &Rule, pos: Pos, path: &str) {
    if let Some(e) = earlier.iter().filter(|e| rule.dryrun || !e.dryrun).find(|e| covers(e, rule)) {
        let why = if e.matcher.is_catch_all() {
            format!("rule `{}` (line {}) before it matches every statement", e.name, e.line)
        } else {
            format!("rule `{}` (line {}) before it matches every statement this one would", e.name, e.line)
        };
        cx.error(pos, format!("{path}: rule `{}` can never match: {why}; reorder or remove it", rule.name));
    }
}

/// Whether every statement `later` matches is matched by `first` (conservatively: `false`
/// when unsure). Deny-type rules match if ANY effect/candidate matches, allow rules only if ALL
/// do (and at least one relation/function is named), so ALL-matching implies ANY-matching but
/// not the converse.
fn covers(first: &Rule, later: &Rule) -> bool {
    let (f, l) = (&first.matcher, &later.matcher);
    // `first` needs ANY, or both need ALL: a `later` match then implies a `first` match per field.
    let direction_ok = first.action != Action::Allow || later.action == Action::Allow;
    let class = match (f.class, l.class) {
        (None, _) => true,
        (Some(fc), Some(lc)) => direction_ok && lc.is_subset(fc),
        (Some(_), None) => false,
    };
    let objects = |fp: &Option<Vec<ObjectPattern>>, lp: &Option<Vec<ObjectPattern>>| match (fp, lp) {
        (None, _) => true,
        (Some(fp), Some(lp)) => direction_ok && lp.iter().all(|p| fp.iter().any(|q| p.covered_by(q))),
        (Some(_), None) => false,
    };
    let unscoped = f.unscoped.is_none() || f.unscoped == l.unscoped;
    let tags = match (&f.tags, &l.tags) {
        (None, _) => true,
        (Some(ft), Some(lt)) => ft.iter().all(|(k, v)| lt.get(k) == Some(v)),
        (Some(_), None) => false,
    };
    class && objects(&f.relations, &l.relations) && objects(&f.functions, &l.functions) && unscoped && tags
}
