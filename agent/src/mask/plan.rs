//! What masking does to one session's statements: which result columns are masked and how
//! (a [`PartMask`], planned when the statement is judged, before it is forwarded), which
//! statements are refused because masking cannot cover them, and the filter that rewrites
//! values as rows stream back ([`RowMasker`]).
//!
//! A column is protected by what it is: its table's OID and attribute number, resolved
//! through the session's catalog to `schema.table.column`, with the protection of the
//! tables it inherits from (and of its partitions and children: a rule that names a partition
//! protects the column read through its parent). Two sources decide each result column, and
//! the stricter wins: the statement's lineage (which columns its expression reads) and the
//! column's origin as the server describes it (RowDescription's table OID and attribute).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use crate::{
    audit::MaskedColumn,
    mask::{
        detect::Detectors,
        keys::Key,
        method::{Method, TypeClass, mask_binary_into, mask_text_into},
    },
    policy::masking::{Inference, MaskChoice, MaskPolicy, Untraced, stricter},
    session::{
        ResultColumn,
        hooks::{CopyLayout, ResultFilter, Rewrite},
    },
    sql::{
        Class, ClassSet, LexOptions,
        catalog::{Catalog, RelationInfo},
        lineage::{self, ColKey, CopyFormat, Lineage, RelColumn, Relation, Relations, Src},
    },
};

/// Plans remembered per session (by statement text).
const MAX_PLANS: usize = 1024;
/// Views nested deeper than this are not traced (their columns are of unknown lineage).
const MAX_VIEW_DEPTH: usize = 16;

/// System relations whose values quote user tables' values: column statistics (most common
/// values, histograms) and other sessions' statement texts.
const QUOTING_CATALOGS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_prepared_statements",
    "pg_cursors",
];

/// Views of pg_catalog (PostgreSQL 15) that show no user table's values.
const SYSTEM_VIEWS: &[&str] = &[
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_config",
    "pg_file_settings",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_indexes",
    "pg_locks",
    "pg_matviews",
    "pg_policies",
    "pg_prepared_xacts",
    "pg_publication_tables",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_roles",
    "pg_rules",
    "pg_seclabels",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shmem_allocations",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_archiver",
    "pg_stat_bgwriter",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_progress_analyze",
    "pg_stat_progress_vacuum",
    "pg_stat_replication",
    "pg_stat_ssl",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_wal",
    "pg_statio_all_tables",
    "pg_statio_user_tables",
    "pg_tables",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_user",
    "pg_user_mappings",
    "pg_views",
];

/// Built-in functions that run SQL given as text or dump whole tables: what they return
/// cannot be traced.
const RUNS_SQL: &[&str] = &[
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "ts_stat",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_get_backend_idset",
    "pg_get_backend_memory_contexts",
    "pg_read_file",
    "pg_read_binary_file",
    "lo_get",
    "loread",
    "dblink",
    "dblink_exec",
];

/// A view's traced columns, or why they could not be traced.
type ViewColumns = Result<Arc<(Vec<RelColumn>, Src)>, String>;
/// A statement's plan, or why it is refused.
type Planned = Result<Arc<PartMask>, String>;

/// A protected column, for one identity.
#[derive(Debug, Clone)]
pub struct Protected {
    pub choice: MaskChoice,
    /// `schema.table.column` of the column that decided.
    pub column: Arc<str>,
}

/// What is done to one result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnMask {
    Clear,
    /// Shown in the clear to an exempt identity (recorded as such).
    Exempt {
        column: Arc<str>,
        policy: Arc<str>,
        rule: Arc<str>,
    },
    Mask {
        method: Method,
        /// Computed from protected columns (not one passed through): masked as a whole.
        computed: bool,
        column: Arc<str>,
        policy: Arc<str>,
        rule: Arc<str>,
    },
    /// Values of unknown lineage: the detectors look at them.
    Detect,
}

impl ColumnMask {
    fn rank(&self) -> u8 {
        match self {
            ColumnMask::Clear => 0,
            ColumnMask::Exempt { .. } => 1,
            ColumnMask::Detect => 2,
            ColumnMask::Mask { .. } => 3,
        }
    }

