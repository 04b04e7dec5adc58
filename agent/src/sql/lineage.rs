//! Lineage: for each column a statement returns, the table columns its values are computed
//! from, and where else the statement reads table columns (conditions that decide which rows
//! come back, values written elsewhere). Pure: the relations a statement names are looked up
//! through [`Relations`], which the caller backs with the database's catalog (views answer
//! with the lineage of their own definition, so a view column leads back to its base columns).
//!
//! The analysis is conservative where it cannot be exact: a value computed from several
//! columns carries all of them; a reference that could mean several columns means all of
//! them; a construct it does not trace is an error (the caller refuses or masks everything),
//! never a guess. Only a plain column reference passes a column through unchanged
//! (`Src::computed` false); everything else (casts, functions, operators, CASE, aggregates,
//! row, array and JSON constructors, subqueries, whole-row references) is computed.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, JoinConstraint, JoinOperator,
    ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor,
    TableWithJoins, Visit, Visitor,
};

use super::classify::{ident, object_name};

/// A table column: its relation's OID and attribute number.
pub type ColKey = (u32, i16);

/// Where an output value comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Src {
    /// The table columns it is read from (sorted, each once).
    pub cols: Vec<ColKey>,
    /// Not a plain reference: computed from `cols` (or from nothing traced).
    pub computed: bool,
    /// It includes values whose lineage cannot be known (a function whose body is not read,
    /// a relation that quotes other tables' values).
    pub opaque: bool,
}

impl Src {
    /// A plain reference to one column.
    pub fn column(key: ColKey) -> Src {
        Src { cols: vec![key], computed: false, opaque: false }
    }

    pub fn opaque() -> Src {
        Src { cols: Vec::new(), computed: true, opaque: true }
    }

    pub fn add(&mut self, other: &Src) {
        for c in &other.cols {
            if let Err(at) = self.cols.binary_search(c) {
                self.cols.insert(at, *c);
            }
        }
        self.computed |= other.computed;
        self.opaque |= other.opaque;
    }

    fn computed(mut self) -> Src {
        self.computed = true;
        self
    }

    pub fn is_clean(&self) -> bool {
        self.cols.is_empty() && !self.opaque
    }
}

/// A column of a relation, as [`Relations`] describes it.
#[derive(Debug, Clone)]
pub struct RelColumn {
    pub name: String,
    pub src: Src,
    /// A generated column (not in a `COPY table TO` without a column list).
    pub generated: bool,
}

/// What a relation name in a statement stands for.
#[derive(Debug, Clone)]
pub enum Relation {
    /// A table, view or other relation with these columns, in order.
    Columns(Vec<RelColumn>),
    /// Any of several relations (a name on the search_path more than once) whose column lists
    /// differ: the columns by name, their order not known (by position, any of them).
    Unordered(Vec<RelColumn>),
    /// A relation none of whose values come from user tables (a system catalog), or one that
    /// does not exist (the statement fails).
    Clean,
    /// A relation whose values quote other tables' values (column statistics, query texts).
    Opaque(String),
}

/// The relations and functions a statement names, as the database knows them.
pub trait Relations {
    fn relation(&self, schema: Option<&str>, name: &str) -> Relation;
    /// Why calling this function yields values of unknown lineage, if it does (a user
    /// function whose body is not read, a built-in that runs SQL text).
    fn opaque_function(&self, schema: Option<&str>, name: &str) -> Option<String>;
    /// What a relation's rows are chosen by (a view's WHERE): reading it reads those in a
    /// condition.
    fn relation_condition(&self, _schema: Option<&str>, _name: &str) -> Src {
        Src::default()
    }
    /// Why an operator written `symbol` may run a user function, if it may.
    fn opaque_operator(&self, _symbol: &str) -> Option<String> {
        None
    }
}

/// `COPY ... TO STDOUT`: how its rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv { header: bool },
    Binary,
}

/// A statement's lineage.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// Each column it returns (names as it names them), when it returns rows.
    pub outputs: Option<Vec<(String, Src)>>,
    /// Whether `outputs` surely has one entry per column returned (false when a `*` expands
    /// a relation whose columns are not known).
    pub exact: bool,
    /// Columns whose values decide which rows come back, or in which order or groups (WHERE,
    /// JOIN, GROUP BY, HAVING, ORDER BY, DISTINCT ON, window clauses, subqueries there).
    pub condition: Src,
    /// Columns whose values are written somewhere else (INSERT ... SELECT, UPDATE SET, CREATE
    /// TABLE AS, SELECT INTO, COPY to a file).
    pub copied: Src,
    /// Why some values are of unknown lineage.
    pub opaque: Vec<String>,
    /// COPY TO STDOUT, and whether its options are the defaults (delimiter, NULL, quote and
    /// escape), the only ones whose rows are rewritten.
    pub copy_out: Option<(CopyFormat, bool)>,
    /// A cursor it declares (`DECLARE name CURSOR FOR query`): `outputs` is what it returns.
    pub declares: Option<String>,
    /// Functions it calls that do more than compute (notify, change settings or sequences,
    /// large objects): a value passed to them leaves by another channel.
    pub side_effects: Vec<String>,
}

/// Nesting deeper than this is not traced (an error, not a stack overflow).
const MAX_DEPTH: usize = 64;
/// Queries (subqueries, CTE passes) traced for one statement at most.
const MAX_WORK: usize = 5_000;

/// The lineage of one parsed statement.
pub fn lineage(statement: &Statement, relations: &dyn Relations) -> Result<Lineage, String> {
    lineage_in(statement, relations, false)
}

fn lineage_in(statement: &Statement, relations: &dyn Relations, mysql: bool) -> Result<Lineage, String> {
    let mut a = Analyzer { relations, out: Lineage { exact: true, ..Lineage::default() }, depth: 0, work: 0, mysql };
    a.statement(statement)?;
    Ok(a.out)
}

/// The lineage of a statement's text under the session's lexical rules: PostgreSQL's, or
/// MySQL's (identifiers folded to lower case: the relations answer under folded names).
pub fn lineage_of_text_in(
    text: &str,
    relations: &dyn Relations,
    options: super::LexOptions,
) -> Result<Lineage, String> {
    if !options.dialect.is_mysql() {
        return lineage_of_text(text, relations);
    }
    let statement = super::mysql_classify::lineage_statement(text, options)?;
    lineage_in(&statement, relations, true)
}

/// The lineage of a statement's text (PostgreSQL's lexical rules, `standard_conforming_strings`
/// on): one statement, or an error.
pub fn lineage_of_text(text: &str, relations: &dyn Relations) -> Result<Lineage, String> {
    let statement = match super::classify::parse_statement(text) {
        Ok(s) => s,
        // `TABLE name` (sqlparser lacks it) is `SELECT * FROM name`.
        Err(e) => match table_command(text) {
            Some(rest) => super::classify::parse_statement(&format!("SELECT * FROM {rest}")).map_err(|_| e)?,
            None => return Err(e),
        },
    };
    lineage(&statement, relations)
}

/// The rest of a `TABLE ...` command, after the keyword.
fn table_command(text: &str) -> Option<&str> {
    let mut tokens = super::Lexer::new(text, super::LexOptions::default()).filter(|t| !t.kind.is_trivia());
    let first = tokens.next()?;
    (first.kind == super::TokenKind::Identifier && text[first.range()].eq_ignore_ascii_case("table"))
        .then(|| &text[first.range().end..])
}

