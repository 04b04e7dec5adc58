use std::collections::BTreeMap;

use super::*;
use crate::{
    policy::{PolicySet, Subject},
    sql::{
        ObjectName,
        catalog::{ColumnInfo, Relations as CatalogRelations},
    },
};

const POLICY: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: pii}
spec:
  selector: {matchLabels: {app: agent}}
  masking:
    classifications:
      pii.email: ["*.*.email"]
      payment.card: [crm.customers.card]
  rules:
    - name: emails
      match: {classifications: [pii.email]}
      mask: {method: partial, keep: 4}
      exempt: {matchLabels: {team: dpo}}
    - name: cards
      match: {classifications: [payment.card]}
      mask: token
    - name: ssn
      match: {columns: [crm.customers.ssn, crm.people.badge]}
      mask: redact
"#;

fn column(attnum: i16, name: &str, type_oid: u32) -> ColumnInfo {
    ColumnInfo { attnum, name: name.into(), type_oid, generated: false }
}

fn catalog() -> Catalog {
    let mut r = CatalogRelations::default();
    r.add_relation(100, "crm", "customers", 'r', false);
    for (i, (n, t)) in [("id", 23), ("name", 25), ("email", 25), ("card", 25), ("ssn", 25)].iter().enumerate() {
        r.add_column(100, column(i as i16 + 1, n, *t));
    }
    r.add_relation(101, "crm", "orders", 'r', false);
    for (i, n) in ["id", "customer_id", "total"].iter().enumerate() {
        r.add_column(101, column(i as i16 + 1, n, 23));
    }
    r.add_relation(102, "crm", "contacts", 'v', false);
    r.add_column(102, column(1, "id", 23));
    r.add_column(102, column(2, "contact", 25));
    r.add_column(102, column(3, "shout", 25));
    r.add_definition(102, " SELECT c.id, c.email AS contact, upper(c.name) AS shout FROM crm.customers c;".into());
    // A view that filters: on an unprotected column, and on a protected one.
    r.add_relation(107, "crm", "vip", 'v', false);
    r.add_column(107, column(1, "id", 23));
    r.add_column(107, column(2, "contact", 25));
    r.add_definition(107, " SELECT c.id, c.email AS contact FROM crm.customers c WHERE c.id = 1;".into());
    r.add_relation(108, "crm", "probe", 'v', false);
    r.add_column(108, column(1, "id", 23));
    r.add_definition(108, " SELECT c.id FROM crm.customers c WHERE c.ssn LIKE '8%';".into());
    // A partitioned table whose partition is named by the rule, and an inheritance child.
    r.add_relation(103, "crm", "events", 'p', false);
    r.add_relation(104, "crm", "events_2024", 'r', false);
    for oid in [103, 104] {
        r.add_column(oid, column(1, "id", 23));
        r.add_column(oid, column(2, "contact", 25));
    }
    r.add_parent(104, 103);
    r.add_relation(105, "crm", "people", 'r', false);
    r.add_relation(106, "crm", "staff", 'r', true);
    for oid in [105, 106] {
        r.add_column(oid, column(1, "name", 25));
        r.add_column(oid, column(2, "badge", 25));
    }
    r.add_parent(106, 105);
    r.operators.insert("@".into());
    let mut c = Catalog::default();
    c.add_function("crm", "leak", crate::sql::catalog::Volatility::Stable, None);
    c.relations = Some(r);
    c
}

fn context(labels: &[(&str, &str)]) -> Arc<MaskContext> {
    let set = PolicySet::from_sources(&[("p.yaml".into(), POLICY.into())]).expect("policy");
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let selection = set.select(&Subject { labels: &labels, database: "main", user: None });
    let policy = Arc::new(selection.masking(&set, &labels).expect("masking applies"));
    let path: Arc<[String]> = Arc::from(vec!["crm".to_string(), "pg_catalog".to_string()]);
    Arc::new(MaskContext::new(policy, Arc::new(catalog()), Some(path), Arc::new(Key::new(1, [7; 32]))).expect("ctx"))
}

fn plan(ctx: &MaskContext, sql: &str) -> Result<Arc<PartMask>, String> {
    let analysis = crate::sql::analyse(sql);
    let text: Arc<str> = Arc::from(crate::sql::normalise_for_analysis(sql));
    let relations: Vec<ObjectName> = analysis.relations.to_vec();
    ctx.plan(&text, crate::sql::LexOptions::default(), &relations, analysis.effects, false)
}

