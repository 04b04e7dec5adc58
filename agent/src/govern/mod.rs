//! Per-statement judgement: analysis, then the policy verdict (later the mask plan), computed
//! before a statement is forwarded and carried with it to its completion, where the audit
//! trail records it. The protocol session calls the hooks; this module never sees a protocol
//! message, and the audit never judges.
//!
//! A session's policies are selected once per identity (its labels, the governed database, the
//! role it acts as) and again when the policy set is reloaded, the role may have changed, or the
//! workload's pod was relabelled (its next statement is judged by the new labels).

pub mod bench;
pub mod describe;
mod hold;
mod masking;
pub mod reload;
mod reuse;
pub(crate) mod search_path;
pub mod simulate;
pub mod volume;

pub use search_path::contains_ci;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

use crate::{
    approval::Approvals,
    audit::SessionId,
    identity::Identity,
    policy::{Action, PolicySet, Selection, StatementFacts, Subject},
    session::{
        Decision, Judgement, Lexing, PartJudgement, QueryProtocol, Running, SessionFacts, SqlState,
        hooks::{PreparedLookup, ResultColumns, SessionHooks, SessionStart, StatementInfo, Verdict},
    },
    sql::{
        Class, ClassSet, Described, DescriptionCache, ObjectName,
        catalog::{Catalog, CatalogView, settle},
        sqlcommenter_tags,
    },
};
use describe::{DescribedPart, describe_parts, unknown_described};

/// Statements longer than this are described on the blocking pool while the statement is held
/// (the client waits), not on the proxy worker that relays other sessions' traffic.
const DESCRIBE_INLINE_MAX: usize = 16 * 1024;
/// Cursors a session's judgements are remembered for (beyond it, a FETCH of a forgotten cursor
/// is judged unknown).
const MAX_CURSORS: usize = 1024;

/// The policy set in force, numbered: a session re-selects its policies when the number moves.
pub struct PolicySnapshot {
    pub set: PolicySet,
    pub generation: u64,
}

/// What every session's judgement shares: the policy snapshot, the description cache, and the
/// host's approval requests.
pub struct Governor {
    snapshot: ArcSwap<PolicySnapshot>,
    generations: AtomicU64,
    pub descriptions: Arc<DescriptionCache>,
    /// Where held statements wait for an approver (`None`: a hold is refused at once).
    approvals: Option<Arc<Approvals>>,
    /// The key tokens and format-preserving masks are made with (the highest version of the
    /// host's mask keys), and the directory they are read from again on SIGHUP (rotation).
    mask_key: ArcSwap<crate::mask::keys::Key>,
    mask_keys: Option<std::path::PathBuf>,
    /// Statements counted by class and decision, judgement times, masked values.
    metrics: Option<Arc<crate::admin::metrics::Metrics>>,
    /// The windows of `per` volume limits, shared by the host's sessions.
    windows: volume::Windows,
}

/// Which session of which workload a judgement is for (what an approval request shows).
#[derive(Clone)]
pub struct Origin {
    pub session: SessionId,
    pub identity: Arc<Identity>,
}

impl Governor {
    pub fn new(set: PolicySet) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(PolicySnapshot { set, generation: 1 }),
            generations: AtomicU64::new(1),
            descriptions: Arc::new(DescriptionCache::new(4096)),
            approvals: None,
            mask_key: ArcSwap::from_pointee(crate::mask::keys::Key::ephemeral()),
            mask_keys: None,
            metrics: None,
            windows: volume::Windows::default(),
        }
    }

    /// Counts statements, judgement times and masked values in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::admin::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Masks with the highest version of the keys in `dir` (created when there is none), read
    /// again on every SIGHUP: rotation is adding `mask-N+1.key` and sending SIGHUP. Keys that
    /// cannot be read leave an in-memory key (masking still masks; tokens change on restart).
    pub fn with_mask_keys(mut self, dir: std::path::PathBuf) -> Self {
        self.mask_keys = Some(dir);
        self.reload_mask_key();
        self
    }

    /// Reads the mask keys again; keeps the key in force if they cannot be read.
    pub fn reload_mask_key(&self) {
        let Some(dir) = &self.mask_keys else { return };
        match crate::mask::keys::MaskKeys::load_or_create(dir) {
            Ok(keys) => match keys.current() {
                Some(key) => {
                    if key.version != self.mask_key.load().version {
                        tracing::info!(version = key.version, dir = %dir.display(), "masking key in force");
                    }
                    self.mask_key.store(Arc::new(key.clone()));
                }
                None => tracing::warn!(dir = %dir.display(), "no masking key; the key in force stays"),
            },
            Err(e) => tracing::warn!(error = %e, "masking keys unreadable; the key in force stays"),
        }
    }

    /// Held statements wait in `approvals` for a decision.
    pub fn with_approvals(mut self, approvals: Arc<Approvals>) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// The policy set in force now.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.snapshot.load_full()
    }

    /// Puts `set` in force: sessions use it from their next statement. Returns its generation.
    pub fn replace(&self, set: PolicySet) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.snapshot.store(Arc::new(PolicySnapshot { set, generation }));
        generation
    }

    /// Whether any policy that selects a workload with `labels` in `database`, as any role,
    /// can refuse something (then it fails closed where the fail mode follows policies), and
    /// the generation of the set that said so.
    pub fn guards(&self, labels: &BTreeMap<String, String>, database: &str) -> (bool, u64) {
        let snapshot = self.snapshot();
        (snapshot.set.select(&Subject { labels, database, user: None }).guards(), snapshot.generation)
    }

    /// The generation of the set in force.
    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    /// The hooks of one session of `database` by a workload with `labels`; `next` records what
    /// it judged (the audit trail).
    pub fn session(
        self: &Arc<Self>,
        labels: BTreeMap<String, String>,
        database: &str,
        origin: Option<Origin>,
        next: Arc<dyn SessionHooks>,
    ) -> SessionGovern {
        SessionGovern {
            governor: self.clone(),
            labels: ArcSwap::from_pointee(labels),
            relabel: None,
            database: Arc::from(database),
            origin,
            next,
            state: Mutex::new(reuse::Counted::new(SessionState::default())),
            kept: Mutex::new(reuse::Kept::default()),
            described: Arc::new(Mutex::new(None)),
            decided: Arc::new(Mutex::new(None)),
            approved_bind: Mutex::new(None),
            counters: self.metrics.as_ref().map(|m| m.for_database(database)),
        }
    }
}

/// A long text described on the blocking pool while its statement was held.
type DescribedAhead = (Arc<str>, Lexing, bool, Arc<[DescribedPart]>);

#[derive(Default)]
struct SessionState {
    /// The role the session acts as; `None` before start-up and once it may have changed in a
    /// way the proxy cannot read (every `users` filter then matches: more policies apply, and
    /// the most restrictive decision wins, so nothing is widened by not knowing).
    role: Option<Arc<str>>,
    /// The policies selected for it, with the generation of the set they were selected from.
    selection: Option<(u64, Selection)>,
    /// Cursors declared by forwarded statements: what a FETCH of them runs.
    cursors: HashMap<String, (Class, Option<Arc<str>>)>,
    /// The search_path was changed so that an unqualified function may not be the built-in
    /// (`search_path.rs`).
    builtins_untrusted: bool,
    /// What the database said of the session (its catalog), when it was last asked.
    facts: Facts,
    /// Since the facts were read, a forwarded statement may have changed the role, the
    /// search_path or the catalog: they are read again when the server is next idle.
    facts_stale: bool,
    /// The catalog may have changed since it was read (a definition of functions, operators,
    /// types or casts was forwarded): nothing resolved by name is trusted until it is read again.
    catalog_stale: bool,
    /// The policy generation for which the facts were found not needed (no policy guards the
    /// identity): asked again when the set changes.
    facts_not_needed: Option<u64>,
    /// The schemas of the session's search_path as the server last showed it; `None` once a
    /// forwarded statement may have changed it (or the role `$user` stands for).
    path: Option<Arc<[String]>>,
    /// The schemas the server searches for relations (existing ones, in order), known while
    /// `path` is.
    relation_schemas: Option<Arc<[String]>>,
    /// When the facts were last read: they are read again after `FACTS_MAX_AGE` (another
    /// connection may have changed the catalog).
    facts_read: Option<std::time::Instant>,
    /// Moves whenever what the session knows of its database (facts, their staleness) changes.
    facts_epoch: u64,
    /// Masking: the identity's policy, the session's context, declared cursors' plans.
    masking: masking::SessionMasking,
    /// Volume limits: the count of each statement being read (by statement and part; a
    /// portal read in pieces keeps its count), and of each cursor across its FETCHes.
    volumes: HashMap<(u64, usize), Arc<volume::Volume>>,
    cursor_volumes: HashMap<String, Arc<volume::Volume>>,
    /// The limits of the statement each cursor was declared with.
    cursor_limits: HashMap<String, Arc<volume::PartLimit>>,
    /// Cursors that may be WITH HOLD (they outlive their transaction).
    cursors_held: std::collections::HashSet<String>,
}

/// Statement counts kept per session (beyond it they are forgotten, and a portal resumed
/// after that is taken to have returned its cap: fail closed).
const MAX_VOLUMES: usize = 4096;

/// How long a session's facts are trusted before they are read again at an idle point.
const FACTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

/// How far earlier statements of a message may have changed what its later ones resolve to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Narrowed {
    None,
    /// The search_path (or the role `$user` names) may have changed: any schema.
    Path,
    /// Functions, operators, types or casts may have been defined: the catalog is stale.
    Defined,
}

/// The session's facts from the database.
#[derive(Default)]
enum Facts {
    /// Not read yet.
    #[default]
    NotRead,
    Known(Arc<Catalog>),
    /// Reading them failed: why.
    Unavailable(Arc<str>),
}

/// Told a session's new labels when its pod was relabelled.
type Relabelled = Box<dyn Fn(&BTreeMap<String, String>) + Send + Sync>;

/// One session's judgement hooks.
pub struct SessionGovern {
    governor: Arc<Governor>,
    /// The labels statements are judged by: the identity's, as its pod has them now.
    labels: ArcSwap<BTreeMap<String, String>>,
    /// The workload's pod, followed for relabelling; and what to tell when it was.
    relabel: Option<(crate::identity::Relabel, Relabelled)>,
    database: Arc<str>,
    origin: Option<Origin>,
    next: Arc<dyn SessionHooks>,
    /// What the session knows, counting its changes: a judgement is given again only while
    /// it did not change (`reuse`).
    state: Mutex<reuse::Counted<SessionState>>,
    /// Judgements that may be given again (a prepared statement bound again).
    kept: Mutex<reuse::Kept>,
    described: Arc<Mutex<Option<DescribedAhead>>>,
    /// The decision on the message held for approval, taken by its judgement when asked again.
    decided: Arc<Mutex<Option<hold::Decided>>>,
    /// The Bind approved last, until the next message is judged.
    approved_bind: Mutex<Option<hold::ApprovedBind>>,
    /// The session's database's counters, looked up once.
    counters: Option<crate::admin::metrics::DatabaseCounters>,
}

impl SessionGovern {
    fn lock(&self) -> std::sync::MutexGuard<'_, reuse::Counted<SessionState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the workload's pod: when it is relabelled, the next statement is judged by its
    /// new labels, and `changed` is told them.
    pub fn with_relabel(
        mut self,
        relabel: Option<crate::identity::Relabel>,
        changed: impl Fn(&BTreeMap<String, String>) + Send + Sync + 'static,
    ) -> Self {
        self.relabel = relabel.map(|r| (r, Box::new(changed) as Relabelled));
        self
    }

    /// The labels statements are judged by (as last taken in by `refresh_labels`).
    fn labels(&self) -> Arc<BTreeMap<String, String>> {
        self.labels.load_full()
    }

    /// Takes in a relabelling of the workload's pod (one atomic load unless the node's pods
    /// changed). Called where a judgement starts (and where facts or a bound portal's judgement
    /// are about to be relied on), so that one judgement never mixes old and new labels. Never
    /// called with the state locked: a relabelling resets what was decided under the old labels.
    fn refresh_labels(&self) -> Arc<BTreeMap<String, String>> {
        if let Some((relabel, changed)) = &self.relabel
            && let Some(now) = relabel.changed()
            && **self.labels.load() != now
        {
            let now = Arc::new(now);
            self.labels.store(now.clone());
            {
                let mut state = self.lock();
                // Everything chosen for the old labels is chosen again: policies, whether facts
                // are needed, the masking policy and context, judgements made ahead.
                state.selection = None;
                state.facts_not_needed = None;
                state.facts_epoch += 1;
            }
            changed(&now);
            return now;
        }
        self.labels.load_full()
    }