/// A FROM item in scope.
#[derive(Debug, Clone)]
struct Item {
    /// What it may be qualified by: its alias, or its name (and `schema.name`).
    names: Vec<String>,
    /// Its columns, when known.
    columns: Option<Vec<(String, Src)>>,
    /// Where values of columns not listed come from (functions in FROM): unresolved names may
    /// be its columns.
    rest: Option<Src>,
    /// Joined with USING or NATURAL: `*` merges columns.
    merged: bool,
}

impl Item {
    fn whole_row(&self) -> Src {
        let mut src = Src::default();
        for (_, s) in self.columns.iter().flatten() {
            src.add(s);
        }
        if let Some(rest) = &self.rest {
            src.add(rest);
        }
        src.computed()
    }
}

/// The names visible at one level of a query, and the level around it.
struct Scope<'p> {
    items: Vec<Item>,
    ctes: Vec<(String, Vec<(String, Src)>)>,
    /// Output columns by name (ORDER BY and GROUP BY may name them).
    outputs: Vec<(String, Src)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn new(parent: Option<&'p Scope<'p>>) -> Self {
        Scope { items: Vec::new(), ctes: Vec::new(), outputs: Vec::new(), parent }
    }

    fn cte(&self, name: &str) -> Option<&Vec<(String, Src)>> {
        self.ctes.iter().rev().find(|(n, _)| n == name).map(|(_, c)| c).or_else(|| self.parent?.cte(name))
    }

    /// What an unqualified name means: columns of that name (innermost level that has one),
    /// else a whole row of an item of that name, else an output column, else a column of a
    /// FROM function whose columns are not known.
    fn resolve(&self, name: &str) -> Option<Src> {
        let mut found: Option<Src> = None;
        let mut open: Option<Src> = None;
        for item in &self.items {
            for (n, s) in item.columns.iter().flatten() {
                if n == name {
                    found.get_or_insert_with(Src::default).add(s);
                    if found.as_ref().is_some_and(|f| f.cols.len() > 1 || f.opaque) {
                        // Ambiguous or merged (USING): a value of several columns.
                    }
                }
            }
            if let Some(rest) = &item.rest {
                open.get_or_insert_with(Src::default).add(rest);
            }
        }
        if let Some(mut f) = found {
            if let Some(o) = open {
                f.add(&o.computed());
            }
            return Some(f);
        }
        if let Some(item) = self.items.iter().find(|i| i.names.iter().any(|n| n == name)) {
            return Some(item.whole_row());
        }
        if let Some((_, s)) = self.outputs.iter().find(|(n, _)| n == name) {
            return Some(s.clone());
        }
        if let Some(o) = open {
            return Some(o.computed());
        }
        self.parent?.resolve(name)
    }

    /// `qualifier.name`: a column of the item so qualified, or a field of a whole row.
    fn resolve_qualified(&self, qualifier: &str, name: &str) -> Option<Src> {
        for item in &self.items {
            if item.names.iter().any(|n| n == qualifier) {
                if let Some(columns) = &item.columns
                    && let Some((_, s)) = columns.iter().find(|(n, _)| n == name)
                {
                    return Some(s.clone());
                }
                return Some(item.whole_row());
            }
        }
        self.parent?.resolve_qualified(qualifier, name)
    }

    fn item(&self, qualifier: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.names.iter().any(|n| n == qualifier)).or_else(|| self.parent?.item(qualifier))
    }
}

struct Analyzer<'r> {
    relations: &'r dyn Relations,
    out: Lineage,
    depth: usize,
    work: usize,
    /// MySQL: user variables are values of unknown lineage, and a statement of a kind not
    /// traced copies whatever its expressions read (`SET @v = (SELECT ...)`, `CALL p(...)`).
    mysql: bool,
}

/// Where a collected reference counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Into_ {
    Value,
    Condition,
    Copied,
}

