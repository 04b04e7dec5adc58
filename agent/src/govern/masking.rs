//! Masking in a session's judgement: the identity's masking policy, the session's masking
//! context (its catalog as last read), each statement's plan (or why it is refused), and the
//! filters results pass through.

use std::{collections::BTreeMap, sync::Arc};

use super::{Facts, SessionGovern};
use crate::{
    mask::plan::{MaskContext, PartMask},
    policy::{
        PolicySet, Selection,
        masking::{MaskPolicy, Untraced},
    },
    session::{
        PartJudgement, ResultColumn, Running,
        hooks::{ResultFilter, StatementInfo},
    },
    sql::Described,
};

/// A value and the basis it was made under (policy generation, facts epoch).
type Based<T> = Option<((u64, u64), T)>;

/// Looks up a SQL-level prepared statement: its text and how it lexed.
type Lookup<'a> = dyn Fn(&str) -> Option<(Arc<str>, crate::session::Lexing)> + 'a;

/// A session's masking state.
#[derive(Default)]
pub(super) struct SessionMasking {
    /// The identity's masking policy, for the policy generation and facts epoch it was made
    /// under (the role decides which policies select it).
    policy: Based<Option<Arc<MaskPolicy>>>,
    /// The masking context for the same basis, or why there is none.
    context: Based<Result<Arc<MaskContext>, Arc<str>>>,
    /// The same with dry-run masking rules enforced (the would-be verdict's), when one applies.
    would_policy: Based<Option<Arc<MaskPolicy>>>,
    would_context: Based<Result<Arc<MaskContext>, Arc<str>>>,
    /// Cursors declared by forwarded statements: the plan of what a FETCH of them returns.
    pub cursors: std::collections::HashMap<String, Arc<PartMask>>,
    /// The same under the would-be verdict's masking (dry-run masking rules enforced).
    pub would_cursors: std::collections::HashMap<String, Arc<PartMask>>,
    /// The session forwarded DDL since its catalog was read, where only the would-be masking
    /// needed to know (the real masking's own flag is `catalog_stale`).
    pub would_catalog_stale: bool,
}

/// Cursors remembered (beyond it, a FETCH of a forgotten cursor is untraced).
const MAX_CURSOR_PLANS: usize = 1024;

impl SessionGovern {
    /// The masking policy of this session's identity, if any selected policy masks.
    pub(super) fn mask_policy(
        &self,
        set: &PolicySet,
        generation: u64,
        selection: &Selection,
    ) -> Option<Arc<MaskPolicy>> {
        self.cached_policy(generation, false, |labels| selection.masking(set, labels))
    }

    /// The masking policy with dry-run masking rules enforced, when a selected policy has any
    /// (the would-be verdict plans with it; nothing is masked by it).
    pub(super) fn would_mask_policy(
        &self,
        set: &PolicySet,
        generation: u64,
        selection: &Selection,
    ) -> Option<Arc<MaskPolicy>> {
        if !selection.dryrun_masks() {
            return None;
        }
        self.cached_policy(generation, true, |labels| selection.masking_would(set, labels))
    }

    /// The policy cached for this generation and facts epoch (the would-be verdict's: `would`),
    /// or `make` it from the labels. Asked for every statement's answer: one lock for a hit (read
    /// only, so no change of state is counted), the labels loaded only to plan anew.
    fn cached_policy(
        &self,
        generation: u64,
        would: bool,
        make: impl FnOnce(&BTreeMap<String, String>) -> Option<MaskPolicy>,
    ) -> Option<Arc<MaskPolicy>> {
        let (basis, labels) = {
            let state = self.lock();
            let basis = (generation, state.facts_epoch);
            let slot = if would { &state.masking.would_policy } else { &state.masking.policy };
            if let Some((b, p)) = slot
                && *b == basis
            {
                return p.clone();
            }
            (basis, self.labels())
        };
        let policy = make(&labels).map(Arc::new);
        let mut state = self.lock();
        let slot = if would { &mut state.masking.would_policy } else { &mut state.masking.policy };
        *slot = Some((basis, policy.clone()));
        policy
    }