/// Each output column: "clear", "exempt", "detect", or the method (with `*` when computed).
fn shape(p: &PartMask) -> Vec<String> {
    p.columns
        .iter()
        .map(|c| match c {
            ColumnMask::Clear => "clear".to_string(),
            ColumnMask::Exempt { .. } => "exempt".to_string(),
            ColumnMask::Detect => "detect".to_string(),
            ColumnMask::Mask { method, computed, .. } => {
                format!("{}{}", method.as_str(), if *computed { "*" } else { "" })
            }
        })
        .collect()
}

#[track_caller]
fn masks(ctx: &MaskContext, sql: &str, expected: &[&str]) {
    match plan(ctx, sql) {
        Ok(p) => assert_eq!(shape(&p), expected, "{sql}"),
        Err(e) => panic!("{sql}: refused: {e}"),
    }
}

#[track_caller]
fn refuses(ctx: &MaskContext, sql: &str, why: &str) {
    match plan(ctx, sql) {
        Ok(p) => panic!("{sql}: planned {:?}, expected a refusal", shape(&p)),
        Err(e) => assert!(e.contains(why), "{sql}: {e}"),
    }
}

#[test]
fn columns_are_masked_by_what_they_are_whatever_they_are_called() {
    let ctx = context(&[("app", "agent")]);
    masks(&ctx, "SELECT id, name, email FROM customers", &["clear", "clear", "partial"]);
    masks(&ctx, "SELECT c.email AS e, c.card FROM crm.customers AS c", &["partial", "token"]);
    masks(&ctx, "select * from CRM.\"customers\"", &["clear", "clear", "partial", "token", "redact"]);
    masks(&ctx, "TABLE customers", &["clear", "clear", "partial", "token", "redact"]);
    masks(&ctx, "SELECT x.* FROM (SELECT email, id FROM customers) x", &["partial", "clear"]);
    masks(&ctx, "WITH w(a, b) AS (SELECT id, email FROM customers) SELECT b, a FROM w", &["partial", "clear"]);
    masks(&ctx, "SELECT id FROM customers UNION ALL SELECT email FROM customers", &["partial*"]);
    masks(&ctx, "SELECT name FROM customers UNION ALL SELECT card FROM customers", &["token*"]);
    masks(&ctx, "VALUES (1, 'a')", &["clear", "clear"]);
    masks(&ctx, "SELECT id, total FROM orders", &["clear", "clear"]);
}

#[test]
fn computed_values_carry_what_they_read_and_are_masked_whole() {
    let ctx = context(&[("app", "agent")]);
    masks(
        &ctx,
        "SELECT upper(email), email || name, length(email)::text FROM customers",
        &["partial*", "partial*", "partial*"],
    );
    masks(&ctx, "SELECT CASE WHEN id = 1 THEN email ELSE card END FROM customers", &["partial*"]);
    masks(&ctx, "SELECT (SELECT max(email) FROM customers), row_to_json(c) FROM customers c", &["partial*", "redact*"]);
    // `c.*` inside an expression is the whole row too.
    masks(&ctx, "SELECT (c.*)::text, upper((c.*)::text) FROM customers c", &["redact*", "redact*"]);
    masks(&ctx, "SELECT array[c.*]::text, format('%s', (c.*)) FROM crm.customers c", &["redact*", "redact*"]);
    masks(&ctx, "SELECT format('%s', (crm.customers.*)) FROM crm.customers", &["redact*"]);
    // Of a relation not in scope (the server refuses it): anything.
    refuses(&ctx, "SELECT format('%s', (x.*)) FROM crm.customers", "traced");
    refuses(&ctx, "SELECT id FROM customers c WHERE (c.*)::text LIKE '%857%'", "condition");
    // A join's alias hides the names inside: its columns are theirs.
    masks(
        &ctx,
        "SELECT upper(j.ssn), to_jsonb(j.*)::text FROM (customers c CROSS JOIN orders o) AS j",
        &["redact*", "redact*"],
    );
    // USING puts the shared column first: by position, any column of either.
    masks(&ctx, "SELECT j.c3 FROM (orders JOIN customers USING (id)) AS j(c1, c2, c3)", &["redact*"]);
    // A qualifier nothing in scope answers to (the server refuses it) is never read as clean.
    refuses(&ctx, "SELECT upper(zz.ssn) FROM customers", "traced");
    refuses(&ctx, "SELECT to_jsonb(zz.*) FROM customers", "traced");
    masks(&ctx, "SELECT array_agg(card), json_build_object('c', card) FROM customers", &["token*", "token*"]);
    masks(&ctx, "SELECT c FROM customers c", &["redact*"]);
    masks(&ctx, "UPDATE customers SET name = 'x' WHERE id = 1 RETURNING email, id", &["partial", "clear"]);
    masks(&ctx, "DELETE FROM customers WHERE id = 1 RETURNING *", &["clear", "clear", "partial", "token", "redact"]);
}