impl<'r> Analyzer<'r> {
    /// An analyzer for a statement nested in this one (its own lineage, the same budget).
    fn nested(&self) -> Analyzer<'r> {
        Analyzer {
            relations: self.relations,
            out: Lineage::default(),
            depth: self.depth,
            work: self.work,
            mysql: self.mysql,
        }
    }

    fn statement(&mut self, statement: &Statement) -> Result<(), String> {
        match statement {
            Statement::Query(q) => {
                let outputs = self.query(q, None)?;
                self.out.outputs = Some(outputs);
            }
            Statement::Insert(insert) => self.insert(insert, None)?,
            Statement::Update(update) => self.update(update, None)?,
            Statement::Delete(delete) => self.delete(delete, None)?,
            Statement::Merge(_) => return Err("MERGE is not traced".into()),
            Statement::Copy { source, to, target, options, legacy_options, .. } => {
                let columns = match source {
                    ast::CopySource::Query(q) => self.query(q, None)?,
                    ast::CopySource::Table { table_name, columns } => {
                        let name = object_name(table_name).ok_or("a COPY of an unreadable name")?;
                        match self.relations.relation(name.schema.as_deref(), &name.name) {
                            Relation::Columns(all) if columns.is_empty() => {
                                all.into_iter().filter(|c| !c.generated).map(|c| (c.name, c.src)).collect()
                            }
                            // In an order not known: each column may be any.
                            Relation::Unordered(all) if columns.is_empty() => {
                                let any = any_of(all.iter().map(|c| &c.src));
                                all.into_iter().filter(|c| !c.generated).map(|c| (c.name, any.clone())).collect()
                            }
                            Relation::Columns(all) | Relation::Unordered(all) => columns
                                .iter()
                                .map(|c| {
                                    let n = ident(c);
                                    let src =
                                        all.iter().find(|a| a.name == n).map(|a| a.src.clone()).unwrap_or_default();
                                    (n, src)
                                })
                                .collect(),
                            Relation::Clean => Vec::new(),
                            Relation::Opaque(why) => {
                                self.out.opaque.push(why);
                                self.out.exact = false;
                                vec![(String::new(), Src::opaque())]
                            }
                        }
                    }
                };
                if !*to {
                    return Ok(());
                }
                if !matches!(target, ast::CopyTarget::Stdout) {
                    // To a file or program: the values are written where masking does not reach.
                    for (_, s) in &columns {
                        self.out.copied.add(s);
                    }
                    return Ok(());
                }
                self.out.copy_out = Some(copy_format(options, legacy_options));
                self.out.outputs = Some(columns);
            }
            Statement::Declare { stmts, .. } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let outputs = self.query(q, None)?;
                        self.out.outputs = Some(outputs);
                        self.out.declares = d.names.first().map(ident);
                    }
                }
            }
            Statement::Explain { statement, .. } => {
                // The plan shows no values, but conditions decide the row counts it shows, and
                // with ANALYZE it runs (what it writes is written).
                let mut inner = self.nested();
                inner.statement(statement)?;
                self.work = inner.work;
                self.out.condition.add(&inner.out.condition);
                self.out.copied.add(&inner.out.copied);
                self.out.opaque.extend(inner.out.opaque);
                self.out.side_effects.extend(inner.out.side_effects);
            }
            Statement::CreateTable(ct) => {
                if let Some(q) = &ct.query {
                    for (_, s) in self.query(q, None)? {
                        self.out.copied.add(&s);
                    }
                }
            }
            Statement::CreateView(cv) => {
                for (_, s) in self.query(&cv.query, None)? {
                    self.out.copied.add(&s);
                }
            }
            Statement::Call(f) => {
                // What it passes goes into the procedure; what it returns (MySQL's result
                // sets, PostgreSQL's OUT parameters) is whatever its body computes.
                self.collect(statement, &Scope::new(None), Into_::Copied);
                self.out.opaque.push(format!("calls procedure {}, whose results are not traced", f.name));
                self.out.exact = false;
            }
            _ if self.mysql => {
                // What its expressions read goes where the statement puts it (a variable, a
                // table): copied.
                self.collect(statement, &Scope::new(None), Into_::Copied);
            }
            _ => {}
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), String> {
        self.work += 1;
        if self.work > MAX_WORK {
            return Err(format!("more than {MAX_WORK} queries to trace: too complex"));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        Ok(())
    }

    /// A query's output columns; what it reads elsewhere goes to `self.out`.
    fn query(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> Result<Vec<(String, Src)>, String> {
        self.enter()?;
        let mut scope = Scope::new(outer);
        if let Some(with) = &q.with {
            let aliases = |cte: &ast::Cte| cte.alias.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>();
            if with.recursive {
                // A recursive CTE reads its own output: traced until its columns stop changing,
                // each column carrying what any of them carries (values move between columns
                // from one iteration to the next). Its name means itself from the start.
                for cte in &with.cte_tables {
                    let placeholder = aliases(cte).into_iter().map(|n| (n, Src::default())).collect();
                    scope.ctes.push((ident(&cte.alias.name), placeholder));
                }
                let mut converged = false;
                for _ in 0..with.cte_tables.len() + 8 {
                    let mut next = Vec::new();
                    for cte in &with.cte_tables {
                        let cte_scope =
                            Scope { items: Vec::new(), ctes: scope.ctes.clone(), outputs: Vec::new(), parent: outer };
                        let columns = rename(self.query(&cte.query, Some(&cte_scope))?, &aliases(cte));
                        let mut all = Src::default();
                        for (_, s) in &columns {
                            all.add(s);
                        }
                        let all = if all.is_clean() { all } else { all.computed() };
                        next.push((
                            ident(&cte.alias.name),
                            columns.into_iter().map(|(n, _)| (n, all.clone())).collect(),
                        ));
                    }
                    if next == scope.ctes {
                        converged = true;
                        break;
                    }
                    scope.ctes = next;
                }
                if !converged {
                    return Err("a recursive CTE whose columns do not settle".into());
                }
            } else {
                for cte in &with.cte_tables {
                    let cte_scope =
                        Scope { items: Vec::new(), ctes: scope.ctes.clone(), outputs: Vec::new(), parent: outer };
                    let columns = rename(self.query(&cte.query, Some(&cte_scope))?, &aliases(cte));
                    scope.ctes.push((ident(&cte.alias.name), columns));
                }
            }
        }
        let outputs = match q.body.as_ref() {
            // ORDER BY of a plain SELECT sees its FROM items too: traced there.
            SetExpr::Select(s) => self.select(s, &scope, Some(q))?,
            body => {
                let outputs = self.set_expr(body, &scope)?;
                scope.outputs = outputs.clone();
                self.tail(q, &scope, &outputs);
                outputs
            }
        };
        self.depth -= 1;
        Ok(outputs)
    }

    /// ORDER BY, LIMIT, OFFSET and FETCH of a query: conditions (they may name output columns).
    fn tail(&mut self, q: &Query, scope: &Scope<'_>, outputs: &[(String, Src)]) {
        if let Some(order_by) = &q.order_by {
            self.positional(order_by_exprs(order_by), outputs);
            self.collect(order_by, scope, Into_::Condition);
        }
        if let Some(limit) = &q.limit_clause {
            self.collect(limit, scope, Into_::Condition);
        }
        if let Some(fetch) = &q.fetch {
            self.collect(fetch, scope, Into_::Condition);
        }
    }

    /// A constant in ORDER BY or GROUP BY may be an output position: all outputs count (the
    /// literal's value is not kept by the analysis).
    /// A bare name there may be an output column's (PostgreSQL prefers the output column in
    /// ORDER BY): that output counts too.
    fn positional<'e>(&mut self, exprs: impl Iterator<Item = &'e Expr>, outputs: &[(String, Src)]) {
        for e in exprs {
            match e {
                Expr::Value(_) => {
                    for (_, s) in outputs {
                        self.out.condition.add(s);
                    }
                }
                Expr::Identifier(i) => {
                    let name = ident(i);
                    for (_, s) in outputs.iter().filter(|(n, _)| *n == name) {
                        self.out.condition.add(s);
                    }
                }
                _ => {}
            }
        }
    }

    fn set_expr(&mut self, body: &SetExpr, scope: &Scope<'_>) -> Result<Vec<(String, Src)>, String> {
        match body {
            SetExpr::Select(s) => self.select(s, scope, None),
            SetExpr::Query(q) => self.query(q, Some(scope)),
            SetExpr::SetOperation { left, op, set_quantifier, right } => {
                let mut l = self.set_expr(left, scope)?;
                let r = self.set_expr(right, scope)?;
                if l.len() != r.len() {
                    self.out.exact = false;
                }
                // Every set operation but UNION ALL compares rows by their values (duplicates
                // removed, rows kept or taken away): which rows come back tells them, as a
                // condition does (`(select substr(ssn, 1, 3) ...) intersect select '857'`).
                let compares = !matches!(
                    (op, set_quantifier),
                    (ast::SetOperator::Union, ast::SetQuantifier::All | ast::SetQuantifier::AllByName)
                );
                if compares {
                    for (_, s) in l.iter().chain(r.iter()) {
                        self.out.condition.add(&Src { cols: s.cols.clone(), computed: true, opaque: false });
                    }
                }
                for (i, (_, s)) in r.iter().enumerate() {
                    match l.get_mut(i) {
                        Some((_, ls)) => ls.add(s),
                        None => l.push((String::new(), s.clone())),
                    }
                }
                Ok(l)
            }
            SetExpr::Values(values) => {
                let mut out: Vec<(String, Src)> = Vec::new();
                for row in &values.rows {
                    for (i, e) in row.iter().enumerate() {
                        let src = self.collect(e, scope, Into_::Value);
                        let src = if is_plain_reference(e) { src } else { src.computed() };
                        match out.get_mut(i) {
                            Some((_, s)) => s.add(&src),
                            None => out.push((format!("column{}", i + 1), src)),
                        }
                    }
                }
                Ok(out)
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                let mut inner = self.nested();
                inner.out.exact = true;
                match s {
                    Statement::Insert(i) => inner.insert(i, Some(scope))?,
                    Statement::Update(u) => inner.update(u, Some(scope))?,
                    Statement::Delete(d) => inner.delete(d, Some(scope))?,
                    _ => return Err("MERGE is not traced".into()),
                }
                self.work = inner.work;
                self.out.condition.add(&inner.out.condition);
                self.out.copied.add(&inner.out.copied);
                self.out.opaque.extend(inner.out.opaque);
                self.out.side_effects.extend(inner.out.side_effects);
                self.out.exact &= inner.out.exact;
                Ok(inner.out.outputs.unwrap_or_default())
            }
            SetExpr::Table(t) => {
                let name = t.table_name.as_ref().ok_or("TABLE without a name")?;
                let schema = t.schema_name.as_ref().map(ident);
                let item = self.relation_item(schema.as_deref(), &ident(name), None, scope);
                match item.columns {
                    Some(c) => Ok(c),
                    None => {
                        self.out.exact = false;
                        Ok(vec![(String::new(), item.rest.unwrap_or_default())])
                    }
                }
            }
        }
    }

    fn select(&mut self, s: &Select, outer: &Scope<'_>, query: Option<&Query>) -> Result<Vec<(String, Src)>, String> {
        let mut scope = Scope::new(Some(outer));
        for twj in &s.from {
            self.table_with_joins(twj, &mut scope)?;
        }
        let mut outputs = Vec::new();
        for item in &s.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    for it in &scope.items {
                        self.expand(it, &mut outputs);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        let qualifier = object_name(name).ok_or("an unreadable name")?;
                        match scope.item(&qualifier.name).cloned() {
                            Some(it) => self.expand(&it, &mut outputs),
                            None => return Err(format!("{}.* names no FROM item", qualifier.name)),
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let src = self.collect(e, &scope, Into_::Value).computed();
                        self.out.exact = false;
                        outputs.push((String::new(), src));
                    }
                },
                SelectItem::UnnamedExpr(e) => {
                    let src = self.output_expr(e, &scope);
                    outputs.push((output_name(e), src));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let src = self.output_expr(expr, &scope);
                    outputs.push((ident(alias), src));
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let src = self.output_expr(expr, &scope).computed();
                    for a in aliases {
                        outputs.push((ident(a), src.clone()));
                    }
                }
            }
        }
        if s.into.is_some() {
            // SELECT INTO creates a table of the values.
            for (_, src) in &outputs {
                self.out.copied.add(src);
            }
        }
        // Everything else of the SELECT decides which rows, groups and order come back.
        let mut rest = s.clone();
        rest.projection.clear();
        rest.from.clear();
        rest.into = None;
        scope.outputs = outputs.clone();
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            self.positional(exprs.iter(), &outputs);
        }
        match &s.distinct {
            Some(ast::Distinct::On(exprs)) => self.positional(exprs.iter(), &outputs),
            // Duplicates are found by comparing every output's values.
            Some(ast::Distinct::Distinct) => {
                for (_, src) in &outputs {
                    self.out.condition.add(&Src { cols: src.cols.clone(), computed: true, opaque: false });
                }
            }
            Some(ast::Distinct::All) | None => {}
        }
        self.collect(&rest, &scope, Into_::Condition);
        if let Some(q) = query {
            self.tail(q, &scope, &outputs);
        }
        Ok(outputs)
    }

    /// `*` over one FROM item.
    fn expand(&mut self, item: &Item, outputs: &mut Vec<(String, Src)>) {
        match &item.columns {
            Some(columns) => outputs.extend(columns.iter().cloned()),
            None => {
                self.out.exact = false;
                outputs.push((String::new(), item.rest.clone().unwrap_or_default().computed()));
            }
        }
        if item.columns.is_some()
            && let Some(rest) = &item.rest
        {
            // A function's columns are as many as it returns (a record's fields, ORDINALITY),
            // which only the server knows: the result's columns do not line up with these.
            self.out.exact = false;
            if !rest.is_clean() {
                outputs.push((String::new(), rest.clone().computed()));
            }
        }
        if item.merged {
            // JOIN USING and NATURAL put the merged columns first, once.
            self.out.exact = false;
        }
    }

    /// An output expression: a plain column reference passes its column through; anything
    /// else is computed from every column it reads.
    fn output_expr(&mut self, e: &Expr, scope: &Scope<'_>) -> Src {
        let src = self.collect(e, scope, Into_::Value);
        if is_plain_reference(e) { src } else { src.computed() }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins, scope: &mut Scope<'_>) -> Result<(), String> {
        self.table_factor(&twj.relation, scope)?;
        for join in &twj.joins {
            let before: Vec<Vec<(String, Src)>> =
                scope.items.iter().map(|i| i.columns.clone().unwrap_or_default()).collect();
            self.table_factor(&join.relation, scope)?;
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c) => c,
                _ => return Err("a join PostgreSQL does not have".into()),
            };
            match constraint {
                JoinConstraint::Using(_) | JoinConstraint::UsingAlias(..) | JoinConstraint::Natural => {
                    for item in scope.items.iter_mut() {
                        item.merged = true;
                    }
                }
                _ => {}
            }
            match constraint {
                JoinConstraint::On(e) => {
                    self.collect(e, scope, Into_::Condition);
                }
                JoinConstraint::Using(names) | JoinConstraint::UsingAlias(names, _) => {
                    for n in names {
                        let n = object_name(n).ok_or("an unreadable USING column")?;
                        if let Some(src) = scope.resolve(&n.name) {
                            self.out.condition.add(&src);
                        }
                    }
                }
                JoinConstraint::Natural => {
                    let right = scope.items.last().and_then(|i| i.columns.clone()).unwrap_or_default();
                    for (name, src) in &right {
                        for cols in &before {
                            if let Some((_, l)) = cols.iter().find(|(n, _)| n == name) {
                                self.out.condition.add(l);
                                self.out.condition.add(src);
                            }
                        }
                    }
                    if scope.items.iter().any(|i| i.columns.is_none()) {
                        // Which columns a NATURAL join compares is not known: all of them.
                        for item in &scope.items {
                            let whole = item.whole_row();
                            self.out.condition.add(&whole);
                        }
                    }
                }
                JoinConstraint::None => {}
            }
        }
        Ok(())
    }

    fn table_factor(&mut self, factor: &TableFactor, scope: &mut Scope<'_>) -> Result<(), String> {
        match factor {
            TableFactor::Table { name, alias, args, with_ordinality, .. } => {
                let n = object_name(name).ok_or("an unreadable relation name")?;
                let item = match args {
                    None => self.relation_item(n.schema.as_deref(), &n.name, alias.as_ref(), scope),
                    Some(args) => {
                        let mut src = self.function_src(n.schema.as_deref(), &n.name, scope);
                        for a in &args.args {
                            let s = self.function_arg(a, scope);
                            src.add(&s);
                        }
                        // Its arguments decide how many rows it returns.
                        self.out.condition.add(&Src { cols: src.cols.clone(), computed: true, opaque: false });
                        function_item(&n.name, alias.as_ref(), src, *with_ordinality)
                    }
                };
                scope.items.push(item);
            }
            TableFactor::Derived { subquery, alias, .. } => {
                let columns = self.query(subquery, Some(scope))?;
                let (names, renamed) = match alias {
                    Some(a) => (
                        vec![ident(&a.name)],
                        rename(columns, &a.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>()),
                    ),
                    None => (Vec::new(), columns),
                };
                scope.items.push(Item { names, columns: Some(renamed), rest: None, merged: false });
            }
            TableFactor::Function { name, args, alias, .. } => {
                let n = object_name(name).ok_or("an unreadable function name")?;
                let mut src = self.function_src(n.schema.as_deref(), &n.name, scope);
                for a in args {
                    let s = self.function_arg(a, scope);
                    src.add(&s);
                }
                self.out.condition.add(&Src { cols: src.cols.clone(), computed: true, opaque: false });
                scope.items.push(function_item(&n.name, alias.as_ref(), src, false));
            }
            TableFactor::UNNEST { alias, array_exprs, with_ordinality, .. } => {
                let mut src = Src::default();
                for e in array_exprs {
                    let s = self.collect(e, scope, Into_::Condition);
                    src.add(&s);
                }
                scope.items.push(function_item("unnest", alias.as_ref(), src, *with_ordinality));
            }
            TableFactor::TableFunction { expr, alias } => {
                let src = self.collect(expr, scope, Into_::Condition);
                scope.items.push(function_item("", alias.as_ref(), src, false));
            }
            TableFactor::JsonTable { json_expr, alias, .. } => {
                let src = self.collect(json_expr, scope, Into_::Condition);
                scope.items.push(function_item("json_table", alias.as_ref(), src, false));
            }
            TableFactor::NestedJoin { table_with_joins, alias } => {
                let before = scope.items.len();
                self.table_with_joins(table_with_joins, scope)?;
                if let Some(a) = alias {
                    // `(a JOIN b) AS j`: the alias hides the names inside; j's columns are
                    // theirs, in order (and where one's are not known, anything of all of them).
                    let inner: Vec<Item> = scope.items.drain(before..).collect();
                    // USING and NATURAL put the shared columns first, once: the order is the
                    // server's, not the tables' one after the other.
                    let mut columns = if inner.iter().any(|i| i.merged) { None } else { Some(Vec::new()) };
                    let mut rest: Option<Src> = None;
                    for item in &inner {
                        match (&mut columns, &item.columns) {
                            (Some(all), Some(c)) => all.extend(c.iter().cloned()),
                            _ => columns = None,
                        }
                        if let Some(r) = &item.rest {
                            rest.get_or_insert_with(Src::default).add(r);
                        }
                    }
                    if columns.is_none() {
                        let mut whole = rest.take().unwrap_or_default();
                        for item in &inner {
                            whole.add(&item.whole_row());
                        }
                        rest = Some(whole);
                    }
                    let names: Vec<String> = a.columns.iter().map(|c| ident(&c.name)).collect();
                    let columns = columns.map(|c| rename(c, &names));
                    scope.items.push(Item { names: vec![ident(&a.name)], columns, rest, merged: false });
                }
            }
            _ => return Err("a FROM item that is not traced".into()),
        }
        Ok(())
    }

    /// The source of a function call's values: opaque when its body is not known to be a
    /// plain computation.
    fn function_src(&mut self, schema: Option<&str>, name: &str, _scope: &Scope<'_>) -> Src {
        match self.relations.opaque_function(schema, name) {
            Some(why) => {
                self.out.opaque.push(why);
                Src::opaque()
            }
            None => Src::default().computed(),
        }
    }

    fn function_arg(&mut self, arg: &FunctionArg, scope: &Scope<'_>) -> Src {
        let e = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } | FunctionArg::Unnamed(arg) => arg,
        };
        match e {
            FunctionArgExpr::Expr(e) => self.collect(e, scope, Into_::Value).computed(),
            FunctionArgExpr::QualifiedWildcard(name) => {
                match object_name(name).and_then(|n| scope.item(&n.name).cloned()) {
                    Some(item) => item.whole_row(),
                    // Of an item not in scope (the server refuses it): anything.
                    None => {
                        self.out.opaque.push(format!("reads the whole row of {name}, which is not in scope"));
                        Src::opaque()
                    }
                }
            }
            _ => Src::default(),
        }
    }

    fn relation_item(
        &mut self,
        schema: Option<&str>,
        name: &str,
        alias: Option<&ast::TableAlias>,
        scope: &Scope<'_>,
    ) -> Item {
        let columns = match schema.is_none().then(|| scope.cte(name)).flatten() {
            Some(columns) => Some(columns.clone()),
            None => match self.relations.relation(schema, name) {
                Relation::Columns(c) => {
                    let condition = self.relations.relation_condition(schema, name);
                    self.out.condition.add(&condition);
                    Some(c.into_iter().map(|c| (c.name, c.src)).collect())
                }
                Relation::Unordered(c) => {
                    let condition = self.relations.relation_condition(schema, name);
                    self.out.condition.add(&condition);
                    let any = any_of(c.iter().map(|c| &c.src));
                    let mut names = vec![name.to_string()];
                    if let Some(a) = alias {
                        names = vec![ident(&a.name)];
                        if !a.columns.is_empty() {
                            // Renamed by position: each name may be any column.
                            return Item { names, columns: None, rest: Some(any), merged: true };
                        }
                    }
                    // By name as they are; `*` is out of order (`merged`).
                    let columns = c.into_iter().map(|c| (c.name, c.src)).collect();
                    return Item { names, columns: Some(columns), rest: None, merged: true };
                }
                Relation::Clean => None,
                Relation::Opaque(why) => {
                    self.out.opaque.push(why);
                    let mut names = vec![name.to_string()];
                    if let Some(a) = alias {
                        names = vec![ident(&a.name)];
                    }
                    return Item { names, columns: None, rest: Some(Src::opaque()), merged: false };
                }
            },
        };
        let (names, columns) = match alias {
            Some(a) => (
                vec![ident(&a.name)],
                columns.map(|c| rename(c, &a.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>())),
            ),
            None => (vec![name.to_string()], columns),
        };
        let rest = columns.is_none().then(Src::default);
        Item { names, columns, rest, merged: false }
    }

    fn collect<V: Visit>(&mut self, node: &V, scope: &Scope<'_>, into: Into_) -> Src {
        let mut refs = Refs::new(self, scope);
        let _ = node.visit(&mut refs);
        let error = refs.error.take();
        let out = refs.out;
        if let Some(e) = error {
            self.out.opaque.push(e);
            self.out.exact = false;
        }
        match into {
            Into_::Value => {}
            Into_::Condition => self.out.condition.add(&out),
            Into_::Copied => self.out.copied.add(&out),
        }
        out
    }

    fn returning(&mut self, items: &[SelectItem], scope: &Scope<'_>) -> Result<Vec<(String, Src)>, String> {
        // `old` and `new` (PostgreSQL 18) name the target's row before and after.
        let mut with_rows = Scope::new(Some(scope));
        if let Some(target) = scope.items.first() {
            for name in ["old", "new"] {
                let mut row = target.clone();
                row.names = vec![name.into()];
                with_rows.items.push(row);
            }
        }
        let scope = &with_rows;
        let mut outputs = Vec::new();
        for item in items {
            match item {
                SelectItem::Wildcard(_) => {
                    for it in scope.parent.map_or(&[][..], |p| &p.items[..]) {
                        self.expand(it, &mut outputs);
                    }
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                    let q = object_name(name).ok_or("an unreadable name")?;
                    let it = scope.item(&q.name).cloned().ok_or("RETURNING x.* names no table")?;
                    self.expand(&it, &mut outputs);
                }
                SelectItem::UnnamedExpr(e) => {
                    let src = self.output_expr(e, scope);
                    outputs.push((output_name(e), src));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let src = self.output_expr(expr, scope);
                    outputs.push((ident(alias), src));
                }
                _ => return Err("a RETURNING item that is not traced".into()),
            }
        }
        Ok(outputs)
    }

    fn insert(&mut self, insert: &ast::Insert, outer: Option<&Scope<'_>>) -> Result<(), String> {
        let mut scope = Scope::new(outer);
        let ast::TableObject::TableName(name) = &insert.table else {
            return Err("INSERT into a table function".into());
        };
        let n = object_name(name).ok_or("an unreadable table name")?;
        let mut target = self.relation_item(n.schema.as_deref(), &n.name, None, &scope);
        if let Some(a) = &insert.table_alias {
            target.names = vec![ident(&a.alias)];
        }
        if let Some(source) = &insert.source {
            for (_, s) in self.query(source, outer)? {
                self.out.copied.add(&s);
            }
        }
        scope.items.push(target.clone());
        // ON CONFLICT: `excluded` is the proposed row, the target the existing one.
        scope.items.push(Item {
            names: vec!["excluded".into()],
            columns: target.columns.clone(),
            rest: target.rest.clone(),
            merged: false,
        });
        // MySQL's `INSERT ... AS new [(a, b)] ON DUPLICATE KEY UPDATE c = new.c`: the proposed
        // row again (its column aliases follow the insert's column list: any column of it).
        if let Some(aliases) = &insert.insert_alias
            && let Some(n) = object_name(&aliases.row_alias)
        {
            let renamed = aliases.col_aliases.as_ref().is_some_and(|c| !c.is_empty());
            scope.items.push(Item {
                names: vec![n.name],
                columns: if renamed { None } else { target.columns.clone() },
                rest: if renamed { Some(target.whole_row()) } else { target.rest.clone() },
                merged: false,
            });
        }
        if let Some(on) = &insert.on {
            match on {
                ast::OnInsert::OnConflict(c) => {
                    // Whether the row conflicts tells whether the value is already there.
                    match &c.conflict_target {
                        Some(ast::ConflictTarget::Columns { columns, .. }) => {
                            for col in columns {
                                if let Some(src) = scope.resolve(&ident(col)) {
                                    self.out.condition.add(&src);
                                }
                            }
                        }
                        Some(_) => {
                            let whole = target.whole_row();
                            self.out.condition.add(&whole);
                        }
                        None => {}
                    }
                    if let ast::OnConflictAction::DoUpdate(u) = &c.action {
                        for a in &u.assignments {
                            self.collect(&a.value, &scope, Into_::Copied);
                        }
                        if let Some(w) = &u.selection {
                            self.collect(w, &scope, Into_::Condition);
                        }
                    }
                }
                other => {
                    self.collect(other, &scope, Into_::Copied);
                }
            }
        }
        scope.items.pop();
        if let Some(r) = &insert.returning {
            self.out.outputs = Some(self.returning(r, &scope)?);
        }
        Ok(())
    }

    fn update(&mut self, update: &ast::Update, outer: Option<&Scope<'_>>) -> Result<(), String> {
        let mut scope = Scope::new(outer);
        self.table_with_joins(&update.table, &mut scope)?;
        if let Some(from) = &update.from {
            let (ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f)) = from;
            for twj in f {
                self.table_with_joins(twj, &mut scope)?;
            }
        }
        for a in &update.assignments {
            self.collect(&a.value, &scope, Into_::Copied);
        }
        if let Some(w) = &update.selection {
            self.collect(w, &scope, Into_::Condition);
        }
        if let Some(r) = &update.returning {
            self.out.outputs = Some(self.returning(r, &scope)?);
        }
        Ok(())
    }

    fn delete(&mut self, delete: &ast::Delete, outer: Option<&Scope<'_>>) -> Result<(), String> {
        let mut scope = Scope::new(outer);
        let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &delete.from;
        for twj in from {
            self.table_with_joins(twj, &mut scope)?;
        }
        for twj in delete.using.iter().flatten() {
            self.table_with_joins(twj, &mut scope)?;
        }
        if let Some(w) = &delete.selection {
            self.collect(w, &scope, Into_::Condition);
        }
        if let Some(r) = &delete.returning {
            self.out.outputs = Some(self.returning(r, &scope)?);
        }
        Ok(())
    }
}