    /// The policies that apply to this session under `snapshot`.
    fn selection(&self, snapshot: &PolicySnapshot) -> Selection {
        let mut state = self.lock();
        if let Some((generation, selection)) = &state.selection
            && *generation == snapshot.generation
        {
            return selection.clone();
        }
        // Loaded under the lock: a relabelling stores the labels before it takes the lock to
        // void the selection, so a selection made here is of the new labels or voided after.
        let labels = self.labels();
        // Until the server said who the session acts as (a role's default role, a pipelined
        // SET ROLE), every `users` filter applies: the role is not known yet.
        let role_known = matches!(state.facts, Facts::Known(_)) || state.facts_not_needed == Some(snapshot.generation);
        let user = if role_known { state.role.as_deref() } else { None };
        let subject = Subject { labels: &labels, database: &self.database, user };
        let selection = snapshot.set.select(&subject);
        state.selection = Some((snapshot.generation, selection.clone()));
        selection
    }

    /// The statements of the message, described (inline, or from the blocking pool's work).
    fn parts(&self, info: &StatementInfo<'_>) -> Option<Vec<DescribedPart>> {
        match info.protocol {
            QueryProtocol::FunctionCall => {
                Some(vec![unknown_part(info.sql, "fast-path function call: any function, run without SQL")])
            }
            QueryProtocol::Extended if !info.text_known => {
                Some(vec![unknown_part(info.sql, "runs a statement or portal whose text the proxy does not know")])
            }
            protocol => {
                let simple = protocol == QueryProtocol::Simple;
                // Taken whatever it holds: it serves only the statement it was described for.
                let ahead = self.described.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((_, _, _, parts)) = ahead.filter(|(sql, lexing, was_simple, _)| {
                    *lexing == info.lexing && *was_simple == simple && **sql == *info.sql
                }) {
                    return Some(parts.to_vec());
                }
                let options = info.lexing.options();
                // A prepared statement parsed, bound and executed again is one cache lookup
                // away: only a text not described yet is held for the blocking pool.
                if info.sql.len() > DESCRIBE_INLINE_MAX
                    && (simple || !self.governor.descriptions.is_cached(info.sql, options))
                {
                    return None;
                }
                Some(describe_parts(&self.governor.descriptions, info.sql, info.lexing, simple))
            }
        }
    }

    /// (Debug builds: every test.) A judgement given again is what judging afresh gives now:
    /// `reuse` is safe only while `judge` reads nothing but what `Kept` compares and the
    /// counted state, which this checks on every one given again.
    #[cfg(debug_assertions)]
    fn check_reused(&self, info: &StatementInfo<'_>, kept: &Judgement, changes: u64) {
        let Some(parts) = self.parts(info) else { return };
        let fresh = self.judge(info, parts);
        if fresh.basis.0 != kept.basis.0 || self.lock().changes() != changes {
            // The policy set was replaced, or the state changed (the other direction of the
            // session), since it was looked up: the next statement misses the kept ones.
            return;
        }
        let summary = |j: &Judgement| {
            let parts: Vec<String> = j
                .parts
                .iter()
                .map(|p| {
                    format!(
                        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                        p.span,
                        p.decision,
                        p.class,
                        p.effects,
                        p.class_reason,
                        p.policy,
                        p.rule,
                        p.reason,
                        (p.approval.is_some(), p.limit.is_some()),
                        p.mask,
                        p.would.as_ref().map(|w| (w.decision, &w.policy, &w.rule, &w.reason, &w.mask)),
                        p.names,
                        p.ambiguous,
                    )
                })
                .collect();
            format!("{parts:?} {:?} {:?}", j.role, j.basis)
        };
        assert_eq!(summary(&fresh), summary(kept), "a judgement given again differs from a fresh one: {}", info.sql);
    }

    /// Holds the message (the client waits) while a blocking thread describes its text (too
    /// long to describe inline); it is then asked again.
    fn describe_aside(&self, info: &StatementInfo<'_>) -> Verdict {
        let cache = self.governor.descriptions.clone();
        let sql: Arc<str> = Arc::from(info.sql);
        let slot = self.described.clone();
        let (lexing, simple) = (info.lexing, info.protocol == QueryProtocol::Simple);
        Verdict::Hold(Box::pin(async move {
            let text = sql.clone();
            let parts = tokio::task::spawn_blocking(move || describe_parts(&cache, &text, lexing, simple))
                .await
                .unwrap_or_else(|_| vec![unknown_part(&sql, "describing the statement failed")]);
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((sql, lexing, simple, Arc::from(parts)));
            Verdict::AskAgain
        }))
    }

    /// Judges the described statements of a message.
    fn judge(&self, info: &StatementInfo<'_>, parts: Vec<DescribedPart>) -> Judgement {
        let snapshot = self.governor.snapshot();
        let selection = self.selection(&snapshot);
        let message_tags = (parts.len() > 1 && info.lexing.ascii_safe).then(|| Arc::new(sqlcommenter_tags(info.sql)));
        let mut declared_limits: HashMap<String, Arc<volume::PartLimit>> = HashMap::new();
        let mut declared_names: std::collections::HashSet<String> = std::collections::HashSet::new();
        let (mut cursors, mut builtins_untrusted, facts, path) = {
            let state = self.lock();
            let facts = match (&state.facts, state.catalog_stale) {
                (_, true) => Facts::Unavailable(Arc::from(
                    "the session defined functions, operators, types or casts since the catalog was read",
                )),
                (Facts::Known(catalog), false) => Facts::Known(catalog.clone()),
                (Facts::Unavailable(why), false) => Facts::Unavailable(why.clone()),
                (Facts::NotRead, false) if selection.guards() => {
                    Facts::Unavailable(Arc::from("not read yet: the server was never idle before this statement"))
                }
                (Facts::NotRead, false) => Facts::NotRead,
            };
            let path = state.path.clone().zip(state.relation_schemas.clone());
            (state.cursors.clone(), state.builtins_untrusted, facts, path)
        };
        let view = match (&facts, &path) {
            (Facts::Known(catalog), Some((path, _))) => CatalogView::OnPath(catalog, path),
            (Facts::Known(catalog), None) => CatalogView::Known(catalog),
            (Facts::Unavailable(why), _) => CatalogView::Unavailable(why),
            (Facts::NotRead, _) => CatalogView::BuiltinsOnly,
        };
        let options = info.lexing.options();
        let mask_policy = self.mask_policy(&snapshot.set, snapshot.generation, &selection);
        let would_mask_policy = self.would_mask_policy(&snapshot.set, snapshot.generation, &selection);
        let mut declared_would: HashMap<String, Arc<crate::mask::plan::PartMask>> = HashMap::new();
        let mut redefined_would = false;
        // Cursors declared by earlier statements of the same message.
        let mut declared_here: HashMap<String, Arc<crate::mask::plan::PartMask>> = HashMap::new();
        // DDL earlier in the same message (a dropped or renamed relation changes what a name
        // resolves to): later statements cannot be planned against the catalog.
        let mut redefined_here = false;
        let mut narrowed = Narrowed::None;
        // A PREPARE earlier in the same string is what a later EXECUTE of it runs.
        let mut prepared_here: HashMap<String, Arc<str>> = HashMap::new();
        let parts = parts
            .into_iter()
            .map(|part| {
                let analysis = &part.described.analysis;
                if analysis.prepares.is_some()
                    && !part.ambiguous
                    && let Some(crate::sql::PreparedCommand::Prepare { name, body }) =
                        crate::sql::prepared_statement_command(
                            info.sql.get(part.span.clone()).unwrap_or_default(),
                            info.lexing.options(),
                        )
                {
                    prepared_here.insert(name, Arc::from(body));
                }
                let lookup = |name: &str| {
                    prepared_here.get(name).map(|body| (body.clone(), info.lexing)).or_else(|| (info.prepared)(name))
                };
                // What earlier statements of the same message may have changed narrows the view.
                let view = match (narrowed, view) {
                    (Narrowed::Defined, CatalogView::Known(_) | CatalogView::OnPath(..)) => CatalogView::Unavailable(
                        "an earlier statement of the message defines functions, operators, types or casts",
                    ),
                    (Narrowed::Path, CatalogView::OnPath(catalog, _)) => CatalogView::Known(catalog),
                    (_, view) => view,
                };
                let (mut class, mut effects, mut class_reason, analysis_of) =
                    self.resolve(&lookup, &part.described, &cursors, view);
                let analysis = &analysis_of.analysis;
                let raw = info.sql.get(part.span.clone()).unwrap_or_default();
                // All that is read of the raw text here (`reuse` gives a judgement again to a
                // statement of the same shape whose text reads the same).
                let reads = search_path::RawReads::of(raw, options);
                if part.ambiguous || effects.contains(Class::Unknown) || reads.defines {
                    narrowed = Narrowed::Defined;
                } else if narrowed == Narrowed::None && reads.may_change_path(&part.described.analysis, effects) {
                    narrowed = Narrowed::Path;
                }
                // Without the catalog, built-in names are trusted only while pg_catalog is first.
                if matches!(view, CatalogView::BuiltinsOnly)
                    && builtins_untrusted
                    && (analysis.functions.iter().any(|f| f.schema.is_none())
                        || crate::sql::catalog::resolves_by_name(&analysis_of.normalised))
                {
                    // Judged with built-in knowledge that the session's search_path voids.
                    effects.insert(Class::Unknown);
                    class = Class::Unknown;
                    class_reason = Some(Arc::from(
                        "resolves a function, operator or type by an unqualified name after the session may have put another schema before pg_catalog in its search_path: it may not be the built-in",
                    ));
                }
                // A value bound to a parameter declared of a type whose input runs user code
                // runs it, whatever the text says (`select $1` with the type of a domain with a
                // CHECK).
                if let Some(why) = crate::sql::catalog::unsafe_parameter(view, info.parameter_types) {
                    effects.insert(Class::Unknown);
                    class = Class::Unknown;
                    class_reason = Some(Arc::from(why));
                }
                // A change earlier in the same string applies to the statements after it.
                if part.ambiguous || reads.may_distrust_judged(&part.described.analysis, effects) {
                    builtins_untrusted = true;
                }
                // Where unqualified names may resolve: the schemas the server showed, unless an
                // earlier statement of the message may have changed them.
                let searched = match view {
                    CatalogView::OnPath(..) => path.as_ref().map(|(_, relations)| &relations[..]),
                    _ => None,
                };
                let relations: Vec<Vec<ObjectName>> =
                    analysis.relations.iter().map(|r| candidates(r, searched)).collect();
                if options.dialect.is_mysql()
                    && effects.intersects(ClassSet::of(&[Class::Write, Class::Ddl]))
                    && relations.iter().flatten().any(mysql_system_table)
                {
                    // The analyser sees `mysql.user` written only when it is named so; under
                    // USE mysql (or where the current database is not known) an unqualified
                    // name reaches the accounts and privileges too.
                    effects.insert(Class::Dcl);
                    class = effects.primary().unwrap_or(Class::Dcl);
                    class_reason = Some(Arc::from(
                        "writes the mysql schema (accounts, privileges, plugins), reached through the current database",
                    ));
                }
                let catalog = matches!(view, CatalogView::Known(_) | CatalogView::OnPath(..));
                // Functions stay "any schema": a built-in's name resolves to pg_catalog unless
                // the catalog shows a user object that may stand for it (judged above).
                let functions: Vec<Vec<ObjectName>> =
                    analysis.functions.iter().map(|f| candidates(f, None)).collect();
                let tags = message_tags.clone().unwrap_or_else(|| part.described.tags.clone());
                let facts = StatementFacts {
                    class,
                    effects,
                    relations: &relations,
                    functions: &functions,
                    unscoped: analysis.unscoped,
                    tags: &tags,
                    reason: class_reason.as_deref(),
                };
                let mut decided = selection.decide(&snapshot.set, &facts);
                let denied_before_masking = decided.action == Action::Deny;
                // Plans the statement's masking under `policy` (the would-be verdict's: `would`).
                let any_schema = narrowed != Narrowed::None;
                let plan = |policy: &Arc<crate::policy::masking::MaskPolicy>,
                            declared: &HashMap<String, Arc<crate::mask::plan::PartMask>>,
                            redefined: bool,
                            would: bool| {
                    self.plan_part(
                        policy,
                        snapshot.generation,
                        info,
                        raw,
                        part.ambiguous,
                        &part.described,
                        &analysis_of,
                        &lookup,
                        any_schema,
                        declared,
                        redefined,
                        would,
                    )
                };
                let mut mask = None;
                let mut mask_refusal = None;
                if decided.action != Action::Deny
                    && let Some(policy) = &mask_policy
                {
                    match plan(policy, &declared_here, redefined_here, false) {
                        Ok(plan) => {
                            if let Some(name) = &plan.declares {
                                declared_here.insert(name.clone(), plan.clone());
                            }
                            mask = Some(plan)
                        }
                        Err(why) => {
                            decided = masking_refusal(why);
                            mask_refusal = Some(decided.clone());
                        }
                    }
                }
                // What a statement does cannot be known: refused for an identity whose policies
                // refuse anything (fail closed), whatever their rules say of it.
                decided = crate::policy::fail_closed(decided, &facts, selection.guards());
                // Volume limits: those its facts match and, for a FETCH, its cursor's.
                let fetched = part.described.analysis.fetches.as_ref();
                // A FETCH: its cursor's limits and count (declared earlier in this message:
                // that cursor's, not an older one's, counted from nothing).
                let (declared, cursor_volume) = match fetched {
                    Some(c) if declared_names.contains(c) => (declared_limits.get(c).cloned(), Some(Arc::default())),
                    Some(c) => {
                        let state = self.lock();
                        (state.cursor_limits.get(c).cloned(), state.cursor_volumes.get(c).cloned())
                    }
                    None => (None, None),
                };
                let limit = if selection.has_limits() || declared.is_some() {
                    let mut limits = selection.limits(&snapshot.set, &facts);
                    if let Some(declared) = &declared {
                        for l in &declared.limits {
                            if !limits.iter().any(|m| m.policy == l.policy && m.rule == l.rule) {
                                limits.push(l.clone());
                            }
                        }
                    }
                    (!limits.is_empty()).then(|| {
                        let windows: Vec<_> = limits.iter().filter(|l| l.cap.per.is_some()).cloned().collect();
                        let windows = match windows.is_empty() {
                            true => Vec::new(),
                            false => {
                                let tenant = self.tenant();
                                windows.into_iter().map(|l| (l.clone(), self.governor.windows.get(&l, &tenant))).collect()
                            }
                        };
                        let cursor = fetched.map(|_| cursor_volume.clone().unwrap_or_default());
                        Arc::new(volume::PartLimit { limits, windows, cursor })
                    })
                } else {
                    None
                };
                if let Some(limit) = &limit {
                    if decided.action != Action::Deny
                        && let Some((by, why)) = limit.refusal()
                    {
                        decided = crate::policy::Decision {
                            action: Action::Deny,
                            policy: Some(by.policy),
                            rule: Some(by.rule),
                            reason: why,
                            approval: None,
                        };
                    }
                    if let Some(name) = &part.described.analysis.declares {
                        declared_limits.insert(name.clone(), limit.clone());
                    }
                }
                if let Some(name) = &part.described.analysis.declares {
                    declared_names.insert(name.clone());
                }
                // The would-be verdict (dry-run policies and rules enforced): recorded, never
                // enforced. Masking is planned again only where a dry-run masking rule applies.
                let would = selection.decide_would(&snapshot.set, &facts).map(|mut w| {
                    let mut would_mask = None;
                    match (&would_mask_policy, w.action) {
                        (_, Action::Deny) => {}
                        (Some(policy), _) => match plan(policy, &declared_would, redefined_would, true) {
                            Ok(plan) => {
                                if let Some(name) = &plan.declares {
                                    declared_would.insert(name.clone(), plan.clone());
                                }
                                would_mask = Some(plan);
                            }
                            Err(why) => w = masking_refusal(why),
                        },
                        (None, _) => match (&mask_refusal, &mask_policy) {
                            (Some(refused), _) => w = refused.clone(),
                            // The real verdict refused before masking was planned: planned here
                            // with the masking in force, for the would-be verdict only.
                            (None, Some(policy)) if denied_before_masking => match plan(policy, &declared_here, redefined_here, false) {
                                Ok(plan) => would_mask = Some(plan),
                                Err(why) => w = masking_refusal(why),
                            },
                            (None, _) => would_mask = mask.clone(),
                        },
                    }
                    let w = crate::policy::fail_closed(w, &facts, selection.would_guard());
                    Arc::new(crate::session::WouldBe {
                        decision: Decision::of(w.action),
                        policy: w.policy,
                        rule: w.rule,
                        reason: Arc::from(w.reason),
                        mask: would_mask,
                    })
                });
                if mask_policy.is_some() && effects.contains(Class::Ddl) {
                    redefined_here = true;
                }
                if would_mask_policy.is_some() && effects.contains(Class::Ddl) {
                    redefined_would = true;
                }
                if let Some(name) = &part.described.analysis.declares {
                    // A FETCH later in the same message reads the cursor declared here.
                    cursors.insert(name.clone(), (class, class_reason.clone()));
                }
                PartJudgement {
                    span: part.span,
                    described: part.described,
                    ambiguous: part.ambiguous,
                    class,
                    effects,
                    class_reason,
                    approval: decided.approval.clone(),
                    decision: Decision::of(decided.action),
                    policy: decided.policy,
                    rule: decided.rule,
                    reason: Arc::from(decided.reason),
                    mask,
                    would,
                    limit,
                    names: Some(Arc::new(crate::session::JudgedNames {
                        relations,
                        functions,
                        unscoped: analysis.unscoped,
                        catalog,
                    })),
                    raw_reads: Some(reads),
                }
            })
            .collect();
        let (role, basis) = {
            let state = self.lock();
            let known = matches!(state.facts, Facts::Known(_)) || state.facts_not_needed == Some(snapshot.generation);
            (known.then(|| state.role.clone()).flatten(), (snapshot.generation, state.facts_epoch))
        };
        Judgement { parts, role, basis }
    }