#[test]
fn views_partitions_and_inheritance_lead_back_to_the_protected_column() {
    let ctx = context(&[("app", "agent")]);
    masks(&ctx, "SELECT * FROM contacts", &["clear", "partial", "clear"]);
    masks(&ctx, "SELECT contact FROM crm.contacts v", &["partial"]);
    // A view's WHERE is a condition of the statement reading it, not part of its columns.
    masks(&ctx, "SELECT * FROM vip", &["clear", "partial"]);
    refuses(&ctx, "SELECT id FROM probe", "in a condition");
    // `*.*.email` does not name `contact`, but a rule on a partition protects the parent.
    masks(&ctx, "SELECT id, contact FROM events", &["clear", "clear"]);
    masks(&ctx, "SELECT badge, name FROM staff", &["redact", "clear"]);
    masks(&ctx, "SELECT badge FROM ONLY people", &["redact"]);
}

#[test]
fn a_procedures_results_are_not_traced() {
    let ctx = context(&[("app", "agent")]);
    refuses(&ctx, "CALL crm.report()", "origin cannot be traced");
    refuses(&ctx, "CALL crm.keep((SELECT ssn FROM customers LIMIT 1))", "copies protected column");
}

#[test]
fn reading_a_protected_value_through_a_condition_or_a_copy_is_refused() {
    let ctx = context(&[("app", "agent")]);
    refuses(&ctx, "SELECT id FROM customers WHERE email LIKE 'a%'", "in a condition");
    refuses(&ctx, "SELECT id FROM customers ORDER BY email", "in a condition");
    refuses(&ctx, "SELECT count(*) FROM customers GROUP BY card", "in a condition");
    refuses(&ctx, "SELECT o.id FROM orders o JOIN customers c ON c.email = 'x' AND c.id = o.customer_id", "condition");
    refuses(&ctx, "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn = '1')", "condition");
    refuses(&ctx, "SELECT EXISTS (SELECT 1 FROM customers WHERE email = 'a@b.c')", "condition");
    refuses(&ctx, "SELECT id FROM contacts WHERE contact > 'm'", "condition");
    refuses(&ctx, "SELECT DISTINCT ON (email) id FROM customers", "condition");
    for sql in [
        // Duplicates are found, and rows kept or taken away, by comparing values.
        "SELECT DISTINCT email FROM customers",
        "SELECT name FROM customers UNION SELECT card FROM customers",
        "SELECT count(*) FROM (SELECT substr(ssn, 1, 3) FROM customers WHERE id = 1 INTERSECT SELECT '857') s",
        "SELECT count(*) FROM (SELECT ssn FROM customers EXCEPT ALL SELECT '857-31-9042') s",
        // A set-returning function's arguments decide how many rows come back.
        "SELECT count(*) FROM (SELECT pg_options_to_table(array_fill('a=b'::text, array[ascii(substr(ssn, 1, 1))])) FROM customers WHERE id = 1) s",
        "SELECT count(*) FROM (SELECT jsonb_path_query_tz(to_jsonb(ssn), '$ ? (@ like_regex \"^85\")') FROM customers) s",
        // A join's alias hides the names inside: its columns are theirs.
        "SELECT j.id FROM (customers c JOIN orders o ON o.customer_id = c.id) AS j WHERE j.ssn LIKE '85%'",
    ] {
        refuses(&ctx, sql, "condition");
    }
    refuses(&ctx, "INSERT INTO orders (total) SELECT length(email) FROM customers", "copies");
    refuses(&ctx, "UPDATE customers SET name = email", "copies");
    refuses(&ctx, "CREATE TABLE t AS SELECT email FROM customers", "copies");
    refuses(&ctx, "SELECT email INTO t2 FROM customers", "copies");
    refuses(&ctx, "SELECT set_config('application_name', email, false) FROM customers", "changes settings");
    // A comparison or a branch in the output tells about the value as a WHERE would.
    refuses(&ctx, "SELECT CASE WHEN email LIKE 'a%' THEN 1 ELSE 0 END FROM customers", "condition");
    refuses(&ctx, "SELECT count(*) FILTER (WHERE ssn > '5') FROM customers", "condition");
    refuses(&ctx, "SELECT email = 'a@b.c', id FROM customers", "condition");
    refuses(&ctx, "SELECT nullif(card, '4111'), id FROM customers", "condition");
    refuses(&ctx, "SELECT id FROM customers WHERE id = 1 OR NOT (ssn IS NULL)", "condition");
    refuses(&ctx, "SELECT 1 OPERATOR(crm.+) 2", "cannot be traced");
    refuses(&ctx, "ALTER TABLE crm.customers RENAME COLUMN email TO e2", "holds protected columns");
    refuses(&ctx, "DROP VIEW crm.contacts", "holds protected columns");
    refuses(&ctx, "SELECT CASE ssn WHEN '1' THEN 1 END FROM customers", "condition");
    refuses(&ctx, "SELECT pg_notify('c', email) FROM customers", "runs code");
    refuses(&ctx, "UPDATE customers SET name = 'x' RETURNING pg_notify('c', ssn)", "runs code");
    refuses(&ctx, "SELECT crm.leak(id) FROM customers", "cannot be traced");
    refuses(&ctx, "SELECT leak(1)", "cannot be traced");
    refuses(&ctx, "SELECT most_common_vals FROM pg_stats WHERE attname = 'email'", "cannot be traced");
    refuses(&ctx, "SELECT query_to_xml('select email from crm.customers', true, true, '')", "cannot be traced");
    refuses(&ctx, "SELECT * FROM brand_new_table", "cannot be traced");
    // The row order and the values of a non-protected column are not the protected values.
    masks(&ctx, "SELECT id FROM customers WHERE name = 'x' ORDER BY id", &["clear"]);
    masks(&ctx, "SELECT relname FROM pg_class", &["clear"]);
}