/// Renames the first columns to an alias's column names.
/// What any of these sources may be: all of them, computed.
fn any_of<'a>(srcs: impl Iterator<Item = &'a Src>) -> Src {
    let mut any = Src::default();
    for s in srcs {
        any.add(s);
    }
    any.computed()
}

fn rename(columns: Vec<(String, Src)>, names: &[String]) -> Vec<(String, Src)> {
    columns.into_iter().enumerate().map(|(i, (n, s))| (names.get(i).cloned().unwrap_or(n), s)).collect()
}

/// A function in FROM: its columns are those its alias names (or one, named after it), and any
/// other name may be one of its columns.
fn function_item(name: &str, alias: Option<&ast::TableAlias>, src: Src, ordinality: bool) -> Item {
    let src = src.computed();
    let (names, columns) = match alias {
        Some(a) if !a.columns.is_empty() => {
            (vec![ident(&a.name)], a.columns.iter().map(|c| (ident(&c.name), src.clone())).collect::<Vec<_>>())
        }
        Some(a) => (vec![ident(&a.name)], vec![(ident(&a.name), src.clone())]),
        None => (vec![name.to_string()], vec![(name.to_string(), src.clone())]),
    };
    let _ = ordinality;
    Item { names, columns: Some(columns), rest: Some(src), merged: false }
}

