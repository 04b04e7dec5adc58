//! Tests of the policy engine as a whole: the loader's mistakes (each with its exact line and
//! column), selection, ANY/ALL matching with ambiguous names, precedence within and across
//! policies, tags that only narrow, connection-level decisions, and the shipped packs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::*;
use std::time::Duration;

const HEAD: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n";

fn compile(files: &[(&str, &str)]) -> Result<PolicySet, PolicyErrors> {
    let sources: Vec<(PathBuf, String)> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    PolicySet::from_sources(&sources)
}

/// The policy `p` with this spec body (lines 5 onwards).
fn policy(spec: &str) -> PolicySet {
    let text = format!("{HEAD}{spec}");
    compile(&[("p.yaml", &text)]).unwrap_or_else(|e| panic!("should compile:\n{e}\n---\n{text}"))
}

/// Every mistake, one line each.
fn mistakes(files: &[(&str, &str)]) -> Vec<String> {
    match compile(files) {
        Ok(set) => panic!("should not compile; got {} policies", set.len()),
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn spec_mistakes(spec: &str) -> Vec<String> {
    mistakes(&[("p.yaml", &format!("{HEAD}{spec}"))])
}

fn assert_mistake(found: &[String], expected: &str) {
    assert!(
        found.iter().any(|m| m.starts_with(expected)),
        "expected a mistake starting {expected:?}; got:\n{}",
        found.join("\n")
    );
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Facts of a statement, built up in tests.
struct F {
    class: Class,
    effects: ClassSet,
    relations: Vec<Vec<ObjectName>>,
    functions: Vec<Vec<ObjectName>>,
    unscoped: bool,
    tags: BTreeMap<String, String>,
    reason: Option<String>,
}

fn facts(class: Class) -> F {
    F {
        class,
        effects: ClassSet::of(&[class]),
        relations: Vec::new(),
        functions: Vec::new(),
        unscoped: false,
        tags: BTreeMap::new(),
        reason: None,
    }
}

fn name(text: &str) -> ObjectName {
    match text.split_once('.') {
        Some((s, n)) => ObjectName::new(Some(s), n),
        None => ObjectName::new(None, text),
    }
}

impl F {
    fn effects(mut self, classes: &[Class]) -> F {
        self.effects = ClassSet::of(classes);
        self
    }
    /// One relation with these candidates.
    fn relation(mut self, candidates: &[&str]) -> F {
        self.relations.push(candidates.iter().map(|c| name(c)).collect());
        self
    }
    fn function(mut self, candidates: &[&str]) -> F {
        self.functions.push(candidates.iter().map(|c| name(c)).collect());
        self
    }
    fn unscoped(mut self) -> F {
        self.unscoped = true;
        self
    }
    fn tag(mut self, k: &str, v: &str) -> F {
        self.tags.insert(k.into(), v.into());
        self
    }
    fn reason(mut self, r: &str) -> F {
        self.reason = Some(r.into());
        self
    }
    fn view(&self) -> StatementFacts<'_> {
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

fn everyone() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The decision of `set` for an unlabelled identity on database `db` as role `app`.
fn decide(set: &PolicySet, f: &F) -> Decision {
    let l = everyone();
    set.select(&Subject { labels: &l, database: "db", user: Some("app") }).decide(set, &f.view())
}

// ---- loading: every mistake, where it was written -------------------------------------------

#[test]
fn unknown_fields_are_reported_at_their_key_with_a_suggestion() {
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n    - name: a\n      match: {clas: [ddl]}\n      action: deny\n  defualt: deny\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:8:15: spec.rules[0].match: unknown field `clas`; expected one of class, relations, functions, \
             unscoped, tags (did you mean `class`?)",
            "p.yaml:10:3: spec: unknown field `defualt`; expected one of selector, databases, users, rules, default, \
             approval, masking, mode (did you mean `default`?)",
        ]
    );
}

#[test]
fn every_mistake_of_every_file_in_one_pass() {
    let a = format!("{HEAD}  selector: {{}}\n  default: maybe\n---\n{}", HEAD.replace("name: p", "name: q"));
    let b = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: r}\nspec: {selector: [\n";
    let found = mistakes(&[("a.yaml", &a), ("b.yaml", b)]);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_mistake(
        &found,
        "a.yaml:6:12: spec.default: unknown action `maybe`; expected allow, deny or require_approval",
    );
    // The second document of a.yaml (from line 8) has an empty spec.
    assert_mistake(
        &found,
        "a.yaml:11:1: spec: expected a mapping with selector, databases, users, rules, default, approval, masking, mode, found nothing (null)",
    );
    assert_mistake(&found, "b.yaml:5:1: YAML syntax:");
}

#[test]
fn wrong_types_say_what_was_expected() {
    let found = spec_mistakes(
        "  selector:\n    matchExpressions:\n      - {key: tier, operator: In, values: [1]}\n  databases: orders\n  \
         rules:\n    - {name: a, match: {unscoped: \"yes\", class: [write]}, action: deny}\n    - name: b\n      \
         match: []\n      action: deny\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:7:44: spec.selector.matchExpressions[0].values[0]: expected a string, found an integer (quote it: \"1\")",
            "p.yaml:8:14: spec.databases: expected a list of strings, found a string (quote it: \"orders\")",
            "p.yaml:10:35: spec.rules[0].match.unscoped: expected true or false, found a string",
            "p.yaml:12:14: spec.rules[1].match: expected a mapping with class, relations, functions, unscoped, tags, \
             found a list",
        ]
    );
}

#[test]
fn foreign_api_versions_and_kinds_are_refused_alone() {
    let found = mistakes(&[("p.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")]);
    assert_eq!(
        found,
        vec![
            "p.yaml:1:13: apiVersion: unsupported `v1`; expected warden.dev/v1alpha1",
            "p.yaml:2:7: kind: unsupported `ConfigMap`; expected DatabasePolicy",
            "p.yaml:4:1: unknown field `data`; expected one of apiVersion, kind, metadata, spec",
        ]
    );
    let found = mistakes(&[("p.yaml", "kind: DatabasePolicy\nmetadata: {name: x}\nspec: {selector: {}}\n")]);
    assert_eq!(found, vec!["p.yaml:1:1: missing field `apiVersion` (expected `apiVersion: warden.dev/v1alpha1`)"]);
    let found = mistakes(&[("p.yaml", "- a\n- b\n")]);
    assert_eq!(
        found,
        vec!["p.yaml:1:1: the document: expected a mapping with apiVersion, kind, metadata, spec, found a list"]
    );
}

#[test]
fn policy_names_are_unique_across_files_and_valid() {
    let text = format!("{HEAD}  selector: {{}}\n");
    let found = mistakes(&[("a.yaml", &text), ("b.yaml", &text)]);
    assert_eq!(found, vec!["b.yaml:3:18: metadata.name: a policy named `p` is already defined at a.yaml:3:18"]);
    let found = mistakes(&[("a.yaml", &text.replace("name: p", "name: Bad_Name"))]);
    assert_eq!(found.len(), 1);
    assert_mistake(
        &found,
        "a.yaml:3:18: metadata.name: `Bad_Name` is not a valid name; expected at most 253 lower case",
    );
    // Even a policy with other mistakes claims its name.
    let broken = format!("{HEAD}  selector: 3\n");
    let found = mistakes(&[("a.yaml", &broken), ("b.yaml", &text)]);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_mistake(&found, "b.yaml:3:18: metadata.name: a policy named `p` is already defined at a.yaml:3:18");
}

#[test]
fn rule_names_are_unique_within_a_policy() {
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n    - {name: a, match: {class: [ddl]}, action: deny}\n    \
         - {name: a, match: {class: [dcl]}, action: deny}\n    - {name: -b, match: {class: [dcl]}, action: deny}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:8:14: spec.rules[1].name: rule `a` is already defined at line 7",
            "p.yaml:9:14: spec.rules[2].name: rule name `-b`: expected at most 63 alphanumerics, `-`, `_` or `.`, \
             beginning and ending with an alphanumeric",
        ]
    );
}

