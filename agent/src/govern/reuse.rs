//! Judgements given again: a prepared statement is bound and run many times, and every Bind
//! is judged. Judged again from nothing, it gets the same judgement while nothing it was made
//! from changed, so a session keeps its last few and gives them again.
//!
//! A judgement is made from the statement's text, how it lexes, its protocol and step, the
//! policy set's generation, the identity's labels and what the session knows of its database
//! (`SessionState`: facts, search_path, role, cursors, masking context). The state counts its
//! changes (`Counted`): any mutable access to it, however small, is a change, and a labelling
//! taken in is one. A judgement is given again only when the generation is the same and the
//! state has not been changed since it was made; the first change makes every kept one stale.
//!
//! A statement sent again with other literals (the simple protocol's usual way, and an ORM's
//! unparameterised text) is given the judgement of the same shape: judging reads its
//! description (normalised and analysed forms, both without the literals, and its
//! sqlcommenter tags), not the literals, except for a few checks of the raw text, all made
//! through `search_path::RawReads`. A judgement is given by shape only when those checks read
//! the same of both texts, and it is given with the new text's place and description.
//!
//! Only what depends on nothing else is kept: an allowed judgement of one statement (a held or
//! refused one takes a decision or is recorded as refused each time), with no volume limit (its windows
//! count across the tenant's sessions), no approval, and no statement that reads the session's
//! prepared statements or cursors (SQL EXECUTE, PREPARE, DECLARE, FETCH), or is ambiguous or of
//! unknown effect. A statement whose parameters are declared of user types is neither kept nor
//! given a kept judgement (the types are not in the key). What is kept is bounded: 16
//! judgements, of texts of at most 4 KiB naming at most 256 places.

use std::sync::Arc;

use super::{describe::DescribedPart, search_path::RawReads};
use crate::session::{
    Judgement, Lexing, PartJudgement, QueryProtocol,
    hooks::{StatementInfo, Step},
};

/// A value that counts its mutable accesses.
#[derive(Default)]
pub(super) struct Counted<T> {
    changes: u64,
    inner: T,
}

impl<T> Counted<T> {
    pub(super) fn new(inner: T) -> Self {
        Self { changes: 0, inner }
    }

    /// How many times it was accessed mutably.
    pub(super) fn changes(&self) -> u64 {
        self.changes
    }
}

impl<T> std::ops::Deref for Counted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for Counted<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changes += 1;
        &mut self.inner
    }
}

/// Judgements kept per session: a few statements run in turn (pgbench's TPC-B sends 11 shapes:
/// a literal with a minus sign is an operator and a number).
const KEPT: usize = 16;

/// Longer texts are not kept (each kept one holds a copy of its text, and its judgement grows
/// with the names the text holds).
const MAX_TEXT: usize = 4 * 1024;

/// Nor judgements naming more places than this: each unqualified relation is judged by every
/// schema it may resolve to, so a text within `MAX_TEXT` naming hundreds of relations, with
/// tens of schemas searched, holds megabytes of names (a review measured 1.8 MiB for one).
const MAX_NAMES: usize = 256;

/// What a judgement was made under.
#[derive(PartialEq, Eq)]
struct Basis {
    lexing: Lexing,
    protocol: QueryProtocol,
    step: Step,
    generation: u64,
    changes: u64,
}

impl Basis {
    fn of(info: &StatementInfo<'_>, generation: u64, changes: u64) -> Self {
        Self { lexing: info.lexing, protocol: info.protocol, step: info.step, generation, changes }
    }
}

/// A kept judgement.
struct Entry {
    text: Box<str>,
    /// What judging read of its raw text (none: it is given by its text alone).
    reads: Option<RawReads>,
    basis: Basis,
    judgement: Arc<Judgement>,
}

/// A session's kept judgements, newest last.
#[derive(Default)]
pub(super) struct Kept {
    entries: Vec<Entry>,
}

impl Kept {
    /// The judgement `info`'s statement got under the same generation and state.
    pub(super) fn get(&mut self, info: &StatementInfo<'_>, generation: u64, changes: u64) -> Option<Arc<Judgement>> {
        if !self.fresh(info, generation, changes) {
            return None;
        }
        let basis = Basis::of(info, generation, changes);
        let i = self.entries.iter().rposition(|e| e.basis == basis && *e.text == *info.sql)?;
        Some(self.used(i))
    }

    /// The judgement of entry `i`, which becomes the newest (the oldest is let go first).
    fn used(&mut self, i: usize) -> Arc<Judgement> {
        let entry = self.entries.remove(i);
        let judgement = entry.judgement.clone();
        self.entries.push(entry);
        judgement
    }

