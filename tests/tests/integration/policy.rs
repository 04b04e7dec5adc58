//! Policies enforced through the real redirect against a real PostgreSQL: refusals with 42501
//! that leave the database as it was and the session usable, label-selected policies, hot
//! reload, the audit trail's verdicts, connection-level decisions for `protocol: tcp`, and the
//! `warden policy` commands.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use testkit::{
    Agent, Postgres, check, db_code as code, db_message as message, output, pg_connect as connect, psql_bin,
    warden_bin, workspace_root,
};

const BASELINE: &str = "baseline.yaml";

fn baseline() -> String {
    std::fs::read_to_string(workspace_root().join("policies").join(BASELINE)).expect("policies/baseline.yaml")
}

/// psql's stderr and whether it succeeded, for one script run by a labelled workload.
fn labelled_psql(agent: &Agent, labels: &[&str], port: u16, sql: &str) -> (bool, String, String) {
    let out = output(&mut agent.exec_psql(labels, "127.0.0.1", port, sql));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(pg: &Postgres) {
    pg.admin_sql(
        "create table accounts(id int primary key, owner text, balance int); \
         insert into accounts values (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)",
    );
}

#[test]
fn the_baseline_refuses_by_effect_for_labelled_agents_and_leaves_the_rest_alone() {
    let pg = Postgres::start();
    fixture(&pg);
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[(BASELINE, &baseline())],
    );
    let bot = ["warden/kind=agent", "warden/identity=it-bot"];

    // An unscoped DELETE hidden behind a CTE: refused, naming the policy and the rule.
    let (ok, _, err) = labelled_psql(&agent, &bot, pg.port, "with x as (select 1) delete from accounts");
    assert!(!ok && err.contains("warden:") && err.contains("baseline") && err.contains("no-unscoped-writes"), "{err}");
    assert_eq!(pg.admin_sql("select count(*) from accounts"), "3", "nothing was deleted");

    // A multi-statement string with one refused statement runs none of it.
    let (ok, _, err) =
        labelled_psql(&agent, &bot, pg.port, "update accounts set balance = 0 where id = 1; drop table accounts");
    assert!(!ok && err.contains("no-ddl"), "{err}");
    assert_eq!(pg.admin_sql("select balance from accounts where id = 1"), "10", "the UPDATE did not run either");

    // EXPLAIN ANALYZE runs what it explains; a table function is a function call.
    for (sql, rule) in [
        ("explain (analyze) delete from accounts", "no-unscoped-writes"),
        ("select * from pg_catalog.pg_read_file('/etc/hostname')", "no-server-files"),
        ("do $$ begin delete from accounts; end $$", "no-unknown"),
    ] {
        let (ok, _, err) = labelled_psql(&agent, &bot, pg.port, sql);
        assert!(!ok && err.contains(rule), "{sql}: {err}");
    }
    assert_eq!(pg.admin_sql("select count(*) from accounts"), "3");

    // What is allowed works as it does directly, and the session stays usable after a refusal.
    let (ok, out, err) = labelled_psql(&agent, &bot, pg.port, "select owner from accounts where id = 2");
    assert!(ok && out.trim() == "bob", "{out} {err}");
    let (ok, out, err) = labelled_psql(
        &agent,
        &bot,
        pg.port,
        "update accounts set balance = balance + 1 where id = 3 returning balance",
    );
    assert!(ok && out.trim().starts_with("31"), "{out} {err}");

    // An identity the pack does not select is not refused.
    let (ok, _, err) =
        labelled_psql(&agent, &["warden/identity=it-human"], pg.port, "delete from accounts where owner = 'cy'");
    assert!(ok, "{err}");
    assert_eq!(pg.admin_sql("select count(*) from accounts"), "2");

    // The audit trail records the refusal with its policy, rule and reason.
    let refused = agent.wait_record("the refused CTE delete", |r| {
        r["kind"] == "statement" && r["verdict"]["decision"] == "deny" && r["verdict"]["rule"] == "no-unscoped-writes"
    });
    assert_eq!(refused["verdict"]["policy"], "baseline", "{refused}");
    assert_eq!(refused["class"], "write", "{refused}");
    assert_eq!(refused["statement"], 0, "never forwarded: {refused}");
    let allowed = agent.wait_record("an allowed read", |r| {
        r["kind"] == "statement" && r["verdict"]["decision"] == "allow" && r["class"] == "read"
    });
    assert!(allowed["verdict"]["reason"].is_string(), "{allowed}");
}