#[test]
fn missing_fields_are_reported_at_their_mapping() {
    let found =
        spec_mistakes("  selector: {}\n  rules:\n    - name: a\n      action: deny\n    - {name: b, match: {}}\n");
    assert_eq!(
        found,
        vec![
            "p.yaml:7:7: spec.rules[0]: missing field `match` (write `match: {}` to match every statement)",
            "p.yaml:9:7: spec.rules[1]: missing field `action` (allow, deny or require_approval)",
        ]
    );
}

#[test]
fn rules_that_can_never_match_are_mistakes() {
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n\
         \x20   - {name: a, match: {class: [read], unscoped: true}, action: deny}\n\
         \x20   - {name: b, match: {class: []}, action: deny}\n\
         \x20   - {name: c, match: {relations: []}, action: deny}\n\
         \x20   - {name: d, match: {functions: []}, action: deny}\n\
         \x20   - {name: e, match: {relations: [orders]}, action: deny}\n\
         \x20   - {name: f, match: {functions: [\"a.b.c\"]}, action: deny}\n\
         \x20   - {name: g, match: {tags: {purpose: x}}, action: allow}\n\
         \x20   - {name: h, match: {tags: {}}, action: deny}\n\
         \x20   - {name: i, match: {class: [reads]}, action: deny}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:7:50: spec.rules[0].match.unscoped: only writes are unscoped, and `class` does not include write, \
             so this rule can never match; add write to `class` or remove `unscoped`",
            "p.yaml:8:32: spec.rules[1].match.class: an empty list matches no statement; remove `class` to match every \
             class",
            "p.yaml:9:36: spec.rules[2].match.relations: an empty list matches no statement; remove `relations` to \
             match any",
            "p.yaml:10:36: spec.rules[3].match.functions: an empty list matches no statement; remove `functions` to \
             match any",
            "p.yaml:11:37: spec.rules[4].match.relations[0]: pattern `orders` has no schema; write it as \
             `schema.name`, e.g. `public.orders` or `*.orders`",
            "p.yaml:12:37: spec.rules[5].match.functions[0]: pattern `a.b.c` has 3 dot-separated parts; expected \
             `schema.name` (quote a part that contains a dot: `\"my.schema\".t`)",
            "p.yaml:13:25: spec.rules[6].match.tags: tags are declared by the client (sqlcommenter), so they can only \
             narrow what is allowed: use them on deny or require_approval rules, not on allow",
            "p.yaml:14:31: spec.rules[7].match.tags: an empty mapping names no tag; remove `tags`",
            "p.yaml:15:33: spec.rules[8].match.class[0]: unknown class `reads`; expected one of read, write, ddl, dcl, \
             admin, session, transaction, utility, unknown",
        ]
    );
}

#[test]
fn rules_after_a_rule_that_takes_all_their_statements_are_unreachable() {
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n\
         \x20   - {name: all, match: {}, action: allow}\n\
         \x20   - {name: late, match: {class: [ddl]}, action: deny}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:8:14: spec.rules[1]: rule `late` can never match: rule `all` (line 7) before it matches every \
             statement; reorder or remove it"
        ]
    );
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n\
         \x20   - {name: writes, match: {class: [write, ddl]}, action: deny}\n\
         \x20   - {name: unscoped, match: {class: [write], unscoped: true}, action: require_approval}\n\
         \x20   - {name: same, match: {relations: [\"billing.*\"]}, action: deny}\n\
         \x20   - {name: again, match: {relations: [\"BILLING.*\"], class: [read]}, action: allow}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:8:14: spec.rules[1]: rule `unscoped` can never match: rule `writes` (line 7) before it matches \
             every statement this one would; reorder or remove it",
            "p.yaml:10:14: spec.rules[3]: rule `again` can never match: rule `same` (line 9) before it matches every \
             statement this one would; reorder or remove it",
        ]
    );
    // An allow rule (ALL) does not take everything a later deny rule (ANY) would: both stay.
    policy(
        "  selector: {}\n  rules:\n\
         \x20   - {name: reads, match: {class: [read]}, action: allow}\n\
         \x20   - {name: also-reads, match: {class: [read]}, action: deny}\n\
         \x20   - {name: tagged, match: {class: [write], tags: {a: b}}, action: deny}\n\
         \x20   - {name: untagged, match: {class: [write]}, action: deny}\n",
    );
}