/// Whether an expression decides something by the values it reads: a comparison, a pattern
/// match, a test, a branch, NULLIF/GREATEST/LEAST.
fn decides(e: &Expr) -> bool {
    use ast::BinaryOperator as B;
    match e {
        Expr::BinaryOp { op, .. } => matches!(
            op,
            B::Gt
                | B::Lt
                | B::GtEq
                | B::LtEq
                | B::Spaceship
                | B::Eq
                | B::NotEq
                | B::And
                | B::Or
                | B::Xor
                | B::PGRegexMatch
                | B::PGRegexIMatch
                | B::PGRegexNotMatch
                | B::PGRegexNotIMatch
                | B::PGLikeMatch
                | B::PGILikeMatch
                | B::PGNotLikeMatch
                | B::PGNotILikeMatch
                | B::PGStartsWith
                | B::PGOverlap
                | B::Match
                | B::Regexp
        ),
        Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::SimilarTo { .. }
        | Expr::RLike { .. }
        | Expr::In { .. }
        | Expr::IsJson { .. }
        | Expr::IsNormalized { .. }
        | Expr::Between { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsNotTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotUnknown(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::AnyOp { .. }
        | Expr::AllOp { .. }
        | Expr::Exists { .. } => true,
        Expr::UnaryOp { op: ast::UnaryOperator::Not, .. } => true,
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(ObjectNamePart::as_ident)
            .is_some_and(|i| matches!(ident(i).as_str(), "nullif" | "greatest" | "least")),
        _ => false,
    }
}

/// Built-in set-returning functions (their arguments decide how many rows come back: every
/// `proretset` function of pg_catalog in PostgreSQL 15, taking arguments or not), and functions
/// whose duration tells about their arguments.
fn set_returning(name: &str) -> bool {
    matches!(
        name,
        "aclexplode"
            | "generate_series"
            | "generate_subscripts"
            | "json_array_elements"
            | "json_array_elements_text"
            | "json_each"
            | "json_each_text"
            | "json_object_keys"
            | "json_populate_recordset"
            | "json_to_recordset"
            | "jsonb_array_elements"
            | "jsonb_array_elements_text"
            | "jsonb_each"
            | "jsonb_each_text"
            | "jsonb_object_keys"
            | "jsonb_path_query"
            | "jsonb_path_query_tz"
            | "jsonb_populate_recordset"
            | "jsonb_to_recordset"
            | "pg_available_extension_versions"
            | "pg_available_extensions"
            | "pg_config"
            | "pg_cursor"
            | "pg_event_trigger_ddl_commands"
            | "pg_event_trigger_dropped_objects"
            | "pg_extension_update_paths"
            | "pg_get_backend_memory_contexts"
            | "pg_get_catalog_foreign_keys"
            | "pg_get_keywords"
            | "pg_get_multixact_members"
            | "pg_get_publication_tables"
            | "pg_get_replication_slots"
            | "pg_get_shmem_allocations"
            | "pg_get_wal_resource_managers"
            | "pg_hba_file_rules"
            | "pg_ident_file_mappings"
            | "pg_listening_channels"
            | "pg_lock_status"
            | "pg_logical_slot_get_binary_changes"
            | "pg_logical_slot_get_changes"
            | "pg_logical_slot_peek_binary_changes"
            | "pg_logical_slot_peek_changes"
            | "pg_ls_archive_statusdir"
            | "pg_ls_dir"
            | "pg_ls_logdir"
            | "pg_ls_logicalmapdir"
            | "pg_ls_logicalsnapdir"
            | "pg_ls_replslotdir"
            | "pg_ls_tmpdir"
            | "pg_ls_waldir"
            | "pg_mcv_list_items"
            | "pg_options_to_table"
            | "pg_partition_ancestors"
            | "pg_partition_tree"
            | "pg_prepared_statement"
            | "pg_prepared_xact"
            | "pg_show_all_file_settings"
            | "pg_show_all_settings"
            | "pg_show_replication_origin_status"
            | "pg_snapshot_xip"
            | "pg_stat_get_activity"
            | "pg_stat_get_backend_idset"
            | "pg_stat_get_progress_info"
            | "pg_stat_get_recovery_prefetch"
            | "pg_stat_get_slru"
            | "pg_stat_get_subscription"
            | "pg_stat_get_wal_senders"
            | "pg_tablespace_databases"
            | "pg_timezone_abbrevs"
            | "pg_timezone_names"
            | "regexp_matches"
            | "regexp_split_to_table"
            | "string_to_table"
            | "ts_debug"
            | "ts_parse"
            | "ts_stat"
            | "ts_token_type"
            | "txid_snapshot_xip"
            | "unnest"
            | "pg_sleep"
            | "pg_sleep_for"
            | "pg_sleep_until"
    )
}

/// Whether an expression is a plain column reference (its value passes through unchanged).
fn is_plain_reference(e: &Expr) -> bool {
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Nested(inner) => is_plain_reference(inner),
        _ => false,
    }
}

/// The column name PostgreSQL gives an unaliased output expression (close enough: names are
/// only shown, never relied on).
fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => ident(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident).unwrap_or_default(),
        Expr::Function(f) => f.name.0.last().and_then(ObjectNamePart::as_ident).map(ident).unwrap_or_default(),
        _ => "?column?".into(),
    }
}

