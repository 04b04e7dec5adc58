//! The MySQL line: sysbench's point selects against a throwaway MariaDB, through three paths
//! interleaved in rounds: direct, the bench's zero-work relay, and Warden (`protocol: mysql`,
//! the baseline pack selecting the workload, every statement recorded). Printed: medians with
//! their spread, Warden's and the relay's ratios to direct, and each proxy's own CPU per
//! transaction. No column is masked: masking does not apply to MySQL results yet.

use std::{net::SocketAddr, path::Path, process::Command};

use anyhow::{Context as _, Result};
use testkit::{
    Agent, check,
    mariadb::{MariaAuth, MariaDb, MariaDbOptions},
};

use super::{cpu_seconds, lines, relay::Relay, rounds};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";

/// A sysbench run: transactions per second and how many there were.
struct Run {
    tps: f64,
    transactions: u64,
}

fn sysbench(host: &str, port: u16, mode: &str, secs: &str, command: &str) -> Result<Run> {
    let out = check(
        Command::new("sysbench")
            .arg("oltp_point_select")
            .args(["--db-driver=mysql", &format!("--mysql-host={host}"), &format!("--mysql-port={port}")])
            .args([&format!("--mysql-user={USER}"), &format!("--mysql-password={PASSWORD}"), "--mysql-db=test"])
            .args(["--mysql-ssl=off", "--tables=1", "--table-size=10000", "--threads=8"])
            .args([&format!("--db-ps-mode={mode}"), &format!("--time={secs}"), command]),
    );
    if command != "run" {
        return Ok(Run { tps: 0.0, transactions: 0 });
    }
    // "    transactions:                        123456 (12345.67 per sec.)"
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))
        .context("sysbench printed no transactions")?;
    let mut parts = line.split(|c: char| c == '(' || c.is_whitespace()).filter(|p| !p.is_empty());
    let transactions = parts.nth(1).and_then(|v| v.parse().ok()).context("sysbench's transaction count")?;
    let tps = parts.next().and_then(|v| v.parse().ok()).context("sysbench's rate")?;
    Ok(Run { tps, transactions })
}

pub fn line(warden: &Path, secs: &str) -> Result<()> {
    // Every address: direct runs over ::1, Warden governs 127.0.0.1:port.
    let db = MariaDb::start_with(MariaDbOptions { bind: Some("*"), ..Default::default() });
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    sysbench("::1", db.port, "auto", secs, "prepare")?;
    let relay = Relay::start(&std::env::current_exe()?, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, db.port)))?;
    let selects_all = lines::baseline_for_all()?;
    let agent = Agent::start_with_bin_policies_audit(
        warden,
        &format!("  - {{name: bench-mysql, protocol: mysql, address: '127.0.0.1:{}'}}", db.port),
        &[("baseline.yaml", &selects_all)],
        "  ring_bytes: 268435456\n  identity_share: 1.0",
        "",
    );
    let rounds = rounds();
    println!(
        "\nMySQL (MariaDB {}): sysbench oltp_point_select, 8 threads, {rounds} rounds of {secs} s per path, interleaved; \
         Warden judges with the baseline pack and records every statement (no masking: not applied to MySQL yet).",
        db.sql("select version()")
    );
    for (name, mode) in [("point selects, server-side prepared", "auto"), ("point selects, text queries", "disable")] {
        let mut tps: [Vec<f64>; 3] = Default::default();
        let mut own: [Vec<f64>; 3] = Default::default();
        for _ in 0..rounds {
            for (i, (host, port, pid)) in [
                ("::1", db.port, None),
                ("127.0.0.1", relay.port, Some(relay.pid())),
                // Dialled unchanged: the redirect sends it to the agent.
                ("127.0.0.1", db.port, agent.pid()),
            ]
            .into_iter()
            .enumerate()
            {
                let before = pid.map(cpu_seconds);
                let run = sysbench(host, port, mode, secs, "run")?;
                if let (Some(pid), Some(before)) = (pid, before) {
                    own[i].push((cpu_seconds(pid) - before) * 1e6 / run.transactions.max(1) as f64);
                }
                tps[i].push(run.tps);
            }
        }
        let [direct, bare, warden_tps] = tps.each_ref().map(|v| lines::spread(v));
        println!("\n{name}");
        for (label, s, cpu) in
            [("direct", &direct, None), ("bare relay", &bare, Some(&own[1])), ("warden", &warden_tps, Some(&own[2]))]
        {
            let cpu = cpu.map_or(String::new(), |c| format!("  own CPU {:.1} µs/tx", lines::spread(c).median));
            println!("  {label:<11} {:>9.1} tps [{:.1}–{:.1}]{cpu}", s.median, s.min, s.max);
        }
        println!(
            "  warden × direct {:.3}, bare relay × direct {:.3}, warden × bare relay {:.3}",
            warden_tps.median / direct.median,
            bare.median / direct.median,
            warden_tps.median / bare.median
        );
    }
    println!("(connections redirected through Warden during the run: {})", agent.stat("redirected"));
    Ok(())
}
