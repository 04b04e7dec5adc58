//! What the database's own catalog says about the names a statement uses, where built-in
//! knowledge (`functions`) cannot tell: the volatility of user functions (and of user
//! overloads that share a built-in's name), user operators, types whose casts run user code,
//! and casts that do. Pure data and its reading; the protocol session fetches it from the
//! server (for PostgreSQL, `proxy/postgres/catalog.rs`) and `govern` applies it.
//!
//! Everything here is about objects a user created (PostgreSQL: OID 16384 and above), which is
//! where a name's meaning can differ from what the analyser knows of PostgreSQL itself.

use std::collections::{HashMap, HashSet};

use super::{
    Analysis, Class, ClassSet, LexOptions, Lexer, ObjectName, TokenKind,
    classify::{Lookup, Lookups},
};

/// A function's volatility as its author declared it (an aggregate counts as volatile: its
/// transition functions are not looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    /// PostgreSQL's `provolatile` letter.
    pub fn from_code(code: &str) -> Option<Volatility> {
        match code {
            "i" => Some(Volatility::Immutable),
            "s" => Some(Volatility::Stable),
            "v" => Some(Volatility::Volatile),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Volatility::Immutable => "IMMUTABLE",
            Volatility::Stable => "STABLE",
            Volatility::Volatile => "VOLATILE",
        }
    }
}

/// The user-created objects of one database that change what a statement does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Every user function by schema and name: the worst volatility of its overloads.
    functions: HashMap<ObjectName, Volatility>,
    /// The same by name alone, worst over every schema (an unqualified call may reach any).
    by_name: HashMap<String, Volatility>,
    /// Functions callable with one argument, by name (worst over schemas): `t.f` is `f(t)`.
    one_argument: HashMap<String, Volatility>,
    /// User operators whose function is volatile, by schema and symbol.
    volatile_operators: HashSet<ObjectName>,
    /// Types whose input or cast runs code the analyser cannot see (domains with CHECK
    /// constraints, base types with volatile input functions), by schema and name.
    unsafe_types: HashSet<ObjectName>,
    unsafe_type_names: HashSet<String>,
    /// The same types by OID: what a parameter's declared type names (Parse).
    unsafe_type_oids: HashSet<u32>,
    /// A user cast runs a volatile function: (target type, implicitly or only explicitly).
    volatile_casts: Vec<(ObjectName, bool)>,
    /// VOLATILE built-in functions (pg_catalog) by name, of those a user function shares its
    /// name with.
    volatile_builtins: HashSet<String>,
    /// User relations (tables, views, partitions, foreign tables) by OID, when they were asked
    /// for (masking needs them).
    pub relations: Option<Relations>,
}

/// The user relations of a database: what masking resolves columns through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    pub by_oid: HashMap<u32, RelationInfo>,
    by_name: HashMap<ObjectName, u32>,
    /// Symbols of every user-defined operator (any of them may run code reading tables).
    pub operators: HashSet<String>,
    /// The server's grammar: how statements and view definitions are read. Under MySQL's,
    /// schema, relation and column names are held folded to lower case.
    pub dialect: super::Dialect,
    /// Generated columns (relation, attribute number) and the names their expression uses:
    /// a generated column computed from a protected column carries its protection.
    pub generated_from: HashMap<(u32, i16), Vec<String>>,
}

/// One user relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `relkind`: r table, p partitioned table, v view, m materialized view, f foreign table.
    pub kind: char,
    /// Columns in attribute order (dropped ones left out).
    pub columns: Vec<ColumnInfo>,
    /// Tables it inherits from (or is a partition of).
    pub parents: Vec<u32>,
    /// A view's definition, every relation schema-qualified.
    pub definition: Option<String>,
    /// It has triggers or rules (code that runs when it is written or read).
    pub code: bool,
    /// It has rules other than a view's own (DO ALSO / DO INSTEAD): a statement on it may
    /// return what the rule selects.
    pub rules: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub attnum: i16,
    pub name: String,
    pub type_oid: u32,
    pub generated: bool,
}