    /// The session's masking context under `policy` (the would-be verdict's: `would`), or why
    /// there is none. A context is given again only for the policy it was built for.
    pub(super) fn mask_context(
        &self,
        generation: u64,
        policy: &Arc<MaskPolicy>,
        would: bool,
    ) -> Result<Arc<MaskContext>, Arc<str>> {
        let mut state = self.lock();
        let basis = (generation, state.facts_epoch);
        if would && state.masking.would_catalog_stale {
            return Err(Arc::from("the session changed definitions since its catalog was read"));
        }
        let slot = if would { &state.masking.would_context } else { &state.masking.context };
        if let Some((b, c)) = slot
            && *b == basis
            && c.as_ref().map_or(true, |c| Arc::ptr_eq(&c.policy, policy))
        {
            return c.clone();
        }
        let context = match (&state.facts, state.catalog_stale) {
            (_, true) => Err(Arc::from("the session changed definitions since its catalog was read")),
            (Facts::Known(catalog), false) => {
                let path = state.relation_schemas.clone();
                MaskContext::new(policy.clone(), catalog.clone(), path, self.governor.mask_key.load_full())
                    .map(Arc::new)
                    .map_err(Arc::from)
            }
            (Facts::Unavailable(why), false) => Err(why.clone()),
            (Facts::NotRead, false) => Err(Arc::from("the session's catalog was not read yet")),
        };
        if would {
            state.masking.would_context = Some((basis, context.clone()));
        } else {
            state.masking.context = Some((basis, context.clone()));
        }
        context
    }

    /// Whether masking applies to this session now (some rule masks for its identity).
    pub(super) fn masking_applies(&self) -> Option<Arc<MaskPolicy>> {
        self.masking_applies_at().map(|(policy, _)| policy)
    }

    /// Like `masking_applies`, with the generation of the policy set it was read from.
    pub(super) fn masking_applies_at(&self) -> Option<(Arc<MaskPolicy>, u64)> {
        let snapshot = self.governor.snapshot();
        let selection = self.selection(&snapshot);
        self.mask_policy(&snapshot.set, snapshot.generation, &selection)
            .filter(|p| p.masks || !p.detectors.is_empty())
            .map(|policy| (policy, snapshot.generation))
    }

