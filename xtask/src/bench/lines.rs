//! The main lines: each workload run through four paths, interleaved, in several rounds: direct,
//! the bench's zero-work relay, PgBouncer (session pooling) and Warden doing its whole job (the
//! baseline pack selecting the workload, one masked column where the line reads one, full
//! statement audit). Printed per line: medians with their spread, each path's own CPU and the
//! whole machine's per transaction, and whether the targets are met.

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use testkit::{Agent, Postgres};

use super::{PgBouncer, cpu_seconds, pgbench, relay::Relay};

/// The way a line reaches the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    Direct,
    Relay,
    Bouncer,
    Warden,
}

pub const PATHS: [Via; 4] = [Via::Direct, Via::Relay, Via::Bouncer, Via::Warden];

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Relay => "bare relay",
            Via::Bouncer => "pgbouncer",
            Via::Warden => "warden",
        }
    }
}

/// Busy CPU seconds of the whole machine so far (every state but idle and iowait).
pub fn machine_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq (guest time is within user; steal is other
    // guests' time).
    let busy: u64 = f.iter().take(7).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy as f64 / 100.0
}

/// TCP segments the host has sent (`OutSegs` of /proc/net/snmp).
fn tcp_segments_sent() -> u64 {
    let snmp = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One run of a line through one path.
#[derive(Clone, Copy)]
pub struct Sample {
    pub tps: f64,
    /// The proxy's own CPU µs per transaction (none for direct).
    pub own_us: Option<f64>,
    pub machine_us: f64,
    /// The proxy's context switches per transaction, all its threads: voluntary (it waited:
    /// a wake-up each) and involuntary (preempted).
    pub switches: Option<(f64, f64)>,
    /// Of `own_us`, the audit writer thread's (Warden's only).
    pub writer_us: Option<f64>,
    /// PostgreSQL's CPU µs per transaction (the postmaster and all its children: backends and
    /// background processes).
    pub server_us: f64,
    /// pgbench's.
    pub client_us: f64,
    /// TCP segments sent on the host (every leg, pure ACKs included).
    pub segments: f64,
}

/// The median and the spread of some numbers.
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Spread { median: f64::NAN, min: f64::NAN, max: f64::NAN };
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    Spread { median, min: v[0], max: v[v.len() - 1] }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(1);
        write!(f, "{:.p$} [{:.p$}–{:.p$}]", self.median, self.min, self.max)
    }
}

/// What runs the lines, set up once.
pub struct Rig<'a> {
    pub pg: &'a Postgres,
    pub agent: Agent,
    pub relay: Relay,
    pub bouncer: PgBouncer,
    /// Record CPU profiles of the agent and the bare relay (`perf record`) here, in runs of each
    /// line of their own.
    pub perf: Option<std::path::PathBuf>,
}