#[test]
fn what_the_first_review_found_is_refused_or_masked() {
    let ctx = context(&[("app", "agent")]);
    // Lineage that fails is not clear.
    refuses(
        &ctx,
        "SELECT s.histogram_bounds::text FROM xmltable('/r' PASSING '<r/>' COLUMNS a int PATH '.') x, pg_stats s",
        "cannot be traced",
    );
    // `*` over USING joins and functions does not line up: every column gets the strictest.
    let p = plan(&ctx, "SELECT * FROM orders o JOIN (SELECT id, upper(email) AS e FROM customers) c USING (id)")
        .expect("planned");
    assert!(!p.exact && p.all.is_some(), "{:?}", shape(&p));
    let p = plan(&ctx, "SELECT * FROM json_each('{}'), (SELECT upper(ssn) s, 1 k FROM customers) x").expect("planned");
    assert!(!p.exact && p.all.is_some(), "{:?}", shape(&p));
    // A recursive CTE moves values between columns from one iteration to the next.
    refuses(
        &ctx,
        "WITH RECURSIVE pg_w(n,a,b,c) AS (SELECT 1,''::text,''::text,ssn FROM customers UNION ALL \
         SELECT n+1,b,c,c FROM pg_w WHERE n<3) SELECT n,a FROM pg_w",
        "condition",
    );
    masks(
        &ctx,
        "WITH RECURSIVE w(a,b) AS (SELECT ''::text, ssn FROM customers UNION ALL SELECT b, b FROM w) SELECT a FROM w",
        &["redact*"],
    );
    // Set-returning functions turn values into row counts.
    refuses(
        &ctx,
        "SELECT count(*) FROM customers c, generate_series(1, ascii(substr(c.ssn,1,1))) g WHERE c.id=1",
        "condition",
    );
    refuses(&ctx, "SELECT id, generate_series(1, ascii(ssn)) FROM customers", "condition");
    refuses(&ctx, "SELECT count(*) FROM customers, unnest(string_to_array(ssn, NULL)) u", "condition");
    refuses(&ctx, "SELECT pg_sleep(ascii(ssn) / 100.0) FROM customers", "condition");
    // ORDER BY and DISTINCT ON prefer output names; windows order rows.
    refuses(&ctx, "SELECT c.id AS k, c.ssn AS id FROM customers c ORDER BY id", "condition");
    refuses(&ctx, "SELECT DISTINCT ON (id) c.ssn AS id FROM customers c", "condition");
    refuses(&ctx, "SELECT id, row_number() OVER (ORDER BY ssn) FROM customers", "condition");
    // Field notation calls a function; backend activity quotes other sessions' statements.
    refuses(&ctx, "SELECT o.leak FROM orders o", "cannot be traced");
    refuses(&ctx, "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s", "cannot be traced");
    // A `pg_` name the catalog does not hold is not a system view.
    refuses(&ctx, "SELECT upper(ssn) FROM pg_customers", "cannot be traced");
    masks(&ctx, "SELECT tablename FROM pg_tables", &["clear"]);
    refuses(
        &ctx,
        "INSERT INTO customers (id, ssn) VALUES (9, '1') ON CONFLICT (ssn) DO NOTHING RETURNING id",
        "condition",
    );
    // RETURNING old and new (PostgreSQL 18) are the target's rows.
    masks(&ctx, "UPDATE customers SET name = name WHERE id = 1 RETURNING upper(old.ssn)", &["redact*"]);
}