impl Relations {
    /// No relations yet, of a server speaking `dialect`.
    pub fn new(dialect: super::Dialect) -> Self {
        Relations { dialect, ..Relations::default() }
    }

    pub fn add_relation(&mut self, oid: u32, schema: &str, name: &str, kind: char, code: bool) {
        if let Some(alias) = also_pg_temp(schema) {
            self.by_name.insert(ObjectName::new(Some(alias), name), oid);
        }
        self.by_name.insert(ObjectName::new(Some(schema), name), oid);
        self.by_oid.insert(
            oid,
            RelationInfo {
                oid,
                schema: schema.to_string(),
                name: name.to_string(),
                kind,
                columns: Vec::new(),
                parents: Vec::new(),
                definition: None,
                code,
                rules: false,
            },
        );
    }

    pub fn add_rules(&mut self, relation: u32) {
        if let Some(r) = self.by_oid.get_mut(&relation) {
            r.rules = true;
        }
    }

    /// Columns, parents and definitions name their relation by OID: one the query did not
    /// list is ignored (it is not a user relation).
    pub fn add_column(&mut self, relation: u32, column: ColumnInfo) {
        if let Some(r) = self.by_oid.get_mut(&relation) {
            let at = r.columns.partition_point(|c| c.attnum < column.attnum);
            r.columns.insert(at, column);
        }
    }

    pub fn add_parent(&mut self, child: u32, parent: u32) {
        if let Some(r) = self.by_oid.get_mut(&child) {
            r.parents.push(parent);
        }
    }

    pub fn add_definition(&mut self, view: u32, sql: String) {
        if let Some(r) = self.by_oid.get_mut(&view) {
            r.definition = Some(sql);
        }
    }

    /// The relation `schema.name`.
    pub fn named(&self, schema: &str, name: &str) -> Option<&RelationInfo> {
        self.by_name.get(&ObjectName::new(Some(schema), name)).and_then(|oid| self.by_oid.get(oid))
    }

    /// Every relation called `name`, in any schema.
    pub fn all_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a RelationInfo> + 'a {
        self.by_oid.values().filter(move |r| r.name == name)
    }

    /// Relations that inherit from `oid` (or are its partitions).
    pub fn children(&self, oid: u32) -> impl Iterator<Item = &RelationInfo> + '_ {
        self.by_oid.values().filter(move |r| r.parents.contains(&oid))
    }
}

/// The session's temporary schema (`pg_temp_3`) is also named `pg_temp`.
fn also_pg_temp(schema: &str) -> Option<&'static str> {
    schema.strip_prefix("pg_temp_").filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(|_| "pg_temp")
}

impl Catalog {
    /// Records a user function (all overloads of `schema.name` folded).
    pub fn add_function(&mut self, schema: &str, name: &str, volatility: Volatility, one_argument: Option<Volatility>) {
        if let Some(alias) = also_pg_temp(schema) {
            self.add_function(alias, name, volatility, one_argument);
        }
        let key = ObjectName::new(Some(schema), name);
        worst(self.functions.entry(key).or_insert(volatility), volatility);
        worst(self.by_name.entry(name.to_string()).or_insert(volatility), volatility);
        if let Some(v) = one_argument {
            worst(self.one_argument.entry(name.to_string()).or_insert(v), v);
        }
    }

    pub fn add_volatile_operator(&mut self, schema: &str, symbol: &str) {
        self.volatile_operators.insert(ObjectName::new(Some(schema), symbol));
    }

    /// Whether an unqualified operator `symbol` may reach a volatile user operator: through
    /// the schemas of `path` and pg_catalog when the search_path is known, any schema if not.
    fn volatile_operator(&self, symbol: &str, path: Option<&[String]>) -> bool {
        match path {
            None => self.volatile_operators.iter().any(|o| o.name == symbol),
            Some(path) => path
                .iter()
                .map(String::as_str)
                .chain(["pg_catalog"])
                .any(|schema| self.volatile_operators.contains(&ObjectName::new(Some(schema), symbol))),
        }
    }