fn order_by_exprs(order_by: &ast::OrderBy) -> impl Iterator<Item = &Expr> {
    let exprs: &[ast::OrderByExpr] = match &order_by.kind {
        ast::OrderByKind::Expressions(e) => e,
        ast::OrderByKind::All(_) => &[],
    };
    exprs.iter().map(|o| &o.expr)
}

/// COPY's format, and whether its other options are the defaults.
fn copy_format(options: &[ast::CopyOption], legacy: &[ast::CopyLegacyOption]) -> (CopyFormat, bool) {
    let mut format = CopyFormat::Text;
    let mut plain = true;
    let mut header = false;
    for o in options {
        match o {
            ast::CopyOption::Format(f) => {
                format = match ident(f).as_str() {
                    "csv" => CopyFormat::Csv { header: false },
                    "binary" => CopyFormat::Binary,
                    "text" => CopyFormat::Text,
                    _ => {
                        plain = false;
                        CopyFormat::Text
                    }
                }
            }
            ast::CopyOption::Header(h) => header = *h,
            ast::CopyOption::Freeze(_)
            | ast::CopyOption::ForceQuote(_)
            | ast::CopyOption::ForceNotNull(_)
            | ast::CopyOption::ForceNull(_) => {}
            _ => plain = false,
        }
    }
    for o in legacy {
        match o {
            ast::CopyLegacyOption::Binary => format = CopyFormat::Binary,
            ast::CopyLegacyOption::Csv(opts) => {
                format = CopyFormat::Csv { header: false };
                for c in opts {
                    match c {
                        ast::CopyLegacyCsvOption::Header => header = true,
                        ast::CopyLegacyCsvOption::ForceQuote(_) | ast::CopyLegacyCsvOption::ForceNotNull(_) => {}
                        _ => plain = false,
                    }
                }
            }
            _ => plain = false,
        }
    }
    if let CopyFormat::Csv { header: h } = &mut format {
        *h = header;
    } else if header {
        // HEADER outside CSV (text accepts it since PostgreSQL 15): a line the rows do not expect.
        plain = false;
    }
    (format, plain)
}