    /// The stricter of two.
    fn join(self, other: ColumnMask) -> ColumnMask {
        match (self, other) {
            (
                ColumnMask::Mask { method: a, computed: ca, column, policy, rule },
                ColumnMask::Mask { method: b, computed: cb, .. },
            ) => ColumnMask::Mask { method: stricter(a, b), computed: ca || cb, column, policy, rule },
            (a, b) => {
                if b.rank() > a.rank() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// The method a value gets: a computed value is redacted whole. Not a token: a token of
    /// a computed value would let a query mix chosen values into a protected column
    /// (`UNION SELECT 'guess'`, `COALESCE(NULL, ssn, 'guess')`) and compare their tokens
    /// with the real ones, a dictionary attack without the key; and a partial or
    /// format-preserving form of `reverse(card)` would show other characters.
    fn effective(&self) -> Option<Method> {
        match self {
            ColumnMask::Mask { method, computed: false, .. } => Some(*method),
            ColumnMask::Mask { method: Method::Null, .. } => Some(Method::Null),
            ColumnMask::Mask { .. } => Some(Method::Redact),
            _ => None,
        }
    }
}

/// The masking plan of one statement.
#[derive(Debug, Clone, Default)]
pub struct PartMask {
    /// One per output column, when the lineage is exact.
    pub columns: Vec<ColumnMask>,
    pub exact: bool,
    /// The stricter of all outputs: for a result whose columns do not line up with `columns`.
    pub all: Option<ColumnMask>,
    /// Errors and notices of it may quote protected values: their texts are withheld.
    pub scrub: bool,
    pub copy: Option<(CopyFormat, bool)>,
    /// The audit's account: which columns are masked (or exempt), by which rule and method.
    pub masked: Arc<[MaskedColumn]>,
    /// A cursor the statement declares (FETCH of it returns these columns).
    pub declares: Option<String>,
    /// Its lineage says it returns rows (`columns` are them).
    pub returns_rows: bool,
}

impl PartMask {
    /// A statement that reads nothing protected.
    pub fn clear(scrub: bool) -> PartMask {
        PartMask { exact: true, scrub, returns_rows: true, ..PartMask::default() }
    }

    /// A statement whose values cannot be traced (`untraced: detect`).
    pub fn untraced() -> PartMask {
        PartMask { exact: false, all: Some(ColumnMask::Detect), scrub: true, returns_rows: true, ..PartMask::default() }
    }

    fn column(&self, index: usize, count: usize) -> ColumnMask {
        if !self.returns_rows {
            // A statement that returns no rows of its own returned some (a rule's DO ALSO
            // SELECT, a function's result): of unknown origin.
            return ColumnMask::Detect;
        }
        match (self.exact && count == self.columns.len(), self.columns.get(index)) {
            (true, Some(c)) => c.clone(),
            // Columns that do not line up with the plan: the strictest of all.
            _ => self.all.clone().unwrap_or(ColumnMask::Clear),
        }
    }

    /// The stricter of two plans for the same name (a cursor declared twice: which one the
    /// server holds is known only from its answer).
    pub fn join(&self, other: &PartMask) -> PartMask {
        let n = self.columns.len().max(other.columns.len());
        let columns = (0..n)
            .map(|i| {
                let a = self.columns.get(i).cloned().unwrap_or(ColumnMask::Clear);
                let b = other.columns.get(i).cloned().unwrap_or(ColumnMask::Clear);
                a.join(b)
            })
            .collect();
        let all = match (self.all.clone(), other.all.clone()) {
            (Some(a), Some(b)) => Some(a.join(b)),
            (a, b) => a.or(b),
        };
        let mut masked = self.masked.to_vec();
        masked.extend(other.masked.iter().filter(|m| !self.masked.contains(m)).cloned());
        let masked = Arc::from(masked);
        PartMask {
            columns,
            exact: self.exact && other.exact && self.columns.len() == other.columns.len(),
            all,
            scrub: self.scrub || other.scrub,
            copy: self.copy.or(other.copy),
            masked,
            declares: self.declares.clone().or_else(|| other.declares.clone()),
            returns_rows: self.returns_rows || other.returns_rows,
        }
    }

    /// Whether it masks or looks at anything.
    pub fn is_active(&self) -> bool {
        self.scrub || self.all.is_some() || self.columns.iter().any(|c| !matches!(c, ColumnMask::Clear))
    }
}

/// One session's masking context: the identity's masking policy over the database's catalog
/// as the session last read it.
pub struct MaskContext {
    pub policy: Arc<MaskPolicy>,
    catalog: Arc<Catalog>,
    /// The schemas the server searches for relations (None: not known, any schema).
    path: Option<Arc<[String]>>,
    protect: HashMap<ColKey, Protected>,
    /// Relations with protected columns, or whose triggers or rules run code.
    sensitive: HashSet<u32>,
    views: Mutex<HashMap<u32, ViewColumns>>,
    view_depth: Mutex<usize>,
    plans: Mutex<HashMap<(LexOptions, Arc<str>), Planned>>,
    key: Arc<Key>,
    /// How statements are lexed when none is given (view definitions): the catalog's grammar.
    lexing: LexOptions,
}

impl std::fmt::Debug for MaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaskContext({} protected columns)", self.protect.len())
    }
}

impl MaskContext {
    /// Builds the context; `Err` when the catalog holds no relations (they were not read).
    pub fn new(
        policy: Arc<MaskPolicy>,
        catalog: Arc<Catalog>,
        path: Option<Arc<[String]>>,
        key: Arc<Key>,
    ) -> Result<MaskContext, String> {
        let relations = catalog.relations.as_ref().ok_or("the session's relations were not read")?;
        let lexing = match relations.dialect {
            crate::sql::Dialect::Postgres => LexOptions::default(),
            dialect => LexOptions { dialect, ..LexOptions::default() },
        };
        let mut protect = HashMap::new();
        let mut sensitive = HashSet::new();
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for r in relations.by_oid.values() {
            for p in &r.parents {
                children.entry(*p).or_default().push(r.oid);
            }
        }
        for r in relations.by_oid.values() {
            if r.code {
                sensitive.insert(r.oid);
            }
            let kin = family(relations, &children, r);
            for c in &r.columns {
                // Its own name, then every ancestor's and descendant's column of the same name.
                let mut best: Option<Protected> = None;
                for rel in &kin {
                    if let Some(choice) = policy.decide(&rel.schema, &rel.name, &c.name) {
                        let candidate =
                            Protected { column: Arc::from(format!("{}.{}.{}", rel.schema, rel.name, c.name)), choice };
                        best = Some(match best.take() {
                            None => candidate,
                            Some(b) => stronger(b, candidate),
                        });
                    }
                }
                if let Some(p) = best {
                    sensitive.insert(r.oid);
                    protect.insert((r.oid, c.attnum), p);
                }
            }
        }
        // A generated column computed from protected ones: protected as their computation
        // (redacted whole), unless a rule protects it more.
        for (&(oid, attnum), names) in &relations.generated_from {
            let Some(r) = relations.by_oid.get(&oid) else { continue };
            let mut best: Option<Protected> = protect.get(&(oid, attnum)).cloned();
            for c in r.columns.iter().filter(|c| c.attnum != attnum && names.contains(&c.name)) {
                let Some(p) = protect.get(&(oid, c.attnum)) else { continue };
                let method = if p.choice.method == Method::Null { Method::Null } else { Method::Redact };
                let candidate =
                    Protected { choice: MaskChoice { method, ..p.choice.clone() }, column: p.column.clone() };
                best = Some(match best.take() {
                    None => candidate,
                    Some(b) => stronger(b, candidate),
                });
            }
            if let Some(p) = best {
                sensitive.insert(oid);
                protect.insert((oid, attnum), p);
            }
        }
        Ok(MaskContext {
            policy,
            catalog,
            path,
            protect,
            sensitive,
            views: Mutex::new(HashMap::new()),
            view_depth: Mutex::new(0),
            plans: Mutex::new(HashMap::new()),
            key,
            lexing,
        })
    }