const READERS: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: readers}\nspec:\n  selector: {matchLabels: {warden/kind: reader}}\n  rules:\n    - {name: public-reads, match: {class: [read], relations: ['public.*']}, action: allow}\n  default: deny\n";

/// psql as database user `user`, for one script run by a labelled workload.
fn psql_as(agent: &Agent, labels: &[&str], user: &str, port: u16, sql: &str) -> (bool, String, String) {
    let psql = psql_bin().display().to_string();
    let port = port.to_string();
    let out =
        output(&mut agent.exec(
            labels,
            &[&psql, "-X", "-tA", "-U", user, "-d", "postgres", "-h", "127.0.0.1", "-p", &port, "-c", sql],
        ));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a name runs is what the database's catalog says, read on the session's own connection
/// before its first statement is judged: user overloads of built-in names, functional notation,
/// a role's default search_path and role, and user functions the catalog shows to be reads.
#[test]
fn the_databases_catalog_decides_what_a_name_runs() {
    let pg = Postgres::start();
    fixture(&pg);
    pg.admin_sql(
        "create table trail(n int); create schema app; create schema evil; \
         create function public.lower(int) returns int language sql volatile \
           as 'insert into trail values ($1) returning n'; \
         create function public.purge(accounts) returns bigint language sql volatile \
           as 'with d as (delete from accounts where id = ($1).id returning 1) select count(*) from d'; \
         create function app.report() returns bigint language sql stable as 'select count(*) from public.accounts'; \
         create type app.pair as (a int, b int); \
         create function app.note(int) returns boolean language sql volatile \
           as 'insert into public.trail values ($1) returning true'; \
         create domain app.checked as int check (app.note(value)); \
         create function app.takes(app.checked) returns int language sql stable as 'select 1'; \
         create type app.span as range (subtype = app.checked); \
         create function evil.upper(text) returns text language sql volatile \
           as 'insert into public.trail values (2) returning ''shadowed'''; \
         create function evil.text_plus(text, text) returns text language sql volatile \
           as 'insert into public.trail values (3) returning $1 || $2'; \
         create operator evil.+ (leftarg = text, rightarg = text, function = evil.text_plus); \
         create role bot login; grant all on all tables in schema public to bot; \
         grant usage on schema app, evil to bot; grant select on accounts to bot; \
         alter role bot set search_path = evil, pg_catalog; \
         create role auditor; create role bot2 login; grant auditor to bot2; alter role bot2 set role = auditor; \
         create function public.currtid2(int) returns int language sql stable as 'select 1'; create role clerk login; \
         create function app.same(app.checked, app.checked) returns boolean language sql stable \
           as 'select $1::int = $2::int'; \
         create operator app.= (leftarg = app.checked, rightarg = app.checked, function = app.same); \
         create table app.tray(z app.checked); insert into app.tray values (1); grant select on app.tray to bot; \
         create function app.below(text, int) returns boolean language plpgsql stable \
           as 'begin return length($1) < $2; end'; \
         create function app.not_below(text, int) returns boolean language sql volatile \
           as 'insert into public.trail values ($2) returning length($1) >= $2'; \
         create operator app.>= (leftarg = text, rightarg = int, function = app.not_below); \
         create operator app.< (leftarg = text, rightarg = int, function = app.below, negator = operator(app.>=)); \
         create function app.any_ti(int, text) returns boolean language plpgsql stable as 'begin return true; end'; \
         create function app.logs_ti(text, int) returns boolean language sql volatile \
           as 'insert into public.trail values ($2) returning true'; \
         create operator app.<<<= (leftarg = text, rightarg = int, function = app.logs_ti); \
         create operator app.>>>= (leftarg = int, rightarg = text, function = app.any_ti, commutator = operator(app.<<<=)); \
         create operator app.<= (leftarg = int, rightarg = text, function = app.any_ti, negator = operator(app.>>>=)); \
         create operator app.> (leftarg = text, rightarg = int, function = app.below); \
         create role fnowner; create role nh login noinherit; grant fnowner to nh; \
         grant usage, create on schema app to fnowner; grant usage on schema app to nh; \
         set role fnowner; create function app.imm(int) returns int language sql immutable as 'select $1'; \
         reset role; \
         truncate trail",
    );
    // An operator that outlives its schema: CREATE OPERATOR does not lock its schema, so a DROP
    // SCHEMA in another session passes it, and its commit leaves it without a schema row; as
    // the negator of a STABLE app.>, it still runs for `NOT (a > b)`. (A server that does lock
    // the schema makes the drop wait: it gives up after 5 s and the case cannot arise there.)
    let race = "import sys, psycopg\n\
        a = psycopg.connect(sys.argv[1], autocommit=True)\n\
        b = psycopg.connect(sys.argv[1])\n\
        a.execute('create schema gone')\n\
        a.execute(\"set lock_timeout = '5s'\")\n\
        b.execute('create operator gone.#!! (leftarg = text, rightarg = int, function = app.not_below, negator = operator(app.>))')\n\
        try:\n\
        \x20   a.execute('drop schema gone cascade')\n\
        except psycopg.errors.LockNotAvailable:\n\
        \x20   print('locked')\n\
        b.commit()\n";
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.port);
    let raced = !check(Command::new("python3").args(["-c", race, &conninfo])).contains("locked");
    let schemaless = pg.admin_sql(
        "select count(*) from pg_catalog.pg_operator o where o.oprname = '#!!' \
         and not exists (select from pg_catalog.pg_namespace n where n.oid = o.oprnamespace)",
    );
    assert_eq!(schemaless.trim(), if raced { "1" } else { "0" }, "the operator outlived its schema: {raced}");
    let auditors = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: auditors}\nspec:\n  selector: {}\n  users: [auditor]\n  rules: []\n  default: deny\n";
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[(BASELINE, &baseline()), ("auditors.yaml", auditors), ("readers.yaml", READERS)],
    );
    let bot = ["warden/kind=agent"];
    let run = |user: &str, sql: &str| psql_as(&agent, &bot, user, pg.port, sql);

    // A VOLATILE user overload of a built-in name, and functional notation: refused, nothing ran.
    for sql in ["select lower(5)", "select a.purge from accounts a", "select (a).purge from accounts a"] {
        let (ok, _, err) = run("postgres", sql);
        assert!(!ok && err.contains("warden:") && err.contains("VOLATILE"), "{sql}: {err}");
    }
    assert_eq!(pg.admin_sql("select count(*) from trail"), "0");
    assert_eq!(pg.admin_sql("select count(*) from accounts"), "3");
    // A STABLE user function and a composite type's cast are reads, as the catalog says.
    let (ok, out, err) = run("bot", "select app.report(), (row(1, 2)::app.pair).b");
    assert!(ok && out.trim() == "3|2", "{out} {err}");
    // A STABLE function whose parameter is a domain with a CHECK runs the CHECK on a literal;
    // so does a cast to an array, a range or a multirange of that domain.
    for sql in [
        "select app.takes('4')",
        "select '{4}'::app.checked[]",
        "select '[4,5]'::app.span",
        "select '{[4,5]}'::app.span_multirange",
        // An array of the multirange: no constructor function shares its name.
        "select '{\"{[4,5]}\"}'::app._span_multirange",
    ] {
        let (ok, _, err) = run("bot", sql);
        assert!(!ok && err.contains("warden:"), "{sql}: {err}");
    }
    assert_eq!(pg.admin_sql("select count(*) from trail"), "0");
    // A STABLE user `=` over that domain, reached through the search_path: its literal operand
    // is converted to the domain, running the CHECK for each row.
    let (ok, _, err) = run("bot", "set search_path = app, public; select z = '4' from app.tray");
    assert!(!ok && err.contains("VOLATILE user operator"), "{err}");
    // A STABLE user operator whose negator is VOLATILE: the planner runs `NOT (a < b)` as
    // `a >= b`.
    let (ok, _, err) = run("bot", "set search_path = app, public; select not ('abc'::text < 1)");
    assert!(!ok && err.contains("VOLATILE user operator"), "{err}");
    // Two links away: a STABLE `<=` whose negator is STABLE, and the negator's commutator
    // VOLATILE (estimating `NOT (1 <= x)` as `1 >>>= x` calls the commutator).
    let (ok, _, err) = run("bot", "set search_path = app, public; select not (1 <= 'abc'::text)");
    assert!(!ok && err.contains("VOLATILE user operator"), "{err}");
    // A negator whose schema is gone is followed all the same (where it is there, as ever).
    let (ok, _, err) = run("bot", "set search_path = app, public; select not ('abc'::text > 1)");
    assert!(!ok && err.contains("VOLATILE user operator"), "{err}");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "0");
    // A parameter declared (Parse, by OID) of the domain's type: the bound value is converted
    // by the domain's input, running the CHECK, whatever the statement's text.
    let checked = pg.admin_sql("select 'app.checked'::pg_catalog.regtype::pg_catalog.oid");
    let typed = |labels: &[&str]| {
        let script = "import sys, psycopg\n\
            c = psycopg.connect(sys.argv[1], autocommit=True)\n\
            for r in (c.pgconn.prepare(b'p', b'select $1', [int(sys.argv[2])]), c.pgconn.exec_prepared(b'p', [b'4'])):\n\
            \x20   print(r.status, r.error_message.decode())\n";
        let conninfo = format!("host=127.0.0.1 port={} user=bot dbname=postgres", pg.port);
        let out = output(&mut agent.exec(labels, &["python3", "-c", script, &conninfo, checked.trim()]));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = typed(&bot);
    assert!(out.contains("warden:") && out.contains("type whose input runs user code"), "{out}");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "0");
    // Not for a role that can act as the function's owner: its volatility is its own claim.
    let (ok, _, err) = run("postgres", "select app.report()");
    assert!(!ok && err.contains("VOLATILE"), "{err}");
    // Nor for a member of the owner that does not inherit its rights: it can SET ROLE to it.
    let (ok, _, err) = run("nh", "select app.imm(1)");
    assert!(!ok && err.contains("VOLATILE"), "{err}");
    let (ok, out, err) = run("postgres", "select upper('a'), 1 + 1");
    assert!(ok && out.trim() == "A|2", "evil is not on the search_path: {out} {err}");
    let (ok, _, err) = run("bot", "select 'a'::text + 'b'::text");
    assert!(!ok && err.contains("VOLATILE user operator"), "{err}");

    // A role whose default search_path puts a schema before pg_catalog: built-in names are not
    // trusted for it.
    let (ok, _, err) = run("bot", "select upper('a')");
    assert!(!ok && err.contains("warden:"), "{err}");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "0");
    let (ok, out, err) = run("bot", "select owner from public.accounts where id = 1");
    assert!(ok && out.trim() == "ann", "{out} {err}");

    // A built-in the analyser does not know is VOLATILE in pg_catalog (searched first): its
    // name is refused even where a user function of that name is a read, in every session
    // (each reads the VOLATILE built-ins a user function shares its name with; PostgreSQL
    // 15's are also a floor compiled into the analyser).
    for _ in 0..2 {
        let (ok, _, err) = run("clerk", "select currtid2(1)");
        assert!(!ok && err.contains("VOLATILE built-in"), "{err}");
    }

    // A role's default role: the session acts as auditor, which its policy refuses.
    let (ok, _, err) = run("bot2", "select 1");
    assert!(!ok && err.contains("auditors"), "{err}");
    let refused = agent.wait_record("the statement judged as auditor", |r| {
        r["kind"] == "statement" && r["verdict"]["policy"] == "auditors"
    });
    assert_eq!(refused["role"], "auditor", "the role it acted as is recorded: {refused}");

    // An unqualified relation resolves through the schemas the server searches: an allow
    // rule naming `public.*` covers `accounts` for a session whose search_path reaches only
    // public (and pg_catalog, which holds only `pg_` relations).
    let reader = ["warden/kind=reader"];
    let (ok, out, err) = psql_as(&agent, &reader, "postgres", pg.port, "select owner from accounts where id = 2");
    assert!(ok && out.trim() == "bob", "{out} {err}");
    let (ok, _, err) = psql_as(&agent, &reader, "postgres", pg.port, "select count(*) from pg_roles");
    assert!(!ok && err.contains("readers"), "{err}");

    // The premise: directly, these run the user's code.
    assert_eq!(pg.admin_sql("select lower(5)"), "5");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "1");
    assert_eq!(pg.admin_sql("select '{\"{[4,5]}\"}'::app._span_multirange"), "{\"{[4,5]}\"}");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "3", "the bounds' CHECK ran");
    // An unlabelled workload (no policy selects it) binds the typed parameter: the CHECK runs.
    let out = typed(&[]);
    assert!(!out.contains("warden:"), "{out}");
    assert_eq!(pg.admin_sql("select count(*) from trail"), "4", "the bound value's CHECK ran: {out}");
}