    /// Plans one statement part, or says why masking refuses it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_part(
        &self,
        policy: &Arc<MaskPolicy>,
        generation: u64,
        info: &StatementInfo<'_>,
        raw: &str,
        ambiguous: bool,
        own: &Described,
        analysis_of: &Described,
        lookup: &Lookup<'_>,
        any_schema: bool,
        declared_here: &std::collections::HashMap<String, Arc<PartMask>>,
        redefined: bool,
        would: bool,
    ) -> Result<Arc<PartMask>, String> {
        // Ending or rolling back a transaction reads no table: planned without the catalog,
        // which DDL earlier in the transaction made stale (the session could not end it else).
        let only_transaction = !own.analysis.effects.is_empty()
            && own.analysis.effects.iter().all(|c| c == crate::sql::Class::Transaction)
            && own.analysis.relations.is_empty();
        if only_transaction && !ambiguous {
            return Ok(Arc::new(PartMask { scrub: true, exact: true, ..PartMask::default() }));
        }
        if redefined {
            return Err("an earlier statement of the same message changes definitions, so names in this one \
                        cannot be resolved for masking"
                .into());
        }
        let context = self
            .mask_context(generation, policy, would)
            .map_err(|why| format!("masking needs the database's catalog, which is not known: {why}"))?;
        if ambiguous {
            return Err("its text cannot be read for certain, so what it returns cannot be masked".into());
        }
        if let Some(cursor) = &own.analysis.fetches {
            let earlier = {
                let state = self.lock();
                if would { state.masking.would_cursors.get(cursor) } else { state.masking.cursors.get(cursor) }.cloned()
            };
            let known = match (declared_here.get(cursor), earlier) {
                (Some(here), Some(before)) => Some(Arc::new(here.join(&before))),
                (Some(here), None) => Some(here.clone()),
                (None, before) => before,
            };
            return match known {
                Some(plan) => Ok(plan),
                None if policy.untraced == Untraced::Refuse && policy.masks => Err(format!(
                    "fetches from cursor {cursor}, which the proxy did not see declared: what it returns cannot be traced"
                )),
                None => Ok(Arc::new(PartMask::untraced())),
            };
        }
        let text = match &own.analysis.executes {
            Some(name) => match lookup(name) {
                Some((body, lexing)) => {
                    Arc::from(crate::sql::normalise_for_analysis_with_options(&body, lexing.options()))
                }
                None => {
                    return Err(format!("EXECUTE of prepared statement {name}, which the proxy did not see prepared"));
                }
            },
            // The part's own description was made from `raw` under the same settings.
            None if !own.parsable.is_empty() => own.parsable.clone(),
            None => Arc::from(crate::sql::normalise_for_analysis_with_options(raw, info.lexing.options())),
        };
        let options = match &own.analysis.executes {
            Some(name) => lookup(name).map_or(info.lexing.options(), |(_, lexing)| lexing.options()),
            None => info.lexing.options(),
        };
        context.plan(&text, options, &analysis_of.analysis.relations, analysis_of.analysis.effects, any_schema)
    }

    /// The filter of a result set of `running` (statement `part` of it).
    pub(super) fn filter(
        &self,
        running: Option<&Running>,
        part: usize,
        columns: &[ResultColumn],
        copy: bool,
    ) -> Option<Box<dyn ResultFilter>> {
        let (policy, generation) = self.masking_applies_at()?;
        let plan: Option<Arc<PartMask>> = running
            .and_then(|r| r.judgement.as_ref())
            .and_then(|j| j.parts.get(part.min(j.parts.len().saturating_sub(1))))
            .and_then(|p: &PartJudgement| p.mask.clone());
        let filter: Box<dyn ResultFilter> = match self.mask_context(generation, &policy, false) {
            Ok(context) => context.filter(plan.as_deref(), columns, copy)?,
            // No context (the catalog could not be read): every value withheld.
            Err(_) => Box::new(WithholdAll),
        };
        Some(match &self.counters {
            Some(counters) => Box::new(Counted {
                inner: filter,
                counter: counters.masked_values(),
                masked: std::sync::atomic::AtomicU64::new(0),
            }),
            None => filter,
        })
    }

    /// Error and notice fields: withheld when the statement reads protected data or values of
    /// unknown lineage (a cast error quotes the value, a unique violation its key, a CHECK
    /// violation the whole row, RAISE anything); otherwise through the detectors.
    pub(super) fn scrub(&self, running: Option<&Running>, fields: &[(u8, &[u8])]) -> Option<Vec<(u8, Vec<u8>)>> {
        let policy = self.masking_applies()?;
        let withhold = match running.and_then(|r| r.judgement.as_ref()) {
            // A COMMIT reports deferred constraints' violations, which quote keys of any table.
            Some(j) => j
                .parts
                .iter()
                .any(|p| p.mask.as_ref().is_none_or(|m| m.scrub) || p.effects.contains(crate::sql::Class::Transaction)),
            // Not a statement's (an error at Sync: a deferred constraint), or one not judged.
            None => true,
        };
        let mut changed = false;
        let mut out = Vec::with_capacity(fields.len());
        for (code, text) in fields {
            let quotes_values = matches!(code, b'M' | b'D' | b'H' | b'W' | b'q');
            if !quotes_values {
                out.push((*code, text.to_vec()));
                continue;
            }
            if withhold {
                changed = true;
                if *code == b'M' {
                    out.push((
                        b'M',
                        b"message withheld by warden: it may quote values masked for this session".to_vec(),
                    ));
                }
                continue;
            }
            match crate::mask::plan::detect(&policy.detectors, text) {
                Some(v) => {
                    changed = true;
                    out.push((*code, v));
                }
                None => out.push((*code, text.to_vec())),
            }
        }
        changed.then_some(out)
    }

    pub(super) fn scrub_notify(&self, channel: &[u8], payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let policy = self.masking_applies()?;
        let c = crate::mask::plan::detect(&policy.detectors, channel);
        let p = crate::mask::plan::detect(&policy.detectors, payload);
        (c.is_some() || p.is_some())
            .then(|| (c.unwrap_or_else(|| channel.to_vec()), p.unwrap_or_else(|| payload.to_vec())))
    }

    /// A forwarded statement declared a cursor: FETCH of it returns what its plan says. A
    /// name declared again keeps the stricter of both plans (the server may refuse the second
    /// declaration and keep the first cursor).
    pub(super) fn remember_cursor(&self, name: &str, plan: Arc<PartMask>) {
        self.remember_cursor_in(name, plan, false);
    }

    /// As `remember_cursor`, in the would-be verdict's plans (`would`) or the real ones.
    pub(super) fn remember_cursor_in(&self, name: &str, plan: Arc<PartMask>, would: bool) {
        let mut state = self.lock();
        // The same plan again (a portal bound again with a judgement given again): nothing
        // changes, and the state is left untouched (a change voids the judgements kept).
        let kept = if would { &state.masking.would_cursors } else { &state.masking.cursors };
        if kept.get(name).is_some_and(|before| Arc::ptr_eq(before, &plan)) {
            return;
        }
        let cursors = if would { &mut state.masking.would_cursors } else { &mut state.masking.cursors };
        if cursors.len() >= MAX_CURSOR_PLANS && !cursors.contains_key(name) {
            cursors.clear();
        }
        let joined = match cursors.get(name) {
            Some(before) => Arc::new(before.join(&plan)),
            None => plan,
        };
        cursors.insert(name.to_string(), joined);
    }

    /// Whether the would-be verdict's masking applies to this session now.
    pub(super) fn would_masking_applies(&self) -> bool {
        let snapshot = self.governor.snapshot();
        let selection = self.selection(&snapshot);
        self.would_mask_policy(&snapshot.set, snapshot.generation, &selection).is_some()
    }
}