    fn relations(&self) -> &crate::sql::catalog::Relations {
        // Checked in `new`.
        self.catalog.relations.as_ref().expect("relations read")
    }

    /// The relations `name` may resolve to (several when the search_path is not known).
    fn candidates(&self, schema: Option<&str>, name: &str) -> Vec<&RelationInfo> {
        let relations = self.relations();
        if self.folds_names() {
            // Names are held folded (MySQL): looked up folded, in the named schema or the
            // current one.
            let name = name.to_lowercase();
            return match (schema.map(str::to_lowercase), &self.path) {
                (Some(s), _) => relations.named(&s, &name).into_iter().collect(),
                (None, Some(path)) => {
                    path.iter().find_map(|s| relations.named(&s.to_lowercase(), &name)).into_iter().collect()
                }
                (None, None) => relations.by_oid.values().filter(|r| r.name == name).collect(),
            };
        }
        match (schema, &self.path) {
            (Some("pg_temp"), Some(path)) => path
                .iter()
                .filter(|s| s.starts_with("pg_temp_"))
                .find_map(|s| relations.named(s, name))
                .into_iter()
                .collect(),
            (Some("pg_temp"), None) => {
                relations.by_oid.values().filter(|r| r.schema.starts_with("pg_temp_") && r.name == name).collect()
            }
            (Some(s), _) => relations.named(s, name).into_iter().collect(),
            // Every relation of the name in a schema the server searches, not the first alone:
            // the server may read a later one (a statement prepared before an earlier one was
            // created, or one dropped by another session since the catalog was read). The
            // session's own temporary schema by its real name (`pg_temp` is every session's).
            (None, Some(path)) => path.iter().filter_map(|s| relations.named(s, name)).collect(),
            (None, None) => relations.by_oid.values().filter(|r| r.name == name).collect(),
        }
    }

    /// Whether the catalog holds names folded to lower case (MySQL's).
    fn folds_names(&self) -> bool {
        self.relations().dialect.is_mysql()
    }