#[test]
fn selector_mistakes_follow_kubernetes() {
    let found = spec_mistakes(
        "  selector:\n    matchLabels: {Bad_Prefix/x: y, team: \"no spaces\"}\n    matchExpressions:\n\
         \x20     - {key: a, operator: In}\n\
         \x20     - {key: b, operator: NotIn, values: []}\n\
         \x20     - {key: c, operator: Exists, values: [x]}\n\
         \x20     - {key: d, operator: in, values: [x]}\n\
         \x20     - {key: e, operator: DoesNotExist, bogus: 1}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:6:19: spec.selector.matchLabels: label key `Bad_Prefix/x`: the prefix before `/` must be a DNS \
             subdomain (at most 253 lower case alphanumerics, `-` and `.`, beginning and ending with an alphanumeric)",
            "p.yaml:6:36: spec.selector.matchLabels: label value `no spaces`: expected at most 63 alphanumerics, `-`, \
             `_` or `.`, beginning and ending with an alphanumeric (or empty)",
            "p.yaml:8:9: spec.selector.matchExpressions[0]: operator In needs a non-empty `values` list",
            "p.yaml:9:43: spec.selector.matchExpressions[1].values: operator NotIn needs at least one value",
            "p.yaml:10:44: spec.selector.matchExpressions[2].values: operator Exists takes no values; remove `values`",
            "p.yaml:11:28: spec.selector.matchExpressions[3].operator: unknown operator `in`; expected In, NotIn, \
             Exists or DoesNotExist (operators are case-sensitive: `In`)",
            "p.yaml:12:42: spec.selector.matchExpressions[4]: unknown field `bogus`; expected one of key, operator, \
             values",
        ]
    );
    // Exists with an empty list is what Kubernetes accepts too.
    policy("  selector:\n    matchExpressions: [{key: a, operator: Exists, values: []}]\n");
}

#[test]
fn columns_belong_to_masking_rules_and_an_action_rule_says_so() {
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n    - {name: pii, match: {columns: [crm.customers.email]}, action: mask}\n",
    );
    assert_eq!(
        found,
        vec![
            "p.yaml:7:27: spec.rules[0].match: `columns`: columns are matched by masking rules (a rule with `mask:` \
             instead of `action:`)",
            "p.yaml:7:68: spec.rules[0].action: unknown action `mask`; expected allow, deny or require_approval \
             (a masking rule has `mask: {method: ...}` instead of `action`)",
        ]
    );
}

#[test]
fn masking_rules_and_their_mistakes() {
    // A valid policy: classifications, methods in both forms, an exemption.
    policy(
        "  selector: {}\n  masking:\n    classifications: {pii.email: [\"*.*.email\"]}\n    inference: allow\n    \
         untraced: detect\n    detectors: [pii.email, payment.card]\n    patterns: [{name: emp, regex: \"E-[0-9]{6}\"}]\n  \
         rules:\n    - {name: e, match: {classifications: [pii.email]}, mask: {method: partial, keep: 4}, exempt: \
         {matchLabels: {team: dpo}}}\n    - {name: c, match: {columns: [crm.customers.card]}, mask: token}\n",
    );
    let found = spec_mistakes(
        "  selector: {}\n  masking:\n    inference: sometimes\n    detectors: [emails]\n  rules:\n    - {name: a, \
         match: {columns: [customers.email]}, mask: scramble}\n    - {name: b, match: {classifications: [pii.ssn]}, \
         mask: {method: redact, keep: 2}}\n    - {name: c, match: {}, mask: null, action: deny}\n",
    );
    let joined = found.join("\n");
    for expected in [
        "spec.masking.inference: `sometimes`; expected refuse (the default) or allow",
        "spec.masking.detectors[0]: unknown detector `emails`",
        "column pattern `customers.email` has 2 dot-separated parts",
        "spec.rules[0].mask: unknown method `scramble`",
        "spec.rules[1].match.classifications[0]: `pii.ssn` is not defined",
        "spec.rules[1].mask.keep: only the partial method keeps characters",
        "spec.rules[2]: a rule either masks (`mask`) or acts (`action`), not both",
        "spec.rules[2].match: a masking rule names `columns` or `classifications`",
    ] {
        assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
    }
}

#[test]
fn duplicate_keys_and_yaml_mistakes_have_positions() {
    let found = spec_mistakes("  selector: {}\n  default: deny\n  default: allow\n");
    assert_eq!(
        found,
        vec!["p.yaml:7:3: duplicate key `default` (first at line 6); a key may appear once in a mapping"]
    );
}

#[test]
fn empty_documents_are_skipped_and_files_hold_several() {
    let two = format!(
        "---\n# nothing\n---\n{HEAD}  selector: {{}}\n---\n{}  selector: {{}}\n---\n",
        HEAD.replace("name: p", "name: a")
    );
    let set = compile(&[("two.yaml", &two)]).expect("valid");
    assert_eq!(set.names().collect::<Vec<_>>(), vec!["a", "p"], "sorted by name");
    assert_eq!(set.location("p").map(|(f, l)| (f.to_path_buf(), l)), Some((PathBuf::from("two.yaml"), 6)));
    assert!(compile(&[("empty.yaml", "")]).expect("valid").is_empty());
}

#[test]
fn directories_are_read_sorted_and_unreadable_paths_reported() {
    let tmp = crate::test_dir("warden-policy-test-");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("b.yml"), format!("{HEAD}  selector: {{}}\n")).expect("write");
    std::fs::write(dir.join("a.yaml"), format!("{}  selector: {{}}\n", HEAD.replace("name: p", "name: a")))
        .expect("write");
    std::fs::write(dir.join("notes.txt"), "not a policy").expect("write");
    std::fs::write(dir.join(".swap.yaml"), "{{{{").expect("write");
    let set = PolicySet::load(&[dir.clone(), dir.join("a.yaml")]).expect("valid");
    assert_eq!(set.len(), 2, "a.yaml is read once though named twice");
    let missing = dir.join("missing.yaml");
    let err = PolicySet::load(&[dir.clone(), missing.clone()]).expect_err("missing");
    assert_eq!(err.len(), 1);
    assert!(err.to_string().starts_with(&format!("{}: cannot read the file:", missing.display())), "{err}");
    tmp.close().expect("cleanup");
}

// ---- selection -------------------------------------------------------------------------------

