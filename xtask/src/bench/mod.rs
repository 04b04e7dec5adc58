//! `cargo xtask bench`: throughput through Warden and through PgBouncer (session mode, as a
//! plain forwarding pooler) as ratios to a direct connection, all measured in the same run on
//! the same PostgreSQL, with the proxies' CPU time per transaction. Numbers to read, never a
//! pass/fail threshold.
//!
//! Paths: direct is [::1]:PORT; Warden governs 127.0.0.1:PORT (pgbench dials it unchanged and is
//! redirected); PgBouncer listens on its own port and reaches PostgreSQL over [::1].

pub mod connect;
pub mod lines;
pub mod mysql;
pub mod relay;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use testkit::{Agent, Postgres, check, free_port, pgbench_bin};

struct Run {
    tps: f64,
    transactions: u64,
}

fn seconds() -> u64 {
    std::env::var("WARDEN_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

fn pgbench(host: &str, port: u16, args: &[&str]) -> Result<Run> {
    let out = check(
        Command::new(pgbench_bin())
            .args(["-n", "-h", host, "-p", &port.to_string(), "-U", "postgres"])
            .args(args)
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

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// utime + stime of a `stat` file (a process's or a thread's), in seconds.
fn cpu_seconds_of(path: &str) -> f64 {
    stat_seconds(path, 0..2)
}

/// CPU seconds a process and its children have used: its own, its ended children's it waited
/// for (cutime, cstime), and its running children's (a PostgreSQL postmaster: its backends,
/// those PgBouncer keeps open included).
fn cpu_seconds_with_children(pid: u32) -> f64 {
    let running: f64 = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .map(|stat| seconds_of_stat(&stat, 0..2))
        .sum();
    stat_seconds(&format!("/proc/{pid}/stat"), 0..4) + running
}

/// CPU seconds of this process's children that have ended and been waited for (pgbench's).
fn ended_children_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", 2..4)
}

/// The sum of CPU time fields of a `stat` file (0: utime, 1: stime, 2: cutime, 3: cstime), in
/// seconds.
fn stat_seconds(path: &str, fields: std::ops::Range<usize>) -> f64 {
    seconds_of_stat(&fs::read_to_string(path).unwrap_or_default(), fields)
}

/// `stat_seconds` of a `stat` file's text.
fn seconds_of_stat(stat: &str, fields: std::ops::Range<usize>) -> f64 {
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 =
        rest.split_whitespace().skip(11 + fields.start).take(fields.len()).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// CPU seconds so far of `pid`'s threads named `name` (`/proc/PID/task/*/comm`).
fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| t.file_name().to_str().and_then(|tid| tid.parse::<u32>().ok()))
        .map(|tid| cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat")))
        .sum()
}

/// Minor page faults `pid` has taken so far, all its threads (`/proc/PID/stat`; none when it
/// cannot be read).
fn minor_faults(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// TLB shootdown interrupts the machine's CPUs have taken so far (`/proc/interrupts`): one
/// each time a page is unmapped or write-protected in a process running on another CPU. None
/// where the kernel does not count them (not x86).
fn tlb_shootdowns() -> Option<f64> {
    let interrupts = fs::read_to_string("/proc/interrupts").ok()?;
    let line = interrupts.lines().find(|l| l.trim_start().starts_with("TLB:"))?;
    Some(line.split_whitespace().skip(1).map_while(|v| v.parse::<f64>().ok()).sum())
}

/// `after - before` per transaction, when both were read.
fn delta_per_tx(before: Option<f64>, after: Option<f64>, tx: f64) -> Option<f64> {
    Some((after? - before?) / tx)
}

/// Context switches of every thread of `pid` so far: (voluntary, involuntary).
fn context_switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return total };
    for task in tasks.flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let field = |name: &str| line.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(n) = field("voluntary_ctxt_switches:") {
                total.0 += n;
            } else if let Some(n) = field("nonvoluntary_ctxt_switches:") {
                total.1 += n;
            }
        }
    }
    total
}

/// Runs `f` while sampling `pid`'s resident memory every 100 ms: its result, and the peak (KiB).
fn peak_rss_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, f64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let peak = AtomicU64::new(connect::rss_kib(pid) as u64);
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(connect::rss_kib(pid) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        result
    });
    (result, peak.load(Ordering::Relaxed) as f64)
}