#[test]
fn the_second_review_findings_are_refused_or_masked() {
    let ctx = context(&[("app", "agent")]);
    // A long chain of tests is traced in one pass (it used to double per level).
    let chain = vec!["id = 1"; 200].join(" AND ");
    masks(&ctx, &format!("SELECT name FROM customers WHERE {chain}"), &["clear"]);
    let nested = (0..20).fold("ssn".to_string(), |acc, _| format!("CASE WHEN id = 1 THEN {acc} ELSE name END"));
    masks(&ctx, &format!("SELECT {nested} FROM customers"), &["redact*"]);
    // A computed value is redacted, not tokenised: a token of a chosen value would be a
    // dictionary for the real ones.
    let p = plan(&ctx, "SELECT card FROM customers UNION ALL SELECT 'guess'").expect("planned");
    let ColumnMask::Mask { .. } = &p.columns[0] else { panic!("{:?}", shape(&p)) };
    assert_eq!(p.columns[0].effective(), Some(Method::Redact));
    assert_eq!(p.masked[0].method, "redact");
    refuses(&ctx, "ALTER SCHEMA crm RENAME TO x", "holds protected columns");
    // A prefix operator a user defined may run a function reading anything.
    refuses(&ctx, "SELECT @ id FROM orders", "cannot be traced");
    refuses(&ctx, "DROP SCHEMA \"crm\" CASCADE", "holds protected columns");
    // Inside a test, a subquery's values are a condition too.
    refuses(&ctx, "SELECT id FROM customers WHERE id IN (SELECT length(ssn) FROM customers)", "condition");
}

#[test]
fn a_cursor_declared_twice_keeps_the_stricter_plan() {
    let ctx = context(&[("app", "agent")]);
    let clear = plan(&ctx, "DECLARE c CURSOR WITH HOLD FOR SELECT 1").expect("planned");
    let masked = plan(&ctx, "DECLARE c CURSOR WITH HOLD FOR SELECT upper(ssn) FROM customers").expect("planned");
    assert_eq!(clear.declares.as_deref(), Some("c"));
    assert_eq!(shape(&clear.join(&masked)), ["redact*"]);
    assert_eq!(shape(&masked.join(&clear)), ["redact*"]);
}

#[test]
fn an_exempt_identity_sees_clear_values_recorded_as_exempt() {
    let ctx = context(&[("app", "agent"), ("team", "dpo")]);
    let p = plan(&ctx, "SELECT email, card FROM customers WHERE email LIKE 'a%'").expect("planned");
    // Emails: exempt (even in a condition); cards: still masked.
    assert_eq!(shape(&p), ["exempt", "token"]);
    assert_eq!(p.masked[0].method, "exempt");
    assert_eq!(p.masked[1].column, "crm.customers.card");
}

#[test]
fn the_filter_joins_the_plan_with_each_columns_origin() {
    let ctx = context(&[("app", "agent")]);
    let p = plan(&ctx, "SELECT id, name FROM customers").expect("planned");
    let col = |oid, attnum, type_oid| ResultColumn { table_oid: oid, attnum, type_oid, binary: false };
    // The server says column 2 is crm.customers.email (attnum 3): masked even though the plan
    // thought it clear.
    let f = ctx.filter(Some(&p), &[col(100, 1, 23), col(100, 3, 25)], false).expect("a filter");
    assert!(!f.rewrites(0));
    let rewrite = |f: &dyn ResultFilter, value: &[u8]| {
        let mut out = Vec::new();
        match f.rewrite(1, value, &mut out) {
            Rewrite::Written => Some(String::from_utf8(out).unwrap()),
            Rewrite::Keep => Some("<kept>".to_string()),
            Rewrite::Null => None,
        }
    };
    assert_eq!(rewrite(f.as_ref(), b"alice@example.com").as_deref(), Some("*************.com"));
    // Nothing protected: no filter at all.
    assert!(ctx.filter(Some(&p), &[col(100, 1, 23), col(100, 2, 25)], false).is_none());
    // A view column's origin leads back to the base column.
    let f = ctx.filter(Some(&p), &[col(102, 2, 25)], false).expect("a filter");
    assert_ne!(f.rewrite(0, b"alice@example.com", &mut Vec::new()), Rewrite::Keep);
    // No plan (not judged): values are looked at by the detectors.
    let f = ctx.filter(None, &[col(0, 0, 25)], false).expect("a filter");
    let mut out = Vec::new();
    assert_eq!(f.rewrite(0, b"mail bob@example.org now", &mut out), Rewrite::Written);
    assert_eq!(out, b"mail **** now");
    assert_eq!(f.rewrite(0, b"nothing here", &mut Vec::new()), Rewrite::Keep);
}