impl Rig<'_> {
    pub fn address(&self, via: Via) -> (&'static str, u16) {
        match via {
            Via::Direct => ("::1", self.pg.port),
            Via::Relay => ("127.0.0.1", self.relay.port),
            Via::Bouncer => ("127.0.0.1", self.bouncer.port),
            // Dialled unchanged: the redirect sends it to the agent.
            Via::Warden => ("127.0.0.1", self.pg.port),
        }
    }

    fn pid(&self, via: Via) -> Option<u32> {
        match via {
            Via::Direct => None,
            Via::Relay => Some(self.relay.pid()),
            Via::Bouncer => self.bouncer.pid(),
            Via::Warden => self.agent.pid(),
        }
    }

    fn run(&self, via: Via, args: &[&str], profile: Option<&str>) -> Result<Sample> {
        let (host, port) = self.address(via);
        let pid = self.pid(via);
        let perf = match (&self.perf, profile, via, pid) {
            (Some(dir), Some(name), Via::Warden | Via::Relay, Some(pid)) => {
                Some(start_perf(dir, &format!("{name} {}", if via == Via::Relay { "relay" } else { "warden" }), pid)?)
            }
            _ => None,
        };
        let own = pid.map(cpu_seconds);
        let switched = pid.map(super::context_switches);
        let writer = pid.filter(|_| via == Via::Warden).map(|pid| super::thread_cpu_seconds(pid, WRITER_THREAD));
        let postmaster = self.pg.postmaster_pid().context("the bench's PostgreSQL has no postmaster.pid")?;
        let server = super::cpu_seconds_with_children(postmaster);
        let client = super::ended_children_cpu_seconds();
        let machine = machine_seconds();
        let segments = tcp_segments_sent();
        let run = pgbench(host, port, args)?;
        let segments = tcp_segments_sent().saturating_sub(segments);
        let client = super::ended_children_cpu_seconds() - client;
        // Work the proxy does after the run (the audit writer's queue, closing sessions) is the
        // run's: counted once the proxy's CPU time stops growing. So are the backends, counted
        // once they have ended.
        if let Some(pid) = pid {
            settle(pid);
        }
        settle_by(|| super::cpu_seconds_with_children(postmaster));
        let server = super::cpu_seconds_with_children(postmaster) - server;
        let machine = machine_seconds() - machine;
        let own = pid.zip(own).map(|(pid, before)| cpu_seconds(pid) - before);
        let switched = pid.zip(switched).map(|(pid, (v, i))| {
            let (v2, i2) = super::context_switches(pid);
            (v2.saturating_sub(v), i2.saturating_sub(i))
        });
        let writer = pid.zip(writer).map(|(pid, before)| super::thread_cpu_seconds(pid, WRITER_THREAD) - before);
        drop(perf);
        let tx = run.transactions.max(1) as f64;
        let per_tx = |s: f64| s * 1e6 / tx;
        Ok(Sample {
            tps: run.tps,
            own_us: own.map(per_tx),
            machine_us: per_tx(machine),
            switches: switched.map(|(v, i)| (v as f64 / tx, i as f64 / tx)),
            writer_us: writer.map(per_tx),
            server_us: per_tx(server),
            client_us: per_tx(client),
            segments: segments as f64 / tx,
        })
    }

    /// Runs a line `rounds` times through every path, the order turning each round so that
    /// drift and warm-up fall on every path alike. Samples by path, in `PATHS` order.
    pub fn line(&self, name: &str, args: &[&str], rounds: usize) -> Result<[Vec<Sample>; 4]> {
        if self.perf.is_some() {
            // Profiled apart: perf's own cost stays out of the samples. The bare relay too, to
            // compare where each spends its time.
            self.run(Via::Warden, args, Some(name))?;
            self.run(Via::Relay, args, Some(name))?;
        }
        let mut samples: [Vec<Sample>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..PATHS.len() {
                let i = (k + round) % PATHS.len();
                samples[i].push(self.run(PATHS[i], args, None)?);
            }
        }
        Ok(samples)
    }
}

/// The name of Warden's audit writer thread.
pub(super) const WRITER_THREAD: &str = "warden-audit";

/// Waits (up to 3 s) until `pid` uses no more CPU time over 100 ms.
pub fn settle(pid: u32) {
    settle_by(|| cpu_seconds(pid));
}

/// Waits (up to 3 s) until `seconds` stops growing over 100 ms.
fn settle_by(seconds: impl Fn() -> f64) {
    let mut last = seconds();
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = seconds();
        if now <= last {
            return;
        }
        last = now;
    }
}

/// A `perf record` of a proxy (or, with `WARDEN_BENCH_TRACE`, a `perf trace -s` count of its
/// threads' system calls), stopped when dropped (also when the run fails).
struct Perf(Child);