#[test]
fn selection_by_labels_databases_and_roles() {
    let set = compile(&[(
        "p.yaml",
        &format!(
            "{HEAD}  selector: {{matchLabels: {{warden/kind: agent}}}}\n  databases: [orders]\n  users: [app, \"etl_*\"]\n  \
             default: deny\n---\n{}  selector: {{}}\n",
            HEAD.replace("name: p", "name: open")
        ),
    )])
    .expect("valid");
    let agent = labels(&[("warden/kind", "agent")]);
    let select = |labels: &BTreeMap<String, String>, database: &str, user: Option<&str>| {
        set.select(&Subject { labels, database, user }).names(&set).into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(select(&agent, "orders", Some("app")), vec!["open", "p"]);
    assert_eq!(select(&agent, "orders", Some("etl_nightly")), vec!["open", "p"]);
    assert_eq!(select(&agent, "orders", Some("etl")), vec!["open"], "the glob needs its underscore");
    assert_eq!(select(&agent, "billing", Some("app")), vec!["open"], "another database");
    assert_eq!(select(&everyone(), "orders", Some("app")), vec!["open"], "labels do not match");
    assert_eq!(select(&agent, "orders", None), vec!["open", "p"], "an unknown role passes every users filter");
    let s = set.select(&Subject { labels: &agent, database: "orders", user: Some("app") });
    assert!(s.guards());
    assert!(!set.select(&Subject { labels: &everyone(), database: "orders", user: Some("app") }).guards());
}

#[test]
fn empty_lists_of_databases_and_users_select_all() {
    let set = policy("  selector: {}\n  databases: []\n  users: []\n");
    let s = set.select(&Subject { labels: &everyone(), database: "any", user: Some("anyone") });
    assert_eq!(s.names(&set), vec!["p"]);
}

#[test]
fn a_selection_is_only_valid_with_its_own_set() {
    let a = policy("  selector: {}\n");
    let b = policy("  selector: {}\n");
    let s = a.select(&Subject { labels: &everyone(), database: "db", user: Some("app") });
    let d = s.decide(&b, &facts(Class::Read).view());
    assert_eq!(d.action, Action::Deny, "fail closed: {d:?}");
    assert_eq!(s.decide_connection(&b).action, Action::Deny);
}

// ---- matching --------------------------------------------------------------------------------

#[test]
fn first_matching_rule_decides_else_the_default() {
    let set = policy(
        "  selector: {}\n  rules:\n\
         \x20   - {name: reads, match: {class: [read]}, action: allow}\n\
         \x20   - {name: writes, match: {class: [write]}, action: require_approval}\n\
         \x20 default: deny\n",
    );
    let d = decide(&set, &facts(Class::Read));
    assert_eq!((d.action, d.rule.as_deref(), d.policy.as_deref()), (Action::Allow, Some("reads"), Some("p")));
    assert_eq!(d.reason, "class read is in [read]");
    assert_eq!(decide(&set, &facts(Class::Write)).action, Action::RequireApproval);
    let d = decide(&set, &facts(Class::Ddl));
    assert_eq!((d.action, d.rule.as_deref()), (Action::Deny, None));
    assert_eq!(d.reason, "no rule matched; the policy's default is deny");
    assert_eq!(d.to_string(), "deny by policy p (its default): no rule matched; the policy's default is deny");
}

#[test]
fn class_conditions_any_for_deny_all_for_allow() {
    let set = policy(
        "  selector: {}\n  rules:\n\
         \x20   - {name: no-writes, match: {class: [write]}, action: deny}\n\
         \x20   - {name: reads, match: {class: [read, session]}, action: allow}\n\
         \x20 default: require_approval\n",
    );
    // A SELECT with a data-modifying CTE: primary write, effects read and write.
    let cte = facts(Class::Write).effects(&[Class::Read, Class::Write]);
    let d = decide(&set, &cte);
    assert_eq!((d.action, d.rule.as_deref()), (Action::Deny, Some("no-writes")));
    // A secondary effect is enough for a deny rule.
    let hidden = facts(Class::Read).effects(&[Class::Read, Class::Write]);
    let d = decide(&set, &hidden);
    assert_eq!((d.action, d.reason.as_str()), (Action::Deny, "effect write is in [write]"));
    // An allow rule needs every effect listed (the primary class counts even if absent).
    let mixed = facts(Class::Read).effects(&[Class::Session, Class::Utility]);
    assert_eq!(decide(&set, &mixed).action, Action::RequireApproval);
    let ok = facts(Class::Read).effects(&[Class::Session]);
    let d = decide(&set, &ok);
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Allow, "every class of the statement [read, session] is in [read, session]")
    );
}

#[test]
fn ambiguous_names_match_deny_rules_if_any_candidate_does() {
    let set =
        policy("  selector: {}\n  rules:\n    - {name: billing, match: {relations: [\"billing.*\"]}, action: deny}\n");
    let ambiguous = facts(Class::Read).relation(&["public.invoices", "billing.invoices"]);
    let d = decide(&set, &ambiguous);
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.reason, "relation invoices matches billing.* (billing.invoices is one of 2 places it may resolve to)");
    assert_eq!(decide(&set, &facts(Class::Read).relation(&["public.invoices"])).action, Action::Allow);
    // Unresolved (no schema): could be billing's.
    let d = decide(&set, &facts(Class::Read).relation(&["invoices"]));
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Deny, "relation invoices (schema unknown) may be one that matches billing.*")
    );
    // No candidate at all: could be anything.
    let mut unknown = facts(Class::Read);
    unknown.relations.push(Vec::new());
    let d = decide(&set, &unknown);
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Deny, "a relation could not be resolved, so it may match [billing.*]")
    );
    // Any of several names.
    let two = facts(Class::Read).relation(&["public.a"]).relation(&["billing.b"]);
    assert_eq!(decide(&set, &two).action, Action::Deny);
}

