//! The session facts the hooks ask for (`SessionHooks::wants_facts`), read from the server on
//! the session's own connection: one simple query, sent when the server is idle and before
//! the client's next statement is judged, whose answers never reach the client.
//!
//! The query is written to mean the same whatever the session did to its search_path or
//! defined in its schemas: every function, operator and type is qualified with pg_catalog and
//! every constant typed, so no user object can run in it or change its answer.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    pg::text,
    session::SessionFacts,
    sql::catalog::{Catalog, FIRST_USER_OID, Volatility},
};

/// `x` (text) as hex digits of its UTF-8 bytes: the same in every client encoding.
fn hex(x: &str) -> String {
    format!(
        "pg_catalog.encode(pg_catalog.convert_to(({x})::pg_catalog.text, 'UTF8'::pg_catalog.name), 'hex'::pg_catalog.text)"
    )
}

/// The facts query as a simple-query message, framed once per form (it is the same for every
/// session: only which form a session sends differs).
pub fn message(relations: bool) -> &'static [u8] {
    static WITH: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| framed(&query(true)));
    static WITHOUT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| framed(&query(false)));
    if relations { &WITH } else { &WITHOUT }
}

fn framed(query: &str) -> Vec<u8> {
    let mut body = query.as_bytes().to_vec();
    body.push(0);
    let mut message = Vec::new();
    crate::pg::frame::put_message(&mut message, b'Q', &body);
    message
}