impl Drop for Perf {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn start_perf(dir: &Path, name: &str, pid: u32) -> Result<Perf> {
    fs::create_dir_all(dir)?;
    let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let trace = std::env::var("WARDEN_BENCH_TRACE").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut command = Command::new("perf");
    if trace {
        command.args(["trace", "-s", "-p", &pid.to_string(), "-o"]).arg(dir.join(format!("{file}.trace")));
    } else {
        command
            .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(dir.join(format!("{file}.data")));
    }
    let child =
        command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting perf (WARDEN_BENCH_PERF)")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(Perf(child))
}

/// Prints a line's table and its targets; returns whether every target was met.
pub fn report(samples: &[Vec<Sample>; 4], large: bool) -> bool {
    let direct = &samples[0];
    println!(
        "  {:<11} {:>26} {:>24} {:>15} {:>20} {:>16} {:>15} {:>8}",
        "path",
        "tps median [min–max]",
        "× direct [min–max]",
        "own CPU µs/tx",
        "machine µs/tx (+dir)",
        "switches/tx v+i",
        "server+client",
        "segs/tx"
    );
    let mut ratio = [0.0f64; 4];
    let mut own = [f64::NAN; 4];
    let mut extra = [0.0f64; 4];
    for (i, via) in PATHS.iter().enumerate() {
        let s = &samples[i];
        let tps = spread(&s.iter().map(|x| x.tps).collect::<Vec<_>>());
        let ratios = spread(&s.iter().zip(direct).map(|(x, d)| x.tps / d.tps).collect::<Vec<_>>());
        let own_us = spread(&s.iter().filter_map(|x| x.own_us).collect::<Vec<_>>());
        let machine = spread(&s.iter().map(|x| x.machine_us).collect::<Vec<_>>());
        let over = spread(&s.iter().zip(direct).map(|(x, d)| x.machine_us - d.machine_us).collect::<Vec<_>>());
        ratio[i] = ratios.median;
        own[i] = own_us.median;
        extra[i] = over.median;
        let own_text = if *via == Via::Direct { "—".to_string() } else { format!("{:.1}", own_us.median) };
        let voluntary = spread(&s.iter().filter_map(|x| x.switches.map(|w| w.0)).collect::<Vec<_>>());
        let involuntary = spread(&s.iter().filter_map(|x| x.switches.map(|w| w.1)).collect::<Vec<_>>());
        let switch_text = if *via == Via::Direct {
            "—".to_string()
        } else {
            format!("{:.2}+{:.2}", voluntary.median, involuntary.median)
        };
        let server = spread(&s.iter().map(|x| x.server_us).collect::<Vec<_>>());
        let client = spread(&s.iter().map(|x| x.client_us).collect::<Vec<_>>());
        println!(
            "  {:<11} {:>26} {:>24} {:>15} {:>20} {:>16} {:>15} {:>8}",
            via.name(),
            format!("{tps:.1}"),
            format!("{ratios:.3}"),
            own_text,
            format!("{:.1} ({:+.1})", machine.median, over.median),
            switch_text,
            format!("{:.1}+{:.1}", server.median, client.median),
            format!("{:.2}", spread(&s.iter().map(|x| x.segments).collect::<Vec<_>>()).median)
        );
    }
    println!(
        "  (server+client: PostgreSQL's CPU µs/tx, its postmaster and all its children, and pgbench's: what each path costs the \
         ends it joins; segs/tx: TCP segments sent per transaction, every leg)"
    );
    let writer = spread(&samples[3].iter().filter_map(|x| x.writer_us).collect::<Vec<_>>());
    println!("  (of warden's own CPU, its audit writer thread's: {writer:.1} µs/tx)");
    let (relay, bouncer, warden) = (1, 2, 3);
    let mut all = true;
    let mut verdict = |what: &str, met: bool, detail: String| {
        all &= met;
        println!("  target {what}: {} ({detail})", if met { "met" } else { "NOT met" });
    };
    verdict(
        "throughput at or above pgbouncer and the bare relay",
        ratio[warden] >= ratio[relay].max(ratio[bouncer]),
        format!("warden {:.3}x, bare relay {:.3}x, pgbouncer {:.3}x", ratio[warden], ratio[relay], ratio[bouncer]),
    );
    verdict(
        "agent CPU per transaction at or below the bare relay's",
        own[warden] <= own[relay],
        format!("{:.1} µs against {:.1} µs", own[warden], own[relay]),
    );
    verdict(
        "whole-machine cost over direct no higher than the bare relay's",
        extra[warden] <= extra[relay],
        format!("+{:.1} µs/tx against +{:.1}", extra[warden], extra[relay]),
    );
    if large {
        verdict(
            "large result at 0.95x direct or better, masking on",
            ratio[warden] >= 0.95,
            format!("{:.3}x", ratio[warden]),
        );
    }
    all
}

/// The policies Warden judges a line with: the baseline pack selecting every identity, and
/// `masked` (a column, `schema.table.column` pattern) masked with a keyed token.
pub fn policies(masked: &str) -> Result<Vec<(&'static str, String)>> {
    let selects_all = baseline_for_all()?;
    let masking = format!(
        "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {{name: bench-masking}}\nspec:\n  \
         selector: {{}}\n  rules:\n    - {{name: masked, match: {{columns: ['{masked}']}}, mask: token}}\n"
    );
    Ok(vec![("baseline.yaml", selects_all), ("masking.yaml", masking)])
}

/// `policies/baseline.yaml` selecting every identity (the bench's pgbench has no labels).
pub fn baseline_for_all() -> Result<String> {
    let baseline = fs::read_to_string(testkit::workspace_root().join("policies/baseline.yaml"))?;
    let selects_all = baseline.replace(
        "  selector:\n    matchExpressions:\n      - {key: warden/kind, operator: In, values: [agent, service, job]}",
        "  selector: {}",
    );
    if selects_all == baseline {
        bail!("policies/baseline.yaml changed shape: the bench cannot make it select every identity");
    }
    Ok(selects_all)
}

/// Warden as the lines run it: `policies(masked)`, every statement recorded (a ring large
/// enough for the run, no fair-share shedding: the bench is one identity), metrics served.
pub fn agent(warden: &Path, pg: &Postgres, masked: &str, metrics: &str) -> Result<Agent> {
    // Worker threads: the agent's default unless WARDEN_BENCH_WORKERS says otherwise.
    let workers = std::env::var("WARDEN_BENCH_WORKERS")
        .ok()
        .map(|n| n.parse().with_context(|| format!("WARDEN_BENCH_WORKERS={n}: expected a number of workers")))
        .transpose()?;
    agent_with(warden, pg, masked, metrics, workers)
}

/// `agent`, with `workers` proxy workers (none: the agent's default).
pub fn agent_with(warden: &Path, pg: &Postgres, masked: &str, metrics: &str, workers: Option<usize>) -> Result<Agent> {
    let policies = policies(masked)?;
    let policies: Vec<(&str, &str)> = policies.iter().map(|(f, y)| (*f, y.as_str())).collect();
    let proxy = workers.map(|n| format!("  workers: {n}")).unwrap_or_default();
    Ok(Agent::start_with_bin_policies_proxy_audit(
        warden,
        &format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port),
        &policies,
        &proxy,
        "  ring_bytes: 1073741824\n  identity_share: 1.0",
        &format!("metrics:\n  listen: '{metrics}'\n"),
    ))
}

/// Masks `masked` instead, in the running agent (its policy directory is watched): returns once
/// the new set is in force.
pub fn remask(agent: &Agent, masked: &str) -> Result<()> {
    let loaded = || agent.log().matches("policy set reloaded").count();
    let before = loaded();
    let policies = policies(masked)?;
    let (file, yaml) = &policies[1];
    agent.write_policy(file, yaml);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while loaded() == before {
        if std::time::Instant::now() > deadline {
            bail!("the agent did not load the policy masking {masked} within 30 s:\n{}", agent.log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The large line's table: 1,000,000 rows of 4 text columns, one of them masked.
pub fn large_table(pg: &Postgres) {
    pg.admin_sql(
        "create table if not exists bench_rows as select g::text as id, 'user' || g || '@example.com' as email, \
         md5(g::text) as note, repeat('x', 32) as pad from generate_series(1, 1000000) g; analyze bench_rows",
    );
}

/// The target PgBouncer and the relay reach: the server over IPv6 loopback, as direct does.
pub fn server(pg: &Postgres) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, pg.port))
}