    /// The class a statement is judged as, and the description whose relations and functions
    /// count: its own, or for SQL EXECUTE and FETCH, what they run.
    fn resolve(
        &self,
        prepared: &PreparedLookup<'_>,
        described: &Described,
        cursors: &HashMap<String, (Class, Option<Arc<str>>)>,
        view: CatalogView<'_>,
    ) -> (Class, ClassSet, Option<Arc<str>>, Described) {
        let analysis = &described.analysis;
        if let Some(name) = &analysis.executes {
            return match prepared(name) {
                Some((sql, lexing)) => {
                    let body = describe_parts(&self.governor.descriptions, &sql, lexing, false)
                        .into_iter()
                        .next()
                        .map_or_else(|| unknown_described("an empty prepared statement"), |p| p.described);
                    let settled = settle(&body.analysis, &body.normalised, view);
                    let reason = Some(Arc::from(format!(
                        "EXECUTE of prepared statement {name}: {}",
                        settled.reason.as_deref().unwrap_or(settled.class.as_str())
                    )));
                    (settled.class, settled.effects, reason, body)
                }
                None => {
                    let why = format!("EXECUTE of prepared statement {name}, which the proxy did not see prepared");
                    (
                        Class::Unknown,
                        ClassSet::of(&[Class::Unknown]),
                        Some(Arc::from(why.as_str())),
                        unknown_described(&why),
                    )
                }
            };
        }
        if let Some(name) = &analysis.fetches {
            return match cursors.get(name) {
                Some((class, reason)) => (
                    *class,
                    ClassSet::of(&[*class]),
                    Some(Arc::from(format!(
                        "FETCH from cursor {name}, declared as {class}{}",
                        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                    ))),
                    described.clone(),
                ),
                None => {
                    let why = format!("FETCH from cursor {name}, which the proxy did not see declared");
                    (Class::Unknown, ClassSet::of(&[Class::Unknown]), Some(Arc::from(why.as_str())), described.clone())
                }
            };
        }
        let settled = settle(analysis, &described.normalised, view);
        (settled.class, settled.effects, settled.reason, described.clone())
    }

    /// Counts a message's statements under `decision` (the part that decided it; the others
    /// did not run).
    fn count(&self, judgement: &Judgement, decision: Decision) {
        if let Some(counters) = &self.counters
            && let Some((_, part)) = judgement.refusing_part()
        {
            counters.statement(part.class.as_str(), decision.as_str());
        }
    }

    /// The tenant whose windows the session's reads count in (`Identity::tenant_key`).
    fn tenant(&self) -> String {
        self.origin.as_ref().map_or_else(|| "unattributed".to_string(), |o| o.identity.tenant_key())
    }

    /// Forgets the counts of `running`'s statement once it ended (a portal suspended keeps its).
    fn forget_volumes(&self, running: &Running) {
        let mut state = self.lock();
        let id = running.resumes.unwrap_or(running.id);
        if state.volumes.keys().any(|(s, _)| *s == id) {
            state.volumes.retain(|(s, _), _| *s != id);
        }
    }

    /// Counts the statements whose would-be verdict differs from the real one (of a refused
    /// message, those up to the one that refused it: the others never ran).
    fn count_would(&self, judgement: &Judgement) {
        let Some(metrics) = &self.governor.metrics else { return };
        let upto = judgement.refusing_part().map_or(judgement.parts.len(), |(i, _)| i + 1);
        for part in &judgement.parts[..upto] {
            if let Some(change) = part.would_change()
                && let Some(would) = &part.would
            {
                // A mask change is the masking rule's, named by a column it would mask.
                let masking_rule = || {
                    would
                        .mask
                        .as_ref()
                        .and_then(|m| m.masked.iter().find(|c| c.method != "exempt").map(|c| c.rule.clone()))
                };
                let (policy, rule) = match change {
                    "mask" => (String::new(), masking_rule().unwrap_or_else(|| "masking".into())),
                    _ => (
                        would.policy.as_deref().unwrap_or("").to_string(),
                        would.rule.as_deref().unwrap_or("default").to_string(),
                    ),
                };
                metrics.would(&self.database, change, &policy, &rule);
            }
        }
    }

    /// A refusal of the message, recorded by `next`.
    fn refuse(&self, info: &StatementInfo<'_>, judgement: Judgement) -> Verdict {
        let (sqlstate, message) = refusal(&judgement);
        self.count(&judgement, Decision::Deny);
        self.count_would(&judgement);
        self.next.on_refused(info, &judgement);
        Verdict::Deny { sqlstate, message }
    }
}

/// Whether a completed COMMIT or ROLLBACK (by its normalised text) may have left the session's
/// transaction open: `ROLLBACK TO [SAVEPOINT]`, or `COMMIT`/`ROLLBACK PREPARED` (of another
/// transaction). Keywords cannot be quoted, so any "to" or "prepared" in the text, whatever its
/// case and wherever (a comment included), counts: when unsure, the transaction did not end.
fn ends_no_transaction(normalised: &str) -> bool {
    let lower = normalised.to_ascii_lowercase();
    lower.contains("to") || lower.contains("prepared")
}

/// The decision on a statement masking cannot guarantee (`why`).
fn masking_refusal(why: String) -> crate::policy::Decision {
    crate::policy::Decision {
        action: Action::Deny,
        policy: None,
        rule: Some(Arc::from("masking")),
        reason: format!("{why}; refused"),
        approval: None,
    }
}

/// The SQLSTATE and message a refused message's client gets: the policy, rule and reason
/// (54000 when a volume limit refused it, 42501 otherwise).
fn refusal(judgement: &Judgement) -> (SqlState, String) {
    let Some((i, part)) = judgement.refusing_part() else {
        return (SqlState::INSUFFICIENT_PRIVILEGE, "warden: statement refused".into());
    };
    let by_limit = part.limit.as_ref().is_some_and(|l| {
        l.limits.iter().any(|x| Some(&x.policy) == part.policy.as_ref() && Some(&x.rule) == part.rule.as_ref())
    });
    let sqlstate = if by_limit { SqlState::PROGRAM_LIMIT_EXCEEDED } else { SqlState::INSUFFICIENT_PRIVILEGE };
    let which = match judgement.parts.len() {
        1 => String::new(),
        _ => format!(" {} of {}", i + 1, judgement.parts.len()),
    };
    let by = match (&part.policy, &part.rule) {
        (Some(p), Some(r)) => format!("policy \"{p}\" rule \"{r}\""),
        (Some(p), None) => format!("policy \"{p}\" (its default)"),
        (None, Some(r)) => format!("rule \"{r}\""),
        _ => "policy".to_string(),
    };
    let message = match part.decision {
        Decision::Hold => format!(
            "warden: statement{which} requires approval by {by}: {}; approvals are not available on this agent yet, so it is refused",
            part.reason
        ),
        _ => format!("warden: statement{which} refused by {by}: {}", part.reason),
    };
    (sqlstate, message)
}

/// A part standing for a message whose text cannot be read.
fn unknown_part(sql: &str, reason: &str) -> DescribedPart {
    DescribedPart { span: 0..sql.len(), described: unknown_described(reason), ambiguous: true }
}

/// The names a relation may resolve to: itself when qualified; when not, one per schema the
/// server last said it searches (the session's temporary schema as `pg_temp`; pg_catalog only
/// for a `pg_` name, as every relation there is one), or any schema (`schema: None`) when that
/// is not known now.
/// Whether a relation a MySQL statement names may be one of the `mysql` schema's (its
/// accounts, privileges, plugins and functions): named in it, or an unqualified name of one of
/// its tables where the current database is not known.
fn mysql_system_table(name: &ObjectName) -> bool {
    const TABLES: &[&str] = &[
        "user",
        "global_priv",
        "db",
        "tables_priv",
        "columns_priv",
        "procs_priv",
        "proxies_priv",
        "roles_mapping",
        "role_edges",
        "default_roles",
        "func",
        "plugin",
        "servers",
        "proc",
        "event",
        "password_history",
        "global_grants",
        "component",
        "general_log",
        "slow_log",
        "gtid_executed",
        "gtid_slave_pos",
        "transaction_registry",
        "innodb_table_stats",
        "innodb_index_stats",
        "table_stats",
        "column_stats",
        "index_stats",
        "help_topic",
        "help_category",
        "help_keyword",
        "help_relation",
    ];
    const PREFIXES: &[&str] = &["time_zone", "slave_", "replication_"];
    match name.schema.as_deref() {
        Some(schema) => schema.eq_ignore_ascii_case("mysql"),
        None => {
            let lower = name.name.to_ascii_lowercase();
            TABLES.contains(&lower.as_str()) || PREFIXES.iter().any(|p| lower.starts_with(p))
        }
    }
}