    pub fn add_volatile_builtin(&mut self, name: &str) {
        self.volatile_builtins.insert(name.to_string());
    }

    pub fn add_unsafe_type(&mut self, schema: &str, name: &str) {
        if let Some(alias) = also_pg_temp(schema) {
            self.unsafe_types.insert(ObjectName::new(Some(alias), name));
        }
        self.unsafe_types.insert(ObjectName::new(Some(schema), name));
        self.unsafe_type_names.insert(name.to_string());
    }

    pub fn add_unsafe_type_oid(&mut self, oid: u32) {
        self.unsafe_type_oids.insert(oid);
    }

    pub fn add_volatile_cast(&mut self, schema: &str, target: &str, implicit: bool) {
        self.volatile_casts.push((ObjectName::new(Some(schema), target), implicit));
    }

    /// Whether some schema has a user function called `name`.
    pub fn has_user_function(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// User functions recorded (all schemas, overloads folded).
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// The worst overload of `schema.name` (`None`: any schema), as recorded.
    #[cfg(test)]
    pub fn function_volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        match schema {
            Some(_) => self.functions.get(&ObjectName::new(schema, name)).copied(),
            None => self.by_name.get(name).copied(),
        }
    }

    /// Whether an unqualified `symbol` may reach a VOLATILE user operator on `path`.
    #[cfg(test)]
    pub fn volatile_operator_in(&self, path: Option<&[String]>, symbol: &str) -> bool {
        self.volatile_operator(symbol, path)
    }

    /// The worst overload of `name` callable with one argument, in any schema.
    #[cfg(test)]
    pub fn one_argument_volatility(&self, name: &str) -> Option<Volatility> {
        self.one_argument.get(name).copied()
    }

    /// The worst user function an unqualified call of `name` can reach: through the schemas of
    /// `path` (and pg_catalog, always searched) when the session's search_path is known, through
    /// any schema when it is not.
    fn unqualified(&self, name: &str, path: Option<&[String]>) -> Option<Volatility> {
        match path {
            None => self.by_name.get(name).copied(),
            Some(path) => path
                .iter()
                .map(String::as_str)
                .chain(["pg_catalog"])
                .filter_map(|schema| self.functions.get(&ObjectName::new(Some(schema), name)).copied())
                .max(),
        }
    }

    /// What a lookup the analyser could not answer is, per this catalog: `None` when it is a
    /// read (an IMMUTABLE or STABLE user function, a type whose cast runs no user code).
    fn answer(&self, lookup: &Lookup, path: Option<&[String]>) -> Option<String> {
        match lookup {
            Lookup::Function(n)
                if n.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                    && (self.volatile_builtins.contains(&n.name)
                        || super::functions::volatile_unclassified(&n.name)) =>
            {
                // pg_catalog is searched first: a built-in the analyser does not know.
                Some(format!("calls {n}, a VOLATILE built-in function"))
            }
            Lookup::Function(n) => {
                let found = match &n.schema {
                    Some(_) => self.functions.get(n).copied(),
                    None => self.unqualified(&n.name, path),
                };
                match found {
                    Some(v) if v < Volatility::Volatile => None,
                    Some(v) => Some(format!("calls {n}, a {} user function", v.as_str())),
                    None => Some(format!("calls {n}, a function the database's catalog does not have (yet)")),
                }
            }
            Lookup::Type(n) => {
                let unsafe_type = match &n.schema {
                    Some(_) => self.unsafe_types.contains(n),
                    None => self.unsafe_type_names.contains(&n.name),
                };
                unsafe_type.then(|| {
                    format!(
                        "casts to {n}, a type whose input runs user code (a domain's CHECK, a volatile input function)"
                    )
                })
            }
        }
    }

