//! The session facts the hooks ask for (`SessionHooks::wants_facts`), read from the server on
//! the session's own connection: one simple query, sent when the server is idle and before
//! the client's next statement is judged, whose answers never reach the client.
//!
//! The query is written to mean the same whatever the session did to its search_path or
//! defined in its schemas: every function, operator and type is qualified with pg_catalog and
//! every constant typed, so no user object can run in it or change its answer.

use std::sync::Arc;

use crate::{
    pg::text,
    session::SessionFacts,
    sql::catalog::{Catalog, Volatility},
};

/// Objects with OIDs from here on were created after initdb: by users and extensions.
/// (PostgreSQL's `FirstNormalObjectId`.)
const FIRST_USER_OID: u32 = 16384;

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

/// The facts query. Rows: (kind, schema, name, volatility, extra); names as hex of UTF-8, a
/// volatility as 0 (IMMUTABLE), 1 (STABLE) or 2 (VOLATILE).
/// - `s`: the session: search_path, current_user, session_user, and the schemas the server
///   searches (`current_schemas(true)`, comma-separated).
/// - `f`: a user function, overloads folded: the worst volatility, counting as VOLATILE an
///   aggregate and any function the session's role could have written (it can act as its
///   owner: the declared volatility is then its own claim) or that takes a type whose input
///   runs user code (a literal passed to it is cast); in `extra` the worst of those
///   callable with one argument (`t.f`).
/// - `x`: a VOLATILE built-in (pg_catalog) function, by name, that a user function shares its
///   name with: a call of a name the analyser does not know is cleared as a read only by a
///   user function the catalog shows to be one, and pg_catalog is searched first. (Unshadowed
///   names need no list: with no user function of the name the call stays `unknown`.) Found
///   through the name index, not by reading pg_proc whole: a fifth of the query on a new
///   backend before.
/// - `o`: a user operator (schema, symbol) whose function is volatile.
/// - `t`: a type whose input runs user code: a domain with a CHECK constraint, a base type with
///   a volatile input function, and every array, domain, composite and range over one.
/// - `c`: a user cast that runs a volatile function, to its target type; `extra` is its
///   context (`i` implicit, `a` assignment, `e` explicit).
///
/// Run with no statement or lock timeout of the session's (`SET LOCAL`, in the query's own
/// implicit transaction).
///
/// With `relations` (masking needs them), also every user relation (`r`: schema, name, OID,
/// relkind with `t` when it has triggers or rules), its columns (`a`: relation OID, name,
/// attnum, type OID and generated flag), inheritance (`i`: child, parent), and in a second
/// statement run with `search_path` set to pg_catalog (so every relation is qualified), view
/// definitions (`v`: OID, text).
pub fn query(relations: bool) -> String {
    let mut q = facts_query();
    if relations {
        let o = FIRST_USER_OID;
        let eq = "OPERATOR(pg_catalog.=)";
        let kinds = "c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}'::pg_catalog.\"char\"[])";
        q.push_str(&format!(
            " UNION ALL \
             SELECT 'r', {ns}, {rn}, c.oid::pg_catalog.text, c.relkind::pg_catalog.text OPERATOR(pg_catalog.||) \
               (CASE WHEN c.relhastriggers THEN 't'::pg_catalog.text ELSE ''::pg_catalog.text END) OPERATOR(pg_catalog.||) \
               (CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_rewrite w WHERE w.ev_class {eq} c.oid \
                 AND w.rulename OPERATOR(pg_catalog.<>) '_RETURN'::pg_catalog.name) \
               THEN 'R'::pg_catalog.text ELSE ''::pg_catalog.text END) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid {eq} c.relnamespace \
             WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND {kinds} \
             UNION ALL \
             SELECT 'a', a.attrelid::pg_catalog.text, {an}, a.attnum::pg_catalog.text, \
               a.atttypid::pg_catalog.text OPERATOR(pg_catalog.||) ','::pg_catalog.text OPERATOR(pg_catalog.||) a.attgenerated::pg_catalog.text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid {eq} a.attrelid \
             WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND {kinds} \
               AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped \
             UNION ALL \
             SELECT 'i', i.inhrelid::pg_catalog.text, i.inhparent::pg_catalog.text, '', '' FROM pg_catalog.pg_inherits i \
             UNION ALL \
             SELECT DISTINCT 'O', '', {on}, '', '' FROM pg_catalog.pg_operator o WHERE o.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid; \
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
    let volatility = |cond: &str| {
        format!(
            "pg_catalog.max(CASE WHEN {cond} THEN (CASE WHEN p.prokind {eq} 'a'::pg_catalog.\"char\" \
             OR p.provolatile {eq} 'v'::pg_catalog.\"char\" \
             OR pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE'::pg_catalog.text) \
             OR EXISTS (SELECT FROM bad WHERE bad.oid OPERATOR(pg_catalog.=) ANY (p.proargtypes::pg_catalog.oid[])) THEN 2 \
             WHEN p.provolatile {eq} 's'::pg_catalog.\"char\" THEN 1 ELSE 0 END) END)::pg_catalog.text"
        )
    };
    let any = volatility("true");
    let one = volatility(
        "p.pronargs OPERATOR(pg_catalog.>=) 1::pg_catalog.int2 \
         AND (p.pronargs OPERATOR(pg_catalog.-) p.pronargdefaults) OPERATOR(pg_catalog.<=) 1::pg_catalog.int2",
    );
    let schemas = format!(
        "pg_catalog.array_to_string(ARRAY(SELECT {} FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) AS s(n)), ','::pg_catalog.text)",
        hex("s.n")
    );
    format!(
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; \
         WITH RECURSIVE edges(child, parent) AS ( \
           SELECT t.oid, t.typelem FROM pg_catalog.pg_type t WHERE t.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
           UNION ALL SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE t.typbasetype OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
           UNION ALL SELECT t.oid, a.atttypid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_attribute a \
             ON a.attrelid {eq} t.typrelid WHERE t.typrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 \
           UNION ALL SELECT r.rngtypid, r.rngsubtype FROM pg_catalog.pg_range r), \
         bad(oid) AS ( \
           SELECT t.oid FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND ( \
             (t.typtype {eq} 'd'::pg_catalog.\"char\" AND EXISTS (SELECT FROM pg_catalog.pg_constraint c \
               WHERE c.contypid {eq} t.oid AND c.contype {eq} 'c'::pg_catalog.\"char\")) \
             OR (t.typtype {eq} 'b'::pg_catalog.\"char\" AND EXISTS (SELECT FROM pg_catalog.pg_proc p \
               WHERE p.oid {eq} t.typinput::pg_catalog.oid AND p.provolatile {eq} 'v'::pg_catalog.\"char\"))) \
           UNION SELECT e.child FROM edges e JOIN bad b ON e.parent {eq} b.oid) \
         SELECT 's'::pg_catalog.text, {sp}, {cu}, {su}, {schemas} \
         UNION ALL \
         SELECT 'f', {ns}, {pn}, {any}, {one} \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid {eq} p.pronamespace \
         WHERE p.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid GROUP BY n.nspname, p.proname \
         UNION ALL \
         SELECT DISTINCT 'x', '', {pn}, '2', '' FROM pg_catalog.pg_proc p \
         WHERE p.pronamespace {eq} 'pg_catalog'::pg_catalog.regnamespace::pg_catalog.oid \
         AND p.oid OPERATOR(pg_catalog.<) {o}::pg_catalog.oid AND p.provolatile {eq} 'v'::pg_catalog.\"char\" \
         AND EXISTS (SELECT FROM pg_catalog.pg_proc u WHERE u.proname {eq} p.proname \
           AND u.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid) \
         UNION ALL \
         SELECT DISTINCT 'o', {ns}, {on}, '2', '' \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid {eq} o.oprcode::pg_catalog.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid {eq} o.oprnamespace \
         WHERE o.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND (p.provolatile {eq} 'v'::pg_catalog.\"char\" \
         OR pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE'::pg_catalog.text)) \
         UNION ALL \
         SELECT 't', {ns}, {tn}, '2', '' FROM bad JOIN pg_catalog.pg_type t ON t.oid {eq} bad.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid {eq} t.typnamespace \
         UNION ALL \
         SELECT 'c', {ns}, {tn}, '2', c.castcontext::pg_catalog.text \
         FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid {eq} c.castfunc \
         JOIN pg_catalog.pg_type t ON t.oid {eq} c.casttarget \
         JOIN pg_catalog.pg_namespace n ON n.oid {eq} t.typnamespace \
         WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND (p.provolatile {eq} 'v'::pg_catalog.\"char\" \
         OR pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE'::pg_catalog.text))",
        sp = hex("pg_catalog.current_setting('search_path'::pg_catalog.text)"),
        cu = hex("current_user"),
        su = hex("session_user"),
        ns = hex("n.nspname"),
        pn = hex("p.proname"),
        on = hex("o.oprname"),
        tn = hex("t.typname"),
    )
}

/// Reads the facts from the query's rows (DataRow bodies).
pub fn facts(rows: &[Vec<u8>], with_relations: bool) -> Result<SessionFacts, String> {
    let mut session = None;
    let mut catalog = Catalog::default();
    let mut relations: Option<crate::sql::catalog::Relations> = with_relations.then(Default::default);
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
                let one = extra.as_deref().and_then(level);
                catalog.add_function(&named(schema)?, &named(name)?, v, one);
            }
            Some("x") => catalog.add_volatile_builtin(&named(name)?),
            Some("o") => catalog.add_volatile_operator(&named(schema)?, &named(name)?),
            Some("t") => catalog.add_unsafe_type(&named(schema)?, &named(name)?),
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
    let (search_path, current_user, session_user, schemas) = session.ok_or("no session row")?;
    catalog.relations = relations;
    Ok(SessionFacts { current_user, session_user, search_path, schemas, catalog: Arc::new(catalog) })
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
            row(&[Some("f"), Some(&public), Some(&lower), Some("2"), Some("2")]),
            row(&[Some("f"), Some(&app), Some(&owner), Some("1"), None]),
            row(&[Some("o"), Some(&public), Some(&plus), Some("2"), Some("")]),
        ];
        let facts = facts(&rows, false).expect("facts");
        assert_eq!(facts.current_user, "agent");
        assert_eq!(facts.session_user, "login");
        assert_eq!(facts.search_path, "\"$user\", public");
        assert_eq!(facts.schemas, ["pg_catalog", "public"]);
        assert!(
            super::facts(&[row(&[Some("f"), Some("zz"), Some(&lower), Some("2"), None])], false).is_err(),
            "not hex"
        );
        assert_eq!(facts.catalog.function_count(), 2);
        assert!(super::facts(&rows[1..], false).is_err(), "no session row");
        assert!(super::facts(&[vec![0, 5, 0]], false).is_err(), "truncated row");
        let unknown = [rows[0].clone(), row(&[Some("z"), None, None, None, None])];
        assert!(super::facts(&unknown[..1], false).is_ok());
        assert!(super::facts(&unknown, false).is_err(), "unknown kind");
    }
}