/// The catalog a MySQL session reads (names folded to lower case; a view's definition as
/// information_schema.VIEWS shows it).
fn mysql_context() -> Arc<MaskContext> {
    mysql_context_in(Some(Arc::from(vec!["crm".to_string()])))
}

/// The same, with the current database `path` (None: not known).
fn mysql_context_in(path: Option<Arc<[String]>>) -> Arc<MaskContext> {
    let mut r = CatalogRelations::new(crate::sql::Dialect::MYSQL);
    r.add_relation(16384, "crm", "customers", 'r', false);
    for (i, n) in ["id", "name", "email", "card", "ssn", "ssn_tail"].iter().enumerate() {
        r.add_column(16384, column(i as i16 + 1, n, 0));
    }
    // ssn_tail AS (right(`ssn`, 4)): generated from a protected column.
    r.generated_from.insert((16384, 6), vec!["right".into(), "ssn".into(), "4".into()]);
    r.add_relation(16386, "crm", "processlist", 'r', false);
    r.add_column(16386, column(1, "info", 0));
    r.add_relation(16385, "crm", "contacts", 'v', false);
    r.add_column(16385, column(1, "id", 0));
    r.add_column(16385, column(2, "contact", 0));
    r.add_definition(
        16385,
        "select `crm`.`customers`.`id` AS `id`,`crm`.`customers`.`email` AS `contact` from `crm`.`customers`".into(),
    );
    let mut c = Catalog::default();
    c.relations = Some(r);
    let set = PolicySet::from_sources(&[("p.yaml".into(), POLICY.into())]).expect("policy");
    let labels: BTreeMap<String, String> = [("app".to_string(), "agent".to_string())].into();
    let selection = set.select(&Subject { labels: &labels, database: "main", user: None });
    let policy = Arc::new(selection.masking(&set, &labels).expect("masking applies"));
    Arc::new(MaskContext::new(policy, Arc::new(c), path, Arc::new(Key::new(1, [7; 32]))).expect("ctx"))
}

fn mysql_plan(ctx: &MaskContext, sql: &str) -> Result<Arc<PartMask>, String> {
    let options = crate::sql::LexOptions::mysql(false, false);
    let analysis = crate::sql::analyse_mysql(sql, options.dialect);
    let text: Arc<str> = Arc::from(crate::sql::normalise_for_analysis_with_options(sql, options));
    ctx.plan(&text, options, &analysis.relations, analysis.effects, false)
}