    /// A view's columns, traced through its definition (cached).
    fn view_columns(&self, r: &RelationInfo) -> ViewColumns {
        if let Some(done) = self.views.lock().unwrap_or_else(|p| p.into_inner()).get(&r.oid) {
            return done.clone();
        }
        let result = {
            let mut depth = self.view_depth.lock().unwrap_or_else(|p| p.into_inner());
            *depth += 1;
            let deep = *depth > MAX_VIEW_DEPTH;
            drop(depth);
            let traced = if deep {
                Err(format!("view {}.{} is nested too deep to trace", r.schema, r.name))
            } else {
                match &r.definition {
                    Some(def) => lineage::lineage_of_text_in(
                        &crate::sql::normalise_for_analysis_with_options(def, self.lexing),
                        self,
                        self.lexing,
                    )
                    .map_err(|e| format!("view {}.{}: {e}", r.schema, r.name)),
                    None => Err(format!("view {}.{} has no definition the session could read", r.schema, r.name)),
                }
            };
            *self.view_depth.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            traced.map(|l: Lineage| {
                let outputs = l.outputs.unwrap_or_default();
                let columns: Vec<RelColumn> = r
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let mut src = match (l.exact, outputs.get(i)) {
                            (true, Some((_, s))) => s.clone(),
                            _ => {
                                let mut all = Src::opaque();
                                for (_, s) in &outputs {
                                    all.add(s);
                                }
                                all
                            }
                        };
                        if !l.opaque.is_empty() {
                            src.opaque = true;
                        }
                        RelColumn { name: c.name.clone(), src, generated: false }
                    })
                    .collect();
                // Conditions of a view decide which rows it shows: a statement reading the
                // view reads them in a condition (kept apart: its columns stay what they are).
                Arc::new((columns, l.condition.clone()))
            })
        };
        self.views.lock().unwrap_or_else(|p| p.into_inner()).insert(r.oid, result.clone());
        result
    }

    fn relation_columns(&self, r: &RelationInfo) -> Vec<RelColumn> {
        match r.kind {
            'v' | 'm' => match self.view_columns(r) {
                Ok(c) => c.0.clone(),
                Err(_) => r
                    .columns
                    .iter()
                    .map(|c| RelColumn { name: c.name.clone(), src: Src::opaque(), generated: false })
                    .collect(),
            },
            _ => r
                .columns
                .iter()
                .map(|c| RelColumn {
                    name: c.name.clone(),
                    src: Src::column((r.oid, c.attnum)),
                    generated: c.generated,
                })
                .collect(),
        }
    }

    /// The protected columns among `src`'s (exempt ones included).
    fn protected<'s>(&'s self, src: &'s Src) -> impl Iterator<Item = &'s Protected> + 's {
        src.cols.iter().filter_map(|k| self.protect.get(k))
    }

    fn mask_of(&self, src: &Src) -> ColumnMask {
        let mut out = ColumnMask::Clear;
        let several = src.cols.len() > 1;
        for p in self.protected(src) {
            let m = if p.choice.exempt {
                ColumnMask::Exempt {
                    column: p.column.clone(),
                    policy: p.choice.policy.clone(),
                    rule: p.choice.rule.clone(),
                }
            } else {
                ColumnMask::Mask {
                    method: p.choice.method,
                    computed: src.computed || several,
                    column: p.column.clone(),
                    policy: p.choice.policy.clone(),
                    rule: p.choice.rule.clone(),
                }
            };
            out = out.join(m);
        }
        if src.opaque {
            out = out.join(ColumnMask::Detect);
        }
        out
    }

    /// The first protected (not exempt) column of `src`, for messages.
    fn first_masked(&self, src: &Src) -> Option<&Protected> {
        src.cols.iter().filter_map(|k| self.protect.get(k)).find(|p| !p.choice.exempt)
    }

    /// Plans a statement: `text` as the analyser reads it (literals normalised), its analysis'
    /// relations and effects. `Err` is why it is refused.
    /// `any_schema`: an earlier statement of the same message may have changed the search
    /// path, so unqualified names may resolve in any schema.
    /// `options`: how the session lexes `text`.
    pub fn plan(
        &self,
        text: &Arc<str>,
        options: LexOptions,
        relations: &[crate::sql::ObjectName],
        effects: ClassSet,
        any_schema: bool,
    ) -> Result<Arc<PartMask>, String> {
        if any_schema {
            // Not cached: rare, and planned under another resolution.
            let wide = MaskContext { path: None, ..self.shallow() };
            return wide.plan_uncached(text, options, relations, effects).map(Arc::new);
        }
        let key = (options, text.clone());
        if let Some(done) = self.plans.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return done.clone();
        }
        let planned = self.plan_uncached(text, options, relations, effects).map(Arc::new);
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, planned.clone());
        planned
    }

    /// A copy sharing the policy, catalog and protection (caches start empty).
    fn shallow(&self) -> MaskContext {
        MaskContext {
            policy: self.policy.clone(),
            catalog: self.catalog.clone(),
            path: self.path.clone(),
            protect: self.protect.clone(),
            sensitive: self.sensitive.clone(),
            views: Mutex::new(HashMap::new()),
            view_depth: Mutex::new(0),
            plans: Mutex::new(HashMap::new()),
            key: self.key.clone(),
            lexing: self.lexing,
        }
    }

    fn plan_uncached(
        &self,
        text: &str,
        options: LexOptions,
        relations: &[crate::sql::ObjectName],
        effects: ClassSet,
    ) -> Result<PartMask, String> {
        let touched: Vec<&RelationInfo> =
            relations.iter().flat_map(|n| self.candidates(n.schema.as_deref(), &n.name)).collect();
        let touches_protected = touched.iter().any(|r| self.sensitive.contains(&r.oid) || self.view_is_sensitive(r));
        let lineage = match lineage::lineage_of_text_in(text, self, options) {
            Ok(l) => l,
            Err(e) if touches_protected || (self.policy.untraced == Untraced::Refuse && self.policy.masks) => {
                return Err(format!("which columns it reads cannot be traced ({e})"));
            }
            // What it returns is looked at by the detectors, its messages withheld.
            Err(_) => return Ok(PartMask::untraced()),
        };
        let policy = &self.policy;
        if policy.masks
            && effects.contains(Class::Ddl)
            && let Some(what) = defines_code(text, options, effects)
        {
            // A function, trigger, rule or default defined here runs later, reading whatever it
            // names, where masking sees only the clean column or result it fills.
            return Err(format!(
                "{what}, whose reads masking cannot trace: it could copy protected values into what it returns or \
                 writes"
            ));
        }
        if policy.masks && effects.contains(Class::Ddl) && crate::govern::contains_ci(text, "schema") {
            // ALTER SCHEMA ... RENAME / OWNER, DROP SCHEMA: rules name columns by schema.
            let words: HashSet<String> = text
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .map(str::to_ascii_lowercase)
                .collect();
            let quoted: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
            let relations = self.relations();
            if let Some(schema) = self
                .sensitive
                .iter()
                .filter_map(|oid| relations.by_oid.get(oid))
                .map(|r| r.schema.as_str())
                .find(|s| words.contains(*s) || quoted.contains(s))
            {
                return Err(format!("changes a schema ({schema}) that holds protected columns"));
            }
        }
        let ruled = touched.iter().find(|r| r.rules);
        if let Some(r) = ruled
            && policy.masks
            && policy.untraced == Untraced::Refuse
        {
            return Err(format!(
                "{}.{} has rules, whose results (and what they read) cannot be traced",
                r.schema, r.name
            ));
        }
        // Conditions: the rows that come back tell the value.
        if policy.inference == Inference::Refuse
            && let Some(p) = self.first_masked(&lineage.condition)
        {
            return Err(format!(
                "reads protected column {} in a condition (WHERE, JOIN, ORDER BY, GROUP BY, HAVING, DISTINCT, UNION, \
                 INTERSECT, EXCEPT, a window or a subquery there), so which rows come back would tell its values; \
                 masking cannot cover that (policy \"{}\" rule \"{}\"; spec.masking.inference: allow permits it)",
                p.column, p.choice.policy, p.choice.rule
            ));
        }
        if let Some(p) = self.first_masked(&lineage.copied) {
            return Err(format!(
                "copies protected column {} into a table, a setting or a file, where masking does not reach (policy \
                 \"{}\" rule \"{}\")",
                p.column, p.choice.policy, p.choice.rule
            ));
        }
        if touches_protected
            && self.policy.masks
            && (effects.contains(Class::Ddl) || effects.contains(Class::Dcl))
            && let Some(r) = touched.iter().find(|r| self.sensitive.contains(&r.oid) || self.view_is_sensitive(r))
        {
            // Renaming a protected column, dropping a view over it, granting on it: what names
            // and protects it would change under the rules.
            return Err(format!(
                "changes the definition or privileges of {}.{}, which holds protected columns",
                r.schema, r.name
            ));
        }
        let outputs = lineage.outputs.clone().unwrap_or_default();
        let mut reads = lineage.condition.clone();
        for (_, s) in &outputs {
            reads.add(s);
        }
        let side_effects = !lineage.side_effects.is_empty()
            || !effects.iter().all(|c| matches!(c, Class::Read | Class::Transaction | Class::Write));
        let mut everything = reads.clone();
        everything.add(&lineage.copied);
        if side_effects && let Some(p) = self.first_masked(&everything) {
            return Err(format!(
                "reads protected column {} in a statement that also changes settings or runs code, which could carry \
                 the value elsewhere (policy \"{}\" rule \"{}\")",
                p.column, p.choice.policy, p.choice.rule
            ));
        }
        if !lineage.opaque.is_empty() {
            match policy.untraced {
                Untraced::Refuse if policy.masks => {
                    return Err(format!(
                        "returns values whose origin cannot be traced ({}): they could hold protected values \
                         (spec.masking.untraced: detect lets the value detectors look at them instead)",
                        lineage.opaque[0]
                    ));
                }
                _ => {}
            }
        }
        let columns: Vec<ColumnMask> = outputs.iter().map(|(_, s)| self.mask_of(s)).collect();
        if let Some((_, false)) = lineage.copy_out
            && let Some(p) = outputs.iter().find_map(|(_, s)| self.first_masked(s))
        {
            return Err(format!(
                "COPY of protected column {} with a DELIMITER, NULL, QUOTE, ESCAPE or other option whose rows \
                 masking does not rewrite (policy \"{}\" rule \"{}\"); the default text, csv and binary formats \
                 are masked",
                p.column, p.choice.policy, p.choice.rule
            ));
        }
        let mut all = ColumnMask::Clear;
        for c in &columns {
            all = all.join(c.clone());
        }
        if !lineage.opaque.is_empty() || ruled.is_some() {
            all = all.join(ColumnMask::Detect);
        }
        let scrub =
            touches_protected || !lineage.opaque.is_empty() || reads.cols.iter().any(|k| self.protect.contains_key(k));
        let mut masked = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let name = &outputs[i].0;
            match c {
                ColumnMask::Mask { method, computed, column, rule, .. } => masked.push(MaskedColumn {
                    column: if *computed { format!("{name} (computed from {column})") } else { column.to_string() },
                    rule: rule.to_string(),
                    method: c.effective().unwrap_or(*method).as_str().to_string(),
                }),
                ColumnMask::Exempt { column, rule, .. } => masked.push(MaskedColumn {
                    column: column.to_string(),
                    rule: rule.to_string(),
                    method: "exempt".to_string(),
                }),
                ColumnMask::Detect => masked.push(MaskedColumn {
                    column: format!("{name} (untraced)"),
                    rule: "detectors".to_string(),
                    method: "detect".to_string(),
                }),
                ColumnMask::Clear => {}
            }
        }
        Ok(PartMask {
            // A rule's result sets come with the statement's: none lines up with its own.
            exact: lineage.exact && ruled.is_none(),
            all: (all != ColumnMask::Clear).then_some(all),
            columns,
            scrub,
            copy: lineage.copy_out,
            masked: Arc::from(masked),
            declares: lineage.declares,
            returns_rows: lineage.outputs.is_some(),
        })
    }

    fn view_is_sensitive(&self, r: &RelationInfo) -> bool {
        matches!(r.kind, 'v' | 'm')
            && self.relation_columns(r).iter().any(|c| c.src.opaque || self.protected(&c.src).next().is_some())
    }

    /// The filter for one result set: the plan's masks (none: a statement not planned, whose
    /// values are looked at by the detectors) joined with what each column's origin says.
    pub fn filter(
        self: &Arc<Self>,
        plan: Option<&PartMask>,
        columns: &[ResultColumn],
        copy: bool,
    ) -> Option<Box<dyn ResultFilter>> {
        let mut actions = Vec::with_capacity(columns.len());
        let mut any = false;
        for (i, c) in columns.iter().enumerate() {
            let mut m = match plan {
                Some(p) => p.column(i, columns.len()),
                None => ColumnMask::Detect,
            };
            if c.table_oid != 0 {
                m = m.join(self.origin(c.table_oid, c.attnum));
            }
            let class = TypeClass::of(c.type_oid);
            let action = match &m {
                ColumnMask::Mask { .. } => Some(Action::Mask(m.effective().unwrap_or(Method::Null))),
                ColumnMask::Detect => Some(Action::Detect),
                _ => None,
            };
            any |= action.is_some();
            actions.push(action.map(|a| (a, class, c.binary)));
        }
        let layout = match plan.and_then(|p| p.copy) {
            Some((CopyFormat::Csv { header }, _)) => Some(CopyLayout::Csv { header }),
            Some((CopyFormat::Binary, _)) => Some(CopyLayout::Binary),
            Some((CopyFormat::Text, _)) => Some(CopyLayout::Text),
            None => None,
        };
        let _ = copy;
        any.then(|| {
            Box::new(RowMasker { actions, key: self.key.clone(), detectors: self.policy.detectors.clone(), layout })
                as Box<dyn ResultFilter>
        })
    }

    /// What a column's origin (table OID, attribute number) says.
    fn origin(&self, oid: u32, attnum: i16) -> ColumnMask {
        if self.protect.contains_key(&(oid, attnum)) {
            return self.mask_of(&Src::column((oid, attnum)));
        }
        if let Some(r) = self.relations().by_oid.get(&oid)
            && matches!(r.kind, 'v' | 'm')
        {
            let columns = self.relation_columns(r);
            let at = r.columns.iter().position(|c| c.attnum == attnum);
            return match at.and_then(|i| columns.get(i)) {
                Some(c) => self.mask_of(&c.src),
                None => ColumnMask::Detect,
            };
        }
        ColumnMask::Clear
    }

    /// Texts of errors and notices, and notification payloads: detectors applied.
    pub fn detect_text(&self, text: &[u8]) -> Option<Vec<u8>> {
        detect(&self.policy.detectors, text)
    }

    /// Whether the session reads through a catalog (for tests and status).
    pub fn protected_columns(&self) -> usize {
        self.protect.len()
    }
}