fn candidates(name: &ObjectName, path: Option<&[String]>) -> Vec<ObjectName> {
    match (&name.schema, path) {
        (None, Some(path)) if !path.is_empty() => {
            let mut out: Vec<ObjectName> = Vec::with_capacity(path.len());
            for schema in path {
                if schema == "pg_catalog" && !name.name.starts_with("pg_") {
                    continue;
                }
                let schema = if schema.starts_with("pg_temp_") { "pg_temp" } else { schema.as_str() };
                let candidate = ObjectName::new(Some(schema), &name.name);
                if !out.contains(&candidate) {
                    out.push(candidate);
                }
            }
            if out.is_empty() {
                // Nothing searched holds it: it does not resolve (an error), or resolves later.
                out.push(name.clone());
            }
            out
        }
        _ => vec![name.clone()],
    }
}

impl SessionHooks for SessionGovern {
    fn inspects_statements(&self) -> bool {
        true
    }

    fn on_session_start(&self, start: &SessionStart<'_>) {
        {
            let mut state = self.lock();
            state.role = start.role.or(start.user).map(Arc::from);
            state.selection = None;
            // A search_path set at start-up holds from the first statement (a role's or a
            // database's default one is known only from the facts).
            if start.search_path.is_some_and(|path| !search_path::setting_trusts_builtins(path)) {
                state.builtins_untrusted = true;
            }
            // A session started again (MySQL's COM_CHANGE_USER) may be in another database:
            // unqualified names reach any schema until the facts are read again.
            if state.path.is_some() || state.relation_schemas.is_some() {
                state.path = None;
                state.relation_schemas = None;
                state.facts_stale = true;
                state.facts_epoch += 1;
            }
        }
        self.next.on_session_start(start);
    }

    fn wants_facts(&self) -> bool {
        let snapshot = self.governor.snapshot();
        let labels = self.refresh_labels();
        let without_relations = matches!(&self.lock().facts, Facts::Known(c) if c.relations.is_none());
        // Facts read before masking applied lack the relations masking resolves through.
        let missing_relations = without_relations && self.wants_relations();
        let mut state = self.lock();
        let unread = matches!(state.facts, Facts::NotRead);
        let old = state.facts_read.is_some_and(|t| t.elapsed() > FACTS_MAX_AGE);
        if !(unread || old || state.facts_stale || state.catalog_stale || state.role.is_none() || missing_relations) {
            return false;
        }
        if state.facts_not_needed == Some(snapshot.generation) {
            return false;
        }
        // Needed where a policy may refuse something of this identity, whatever role it acts
        // as (the facts tell the role).
        let subject = Subject { labels: &labels, database: &self.database, user: None };
        let selection = snapshot.set.select(&subject);
        // Dry-run policies count: their would-be verdicts are judged with the facts enforcing
        // them would have (reading facts changes nothing a session is allowed).
        if selection.guards() || selection.would_guard() {
            true
        } else {
            state.facts_not_needed = Some(snapshot.generation);
            // The role counts as known from now on: what was chosen while it was not (every
            // `users` filter applied) is chosen again.
            state.selection = None;
            state.facts_epoch += 1;
            false
        }
    }

    fn wants_relations(&self) -> bool {
        let snapshot = self.governor.snapshot();
        let labels = self.labels();
        let subject = Subject { labels: &labels, database: &self.database, user: None };
        let selection = snapshot.set.select(&subject);
        // The would-be verdict's masking (dry-run masking rules) resolves through them too.
        selection.masking(&snapshot.set, &labels).is_some() || selection.masking_would(&snapshot.set, &labels).is_some()
    }

    fn judgement_current(&self, judgement: &Judgement) -> bool {
        // A relabelling moves the facts epoch: a portal bound under the old labels is judged
        // again.
        self.refresh_labels();
        judgement.basis == (self.governor.snapshot().generation, self.lock().facts_epoch)
    }

    fn on_facts(&self, facts: Result<SessionFacts, String>) {
        let mut state = self.lock();
        state.facts_epoch += 1;
        state.facts_stale = false;
        match facts {
            Ok(facts) => {
                state.catalog_stale = false;
                state.masking.would_catalog_stale = false;
                state.facts_read = Some(std::time::Instant::now());
                // The schemas searched now, and those the setting names that do not exist yet.
                let mut path = facts.schemas.clone();
                path.extend(search_path::schemas(&facts.search_path, &facts.current_user));
                state.path = Some(Arc::from(path));
                state.relation_schemas = Some(Arc::from(facts.schemas.clone()));
                state.facts = Facts::Known(facts.catalog);
                // Selected again: with the role now known (before, every `users` filter applied).
                state.role = Some(Arc::from(facts.current_user));
                state.selection = None;
                // The server's word: the search_path in force now (nothing is pending).
                let first = facts.schemas.iter().find(|s| !s.starts_with("pg_temp_"));
                state.builtins_untrusted = !search_path::setting_trusts_builtins(&facts.search_path)
                    || first.is_some_and(|s| s != "pg_catalog");
            }
            Err(why) => {
                // Asked again at the next idle point.
                state.facts_stale = true;
                state.selection = None;
                tracing::warn!(database = %self.database, error = %why, "session facts unavailable; statements that resolve names are judged unknown");
                state.facts = Facts::Unavailable(Arc::from(why));
            }
        }
    }

    fn before_statement(&self, info: &StatementInfo<'_>) -> Verdict {
        let started = std::time::Instant::now();
        // A relabelling is taken in once, before anything of this judgement is chosen.
        self.refresh_labels();
        // The judgement this statement got last, when nothing it was made from changed since.
        let mut changes = self.lock().changes();
        let generation = self.governor.generation();
        let mut reused = self.kept.lock().unwrap_or_else(|p| p.into_inner()).get(info, generation, changes);
        let parts = match reused {
            Some(_) => {
                // Taken whatever it holds, as `parts` takes it.
                self.described.lock().unwrap_or_else(|p| p.into_inner()).take();
                Vec::new()
            }
            None => match self.parts(info) {
                Some(parts) => {
                    // Or the judgement of the same statement with other literals (under the
                    // state as it is now: the other direction may have changed it meanwhile).
                    changes = self.lock().changes();
                    reused = self
                        .kept
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_by_shape(info, &parts, generation, changes);
                    parts
                }
                None => return self.describe_aside(info),
            },
        };
        // A decision on this message, when it was held for approval; taken whatever it holds, so
        // it never serves another message.
        let decided = self.decided.lock().unwrap_or_else(|p| p.into_inner()).take().filter(|d| d.is_for(info));
        let bind = self.approved_bind.lock().unwrap_or_else(|p| p.into_inner()).take();
        let judgement = match reused {
            Some(judgement) => {
                #[cfg(debug_assertions)]
                self.check_reused(info, &judgement, changes);
                if let Some(metrics) = &self.governor.metrics {
                    metrics.judgement_reused();
                }
                judgement
            }
            None => {
                let judgement = Arc::new(self.judge(info, parts));
                // Kept only when judging it changed nothing (a first judgement fills the
                // session's selection and masking context) and nothing else did meanwhile.
                if self.lock().changes() == changes {
                    self.kept.lock().unwrap_or_else(|p| p.into_inner()).keep(
                        info,
                        judgement.basis.0,
                        changes,
                        &judgement,
                    );
                }
                judgement
            }
        };
        if let Some(metrics) = &self.governor.metrics {
            metrics.judged_in(started.elapsed());
        }
        if info.step == crate::session::hooks::Step::Bind && !info.portal.is_empty() {
            // Portals and SQL cursors share one namespace: the name may now stand for this
            // portal (or the Bind fails, as a cursor holds it). A SQL FETCH of it is judged as
            // of a cursor not seen declared; its limits only grow (a later DECLARE the server
            // refuses must not leave this portal readable under weaker ones).
            let name = String::from_utf8_lossy(info.portal).into_owned();
            let limit = judgement.parts.iter().find_map(|p| p.limit.clone());
            let mut state = self.lock();
            // (Changed only when there is something to change: any change voids the
            // judgements kept to be given again.)
            if state.cursors.contains_key(&name) {
                state.cursors.remove(&name);
            }
            // SQL names a cursor by an identifier (at most 63 bytes): a longer portal name
            // cannot be FETCHed. Beyond MAX_CURSORS names, new ones are not remembered.
            let reachable = name.len() <= 63
                && (state.cursor_limits.len() < MAX_CURSORS || state.cursor_limits.contains_key(&name));
            if let Some(limit) = limit.filter(|_| reachable) {
                let joined = match state.cursor_limits.get(&name) {
                    Some(before) => Arc::new(before.join(&limit)),
                    None => limit,
                };
                state.cursor_limits.insert(name, joined);
            }
        }
        if info.step == crate::session::hooks::Step::Bind
            && !info.portal.is_empty()
            && judgement.decision() == Decision::Allow
            && let [part] = judgement.parts.as_slice()
            && let Some(plan) = &part.mask
        {
            // SQL FETCH can read a named protocol portal: what it returns is this plan's.
            self.remember_cursor(&String::from_utf8_lossy(info.portal), plan.clone());
        }
        if info.step == crate::session::hooks::Step::Bind
            && !info.portal.is_empty()
            && let [part] = judgement.parts.as_slice()
            && let Some(plan) = part.would.as_ref().and_then(|w| w.mask.as_ref())
        {
            self.remember_cursor_in(&String::from_utf8_lossy(info.portal), plan.clone(), true);
        }
        match judgement.decision() {
            Decision::Allow => match self.next.before_statement(info) {
                // The audit trail may still refuse it (audit.required with the ring unavailable).
                Verdict::Allow(_) => Verdict::Allow(Some(judgement)),
                other => other,
            },
            Decision::Hold => {
                if decided.is_none() {
                    self.count(&judgement, Decision::Hold);
                }
                self.hold(info, Arc::unwrap_or_clone(judgement), decided, bind)
            }
            Decision::Deny => self.refuse(info, Arc::unwrap_or_clone(judgement)),
        }
    }

    fn wants_rows(&self) -> bool {
        self.next.wants_rows()
    }

    fn filters_results(&self) -> bool {
        self.masking_applies().is_some()
    }

    fn result_filter(
        &self,
        running: Option<&Running>,
        part: usize,
        columns: &[crate::session::ResultColumn],
        copy: bool,
    ) -> Option<Box<dyn crate::session::hooks::ResultFilter>> {
        self.filter(running, part, columns, copy)
    }

    fn scrub_fields(&self, running: Option<&Running>, fields: &[(u8, &[u8])]) -> Option<Vec<(u8, Vec<u8>)>> {
        self.scrub(running, fields)
    }

    fn scrub_notification(&self, channel: &[u8], payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        self.scrub_notify(channel, payload)
    }

