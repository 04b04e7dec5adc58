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

/// The facts query. Rows: (kind, schema, name, volatility, extra).
/// - `s`: the session: search_path, current_user, session_user.
/// - `f`: a user function, overloads folded: worst volatility (an aggregate counts as
///   volatile), and in `extra` the worst of those callable with one argument (`t.f`).
/// - `o`: a user operator (schema, symbol) whose function is volatile.
/// - `t`: a user type whose input runs user code: a domain with a CHECK constraint (or over a
///   user type), a base type whose input function is volatile.
/// - `c`: a user cast that runs a volatile function, to its target type; `extra` is its
///   context (`i` implicit, `a` assignment, `e` explicit).
pub fn query() -> String {
    let o = FIRST_USER_OID;
    format!(
        "SELECT 's'::pg_catalog.text, pg_catalog.current_setting('search_path'::pg_catalog.text), \
         current_user::pg_catalog.text, session_user::pg_catalog.text, ''::pg_catalog.text \
         UNION ALL \
         SELECT 'f', n.nspname::pg_catalog.text, p.proname::pg_catalog.text, \
         pg_catalog.max(CASE WHEN p.prokind OPERATOR(pg_catalog.=) 'a'::pg_catalog.\"char\" THEN 'v'::pg_catalog.text \
         ELSE p.provolatile::pg_catalog.text END), \
         pg_catalog.max(CASE WHEN p.pronargs OPERATOR(pg_catalog.>=) 1::pg_catalog.int2 \
         AND (p.pronargs OPERATOR(pg_catalog.-) p.pronargdefaults) OPERATOR(pg_catalog.<=) 1::pg_catalog.int2 \
         THEN p.provolatile::pg_catalog.text END) \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
         WHERE p.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid GROUP BY 1, 2, 3 \
         UNION ALL \
         SELECT DISTINCT 'o', n.nspname::pg_catalog.text, o.oprname::pg_catalog.text, 'v', '' \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) o.oprcode::pg_catalog.oid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace \
         WHERE o.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid \
         AND p.provolatile OPERATOR(pg_catalog.=) 'v'::pg_catalog.\"char\" \
         UNION ALL \
         SELECT 't', n.nspname::pg_catalog.text, t.typname::pg_catalog.text, 'v', '' \
         FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace \
         WHERE t.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND ((t.typtype OPERATOR(pg_catalog.=) 'd'::pg_catalog.\"char\" \
         AND (t.typbasetype OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid OR EXISTS (SELECT FROM pg_catalog.pg_constraint c \
         WHERE c.contypid OPERATOR(pg_catalog.=) t.oid AND c.contype OPERATOR(pg_catalog.=) 'c'::pg_catalog.\"char\"))) \
         OR (t.typtype OPERATOR(pg_catalog.=) 'b'::pg_catalog.\"char\" AND EXISTS (SELECT FROM pg_catalog.pg_proc p \
         WHERE p.oid OPERATOR(pg_catalog.=) t.typinput::pg_catalog.oid \
         AND p.provolatile OPERATOR(pg_catalog.=) 'v'::pg_catalog.\"char\"))) \
         UNION ALL \
         SELECT 'c', n.nspname::pg_catalog.text, t.typname::pg_catalog.text, 'v', c.castcontext::pg_catalog.text \
         FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) c.castfunc \
         JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.casttarget \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace \
         WHERE c.oid OPERATOR(pg_catalog.>=) {o}::pg_catalog.oid AND p.provolatile OPERATOR(pg_catalog.=) 'v'::pg_catalog.\"char\""
    )
}

/// Reads the facts from the query's rows (DataRow bodies).
pub fn facts(rows: &[Vec<u8>]) -> Result<SessionFacts, String> {
    let mut session = None;
    let mut catalog = Catalog::default();
    for row in rows {
        let values = columns(row).ok_or("a malformed row")?;
        let [kind, schema, name, volatility, extra] = values.as_slice() else {
            return Err(format!("a row of {} columns, not 5", values.len()));
        };
        let field = |v: &Option<String>| v.clone().unwrap_or_default();
        match kind.as_deref() {
            Some("s") => session = Some((field(schema), field(name), field(volatility))),
            Some("f") => {
                let v = volatility.as_deref().and_then(Volatility::from_code).ok_or("a function without volatility")?;
                let one = extra.as_deref().and_then(Volatility::from_code);
                catalog.add_function(&field(schema), &field(name), v, one);
            }
            Some("o") => catalog.add_volatile_operator(&field(schema), &field(name)),
            Some("t") => catalog.add_unsafe_type(&field(schema), &field(name)),
            Some("c") => catalog.add_volatile_cast(&field(schema), &field(name), extra.as_deref() != Some("e")),
            other => return Err(format!("a row of unknown kind {other:?}")),
        }
    }
    let (search_path, current_user, session_user) = session.ok_or("no session row")?;
    Ok(SessionFacts { current_user, session_user, search_path, catalog: Arc::new(catalog) })
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

    #[test]
    fn rows_become_facts_and_malformed_ones_an_error() {
        let rows = vec![
            row(&[Some("s"), Some("\"$user\", public"), Some("agent"), Some("login"), Some("")]),
            row(&[Some("f"), Some("public"), Some("lower"), Some("v"), Some("v")]),
            row(&[Some("f"), Some("app"), Some("owner"), Some("s"), None]),
            row(&[Some("o"), Some("public"), Some("+"), Some("v"), Some("")]),
        ];
        let facts = facts(&rows).expect("facts");
        assert_eq!(facts.current_user, "agent");
        assert_eq!(facts.session_user, "login");
        assert_eq!(facts.search_path, "\"$user\", public");
        assert_eq!(facts.catalog.function_count(), 2);
        assert!(super::facts(&rows[1..]).is_err(), "no session row");
        assert!(super::facts(&[vec![0, 5, 0]]).is_err(), "truncated row");
        assert!(super::facts(&[row(&[Some("x"), None, None, None, None])]).is_err(), "unknown kind");
    }
}
