//! Rolling policies out without fear, through the real redirect against a real PostgreSQL: a
//! policy in dryrun mode records its would-be verdicts while every statement runs as before
//! (`warden audit query --would-deny`, the metric), and `warden policy simulate` over the ring
//! reports the same counts as enforcing that policy live then does.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use testkit::{Agent, Postgres, check, output, psql_bin, sample, scrape};

/// The candidate policy for the `etl` workload, in `mode` (dryrun or enforce).
fn candidate(mode: &str) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {{name: candidate}}\nspec:\n  selector: {{matchLabels: {{warden/identity: etl}}}}\n  mode: {mode}\n  rules:\n    - {{name: no-unscoped-writes, match: {{class: [write], unscoped: true}}, action: deny}}\n    - {{name: no-audit-log, match: {{relations: ['*.audit_log']}}, action: deny}}\n    - {{name: emails, match: {{columns: ['public.customers.email']}}, mask: redact}}\n"
    )
}

/// The scripted workload: each line its own statement (psql sends them one by one and goes on
/// after an error).
const WORKLOAD: &str = "\
select count(*) from orders;
select total from orders where id = 2;
insert into scratch values (1), (2);
delete from scratch;
update scratch set id = 0;
delete from scratch where id = 1;
select count(*) from audit_log;
select what from public.audit_log where id = 1;
do $$ begin perform 1; end $$;
select email from customers where id = 1;
select id, email from customers order by id;
select 1;
";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// Runs the workload as the `etl` identity: (stdout, stderr).
fn run_workload(agent: &Agent, pg: &Postgres) -> (String, String) {
    run_script(agent, pg, WORKLOAD)
}