/// The relation, its ancestors and its descendants (bounded: inheritance trees are small).
fn family<'a>(
    relations: &'a crate::sql::catalog::Relations,
    children: &HashMap<u32, Vec<u32>>,
    r: &'a RelationInfo,
) -> Vec<&'a RelationInfo> {
    let mut out = vec![r];
    let mut seen: HashSet<u32> = HashSet::from([r.oid]);
    let mut up = r.parents.clone();
    while let Some(oid) = up.pop() {
        if out.len() >= 512 {
            break;
        }
        if seen.insert(oid)
            && let Some(p) = relations.by_oid.get(&oid)
        {
            out.push(p);
            up.extend(p.parents.iter().copied());
        }
    }
    let mut down = vec![r.oid];
    while let Some(oid) = down.pop() {
        for child in children.get(&oid).into_iter().flatten() {
            if out.len() >= 1024 {
                break;
            }
            if seen.insert(*child)
                && let Some(c) = relations.by_oid.get(child)
            {
                out.push(c);
                down.push(*child);
            }
        }
    }
    out
}

/// The stronger of two protections: a masking one over an exemption, the stricter method.
fn stronger(a: Protected, b: Protected) -> Protected {
    match (a.choice.exempt, b.choice.exempt) {
        (true, false) => b,
        (false, true) => a,
        _ if stricter(a.choice.method, b.choice.method) == b.choice.method && a.choice.method != b.choice.method => b,
        _ => a,
    }
}

