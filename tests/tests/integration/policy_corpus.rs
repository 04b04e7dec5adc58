//! The attack corpus (tests/corpus/baseline.yaml) run through the real redirect by a workload
//! labelled `warden/kind=agent` under the shipped baseline pack, against a real PostgreSQL, with
//! a reference database run directly beside it: every refused statement leaves the database,
//! the cluster's roles and settings and the file system as they were; every allowed one works
//! and answers what it answers directly (see tests/src/bin/corpus_run.rs).

use testkit::{Agent, Postgres, output, workspace_root};

#[test]
fn the_attack_corpus_is_judged_as_expected_and_refused_statements_change_nothing() {
    let pg = Postgres::start();
    pg.admin_sql("create database gov");
    pg.admin_sql("create database ref");
    let baseline = std::fs::read_to_string(workspace_root().join("policies/baseline.yaml")).expect("baseline pack");
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("baseline.yaml", &baseline)],
    );
    let socket = pg.socket_dir().display().to_string();
    let port = pg.port;
    let corpus = workspace_root().join("tests/corpus/baseline.yaml");
    let runner = env!("CARGO_BIN_EXE_corpus_run");
    let governed = format!("host=127.0.0.1 port={port} dbname=gov user=postgres");
    let setup_gov = format!("host={socket} port={port} dbname=gov user=postgres");
    let direct = format!("host={socket} port={port} dbname=ref user=postgres");
    let corpus = corpus.display().to_string();
    let out = output(&mut agent.exec(
        &["warden/kind=agent", "warden/identity=corpus"],
        &[runner, &corpus, "--governed", &governed, "--setup-gov", &setup_gov, "--direct", &direct],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let summary = stdout.lines().rev().find(|l| l.starts_with("corpus:")).unwrap_or("no summary");
    println!("{summary}");
    assert!(
        out.status.success() && failures.is_empty(),
        "{summary}\n{}\n{}\nagent log tail:\n{}",
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        agent.log().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    // Every refusal is in the audit trail with the pack's name.
    let refusals = agent
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "statement" && r["verdict"]["decision"] == "deny")
        .filter(|r| r["verdict"]["policy"] == "baseline")
        .count();
    assert!(refusals > 300, "only {refusals} refusals recorded");
}