#[test]
fn allow_rules_match_only_if_every_candidate_of_every_name_does() {
    let set = policy(
        "  selector: {}\n  rules:\n    - {name: public, match: {relations: [\"public.*\"]}, action: allow}\n  \
         default: deny\n",
    );
    assert_eq!(decide(&set, &facts(Class::Read).relation(&["public.a"])).action, Action::Allow);
    assert_eq!(
        decide(&set, &facts(Class::Read).relation(&["public.a", "billing.a"])).action,
        Action::Deny,
        "ambiguity never widens"
    );
    assert_eq!(decide(&set, &facts(Class::Read).relation(&["public.a"]).relation(&["billing.b"])).action, Action::Deny);
    assert_eq!(decide(&set, &facts(Class::Read).relation(&["a"])).action, Action::Deny, "unresolved");
    let mut unknown = facts(Class::Read);
    unknown.relations.push(Vec::new());
    assert_eq!(decide(&set, &unknown).action, Action::Deny, "no candidate");
    assert_eq!(decide(&set, &facts(Class::Read)).action, Action::Deny, "a rule on relations needs one");
    let d = decide(&set, &facts(Class::Read).relation(&["public.a"]).relation(&["public.b"]));
    assert_eq!(d.reason, "every relation (public.a, public.b) matches [public.*]");

    // `*.name` is sure of an unresolved name.
    let any_schema = policy(
        "  selector: {}\n  rules:\n    - {name: t, match: {relations: [\"*.t\"]}, action: allow}\n  default: deny\n",
    );
    assert_eq!(decide(&any_schema, &facts(Class::Read).relation(&["t"])).action, Action::Allow);

    // Functions: a statement that calls none is not "only calling allowed functions".
    let fns = policy(
        "  selector: {}\n  rules:\n    - {name: now, match: {functions: [pg_catalog.now]}, action: allow}\n  \
         default: deny\n",
    );
    assert_eq!(decide(&fns, &facts(Class::Read)).action, Action::Deny);
    assert_eq!(decide(&fns, &facts(Class::Read).function(&["pg_catalog.now"])).action, Action::Allow);
    assert_eq!(decide(&fns, &facts(Class::Read).function(&["pg_catalog.now", "public.now"])).action, Action::Deny);
}

#[test]
fn functions_unscoped_and_reasons() {
    let set = policy(
        "  selector: {}\n  rules:\n\
         \x20   - {name: files, match: {functions: [\"pg_catalog.pg_read_*\", \"*.dblink*\"]}, action: deny}\n\
         \x20   - {name: unscoped, match: {class: [write, ddl], unscoped: true}, action: require_approval}\n\
         \x20   - {name: unknown, match: {class: [unknown]}, action: deny}\n",
    );
    let d = decide(&set, &facts(Class::Unknown).function(&["pg_catalog.pg_read_file", "public.pg_read_file"]));
    assert_eq!((d.action, d.rule.as_deref()), (Action::Deny, Some("files")));
    assert_eq!(decide(&set, &facts(Class::Read).function(&["ext.dblink_exec"])).rule.as_deref(), Some("files"));
    let d = decide(&set, &facts(Class::Write).unscoped());
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::RequireApproval, "class write is in [write, ddl] and it is unscoped")
    );
    assert_eq!(decide(&set, &facts(Class::Write)).action, Action::Allow, "scoped");
    let d = decide(&set, &facts(Class::Unknown).reason("calls f, not known to be read-only"));
    assert_eq!(d.reason, "class unknown (calls f, not known to be read-only) is in [unknown]");
}

#[test]
fn an_empty_match_matches_every_statement() {
    let set = policy("  selector: {}\n  rules:\n    - {name: all, match: {}, action: require_approval}\n");
    let d = decide(&set, &facts(Class::Utility));
    assert_eq!((d.action, d.reason.as_str()), (Action::RequireApproval, "the rule matches every statement"));
}

#[test]
fn tags_can_only_narrow() {
    let set = policy(
        "  selector: {}\n  rules:\n\
         \x20   - {name: backfill, match: {class: [write], tags: {purpose: backfill}}, action: require_approval}\n\
         \x20   - {name: writes, match: {class: [write]}, action: deny}\n\
         \x20   - {name: tagged-reads, match: {class: [read], tags: {purpose: export}}, action: deny}\n",
    );
    // Declaring the tag must not turn a deny into require_approval.
    let d = decide(&set, &facts(Class::Write).tag("purpose", "backfill"));
    assert_eq!((d.action, d.rule.as_deref()), (Action::Deny, Some("writes")));
    assert_eq!(decide(&set, &facts(Class::Write)).action, Action::Deny);
    // A tagged deny narrows what would otherwise be allowed.
    let d = decide(&set, &facts(Class::Read).tag("purpose", "export").tag("other", "x"));
    assert_eq!(
        (d.action, d.reason.as_str()),
        (Action::Deny, "class read is in [read] and the client tagged it purpose=export")
    );
    assert_eq!(decide(&set, &facts(Class::Read).tag("purpose", "exports")).action, Action::Allow, "values are exact");
    assert_eq!(decide(&set, &facts(Class::Read)).action, Action::Allow);

    // A tagged require_approval before a default deny: the default stands.
    let strict = policy(
        "  selector: {}\n  rules:\n    - {name: t, match: {tags: {a: b}}, action: require_approval}\n  default: deny\n",
    );
    let d = decide(&strict, &facts(Class::Read).tag("a", "b"));
    assert_eq!((d.action, d.rule.as_deref()), (Action::Deny, None));
}

// ---- precedence across policies --------------------------------------------------------------

#[test]
fn the_most_restrictive_policy_wins_ties_by_name() {
    let doc = |name: &str, body: &str| format!("{}{body}", HEAD.replace("name: p", &format!("name: {name}")));
    let set = compile(&[(
        "p.yaml",
        &[
            doc("zeta", "  selector: {}\n  rules:\n    - {name: z-ddl, match: {class: [ddl]}, action: deny}\n"),
            doc("alpha", "  selector: {}\n  rules:\n    - {name: a-ddl, match: {class: [ddl]}, action: deny}\n    - {name: a-writes, match: {class: [write]}, action: require_approval}\n"),
            doc("mid", "  selector: {}\n  rules:\n    - {name: m-writes, match: {class: [write]}, action: deny}\n    - {name: m-reads, match: {class: [read]}, action: allow}\n"),
        ]
        .join("---\n"),
    )])
    .expect("valid");
    let d = decide(&set, &facts(Class::Ddl));
    assert_eq!((d.action, d.policy.as_deref(), d.rule.as_deref()), (Action::Deny, Some("alpha"), Some("a-ddl")));
    let d = decide(&set, &facts(Class::Write));
    assert_eq!((d.action, d.policy.as_deref(), d.rule.as_deref()), (Action::Deny, Some("mid"), Some("m-writes")));
    // All allow: the first by name reports (alpha's default).
    let d = decide(&set, &facts(Class::Read));
    assert_eq!((d.action, d.policy.as_deref(), d.rule), (Action::Allow, Some("alpha"), None));

    let l = everyone();
    let each = set
        .select(&Subject { labels: &l, database: "db", user: Some("app") })
        .decide_each(&set, &facts(Class::Write).view());
    let actions: Vec<(Action, Option<&str>)> =
        each.iter().filter_map(|(d, _)| d.as_ref()).map(|d| (d.action, d.policy.as_deref())).collect();
    assert_eq!(
        actions,
        vec![(Action::RequireApproval, Some("alpha")), (Action::Deny, Some("mid")), (Action::Allow, Some("zeta"))]
    );
}