/// 200 sessions of two identities each holding a statement for approval, against none, while an
/// unrelated identity runs pgbench (select-only, prepared): held sessions must cost others
/// nothing.
fn held_sessions(warden: &Path, secs: &str) -> Result<()> {
    const HELD: usize = 200;
    // Its own server: 200 held sessions and pgbench's 8 need more than the default 100.
    let pg = Postgres::start_with(testkit::PgOptions { conf: "max_connections = 500", ..Default::default() });
    pg.pgbench_init(10);
    let db = &format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port);
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: held}\nspec:\n  \
                  selector: {matchLabels: {warden/kind: agent}}\n  approval: {timeout: 1h}\n  rules:\n    \
                  - {name: writes, match: {class: [write]}, action: require_approval}\n";
    let agent = Agent::start_with_bin_policies(warden, db, &[("held.yaml", policy)]);
    let select = ["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", secs];
    let pending = || -> usize {
        Command::new(warden)
            .args(["approvals", "list", "-o", "json", "--config"])
            .arg(&agent.config)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    };
    let (mut idle, mut held) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        idle.push(pgbench("127.0.0.1", pg.port, &select)?.tps);
        let mut clients = Vec::new();
        // Over two identities: one may hold at most `approval::MAX_PENDING_PER_IDENTITY` (100).
        for i in 0..HELD {
            let identity = format!("warden/identity=bench-held-{}", i % 2);
            let argv = testkit::psql_argv("127.0.0.1", pg.port, "delete from pgbench_history where aid = -1");
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            clients.push(
                agent
                    .exec(&["warden/kind=agent", &identity], &argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting a held client")?,
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while pending() < HELD {
            if std::time::Instant::now() > deadline {
                bail!("only {} of {HELD} statements were held after 60 s", pending());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        held.push(pgbench("127.0.0.1", pg.port, &select)?.tps);
        // Released by killing the clients (their requests are cancelled, nothing runs).
        let _ = Command::new("pkill").args(["-KILL", "-f", "delete from pgbench_history where aid = -1"]).status();
        for mut c in clients {
            let _ = c.wait();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let backends = || pg.admin_sql("select count(*) from pg_stat_activity where backend_type = 'client backend'");
        while (pending() > 0 || backends().parse::<usize>().unwrap_or(0) > 1) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "select-only prepared of an unrelated identity: with {HELD} sessions held for approval {:.1} tps, \
         none held {:.1} tps: {:.3}x",
        mean(&held),
        mean(&idle),
        mean(&held) / mean(&idle)
    );
    Ok(())
}

/// Volume limits: pgbench select-only (simple and prepared, 8 clients) of an identity whose
/// every read is capped (per statement, and per minute with a window too large to fill), against
/// the same with no limit; three interleaved rounds, as ratios.
fn row_capped(warden: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    let db = format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port);
    let capped = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: capped}\nspec:\n  selector: {}\n  \
                  rules:\n    - {name: rows, match: {class: [read]}, limit: {rows: 10000, bytes: 64MiB}}\n    \
                  - {name: accounts, match: {relations: ['*.pgbench_accounts']}, limit: {rows: 1000000000, per: 1m}}\n";
    let uncapped = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: uncapped}\nspec:\n  \
                    selector: {}\n  rules:\n    - {name: ddl, match: {class: [ddl]}, action: deny}\n";
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for mode in ["simple", "prepared"] {
        let args = ["-S", "-M", mode, "-c", "8", "-j", "2", "-T", secs];
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            for (policy, runs) in [(capped, &mut with), (uncapped, &mut without)] {
                let agent = Agent::start_with_bin_policies(warden, &db, &[("policy.yaml", policy)]);
                runs.push(pgbench("127.0.0.1", pg.port, &args)?.tps);
                drop(agent);
            }
        }
        println!(
            "select-only {mode} through Warden: every read row-capped {:.1} tps, no cap {:.1} tps: {:.3}x",
            mean(&with),
            mean(&without),
            mean(&with) / mean(&without)
        );
    }
    Ok(())
}