/// The facts query: a string of small statements, each planned on its own (a new backend plans
/// them with cold catalog caches; one statement joining them all took 1.2 to 1.7 times as
/// long, measured on fresh connections), whose
/// rows are all (kind, schema, name, volatility, extra) in text; names as hex of UTF-8, a
/// volatility as 0 (IMMUTABLE), 1 (STABLE) or 2 (VOLATILE).
/// - `s`: the session: search_path, current_user, session_user, and the schemas the server
///   searches (`current_schemas(true)`, comma-separated).
/// - `t`: a type whose input runs user code: a domain with a CHECK constraint, a base type with
///   a volatile input or receive (binary input) function, and every array, domain, composite,
///   range and multirange over one; `extra` is its OID. Only user types are followed: a
///   built-in type is made of built-in types alone.
/// - `f`: a user function, one row per overload: its volatility, counting as VOLATILE an
///   aggregate and any function the session's role could have written (it is a member of its
///   owner, with or without inheriting: a NOINHERIT member can still SET ROLE to it; the
///   declared volatility is then its own claim); `extra` is its argument count,
///   how many have defaults, and its argument types' OIDs, space-separated. The reader folds
///   the overloads (`Signature::fold`): one that takes a `t` type is VOLATILE (a literal
///   passed to it is cast).
/// - `x`: a VOLATILE built-in (pg_catalog) function, by name, that a user function shares its
///   name with: a call of a name the analyser does not know is cleared as a read only by a
///   user function the catalog shows to be one, and pg_catalog is searched first. (Unshadowed
///   names need no list: with no user function of the name the call stays `unknown`.) Found
///   through the name index, not by reading pg_proc whole: a fifth of the query on a new
///   backend before.
/// - `o`: a user operator (schema, symbol), and `l`: any other operator the user operators'
///   commutator and negator links reach, each once: 2 when its own function is VOLATILE or
///   one the session's role could have written, else 0; `extra` is its operand types' OIDs
///   (left, right; 0 for none), its OID, commutator and negator (0 for none). Its schema is
///   NULL when the schema's row is gone (CREATE OPERATOR does not lock its schema, so one can
///   outlive a DROP SCHEMA it raced): such an operator still carries its links. The reader
///   counts a user operator VOLATILE when the links lead from it to such an operator (the
///   planner may run one in its place: `NOT (a < b)` as `a >= b`, and a selectivity estimate
///   calls the commutator, so `NOT (1 < x)` may run the negator's commutator), followed back
///   from those, each operator once (a closure per operator in SQL grew with the square of a
///   chain's length and more: 16 ms against 6 for 100 operators, 0.9 s against 11 ms for
///   1,000), and when it takes a `t` type: a literal operand is converted to the operand's
///   type.
/// - `c`: a user cast that runs a volatile function, to its target type; `extra` is its
///   context (`i` implicit, `a` assignment, `e` explicit).
///
/// Without JIT: estimates of recursive statements grow with the catalog (a thousand user
/// operators put this past `jit_above_cost`, and compiling took 40-115 ms of a new backend).
///
/// Run in one snapshot (REPEATABLE READ: at READ COMMITTED each statement would see the
/// catalog anew, a definition committed between two of them in one but not the other), with
/// no statement or lock timeout of the session's (`SET LOCAL`, in the query's own implicit
/// transaction: a string of statements in one simple query is one transaction).
///
/// With `relations` (masking needs them), also every user relation (`r`: schema, name, OID,
/// relkind with `t` when it has triggers or rules), its columns (`a`: relation OID, name,
/// attnum, type OID and generated flag), inheritance (`i`: child, parent), user operators'
/// symbols (`O`), and, after `search_path` is set to pg_catalog (so every relation is
/// qualified), view definitions (`v`: OID, text).
pub fn query(relations: bool) -> String {
    let mut q = facts_query();
    if relations {
        let o = FIRST_USER_OID;
        let eq = "OPERATOR(pg_catalog.=)";
        let kinds = "c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::pg_catalog.\"char\"[])";
        q.push_str(&format!(
            "; SELECT 'r'::pg_catalog.text, {ns}, {rn}, c.oid::pg_catalog.text, c.relkind::pg_catalog.text OPERATOR(pg_catalog.||) \
               (CASE WHEN c.relhastriggers THEN 't'::pg_catalog.text ELSE ''::pg_catalog.text END) OPERATOR(pg_catalog.||) \
               (CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_rewrite w WHERE w.ev_class {eq} c.oid \
                 AND w.rulename OPERATOR(pg_catalog.<>) '_RETURN'::pg_catalog.name) \
               THEN 'R'::pg_catalog.text ELSE ''::pg_catalog.text END) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid {eq} c.relnamespace \
             WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND {kinds}; \
             SELECT 'a'::pg_catalog.text, a.attrelid::pg_catalog.text, {an}, a.attnum::pg_catalog.text, \
               a.atttypid::pg_catalog.text OPERATOR(pg_catalog.||) ','::pg_catalog.text OPERATOR(pg_catalog.||) a.attgenerated::pg_catalog.text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid {eq} a.attrelid \
             WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND {kinds} \
               AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped; \
             SELECT 'i'::pg_catalog.text, i.inhrelid::pg_catalog.text, i.inhparent::pg_catalog.text, ''::pg_catalog.text, ''::pg_catalog.text \
             FROM pg_catalog.pg_inherits i; \
             SELECT DISTINCT 'O'::pg_catalog.text, ''::pg_catalog.text, {on}, ''::pg_catalog.text, ''::pg_catalog.text \
             FROM pg_catalog.pg_operator o WHERE o.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid; \
             SET LOCAL search_path = pg_catalog; \
             SELECT 'v'::pg_catalog.text, c.oid::pg_catalog.text, {def}, ''::pg_catalog.text, ''::pg_catalog.text \
             FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid \
               AND c.relkind OPERATOR(pg_catalog.=) ANY ('{{v,m}}'::pg_catalog.\"char\"[])",
            ns = hex("n.nspname"),
            rn = hex("c.relname"),
            an = hex("a.attname"),
            on = hex("o.oprname"),
            def = hex("pg_catalog.pg_get_viewdef(c.oid)"),
        ));
    }
    q
}

