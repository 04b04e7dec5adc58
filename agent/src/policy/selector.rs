//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), with Kubernetes'
//! semantics and syntax rules exactly: operators `In`, `NotIn`, `Exists`, `DoesNotExist`; every
//! requirement must hold; an empty selector selects everything. Label keys and values are
//! validated as the API server validates them, so a selector that Kubernetes would reject is
//! rejected here too, rather than silently never matching.

use std::{collections::BTreeMap, fmt};

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            // Kubernetes: NotIn holds when the label is absent, too.
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub(crate) match_labels: BTreeMap<String, String>,
    pub(crate) expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether the labels satisfy every requirement (an empty selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    /// Kubernetes' string form (`kubectl get -l`): `a=b,team in (data,ml),!legacy`; `<all>` when
    /// empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.match_labels.is_empty() && self.expressions.is_empty() {
            return f.write_str("<all>");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.expressions {
            parts.push(match r {
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Kubernetes' "qualified name" part: at most 63 characters, alphanumerics, `-`, `_`, `.`,
/// beginning and ending with an alphanumeric.
fn name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1123 subdomain (label key prefixes, object names): at most 253 characters of lower
/// case alphanumerics, `-` and `.`, beginning and ending with an alphanumeric.
pub(crate) fn dns_subdomain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Checks a label key as Kubernetes does (`[prefix/]name`), saying what was expected.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !dns_subdomain_ok(p)
    {
        return Err(format!(
            "label key `{key}`: the prefix before `/` must be a DNS subdomain (at most 253 lower case \
             alphanumerics, `-` and `.`, beginning and ending with an alphanumeric)"
        ));
    }
    if !name_part_ok(name) {
        return Err(format!(
            "label key `{key}`: expected at most 63 alphanumerics, `-`, `_` or `.`, beginning and \
             ending with an alphanumeric (optionally after a `prefix/`)"
        ));
    }
    Ok(())
}

/// Checks a label value as Kubernetes does (empty, or a name part).
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || name_part_ok(value) {
        Ok(())
    } else {
        Err(format!(
            "label value `{value}`: expected at most 63 alphanumerics, `-`, `_` or `.`, beginning and \
             ending with an alphanumeric (or empty)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(match_labels: &[(&str, &str)], expressions: Vec<Requirement>) -> LabelSelector {
        LabelSelector { match_labels: labels(match_labels), expressions }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = LabelSelector::default();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert_eq!(s.to_string(), "<all>");
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = sel(&[("warden/class", "ai-agent"), ("team", "data")], vec![]);
        assert!(s.matches(&labels(&[("warden/class", "ai-agent"), ("team", "data"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("warden/class", "ai-agent")])));
        assert!(!s.matches(&labels(&[("warden/class", "ai-agent"), ("team", "ml")])));
        // An empty value is a value: it matches only a label that is present and empty.
        let empty = sel(&[("canary", "")], vec![]);
        assert!(empty.matches(&labels(&[("canary", "")])));
        assert!(!empty.matches(&labels(&[])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let in_ = sel(&[], vec![Requirement::In("team".into(), strings(&["data", "ml"]))]);
        assert!(in_.matches(&labels(&[("team", "ml")])));
        assert!(!in_.matches(&labels(&[("team", "web")])));
        assert!(!in_.matches(&labels(&[])), "In needs the label");

        let not_in = sel(&[], vec![Requirement::NotIn("team".into(), strings(&["data"]))]);
        assert!(not_in.matches(&labels(&[("team", "web")])));
        assert!(!not_in.matches(&labels(&[("team", "data")])));
        assert!(not_in.matches(&labels(&[])), "NotIn holds for an absent label");

        let exists = sel(&[], vec![Requirement::Exists("team".into())]);
        assert!(exists.matches(&labels(&[("team", "")])));
        assert!(!exists.matches(&labels(&[("other", "team")])));

        let absent = sel(&[], vec![Requirement::DoesNotExist("team".into())]);
        assert!(absent.matches(&labels(&[])));
        assert!(!absent.matches(&labels(&[("team", "")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = sel(
            &[("warden/kind", "agent")],
            vec![Requirement::In("team".into(), strings(&["data"])), Requirement::DoesNotExist("legacy".into())],
        );
        assert!(s.matches(&labels(&[("warden/kind", "agent"), ("team", "data")])));
        assert!(!s.matches(&labels(&[("warden/kind", "agent"), ("team", "data"), ("legacy", "1")])));
        assert!(!s.matches(&labels(&[("warden/kind", "job"), ("team", "data")])));
        assert_eq!(s.to_string(), "warden/kind=agent,team in (data),!legacy");
    }

    #[test]
    fn label_syntax_is_kubernetes_syntax() {
        for ok in ["team", "warden/kind", "app.kubernetes.io/name", "a", "A_b.c-D", &"k".repeat(63)] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-team",
            "team-",
            "a/b/c",
            "/name",
            "Warden.dev/kind",
            "war_den/kind",
            "prefix/",
            "has space",
            &"k".repeat(64),
            &format!("{}/n", "p".repeat(254)),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "ai-agent", "v1.2_3", &"v".repeat(63)] {
            assert!(check_label_value(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-x", "x-", "a b", "a/b", &"v".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad:?}");
        }
    }
}