impl Relations for MaskContext {
    fn relation_condition(&self, schema: Option<&str>, name: &str) -> Src {
        let mut out = Src::default();
        for r in self.candidates(schema, name) {
            if matches!(r.kind, 'v' | 'm') {
                match self.view_columns(r) {
                    Ok(c) => out.add(&c.1),
                    Err(_) => out.add(&Src::opaque()),
                }
            }
        }
        out
    }

    fn relation(&self, schema: Option<&str>, name: &str) -> Relation {
        if self.folds_names() {
            return self.folded_relation(schema, name);
        }
        if schema.is_none_or(|s| s == "pg_catalog") && QUOTING_CATALOGS.contains(&name) {
            return Relation::Opaque(format!("reads {name}, which quotes values of other tables and statements"));
        }
        let found = self.candidates(schema, name);
        let system = matches!(schema, Some("pg_catalog" | "information_schema"))
            || (schema.is_none() && (crate::sql::is_catalog_relation(name) || SYSTEM_VIEWS.contains(&name)));
        match found.as_slice() {
            // A system catalog or view: no user table's values (the quoting ones aside).
            [] if system => Relation::Clean,
            // Not in the catalog as the session read it: created since, by another session.
            [] => Relation::Opaque(format!("reads {name}, which is not in the catalog as the session last read it")),
            [one] => Relation::Columns(self.relation_columns(one)),
            // Any of them (the search_path not known, or several of the name on it).
            several => self.several(several),
        }
    }

