//! `cargo xtask bench`: throughput through Warden as a ratio to a direct connection, measured
//! in the same run on the same PostgreSQL. Never a pass/fail threshold: numbers to read.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use testkit::{Agent, Postgres, check, pgbench_bin};

const SECONDS: u64 = 10;

struct Run {
    tps: f64,
    transactions: u64,
}

fn pgbench(pg: &Postgres, extra: &[&str]) -> Result<Run> {
    let out = check(
        Command::new(pgbench_bin())
            .args(["-n", "-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-T", &SECONDS.to_string()])
            .args(extra)
            .arg("postgres"),
    );
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("pgbench printed no tps")?;
    let transactions = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .context("pgbench printed no transaction count")?;
    Ok(Run { tps, transactions })
}

pub fn bench(warden: &Path) -> Result<()> {
    let pg = Postgres::start();
    check(
        Command::new(pgbench_bin()).args(["-i", "-q", "-s", "1", "-U", "postgres", "-h"]).arg(pg.socket_dir()).args([
            "-p",
            &pg.port.to_string(),
            "postgres",
        ]),
    );
    let cases: &[(&str, &[&str])] = &[
        ("select-only, new connection per transaction (-C), 1 client", &["-C", "-S", "-c", "1"]),
        ("select-only, new connection per transaction (-C), 4 clients", &["-C", "-S", "-c", "4", "-j", "2"]),
    ];
    println!("{:<62} {:>10} {:>10} {:>7} {:>14}", "case", "direct", "warden", "ratio", "agent µs/conn");
    for (name, args) in cases {
        let direct = pgbench(&pg, args)?;
        let agent = Agent::start_with(warden, &format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port));
        let cpu_before = agent.cpu_seconds();
        let through = pgbench(&pg, args)?;
        let cpu = agent.cpu_seconds() - cpu_before;
        let redirected = agent.stat("redirected");
        if redirected < through.transactions {
            bail!("only {redirected} of {} connections were redirected", through.transactions);
        }
        drop(agent);
        std::thread::sleep(Duration::from_millis(200));
        println!(
            "{:<62} {:>10.1} {:>10.1} {:>6.2}x {:>14.1}",
            name,
            direct.tps,
            through.tps,
            through.tps / direct.tps,
            cpu * 1e6 / through.transactions.max(1) as f64
        );
    }
    Ok(())
}