#[test]
fn no_policy_means_allow() {
    let d = decide(&PolicySet::empty(), &facts(Class::Ddl));
    assert_eq!(
        d,
        Decision {
            action: Action::Allow,
            policy: None,
            rule: None,
            reason: "no policy selects this identity".into(),
            approval: None
        }
    );
    let set = policy("  selector: {matchLabels: {a: b}}\n  default: deny\n");
    assert_eq!(decide(&set, &facts(Class::Ddl)).reason, "no policy selects this identity");
}

#[test]
fn connections_get_the_strictest_default() {
    let doc = |name: &str, body: &str| format!("{}{body}", HEAD.replace("name: p", &format!("name: {name}")));
    let set = compile(&[(
        "p.yaml",
        &[
            doc("open", "  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n"),
            doc("held", "  selector: {matchLabels: {held: \"yes\"}}\n  default: require_approval\n"),
            doc("closed", "  selector: {matchLabels: {closed: \"yes\"}}\n  rules:\n    - {name: nothing, match: {}, action: deny}\n"),
        ]
        .join("---\n"),
    )])
    .expect("valid");
    let connect = |l: &BTreeMap<String, String>| {
        set.select(&Subject { labels: l, database: "db", user: None }).decide_connection(&set)
    };
    let d = connect(&everyone());
    assert_eq!(
        (d.action, d.policy.as_deref()),
        (Action::Allow, Some("open")),
        "a deny rule on statements is not a refusal of the connection"
    );
    let d = connect(&labels(&[("held", "yes")]));
    assert_eq!((d.action, d.policy.as_deref(), d.rule), (Action::RequireApproval, Some("held"), None));
    let d = connect(&labels(&[("held", "yes"), ("closed", "yes")]));
    assert_eq!((d.action, d.policy.as_deref(), d.rule.as_deref()), (Action::Deny, Some("closed"), Some("nothing")));
    let none = PolicySet::empty();
    let d = none.select(&Subject { labels: &everyone(), database: "db", user: None }).decide_connection(&none);
    assert_eq!((d.action, d.reason.as_str()), (Action::Allow, "no policy selects this identity"));
}

// ---- the shipped packs -----------------------------------------------------------------------

fn packs() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    PolicySet::load(&[dir]).unwrap_or_else(|e| panic!("the shipped packs must pass `warden policy check`:\n{e}"))
}

#[test]
fn shipped_packs_load() {
    let set = packs();
    assert_eq!(set.names().collect::<Vec<_>>(), vec!["baseline", "observe-only", "read-only"]);
}

#[test]
fn shipped_packs_behave_as_documented() {
    let set = packs();
    let judge = |l: &[(&str, &str)], f: &F| {
        let l = labels(l);
        set.select(&Subject { labels: &l, database: "db", user: Some("app") }).decide(&set, &f.view())
    };
    let agent = [("warden/kind", "agent")];
    assert_eq!(judge(&agent, &facts(Class::Read).relation(&["public.t"])).action, Action::Allow);
    assert_eq!(judge(&agent, &facts(Class::Write)).action, Action::Allow);
    for class in [Class::Ddl, Class::Dcl, Class::Admin, Class::Unknown] {
        assert_eq!(judge(&agent, &facts(class)).action, Action::Deny, "{class}");
    }
    assert_eq!(judge(&agent, &facts(Class::Write).unscoped()).rule.as_deref(), Some("no-unscoped-writes"));

    for (function, rule) in [
        ("pg_catalog.pg_read_file", "no-server-files"),
        ("pg_catalog.pg_ls_dir", "no-server-files"),
        ("pg_catalog.lo_import", "no-large-objects"),
        ("pg_catalog.pg_terminate_backend", "no-process-control"),
        ("extensions.dblink_exec", "no-remote-databases"),
    ] {
        assert_eq!(
            judge(&agent, &facts(Class::Unknown).function(&[function])).rule.as_deref(),
            Some(rule),
            "{function}"
        );
    }
    // People are not selected by the baseline.
    assert_eq!(judge(&[("warden/kind", "human")], &facts(Class::Ddl)).action, Action::Allow);

    let reader = [("warden/access", "read-only")];
    for class in [Class::Read, Class::Session, Class::Transaction, Class::Utility] {
        assert_eq!(judge(&reader, &facts(class)).action, Action::Allow, "{class}");
    }
    assert_eq!(judge(&reader, &facts(Class::Write)).action, Action::Deny);
    assert_eq!(judge(&reader, &facts(Class::Read).effects(&[Class::Read, Class::Write])).action, Action::Deny);

    let observed = labels(&[("warden/access", "observe")]);
    let s = set.select(&Subject { labels: &observed, database: "db", user: Some("app") });
    assert_eq!(s.names(&set), vec!["observe-only"]);
    assert!(!s.guards(), "observe-only never refuses");
    assert_eq!(s.decide(&set, &facts(Class::Ddl).view()).action, Action::Allow);
}

#[test]
fn the_schema_names_what_the_loader_accepts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/policy.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("schema present")).expect("schema is JSON");
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["properties"]["apiVersion"]["const"], API_VERSION);
    assert_eq!(schema["properties"]["kind"]["const"], KIND);
    let classes: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(schema["$defs"]["class"]["enum"], serde_json::json!(classes));
    let actions: Vec<&str> =
        [Action::Allow, Action::Deny, Action::RequireApproval].iter().map(|a| a.as_str()).collect();
    assert_eq!(schema["$defs"]["action"]["enum"], serde_json::json!(actions));
    let fields = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().expect("properties").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        fields(&schema["$defs"]["actionRule"]["properties"]["match"]["properties"]),
        ["class", "functions", "relations", "tags", "unscoped"]
    );
    assert_eq!(
        fields(&schema["properties"]["spec"]["properties"]),
        ["approval", "databases", "default", "masking", "mode", "rules", "selector", "users"]
    );
    assert_eq!(fields(&schema["$defs"]["actionRule"]["properties"]), ["action", "approval", "match", "mode", "name"]);
    assert_eq!(fields(&schema["$defs"]["maskRule"]["properties"]), ["exempt", "mask", "match", "mode", "name"]);
    assert_eq!(schema["$defs"]["mode"]["enum"], serde_json::json!(["enforce", "dryrun"]));
    assert_eq!(fields(&schema["$defs"]["limitRule"]["properties"]), ["limit", "match", "mode", "name"]);
    assert_eq!(fields(&schema["$defs"]["limitRule"]["properties"]["limit"]["properties"]), ["bytes", "per", "rows"]);
    assert_eq!(
        fields(&schema["$defs"]["maskRule"]["properties"]["match"]["properties"]),
        ["classifications", "columns"]
    );
    assert_eq!(
        fields(&schema["properties"]["spec"]["properties"]["masking"]["properties"]),
        ["classifications", "detectors", "inference", "patterns", "untraced"]
    );
    let kinds: Vec<&str> = crate::mask::detect::Kind::BUILTIN.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        schema["properties"]["spec"]["properties"]["masking"]["properties"]["detectors"]["items"]["enum"],
        serde_json::json!(kinds)
    );
    assert_eq!(
        schema["$defs"]["maskMethod"]["enum"],
        serde_json::json!(["redact", "partial", "token", "format_preserving", "null"])
    );
    assert_eq!(
        fields(&schema["properties"]["spec"]["properties"]["approval"]["properties"]),
        ["grant", "timeout", "webhook"]
    );
}