    fn opaque_operator(&self, symbol: &str) -> Option<String> {
        self.relations()
            .operators
            .contains(symbol)
            .then(|| format!("uses operator {symbol}, which a user-defined operator may stand for"))
    }

    fn opaque_function(&self, schema: Option<&str>, name: &str) -> Option<String> {
        if self.folds_names() {
            return crate::sql::mysql_opaque_function(schema, name);
        }
        let builtin_schema = schema.is_none_or(|s| s == "pg_catalog");
        if builtin_schema && RUNS_SQL.contains(&name) {
            return Some(format!("calls {name}, which runs SQL or reads whole tables"));
        }
        match schema {
            Some(s) if s != "pg_catalog" => Some(format!("calls {s}.{name}, a function whose body is not traced")),
            _ if !crate::sql::is_builtin_function(name) => {
                Some(format!("calls {name}, a function whose body is not traced"))
            }
            None if self.catalog.has_user_function(name) => {
                Some(format!("calls {name}, which a user function of that name may stand for"))
            }
            _ => None,
        }
    }
}

impl MaskContext {
    /// The columns of any of `several` relations a name may stand for: a column carries what
    /// any of them carries under its name.
    fn merged_columns(&self, several: &[&RelationInfo]) -> Vec<RelColumn> {
        let mut merged: Vec<RelColumn> = Vec::new();
        for r in several {
            for c in self.relation_columns(r) {
                match merged.iter_mut().find(|m| m.name == c.name) {
                    Some(m) => m.src.add(&c.src),
                    None => merged.push(c),
                }
            }
        }
        merged
    }

    /// A relation under MySQL's rules (names folded): a system schema's relations are clean or
    /// quote values by what they are; a user relation's columns as the catalog has them.
    fn folded_relation(&self, schema: Option<&str>, name: &str) -> Relation {
        let folded = name.to_lowercase();
        let in_schema = match (schema, self.path.as_ref().map(|p| p.first())) {
            (Some(s), _) => s.to_lowercase(),
            (None, Some(Some(s))) => s.to_lowercase(),
            // No current database: the server refuses the name.
            (None, Some(None)) => return Relation::Clean,
            // Which database is current is not known (a USE earlier in the same text): the
            // name may be a system relation's (information_schema.PROCESSLIST) as well as a
            // user table's.
            (None, None) => {
                return Relation::Opaque(format!(
                    "reads {name}, in a database not known (the current one may have changed)"
                ));
            }
        };
        if let Some(system) = crate::sql::mysql_system_relation(&in_schema, &folded) {
            return match system {
                Ok(()) => Relation::Clean,
                Err(why) => Relation::Opaque(why),
            };
        }
        match self.candidates(schema, name).as_slice() {
            [] => Relation::Opaque(format!("reads {name}, which is not in the catalog as the session last read it")),
            [one] => Relation::Columns(self.relation_columns(one)),
            several => self.several(several),
        }
    }