#[test]
fn mysql_statements_are_traced_under_mysqls_rules() {
    let ctx = mysql_context();
    let shape_of = |sql: &str| mysql_plan(&ctx, sql).map(|p| shape(&p));
    let ok = |sql: &str, expected: &[&str]| match shape_of(sql) {
        Ok(s) => assert_eq!(s, expected, "{sql}"),
        Err(e) => panic!("{sql}: refused: {e}"),
    };
    // Names in any case, quoted or not: MySQL compares column names without case.
    ok("SELECT `EMAIL`, Card FROM `Customers`", &["partial", "token"]);
    // Server settings, as Connector/J asks for them at connect.
    ok("SELECT @@session.auto_increment_increment AS a, @@global.max_allowed_packet AS b", &["clear", "clear"]);
    // The row alias of an upsert is the proposed row (MySQL 8.0.19 and later).
    ok("INSERT INTO customers (id, name) VALUES (1, 'a') AS new ON DUPLICATE KEY UPDATE name = new.name", &[]);
    // A procedure defined with its definer is code all the same.
    assert!(mysql_plan(&ctx, "CREATE DEFINER = root@localhost PROCEDURE p() SELECT 1").is_err());
    ok("select * from CRM.customers", &["clear", "clear", "partial", "token", "redact", "redact"]);
    ok("SELECT ssn_tail, EMAIL, email FROM customers", &["redact", "partial", "partial"]);
    ok("SELECT concat(email, '') AS e, upper(ssn) FROM customers", &["partial*", "redact*"]);
    ok("SELECT contact FROM contacts", &["partial"]);
    ok("SELECT group_concat(card SEPARATOR ',') FROM customers", &["token*"]);
    ok("SELECT id FROM customers LIMIT 1, 2", &["clear"]);
    // Values of unknown origin (the policy refuses what it cannot trace).
    let untraced = |sql: &str| match shape_of(sql) {
        Ok(s) => panic!("{sql}: planned {s:?}, expected a refusal"),
        Err(e) => assert!(e.contains("origin cannot be traced"), "{sql}: {e}"),
    };
    untraced("SELECT @v");
    untraced("SELECT load_file('/etc/passwd')");
    untraced("SELECT info FROM information_schema.processlist");
    untraced("SELECT sql_text FROM performance_schema.events_statements_history");
    untraced("SELECT crm.leak(id) FROM customers");
    untraced("CALL crm.report()");
    ok("SELECT table_name FROM information_schema.tables", &["clear"]);
    ok("SELECT @@version", &["clear"]);
    // Copies and probes.
    let refused = |sql: &str, why: &str| match shape_of(sql) {
        Ok(s) => panic!("{sql}: planned {s:?}, expected a refusal"),
        Err(e) => assert!(e.contains(why), "{sql}: {e}"),
    };
    refused("SELECT id FROM customers WHERE ssn LIKE '8%'", "in a condition");
    // `||` is OR without PIPES_AS_CONCAT: a truth value tells about the value it tests.
    refused("SELECT email || id FROM customers", "in a condition");
    refused("SET @v = (SELECT email FROM customers LIMIT 1)", "copies protected column");
    refused("SELECT email INTO @v FROM customers LIMIT 1", "copies protected column");
    refused("SELECT @v := email FROM customers", "cannot be traced");
    refused("SELECT ſsn FROM customers", "cannot be traced");
    for sql in [
        "SHOW WARNINGS",
        "show full processlist",
        "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT",
        "SHOW SLAVE STATUS",
        "SHOW ALL SLAVES STATUS",
    ] {
        refused(sql, "may quote values");
    }
    // Aliases and CTE names the server tells apart by case.
    for sql in [
        "SELECT concat(A.email, '') FROM (SELECT 'x' AS email) a, crm.customers A",
        "SELECT (SELECT concat(C.email, '') FROM (SELECT 'x' AS email) c LIMIT 1) FROM crm.customers C",
        "WITH Customers AS (SELECT 'x' AS email) SELECT concat(email, '') FROM customers",
    ] {
        refused(sql, "in two cases");
    }
    // LAST_INSERT_ID(expr) keeps the value for a later statement.
    refused("SELECT last_insert_id(conv(hex(substr(card, 1, 8)), 16, 10)) FROM customers WHERE id = 1", "runs code");
    refused("SELECT get_lock(ssn, 0) FROM customers", "runs code");
    // A full-text probe is a condition.
    refused("SELECT id FROM customers WHERE MATCH (email) AGAINST ('zqx*' IN BOOLEAN MODE)", "in a condition");
    // With the current database not known, an unqualified name may be a system relation's.
    let wide = mysql_context_in(None);
    match mysql_plan(&wide, "SELECT info FROM processlist") {
        Ok(p) => panic!("planned {:?}", shape(&p)),
        Err(e) => assert!(e.contains("database not known"), "{e}"),
    }
    refused("INSERT INTO customers (name) SELECT email FROM customers", "copies protected column");
}

#[test]
fn a_result_whose_columns_do_not_line_up_with_the_plan_gets_the_strictest_mask_everywhere() {
    // MySQL returns a USING column once, first (7 columns here); the plan lists both sides'
    // columns in FROM order (8), so its positions would name the wrong columns. The count check
    // is what keeps `t.name` (an email under another name) from being taken as clear.
    let ctx = mysql_context();
    let sql = "SELECT * FROM (SELECT email AS name, id FROM customers) t JOIN customers USING (id)";
    let plan = mysql_plan(&ctx, sql).expect("planned");
    assert_ne!(plan.columns.len(), 7, "{:?}", shape(&plan));
    for i in 0..7 {
        assert!(matches!(plan.column(i, 7), ColumnMask::Mask { .. }), "column {i}: {:?}", plan.column(i, 7));
    }
}