    /// Why a statement that names only built-ins may not run built-ins: a user overload of a
    /// called function's name, a field selection that is a user function (`t.f` is `f(t)`), a
    /// user operator or cast, each VOLATILE. `None` when nothing of it is shadowed.
    fn shadowing(&self, analysis: &Analysis, normalised: &str, path: Option<&[String]>) -> Option<String> {
        for f in analysis.functions.iter() {
            let user = match f.schema.as_deref() {
                None => self.unqualified(&f.name, path),
                Some("pg_catalog") => self.functions.get(f).copied(),
                Some(_) => None,
            };
            if user == Some(Volatility::Volatile) {
                return Some(format!("calls {f}, and the database has a VOLATILE user function of that name"));
            }
        }
        let operators = !self.volatile_operators.is_empty();
        let fields = self.one_argument.values().any(|v| *v == Volatility::Volatile);
        let casts = !self.volatile_casts.is_empty();
        // A type that runs user code under a built-in type's name (`evil.text`): reached when
        // the search_path puts its schema first; the analyser trusts the built-in name.
        let types =
            self.unsafe_type_names.iter().any(|t| super::functions::BUILTIN_TYPES.binary_search(&t.as_str()).is_ok());
        if !(operators || fields || casts || types) {
            return None;
        }
        let implicit_cast = self.volatile_casts.iter().find(|(_, implicit)| *implicit);
        if let Some((target, _)) = implicit_cast
            && (!analysis.relations.is_empty() || !analysis.functions.is_empty())
        {
            return Some(format!("the database has an implicit cast to {target} that runs a VOLATILE function"));
        }
        let implicit_comparisons = IMPLICIT_OPERATORS.iter().any(|op| self.volatile_operator(op, path));
        let tokens: Vec<_> = Lexer::new(normalised, LexOptions::default()).filter(|t| !t.kind.is_trivia()).collect();
        for (i, token) in tokens.iter().enumerate() {
            let text = &normalised[token.range()];
            let after_dot =
                i > 0 && tokens[i - 1].kind == TokenKind::Punctuation && &normalised[tokens[i - 1].range()] == ".";
            let called = tokens.get(i + 1).is_some_and(|t| &normalised[t.range()] == "(");
            match token.kind {
                // `OPERATOR(schema.op)` is qualified: the analyser judges its schema.
                TokenKind::Operator if operators && !after_dot => {
                    // Normalisation leaves `?` for a literal, which the lexer joins to an operator
                    // before it (`-'x'` reads `-?`): each piece is a possible operator too.
                    // `!=` is `<>` to the server.
                    let text = if text == "!=" { "<>" } else { text };
                    let mut pieces = Vec::new();
                    for piece in std::iter::once(text).chain(text.split('?').filter(|p| !p.is_empty())) {
                        pieces.push(piece);
                        // The server ends a multi-character operator before trailing `+`/`-`
                        // unless it holds one of ~!@#^&|`?% (`*-` is `*` then a prefix `-`).
                        if piece.len() > 1
                            && piece.ends_with(['+', '-'])
                            && !piece.contains(|c| "~!@#^&|`?%".contains(c))
                        {
                            let head = piece.trim_end_matches(['+', '-']);
                            let head = if head.is_empty() { &piece[..1] } else { head };
                            pieces.push(head);
                            pieces.extend((head.len()..piece.len()).map(|i| &piece[i..i + 1]));
                        }
                    }
                    for piece in pieces {
                        if self.volatile_operator(piece, path) {
                            return Some(format!(
                                "operator {piece}: the database has a VOLATILE user operator of that name"
                            ));
                        }
                    }
                }
                TokenKind::Identifier | TokenKind::QuotedIdentifier { .. } => {
                    let word = text.to_ascii_lowercase();
                    // `x.f(...)` is a qualified call (judged by name above); `x.f` alone may be f(x).
                    if after_dot
                        && !called
                        && fields
                        && self.one_argument.get(unquoted(text).as_str()) == Some(&Volatility::Volatile)
                    {
                        return Some(format!(
                            "selects .{text}, which may be a VOLATILE user function ({text}(row) in functional notation)"
                        ));
                    }
                    if implicit_comparisons && IMPLICIT_COMPARING.contains(&word.as_str()) {
                        return Some(format!(
                            "{word} compares with an operator, and the database has a VOLATILE user comparison operator"
                        ));
                    }
                    let previous = i.checked_sub(1).map(|p| &normalised[tokens[p].range()]);
                    let typed = previous.is_some_and(|p| p == "::" || p == "." || p.eq_ignore_ascii_case("as"))
                        || tokens.get(i + 1).is_some_and(|t| {
                            matches!(t.kind, TokenKind::StringLiteral(_)) || &normalised[t.range()] == "?"
                        });
                    if types && typed && self.unsafe_type_names.contains(&unquoted(text)) {
                        return Some(format!(
                            "names type {text}, and the database has a type of that name whose input runs user code"
                        ));
                    }
                    if casts && word == "cast" {
                        return Some("casts, and the database has a cast that runs a VOLATILE function".into());
                    }
                }
                TokenKind::Punctuation if casts && text == "::" => {
                    return Some("casts, and the database has a cast that runs a VOLATILE function".into());
                }
                _ => {}
            }
        }
        None
    }
}