/// Collects the columns an expression (or any node) reads, tracing subqueries as queries.
struct Refs<'a, 'r, 's> {
    an: &'a mut Analyzer<'r>,
    scope: &'a Scope<'s>,
    out: Src,
    /// Inside a subquery (traced on entry): its nodes are not looked at again.
    depth: usize,
    error: Option<String>,
    /// Inside this many expressions whose outcome tells about the values they read (a test, a
    /// CASE condition, a window clause, a set-returning function's arguments): what is read
    /// there also counts as a condition. One pass, whatever the nesting.
    cond: usize,
    /// Expressions that are conditions by where they stand (found on their parent).
    roots: Vec<*const Expr>,
    /// The condition expressions entered, innermost last.
    open: Vec<*const Expr>,
}

impl<'a, 'r, 's> Refs<'a, 'r, 's> {
    fn new(an: &'a mut Analyzer<'r>, scope: &'a Scope<'s>) -> Self {
        Refs { an, scope, out: Src::default(), depth: 0, error: None, cond: 0, roots: Vec::new(), open: Vec::new() }
    }

    /// A source found: a value of the expression, and a condition when inside one.
    fn found(&mut self, src: &Src) {
        self.out.add(src);
        if self.cond > 0 && !src.cols.is_empty() {
            self.an.out.condition.add(&Src { cols: src.cols.clone(), computed: true, opaque: false });
        }
    }
}