/// A 1,000,000-row result with one masked column (a keyed token per value), against the same
/// result through Warden unmasked and direct; and the agent's peak memory while masking.
fn masking(warden: &Path, secs: &str) -> Result<()> {
    let pg = Postgres::start();
    pg.admin_sql(
        "create table pii as select g as id, 'user' || g || '@example.com' as email, md5(g::text) as note \
         from generate_series(1, 1000000) g; analyze pii",
    );
    let dir = std::env::temp_dir().join(testkit::unique("warden-bench-mask-"));
    fs::create_dir_all(&dir)?;
    let script = dir.join("rows.sql");
    fs::write(&script, "select id, email, note from pii;\n")?;
    let script = script.display().to_string();
    let args = ["-f", &script, "-c", "1", "-T", secs];
    let db = format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port);
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: pii}\nspec:\n  \
                  selector: {}\n  rules:\n    - {name: emails, match: {columns: [\"*.pii.email\"]}, mask: token}\n";
    let (mut direct, mut plain, mut masked) = (Vec::new(), Vec::new(), Vec::new());
    // The agent's resident memory before a run and at its peak during it (KiB): unmasked, masked.
    let mut memory: [Vec<(f64, f64)>; 2] = Default::default();
    // Alternate, three rounds, to spread this machine's drift over every side.
    for _ in 0..3 {
        direct.push(pgbench("::1", pg.port, &args)?.tps);
        for masks in [false, true] {
            let files: Vec<(&str, &str)> = if masks { vec![("pii.yaml", policy)] } else { Vec::new() };
            let agent = Agent::start_with_bin_policies(warden, &db, &files);
            let pid = agent.pid().context("agent pid")?;
            let before = connect::rss_kib(pid);
            let (run, peak) = peak_rss_during(pid, || pgbench("127.0.0.1", pg.port, &args));
            let run = run?;
            memory[usize::from(masks)].push((before, peak));
            if masks {
                masked.push(run.tps);
            } else {
                plain.push(run.tps);
            }
            drop(agent);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (d, p, m) = (mean(&direct), mean(&plain), mean(&masked));
    let most = |runs: &[(f64, f64)]| runs.iter().fold((0.0f64, 0.0f64), |(b, p), (x, y)| (b.max(*x), p.max(*y)));
    let ((plain_before, plain_peak), (before, peak)) = (most(&memory[0]), most(&memory[1]));
    println!(
        "1,000,000-row result, 3 columns, one masked (token): direct {d:.3} tps, Warden unmasked {p:.3} tps \
         ({:.3}x direct), Warden masked {m:.3} tps ({:.3}x direct, {:.3}x unmasked: masking costs {:.1}%; target \
         under 20%); agent RSS before a run and at its peak during it: masked {:.1} and {:.1} MiB, unmasked {:.1} \
         and {:.1} MiB",
        p / d,
        m / d,
        m / p,
        (1.0 - m / p) * 100.0,
        before / 1024.0,
        peak / 1024.0,
        plain_before / 1024.0,
        plain_peak / 1024.0
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Statements in each transaction of the pipelined line.
const PIPELINED: usize = 10;

/// Ten point reads a transaction in one pipeline (one Sync), for pgbench `-f`: libpq writes them
/// at once, and the server flushes its answers at the Sync (segs/tx shows whether each leg kept
/// them so). So each statement's own cost shows with a tenth of the system calls.
fn pipelined_script(dir: &Path) -> Result<String> {
    let path = dir.join("pipelined.sql");
    let reads = (0..PIPELINED)
        .map(|i| format!("\\set aid{i} random(1, 100000 * :scale)\n"))
        .chain(std::iter::once("\\startpipeline\n".to_string()))
        .chain((0..PIPELINED).map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = :aid{i};\n")))
        .chain(std::iter::once("\\endpipeline\n".to_string()))
        .collect::<String>();
    fs::write(&path, reads)?;
    Ok(path.display().to_string())
}

/// How many rounds each line runs through every path (at least 3).
fn rounds() -> usize {
    std::env::var("WARDEN_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(3)
}

/// The main lines through every path, then connection set-up; a summary of the targets.
fn main_lines(warden: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    lines::large_table(pg);
    // WARDEN_BENCH_LINE: only the lines whose name contains it (to profile one).
    let only = std::env::var("WARDEN_BENCH_LINE").unwrap_or_default();
    // Removed when the lines end, whichever way.
    let dir = testkit::temp_dir("warden-bench-lines-");
    let large = dir.path().join("large.sql");
    fs::write(&large, "select id, email, note, pad from bench_rows;\n")?;
    let large = large.display().to_string();
    let pipelined = pipelined_script(dir.path())?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let rig = lines::Rig {
        pg,
        agent: lines::agent(warden, pg, ACCOUNTS, &metrics)?,
        relay: relay::Relay::start(&std::env::current_exe()?, lines::server(pg))?,
        bouncer: {
            let bouncer = PgBouncer::start(pg.port)?;
            bouncer.pid().context("pgbouncer pid")?;
            bouncer
        },
        perf: std::env::var_os("WARDEN_BENCH_PERF").map(PathBuf::from),
    };
    let rounds = rounds();
    println!(
        "Lines: {rounds} rounds of {secs} s per path, interleaved. Warden judges with the baseline pack, masks one \
         column (token) and records every statement. own CPU: the proxy process's; machine: all CPUs' busy time, and its excess over direct."
    );
    // The column each line's masking rule protects. TPC-B returns only abalance, which its own
    // UPDATE then writes back: masking it refuses that copy into a table (as it must), so its
    // masked column is one of the table it reads that it does not return.
    let cases: Vec<(&str, Vec<&str>, &str, bool)> = vec![
        (
            "select-only, simple, 8 clients",
            vec!["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", secs],
            ACCOUNTS,
            false,
        ),
        (
            "select-only, prepared, 8 clients",
            vec!["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", secs],
            ACCOUNTS,
            false,
        ),
        (
            "select-only, 10 pipelined per transaction, prepared, 8 clients",
            vec!["-f", &pipelined, "-M", "prepared", "-c", "8", "-j", "2", "-T", secs],
            ACCOUNTS,
            false,
        ),
        ("TPC-B-like, 8 clients", vec!["-c", "8", "-j", "2", "-T", secs], "*.pgbench_accounts.filler", false),
        (
            "1,000,000-row result, 4 text columns, one masked",
            vec!["-f", &large, "-c", "1", "-T", secs],
            "*.bench_rows.email",
            true,
        ),
        (
            "select-only, new connection per transaction (-C), 4 clients",
            vec!["-C", "-S", "-c", "4", "-j", "2", "-T", secs],
            ACCOUNTS,
            false,
        ),
    ];
    let mut lines_met = 0;
    let mut masking = ACCOUNTS;
    if !cases.iter().any(|c| c.0.contains(only.as_str())) {
        let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
        bail!("WARDEN_BENCH_LINE={only:?} names none of the lines: {}", names.join("; "));
    }
    for (name, args, masked, large) in cases.iter().filter(|c| c.0.contains(only.as_str())) {
        if *masked != masking {
            lines::remask(&rig.agent, masked)?;
            masking = masked;
        }
        println!("\n{name} (masked: {masked})");
        let samples = rig.line(name, args, rounds)?;
        if lines::report(&samples, *large) {
            lines_met += 1;
        }
    }
    println!(
        "\nlines with every target met: {lines_met} of {}",
        cases.iter().filter(|c| c.0.contains(only.as_str())).count()
    );
    let (_, text) = testkit::scrape(&metrics, "/metrics");
    let (written, merged) = (
        testkit::sample(&text, "warden_audit_records_written_total", &[]),
        testkit::sample(&text, "warden_audit_outcomes_merged_total", &[]),
    );
    let lost = testkit::sample(&text, "warden_audit_records_dropped_total", &[])
        + testkit::sample(&text, "warden_audit_write_errors_total", &[]);
    println!(
        "\naudit records written by Warden: {written:.0}; statement outcomes written in their statement's record: \
         {merged:.0} ({:.0}% of the records a statement and its outcome would otherwise take); lost (queue full or \
         a failed write): {lost:.0}",
        100.0 * merged / (written + merged).max(1.0)
    );
    let (judged, reused) = (
        testkit::sample(&text, "warden_judgement_seconds_count", &[]),
        testkit::sample(&text, "warden_judgements_reused_total", &[]),
    );
    println!(
        "statements judged: {judged:.0}; given again the judgement their text, or their text with other literals, \
         got last (nothing it was made from changed): {reused:.0} ({:.0}%)",
        100.0 * reused / judged.max(1.0)
    );
    connect_latency(&rig, &metrics, rounds)?;
    println!("(connections redirected through Warden during the run: {})", rig.agent.stat("redirected"));
    Ok(())
}

/// The column the select-only lines' masking rule protects (the one column they read).
const ACCOUNTS: &str = "*.pgbench_accounts.abalance";

/// Connection set-up through each path: p50 and p99 to ReadyForQuery and to a first
/// statement's answer, and where Warden's extra time goes.
fn connect_latency(rig: &lines::Rig<'_>, metrics: &str, rounds: usize) -> Result<()> {
    use lines::{PATHS, Via};
    const PER_ROUND: usize = 300;
    let connect_sum = || {
        let (_, text) = testkit::scrape(metrics, "/metrics");
        (
            testkit::sample(&text, "warden_connect_seconds_sum", &[]),
            testkit::sample(&text, "warden_connect_seconds_count", &[]),
        )
    };
    let mut ready: [Vec<f64>; 4] = Default::default();
    let mut first: [Vec<f64>; 4] = Default::default();
    let (sum0, count0) = connect_sum();
    for round in 0..rounds {
        for k in 0..PATHS.len() {
            let i = (k + round) % PATHS.len();
            let (host, port) = rig.address(PATHS[i]);
            for _ in 0..PER_ROUND {
                let (r, f) = connect::connect_once(host, port)?;
                ready[i].push(r);
                first[i].push(f);
            }
        }
    }
    let (sum1, count1) = connect_sum();
    println!(
        "\nConnection set-up, {} sequential connections per path (trust authentication): µs to ReadyForQuery, and \
         to the answer of a first statement (select 1)",
        PER_ROUND * rounds
    );
    println!(
        "  {:<11} {:>10} {:>10} {:>12} {:>12} {:>18} {:>18}",
        "path", "ready p50", "p99", "answered p50", "p99", "adds p50 (ready)", "adds p99 (ready)"
    );
    let q = |v: &mut Vec<f64>, p: f64| connect::quantile(v, p);
    let (d50, d99) = (q(&mut ready[0], 0.5), q(&mut ready[0], 0.99));
    let (df50, df99) = (q(&mut first[0], 0.5), q(&mut first[0], 0.99));
    let mut added = [(0.0, 0.0, 0.0); 4];
    for (i, via) in PATHS.iter().enumerate() {
        let (r50, r99) = (q(&mut ready[i], 0.5), q(&mut ready[i], 0.99));
        let (f50, f99) = (q(&mut first[i], 0.5), q(&mut first[i], 0.99));
        added[i] = (r50 - d50, r99 - d99, f50 - df50);
        println!(
            "  {:<11} {:>10.0} {:>10.0} {:>12.0} {:>12.0} {:>18} {:>18}",
            via.name(),
            r50,
            r99,
            f50,
            f99,
            format!("{:+.0} ({:+.0} ans)", r50 - d50, f50 - df50),
            format!("{:+.0} ({:+.0} ans)", r99 - d99, f99 - df99)
        );
    }
    let warden = PATHS.iter().position(|v| *v == Via::Warden).unwrap_or(3);
    let dialled = if count1 > count0 { (sum1 - sum0) / (count1 - count0) * 1e6 } else { f64::NAN };
    let (ready_added, _, answered_added) = added[warden];
    println!(
        "  Warden's p50: +{ready_added:.0} µs to ReadyForQuery; the agent took {dialled:.0} µs (mean) from accepting \
         the connection to the server dialled (the kernel's flow record, identity, limits, the dial from the client's \
         namespace, and waiting for the client's start-up packet, which a direct connection waits for too); \
         +{:.0} µs more by the first answer (the session facts read before judging the first statement, and \
         judging it).",
        answered_added - ready_added
    );
    Ok(())
}

/// 1,000 concurrent sessions through Warden, 8 of them running pgbench (select-only, prepared)
/// and the rest idle, against 10 (8 running, 2 idle): the running sessions' throughput, and the
/// agent's memory per idle and per running session.
fn scale(warden: &Path, secs: &str) -> Result<()> {
    const SESSIONS: usize = 1000;
    const ACTIVE: usize = 8;
    connect::raise_fd_limit()?;
    let pg = Postgres::start_with(testkit::PgOptions { conf: "max_connections = 1100", ..Default::default() });
    pg.pgbench_init(10);
    let agent = lines::agent(warden, &pg, ACCOUNTS, &format!("127.0.0.1:{}", free_port()))?;
    let pid = agent.pid().context("agent pid")?;
    let args = ["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", secs];
    let (mut many, mut few) = (Vec::new(), Vec::new());
    let (mut per_idle, mut per_active) = (f64::NAN, Vec::new());
    for round in 0..rounds() {
        for idle in [SESSIONS - ACTIVE, 10 - ACTIVE] {
            let before = connect::rss_kib(pid);
            let sessions = connect::open_idle("127.0.0.1", pg.port, idle)?;
            let opened = connect::rss_kib(pid);
            if round == 0 && idle > 10 {
                per_idle = (opened - before) / idle as f64;
            }
            let (run, peak) = peak_rss_during(pid, || pgbench("127.0.0.1", pg.port, &args));
            let run = run?;
            if idle > 10 {
                many.push(run.tps);
                per_active.push((peak - opened) / ACTIVE as f64);
            } else {
                few.push(run.tps);
            }
            for s in sessions {
                s.close();
            }
        }
    }
    let ratios: Vec<f64> = many.iter().zip(&few).map(|(m, f)| m / f).collect();
    println!(
        "\nScale: {ACTIVE} sessions running pgbench -S prepared among {SESSIONS} (the rest idle, each having run a \
         statement): {} tps, against {ACTIVE} among 10: {} tps: {}x. Agent memory: {per_idle:.1} KiB per idle \
         session (RSS growth opening {}), {} KiB per running session (peak RSS during the run over idle).",
        lines::spread(&many),
        lines::spread(&few),
        format_args!("{:.3}", lines::spread(&ratios)),
        SESSIONS - ACTIVE,
        format_args!("{:.1}", lines::spread(&per_active)),
    );
    Ok(())
}

/// PgBouncer in session mode in front of the test PostgreSQL (it refuses to run as root).
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    fn start(pg_port: u16) -> Result<Self> {
        let dir = std::env::temp_dir().join(testkit::unique("warden-pgbouncer-"));
        fs::create_dir_all(&dir)?;
        let port = free_port();
        fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\npostgres = host=::1 port={pg_port} dbname=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}/userlist.txt\npool_mode = session\n\
                 max_client_conn = 200\ndefault_pool_size = 50\nlogfile = {}/pgbouncer.log\n",
                dir.display(),
                dir.display()
            ),
        )?;
        check(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir));
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbouncer")?;
        let bouncer = Self { child, port, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("pgbouncer did not start: {}", fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default())
    }

    /// The pgbouncer process itself (runuser's child).
    pub fn pid(&self) -> Option<u32> {
        let children =
            fs::read_to_string(format!("/proc/{}/task/{}/children", self.child.id(), self.child.id())).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Two configurations of Warden against each other, paired: each round runs both (the order
/// turning each round, so that drift falls on both), and its ratio is the first's throughput over
/// the second's. Prints the median ratio with its spread and the agent's CPU per transaction of
/// each (counted after the agent settles: the audit writer drains its queue after pgbench ends).
fn paired(
    what: &str,
    names: [&str; 2],
    start: impl Fn(bool) -> Agent,
    pg: &Postgres,
    args: &[&str],
) -> Result<lines::Spread> {
    let (mut ratios, mut cpu, mut machine) = (Vec::new(), [Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    // The audit writer thread's CPU, the agent's page faults and the machine's TLB shootdowns.
    let (mut writer, mut faults, mut tlb) =
        ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    // An even number of rounds: each side runs first as often (the first run of all is colder).
    for round in 0..rounds().next_multiple_of(2) {
        let mut tps = [0.0; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let agent = start(side == 0);
            let pid = agent.pid().context("agent pid")?;
            lines::settle(pid);
            let (before, machine_before) = (cpu_seconds(pid), lines::machine_seconds());
            let writer_before = thread_cpu_seconds(pid, lines::WRITER_THREAD);
            let (faults_before, tlb_before) = (minor_faults(pid), tlb_shootdowns());
            let run = pgbench("127.0.0.1", pg.port, args)?;
            lines::settle(pid);
            let tx = run.transactions.max(1) as f64;
            cpu[side].push((cpu_seconds(pid) - before) * 1e6 / tx);
            machine[side].push((lines::machine_seconds() - machine_before) * 1e6 / tx);
            writer[side].push((thread_cpu_seconds(pid, lines::WRITER_THREAD) - writer_before) * 1e6 / tx);
            faults[side].extend(delta_per_tx(faults_before, minor_faults(pid), tx));
            tlb[side].extend(delta_per_tx(tlb_before, tlb_shootdowns(), tx));
            tps[side] = run.tps;
            drop(agent);
        }
        ratios.push(tps[0] / tps[1]);
    }
    let ratio = lines::spread(&ratios);
    println!(
        "{what}: {} against {}: {ratio:.3} (× the second), agent CPU {} against {} µs/tx, machine {} against {} \
         µs/tx",
        names[0],
        names[1],
        lines::spread(&cpu[0]),
        lines::spread(&cpu[1]),
        lines::spread(&machine[0]),
        lines::spread(&machine[1])
    );
    // Only where every run was read: a partial count would pass for a measurement.
    let per_tx = |v: &[f64]| {
        if v.is_empty() || v.len() < ratios.len() {
            return "n/a".to_string();
        }
        let s = lines::spread(v);
        format!("{:.3} [{:.3}–{:.3}]", s.median, s.min, s.max)
    };
    println!(
        "  audit writer thread {} against {} µs/tx; agent page faults {} against {} per tx; TLB shootdowns \
         (machine) {} against {} per tx",
        lines::spread(&writer[0]),
        lines::spread(&writer[1]),
        per_tx(&faults[0]),
        per_tx(&faults[1]),
        per_tx(&tlb[0]),
        per_tx(&tlb[1])
    );
    Ok(ratio)
}

/// Full statement audit against none, through Warden (select-only, prepared).
fn audit_cost(warden: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    let select = ["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", secs];
    let db = format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port);
    let start = |statements: bool| {
        let audit = format!("  ring_bytes: 268435456\n  identity_share: 1.0\n  statements: {statements}");
        Agent::start_with_audit(warden, &db, &audit)
    };
    let ratio =
        paired("select-only prepared through Warden", ["full statement audit", "audit off"], start, pg, &select)?;
    println!("  target statement audit within 5%: {}", met(ratio.median >= 0.95));
    Ok(())
}

/// The baseline pack selecting the bench's identity, against no policy at all, both judging
/// every statement (select-only under the simple protocol: every text is new to the raw-text
/// cache, the analysis is cached by normalised text).
fn policy_cost(warden: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    let selects_all = lines::baseline_for_all()?;
    let simple = ["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", secs];
    let db = format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port);
    let start = |policies: bool| {
        let files: Vec<(&str, &str)> = if policies { vec![("baseline.yaml", &selects_all)] } else { Vec::new() };
        Agent::start_with_bin_policies(warden, &db, &files)
    };
    let ratio = paired("select-only simple through Warden", ["baseline pack", "no policy"], start, pg, &simple)?;
    println!("  target policy within 5%: {}", met(ratio.median >= 0.95));
    Ok(())
}

/// The lines Warden is compared on side by side with itself: select-only (simple, prepared,
/// ten pipelined per transaction) and TPC-B, each with the column it masks.
fn paired_lines<'a>(secs: &'a str, pipelined: &'a str) -> [(&'static str, Vec<&'a str>, &'static str); 4] {
    [
        ("select-only simple", vec!["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", secs], ACCOUNTS),
        ("select-only prepared", vec!["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", secs], ACCOUNTS),
        (
            "select-only, 10 pipelined per transaction, prepared",
            vec!["-f", pipelined, "-M", "prepared", "-c", "8", "-j", "2", "-T", secs],
            ACCOUNTS,
        ),
        ("TPC-B-like", vec!["-c", "8", "-j", "2", "-T", secs], "*.pgbench_accounts.filler"),
    ]
}

/// One proxy worker against one per CPU, Warden doing the lines' whole job (the baseline pack,
/// a masked column, full statement audit): paired runs of each line.
fn workers_compared(warden: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = testkit::temp_dir("warden-bench-paired-");
    let pipelined = pipelined_script(dir.path())?;
    for (name, args, masked) in paired_lines(secs, &pipelined) {
        let start = |one: bool| {
            let metrics = format!("127.0.0.1:{}", free_port());
            lines::agent_with(warden, pg, masked, &metrics, Some(if one { 1 } else { cpus }))
                .expect("starting the bench's agent")
        };
        let names = ["one worker", &format!("{cpus} workers")];
        paired(&format!("{name}, 8 clients, through Warden"), names, start, pg, &args)?;
    }
    Ok(())
}

/// This build against another (`WARDEN_BENCH_AGAINST=PATH`, say the previous commit's), each
/// doing the lines' whole job with its default workers: paired runs of each line, so a change
/// is measured against its baseline in the same run.
fn builds_compared(warden: &Path, other: &Path, pg: &Postgres, secs: &str) -> Result<()> {
    let dir = testkit::temp_dir("warden-bench-paired-");
    let pipelined = pipelined_script(dir.path())?;
    for (name, args, masked) in paired_lines(secs, &pipelined) {
        let start = |this: bool| {
            let metrics = format!("127.0.0.1:{}", free_port());
            lines::agent_with(if this { warden } else { other }, pg, masked, &metrics, None)
                .expect("starting the bench's agent")
        };
        paired(&format!("{name}, 8 clients, through Warden"), ["this build", "the other"], start, pg, &args)?;
    }
    Ok(())
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

pub fn bench(warden: &Path) -> Result<()> {
    match std::env::var("WARDEN_BENCH_ONLY").as_deref() {
        // One case alone (the whole bench takes many minutes).
        Ok("held") => return held_sessions(warden, &seconds().to_string()),
        Ok("masking") => return masking(warden, &seconds().to_string()),
        Ok("lines") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return main_lines(warden, &pg, &seconds().to_string());
        }
        Ok("scale") => return scale(warden, &seconds().to_string()),
        Ok("mysql") => return mysql::line(warden, &seconds().to_string()),
        Ok("audit") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return audit_cost(warden, &pg, &seconds().to_string());
        }
        Ok("policy") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return policy_cost(warden, &pg, &seconds().to_string());
        }
        Ok("workers") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return workers_compared(warden, &pg, &seconds().to_string());
        }
        Ok("against") => {
            let other = std::env::var_os("WARDEN_BENCH_AGAINST")
                .context("WARDEN_BENCH_ONLY=against needs WARDEN_BENCH_AGAINST=PATH (another warden binary)")?;
            // A full path, checked before anything starts (a bare name would be looked up in PATH).
            let other = fs::canonicalize(&other)
                .with_context(|| format!("WARDEN_BENCH_AGAINST={}", Path::new(&other).display()))?;
            if !other.is_file() || fs::canonicalize(warden).is_ok_and(|this| this == other) {
                bail!("WARDEN_BENCH_AGAINST={}: not another warden binary", other.display());
            }
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return builds_compared(warden, &other, &pg, &seconds().to_string());
        }
        Ok("limits") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return row_capped(warden, &pg, &seconds().to_string());
        }
        _ => {}
    }
    let pg = Postgres::start();
    pg.pgbench_init(10);
    // Removed on every path; 0755 whatever the umask (the ring refuses a directory others
    // may write to).
    let scratch = testkit::temp_dir("warden-bench-");
    let script_dir = scratch.path();
    let secs = seconds().to_string();
    main_lines(warden, &pg, &secs)?;

    // The audit trail: the ring alone, then statement auditing on vs off through Warden.
    let ring = script_dir.join("bench.ring");
    let out = check(Command::new(warden).args(["audit", "bench", "--records", "300000", "--ring"]).arg(&ring));
    println!("\naudit ring alone: {}", out.trim());
    audit_cost(warden, &pg, &secs)?;
    policy_cost(warden, &pg, &secs)?;
    let pack = testkit::workspace_root().join("policies/baseline.yaml");
    let out =
        check(Command::new(warden).args(["policy", "bench", "--label", "warden/kind=agent", "--policies"]).arg(&pack));
    println!("{}", out.trim());
    row_capped(warden, &pg, &secs)?;

    drop(pg);
    scale(warden, &secs)?;
    held_sessions(warden, &secs)?;
    masking(warden, &secs)?;
    mysql::line(warden, &secs)?;
    Ok(())
}