/// Code a masked session defines runs later, reading what it names where masking sees only the
/// clean column or result it fills: a function, a trigger, a rule, or a default, check or
/// generated column calling a function that is not a known built-in.
#[test]
fn a_masked_session_defines_no_code() {
    let ctx = context(&[("app", "agent")]);
    for sql in [
        "CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM crm.customers WHERE id = 1 $$",
        "create or replace procedure public.p() language plpgsql as $$ begin null; end $$",
        "CREATE TABLE public.t (id int, x text DEFAULT public.f())",
        "CREATE TABLE public.t (id int, x text GENERATED ALWAYS AS (f(id)) STORED)",
        "ALTER TABLE public.t ALTER COLUMN x SET DEFAULT f()",
        "CREATE TRIGGER tr BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.g()",
        "CREATE RULE r AS ON INSERT TO public.t DO ALSO INSERT INTO public.log SELECT ssn FROM crm.customers",
        "create extension dblink",
        "CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'localhost', dbname 'db')",
        "CREATE USER MAPPING FOR CURRENT_USER SERVER loop OPTIONS (user 'agent', password 'x')",
        "CREATE FOREIGN TABLE public.ft (id int, x text) SERVER loop OPTIONS (schema_name 'crm', table_name 'customers')",
        "IMPORT FOREIGN SCHEMA crm FROM SERVER loop INTO public",
        "CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION public.g()",
        "create or replace function public.f() returns int language sql as 'select 1'",
        "CREATE CONSTRAINT TRIGGER tr AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.g()",
        "CREATE TEXT SEARCH PARSER p (START = s, GETTOKEN = g, END = e, LEXTYPES = l)",
    ] {
        // (Refused as code, or as text the analyser cannot read.)
        assert!(plan(&ctx, sql).is_err(), "{sql}: planned");
    }
    refuses(&ctx, "CREATE TABLE public.t (id int, x text DEFAULT public.f())", "masking cannot trace");
    // Words of code elsewhere than as the object made: ordinary tables and changes.
    for sql in [
        "CREATE TABLE public.t (id int, x text DEFAULT 'none', at timestamptz DEFAULT now())",
        "DROP TABLE public.t",
        "CREATE TABLE public.files (name text, extension text, language text, operator text, rule text)",
        "ALTER TABLE public.t ALTER COLUMN id TYPE bigint USING CAST(id AS bigint)",
        "ALTER TABLE public.t DISABLE TRIGGER ALL",
        "CREATE UNIQUE INDEX ON public.t (id)",
        "CREATE OR REPLACE VIEW public.v AS SELECT id FROM orders",
        "CREATE TABLE public.daily AS SELECT CAST(id AS text) AS d, count(*) FROM orders GROUP BY 1",
    ] {
        assert!(plan(&ctx, sql).is_ok(), "{sql}");
    }
}

#[test]
fn zz_review_probe() {
    let ctx = context(&[("app", "agent")]);
    for sql in [
        "SELECT j.id FROM (crm.customers c JOIN crm.orders o ON o.customer_id = c.id) AS j",
        "SELECT j.x, j.y, j.z, j.w, j.v FROM (crm.customers c JOIN crm.orders o ON o.customer_id = c.id) AS j(x, y, z, w, v)",
        "SELECT j.* FROM (crm.customers c JOIN crm.orders o USING (id)) AS j",
        "SELECT * FROM (crm.customers c CROSS JOIN crm.orders o) AS j",
        "SELECT j.ssn FROM ((crm.customers) AS j)",
        "SELECT j.id FROM ((crm.customers c) AS j)",
        "SELECT DISTINCT id, name FROM crm.customers",
        "CREATE TABLE t AS SELECT 1",
        "CREATE SCHEMA s CREATE VIEW v AS SELECT 1",
        "ALTER TABLE crm.orders ADD COLUMN x text DEFAULT 'a'",
        "CREATE INDEX ON crm.orders (total)",
        "CREATE TEMP TABLE t (a int)",
    ] {
        println!("{sql}\n   => {:?}", plan(&ctx, sql).map(|p| shape(&p)));
    }
    let m = mysql_context();
    for sql in [
        "INSERT INTO customers (id, name) VALUES (1, 'a') AS new ON DUPLICATE KEY UPDATE name = new.name",
        "INSERT INTO customers (id, name) VALUES (1, 'a') ON DUPLICATE KEY UPDATE name = VALUES(name)",
        "SELECT crm.customers.id FROM crm.customers",
        "SELECT @@session.sql_mode",
    ] {
        println!("{sql}\n   => {:?}", mysql_plan(&m, sql).map(|p| shape(&p)));
    }
}
