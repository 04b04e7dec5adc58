//! `cargo xtask bench`: throughput through Warden and through PgBouncer (session mode, as a
//! plain forwarding pooler) as ratios to a direct connection, all measured in the same run on
//! the same PostgreSQL, with the proxies' CPU time per transaction. Numbers to read, never a
//! pass/fail threshold.
//!
//! Paths: direct is [::1]:PORT; Warden governs 127.0.0.1:PORT (pgbench dials it unchanged and is
//! redirected); PgBouncer listens on its own port and reaches PostgreSQL over [::1].

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
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// 200 sessions of one identity each holding a statement for approval, against none, while an
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
        for _ in 0..HELD {
            let argv = testkit::psql_argv("127.0.0.1", pg.port, "delete from pgbench_history where aid = -1");
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            clients.push(
                agent
                    .exec(&["warden/kind=agent", "warden/identity=bench-held"], &argv)
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

/// The agent's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
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
    let (mut direct, mut plain, mut masked, mut peak) = (Vec::new(), Vec::new(), Vec::new(), 0.0f64);
    // Alternate, three rounds, to spread this machine's drift over every side.
    for _ in 0..3 {
        direct.push(pgbench("::1", pg.port, &args)?.tps);
        for masks in [false, true] {
            let files: Vec<(&str, &str)> = if masks { vec![("pii.yaml", policy)] } else { Vec::new() };
            let agent = Agent::start_with_bin_policies(warden, &db, &files);
            let pid = agent.pid().context("agent pid")?;
            let run = pgbench("127.0.0.1", pg.port, &args)?;
            if masks {
                masked.push(run.tps);
                peak = peak.max(peak_rss_mib(pid));
            } else {
                plain.push(run.tps);
            }
            drop(agent);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (d, p, m) = (mean(&direct), mean(&plain), mean(&masked));
    println!(
        "1,000,000-row result, 3 columns, one masked (token): direct {d:.3} tps, Warden unmasked {p:.3} tps \
         ({:.3}x direct), Warden masked {m:.3} tps ({:.3}x direct, {:.3}x unmasked: masking costs {:.1}%; target \
         under 20%); agent peak RSS while masking {peak:.1} MiB",
        p / d,
        m / d,
        m / p,
        (1.0 - m / p) * 100.0
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// PgBouncer in session mode in front of the test PostgreSQL (it refuses to run as root).
struct PgBouncer {
    child: Child,
    port: u16,
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
    fn pid(&self) -> Option<u32> {
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

pub fn bench(warden: &Path) -> Result<()> {
    match std::env::var("WARDEN_BENCH_ONLY").as_deref() {
        // One case alone (the whole bench takes many minutes).
        Ok("held") => return held_sessions(warden, &seconds().to_string()),
        Ok("masking") => return masking(warden, &seconds().to_string()),
        Ok("limits") => {
            let pg = Postgres::start();
            pg.pgbench_init(10);
            return row_capped(warden, &pg, &seconds().to_string());
        }
        _ => {}
    }
    let pg = Postgres::start();
    pg.pgbench_init(10);
    let script_dir = std::env::temp_dir().join(testkit::unique("warden-bench-"));
    fs::create_dir_all(&script_dir)?;
    let large = script_dir.join("large.sql");
    fs::write(&large, "select g, md5(g::text), repeat('x', 32), (g * 7)::text from generate_series(1, 1000000) g;\n")?;
    let large = large.display().to_string();

    // Every statement recorded whole: a ring large enough for the run, and no fair-share
    // shedding (the bench is one identity), so the lines measure full statement audit.
    let agent = Agent::start_with_audit(
        warden,
        &format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port),
        "  ring_bytes: 1073741824\n  identity_share: 1.0",
    );
    let agent_pid = agent.pid().context("agent pid")?;
    let bouncer = PgBouncer::start(pg.port)?;
    let bouncer_pid = bouncer.pid().context("pgbouncer pid")?;
    let secs = seconds().to_string();

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("select-only, simple, 8 clients", vec!["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", &secs]),
        ("select-only, prepared, 8 clients", vec!["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", &secs]),
        ("TPC-B-like, 8 clients", vec!["-c", "8", "-j", "2", "-T", &secs]),
        ("1,000,000-row result, 4 text columns", vec!["-f", &large, "-c", "1", "-T", &secs]),
        ("select-only, new connection per transaction (-C)", vec!["-C", "-S", "-c", "4", "-j", "2", "-T", &secs]),
    ];
    println!(
        "{:<48} {:>10} {:>10} {:>7} {:>10} {:>7} {:>12} {:>12}",
        "case (tps)", "direct", "warden", "ratio", "pgbouncer", "ratio", "warden µs/tx", "bouncer µs/tx"
    );
    for (name, args) in &cases {
        let direct = pgbench("::1", pg.port, args)?;
        let before = cpu_seconds(agent_pid);
        let through = pgbench("127.0.0.1", pg.port, args)?;
        let warden_cpu = cpu_seconds(agent_pid) - before;
        let before = cpu_seconds(bouncer_pid);
        let pooled = pgbench("127.0.0.1", bouncer.port, args)?;
        let bouncer_cpu = cpu_seconds(bouncer_pid) - before;
        println!(
            "{:<48} {:>10.1} {:>10.1} {:>6.2}x {:>10.1} {:>6.2}x {:>12.1} {:>12.1}",
            name,
            direct.tps,
            through.tps,
            through.tps / direct.tps,
            pooled.tps,
            pooled.tps / direct.tps,
            warden_cpu * 1e6 / through.transactions.max(1) as f64,
            bouncer_cpu * 1e6 / pooled.transactions.max(1) as f64,
        );
    }
    let redirected = agent.stat("redirected");
    println!("(connections redirected through Warden during the run: {redirected})");
    drop(bouncer);
    drop(agent);

    // The audit trail: the ring alone, then statement auditing on vs off through Warden.
    let ring = script_dir.join("bench.ring");
    let out = check(Command::new(warden).args(["audit", "bench", "--records", "300000", "--ring"]).arg(&ring));
    println!("\naudit ring alone: {}", out.trim());
    let select = ["-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", &secs];
    let db = format!("  - {{name: bench, address: '127.0.0.1:{}'}}", pg.port);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut on_cpu, mut off_cpu) = (Vec::new(), Vec::new());
    // Alternate, three rounds, to spread this machine's drift over both sides.
    for _ in 0..3 {
        for (statements, runs, cpu) in [(true, &mut on, &mut on_cpu), (false, &mut off, &mut off_cpu)] {
            let audit = format!("  ring_bytes: 268435456\n  identity_share: 1.0\n  statements: {statements}");
            let agent = Agent::start_with_audit(warden, &db, &audit);
            let pid = agent.pid().context("agent pid")?;
            let before = cpu_seconds(pid);
            let run = pgbench("127.0.0.1", pg.port, &select)?;
            cpu.push((cpu_seconds(pid) - before) * 1e6 / run.transactions.max(1) as f64);
            runs.push(run.tps);
            drop(agent);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "select-only prepared through Warden: full statement audit {:.1} tps ({:.1} µs agent CPU/tx), \
         audit off {:.1} tps ({:.1} µs/tx): {:.3}x",
        mean(&on),
        mean(&on_cpu),
        mean(&off),
        mean(&off_cpu),
        mean(&on) / mean(&off)
    );

    // Policy: the baseline pack selecting the bench's identity, against no policy at all, both
    // judging every statement (select-only under the simple protocol: every text is new to the
    // raw-text cache, the analysis is cached by normalised text).
    let baseline = fs::read_to_string(testkit::workspace_root().join("policies/baseline.yaml"))?;
    let selects_all = baseline.replace(
        "  selector:\n    matchExpressions:\n      - {key: warden/kind, operator: In, values: [agent, service, job]}",
        "  selector: {}",
    );
    if selects_all == baseline {
        bail!("policies/baseline.yaml changed shape: the bench cannot make it select every identity");
    }
    let simple = ["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", &secs];
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (policies, runs) in [(true, &mut with), (false, &mut without)] {
            let files: Vec<(&str, &str)> = if policies { vec![("baseline.yaml", &selects_all)] } else { Vec::new() };
            let agent = Agent::start_with_bin_policies(warden, &db, &files);
            runs.push(pgbench("127.0.0.1", pg.port, &simple)?.tps);
            drop(agent);
        }
    }
    println!(
        "select-only simple through Warden: baseline pack {:.1} tps, no policy {:.1} tps: {:.3}x (target: within 5%)",
        mean(&with),
        mean(&without),
        mean(&with) / mean(&without)
    );
    let pack = testkit::workspace_root().join("policies/baseline.yaml");
    let out =
        check(Command::new(warden).args(["policy", "bench", "--label", "warden/kind=agent", "--policies"]).arg(&pack));
    println!("{}", out.trim());
    row_capped(warden, &pg, &secs)?;

    drop(pg);
    held_sessions(warden, &secs)?;
    masking(warden, &secs)?;
    let _ = fs::remove_dir_all(&script_dir);
    Ok(())
}