    fn on_forward(&self, running: &Running) {
        if let (Some(counters), Some(judgement)) = (&self.counters, &running.judgement) {
            for part in &judgement.parts {
                counters.statement(part.class.as_str(), Decision::Allow.as_str());
            }
            if running.resumes.is_none() {
                self.count_would(judgement);
            }
        }
        if let Some(judgement) = &running.judgement {
            // Whether masking applies matters only to a transaction's end, DDL and DISCARD
            // (asking costs a selection and locks): not asked for any other statement.
            let asks = judgement.parts.iter().any(|p| {
                p.effects.intersects(ClassSet::of(&[Class::Transaction, Class::Ddl]))
                    || running.sql.get(p.span.clone()).is_some_and(|raw| search_path::contains_ci(raw, "discard"))
            });
            let (masked, would_masked) =
                if asks { (self.masking_applies().is_some(), self.would_masking_applies()) } else { (false, false) };
            let mut state = self.lock();
            let options = running.lexing.options();
            for part in &judgement.parts {
                let analysis = &part.described.analysis;
                let raw = running.sql.get(part.span.clone()).unwrap_or_default();
                // What judging read of this text (a judgement given by shape carries its kept
                // reads, equal to this text's: the condition it was given on).
                let reads = match part.raw_reads {
                    Some(reads) => {
                        debug_assert_eq!(reads, search_path::RawReads::of(raw, options), "reads of {raw:?}");
                        reads
                    }
                    None => search_path::RawReads::of(raw, options),
                };
                if part.ambiguous || reads.may_distrust_judged(analysis, part.effects) {
                    state.builtins_untrusted = true;
                    state.facts_stale = true;
                    state.facts_epoch += 1;
                }
                if (state.path.is_some() || state.relation_schemas.is_some())
                    && (part.ambiguous
                        || reads.may_change_path(analysis, part.effects)
                        || (masked && search_path::contains_ci(raw, "discard")))
                {
                    state.path = None;
                    state.relation_schemas = None;
                    state.facts_stale = true;
                    state.facts_epoch += 1;
                }
                if part.effects.contains(Class::Transaction) && analysis.relations.is_empty() {
                    // A transaction's end closes its cursors (a WITH HOLD one, fetched later,
                    // is then untraced): plans of cursors that may be gone are forgotten.
                    // (Only when there are any: a change of the state voids the judgements
                    // kept to be given again.)
                    if masked && !state.masking.cursors.is_empty() {
                        state.masking.cursors.clear();
                    }
                    if would_masked && !state.masking.would_cursors.is_empty() {
                        state.masking.would_cursors.clear();
                    }
                }
                if would_masked && part.effects.contains(Class::Ddl) && !state.masking.would_catalog_stale {
                    // As below, for the would-be verdict's masking alone: its own flag, so that
                    // nothing real is judged differently.
                    state.masking.would_catalog_stale = true;
                    state.facts_stale = true;
                }
                let relations_read = matches!(&state.facts, Facts::Known(c) if c.relations.is_some());
                if (masked || relations_read) && part.effects.contains(Class::Ddl) && !state.catalog_stale {
                    // Masking resolves relations and columns by the catalog: a created, dropped
                    // or renamed one is read again before it is trusted (also where masking
                    // does not apply yet: a reload may make it apply before the next read).
                    state.catalog_stale = true;
                    state.facts_stale = true;
                    state.facts_epoch += 1;
                }
                if part.ambiguous || part.effects.contains(Class::Unknown) || reads.defines {
                    state.catalog_stale = true;
                    state.facts_stale = true;
                    state.facts_epoch += 1;
                }
                if let Some(plan) = &part.mask
                    && let Some(name) = &plan.declares
                {
                    drop(state);
                    self.remember_cursor(name, plan.clone());
                    state = self.lock();
                }
                if let Some(plan) = part.would.as_ref().and_then(|w| w.mask.as_ref())
                    && let Some(name) = &plan.declares
                {
                    drop(state);
                    self.remember_cursor_in(name, plan.clone(), true);
                    state = self.lock();
                }
                if let Some(name) = &analysis.declares {
                    // Beyond MAX_CURSORS names a new one is not remembered: a FETCH of it is
                    // judged as of a cursor not seen declared (refused where guarded). Nothing
                    // remembered is dropped to make room: a cursor's limits must not go while
                    // the cursor may live (they go when its transaction ends, or a DECLARE of
                    // its name completes).
                    if state.cursors.len() < MAX_CURSORS || state.cursors.contains_key(name) {
                        state.cursors.insert(name.clone(), (part.class, part.class_reason.clone()));
                    }
                    if search_path::contains_ci(raw, "hold")
                        && (state.cursors_held.len() < MAX_CURSORS || state.cursors_held.contains(name))
                    {
                        state.cursors_held.insert(name.clone());
                    }
                    // Joined with what the name had: the server may refuse this DECLARE and keep
                    // the cursor it names (its DECLARE CURSOR completion replaces them).
                    if let Some(limit) = &part.limit
                        && (state.cursor_limits.len() < MAX_CURSORS || state.cursor_limits.contains_key(name))
                    {
                        let joined = match state.cursor_limits.get(name) {
                            Some(before) => Arc::new(before.join(limit)),
                            None => limit.clone(),
                        };
                        state.cursor_limits.insert(name.clone(), joined);
                    }
                }
                if describe::may_change_session_identity(part.effects) && state.role.is_some() {
                    // SET ROLE, SET SESSION AUTHORIZATION, or code that may run them: the role
                    // is no longer known.
                    state.role = None;
                    state.selection = None;
                    state.facts_stale = true;
                    state.facts_epoch += 1;
                    state.path = None;
                }
            }
        }
        self.next.on_forward(running);
    }

    fn on_refused(&self, info: &StatementInfo<'_>, judgement: &Judgement) {
        self.next.on_refused(info, judgement);
    }

    fn on_row_description(&self, running: Option<&Running>, columns: &dyn ResultColumns) {
        self.next.on_row_description(running, columns);
    }

    fn on_row(&self, running: Option<&Running>, row: &[u8]) {
        self.next.on_row(running, row);
    }

    fn on_complete(&self, running: Option<&Running>, tag: &str) {
        if let Some(r) = running {
            let completing = r.judgement.as_ref().and_then(|j| j.parts.get(r.completed as usize));
            if (tag == "COMMIT" || tag == "ROLLBACK")
                && let Some(part) = completing
                && !ends_no_transaction(&part.described.normalised)
            {
                // The transaction ended: the server closed its cursors but those WITH HOLD.
                // (When there are none, the state is left unchanged: a change voids the
                // judgements kept to be given again.)
                let mut state = self.lock();
                let closed = |name: &String| !state.cursors_held.contains(name);
                if state.cursors.keys().any(closed)
                    || state.cursor_limits.keys().any(closed)
                    || state.cursor_volumes.keys().any(closed)
                {
                    let held = std::mem::take(&mut state.cursors_held);
                    state.cursors.retain(|name, _| held.contains(name));
                    state.cursor_limits.retain(|name, _| held.contains(name));
                    state.cursor_volumes.retain(|name, _| held.contains(name));
                    state.cursors_held = held;
                }
            }
            if tag == "DECLARE CURSOR"
                && let Some(part) = completing
                && let Some(name) = part.described.analysis.declares.as_ref()
            {
                // The server declares a name only when no cursor holds it: a new cursor, with
                // this statement's limits, counted from nothing.
                let mut state = self.lock();
                state.cursor_volumes.remove(name);
                match &part.limit {
                    Some(limit)
                        if state.cursor_limits.len() < MAX_CURSORS || state.cursor_limits.contains_key(name) =>
                    {
                        state.cursor_limits.insert(name.clone(), limit.clone())
                    }
                    // Not remembered beyond MAX_CURSORS: nor is its class, so a FETCH of it is
                    // refused where guarded.
                    Some(_) => None,
                    None => state.cursor_limits.remove(name),
                };
            }
            self.forget_volumes(r);
        }
        self.next.on_complete(running, tag);
    }

    fn on_error(&self, running: Option<&Running>, sqlstate: SqlState) {
        if let Some(r) = running {
            self.forget_volumes(r);
        }
        self.next.on_error(running, sqlstate);
    }

    fn limits_results(&self) -> bool {
        let snapshot = self.governor.snapshot();
        // A cursor declared under limits stays limited whatever selects the session now.
        self.selection(&snapshot).has_limits() || !self.lock().cursor_limits.is_empty()
    }

    fn result_limit(&self, running: &Running, part: usize) -> Option<Arc<dyn crate::session::hooks::ResultLimit>> {
        let judgement = running.judgement.as_ref()?;
        let limit = judgement.parts.get(part.min(judgement.parts.len().saturating_sub(1)))?.limit.as_ref()?;
        let key = (running.resumes.unwrap_or(running.id), part);
        let fetched = judgement.parts.get(part).and_then(|p| p.described.analysis.fetches.as_ref());
        let volume = {
            let mut state = self.lock();
            if let (Some(name), Some(judged)) = (fetched, &limit.cursor) {
                // Every FETCH of the cursor adds to its count.
                state.cursor_volumes.entry(name.clone()).or_insert_with(|| judged.clone()).clone()
            } else {
                if state.volumes.len() >= MAX_VOLUMES && !state.volumes.contains_key(&key) {
                    state.volumes.clear();
                }
                match state.volumes.get(&key) {
                    Some(v) => v.clone(),
                    // A portal resumed whose count was forgotten: taken to be at its cap.
                    None if running.resumes.is_some() => volume::Volume::exhausted(),
                    None => {
                        let v = Arc::new(volume::Volume::default());
                        state.volumes.insert(key, v.clone());
                        v
                    }
                }
            }
        };
        Some(limit.measure(volume))
    }

    fn on_stopped(&self, running: &Running, cut: &crate::session::hooks::Cut) {
        self.forget_volumes(running);
        if let Some(metrics) = &self.governor.metrics {
            metrics.stopped(&self.database, &cut.policy, &cut.rule);
        }
        self.next.on_stopped(running, cut);
    }

    fn on_suspended(&self, running: &Running) {
        self.next.on_suspended(running);
    }

    fn on_query_end(&self, running: &Running) {
        self.next.on_query_end(running);
    }

    fn on_not_run(&self, running: &Running) {
        self.next.on_not_run(running);
    }

    fn on_abandoned(&self, running: &Running) {
        self.forget_volumes(running);
        self.next.on_abandoned(running);
    }