fn facts_query() -> String {
    let o = FIRST_USER_OID;
    let eq = "OPERATOR(pg_catalog.=)";
    let user = |column: &str| format!("{column} OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid");
    let schemas = format!(
        "pg_catalog.array_to_string(ARRAY(SELECT {} FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) AS s(n)), ','::pg_catalog.text)",
        hex("s.n")
    );
    let owner = "pg_catalog.pg_has_role(current_user, p.proowner, 'MEMBER'::pg_catalog.text)";
    let volatile = "p.provolatile OPERATOR(pg_catalog.=) 'v'::pg_catalog.\"char\"";
    let space = "OPERATOR(pg_catalog.||) ' '::pg_catalog.text OPERATOR(pg_catalog.||)";
    format!(
        "SET LOCAL transaction_isolation = 'repeatable read'; SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
         SET LOCAL jit = off; \
         SELECT 's'::pg_catalog.text, {sp}, {cu}, {su}, {schemas}; \
         WITH RECURSIVE edges(child, parent) AS ( \
           SELECT t.oid, t.typelem FROM pg_catalog.pg_type t WHERE {user_t} AND t.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
           UNION ALL SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE {user_t} AND t.typbasetype OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
           UNION ALL SELECT t.oid, a.atttypid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_attribute a \
             ON a.attrelid {eq} t.typrelid WHERE {user_t} AND t.typrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 \
           UNION ALL SELECT r.rngtypid, r.rngsubtype FROM pg_catalog.pg_range r WHERE {user_r} \
           UNION ALL SELECT r.rngmultitypid, r.rngtypid FROM pg_catalog.pg_range r WHERE {user_r}), \
         bad(oid) AS ( \
           SELECT t.oid FROM pg_catalog.pg_type t WHERE {user_t} AND ( \
             (t.typtype {eq} 'd'::pg_catalog.\"char\" AND EXISTS (SELECT FROM pg_catalog.pg_constraint c \
               WHERE c.contypid {eq} t.oid AND c.contype {eq} 'c'::pg_catalog.\"char\")) \
             OR (t.typtype {eq} 'b'::pg_catalog.\"char\" AND EXISTS (SELECT FROM pg_catalog.pg_proc p \
               WHERE p.oid {eq} ANY (ARRAY[t.typinput, t.typreceive]::pg_catalog.oid[]) AND {volatile}))) \
           UNION SELECT e.child FROM edges e JOIN bad b ON e.parent {eq} b.oid) \
         SELECT 't'::pg_catalog.text, {ns}, {tn}, '2'::pg_catalog.text, bad.oid::pg_catalog.text \
         FROM bad JOIN pg_catalog.pg_type t ON t.oid {eq} bad.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid {eq} t.typnamespace; \
         SELECT 'f'::pg_catalog.text, {ns}, {pn}, \
           CASE WHEN p.prokind {eq} 'a'::pg_catalog.\"char\" OR {volatile} OR {owner} THEN '2'::pg_catalog.text \
             WHEN p.provolatile {eq} 's'::pg_catalog.\"char\" THEN '1'::pg_catalog.text ELSE '0'::pg_catalog.text END, \
           p.pronargs::pg_catalog.text {space} p.pronargdefaults::pg_catalog.text {space} p.proargtypes::pg_catalog.text \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid {eq} p.pronamespace WHERE {user_p}; \
         SELECT DISTINCT 'x'::pg_catalog.text, ''::pg_catalog.text, {pn}, '2'::pg_catalog.text, ''::pg_catalog.text \
         FROM pg_catalog.pg_proc p \
         WHERE p.pronamespace {eq} 'pg_catalog'::pg_catalog.regnamespace::pg_catalog.oid \
         AND p.oid OPERATOR(pg_catalog.<) {o}::pg_catalog.oid AND {volatile} \
         AND EXISTS (SELECT FROM pg_catalog.pg_proc u WHERE u.proname {eq} p.proname AND {user_u}); \
         WITH RECURSIVE near(op) AS ( \
           SELECT o.oid FROM pg_catalog.pg_operator o WHERE {user_o} \
           UNION SELECT l.next FROM near r, \
             LATERAL (SELECT x.oprcom, x.oprnegate FROM pg_catalog.pg_operator x WHERE x.oid {eq} r.op OFFSET 0) AS x, \
             LATERAL (VALUES (x.oprcom), (x.oprnegate)) AS l(next) WHERE l.next OPERATOR(pg_catalog.<>) 0::pg_catalog.oid) \
         SELECT CASE WHEN {user_o} THEN 'o'::pg_catalog.text ELSE 'l'::pg_catalog.text END, {ns}, {on}, \
           CASE WHEN {volatile} OR {owner} THEN '2'::pg_catalog.text ELSE '0'::pg_catalog.text END, \
           o.oprleft::pg_catalog.text {space} o.oprright::pg_catalog.text {space} o.oid::pg_catalog.text \
             {space} o.oprcom::pg_catalog.text {space} o.oprnegate::pg_catalog.text \
         FROM near r JOIN pg_catalog.pg_operator o ON o.oid {eq} r.op \
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid {eq} o.oprnamespace \
         LEFT JOIN pg_catalog.pg_proc p ON p.oid {eq} o.oprcode::pg_catalog.oid; \
         SELECT 'c'::pg_catalog.text, {ns}, {tn}, '2'::pg_catalog.text, c.castcontext::pg_catalog.text \
         FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid {eq} c.castfunc \
         JOIN pg_catalog.pg_type t ON t.oid {eq} c.casttarget \
         JOIN pg_catalog.pg_namespace n ON n.oid {eq} t.typnamespace \
         WHERE {user_c} AND ({volatile} OR {owner})",
        sp = hex("pg_catalog.current_setting('search_path'::pg_catalog.text)"),
        cu = hex("current_user"),
        su = hex("session_user"),
        ns = hex("n.nspname"),
        pn = hex("p.proname"),
        on = hex("o.oprname"),
        tn = hex("t.typname"),
        user_t = user("t.oid"),
        user_r = user("r.rngtypid"),
        user_p = user("p.oid"),
        user_u = user("u.oid"),
        user_o = user("o.oid"),
        user_c = user("c.oid"),
    )
}

/// Reads the facts from the query's rows (DataRow bodies).
pub fn facts(rows: &[Vec<u8>], with_relations: bool) -> Result<SessionFacts, String> {
    let mut session = None;
    let mut catalog = Catalog::default();
    let mut relations: Option<crate::sql::catalog::Relations> = with_relations.then(Default::default);
    let mut functions = Vec::new();
    let mut operators = Vec::new();
    let mut links = OperatorLinks::default();
    let mut unsafe_types = HashSet::new();
    let number = |v: &Option<String>, what: &str| -> Result<u32, String> {
        v.as_deref().and_then(|t| t.parse().ok()).ok_or_else(|| format!("a row with no {what}"))
    };
    for row in rows {
        let values = columns(row).ok_or("a malformed row")?;
        let [kind, schema, name, volatility, extra] = values.as_slice() else {
            return Err(format!("a row of {} columns, not 5", values.len()));
        };
        let plain = |v: &Option<String>| v.clone().unwrap_or_default();
        let named = |v: &Option<String>| unhex(v.as_deref().unwrap_or_default());
        match kind.as_deref() {
            Some("s") => {
                let schemas =
                    plain(extra).split(',').filter(|s| !s.is_empty()).map(unhex).collect::<Result<Vec<_>, _>>()?;
                session = Some((named(schema)?, named(name)?, named(volatility)?, schemas));
            }
            Some("f") => {
                let v = volatility.as_deref().and_then(level).ok_or("a function without volatility")?;
                let signature = Signature::parse(&plain(extra)).ok_or("a function with a malformed signature")?;
                functions.push((named(schema)?, named(name)?, v, signature));
            }
            Some("x") => catalog.add_volatile_builtin(&named(name)?),
            Some(kind @ ("o" | "l")) => {
                let volatile = volatility.as_deref().and_then(level).ok_or("an operator without volatility")?;
                let numbers = plain(extra).split(' ').map(|t| t.parse().ok()).collect::<Option<Vec<u32>>>();
                let Some(&[left, right, oid, commutator, negator]) = numbers.as_deref() else {
                    return Err("an operator without its operand types, OID and links".into());
                };
                links.add(oid, [commutator, negator], volatile == Volatility::Volatile);
                if kind == "o" {
                    operators.push((named(schema)?, named(name)?, oid, [left, right]));
                }
            }
            Some("t") => {
                let oid = number(extra, "type OID")?;
                catalog.add_unsafe_type(&named(schema)?, &named(name)?);
                catalog.add_unsafe_type_oid(oid);
                unsafe_types.insert(oid);
            }
            Some("c") => catalog.add_volatile_cast(&named(schema)?, &named(name)?, extra.as_deref() != Some("e")),
            Some("r") => {
                let flags = plain(extra);
                let kind = flags.chars().next().ok_or("a relation without relkind")?;
                let oid = number(volatility, "relation OID")?;
                let r = relations.get_or_insert_with(Default::default);
                r.add_relation(oid, &named(schema)?, &named(name)?, kind, flags.contains('t') || flags.contains('R'));
                if flags.contains('R') {
                    r.add_rules(oid);
                }
            }
            Some("a") => {
                let relation = number(schema, "relation OID")?;
                let attnum: i16 =
                    volatility.as_deref().and_then(|t| t.parse().ok()).ok_or("a column without attnum")?;
                let extra = plain(extra);
                let (type_oid, generated) = extra.split_once(',').ok_or("a column without type")?;
                let column = crate::sql::catalog::ColumnInfo {
                    attnum,
                    name: named(name)?,
                    type_oid: type_oid.parse().map_err(|_| "a column type that is not an OID")?,
                    generated: !generated.is_empty(),
                };
                relations.get_or_insert_with(Default::default).add_column(relation, column);
            }
            Some("i") => {
                let (child, parent) = (number(schema, "child OID")?, number(name, "parent OID")?);
                relations.get_or_insert_with(Default::default).add_parent(child, parent);
            }
            Some("O") => {
                relations.get_or_insert_with(Default::default).operators.insert(named(name)?);
            }
            Some("v") => {
                let view = number(schema, "view OID")?;
                relations.get_or_insert_with(Default::default).add_definition(view, named(name)?);
            }
            other => return Err(format!("a row of unknown kind {other:?}")),
        }
    }
    for (schema, name, volatility, signature) in functions {
        let (v, one) = signature.fold(volatility, &unsafe_types);
        catalog.add_function(&schema, &name, v, one);
    }
    let volatile_operators = links.reaching_volatile();
    for (schema, symbol, oid, operands) in operators {
        if volatile_operators.contains(&oid) || operands.iter().any(|t| unsafe_types.contains(t)) {
            catalog.add_volatile_operator(&schema, &symbol);
        }
    }
    let (search_path, current_user, session_user, schemas) = session.ok_or("no session row")?;
    catalog.relations = relations;
    Ok(SessionFacts { current_user, session_user, search_path, schemas, catalog: Arc::new(catalog) })
}

/// Operators and their commutator and negator links (`o` and `l` rows): the planner may run
/// any operator the links reach in an operator's place (`NOT (a < b)` as `a >= b`; a
/// selectivity estimate calls the commutator).
#[derive(Default)]
struct OperatorLinks {
    /// Each operator's commutator and negator (0 for none).
    links: HashMap<u32, [u32; 2]>,
    /// Operators whose own function is VOLATILE (or one the role could have written).
    volatile: Vec<u32>,
}

impl OperatorLinks {
    fn add(&mut self, oid: u32, links: [u32; 2], volatile: bool) {
        self.links.insert(oid, links);
        if volatile {
            self.volatile.push(oid);
        }
    }

    /// Every operator from which the links lead to a volatile one (itself included): followed
    /// back from the volatile ones, each operator visited once.
    fn reaching_volatile(&self) -> HashSet<u32> {
        let mut back: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&oid, targets) in &self.links {
            for &target in targets.iter().filter(|&&t| t != 0) {
                back.entry(target).or_default().push(oid);
            }
        }
        let mut reached: HashSet<u32> = self.volatile.iter().copied().collect();
        let mut next = self.volatile.clone();
        while let Some(oid) = next.pop() {
            for &from in back.get(&oid).map(Vec::as_slice).unwrap_or_default() {
                if reached.insert(from) {
                    next.push(from);
                }
            }
        }
        reached
    }
}

/// What of a user function's signature its judgement needs (a `f` row's `extra`).
#[derive(Debug, PartialEq)]
struct Signature {
    arguments: u16,
    defaults: u16,
    types: Vec<u32>,
}

impl Signature {
    /// `pronargs pronargdefaults proargtypes`: `proargtypes` is an oidvector, its OIDs
    /// space-separated (none for a function without arguments).
    fn parse(extra: &str) -> Option<Signature> {
        let mut fields = extra.split(' ');
        let arguments = fields.next()?.parse().ok()?;
        let defaults = fields.next()?.parse().ok()?;
        let types = fields.filter(|f| !f.is_empty()).map(|f| f.parse().ok()).collect::<Option<Vec<u32>>>()?;
        Some(Signature { arguments, defaults, types })
    }

    /// The overload's volatility as judging counts it (VOLATILE when it takes a type whose
    /// input runs user code: a literal passed to it is cast), and the same again when it can
    /// be called with one argument.
    fn fold(&self, declared: Volatility, unsafe_types: &HashSet<u32>) -> (Volatility, Option<Volatility>) {
        let v = if self.types.iter().any(|t| unsafe_types.contains(t)) { Volatility::Volatile } else { declared };
        let one = (self.arguments >= 1 && self.arguments.saturating_sub(self.defaults) <= 1).then_some(v);
        (v, one)
    }
}

/// 0, 1, 2: IMMUTABLE, STABLE, VOLATILE.
fn level(code: &str) -> Option<Volatility> {
    match code {
        "0" => Some(Volatility::Immutable),
        "1" => Some(Volatility::Stable),
        "2" => Some(Volatility::Volatile),
        _ => None,
    }
}

/// A name sent as hex digits of its UTF-8 bytes.
fn unhex(hex: &str) -> Result<String, String> {
    // Every session reads hundreds of names: decoded byte by byte, not through a parser.
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let digits = hex.as_bytes();
    let bytes = digits
        .len()
        .is_multiple_of(2)
        .then(|| digits.chunks_exact(2).map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?)).collect())
        .flatten()
        .ok_or_else(|| format!("a name that is not hex: {hex:?}"))?;
    String::from_utf8(bytes).map_err(|_| "a name that is not UTF-8".to_string())
}