/// Waits (15 s at most) for the agent to log `line`.
fn wait_for_log(agent: &Agent, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent.log().contains(line) {
        assert!(Instant::now() < deadline, "the agent did not log {line:?}:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn everyone(rules: &str, default: &str) -> String {
    let rules = if rules.is_empty() { " []\n".to_string() } else { format!("\n{}", rules.trim_start_matches('\n')) };
    format!(
        "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {{name: everyone}}\nspec:\n  selector: {{}}\n  rules:{rules}  default: {default}\n"
    )
}

#[tokio::test(flavor = "current_thread")]
async fn extended_protocol_transactions_and_prepared_statements_are_judged_before_they_run() {
    let pg = Postgres::start();
    fixture(&pg);
    let policy = everyone(
        "    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n    - {name: no-unscoped, match: {class: [write], unscoped: true}, action: deny}\n    - {name: hold-grants, match: {class: [dcl]}, action: require_approval, approval: {timeout: 1s}}\n",
        "allow",
    );
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("everyone.yaml", &policy)],
    );
    let client = connect(pg.port).await;

    // Extended protocol (Parse/Bind/Execute): refused at Bind, nothing runs.
    let e = client.execute("delete from accounts", &[]).await.expect_err("unscoped delete refused");
    assert_eq!(code(&e), "42501");
    assert!(message(&e).contains("no-unscoped"), "{}", message(&e));
    assert_eq!(client.query_one("select count(*) from accounts", &[]).await.unwrap().get::<_, i64>(0), 3);
    // A scoped one with a parameter runs.
    assert_eq!(client.execute("delete from accounts where id = $1", &[&3i32]).await.unwrap(), 1);

    // In a transaction block the refusal fails the transaction, as an error there would.
    client.batch_execute("begin").await.unwrap();
    client.execute("insert into accounts values (9, 'zed', 0)", &[]).await.unwrap();
    let e = client.batch_execute("drop table accounts").await.expect_err("ddl refused");
    assert_eq!(code(&e), "42501");
    let e = client.query("select 1", &[]).await.expect_err("the transaction failed");
    assert_eq!(code(&e), "25P02");
    client.batch_execute("rollback").await.unwrap();
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 9"), "0", "rolled back");

    // A SQL-level PREPARE of a write is judged as the write, and so is its EXECUTE.
    let e = client.batch_execute("prepare wipe as delete from accounts").await.expect_err("prepare refused");
    assert_eq!(code(&e), "42501");
    // Held for approval; nobody decides within the rule's second: refused, saying so.
    let e = client.batch_execute("grant select on accounts to public").await.expect_err("held, refused");
    assert_eq!(code(&e), "42501");
    assert!(message(&e).contains("no approver decided within 1s"), "{}", message(&e));
    // The session is still usable.
    assert_eq!(client.query_one("select count(*) from accounts", &[]).await.unwrap().get::<_, i64>(0), 2);
    drop(client);
    let held = agent.wait_record("the held grant", |r| r["kind"] == "statement" && r["verdict"]["decision"] == "hold");
    assert_eq!(held["verdict"]["rule"], "hold-grants");
    assert_eq!(held["class"], "dcl");
}