    fn on_cancel_request(&self) {
        if let (Some(approvals), Some(origin)) = (&self.governor.approvals, &self.origin)
            && approvals.cancel_session(origin.session)
        {
            tracing::info!(database = %self.database, session = origin.session.0, "held statement cancelled by its client");
        }
        self.next.on_cancel_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::hooks::AllowAll;

    #[test]
    fn a_savepoint_rollback_is_not_the_end_of_the_transaction_in_any_spelling() {
        for open in
            ["ROLLBACK TO SAVEPOINT s", "rollback/**/to s", "Rollback To s", "COMMIT PREPARED ?", "rollback prepared ?"]
        {
            assert!(ends_no_transaction(open), "{open}");
        }
        for ended in ["COMMIT", "rollback", "ROLLBACK WORK", "abort transaction", "end", "commit and chain"] {
            assert!(!ends_no_transaction(ended), "{ended}");
        }
    }

    fn info<'a>(sql: &'a str, protocol: QueryProtocol, prepared: &'a PreparedLookup<'a>) -> StatementInfo<'a> {
        StatementInfo {
            sql,
            text_known: true,
            prepared,
            protocol,
            parameters: None,
            parameter_types: &[],
            function_oid: None,
            lexing: Lexing {
                standard_conforming_strings: true,
                dialect: crate::session::Dialect::Postgres,
                settled: true,
                ascii_safe: true,
            },
            step: match protocol {
                QueryProtocol::Extended => crate::session::hooks::Step::Prepare,
                _ => crate::session::hooks::Step::Run,
            },
            portal: b"",
            message: 1,
        }
    }

    #[test]
    fn mask_keys_rotate_when_read_again() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = crate::test_dir("warden-govern-keys-");
        let keys = dir.path().join("keys");
        let governor = Governor::new(PolicySet::empty()).with_mask_keys(keys.clone());
        assert_eq!(governor.mask_key.load().version, 1, "the first key is created");
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(keys.join("mask-2.key")).unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 32]).unwrap();
        drop(f);
        governor.reload_mask_key();
        assert_eq!(governor.mask_key.load().version, 2, "the highest version masks after a reload");
        // A key that cannot be read keeps the one in force.
        std::fs::write(keys.join("mask-3.key"), b"short").unwrap();
        governor.reload_mask_key();
        assert_eq!(governor.mask_key.load().version, 2);
    }

    fn session(policy: &str) -> SessionGovern {
        let set = PolicySet::from_sources(&[("p.yaml".into(), policy.to_string())]).expect("policy");
        let s = Arc::new(Governor::new(set)).session(BTreeMap::new(), "main", None, Arc::new(AllowAll));
        s.on_facts(Ok(facts("\"$user\", public", Catalog::default())));
        s
    }

    fn facts(search_path: &str, catalog: Catalog) -> SessionFacts {
        SessionFacts {
            current_user: "agent".into(),
            session_user: "login".into(),
            search_path: search_path.into(),
            schemas: Vec::new(),
            catalog: Arc::new(catalog),
        }
    }

    #[test]
    fn unqualified_relations_resolve_through_the_schemas_the_server_searches() {
        let path = ["pg_temp_3".to_string(), "pg_catalog".to_string(), "app".to_string(), "public".to_string()];
        let names = |n: &str| {
            candidates(&ObjectName::new(None, n), Some(&path)).iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(names("accounts"), ["pg_temp.accounts", "app.accounts", "public.accounts"]);
        assert_eq!(names("pg_class"), ["pg_temp.pg_class", "pg_catalog.pg_class", "app.pg_class", "public.pg_class"]);
        let qualified = ObjectName::new(Some("billing"), "t");
        assert_eq!(candidates(&qualified, Some(&path)), vec![qualified.clone()]);
        assert_eq!(candidates(&ObjectName::new(None, "t"), None), vec![ObjectName::new(None, "t")], "not known: any");
        assert_eq!(
            candidates(&ObjectName::new(None, "t"), Some(&["pg_catalog".to_string()])),
            vec![ObjectName::new(None, "t")]
        );
    }

    #[test]
    fn a_carried_judgement_stands_until_the_policy_set_or_the_sessions_facts_change() {
        let s = session(GUARD);
        let none = |_: &str| None;
        let i = info("select 1", QueryProtocol::Extended, &none);
        let judgement = s.judge(&i, s.parts(&i).expect("parts"));
        assert!(s.judgement_current(&judgement));
        s.on_facts(Ok(facts("\"$user\", public", Catalog::default())));
        assert!(!s.judgement_current(&judgement), "the facts were read again");
        let judgement = s.judge(&i, s.parts(&i).expect("parts"));
        let set = PolicySet::from_sources(&[("p.yaml".into(), GUARD.to_string())]).expect("policy");
        s.governor.replace(set);
        assert!(!s.judgement_current(&judgement), "the policy set was reloaded");
    }

    #[test]
    fn without_facts_built_in_names_are_trusted_while_pg_catalog_stays_first() {
        let allow_all = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules: []\n  default: allow\n";
        let set = PolicySet::from_sources(&[("p.yaml".into(), allow_all.to_string())]).expect("policy");
        let s = Arc::new(Governor::new(set)).session(BTreeMap::new(), "main", None, Arc::new(AllowAll));
        assert!(!s.wants_facts(), "nothing guards it: not asked");
        let none = |_: &str| None;
        let class = |sql: &str| {
            let i = info(sql, QueryProtocol::Simple, &none);
            s.judge(&i, s.parts(&i).expect("parts")).parts.last().map(|p| p.class)
        };
        assert_eq!(class("select upper('a')"), Some(Class::Read));
        assert_eq!(class("set search_path = public, pg_catalog; select upper('a')"), Some(Class::Unknown));
        // A search_path set at start-up holds from the first statement.
        for (path, trusted) in [("evil, pg_catalog", false), ("pg_catalog, evil", true)] {
            let s = Arc::new(Governor::new(
                PolicySet::from_sources(&[("p.yaml".into(), allow_all.to_string())]).expect("policy"),
            ))
            .session(BTreeMap::new(), "main", None, Arc::new(AllowAll));
            s.on_session_start(&crate::session::hooks::SessionStart {
                user: Some("bot"),
                database: Some("main"),
                role: None,
                search_path: Some(path),
            });
            let i = info("select upper('a')", QueryProtocol::Simple, &none);
            let class = s.judge(&i, s.parts(&i).expect("parts")).parts.last().map(|p| p.class);
            assert_eq!(class, Some(if trusted { Class::Read } else { Class::Unknown }), "{path}");
        }
    }

    #[test]
    fn the_sessions_facts_decide_names_role_and_search_path() {
        let set = PolicySet::from_sources(&[("p.yaml".into(), GUARD.to_string())]).expect("policy");
        let s = Arc::new(Governor::new(set)).session(BTreeMap::new(), "main", None, Arc::new(AllowAll));
        let none = |_: &str| None;
        let select = |s: &SessionGovern, sql: &str| s.before_statement(&info(sql, QueryProtocol::Simple, &none));
        assert!(s.wants_facts(), "a guarded session asks for its facts");
        assert!(matches!(select(&s, "select lower('a')"), Verdict::Deny { .. }), "judged before they came: closed");
        assert!(matches!(select(&s, "select 1"), Verdict::Allow(_)), "nothing resolved by name");
        let mut catalog = Catalog::default();
        catalog.add_function("public", "lower", crate::sql::catalog::Volatility::Volatile, None);
        catalog.add_function("app", "report", crate::sql::catalog::Volatility::Stable, None);
        s.on_facts(Ok(facts("\"$user\", public", catalog)));
        assert!(!s.wants_facts(), "read once");
        assert_eq!(s.lock().role.as_deref(), Some("agent"), "the role the server says it acts as");
        assert!(matches!(select(&s, "select lower('a')"), Verdict::Deny { .. }), "a user overload");
        assert!(matches!(select(&s, "select upper('a'), app.report()"), Verdict::Allow(_)));
        // A user function the catalog shows to be a read changes nothing the facts hold.
        let read_info = info("select app.report()", QueryProtocol::Simple, &none);
        let mut read = Running::new(1, Arc::from("select app.report()"), QueryProtocol::Simple, read_info.lexing);
        read.judgement = Some(Arc::new(s.judge(&read_info, s.parts(&read_info).expect("parts"))));
        s.on_forward(&read);
        assert!(!s.wants_facts(), "not read again after a read");
        // A definition forwarded makes the catalog stale until it is read again.
        let ddl = "create function app.f() returns int language sql as 'select 1'";
        let ddl_info = info(ddl, QueryProtocol::Simple, &none);
        let judgement = s.judge(&ddl_info, s.parts(&ddl_info).expect("parts"));
        let mut running = Running::new(1, Arc::from(ddl), QueryProtocol::Simple, ddl_info.lexing);
        running.judgement = Some(Arc::new(judgement));
        s.on_forward(&running);
        assert!(s.wants_facts());
        assert!(matches!(select(&s, "select app.report()"), Verdict::Deny { .. }));
        // The server's search_path decides which schemas an unqualified name reaches.
        let shadow = || {
            let mut c = Catalog::default();
            c.add_function("public", "upper", crate::sql::catalog::Volatility::Volatile, None);
            c
        };
        s.on_facts(Ok(facts("public, pg_catalog", shadow())));
        assert!(matches!(select(&s, "select upper('a')"), Verdict::Deny { .. }));
        s.on_facts(Ok(facts("pg_catalog, app", shadow())));
        assert!(matches!(select(&s, "select upper('a')"), Verdict::Allow(_)), "public is not searched");
        let mut ops = Catalog::default();
        ops.add_volatile_operator("evil", "+");
        s.on_facts(Ok(facts("\"$user\", public", ops)));
        assert!(matches!(select(&s, "select upper('a'), 1 + 1"), Verdict::Allow(_)), "evil is not searched");
        s.on_facts(Err("permission denied for table pg_proc".into()));
        let Verdict::Deny { message, .. } = select(&s, "select upper('a')") else {
            panic!("allowed without a catalog")
        };
        assert!(message.contains("permission denied"), "{message}");
    }

    const GUARD: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n  default: allow\n";

    /// The judgement a Bind of `sql` gets, allowed.
    fn bound(s: &SessionGovern, sql: &str) -> Arc<Judgement> {
        let none = |_: &str| None;
        let mut i = info(sql, QueryProtocol::Extended, &none);
        i.step = crate::session::hooks::Step::Bind;
        match s.before_statement(&i) {
            Verdict::Allow(Some(judgement)) => judgement,
            _ => panic!("{sql}: not allowed"),
        }
    }

    /// The names a simple query's judgement holds, allowed (made afresh by every judging: the
    /// same ones, it was given again).
    fn sent_names(s: &SessionGovern, sql: &str) -> Arc<crate::session::JudgedNames> {
        let none = |_: &str| None;
        match s.before_statement(&info(sql, QueryProtocol::Simple, &none)) {
            Verdict::Allow(Some(j)) => j.parts[0].names.clone().expect("judged by policy"),
            _ => panic!("{sql}: not allowed"),
        }
    }

    /// `sql` forwarded and completed with `tag`, as judged for a Bind.
    fn run(s: &SessionGovern, sql: &str, tag: &str) {
        let none = |_: &str| None;
        let lexing = info(sql, QueryProtocol::Extended, &none).lexing;
        let mut running = Running::new(1, Arc::from(sql), QueryProtocol::Extended, lexing);
        let judgement = bound(s, sql);
        running.judgement = Some(judgement);
        s.on_forward(&running);
        s.on_complete(Some(&running), tag);
    }

    #[test]
    fn a_statement_bound_again_gets_its_judgement_again_until_anything_it_was_made_from_changes() {
        let s = session(GUARD);
        let sql = "select abalance from accounts where aid = $1";
        bound(&s, sql);
        let kept = bound(&s, sql);
        assert!(Arc::ptr_eq(&kept, &bound(&s, sql)), "given again");
        // A transaction of it, begun and committed, changes nothing the judgement was made from.
        run(&s, "begin", "BEGIN");
        run(&s, sql, "SELECT 1");
        run(&s, "commit", "COMMIT");
        assert!(Arc::ptr_eq(&kept, &bound(&s, sql)), "a transaction of reads changes nothing");
        assert!(!Arc::ptr_eq(&kept, &bound(&s, "select abalance from accounts where aid = $2")), "another text");
        // Bound to a named portal (a SQL FETCH could read it): given again all the same.
        let none = |_: &str| None;
        let mut named = info(sql, QueryProtocol::Extended, &none);
        named.step = crate::session::hooks::Step::Bind;
        named.portal = b"p1";
        let to_p1 = || match s.before_statement(&named) {
            Verdict::Allow(Some(judgement)) => judgement,
            _ => panic!("not allowed"),
        };
        let (first, again) = (to_p1(), to_p1());
        assert!(Arc::ptr_eq(&first, &again), "a named portal bound again");
        // Anything the session knows, changed: judged again.
        run(&s, "set search_path = app, public", "SET");
        let after_set = bound(&s, sql);
        assert!(!Arc::ptr_eq(&kept, &after_set), "the search_path may have changed");
        s.on_facts(Ok(facts("\"$user\", public", Catalog::default())));
        let after_facts = bound(&s, sql);
        assert!(!Arc::ptr_eq(&after_set, &after_facts), "the facts were read again");
        let again = bound(&s, sql);
        let set = PolicySet::from_sources(&[("p.yaml".into(), GUARD.to_string())]).expect("policy");
        s.governor.replace(set);
        assert!(!Arc::ptr_eq(&again, &bound(&s, sql)), "the policy set was reloaded");
        // What is refused is judged every time; what reads a session's cursors is never kept.
        let none = |_: &str| None;
        let mut ddl = info("drop table accounts", QueryProtocol::Extended, &none);
        ddl.step = crate::session::hooks::Step::Bind;
        assert!(matches!(s.before_statement(&ddl), Verdict::Deny { .. }));
        assert!(matches!(s.before_statement(&ddl), Verdict::Deny { .. }));
        run(&s, "declare c cursor for select 1", "DECLARE CURSOR");
        let fetch = "fetch 10 from c";
        let first = bound(&s, fetch);
        assert!(!Arc::ptr_eq(&first, &bound(&s, fetch)), "a FETCH reads what its cursor was declared as");
        // The same text lexed otherwise is another statement: one string literal with
        // standard_conforming_strings off, a DROP after a string with it on.
        let text = "select 'a\\'; drop table accounts; --'";
        let mut off = info(text, QueryProtocol::Simple, &none);
        off.lexing.standard_conforming_strings = false;
        for _ in 0..3 {
            assert!(matches!(s.before_statement(&off), Verdict::Allow(Some(_))), "one string: a read");
        }
        let on = info(text, QueryProtocol::Simple, &none);
        assert!(matches!(s.before_statement(&on), Verdict::Deny { .. }), "a DROP, whatever was kept");
    }

    /// The simple protocol sends each statement with its literals in its text: a statement of
    /// a kept one's shape is given its judgement, in its own place, unless judging reads its
    /// literals (or the kept one's).
    #[test]
    fn a_statement_sent_again_with_other_literals_gets_the_judgement_of_its_shape() {
        let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl, dcl]}, action: deny}\n  default: allow\n";
        let s = session(policy);
        let none = |_: &str| None;
        let simple = |sql: &str| match s.before_statement(&info(sql, QueryProtocol::Simple, &none)) {
            Verdict::Allow(Some(judgement)) => judgement,
            _ => panic!("{sql}: not allowed"),
        };
        // (A judgement's names are made afresh by every judging: shared, it was given again.)
        let names = |j: &Judgement| j.parts[0].names.clone().expect("judged by policy");
        // (The first judgement fills the session's selection: kept from the second on.)
        simple("select abalance from accounts where aid = 1");
        let kept = simple("select abalance from accounts where aid = 1");
        let other = "  select abalance from accounts where aid = 123456;";
        let shaped = simple(other);
        assert!(Arc::ptr_eq(&names(&kept), &names(&shaped)), "given by its shape");
        assert_eq!(shaped.parts[0].span, 2..other.len() - 1, "in its own place");
        assert_eq!(&*shaped.parts[0].described.normalised, "select abalance from accounts where aid = ?");
        // Literals judging reads (a word of the search_path, a temporary object): judged
        // afresh, unless a kept text of the shape read the same.
        let path = simple("select abalance from accounts where aid = 'search_path'");
        assert!(!Arc::ptr_eq(&names(&kept), &names(&path)), "judged afresh");
        let temp = simple("select abalance from accounts where aid = 'TEMP'");
        assert!(!Arc::ptr_eq(&names(&kept), &names(&temp)) && !Arc::ptr_eq(&names(&path), &names(&temp)));
        let discard = simple("select abalance from accounts where aid = 'discard'");
        assert!(Arc::ptr_eq(&names(&temp), &names(&discard)), "read alike: a temporary object or a DISCARD");
        assert!(Arc::ptr_eq(&names(&kept), &names(&simple("select abalance from accounts where aid = 7"))));
        // A literal whose value decides the class is part of the shape: set_config's setting.
        simple("select set_config('work_mem', '64MB', false)");
        simple("select set_config('work_mem', '64MB', false)");
        assert!(matches!(
            s.before_statement(&info("select set_config('role', 'admin', false)", QueryProtocol::Simple, &none)),
            Verdict::Deny { .. }
        ));
        // Other lexing, another step or protocol, or a change of the state: not given.
        let mut off = info("select abalance from accounts where aid = 8", QueryProtocol::Simple, &none);
        off.lexing.standard_conforming_strings = false;
        let Verdict::Allow(Some(j)) = s.before_statement(&off) else { panic!("not allowed") };
        assert!(!Arc::ptr_eq(&names(&kept), &names(&j)), "lexed otherwise");
        let j = bound(&s, "select abalance from accounts where aid = 9");
        assert!(!Arc::ptr_eq(&names(&kept), &names(&j)), "a Bind");
        run(&s, "set search_path = app, public", "SET");
        let j = simple("select abalance from accounts where aid = 10");
        assert!(!Arc::ptr_eq(&names(&kept), &names(&j)), "the search_path may have changed");
    }

    /// pgbench's TPC-B in the simple protocol: 11 shapes a transaction (a delta's minus sign is
    /// an operator), each given its kept judgement from the second transaction on.
    #[test]
    fn a_session_keeps_the_judgements_of_the_shapes_it_runs_in_turn() {
        let s = session(GUARD);
        let names = |sql: &str| sent_names(&s, sql);
        let transaction = |t: i64| {
            let mut out = vec![names("BEGIN;")];
            for delta in [t, -t] {
                out.push(names(&format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {t};")));
                out.push(names(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {t};")));
                out.push(names(&format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {t};")));
                out.push(names(&format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {t};")));
                out.push(names(&format!(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({t}, 1, 2, {delta}, CURRENT_TIMESTAMP);"
                )));
            }
            out.push(names("END;"));
            out
        };
        // (The first judgement fills the session's selection: kept from the second on.)
        transaction(1);
        let first = transaction(2);
        for t in 3..6 {
            let again = transaction(t);
            assert!(first.iter().zip(&again).all(|(a, b)| Arc::ptr_eq(a, b)), "transaction {t}: every one given again");
        }
    }

    /// A session under `policy` whose facts show `crm.customers` and `public.customers` (id,
    /// name, ssn), with the search_path `public, crm`.
    fn masked_session(policy: &str) -> SessionGovern {
        session_with_customers(policy, &[(100, "crm"), (101, "public")], &["pg_catalog", "public", "crm"])
    }

    /// A session under `policy` whose facts show a `customers` (id, name, ssn) in each of
    /// `relations` (oid, schema), and `searched` as the schemas its search_path reaches.
    fn session_with_customers(policy: &str, relations: &[(u32, &str)], searched: &[&str]) -> SessionGovern {
        let s = session(policy);
        let mut catalog_relations = crate::sql::catalog::Relations::default();
        for &(oid, schema) in relations {
            catalog_relations.add_relation(oid, schema, "customers", 'r', false);
            for (attnum, name) in [(1, "id"), (2, "name"), (3, "ssn")] {
                let column =
                    crate::sql::catalog::ColumnInfo { attnum, name: name.into(), type_oid: 25, generated: false };
                catalog_relations.add_column(oid, column);
            }
        }
        let mut catalog = Catalog::default();
        catalog.relations = Some(catalog_relations);
        let mut facts = facts(&searched.join(", "), catalog);
        facts.schemas = searched.iter().map(|s| s.to_string()).collect();
        s.on_facts(Ok(facts));
        s
    }

    const MASK_CRM_SSN: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules:\n    - {name: ssn, match: {columns: [crm.customers.ssn]}, mask: redact}\n  default: allow\n";

    /// The last part of `sql` judged: its decision, and whether its plan masks a column.
    fn masks(s: &SessionGovern, sql: &str) -> (Decision, bool) {
        let none = |_: &str| None;
        let i = info(sql, QueryProtocol::Simple, &none);
        let judgement = s.judge(&i, s.parts(&i).expect("parts"));
        let last = judgement.parts.last().expect("a part").clone();
        (last.decision, last.mask.is_some_and(|m| !m.masked.is_empty()))
    }

    /// `SET SCHEMA 'x'` is `SET search_path TO x`: a relation named after it may be x's, and
    /// masking resolves it in every schema until the facts are read again.
    #[test]
    fn set_schema_moves_where_masking_resolves_names_as_set_search_path_does() {
        let none = |_: &str| None;
        // crm is not searched: customers is public's.
        let searched = ["pg_catalog", "public"];
        let s = session_with_customers(MASK_CRM_SSN, &[(100, "crm"), (101, "public")], &searched);
        assert_eq!(masks(&s, "SELECT upper(ssn) FROM customers"), (Decision::Allow, false), "public's, unprotected");
        for set in ["SET SCHEMA 'crm'", "SET search_path = crm", "set local schema 'crm'"] {
            let s = session_with_customers(MASK_CRM_SSN, &[(100, "crm"), (101, "public")], &searched);
            let (decision, masked) = masks(&s, &format!("{set}; SELECT upper(ssn) FROM customers"));
            assert!(decision != Decision::Allow || masked, "{set}: ssn may be crm's");
            // Forwarded alone, it voids the schemas the facts showed until they are read again.
            let i = info(set, QueryProtocol::Simple, &none);
            let mut running = Running::new(1, Arc::from(set), QueryProtocol::Simple, i.lexing);
            running.judgement = Some(Arc::new(s.judge(&i, s.parts(&i).expect("parts"))));
            s.on_forward(&running);
            assert!(s.wants_facts(), "{set}");
            let (decision, masked) = masks(&s, "SELECT upper(ssn) FROM customers");
            assert!(decision != Decision::Allow || masked, "{set}, then: ssn may be crm's");
        }
    }

    /// Same-named relations on the search_path whose columns are in another order: by position
    /// (`*`) a value may be any column of either, so such a result is masked strictest; by
    /// name a column is what it is in each.
    #[test]
    fn same_named_relations_of_different_shapes_are_masked_by_any_column() {
        let s = session(MASK_CRM_SSN);
        let mut relations = crate::sql::catalog::Relations::default();
        for (oid, schema, columns) in [(100, "crm", ["id", "name", "ssn"]), (101, "public", ["id", "ssn", "name"])] {
            relations.add_relation(oid, schema, "customers", 'r', false);
            for (attnum, name) in (1..).zip(columns) {
                let column =
                    crate::sql::catalog::ColumnInfo { attnum, name: name.into(), type_oid: 25, generated: false };
                relations.add_column(oid, column);
            }
        }
        let mut catalog = Catalog::default();
        catalog.relations = Some(relations);
        let mut facts = facts("public, crm", catalog);
        facts.schemas = vec!["pg_catalog".into(), "public".into(), "crm".into()];
        s.on_facts(Ok(facts));
        let none = |_: &str| None;
        let i = info("SELECT * FROM customers", QueryProtocol::Simple, &none);
        let judgement = s.judge(&i, s.parts(&i).expect("parts"));
        let plan = judgement.parts[0].mask.clone().expect("a plan");
        // `*` is out of order: the result gets the strictest mask everywhere.
        assert!(!plan.exact, "{plan:?}");
        assert!(matches!(plan.all, Some(crate::mask::plan::ColumnMask::Mask { .. })), "{plan:?}");
        // By name, a column is what it is in each of them: `id` is no protected column.
        let i = info("SELECT id, upper(name) FROM customers WHERE id = $1", QueryProtocol::Extended, &none);
        let judgement = s.judge(&i, s.parts(&i).expect("parts"));
        assert_eq!(judgement.decision(), Decision::Allow, "{judgement:?}");
        let plan = judgement.parts[0].mask.clone().expect("a plan");
        assert!(plan.columns.iter().all(|c| matches!(c, crate::mask::plan::ColumnMask::Clear)), "{plan:?}");
    }

    /// A definition forwarded while no masking rule applies still makes a catalog holding
    /// relations stale: a reload may make masking apply before the next read.
    #[test]
    fn a_definition_makes_the_relations_read_stale_whether_or_not_masking_applies() {
        let s = session_with_customers(GUARD, &[(101, "public")], &["pg_catalog", "public"]);
        assert!(s.masking_applies().is_none());
        assert!(!s.lock().catalog_stale);
        let none = |_: &str| None;
        let ddl = "create table crm.customers (ssn text)";
        let i = info(ddl, QueryProtocol::Simple, &none);
        let mut running = Running::new(1, Arc::from(ddl), QueryProtocol::Simple, i.lexing);
        running.judgement = Some(Arc::new(s.judge(&i, s.parts(&i).expect("parts"))));
        s.on_forward(&running);
        assert!(s.lock().catalog_stale);
    }

    /// The server may read a relation later in the search_path than the first of that name
    /// the catalog showed (a statement prepared before the first was created, or the first
    /// dropped by another session since): a name is masked as every one it may reach. Another
    /// session's temporary table is never the session's own.
    #[test]
    fn an_unqualified_name_is_masked_as_every_relation_of_that_name_its_search_path_reaches() {
        let probe = "SELECT upper(ssn) FROM customers";
        // public's comes first; crm's protected one after it.
        let s =
            session_with_customers(MASK_CRM_SSN, &[(101, "public"), (100, "crm")], &["pg_catalog", "public", "crm"]);
        assert!(masks(&s, probe).1, "crm's may be read");
        // Another session's temporary customers (pg_temp_9), this session's own temporary
        // schema (pg_temp_7) searched first.
        let s = session_with_customers(
            MASK_CRM_SSN,
            &[(109, "pg_temp_9"), (100, "crm")],
            &["pg_temp_7", "pg_catalog", "crm"],
        );
        assert!(masks(&s, probe).1, "another session's temporary table is not this one's");
        // Not searched at all: not a candidate.
        let s = session_with_customers(MASK_CRM_SSN, &[(101, "public"), (100, "crm")], &["pg_catalog", "public"]);
        assert_eq!(masks(&s, probe), (Decision::Allow, false));
    }

    /// A reload between reading the policy and reading the context must not pair a context
    /// built for one policy with another (the result filter would mask by the older policy).
    #[test]
    fn a_masking_context_is_given_again_only_for_the_policy_it_was_built_for() {
        let policy = |column: &str| {
            format!(
                "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {{name: p}}\nspec:\n  selector: {{}}\n  rules:\n    - {{name: m, match: {{columns: [{column}]}}, mask: redact}}\n  default: allow\n"
            )
        };
        let s = masked_session(&policy("crm.customers.ssn"));
        let (lax, generation) = s.masking_applies_at().expect("masks");
        let built = s.mask_context(generation, &lax, false).expect("a context");
        assert!(Arc::ptr_eq(&built.policy, &lax));
        assert!(Arc::ptr_eq(&s.mask_context(generation, &lax, false).expect("again"), &built), "given again");
        let (strict, _) = masked_session(&policy("crm.customers.name")).masking_applies_at().expect("masks");
        let paired = s.mask_context(generation, &strict, false).expect("a context");
        assert!(Arc::ptr_eq(&paired.policy, &strict), "built anew for the other policy");
    }

    /// Whatever the literals, a statement given a judgement by shape gets what judging it
    /// afresh gives: each template with one literal judged (and kept), then with every other,
    /// compared with a session that judges from nothing. With masking, tags and the literals
    /// judging reads (search_path words, setting names, EXPLAIN options), under both
    /// readings of backslashes and in MySQL's modes.
    #[test]
    fn a_judgement_given_by_shape_is_what_judging_afresh_gives() {
        let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl, dcl]}, action: deny}\n    - {name: batch, match: {class: [write], tags: {route: batch}}, action: deny}\n    - {name: ssn, match: {columns: [crm.customers.ssn]}, mask: redact}\n  default: allow\n";
        let masked = || masked_session(policy);
        let outcome = |judgement: &Judgement| match judgement.decision() {
            Decision::Allow => format!(
                "{:?}",
                judgement
                    .parts
                    .iter()
                    .map(|p| (p.span.clone(), p.class, p.effects, &p.policy, &p.rule, &p.reason, &p.mask))
                    .collect::<Vec<_>>()
            ),
            _ => refusal(judgement).1,
        };
        let run = |lexing: Lexing, templates: &[&str], literals: &[&str]| {
            let mut given = 0;
            for template in templates {
                let (s, fresh) = (masked(), masked());
                let none = |_: &str| None;
                let judged = |s: &SessionGovern, sql: &str| {
                    let mut i = info(sql, QueryProtocol::Simple, &none);
                    i.lexing = lexing;
                    let reused = s.kept.lock().unwrap().get_by_shape(
                        &i,
                        &s.parts(&i).expect("described"),
                        s.governor.generation(),
                        s.lock().changes(),
                    );
                    let verdict = match s.before_statement(&i) {
                        Verdict::Allow(Some(j)) => outcome(&j),
                        Verdict::Deny { message, .. } => message,
                        _ => "held".into(),
                    };
                    (reused.is_some(), verdict)
                };
                for first in literals {
                    let first = template.replace("{}", first);
                    judged(&s, &first);
                    judged(&s, &first);
                    for other in literals {
                        let other = template.replace("{}", other);
                        let (reused, verdict) = judged(&s, &other);
                        let mut i = info(&other, QueryProtocol::Simple, &none);
                        i.lexing = lexing;
                        let afresh = fresh.judge(&i, fresh.parts(&i).expect("described"));
                        assert_eq!(verdict, outcome(&afresh), "{other:?} after {first:?}");
                        given += usize::from(reused);
                    }
                }
            }
            given
        };
        let literals = [
            "1",
            "'x'",
            "E'x\\''",
            "$$x$$",
            "U&'x' UESCAPE '!'",
            "B'101'",
            "1e5",
            "0x1f",
            "1_000",
            "'search_path'",
            "'temp'",
            "'discard'",
            "'role'",
            "'work_mem'",
            "'on'",
            "'/*x*/'",
            "'--'",
            "'create function'",
            "'set'",
            "'pg_catalog'",
        ];
        let templates = [
            "select ssn, {} from customers where id = {}",
            "select set_config({}, 'x', false)",
            "select set_config('work_mem', {}, false)",
            "explain (analyze {}) delete from customers where id = 1",
            "update pg_settings set setting = {} where name = 'work_mem'",
            "set work_mem = {}",
            "delete from customers where id = {} /* route='batch' */",
            "select {}, ssn from customers order by {}",
            "select (array[ssn, name])[{}] from customers",
            "/* c */ select {}; ",
        ];
        let postgres = |standard_conforming_strings| Lexing {
            standard_conforming_strings,
            dialect: crate::session::Dialect::Postgres,
            settled: true,
            ascii_safe: true,
        };
        let given = run(postgres(true), &templates, &literals) + run(postgres(false), &templates, &literals);
        assert!(given > 2_000, "most were given by shape: {given}");
        let literals = ["1", "'x'", "\"x\"", "_utf8'x'", "x'ff'", "0xff", "'a\\'b'", "'ANSI_QUOTES'", "'drop table t'"];
        let templates =
            ["select ssn, {} from customers where id = {}", "set sql_mode = {}", "prepare s from {}", "select {} # c"];
        for (ansi_quotes, no_backslash_escapes) in [(false, false), (true, false), (false, true), (true, true)] {
            let dialect = crate::sql::LexOptions::mysql(ansi_quotes, no_backslash_escapes).dialect;
            run(Lexing { dialect, ..postgres(true) }, &templates, &literals);
        }
    }

    /// The least recently used is let go first: a judgement given again stays while others come.
    #[test]
    fn a_judgement_given_again_is_kept_longest() {
        let s = session(GUARD);
        let names = |sql: &str| sent_names(&s, sql);
        let shape = |i: usize, v: usize| format!("select c{i} from t where id = {v}");
        // (The first judgement fills the session's selection: kept from the second on.)
        names(&shape(0, 0));
        let oldest = names(&shape(0, 1));
        let others: Vec<_> = (1..16).map(|i| names(&shape(i, 0))).collect();
        assert!(Arc::ptr_eq(&oldest, &names(&shape(0, 2))), "16 kept");
        // Given again, the oldest became the newest: a 17th shape lets go of the second one.
        names(&shape(16, 0));
        assert!(Arc::ptr_eq(&oldest, &names(&shape(0, 3))), "used last, kept");
        assert!(Arc::ptr_eq(&others[1], &names(&shape(2, 1))), "the third, kept");
        assert!(!Arc::ptr_eq(&others[0], &names(&shape(1, 1))), "the second, let go");
        // Bound in the extended protocol, with its literals in its text: given by shape too.
        let first = bound(&s, "select c0 from t where id = 8");
        assert!(Arc::ptr_eq(
            &first.parts[0].names.clone().unwrap(),
            &bound(&s, "select c0 from t where id = 9").parts[0].names.clone().unwrap()
        ));
        // A judgement naming hundreds of places is not kept, however short its text.
        let many = format!("select 1 from {}", (0..300).map(|i| format!("t{i}")).collect::<Vec<_>>().join(", "));
        names(&many);
        assert!(!Arc::ptr_eq(&names(&many), &names(&many)), "not kept");
    }

    /// A parameter declared of a type whose input runs user code makes the statement unknown,
    /// and the judgement kept for the same text with other parameter types is not given to it.
    #[test]
    fn a_parameter_of_a_type_whose_input_runs_user_code_is_never_given_a_kept_judgement() {
        let unknown = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  rules:\n    - {name: no-unknown, match: {class: [unknown]}, action: deny}\n  default: allow\n";
        let s = session(unknown);
        let mut catalog = Catalog::default();
        catalog.add_unsafe_type_oid(70001);
        s.on_facts(Ok(facts("public", catalog)));
        let sql = "select $1";
        // (The first judgement fills the session's selection: kept from the second on.)
        bound(&s, sql);
        let kept = bound(&s, sql);
        assert!(Arc::ptr_eq(&kept, &bound(&s, sql)), "kept");
        let none = |_: &str| None;
        for step in [crate::session::hooks::Step::Prepare, crate::session::hooks::Step::Bind] {
            let mut typed = info(sql, QueryProtocol::Extended, &none);
            typed.step = step;
            typed.parameter_types = &[70001];
            match s.before_statement(&typed) {
                Verdict::Deny { message, .. } => assert!(message.contains("OID 70001"), "{message}"),
                _ => panic!("{step:?}: a bound value runs the type's input"),
            }
            typed.parameter_types = &[70002];
            match s.before_statement(&typed) {
                Verdict::Allow(Some(j)) => assert!(!Arc::ptr_eq(&kept, &j), "judged anew"),
                _ => panic!("{step:?}: a user type whose input runs no user code"),
            }
        }
        assert!(Arc::ptr_eq(&kept, &bound(&s, sql)), "still kept for the untyped text");
    }

    #[test]
    fn the_debug_check_stands_aside_when_the_state_changed_after_the_lookup() {
        let s = session(GUARD);
        let sql = "select abalance from accounts where aid = $1";
        bound(&s, sql);
        let kept = bound(&s, sql);
        let changes = s.lock().changes();
        // The other direction of the session changes the state between the lookup and the check.
        s.lock().facts_epoch += 1;
        let none = |_: &str| None;
        let mut i = info(sql, QueryProtocol::Extended, &none);
        i.step = crate::session::hooks::Step::Bind;
        s.check_reused(&i, &kept, changes);
        assert!(!Arc::ptr_eq(&kept, &bound(&s, sql)), "judged again after the change");
    }

    #[test]
    fn a_counted_value_counts_changes_not_reads() {
        let mut v = reuse::Counted::new(vec![1]);
        assert_eq!((v.len(), v.changes()), (1, 0));
        v.push(2);
        let _ = &mut *v;
        assert_eq!(v.changes(), 2);
    }

    #[test]
    fn a_long_statement_is_held_once_then_judged_from_the_cache() {
        let s = session(GUARD);
        let none = |_: &str| None;
        let long = format!("select '{}' as padding", "x".repeat(20_000));
        assert!(long.len() > DESCRIBE_INLINE_MAX);
        assert!(matches!(s.before_statement(&info(&long, QueryProtocol::Extended, &none)), Verdict::Hold(_)));
        s.governor.descriptions.describe_with(&long, crate::sql::LexOptions::default());
        assert!(
            matches!(s.before_statement(&info(&long, QueryProtocol::Extended, &none)), Verdict::Allow(Some(_))),
            "a prepared statement executed again is not held again"
        );
    }

    #[test]
    fn unknown_is_refused_where_policies_guard_and_a_search_path_change_voids_built_ins() {
        let s = session(GUARD);
        let none = |_: &str| None;
        let verdict = s.before_statement(&info("do $$ begin perform 1; end $$", QueryProtocol::Simple, &none));
        let Verdict::Deny { message, .. } = verdict else { panic!("unknown allowed") };
        assert!(message.contains("fail-closed"), "{message}");
        let mut catalog = Catalog::default();
        catalog.add_function("public", "upper", crate::sql::catalog::Volatility::Volatile, None);
        s.on_facts(Ok(facts("app", catalog)));
        assert!(matches!(
            s.before_statement(&info("select upper('a')", QueryProtocol::Simple, &none)),
            Verdict::Allow(_)
        ));
        // The SET reaches the server first: the call after it may reach public.upper.
        let shadowed = "set search_path = public, pg_catalog; select upper('a')";
        let Verdict::Deny { message, .. } = s.before_statement(&info(shadowed, QueryProtocol::Simple, &none)) else {
            panic!("an unqualified call after the search_path change allowed")
        };
        assert!(message.contains("statement 2 of 2"), "{message}");
    }

    /// A session whose holds wait in a real registry, and that registry (its audit ring in a
    /// directory removed when the guard drops).
    fn held_session(policy: &str) -> (tempfile::TempDir, SessionGovern, Arc<Approvals>) {
        let dir = crate::test_dir("warden-govern-holds-");
        let config = crate::config::AuditConfig {
            path: dir.path().join(format!("{}.ring", policy.len())),
            ring_bytes: 1 << 20,
            ..Default::default()
        };
        let (audit, _writer) = crate::audit::AuditLog::open(&config).unwrap();
        let approvals = Approvals::new(audit, crate::approval::webhook::Webhooks::disabled());
        let set = PolicySet::from_sources(&[("p.yaml".into(), policy.to_string())]).expect("policy");
        let governor = Arc::new(Governor::new(set).with_approvals(approvals.clone()));
        let identity = Identity::from_facts(&crate::flow::KernelFacts {
            pid: 1,
            tid: 1,
            uid: 1000,
            gid: 1000,
            comm: "psql".into(),
            cgroup_id: crate::cgroup::CgroupId(9),
            netns_cookie: 1,
        });
        let origin = Origin { session: SessionId(1), identity: Arc::new(identity) };
        let s = governor.session(BTreeMap::new(), "main", Some(origin), Arc::new(AllowAll));
        s.on_facts(Ok(facts("\"$user\", public", Catalog::default())));
        (dir, s, approvals)
    }

    /// Holds message `message`, approves it as root, and returns the verdict it then gets.
    async fn approve_held(s: &SessionGovern, approvals: &Approvals, sql: &str, message: u64) -> bool {
        let none = |_: &str| None;
        let mut i = info(sql, QueryProtocol::Simple, &none);
        i.message = message;
        let Verdict::Hold(decision) = s.before_statement(&i) else { return false };
        let id = approvals.pending()[0].id.clone();
        let root = crate::approval::Approver { uid: 0, user: None, pid: None, exe: None };
        approvals.decide(&id, root, true, None).unwrap();
        assert!(matches!(decision.await, Verdict::AskAgain));
        matches!(s.before_statement(&i), Verdict::Allow(_))
    }

    fn verdict_of(s: &SessionGovern, sql: &str, message: u64) -> &'static str {
        let none = |_: &str| None;
        let mut i = info(sql, QueryProtocol::Simple, &none);
        i.message = message;
        match s.before_statement(&i) {
            Verdict::Allow(_) => "allow",
            Verdict::Hold(_) => "hold",
            _ => "deny",
        }
    }

    #[tokio::test]
    async fn a_grant_covers_the_same_statement_only_not_one_whose_literals_change_what_it_does() {
        let (_dir, s, approvals) = held_session(
            "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  \
             approval: {grant: 1h}\n  default: require_approval\n",
        );
        assert!(approve_held(&s, &approvals, "select set_config('work_mem', '1MB', false)", 1).await);
        assert_eq!(verdict_of(&s, "select set_config('work_mem', '64MB', false)", 2), "allow", "granted: same shape");
        assert_eq!(
            verdict_of(&s, "select set_config('role', 'postgres', false)", 3),
            "hold",
            "the setting named decides what it does"
        );
        assert!(approve_held(&s, &approvals, "explain (analyze 0) delete from t", 4).await);
        assert_eq!(verdict_of(&s, "explain (analyze 1) delete from t", 5), "hold", "ANALYZE 1 runs the DELETE");
    }

    #[tokio::test]
    async fn role_changes_are_approved_once_whatever_the_terms() {
        let (_dir, s, approvals) = held_session(
            "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  \
             approval: {grant: 1h}\n  default: require_approval\n",
        );
        assert!(approve_held(&s, &approvals, "set role app_reader", 1).await);
        assert_eq!(verdict_of(&s, "set role app_reader", 2), "hold");
    }
}