// ---- approval terms --------------------------------------------------------------------------

#[test]
fn approval_terms_come_from_the_rule_over_the_policy_over_the_defaults() {
    let set = policy(
        "  selector: {}\n\
         \x20 approval: {timeout: 2m, webhook: {url: \"https://hooks.example.com/warden\"}}\n\
         \x20 rules:\n\
         \x20   - {name: quick, match: {class: [ddl]}, action: require_approval, approval: {timeout: 90s, grant: 1h30m}}\n\
         \x20   - {name: writes, match: {class: [write]}, action: require_approval}\n\
         \x20   - {name: reads, match: {class: [read]}, action: allow}\n\
         \x20 default: require_approval\n",
    );
    let ddl = decide(&set, &facts(Class::Ddl));
    let terms = ddl.approval.expect("a hold has terms");
    assert_eq!(terms.timeout, Duration::from_secs(90));
    assert_eq!(terms.grant, Grant::For(Duration::from_secs(5400)));
    assert_eq!(terms.webhook.as_deref(), Some("https://hooks.example.com/warden"), "the webhook is the policy's");
    let write = decide(&set, &facts(Class::Write)).approval.expect("terms");
    assert_eq!((write.timeout, write.grant), (Duration::from_secs(120), Grant::Once));
    assert!(decide(&set, &facts(Class::Read)).approval.is_none(), "an allow has no terms");
    let default = decide(&set, &facts(Class::Utility)).approval.expect("the default holds too");
    assert_eq!(default.timeout, Duration::from_secs(120));
    let plain = policy("  selector: {}\n  default: require_approval\n");
    let terms = decide(&plain, &facts(Class::Write)).approval.expect("terms");
    assert_eq!(*terms, ApprovalTerms::standard());
    assert_eq!(terms.timeout, Duration::from_secs(300));
}

#[test]
fn approval_mistakes_are_reported_where_written() {
    let found = spec_mistakes(
        "  selector: {}\n\
         \x20 approval: {timeout: 5, grant: forever, webhook: {url: \"ftp://x\"}}\n\
         \x20 rules:\n\
         \x20   - {name: a, match: {class: [ddl]}, action: deny, approval: {timeout: 1m}}\n\
         \x20   - {name: b, match: {class: [write]}, action: require_approval, approval: {timeout: 2d, webhook: {url: \"http://x\"}}}\n\
         \x20   - {name: c, match: {class: [read]}, action: require_approval, approval: {timeout: 25h}}\n",
    );
    let all = found.join("\n");
    assert!(all.contains("spec.approval.timeout: `5`: expected a duration with its unit"), "{all}");
    assert!(all.contains("spec.approval.grant: expected `once` or how long"), "{all}");
    assert!(all.contains("spec.approval.webhook.url: webhook url `ftp://x`: expected http:// or https://"), "{all}");
    assert!(all.contains("spec.rules[0].approval: only a require_approval rule is held for approval"), "{all}");
    assert!(all.contains("spec.rules[1].approval.timeout: `2d`"), "{all}");
    assert!(all.contains("spec.rules[1].approval: unknown field `webhook`"), "{all}");
    assert!(all.contains("spec.rules[2].approval.timeout: `25h`: expected at least 1s and at most 24h"), "{all}");
}

// ---- dry-run ---------------------------------------------------------------------------------

/// The real and the would-be decision for an unlabelled identity as role `app`.
fn decide_both(set: &PolicySet, f: &F) -> (Decision, Option<Decision>) {
    let l = everyone();
    let selection = set.select(&Subject { labels: &l, database: "db", user: Some("app") });
    (selection.decide(set, &f.view()), selection.decide_would(set, &f.view()))
}

#[test]
fn dry_run_rules_decide_only_the_would_be_verdict() {
    let set = policy(
        "  selector: {}\n  rules:\n    - {name: no-deletes, match: {class: [write], unscoped: true}, action: deny, mode: dryrun}\n    - {name: writes-held, match: {class: [write]}, action: require_approval}\n",
    );
    let (real, would) = decide_both(&set, &facts(Class::Write).unscoped());
    assert_eq!((real.action, real.rule.as_deref()), (Action::RequireApproval, Some("writes-held")));
    let would = would.expect("a dry-run rule selects: there is a would-be verdict");
    assert_eq!((would.action, would.rule.as_deref()), (Action::Deny, Some("no-deletes")));
    // A statement the dry-run rule does not match: both the same.
    let (real, would) = decide_both(&set, &facts(Class::Write));
    assert_eq!(Some(real), would);
    // A dry-run rule refuses nothing, so it does not make the identity guarded.
    let l = everyone();
    let only_dry =
        policy("  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny, mode: dryrun}\n");
    let selection = only_dry.select(&Subject { labels: &l, database: "db", user: None });
    assert!(!selection.guards() && selection.would_guard() && selection.dryrun());
    // Enforced: no policy guards, so a statement of unknown effect is not refused; would be.
    let unknown = facts(Class::Unknown).reason("DO block");
    let real = fail_closed(selection.decide(&only_dry, &unknown.view()), &unknown.view(), selection.guards());
    assert_eq!(real.action, Action::Allow);
    let would = selection.decide_would(&only_dry, &unknown.view()).expect("dry-run");
    let would = fail_closed(would, &unknown.view(), selection.would_guard());
    assert_eq!((would.action, would.rule.as_deref()), (Action::Deny, Some("fail-closed")));
    // Without dry-run parts, no would-be verdict at all (nothing extra recorded).
    let plain = policy("  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n");
    assert_eq!(decide_both(&plain, &facts(Class::Ddl)).1, None);
}