#[test]
fn policies_reload_on_change_and_a_broken_set_keeps_the_one_in_force() {
    let pg = Postgres::start();
    fixture(&pg);
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("everyone.yaml", &everyone("", "allow"))],
    );
    let ask = |sql: &str| {
        let out = output(&mut testkit::psql("127.0.0.1", pg.port, sql));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ask("select count(*) from accounts").0);

    // A new rule applies from the next statement, without a restart.
    agent.write_policy(
        "everyone.yaml",
        &everyone("\n    - {name: no-accounts, match: {relations: ['*.accounts']}, action: deny}\n", "allow"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, _, err) = ask("select count(*) from accounts");
        if !ok {
            assert!(err.contains("no-accounts"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "the new policy was not loaded:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A set with a mistake is rejected, logged with file, line and column, and the old one stays.
    agent.write_policy(
        "everyone.yaml",
        &everyone("\n    - {name: bad, match: {clas: [read]}, action: deny}\n", "allow"),
    );
    wait_for_log(&agent, "policy set rejected");
    let log = agent.log();
    assert!(log.contains("everyone.yaml:") && log.contains("clas"), "{log}");
    let (ok, _, err) = ask("select count(*) from accounts");
    assert!(!ok && err.contains("no-accounts"), "the previous set stays in force: {err}");
}

#[test]
fn a_tcp_database_is_allowed_or_refused_per_identity_at_connect() {
    let pg = Postgres::start();
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: no-bots}\nspec:\n  selector: {matchLabels: {warden/kind: agent}}\n  rules: []\n  default: deny\n";
    let agent = Agent::start_with_policies(
        &format!("  - {{name: raw, address: '127.0.0.1:{}', protocol: tcp}}", pg.port),
        &[("no-bots.yaml", policy)],
    );
    let (ok, _, err) = labelled_psql(&agent, &["warden/kind=agent"], pg.port, "select 1");
    assert!(!ok, "refused at connect: {err}");
    let (ok, out, err) = labelled_psql(&agent, &["warden/kind=human"], pg.port, "select 1");
    assert!(ok && out.trim() == "1", "{err}");
    let refused = agent.wait_record("the refused connection", |r| r["kind"] == "connection_refused");
    assert!(refused["reason"].as_str().is_some_and(|r| r.contains("no-bots")), "{refused}");
}

#[test]
fn policy_check_reports_every_mistake_with_its_position_and_an_invalid_set_stops_the_start() {
    let tmp = testkit::temp_dir("warden-policy-check-");
    let dir = tmp.path().to_path_buf();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: bad}\nspec:\n  selector: {matchExpressions: [{key: team, operator: In, values: []}]}\n  rules:\n    - {name: a, match: {class: [reed]}, action: deny}\n    - {name: b, match: {relations: [accounts]}, action: allow}\n  default: maybe\n",
    )
    .unwrap();
    let out = output(Command::new(warden_bin()).args(["policy", "check"]).arg(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["bad.yaml:5:", "bad.yaml:7:", "bad.yaml:8:", "bad.yaml:9:", "reed"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    // The shipped packs are valid.
    let packs = check(Command::new(warden_bin()).args(["policy", "check"]).arg(workspace_root().join("policies")));
    assert!(packs.starts_with("ok:"), "{packs}");

    // An agent whose policy set has mistakes does not start.
    let pg = Postgres::start();
    let mut agent = Agent::start_with_policies(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port), &[]);
    agent.stop();
    agent.write_policy("bad.yaml", &std::fs::read_to_string(&bad).unwrap());
    let why = agent.try_spawn().expect_err("refused to start");
    assert!(why.contains("bad.yaml:7:"), "{why}");
    drop(tmp);
}

#[test]
fn policy_explain_says_which_rule_decides_and_why() {
    let out = check(
        Command::new(warden_bin())
            .args(["policy", "explain", "--policies"])
            .arg(workspace_root().join("policies"))
            .args(["--label", "warden/kind=agent", "--database", "main", "--user", "app"])
            .arg("with d as (delete from accounts returning *) select * from d"),
    );
    assert!(out.contains("write") && out.contains("baseline") && out.contains("no-unscoped-writes"), "{out}");
}

/// `fail: policy` (the default): while no agent serves, an identity the agent found that no
/// policy guards goes direct; a guarded one, or one never seen, is refused.
#[test]
fn the_fail_mode_follows_each_identitys_policies() {
    let pg = Postgres::start();
    let mut agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[(BASELINE, &baseline())],
    );
    let bot = ["warden/kind=agent"];
    // Seen while serving: this process's cgroup (no labels: nothing selects it), and a bot.
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    check(&mut agent.exec_psql(&bot, "127.0.0.1", pg.port, "select 1"));
    agent.stop();
    let direct = check(&mut testkit::psql("127.0.0.1", pg.port, "select inet_client_addr()"));
    assert_eq!(direct.trim(), "127.0.0.1", "unguarded: straight to the database");
    let out = output(&mut agent.exec_psql(&bot, "127.0.0.1", pg.port, "select 1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "a guarded identity is refused by the kernel while no agent serves: {err}"
    );

    // A new agent: found unguarded again at its first connection. Then a reload makes a
    // policy guard this process's cgroup: it fails closed from then on, with no further
    // connection to tell the agent so.
    agent.spawn();
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    agent.write_policy(
        "everyone.yaml",
        &everyone("    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n", "allow"),
    );
    wait_for_log(&agent, "policy set reloaded");
    // The next heartbeat (every 500 ms) publishes the new set's epoch.
    std::thread::sleep(Duration::from_millis(1200));
    agent.stop();
    let out = output(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "guarded since the reload: refused by the kernel while no agent serves: {err}"
    );
    agent.spawn();
}