/// Runs a psql script as the `etl` identity, each line its own statement: (stdout, stderr).
fn run_script(agent: &Agent, pg: &Postgres, sql: &str) -> (String, String) {
    let script = testkit::temp_file("warden-workload-", ".sql", sql);
    let psql = psql_bin().display().to_string();
    let port = pg.port.to_string();
    let script_arg = script.path().display().to_string();
    let out = output(&mut agent.exec(
        &["warden/identity=etl"],
        &[&psql, "-X", "-tA", "-U", "postgres", "-h", "127.0.0.1", "-p", &port, "-f", &script_arg],
    ));
    drop(script);
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The etl workload's statement records since `since_ms`, as `warden audit query` gives them.
fn statements_since(agent: &Agent, since_ms: u64) -> Vec<Value> {
    let out = agent.audit_cli(&[
        "query",
        "--identity",
        "etl",
        "--kind",
        "statement",
        "--since",
        &since_ms.to_string(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn count<K: Ord>(keys: impl Iterator<Item = K>) -> BTreeMap<K, usize> {
    let mut out = BTreeMap::new();
    for k in keys {
        *out.entry(k).or_default() += 1;
    }
    out
}

#[test]
fn a_dry_run_policy_records_what_it_would_do_and_simulation_predicts_enforcing_it() {
    let pg = Postgres::start();
    pg.admin_sql(
        "create table orders(id int primary key, total int); \
         insert into orders select g, g * 10 from generate_series(1, 5) g; \
         create table scratch(id int); \
         create table audit_log(id int, what text); insert into audit_log values (1, 'login'); \
         create table customers(id int primary key, email text); \
         insert into customers values (1, 'ann@example.com'), (2, 'bob@example.com')",
    );
    let metrics_addr = format!("127.0.0.1:{}", testkit::free_port());
    let agent = Agent::start_with_bin_policies_top_level(
        &testkit::warden_bin(),
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("candidate.yaml", &candidate("dryrun"))],
        &format!("metrics:\n  listen: '{metrics_addr}'\n"),
    );

    // A cursor under the dry-run masking rule: what its FETCH would mask is recorded, and the
    // would-be verdict does not refuse what enforcing would allow.
    let (out, err) = run_script(
        &agent,
        &pg,
        "begin;\ndeclare c cursor for select id, email from customers order by id;\nfetch 10 from c;\ncommit;\n",
    );
    assert!(err.is_empty() && out.contains("ann@example.com"), "{out} {err}");
    let fetch = agent.wait_record("the FETCH", |r| r["kind"] == "statement" && r["text"] == "fetch ? from c");
    assert_eq!(fetch["would"]["decision"], "allow", "{fetch}");
    assert_eq!(fetch["would"]["change"], "mask", "{fetch}");

    // Dry run: every statement runs as it would without the policy.
    let dry_start = now_ms();
    let (out, err) = run_workload(&agent, &pg);
    assert!(err.is_empty(), "a dry-run policy refuses nothing: {err}");
    assert!(out.contains("ann@example.com") && out.contains("bob@example.com"), "nor masks anything: {out}");
    assert_eq!(pg.admin_sql("select count(*) from scratch"), "0", "the unscoped delete ran");

    // Its would-be verdicts are recorded beside the real ones, with the rule.
    let records = statements_since(&agent, dry_start);
    assert_eq!(records.len(), WORKLOAD.lines().count(), "{records:#?}");
    assert!(records.iter().all(|r| r["verdict"]["decision"] == "allow"), "{records:#?}");
    assert!(records.iter().all(|r| r["facts"].is_object()), "every record keeps its facts: {records:#?}");
    let changes = count(records.iter().filter_map(|r| {
        let would = &r["would"];
        Some((would["change"].as_str()?.to_string(), would["rule"].as_str().unwrap_or("").to_string()))
    }));
    let expected: BTreeMap<(String, String), usize> = [
        (("deny", "no-unscoped-writes"), 2),
        (("deny", "no-audit-log"), 2),
        // Masking is planned before failing closed: what a DO block returns cannot be traced.
        (("deny", "masking"), 1),
        (("mask", ""), 2),
    ]
    .into_iter()
    .map(|((c, r), n)| ((c.to_string(), r.to_string()), n))
    .collect();
    assert_eq!(changes, expected, "{records:#?}");
    let masked = records.iter().find(|r| r["would"]["change"] == "mask").expect("a would-be mask");
    assert_eq!(masked["would"]["masked"][0]["rule"], "emails", "{masked}");
    assert_eq!(masked["masked"], serde_json::json!([]), "nothing masked for real: {masked}");

    // The operator's view: --would-deny, and the metric.
    let out = agent.audit_cli(&["query", "--would-deny", "--since", &dry_start.to_string(), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    let table = agent.audit_cli(&["query", "--would-deny", "--since", &dry_start.to_string()]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("(dryrun: would deny by candidate/no-audit-log)"), "{table}");
    let (_, metrics) = scrape(&metrics_addr, "/metrics");
    assert_eq!(
        sample(&metrics, "warden_statements_dryrun_total", &["would=\"deny\"", "rule=\"no-audit-log\""]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "warden_statements_dryrun_total", &["would=\"mask\"", "rule=\"emails\""]),
        4.0,
        "the workload's two, and the cursor's DECLARE and FETCH: {metrics}"
    );

    // `policy explain` shows the dry-run verdict too.
    let explain =
        check(
            Command::new(testkit::warden_bin())
                .args(["policy", "explain", "--policies"])
                .arg(agent.policies_dir())
                .args(["--label", "warden/identity=etl", "--database", "main", "delete from scratch"]),
        );
    assert!(
        explain.contains("would-be decision (dry-run enforced): deny by policy candidate, rule no-unscoped-writes"),
        "{explain}"
    );

    // Simulation: the enforced candidate over the dry run's records.
    let tmp = testkit::temp_dir("warden-candidates-");
    let candidates = tmp.path().to_path_buf();
    std::fs::write(candidates.join("candidate.yaml"), candidate("enforce")).expect("write");
    let simulated = output(
        Command::new(testkit::warden_bin())
            .args(["policy", "simulate", "--policies"])
            .arg(&candidates)
            .args(["--identity", "etl", "--since", &dry_start.to_string(), "--ring"])
            .arg(&agent.audit)
            .args(["-o", "json"]),
    );
    assert!(simulated.status.success(), "{}", String::from_utf8_lossy(&simulated.stderr));
    let report: Value = serde_json::from_slice(&simulated.stdout).expect("JSON report");
    assert_eq!(report["statements"], WORKLOAD.lines().count(), "{report:#}");
    assert_eq!(report["simulated"], report["statements"], "{report:#}");
    let etl = &report["identities"][0];
    assert_eq!(etl["identity"], "etl", "{report:#}");
    let predicted: BTreeMap<(String, String), u64> = etl["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                (r["decision"].as_str().unwrap_or("").to_string(), r["rule"].as_str().unwrap_or("").to_string()),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(etl["would_break"], 5, "{report:#}");
    let table = String::from_utf8_lossy(
        &output(
            Command::new(testkit::warden_bin())
                .args(["policy", "simulate", "--policies"])
                .arg(&candidates)
                .args(["--since", &dry_start.to_string(), "--ring"])
                .arg(&agent.audit),
        )
        .stdout,
    )
    .into_owned();
    assert!(table.contains("would break: etl (5 statement(s) allowed now)") && table.contains("notes:"), "{table}");
    drop(tmp);

    // Enforced live: the same workload gets exactly what the simulation said.
    agent.write_policy("candidate.yaml", &candidate("enforce"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out =
            output(&mut agent.exec_psql(&["warden/identity=etl"], "127.0.0.1", pg.port, "select 1 from audit_log"));
        if !out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the enforced policy was not loaded:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    pg.admin_sql("insert into scratch values (1), (2)");
    let live_start = now_ms();
    let (out, err) = run_workload(&agent, &pg);
    assert!(err.contains("no-unscoped-writes") && err.contains("no-audit-log"), "{err}");
    assert!(!out.contains("ann@example.com"), "masked when enforced: {out}");
    assert_eq!(
        pg.admin_sql("select count(*) from scratch"),
        "2",
        "the unscoped statements did not run (the scoped delete did)"
    );
    let live = statements_since(&agent, live_start);
    assert_eq!(live.len(), WORKLOAD.lines().count(), "{live:#?}");
    let mut enforced: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in &live {
        let decision = r["verdict"]["decision"].as_str().unwrap_or("").to_string();
        if decision != "allow" {
            *enforced.entry((decision, r["verdict"]["rule"].as_str().unwrap_or("").to_string())).or_default() += 1;
        }
        if let Some(rule) = r["masked"].as_array().and_then(|m| m.first()).and_then(|m| m["rule"].as_str()) {
            *enforced.entry(("mask".to_string(), rule.to_string())).or_default() += 1;
        }
    }
    assert_eq!(predicted, enforced, "simulated {report:#}\nenforced {live:#?}");
}