/// The text values of a DataRow body (NULL as `None`).
fn columns(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = rest.get(..len as usize)?;
        out.push(Some(text(value).into_owned()));
        rest = &rest[len as usize..];
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framed_message_is_the_query_as_a_simple_query() {
        for relations in [false, true] {
            let message = message(relations);
            let query = query(relations);
            assert_eq!(message[0], b'Q');
            assert_eq!(u32::from_be_bytes(message[1..5].try_into().expect("length")) as usize, message.len() - 1);
            assert_eq!(&message[5..message.len() - 1], query.as_bytes());
            assert_eq!(message.last(), Some(&0));
        }
        assert_ne!(message(false), message(true));
    }

    #[test]
    fn names_are_hex_decoded_strictly() {
        assert_eq!(unhex("6162c3a9"), Ok("abé".to_string()));
        assert_eq!(unhex("4142"), Ok("AB".to_string()));
        assert_eq!(unhex(""), Ok(String::new()));
        for bad in ["6", "6g", "+f", "-1", " 61", "ff"] {
            assert!(unhex(bad).is_err(), "{bad:?}");
        }
    }

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut body = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    fn h(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rows_become_facts_and_malformed_ones_an_error() {
        let schemas = format!("{},{}", h("pg_catalog"), h("public"));
        let (sp, agent, login, public, lower, app, owner, plus) =
            (h("\"$user\", public"), h("agent"), h("login"), h("public"), h("lower"), h("app"), h("owner"), h("+"));
        let rows = vec![
            row(&[Some("s"), Some(&sp), Some(&agent), Some(&login), Some(&schemas)]),
            row(&[Some("f"), Some(&public), Some(&lower), Some("2"), Some("1 0 23")]),
            row(&[Some("f"), Some(&app), Some(&owner), Some("1"), Some("0 0 ")]),
            row(&[Some("o"), Some(&public), Some(&plus), Some("2"), Some("25 25 70000 0 0")]),
        ];
        let facts = facts(&rows, false).expect("facts");
        assert_eq!(facts.current_user, "agent");
        assert_eq!(facts.session_user, "login");
        assert_eq!(facts.search_path, "\"$user\", public");
        assert_eq!(facts.schemas, ["pg_catalog", "public"]);
        assert!(
            super::facts(
                &[rows[0].clone(), row(&[Some("f"), Some("zz"), Some(&lower), Some("2"), Some("0 0 ")])],
                false
            )
            .is_err(),
            "not hex"
        );
        for signature in [None, Some(""), Some("1"), Some("1 0 x"), Some("-1 0 23"), Some("1 0 23,25")] {
            let malformed = [rows[0].clone(), row(&[Some("f"), Some(&public), Some(&lower), Some("2"), signature])];
            assert!(super::facts(&malformed, false).is_err(), "{signature:?}");
        }
        let untyped = [rows[0].clone(), row(&[Some("t"), Some(&public), Some(&lower), Some("2"), Some("")])];
        assert!(super::facts(&untyped, false).is_err(), "a type row without its OID");
        for kind in ["o", "l"] {
            for operands in [
                None,
                Some(""),
                Some("25 25"),
                Some("25 25 70000 0"),
                Some("25 25 70000 0 0 0"),
                Some("25,25 70000 0 0"),
            ] {
                let malformed = [rows[0].clone(), row(&[Some(kind), Some(&public), Some(&plus), Some("0"), operands])];
                assert!(super::facts(&malformed, false).is_err(), "{kind} {operands:?}");
            }
        }
        assert_eq!(facts.catalog.function_count(), 2);
        assert!(super::facts(&rows[1..], false).is_err(), "no session row");
        assert!(super::facts(&[vec![0, 5, 0]], false).is_err(), "truncated row");
        let unknown = [rows[0].clone(), row(&[Some("z"), None, None, None, None])];
        assert!(super::facts(&unknown[..1], false).is_ok());
        assert!(super::facts(&unknown, false).is_err(), "unknown kind");
    }

    /// Overloads are folded by the reader: the worst of them, an overload taking a type whose
    /// input runs user code counting as VOLATILE wherever its row comes, and the worst of those
    /// callable with one argument.
    #[test]
    fn a_functions_overloads_fold_with_the_types_whose_input_runs_user_code() {
        let schemas = h("public");
        let (public, f, g, checked) = (h("public"), h("f"), h("g"), h("checked"));
        let session = row(&[Some("s"), Some(&h("public")), Some(&h("u")), Some(&h("u")), Some(&schemas)]);
        let rows = |order: &[usize]| {
            let all = [
                // f(int) STABLE; f(checked) STABLE but takes the unsafe type; f() IMMUTABLE.
                row(&[Some("f"), Some(&public), Some(&f), Some("1"), Some("1 0 23")]),
                row(&[Some("f"), Some(&public), Some(&f), Some("1"), Some("1 0 70001")]),
                row(&[Some("f"), Some(&public), Some(&f), Some("0"), Some("0 0 ")]),
                // g(int, int default) IMMUTABLE: callable with one; g(int, int, int) STABLE: not.
                row(&[Some("f"), Some(&public), Some(&g), Some("0"), Some("2 1 23 23")]),
                row(&[Some("f"), Some(&public), Some(&g), Some("1"), Some("3 0 23 23 23")]),
                row(&[Some("t"), Some(&public), Some(&checked), Some("2"), Some("70001")]),
            ];
            std::iter::once(session.clone()).chain(order.iter().map(|&i| all[i].clone())).collect::<Vec<_>>()
        };
        for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]] {
            let facts = facts(&rows(&order), false).expect("facts");
            let c = &facts.catalog;
            assert_eq!(c.function_volatility(Some("public"), "f"), Some(Volatility::Volatile), "{order:?}");
            assert_eq!(c.one_argument_volatility("f"), Some(Volatility::Volatile), "{order:?}");
            assert_eq!(c.function_volatility(Some("public"), "g"), Some(Volatility::Stable), "{order:?}");
            assert_eq!(c.one_argument_volatility("g"), Some(Volatility::Immutable), "{order:?}");
        }
        // Without the type row, f is only as bad as it says.
        let facts = facts(&rows(&[0, 1, 2]), false).expect("facts");
        assert_eq!(facts.catalog.function_volatility(Some("public"), "f"), Some(Volatility::Stable));
    }

    /// An operator is VOLATILE when its function is, or when an operand is of a type whose input
    /// runs user code (a literal operand is converted to it), wherever the type's row comes.
    #[test]
    fn an_operator_over_a_type_whose_input_runs_user_code_is_volatile() {
        let (public, checked) = (h("public"), h("checked"));
        let session = row(&[Some("s"), Some(&public), Some(&h("u")), Some(&h("u")), Some(&public)]);
        let operator = |symbol: &str, volatility: &str, operands: &str, oid: u32| {
            let extra = format!("{operands} {oid} 0 0");
            row(&[Some("o"), Some(&public), Some(&h(symbol)), Some(volatility), Some(&extra)])
        };
        let unsafe_type = row(&[Some("t"), Some(&public), Some(&checked), Some("2"), Some("70001")]);
        let rows = [
            session,
            operator("===", "0", "70001 70001", 80001),
            operator("<<<", "0", "0 70001", 80002),
            operator("~~~", "0", "23 23", 80003),
            operator("!!!", "2", "23 23", 80004),
            unsafe_type,
        ];
        let volatile = |rows: &[Vec<u8>]| {
            let catalog = facts(rows, false).expect("facts").catalog;
            ["===", "<<<", "~~~", "!!!"].map(|s| catalog.volatile_operator_in(Some(&["public".to_string()]), s))
        };
        assert_eq!(volatile(&rows), [true, true, false, true]);
        let mut reordered = rows.to_vec();
        reordered.swap(1, 5);
        assert_eq!(volatile(&reordered), [true, true, false, true]);
        assert_eq!(volatile(&rows[..5]), [false, false, false, true], "without the type's row");
    }

    /// A user operator is VOLATILE when its commutator and negator links lead, however far and
    /// through operators that are not the user's, to one whose function is; cycles end.
    #[test]
    fn an_operator_whose_links_reach_a_volatile_one_is_volatile() {
        let public = h("public");
        let session = row(&[Some("s"), Some(&public), Some(&h("u")), Some(&h("u")), Some(&public)]);
        // kind, symbol, own function volatile, OID, commutator, negator.
        let operator = |kind: &str, symbol: &str, volatile: bool, oid: u32, com: u32, neg: u32| {
            let extra = format!("23 23 {oid} {com} {neg}");
            row(&[Some(kind), Some(&public), Some(&h(symbol)), Some(if volatile { "2" } else { "0" }), Some(&extra)])
        };
        let rows = [
            session,
            // A chain: <<< -neg-> >>= -com-> (a built-in, 600) -neg-> !!! (volatile).
            operator("o", "<<<", false, 80001, 0, 80002),
            operator("o", ">>=", false, 80002, 600, 80001),
            operator("l", "=", false, 600, 80002, 80003),
            operator("o", "!!!", true, 80003, 0, 600),
            // A cycle of its own with nothing volatile.
            operator("o", "~~~", false, 80010, 80011, 80011),
            operator("o", "^^^", false, 80011, 80010, 80010),
            // Pointing at the volatile one from outside the chain, and nothing at all.
            operator("o", "@@@", false, 80020, 80003, 0),
            operator("o", "###", false, 80030, 0, 0),
        ];
        let volatile = |rows: &[Vec<u8>]| {
            let catalog = facts(rows, false).expect("facts").catalog;
            ["<<<", ">>=", "!!!", "~~~", "^^^", "@@@", "###", "="]
                .map(|s| catalog.volatile_operator_in(Some(&["public".to_string()]), s))
        };
        assert_eq!(volatile(&rows), [true, true, true, false, false, true, false, false]);
        let mut reversed = rows[1..].to_vec();
        reversed.reverse();
        reversed.insert(0, rows[0].clone());
        assert_eq!(volatile(&reversed), [true, true, true, false, false, true, false, false], "in another order");
        // Without the built-in's row the chain is cut there: what it reached is not followed.
        let cut: Vec<_> = rows.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, r)| r.clone()).collect();
        assert_eq!(volatile(&cut), [false, false, true, false, false, true, false, false]);
    }

    /// An operator whose schema row is gone (it outlived a DROP SCHEMA it raced) comes with a
    /// NULL schema and still carries its links: a user operator that reaches it through them
    /// is VOLATILE when it is.
    #[test]
    fn an_operator_without_a_schema_still_carries_its_links() {
        let public = h("public");
        let session = row(&[Some("s"), Some(&public), Some(&h("u")), Some(&h("u")), Some(&public)]);
        for kind in ["o", "l"] {
            let rows = [
                session.clone(),
                row(&[Some("o"), Some(&public), Some(&h("#!")), Some("0"), Some("23 23 80001 0 80002")]),
                row(&[Some(kind), None, Some(&h("#!!")), Some("2"), Some("23 23 80002 0 80001")]),
            ];
            let catalog = facts(&rows, false).expect("facts").catalog;
            assert!(catalog.volatile_operator_in(Some(&["public".to_string()]), "#!"), "{kind}");
        }
    }
}