impl Visitor for Refs<'_, '_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            match self.an.query(q, Some(self.scope)) {
                Ok(columns) => {
                    for (_, s) in columns {
                        self.found(&s.computed());
                    }
                }
                Err(e) => {
                    self.error.get_or_insert(e);
                    self.found(&Src::opaque());
                }
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        let ptr = e as *const Expr;
        if decides(e) || self.roots.contains(&ptr) {
            self.cond += 1;
            self.open.push(ptr);
        }
        match e {
            // A branch: what it tests decides which result comes back.
            Expr::Case { operand, conditions, .. } => {
                self.roots.extend(operand.iter().map(|o| o.as_ref() as *const Expr));
                self.roots.extend(conditions.iter().map(|c| &c.condition as *const Expr));
            }
            Expr::Function(f) => {
                // A window's PARTITION BY and ORDER BY order and group the rows; a
                // set-returning function's arguments decide how many rows come back.
                if let Some(ast::WindowType::WindowSpec(spec)) = &f.over {
                    self.roots.extend(spec.partition_by.iter().map(|e| e as *const Expr));
                    self.roots.extend(spec.order_by.iter().map(|o| &o.expr as *const Expr));
                }
                if object_name(&f.name).is_some_and(|n| set_returning(&n.name))
                    && let FunctionArguments::List(list) = &f.args
                {
                    for a in &list.args {
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        if let FunctionArgExpr::Expr(e) = arg {
                            self.roots.push(e as *const Expr);
                        }
                    }
                }
            }
            _ => {}
        }
        self.plain(e)
    }

    fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        if self.open.last() == Some(&(e as *const Expr)) {
            self.open.pop();
            self.cond -= 1;
        }
        ControlFlow::Continue(())
    }
}

impl Refs<'_, '_, '_> {
    /// What an expression reads and calls by itself (its column references, functions and
    /// operators), without looking into what it contains.
    fn plain(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::BinaryOp { op, .. } => {
                let symbol = op.to_string();
                let custom =
                    matches!(op, ast::BinaryOperator::Custom(_) | ast::BinaryOperator::PGCustomBinaryOperator(_));
                let why = if custom {
                    Some(format!("uses operator {symbol}, which runs a function whose body is not traced"))
                } else {
                    self.an.relations.opaque_operator(&symbol)
                };
                if let Some(why) = why {
                    self.an.out.opaque.push(why);
                    self.found(&Src::opaque());
                }
            }
            Expr::UnaryOp { op, .. } => {
                if let Some(why) = self.an.relations.opaque_operator(&op.to_string()) {
                    self.an.out.opaque.push(why);
                    self.found(&Src::opaque());
                }
            }
            // MATCH (columns) AGAINST (...): names its columns outside any expression.
            Expr::MatchAgainst { columns, .. } => {
                for c in columns {
                    let parts: Vec<String> = c.0.iter().filter_map(|p| p.as_ident()).map(ident).collect();
                    let found = match parts.as_slice() {
                        [one] => self.scope.resolve(one),
                        [.., q, col] => self.scope.resolve_qualified(q, col),
                        [] => None,
                    };
                    self.found(&found.unwrap_or_else(Src::opaque).computed());
                }
            }
            // `c.*` inside an expression (`(c.*)::text`, `array[c.*]`): the whole row; of an
            // item not in scope, anything.
            Expr::QualifiedWildcard(name, _) => {
                match object_name(name).and_then(|n| self.scope.item(&n.name).cloned()) {
                    Some(item) => self.found(&item.whole_row()),
                    None => {
                        self.an.out.opaque.push(format!("reads the whole row of {name}, which is not in scope"));
                        self.found(&Src::opaque());
                    }
                }
            }
            // A system variable: a server setting.
            Expr::Identifier(i) if self.an.mysql && i.quote_style.is_none() && i.value.starts_with("@@") => {}
            Expr::Identifier(i) if self.an.mysql && i.quote_style.is_none() && i.value.starts_with('@') => {
                // A user variable: whatever the session put in it.
                self.an.out.opaque.push(format!("reads user variable {}, which may hold any value", i.value));
                self.found(&Src::opaque());
            }
            Expr::Identifier(i) => {
                if let Some(src) = self.scope.resolve(&ident(i)) {
                    self.found(&src);
                }
            }
            Expr::CompoundIdentifier(parts) => {
                let names: Vec<String> = parts.iter().map(ident).collect();
                let n = names.len();
                let found = match n {
                    0 | 1 => names.first().and_then(|c| self.scope.resolve(c)),
                    // t.c, s.t.c, d.s.t.c: the column of the item named by the part before it.
                    _ if self.scope.item(&names[n - 2]).is_some_and(|it| {
                        it.columns.as_ref().is_some_and(|c| !c.iter().any(|(name, _)| *name == names[n - 1]))
                    }) && self.an.relations.opaque_function(None, &names[n - 1]).is_some() =>
                    {
                        // `t.f` is `f(t)` when `t` has no column `f`: a function call.
                        let why = format!("calls {} through field notation", names[n - 1]);
                        self.an.out.opaque.push(why);
                        Some(Src::opaque())
                    }
                    _ => self.scope.resolve_qualified(&names[n - 2], &names[n - 1]).or_else(|| {
                        // (c).field written without parentheses is not PostgreSQL, but a
                        // composite column's field: the whole column.
                        self.scope.resolve(&names[0]).map(Src::computed)
                    }),
                };
                match found {
                    Some(src) => self.found(&src),
                    // MySQL's `@@session.x`, `@@global.x`: a server setting.
                    None if self.an.mysql && names.first().is_some_and(|q| q.starts_with("@@")) => {}
                    // A qualifier nothing in scope answers to: read as anything, never as clean.
                    None if n > 1 => {
                        self.an.out.opaque.push(format!("reads {}, which names nothing in scope", names.join(".")));
                        self.found(&Src::opaque());
                    }
                    None => {}
                }
            }
            Expr::Function(f) => {
                let name = object_name(&f.name);
                if let Some(n) = &name
                    && self.an.mysql
                    && n.schema.is_none()
                    && (matches!(super::mysql_functions::builtin(&n.name), Some(super::functions::Builtin::Effect(..)))
                        || (n.name == "last_insert_id"
                            && matches!(&f.args, FunctionArguments::List(l) if !l.args.is_empty())))
                {
                    // MySQL: LAST_INSERT_ID(expr) keeps its argument for the session's later
                    // statements; a lock's name is seen by other sessions.
                    self.an.out.side_effects.push(n.name.clone());
                } else if let Some(n) = &name
                    && !self.an.mysql
                    && n.schema.as_deref().is_none_or(|s| s == "pg_catalog")
                    && matches!(
                        super::functions::builtin(&n.name),
                        Some(super::functions::Builtin::Effect(..) | super::functions::Builtin::SetConfig)
                    )
                {
                    self.an.out.side_effects.push(n.name.clone());
                }
                if let Some(n) = &name {
                    let src = self.an.function_src(n.schema.as_deref(), &n.name, self.scope);
                    self.found(&src);
                }
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        let e = match a {
                            FunctionArg::Named { arg, .. }
                            | FunctionArg::ExprNamed { arg, .. }
                            | FunctionArg::Unnamed(arg) => arg,
                        };
                        if let FunctionArgExpr::QualifiedWildcard(q) = e {
                            match object_name(q).and_then(|q| self.scope.item(&q.name).cloned()) {
                                Some(item) => self.found(&item.whole_row()),
                                None => {
                                    self.an
                                        .out
                                        .opaque
                                        .push(format!("reads the whole row of {q}, which is not in scope"));
                                    self.found(&Src::opaque());
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}
