//! Masking rules, compiled: which columns (by `schema.table.column` glob, or by a
//! classification the policy tags columns with) are masked by which method, who is exempt,
//! and what a policy does with what masking cannot cover (inference through conditions,
//! values whose lineage cannot be traced). [`MaskPolicy`] is what one identity gets from all
//! the policies that select it.

use std::{collections::BTreeMap, sync::Arc};

use super::{pattern::ColumnPattern, selector::LabelSelector};
use crate::{
    mask::{detect::Detectors, method::Method},
    sql::ObjectName,
};

/// A compiled masking rule.
#[derive(Debug, Clone)]
pub(crate) struct MaskRule {
    pub name: Arc<str>,
    pub columns: Vec<ColumnPattern>,
    pub classifications: Vec<String>,
    pub method: Method,
    /// Identities that see clear values (audited as exempt).
    pub exempt: Option<LabelSelector>,
    /// `mode: dryrun` (its own or its policy's): it masks only in the would-be verdict.
    pub dryrun: bool,
}

/// What a policy does where masking cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inference {
    /// A statement that reads a protected column in a condition (WHERE, JOIN, ORDER BY, GROUP
    /// BY, HAVING, window and DISTINCT ON clauses) is refused: its rows would tell the value.
    Refuse,
    /// Allowed (an explicit choice: LIKE probing can then recover values).
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untraced {
    /// A statement returning values whose lineage cannot be known (user functions, SQL run
    /// from text, cursors the proxy did not see declared) is refused.
    Refuse,
    /// Such values pass through the value detectors.
    Detect,
}

/// `spec.masking` of one policy.
#[derive(Debug, Clone)]
pub(crate) struct MaskingSpec {
    pub classifications: Vec<(String, Vec<ColumnPattern>)>,
    pub inference: Inference,
    pub untraced: Untraced,
    pub detectors: Arc<Detectors>,
}

impl Default for MaskingSpec {
    fn default() -> Self {
        MaskingSpec {
            classifications: Vec::new(),
            inference: Inference::Refuse,
            untraced: Untraced::Refuse,
            detectors: Arc::new(Detectors::standard()),
        }
    }
}

/// How strict a method is: what it lets through (the strictest of several rules wins).
fn strictness(m: Method) -> u8 {
    match m {
        Method::Null => 5,
        Method::Redact => 4,
        Method::Partial { .. } => 3,
        Method::FormatPreserving => 2,
        Method::Token => 1,
    }
}

/// The stricter of two methods.
pub fn stricter(a: Method, b: Method) -> Method {
    match (a, b) {
        (Method::Partial { keep_last: x }, Method::Partial { keep_last: y }) => Method::Partial { keep_last: x.min(y) },
        _ if strictness(b) > strictness(a) => b,
        _ => a,
    }
}

/// What applies to one column for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskChoice {
    pub policy: Arc<str>,
    pub rule: Arc<str>,
    pub method: Method,
    /// The identity is exempt: it sees the clear value (recorded as such).
    pub exempt: bool,
}

/// One selected policy's rule, as it applies to an identity.
#[derive(Debug, Clone)]
struct Active {
    policy: Arc<str>,
    rule: Arc<str>,
    method: Method,
    columns: Vec<ColumnPattern>,
    exempt: bool,
}

/// The masking an identity gets from every policy that selects it.
#[derive(Debug, Clone)]
pub struct MaskPolicy {
    rules: Vec<Active>,
    pub inference: Inference,
    pub untraced: Untraced,
    /// Every selected policy's detectors (each applied).
    pub detectors: Vec<Arc<Detectors>>,
    /// Some rule applies to the identity without exemption.
    pub masks: bool,
}

impl MaskPolicy {
    /// Builds it from (policy name, its rules, its spec) for an identity with `labels`; `None`
    /// when no selected policy has masking rules.
    pub(crate) fn build<'a>(
        policies: impl Iterator<Item = (&'a Arc<str>, &'a [MaskRule], &'a MaskingSpec)>,
        labels: &BTreeMap<String, String>,
    ) -> Option<MaskPolicy> {
        let mut out = MaskPolicy {
            rules: Vec::new(),
            inference: Inference::Allow,
            untraced: Untraced::Detect,
            detectors: Vec::new(),
            masks: false,
        };
        let mut any = false;
        for (policy, rules, spec) in policies {
            if rules.is_empty() {
                continue;
            }
            any = true;
            if spec.inference == Inference::Refuse {
                out.inference = Inference::Refuse;
            }
            if spec.untraced == Untraced::Refuse {
                out.untraced = Untraced::Refuse;
            }
            out.detectors.push(spec.detectors.clone());
            for r in rules {
                let mut columns = r.columns.clone();
                for c in &r.classifications {
                    if let Some((_, patterns)) = spec.classifications.iter().find(|(n, _)| n == c) {
                        columns.extend(patterns.iter().cloned());
                    }
                }
                let exempt = r.exempt.as_ref().is_some_and(|s| s.matches(labels));
                out.masks |= !exempt;
                out.rules.push(Active {
                    policy: policy.clone(),
                    rule: r.name.clone(),
                    method: r.method,
                    columns,
                    exempt,
                });
            }
        }
        any.then_some(out)
    }

    /// The rules (policy, rule) that mask some column of one of `relations` for this identity
    /// (a relation of unknown schema: of any schema).
    pub fn rules_naming<'r>(&self, relations: impl Iterator<Item = &'r ObjectName>) -> Vec<(String, String)> {
        let relations: Vec<&ObjectName> = relations.collect();
        self.rules
            .iter()
            .filter(|r| !r.exempt)
            .filter(|r| {
                relations.iter().any(|rel| {
                    r.columns.iter().any(|p| {
                        rel.schema.as_deref().is_none_or(|s| p.schema.matches(s)) && p.table.matches(&rel.name)
                    })
                })
            })
            .map(|r| (r.policy.to_string(), r.rule.to_string()))
            .collect()
    }

    /// The masking of column `schema.table.column`: the strictest rule that masks it, or an
    /// exemption when every rule that names it exempts the identity.
    pub fn decide(&self, schema: &str, table: &str, column: &str) -> Option<MaskChoice> {
        let mut best: Option<MaskChoice> = None;
        let mut exempt: Option<MaskChoice> = None;
        for r in &self.rules {
            if !r.columns.iter().any(|p| p.matches(schema, table, column)) {
                continue;
            }
            let choice =
                MaskChoice { policy: r.policy.clone(), rule: r.rule.clone(), method: r.method, exempt: r.exempt };
            if r.exempt {
                exempt.get_or_insert(choice);
            } else {
                match &mut best {
                    None => best = Some(choice),
                    Some(b) if strictness(r.method) > strictness(b.method) => *b = choice,
                    Some(b) => b.method = stricter(b.method, r.method),
                }
            }
        }
        best.or(exempt)
    }
}