    /// Several relations a name may stand for: their columns merged by name; in order only
    /// when every one has the same column list (otherwise by position a value may be any).
    fn several(&self, several: &[&RelationInfo]) -> Relation {
        let shapes: HashSet<Vec<&str>> =
            several.iter().map(|r| r.columns.iter().map(|c| c.name.as_str()).collect()).collect();
        let merged = self.merged_columns(several);
        if shapes.len() > 1 { Relation::Unordered(merged) } else { Relation::Columns(merged) }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Mask(Method),
    Detect,
}

/// Rewrites one result set's values.
pub struct RowMasker {
    actions: Vec<Option<(Action, TypeClass, bool)>>,
    key: Arc<Key>,
    detectors: Vec<Arc<Detectors>>,
    layout: Option<CopyLayout>,
}

impl ResultFilter for RowMasker {
    fn copy_layout(&self) -> Option<CopyLayout> {
        self.layout
    }

    fn rewrites(&self, index: usize) -> bool {
        // A column beyond those described (a row longer than its description) is looked at.
        self.actions.get(index).is_none_or(|a| a.is_some())
    }

    fn rewrite(&self, index: usize, value: &[u8], out: &mut Vec<u8>) -> Rewrite {
        let (action, class, binary) = match self.actions.get(index) {
            Some(Some(a)) => *a,
            Some(None) => return Rewrite::Keep,
            // More values than columns described: withheld.
            None => return Rewrite::Null,
        };
        match action {
            Action::Mask(method) => {
                let written = if binary {
                    mask_binary_into(method, value, class, &self.key, out)
                } else {
                    mask_text_into(method, value, class, &self.key, out)
                };
                if written { Rewrite::Written } else { Rewrite::Null }
            }
            Action::Detect => {
                let textual = !binary || matches!(class, TypeClass::Text | TypeClass::Json { jsonb: false });
                let found = detect(&self.detectors, value);
                match found {
                    None => Rewrite::Keep,
                    // Replacing part of a number, a date or a uuid (or of a binary value) would
                    // not parse: withheld whole.
                    Some(v) if textual && matches!(class, TypeClass::Text | TypeClass::Json { .. }) => {
                        out.extend_from_slice(&v);
                        Rewrite::Written
                    }
                    Some(_) => Rewrite::Null,
                }
            }
        }
    }
}

/// Every finding of every detector set in `text` redacted; `None` when nothing was found.
pub fn detect(detectors: &[Arc<Detectors>], text: &[u8]) -> Option<Vec<u8>> {
    let mut current = String::from_utf8_lossy(text).into_owned();
    let mut changed = std::str::from_utf8(text).is_err();
    for d in detectors {
        let (out, kinds) = d.mask_all(&current, |_, _| "****".to_string());
        if !kinds.is_empty() {
            current = out;
            changed = true;
        }
    }
    changed.then(|| current.into_bytes())
}

/// What code a definition makes or attaches, if any: functions, procedures and the like,
/// triggers and rules, foreign servers and tables (a loopback connection reads as another
/// session, where masking never sees it), or expressions (defaults, checks, generated columns,
/// indexes, policies) calling functions that are not known built-ins (`unknown` among its
/// effects). Read from the object the statement creates or alters, not any word of it.
fn defines_code(text: &str, options: LexOptions, effects: ClassSet) -> Option<&'static str> {
    if effects.contains(Class::Unknown) {
        return Some(
            "is of unknown effect (it calls, in a default, check, generated column, index or policy, a function \
             that is not a known built-in, or it could not be analysed)",
        );
    }
    const CODE: &[&str] = &[
        "aggregate",
        "cast",
        "event",
        "extension",
        "foreign",
        "function",
        "language",
        "operator",
        "procedure",
        "routine",
        "rule",
        "server",
        "subscription",
        "transform",
        "trigger",
    ];
    // Objects that are not code: the first of these (or of CODE) is what the statement makes.
    const OTHER: &[&str] = &[
        "collation",
        "conversion",
        "database",
        "domain",
        "group",
        "index",
        "materialized",
        "policy",
        "publication",
        "role",
        "schema",
        "sequence",
        "statistics",
        "table",
        "tablespace",
        "text",
        "type",
        "view",
    ];
    let mut words = crate::sql::Lexer::new(text, options)
        .filter(|t| t.kind == crate::sql::TokenKind::Identifier)
        .map(|t| text[t.range()].to_ascii_lowercase());
    match words.next().as_deref() {
        // IMPORT FOREIGN SCHEMA: foreign tables.
        Some("import") => Some("imports foreign tables"),
        // Modifiers (OR REPLACE, TEMP, DEFINER = ..., ...) are passed over to the object.
        Some("create" | "alter") => loop {
            let word = words.next()?;
            if CODE.contains(&word.as_str()) {
                break Some("defines or changes code (a function, procedure, trigger, rule, event or foreign table)");
            }
            if word == "user" {
                break (words.next().as_deref() == Some("mapping"))
                    .then_some("defines a user mapping of a foreign server");
            }
            // TEXT SEARCH PARSER and TEMPLATE name C functions; configurations and dictionaries
            // do not.
            if word == "text" {
                let kind = words.nth(1);
                break matches!(kind.as_deref(), Some("parser" | "template"))
                    .then_some("defines a text search parser or template (C functions)");
            }
            if OTHER.contains(&word.as_str()) {
                break None;
            }
        },
        _ => None,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