/// Operators PostgreSQL also applies without their symbol being written (IN, LIKE, BETWEEN,
/// DISTINCT, ORDER BY, CASE, ...).
const IMPLICIT_OPERATORS: &[&str] = &["!~", "!~~", "!~~*", "<", "<=", "<>", "=", ">", ">=", "~", "~~", "~~*"];
/// Words whose meaning applies such an operator.
const IMPLICIT_COMPARING: &[&str] = &[
    "all",
    "any",
    "between",
    "case",
    "distinct",
    "except",
    "greatest",
    "group",
    "ilike",
    "in",
    "intersect",
    "join",
    "least",
    "like",
    "max",
    "min",
    "nullif",
    "order",
    "similar",
    "some",
    "union",
];

fn worst(slot: &mut Volatility, v: Volatility) {
    if v > *slot {
        *slot = v;
    }
}

/// An identifier token's name as the server reads it (case-folded unless quoted).
fn unquoted(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    }
}

/// What is known of the database a statement runs in.
#[derive(Debug, Clone, Copy)]
pub enum CatalogView<'a> {
    /// Its catalog, read at the session's start; unqualified names may reach any schema.
    Known(&'a Catalog),
    /// Its catalog, and the schemas of the session's search_path (as the server last showed
    /// it, `$user` resolved): unqualified function names reach only these and pg_catalog.
    OnPath(&'a Catalog, &'a [String]),
    /// Built-in names taken as built-ins, no user object known (offline explanation, tests).
    BuiltinsOnly,
    /// The catalog could not be read: why. Nothing resolved by name can be trusted.
    Unavailable(&'a str),
}

/// Why values bound to parameters of these declared types (a Parse's, by OID) run code the
/// analyser cannot see: the server converts each with its type's input (or receive) function, so
/// a domain's CHECK or a volatile input function runs when the statement is bound, whatever
/// the statement's text. Types made by users (OID 16384 and above) only: a built-in type runs
/// no user code. `None` when none does, or when no user object is known (`BuiltinsOnly`, as for
/// a cast by name).
pub fn unsafe_parameter(view: CatalogView<'_>, types: &[u32]) -> Option<String> {
    let mut user = types.iter().copied().filter(|t| *t >= FIRST_USER_OID);
    match view {
        CatalogView::BuiltinsOnly => None,
        CatalogView::Unavailable(why) => user.next().map(|t| {
            format!("binds a parameter declared of type OID {t}, a user type, and the database's catalog could not be read ({why})")
        }),
        CatalogView::Known(catalog) | CatalogView::OnPath(catalog, _) => {
            user.find(|t| catalog.unsafe_type_oids.contains(t)).map(|t| {
                format!(
                    "binds a parameter declared of type OID {t}, a type whose input runs user code (a domain's CHECK, a volatile input function)"
                )
            })
        }
    }
}

/// Objects with OIDs from here on were created after initdb: by users and extensions.
/// (PostgreSQL's `FirstNormalObjectId`.)
pub const FIRST_USER_OID: u32 = 16384;

/// A statement's class and effects once the catalog answered what the analyser could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub class: Class,
    pub effects: ClassSet,
    pub reason: Option<std::sync::Arc<str>>,
}

