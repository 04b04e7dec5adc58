//! Fair shares of the audit ring end to end: an identity flooding a real PostgreSQL through the
//! proxy with far more statements than the ring holds is shed once the ring is full, and the
//! flood is recorded in the ring (`audit_flood`) and shown by `warden audit stats`, while a
//! bystander's history stays in the ring, whole.

use std::process::Command;

use serde_json::Value;
use testkit::{Agent, Postgres, check, pgbench_bin, warden_bin};

/// A 1 MiB ring, a quarter of it per identity per (default, 60 s) window.
const AUDIT: &str = "  ring_bytes: 1048576\n  identity_share: 0.25\n  seal_every: 100";

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "audit CLI failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[test]
fn a_flood_is_condensed_dropped_and_recorded_and_a_bystander_keeps_its_history() {
    let pg = Postgres::start();
    pg.pgbench_init(1);
    let mut agent =
        Agent::start_with_audit(&warden_bin(), &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port), AUDIT);

    check(&mut agent.exec_psql(
        &["warden/identity=bystander"],
        "127.0.0.1",
        pg.port,
        "select count(*) from pgbench_branches",
    ));
    agent.wait_record("the bystander's statement", |r| {
        r["kind"] == "statement" && r["text"] == "select count(*) from pgbench_branches"
    });

    // Five seconds of pgbench: thousands of statements, several megabytes of records for a
    // 1 MiB ring.
    let port = pg.port.to_string();
    let pgbench = pgbench_bin().display().to_string();
    let flood = [pgbench.as_str(), "-n", "-S", "-T", "5", "-h", "127.0.0.1", "-U", "postgres", "-p", &port, "postgres"];
    check(&mut agent.exec(&["warden/identity=flood"], &flood));

    // Records of other identities stay whole while the flood is over its share.
    check(&mut agent.exec_psql(
        &["warden/identity=bystander"],
        "127.0.0.1",
        pg.port,
        "select count(*) from pgbench_tellers",
    ));
    agent.wait_record("the bystander's statement after the flood", |r| {
        r["kind"] == "statement" && r["text"] == "select count(*) from pgbench_tellers"
    });
    // A clean shutdown writes the summary of the unfinished window.
    agent.stop();

    let bystander = lines(&agent.audit_cli(&["query", "--identity", "bystander", "--kind", "statement", "-o", "json"]));
    assert_eq!(
        bystander.iter().map(|r| r["text"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        vec!["select count(*) from pgbench_branches", "select count(*) from pgbench_tellers"],
        "the bystander's history is still in the ring: {bystander:#?}"
    );
    assert!(bystander.iter().all(|r| r.get("condensed").is_none() && r["outcome"] == "completed"), "{bystander:#?}");

    // The flood: whole records while the ring had room (nothing is shed before writing evicts
    // anyone's records), then, over its share, condensed ones (a text prefix, no parameters, no
    // tags), and over twice its share none. Filling the ring alone takes it past twice its
    // share here, so it goes straight to none.
    let raw = lines(&agent.audit_cli(&["export", "--raw"]));
    let condensed: Vec<&Value> = raw.iter().filter(|r| r["condensed"] == true).collect();
    assert!(
        condensed.iter().all(|r| matches!(r["kind"].as_str(), Some("statement" | "statement_end"))),
        "only statement records are condensed"
    );
    assert!(
        condensed
            .iter()
            .filter(|r| r["kind"] == "statement")
            .all(|r| r["text"].as_str().is_some_and(|t| t.len() <= 64) && r["params"].is_null()),
        "condensed statements keep a short prefix and no parameters"
    );
    let flooded = lines(&agent.audit_cli(&["query", "--identity", "flood", "--kind", "statement", "-o", "json"]));
    assert!(flooded.iter().any(|r| r.get("condensed").is_none()), "the flood's first statements are whole");

    // ... and the flood is in the ring: every summary names the flooding identity, and the
    // counts add up to the condensed records in the ring (nothing was overwritten), a statement
    // written with its outcome counting as the two records it stands for.
    let floods: Vec<&Value> = raw.iter().filter(|r| r["kind"] == "audit_flood").collect();
    assert!(!floods.is_empty(), "no audit_flood record");
    assert!(floods.iter().all(|f| f["identity"] == "identity:flood"), "{floods:#?}");
    let sum = |field: &str| floods.iter().map(|f| f[field].as_u64().unwrap_or(0)).sum::<u64>();
    let condensed_records =
        condensed.iter().map(|r| 1 + u64::from(r["kind"] == "statement" && r["outcome"].is_string())).sum::<u64>();
    assert_eq!(sum("condensed"), condensed_records, "{floods:#?}");
    assert!(sum("dropped") > 0, "the flood wrote far more than twice its share: {floods:#?}");
    assert_eq!(floods[0]["share_bytes"], 262_144);

    let stats = lines(&agent.audit_cli(&["stats", "-o", "json"]))[0].clone();
    assert_eq!(stats["overwritten"], 0, "the flood did not wrap the ring: {stats}");
    assert_eq!(stats["floods"]["identity:flood"]["condensed"].as_u64(), Some(sum("condensed")), "{stats}");
    assert_eq!(stats["floods"]["identity:flood"]["dropped"].as_u64(), Some(sum("dropped")), "{stats}");
    assert_eq!(stats["floods"].as_object().map(|f| f.len()), Some(1), "only the flood: {stats}");
    let table = String::from_utf8_lossy(&agent.audit_cli(&["stats"]).stdout).into_owned();
    assert!(table.contains("floods") && table.contains("identity:flood"), "{table}");

    // Condensing and dropping keep the chain whole: dropped records never got a sequence number.
    let verify = Command::new(warden_bin()).args(["audit", "verify", "--config"]).arg(&agent.config).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