/// Withholds every value (masking applies but the session's catalog is not known).
struct WithholdAll;

impl ResultFilter for WithholdAll {
    fn rewrites(&self, _index: usize) -> bool {
        true
    }

    fn rewrite(&self, _index: usize, _value: &[u8], _out: &mut Vec<u8>) -> crate::session::hooks::Rewrite {
        crate::session::hooks::Rewrite::Null
    }
}

/// A result's filter that counts the values it masked or withheld, added to the metrics when
/// the result ends (one shared update per result, not per value).
struct Counted {
    inner: Box<dyn ResultFilter>,
    counter: prometheus_client::metrics::counter::Counter,
    masked: std::sync::atomic::AtomicU64,
}

impl ResultFilter for Counted {
    fn copy_layout(&self) -> Option<crate::session::hooks::CopyLayout> {
        self.inner.copy_layout()
    }

    fn rewrites(&self, index: usize) -> bool {
        self.inner.rewrites(index)
    }

    fn rewrite(&self, index: usize, value: &[u8], out: &mut Vec<u8>) -> crate::session::hooks::Rewrite {
        let rewrite = self.inner.rewrite(index, value, out);
        if !matches!(rewrite, crate::session::hooks::Rewrite::Keep) {
            self.masked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        rewrite
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let masked = *self.masked.get_mut();
        if masked > 0 {
            self.counter.inc_by(masked);
        }
    }
}