/// Settles an analysis against what is known of the database: an `unknown` that stood only for
/// user functions and types the catalog shows to be reads is cleared; a built-in name a
/// VOLATILE user object may stand for becomes `unknown`.
pub fn settle(analysis: &Analysis, normalised: &str, view: CatalogView<'_>) -> Settled {
    let mut settled = Settled {
        class: analysis.class,
        effects: if analysis.effects.is_empty() { ClassSet::of(&[analysis.class]) } else { analysis.effects },
        reason: analysis.class_reason.clone(),
    };
    let unknown = |s: &mut Settled, why: String| {
        s.effects.insert(Class::Unknown);
        s.class = Class::Unknown;
        s.reason = Some(std::sync::Arc::from(why));
    };
    match view {
        CatalogView::BuiltinsOnly => {}
        CatalogView::Unavailable(why) => {
            // A relation's columns may be functions (`t.f`), its comparisons user operators.
            if !analysis.functions.is_empty() || !analysis.relations.is_empty() || resolves_by_name(normalised) {
                unknown(
                    &mut settled,
                    format!("resolves names the database's catalog decides, and it could not be read ({why})"),
                );
            }
        }
        CatalogView::Known(catalog) | CatalogView::OnPath(catalog, _) => {
            let path = match view {
                CatalogView::OnPath(_, path) => Some(path),
                _ => None,
            };
            let Lookups { pending, only } = &analysis.lookups;
            if *only && !pending.is_empty() {
                match pending.iter().find_map(|l| catalog.answer(l, path)) {
                    // Each one a read: the statement is what the rest of it is.
                    None => {
                        settled.effects = settled.effects.without(Class::Unknown);
                        if settled.effects.is_empty() {
                            settled.effects.insert(Class::Read);
                        }
                        settled.class = settled.effects.primary().unwrap_or(Class::Read);
                        settled.reason = analysis.lookups_reason.clone();
                    }
                    Some(why) => settled.reason = Some(std::sync::Arc::from(why)),
                }
            }
            if let Some(why) = catalog.shadowing(analysis, normalised, path) {
                unknown(&mut settled, why);
            }
        }
    }
    settled
}