    /// The judgement a statement of the same shape got under the same generation and state
    /// (the same text but for its literals), given as `parts`' own: its place in the text and
    /// its description. None when judging reads anything else of the two raw texts that
    /// differs (`RawReads`).
    pub(super) fn get_by_shape(
        &mut self,
        info: &StatementInfo<'_>,
        parts: &[DescribedPart],
        generation: u64,
        changes: u64,
    ) -> Option<Arc<Judgement>> {
        if !self.fresh(info, generation, changes) {
            return None;
        }
        let [part] = parts else { return None };
        if part.ambiguous || part.described.parsable.is_empty() || info.sql.len() > MAX_TEXT {
            return None;
        }
        let raw = info.sql.get(part.span.clone())?;
        let basis = Basis::of(info, generation, changes);
        let new = &part.described;
        let mut reads = None;
        let i = self.entries.iter().rposition(|e| {
            let Some(kept_reads) = e.reads else { return false };
            let kept = &e.judgement.parts[0].described;
            e.basis == basis
                && *kept.parsable == *new.parsable
                && *kept.normalised == *new.normalised
                && kept.tags == new.tags
                && kept_reads == *reads.get_or_insert_with(|| RawReads::of(raw, info.lexing.options()))
        })?;
        let judgement = self.used(i);
        let first =
            PartJudgement { span: part.span.clone(), described: part.described.clone(), ..judgement.parts[0].clone() };
        Some(Arc::new(Judgement { parts: vec![first], role: judgement.role.clone(), basis: judgement.basis }))
    }

    /// Lets go of the judgements made under an older state or generation (they can never be
    /// given again), and says whether `info`'s statement may be given one.
    fn fresh(&mut self, info: &StatementInfo<'_>, generation: u64, changes: u64) -> bool {
        if self.entries.first().is_some_and(|e| e.basis.changes != changes || e.basis.generation != generation) {
            self.entries.retain(|e| e.basis.changes == changes && e.basis.generation == generation);
        }
        info.text_known && info.protocol != QueryProtocol::FunctionCall && info.parameter_types.is_empty()
    }

    /// Keeps `judgement`, made of `info` under `generation` with the state at `changes` (from
    /// before it was made until after), when it may be given again.
    pub(super) fn keep(&mut self, info: &StatementInfo<'_>, generation: u64, changes: u64, judgement: &Arc<Judgement>) {
        if !info.text_known
            || info.protocol == QueryProtocol::FunctionCall
            // (Not in the key: a statement whose parameters are of user types is judged anew.)
            || !info.parameter_types.is_empty()
            || info.sql.len() > MAX_TEXT
            || !reusable(judgement)
        {
            return;
        }
        // Those made under an older state or generation can never be given again.
        self.entries.retain(|e| e.basis.changes == changes && e.basis.generation == generation);
        if self.entries.len() >= KEPT {
            self.entries.remove(0);
        }
        let part = &judgement.parts[0];
        // What judging read of the text (a judgement made here always carries it).
        let reads = match info.sql.get(part.span.clone()) {
            Some(raw) if !part.described.parsable.is_empty() => {
                let reads = part.raw_reads.unwrap_or_else(|| RawReads::of(raw, info.lexing.options()));
                // What a later text of this shape is compared against: it must be this text's.
                debug_assert_eq!(reads, RawReads::of(raw, info.lexing.options()), "reads of {raw:?}");
                Some(reads)
            }
            _ => None,
        };
        self.entries.push(Entry {
            text: Box::from(info.sql),
            reads,
            basis: Basis::of(info, generation, changes),
            judgement: judgement.clone(),
        });
    }
}

/// Whether a judgement depends on nothing but what `Kept` compares (and is of one statement:
/// what is bound again; a string of many would hold far more than its text).
fn reusable(judgement: &Judgement) -> bool {
    use crate::sql::Class;
    judgement.decision() == crate::session::Decision::Allow
        && judgement.parts.len() == 1
        && judgement.parts.iter().all(|p| {
            let a = &p.described.analysis;
            p.decision == crate::session::Decision::Allow
                && p.limit.is_none()
                && p.approval.is_none()
                && !p.ambiguous
                && !p.effects.contains(Class::Unknown)
                && a.executes.is_none()
                && a.prepares.is_none()
                && a.declares.is_none()
                && a.fetches.is_none()
                && p.names
                    .as_ref()
                    .is_none_or(|n| n.relations.iter().chain(&n.functions).map(Vec::len).sum::<usize>() <= MAX_NAMES)
        })
}