#[test]
fn a_dry_run_policy_is_passed_over_when_enforcing() {
    let doc = |name: &str, body: &str| format!("{}{body}", HEAD.replace("name: p", &format!("name: {name}")));
    let set = compile(&[(
        "p.yaml",
        &[
            doc("candidate", "  selector: {}\n  mode: dryrun\n  default: deny\n  rules:\n    - {name: reads, match: {class: [read]}, action: allow}\n    - {name: masked, match: {columns: [\"public.users.email\"]}, mask: redact}\n"),
            doc("live", "  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n"),
        ]
        .join("---\n"),
    )])
    .expect("valid");
    let (real, would) = decide_both(&set, &facts(Class::Write));
    assert_eq!((real.action, real.policy.as_deref()), (Action::Allow, Some("live")));
    let would = would.expect("would-be verdict");
    assert_eq!((would.action, would.policy.as_deref(), would.rule), (Action::Deny, Some("candidate"), None));
    let (real, would) = decide_both(&set, &facts(Class::Read));
    assert_eq!(real.action, Action::Allow);
    assert_eq!(would.map(|w| w.action), Some(Action::Allow));
    let l = everyone();
    let selection = set.select(&Subject { labels: &l, database: "db", user: None });
    // Its masking rule masks nothing for real, and is what the would-be verdict masks with.
    assert!(selection.masking(&set, &l).is_none());
    assert!(selection.dryrun_masks() && selection.masking_would(&set, &l).is_some_and(|m| m.masks));
    // Only dry-run policies select: allowed, and said so.
    let alone = policy("  selector: {}\n  mode: dryrun\n  default: deny\n");
    let (real, would) = decide_both(&alone, &facts(Class::Read));
    assert_eq!((real.action, real.reason.as_str()), (Action::Allow, "only dry-run policies select this identity"));
    assert_eq!(would.map(|w| w.action), Some(Action::Deny));
    // Connections of `protocol: tcp` databases: a dry-run policy refuses none.
    let d = alone.select(&Subject { labels: &l, database: "db", user: None }).decide_connection(&alone);
    assert_eq!(d.action, Action::Allow);
}

#[test]
fn dry_run_mistakes_and_reachability() {
    let found = spec_mistakes("  selector: {}\n  mode: dry-run\n");
    assert_mistake(
        &found,
        "p.yaml:6:9: spec.mode: unknown mode `dry-run`; expected enforce or dryrun (written `dryrun`)",
    );
    let found = spec_mistakes(
        "  selector: {}\n  mode: dryrun\n  rules:\n    - {name: r, match: {}, action: deny, mode: enforce}\n",
    );
    assert_mistake(&found, "p.yaml:8:48: spec.rules[0].mode: the policy is in dryrun mode");
    // An enforced rule behind a dry-run rule that covers it still decides what is enforced.
    policy(
        "  selector: {}\n  rules:\n    - {name: all, match: {}, action: deny, mode: dryrun}\n    - {name: ddl, match: {class: [ddl]}, action: deny}\n",
    );
    // A dry-run rule behind an enforced one that covers it could never decide the would-be verdict.
    let found = spec_mistakes(
        "  selector: {}\n  rules:\n    - {name: all, match: {}, action: deny}\n    - {name: ddl, match: {class: [ddl]}, action: deny, mode: dryrun}\n",
    );
    assert_mistake(&found, "p.yaml:8:14: spec.rules[1]: rule `ddl` can never match");
}

// ---- volume limits -----------------------------------------------------------------------------

#[test]
fn limit_rules_apply_whenever_they_match_and_their_mistakes_are_named() {
    let set = policy(
        "  selector: {}\n  rules:\n    - {name: reads, match: {class: [read]}, limit: {rows: 10000, bytes: 64MiB}}\n    - {name: crm, match: {relations: ['crm.*']}, limit: {rows: 500, per: 1m}}\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n",
    );
    let l = everyone();
    let selection = set.select(&Subject { labels: &l, database: "db", user: None });
    assert!(selection.has_limits() && selection.guards(), "a limit guards the identity");
    let crm = facts(Class::Read).relation(&["crm.customers"]);
    let limits = selection.limits(&set, &crm.view());
    let names: Vec<(&str, String)> = limits.iter().map(|l| (&*l.rule, l.cap.to_string())).collect();
    assert_eq!(
        names,
        vec![("reads", "10000 rows or 64MiB per statement".to_string()), ("crm", "500 rows per 1m".to_string())]
    );
    assert_eq!(selection.decide(&set, &crm.view()).action, Action::Allow, "limits take no part in the verdict");
    assert!(selection.limits(&set, &facts(Class::Write).view()).is_empty());
    // An unresolvable relation may be one the rule names: the limit applies.
    assert_eq!(selection.limits(&set, &facts(Class::Write).relation(&[]).view()).len(), 1);

    let found = spec_mistakes("  selector: {}\n  rules:\n    - {name: a, match: {}, limit: {}}\n");
    assert_mistake(&found, "p.yaml:7:35: spec.rules[0].limit: a limit caps `rows`, `bytes` or both");
    let found =
        spec_mistakes("  selector: {}\n  rules:\n    - {name: a, match: {}, limit: {rows: 0, bytes: 1TB, per: 2d}}\n");
    assert_mistake(&found, "p.yaml:7:42: spec.rules[0].limit.rows: expected a number of rows of at least 1");
    assert_mistake(&found, "p.yaml:7:52: spec.rules[0].limit.bytes: `1TB`: unknown unit");
    assert_mistake(&found, "p.yaml:7:62: spec.rules[0].limit.per: `2d`");
    let found = spec_mistakes("  selector: {}\n  rules:\n    - {name: a, match: {}, limit: {rows: 5}, action: deny}\n");
    assert_mistake(&found, "p.yaml:7:46: spec.rules[0]: a rule either limits");
    let found =
        spec_mistakes("  selector: {}\n  mode: dryrun\n  rules:\n    - {name: a, match: {}, limit: {rows: 5}}\n");
    assert_mistake(&found, "p.yaml:8:7: spec.rules[0]: volume limits cannot be dry-run yet");
}