/// Whether a statement resolves an operator or a type by name (as functions are).
pub fn resolves_by_name(normalised: &str) -> bool {
    Lexer::new(normalised, LexOptions::default()).any(|t| {
        let text = &normalised[t.range()];
        match t.kind {
            // `?` is what normalisation leaves of a literal; a jsonb `?` reads the same.
            TokenKind::Operator => text != "?",
            TokenKind::Punctuation => text == "::",
            TokenKind::Identifier => text.eq_ignore_ascii_case("cast"),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As govern settles it: the description cache's normalised text and analysis.
    fn settled(sql: &str, view: CatalogView<'_>) -> Settled {
        let described = crate::sql::DescriptionCache::new(16).describe(sql);
        settle(&described.analysis, &described.normalised, view)
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.add_function("app", "owner_of", Volatility::Stable, Some(Volatility::Stable));
        c.add_function("public", "lower", Volatility::Volatile, Some(Volatility::Volatile));
        c.add_function("app", "purge", Volatility::Volatile, Some(Volatility::Volatile));
        c.add_function("app", "touch", Volatility::Immutable, None);
        c.add_unsafe_type("app", "checked");
        c
    }

    #[test]
    fn user_functions_are_reads_only_when_the_catalog_says_so() {
        let c = catalog();
        let known = CatalogView::Known(&c);
        let read = settled("select app.owner_of(t) from t", known);
        assert_eq!((read.class, read.effects), (Class::Read, ClassSet::of(&[Class::Read])));
        assert_eq!(settled("select owner_of(1)", known).class, Class::Read, "unqualified: every schema's");
        assert_eq!(settled("select app.purge()", known).class, Class::Unknown);
        assert!(settled("select app.purge()", known).reason.is_some_and(|r| r.contains("VOLATILE")));
        assert_eq!(settled("select nosuch.f()", known).class, Class::Unknown, "not in the catalog");
        // A lookup never clears an unknown that has another cause.
        assert_eq!(settled("select app.owner_of(1); do $$ begin end $$", known).class, Class::Unknown);
        // A write stays a write, with its own reason.
        let write = settled("delete from t where id = app.touch(1)", known);
        assert_eq!(write.class, Class::Write);
        // Without the catalog, the analyser's own unknown stands.
        assert_eq!(settled("select app.owner_of(1)", CatalogView::BuiltinsOnly).class, Class::Unknown);
    }

    /// A VOLATILE built-in the analyser does not classify is never cleared by a STABLE user
    /// function of its name, even when the catalog read lists no built-ins (a server that
    /// answered with none: a workload's own, reached at the database's address): pg_catalog is
    /// searched first.
    #[test]
    fn an_unclassified_volatile_built_in_is_not_a_read_without_the_servers_list() {
        let mut c = Catalog::default();
        c.add_function("public", "currtid2", Volatility::Stable, Some(Volatility::Stable));
        c.add_function("public", "my_report", Volatility::Stable, Some(Volatility::Stable));
        let path = ["public".to_string()];
        for view in [CatalogView::Known(&c), CatalogView::OnPath(&c, &path)] {
            let call = settled("select currtid2(1)", view);
            assert_eq!(call.class, Class::Unknown, "{call:?}");
            assert!(call.reason.is_some_and(|r| r.contains("VOLATILE built-in")));
            assert_eq!(settled("select pg_catalog.currtid2(1)", view).class, Class::Unknown);
            assert_eq!(settled("select my_report(1)", view).class, Class::Read, "a STABLE user function");
        }
    }

    #[test]
    fn volatile_user_objects_shadow_built_in_names() {
        let c = catalog();
        let known = CatalogView::Known(&c);
        assert_eq!(settled("select lower('a')", known).class, Class::Unknown, "user lower() overload");
        assert_eq!(settled("select pg_catalog.lower('a')", known).class, Class::Read, "qualified: the built-in");
        let path = ["app".to_string()];
        let on_path = CatalogView::OnPath(&c, &path);
        assert_eq!(settled("select lower('a')", on_path).class, Class::Read, "public is not on the path");
        assert_eq!(settled("select purge()", on_path).class, Class::Unknown);
        assert_eq!(settled("select upper('a')", known).class, Class::Read);
        assert_eq!(settled("select t.purge from t", known).class, Class::Unknown, "functional notation");
        assert_eq!(settled("select (t).purge from t", known).class, Class::Unknown);
        assert_eq!(settled("select t.owner_of from t", known).class, Class::Read, "a STABLE one");
        let mut ops = Catalog::default();
        ops.add_volatile_operator("shadow", "+");
        ops.add_volatile_operator("shadow", "-");
        assert_eq!(settled("select 1 + 2", CatalogView::Known(&ops)).class, Class::Unknown);
        assert_eq!(settled("select 1 * 2", CatalogView::Known(&ops)).class, Class::Read);
        assert_eq!(settled("select 2*-a from t", CatalogView::Known(&ops)).class, Class::Unknown, "*- is * then -");
        let mut ne = Catalog::default();
        ne.add_volatile_operator("public", "<>");
        assert_eq!(settled("select a != 1 from t", CatalogView::Known(&ne)).class, Class::Unknown, "!= is <>");
        let mut similar = Catalog::default();
        similar.add_volatile_operator("public", "~");
        assert_eq!(settled("select a similar to 'x' from t", CatalogView::Known(&similar)).class, Class::Unknown);
        assert_eq!(
            settled("select -'abc'::text", CatalogView::Known(&ops)).class,
            Class::Unknown,
            "-? is - then a literal"
        );
        assert_eq!(settled("select 1 operator(pg_catalog.+) 2", CatalogView::Known(&ops)).class, Class::Read);
        let public = ["public".to_string()];
        assert_eq!(
            settled("select 1 + 2", CatalogView::OnPath(&ops, &public)).class,
            Class::Read,
            "shadow is not searched"
        );
        let mut eq = Catalog::default();
        eq.add_volatile_operator("public", "=");
        assert_eq!(settled("select * from t where a in (1, 2)", CatalogView::Known(&eq)).class, Class::Unknown);
        assert_eq!(settled("select * from t order by a", CatalogView::Known(&eq)).class, Class::Unknown);
        let mut casts = Catalog::default();
        casts.add_volatile_cast("pg_catalog", "text", false);
        assert_eq!(settled("select a::text from t", CatalogView::Known(&casts)).class, Class::Unknown);
        assert_eq!(settled("select a from t", CatalogView::Known(&casts)).class, Class::Read);
        casts.add_volatile_cast("pg_catalog", "int4", true);
        assert_eq!(settled("select a from t", CatalogView::Known(&casts)).class, Class::Unknown, "implicit");
    }

    #[test]
    fn types_whose_input_runs_user_code_stay_unknown() {
        let c = catalog();
        let known = CatalogView::Known(&c);
        assert_eq!(settled("select row(1, 2)::app.pair", known).class, Class::Read, "a composite type");
        assert_eq!(settled("select '1'::app.checked", known).class, Class::Unknown, "a domain with CHECK");
        assert_eq!(settled("select '1'::checked", known).class, Class::Unknown, "unqualified: any schema's");
        assert_eq!(settled("select '{1}'::app.pair[]", known).class, Class::Read);
        let mut shadow = Catalog::default();
        shadow.add_unsafe_type("evil", "text");
        let view = CatalogView::Known(&shadow);
        assert_eq!(settled("select 1::text", view).class, Class::Unknown, "a domain named like a built-in");
        assert_eq!(settled("select cast(1 as text)", view).class, Class::Unknown);
        assert_eq!(settled("select text 'a'", view).class, Class::Unknown);
        assert_eq!(settled("select 1::int4", view).class, Class::Read);
    }

    #[test]
    fn an_unreadable_catalog_fails_closed_for_what_resolves_by_name() {
        let view = CatalogView::Unavailable("permission denied");
        assert_eq!(settled("select lower('a')", view).class, Class::Unknown);
        assert_eq!(settled("select 1 + 1", view).class, Class::Unknown);
        assert_eq!(settled("select a.f from t a", view).class, Class::Unknown, "a.f may be f(a)");
        assert_eq!(settled("select 1", view).class, Class::Read);
        assert!(settled("select now()", view).reason.is_some_and(|r| r.contains("permission denied")));
    }

    #[test]
    fn a_parameter_declared_of_a_type_whose_input_runs_user_code_is_named() {
        let mut c = catalog();
        c.add_unsafe_type_oid(70001);
        let known = CatalogView::Known(&c);
        assert!(unsafe_parameter(known, &[]).is_none());
        assert!(unsafe_parameter(known, &[23, 70002]).is_none(), "a user type whose input runs no user code");
        assert!(unsafe_parameter(known, &[70002, 70001]).is_some_and(|r| r.contains("OID 70001")));
        assert!(unsafe_parameter(CatalogView::OnPath(&c, &[]), &[70001]).is_some());
        // A built-in OID is never unsafe, even if listed.
        c.add_unsafe_type_oid(25);
        assert!(unsafe_parameter(CatalogView::Known(&c), &[25]).is_none());
        let unreadable = CatalogView::Unavailable("permission denied");
        assert!(unsafe_parameter(unreadable, &[23, 25]).is_none(), "built-in types run no user code");
        assert!(unsafe_parameter(unreadable, &[70002]).is_some_and(|r| r.contains("permission denied")));
        assert!(unsafe_parameter(CatalogView::BuiltinsOnly, &[70001]).is_none());
    }
}
