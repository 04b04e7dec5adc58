//! Restart, upgrade and configuration change of the agent without dropping a session: the
//! serving agent hands its listening sockets to its successor and drains (see
//! `agent/src/handover.rs`). pgbench runs through each hand-over with zero failed transactions;
//! a transaction open across one commits; a session still open at the drain deadline gets
//! 57P01; the ring verifies afterwards with every statement recorded once.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Agent, Postgres, check, pgbench_bin, warden_bin};

fn governed(pg: &Postgres) -> String {
    format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port)
}

/// A ring large enough that nothing of these runs is overwritten.
const BIG_RING: &str = "  ring_bytes: 134217728\n  seal_every: 1000";

fn pgbench(pg: &Postgres, args: &[&str]) -> std::process::Child {
    Command::new(pgbench_bin())
        .args(["-n", "-h", "127.0.0.1", "-U", "postgres", "-p", &pg.port.to_string()])
        .args(args)
        .arg("postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench")
}

/// Waits for pgbench; returns its transactions processed, after checking none failed and no
/// client aborted (a refused or broken connection aborts a client).
fn finished(child: std::process::Child, what: &str) -> u64 {
    let out = child.wait_with_output().expect("pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: pgbench failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("aborted"), "{what}: a client aborted:\n{stderr}");
    assert!(stdout.contains("number of failed transactions: 0 "), "{what}:\n{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no transaction count:\n{stdout}"))
}

fn verify(agent: &Agent) {
    let out = Command::new(warden_bin()).args(["audit", "verify", "--config"]).arg(&agent.config).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn statements_like(records: &[Value], needle: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["kind"] == "statement" && r["text"].as_str().is_some_and(|t| t.to_lowercase().contains(needle)))
        .count() as u64
}

#[test]
fn pgbench_runs_through_a_restart_an_upgrade_and_a_configuration_change_without_a_failed_transaction() {
    let pg = Postgres::start();
    pg.pgbench_init(1);
    let tmp = testkit::temp_dir("warden-upgrade-bin-");
    let dir = tmp.path().to_path_buf();
    // The agent runs from its own copy of the binary: the upgrade installs another build there.
    let bin = dir.join("warden");
    std::fs::copy(warden_bin(), &bin).unwrap();
    let mut agent =
        Agent::start_with_bin_policies_audit(&bin, &governed(&pg), &[], BIG_RING, "upgrade:\n  drain_deadline_s: 120");
    let first = agent.pid().unwrap();

    // Long-lived sessions (select-only, simple protocol) and a new connection for every
    // transaction (TPC-B): the first stay with the agent they started on, the second reach
    // whichever agent accepts at that moment.
    let select_only = pgbench(&pg, &["-S", "-c", "8", "-j", "2", "-T", "14"]);
    let tpcb = pgbench(&pg, &["-c", "8", "-j", "2", "-T", "14", "-C"]);
    std::thread::sleep(Duration::from_secs(2));

    // 1. A restart: the same build started beside it (as a surge update does).
    agent.take_over_with(&bin);
    let second = agent.pid().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // 2. An upgrade to another build: installed over the path the agent was started from
    // (rename, as package managers do), then `warden upgrade`.
    let mut build = std::fs::read(warden_bin()).unwrap();
    build.extend_from_slice(b"\0another build\0");
    let staged = dir.join("warden.new");
    std::fs::write(&staged, &build).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &bin).unwrap();
    let said = agent.upgrade();
    assert!(said.contains("upgraded: pid"), "{said}");
    let third = agent.pid().unwrap();
    let exe = std::fs::read_link(format!("/proc/{third}/exe")).unwrap();
    assert_eq!(exe, bin, "the successor runs the build installed at the agent's path");
    assert_eq!(std::fs::read(&exe).unwrap(), build, "it is the new build");
    std::thread::sleep(Duration::from_secs(2));

    // 3. A configuration change that needs a new agent (worker count, drain deadline).
    agent.set_top_level_yaml("upgrade:\n  drain_deadline_s: 90");
    let config = std::fs::read_to_string(&agent.config).unwrap().replace("proxy:\n", "proxy:\n  workers: 3\n");
    std::fs::write(&agent.config, config).unwrap();
    agent.take_over_with(&bin);
    let fourth = agent.pid().unwrap();
    let pids = BTreeSet::from([first, second, third, fourth]);
    assert_eq!(pids.len(), 4, "four agents served in turn: {pids:?}");

    let selects = finished(select_only, "select-only");
    let tpcb = finished(tpcb, "TPC-B with a connection per transaction");
    assert!(selects > 0 && tpcb > 0);
    // Every replaced agent drained (its sessions ended with pgbench) and exited cleanly.
    let codes = agent.wait_replaced(Duration::from_secs(30));
    assert!(codes.iter().all(|c| *c == Some(0)), "replaced agents' exit codes: {codes:?}\n{}", agent.log());

    // The ring: one chain written by four agents, every statement of the run once.
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 'the end of the run'"));
    agent.wait_record("the last statement", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|t| t.contains("select ?"))
    });
    verify(&agent);
    let records = agent.records();
    assert_eq!(
        statements_like(&records, "select abalance from pgbench_accounts where aid"),
        selects + tpcb,
        "each select-only transaction is this one statement, and TPC-B's read it too: recorded once"
    );
    assert_eq!(
        statements_like(&records, "update pgbench_accounts set abalance"),
        tpcb,
        "each TPC-B transaction updates pgbench_accounts once, recorded once"
    );
    let stats: Value = serde_json::from_slice(&agent.audit_cli(&["stats", "-o", "json"]).stdout).unwrap();
    assert_eq!((stats["lost"].as_u64(), stats["overwritten"].as_u64()), (Some(0), Some(0)), "{stats}");
    // Every session opened is closed, by whichever agent served it.
    let mut sessions: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for r in &records {
        if let Some(s) = r["session"].as_u64() {
            let e = sessions.entry(s).or_default();
            match r["kind"].as_str() {
                Some("connection_open") => e.0 += 1,
                Some("connection_close") => e.1 += 1,
                _ => {}
            }
        }
    }
    let unbalanced: Vec<_> = sessions.iter().filter(|(_, (o, c))| *o != 1 || *c != 1).collect();
    assert!(unbalanced.is_empty(), "sessions without exactly one open and one close: {unbalanced:?}");
    // No connection was refused or cut meanwhile.
    assert!(
        !records.iter().any(|r| matches!(r["kind"].as_str(), Some("proxy_refused" | "refused_not_serving"))),
        "a connection was refused during the hand-overs"
    );
    drop(tmp);
}

#[test]
fn a_transaction_open_across_the_hand_over_commits_and_the_drain_deadline_ends_sessions_with_57p01() {
    let pg = Postgres::start();
    pg.admin_sql("create table ledger(id int primary key)");
    let mut agent = Agent::start_with_bin_policies_audit(
        &warden_bin(),
        &governed(&pg),
        &[],
        testkit::DEFAULT_AUDIT,
        "upgrade:\n  drain_deadline_s: 4",
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.port);
    runtime.block_on(async {
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
            (client, tokio::spawn(connection))
        };
        let (mut long, long_conn) = connect().await;
        let (idle, idle_conn) = connect().await;
        idle.simple_query("select 1").await.expect("idle session works");
        let tx = long.transaction().await.unwrap();
        tx.execute("insert into ledger values (1)", &[]).await.unwrap();

        let replaced = agent.pid().unwrap();
        let started = Instant::now();
        agent.take_over_with(&warden_bin());
        // The transaction goes on with the agent it began on, and commits.
        tx.execute("insert into ledger values (2)", &[]).await.unwrap();
        tx.commit().await.expect("the transaction open across the hand-over commits");
        // New sessions reach the successor.
        let (fresh, _fresh_conn) = connect().await;
        let n: i64 = fresh.query_one("select count(*) from ledger", &[]).await.unwrap().get(0);
        assert_eq!(n, 2);
        drop(long);
        let _ = long_conn.await;

        // The idle session outlives the deadline: 57P01, with the reason.
        let ended = tokio::time::timeout(Duration::from_secs(20), idle_conn).await.expect("the session ends").unwrap();
        let error = ended.expect_err("the session ends with an error");
        let db = error.as_db_error().unwrap_or_else(|| panic!("a server error, not {error:?}"));
        assert_eq!(db.code().code(), "57P01", "{db:?}");
        assert!(db.message().contains("drain deadline (4 s)"), "{}", db.message());
        assert!(started.elapsed() >= Duration::from_secs(4), "not before the deadline");
        drop(idle);
        assert!(testkit::wait_gone(replaced, Duration::from_secs(10)), "the replaced agent exits after its deadline");
    });
    let codes = agent.wait_replaced(Duration::from_secs(10));
    assert_eq!(codes, vec![Some(0)]);
    // The Kubernetes probe: ready only where the agent serving the host is the prober's own
    // (same cgroup), which a process outside it is told.
    // The unified hierarchy's line ("0::PATH"; hybrid hosts list v1 hierarchies too).
    let cgroup_of = |pid: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default().to_string()
    };
    let serving = agent.serving_pid().unwrap().to_string();
    let agent_cgroup = cgroup_of(&serving);
    assert_ne!(cgroup_of("self"), agent_cgroup, "the agent runs in a cgroup of its own");
    let elsewhere = Command::new(warden_bin()).args(["ready", "--config"]).arg(&agent.config).output().unwrap();
    assert!(
        !elsewhere.status.success() && String::from_utf8_lossy(&elsewhere.stderr).contains("is not this container's"),
        "{elsewhere:?}"
    );
    let unified = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup2 mount");
    let procs = std::path::Path::new(&unified).join(agent_cgroup.trim_start_matches('/')).join("cgroup.procs");
    let inside = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec \"$0\" ready --config \"$1\"", procs.display()))
        .arg(warden_bin())
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(inside.status.success(), "{inside:?}");
    assert!(String::from_utf8_lossy(&inside.stdout).starts_with("ready: pid"), "{inside:?}");
    let close = agent.wait_record("the idle session's end", |r| {
        r["kind"] == "connection_close" && r["error"].as_str().is_some_and(|e| e.contains("drain deadline"))
    });
    assert!(close["session"].is_u64());
    verify(&agent);
}

/// One connect-and-query attempt of a client during the crash test.
struct Attempt {
    at: Instant,
    ok: bool,
    timed_out: bool,
    /// Why it failed, as the client saw it.
    error: Option<String>,
}

#[test]
fn kill_9_refuses_only_until_the_next_agent_serves_and_records_the_sessions_it_cut() {
    let windows = kill_9_under_load(false);
    assert!(!windows.is_empty(), "fail: closed refuses while no agent serves");
}

#[test]
fn kill_9_under_a_keeper_refuses_nothing_the_next_agent_takes_the_sockets_over() {
    let windows = kill_9_under_load(true);
    assert!(windows.is_empty(), "connections wait in the kept sockets' backlog, never refused: {windows:?}");
}

/// Kills the serving agent under eight looping clients (a new connection each time) with two
/// sessions open, starts the next one (itself, or its keeper does), and checks what clients and
/// the ring saw. Returns the refused windows, from the first refused attempt to the next that
/// got through.
fn kill_9_under_load(keeper: bool) -> Vec<Duration> {
    let pg = Postgres::start();
    pg.admin_sql("create table crashlog(id int)");
    let mut agent = Agent::start_with_bin_policies_audit(
        &warden_bin(),
        &format!("  - {{name: main, address: '127.0.0.1:{}', fail: closed}}", pg.port),
        &[],
        testkit::DEFAULT_AUDIT,
        if keeper { "upgrade:\n  keeper: true" } else { "" },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url =
        |app: &str| format!("host=127.0.0.1 port={} user=postgres dbname=postgres application_name={app}", pg.port);
    let (idle, in_tx, idle_conn, tx_conn) = runtime.block_on(async {
        let (idle, idle_conn) = tokio_postgres::connect(&url("crash-idle"), tokio_postgres::NoTls).await.unwrap();
        let idle_conn = tokio::spawn(idle_conn);
        let (in_tx, tx_conn) = tokio_postgres::connect(&url("crash-in-tx"), tokio_postgres::NoTls).await.unwrap();
        let tx_conn = tokio::spawn(tx_conn);
        in_tx.batch_execute("begin; insert into crashlog values (1)").await.unwrap();
        idle.simple_query("select 1").await.unwrap();
        (idle, in_tx, idle_conn, tx_conn)
    });
    // Eight clients connect and query in a loop through the crash and the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, url) = (stop.clone(), url("crash-loop"));
            runtime.spawn(async move {
                let mut attempts = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = Instant::now();
                    let attempt = async {
                        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                        let conn = tokio::spawn(conn);
                        let result = client.simple_query("select 1").await.map(|_| ());
                        drop(client);
                        let _ = conn.await;
                        result
                    };
                    let (ok, timed_out, error) = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                        Ok(r) => (r.is_ok(), false, r.err().map(|e| format!("{e:?}"))),
                        Err(_) => (false, true, None),
                    };
                    attempts.push(Attempt { at, ok, timed_out, error });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                attempts
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killed = agent.serving_pid().expect("an agent serves");
    // kill(2) returns before the agent is gone: until its threads have exited, one may still take
    // a connection and die with it. The kill counts from when it is gone (its files closed).
    let (killed_at, serving_at) = if keeper {
        // The agent, not its keeper: the keeper starts the next one with the sockets it kept.
        // SAFETY: plain kill(2).
        unsafe { libc::kill(killed as i32, libc::SIGKILL) };
        let killed_at = gone_at(killed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.serving_pid() == Some(killed) {
            assert!(Instant::now() < deadline, "the keeper started no agent:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        (killed_at, Instant::now())
    } else {
        agent.kill9(); // returns once the agent is reaped
        let killed_at = Instant::now();
        agent.spawn();
        (killed_at, Instant::now())
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempts: Vec<Vec<Attempt>> = clients.into_iter().map(|c| runtime.block_on(c).unwrap()).collect();

    // Refused, never hung: every attempt ended within its timeout, and every client got through
    // again once the new agent served.
    let mut windows = Vec::new();
    for (i, client) in attempts.iter().enumerate() {
        assert!(!client.iter().any(|a| a.timed_out), "client {i}: an attempt hung");
        assert!(client.iter().any(|a| a.ok && a.at >= serving_at), "client {i} never got through again");
        let mut refused_since = None;
        // An attempt under way when the agent was killed is cut with it (its connection was the
        // dead agent's); refused are the attempts made after.
        for a in client.iter().filter(|a| a.at >= killed_at) {
            match (a.ok, refused_since) {
                (false, None) => {
                    refused_since = Some(a.at);
                    eprintln!("client {i} failed {:?} after the agent was gone: {:?}", a.at - killed_at, a.error);
                }
                (true, Some(since)) => {
                    windows.push(a.at.duration_since(since));
                    refused_since = None;
                }
                _ => {}
            }
        }
    }
    windows.sort();
    let quantile = |q: f64| windows.get(((windows.len() as f64 - 1.0) * q).round() as usize).copied();
    eprintln!(
        "kill -9{}: the next agent served {} ms after the kill; {} attempts by 8 clients, {} cut with the agent; refused windows: {} (p50 {:?}, p99 {:?})",
        if keeper { " under a keeper" } else { ", restarted at once" },
        serving_at.duration_since(killed_at).as_millis(),
        attempts.iter().map(Vec::len).sum::<usize>(),
        attempts.iter().flatten().filter(|a| a.at < killed_at && !a.ok).count(),
        windows.len(),
        quantile(0.5),
        quantile(0.99),
    );

    // The cut sessions: closed on the client side, their server backends ended (the open
    // transaction rolled back), and each recorded as ended by the crash.
    runtime.block_on(async {
        for conn in [idle_conn, tx_conn] {
            tokio::time::timeout(Duration::from_secs(5), conn)
                .await
                .expect("the client sees its connection end")
                .unwrap()
                .ok();
        }
    });
    drop((idle, in_tx));
    assert_eq!(pg.admin_sql("select count(*) from crashlog"), "0", "the open transaction rolled back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.admin_sql("select count(*) from pg_stat_activity where application_name like 'crash-%'") != "0" {
        assert!(Instant::now() < deadline, "a backend of a cut session is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    let records = agent.records();
    for app in ["crash-idle", "crash-in-tx"] {
        let open = records
            .iter()
            .find(|r| r["kind"] == "connection_open" && r["application_name"] == app)
            .unwrap_or_else(|| panic!("no connection_open for {app}"));
        let session = open["session"].clone();
        let close =
            agent.wait_record("the crash close", |r| r["kind"] == "connection_close" && r["session"] == session);
        assert!(
            close["error"].as_str().is_some_and(|e| e.contains("ended by the crash of the agent serving it")),
            "{close}"
        );
        assert_eq!(
            agent.records().iter().filter(|r| r["kind"] == "connection_close" && r["session"] == session).count(),
            1,
            "recorded once"
        );
    }
    verify(&agent);
    windows
}

/// When the process is gone (exited, its files closed): polled finely, since the time counts.
fn gone_at(pid: u32) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if matches!(stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), None | Some("Z")) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "pid {pid} outlived SIGKILL");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Asks the agent for its sockets as a successor would, from a process with fewer privileges.
const IMPOSTOR: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
try:
    s.send(json.dumps({"msg": "hello", "pid": 1, "version": "0"}).encode())
except BrokenPipeError:
    pass  # refused before it greeted: the refusal is still there to read
data, ancillary, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(4 * 253))
print(json.dumps({"reply": json.loads(data or b"null"), "ancillary": len(ancillary)}))
"#;

#[test]
fn root_without_the_agents_capabilities_or_in_its_own_user_namespace_is_refused_the_sockets() {
    let pg = Postgres::start();
    let agent = Agent::start(&governed(&pg));
    let socket = agent.state.join("handover.sock");
    let python = |wrapper: &[&str]| {
        let out = check(Command::new(wrapper[0]).args(&wrapper[1..]).args(["python3", "-c", IMPOSTOR]).arg(&socket));
        serde_json::from_str::<Value>(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    // uid 0 without capabilities, and uid 0 in a user namespace of its own (where it has every
    // capability, as /proc shows it from inside).
    for (wrapper, why) in [
        (&["setpriv", "--bounding-set", "-all", "--"][..], "lacks capabilities"),
        (&["unshare", "-Ur", "--"][..], "user namespace other than the agent's"),
    ] {
        let answer = python(wrapper);
        assert_eq!(answer["ancillary"], 0, "{wrapper:?}: no socket crosses over: {answer}");
        assert_eq!(answer["reply"]["msg"], "refused", "{wrapper:?}: {answer}");
        assert!(answer["reply"]["why"].as_str().is_some_and(|w| w.contains(why)), "{wrapper:?}: {answer}");
    }
    // The agent serves on, unchanged.
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    assert!(agent.log().contains("hand-over abandoned; this agent serves on"));
    assert_eq!(agent.serving_pid(), agent.pid());
}

#[test]
fn under_a_keeper_an_upgrade_is_started_by_the_keeper_which_stays_the_main_process() {
    let pg = Postgres::start();
    pg.admin_sql("create table kept(id int)");
    let agent = Agent::start_with_bin_policies_audit(
        &warden_bin(),
        &governed(&pg),
        &[],
        testkit::DEFAULT_AUDIT,
        "upgrade:\n  keeper: true",
    );
    let keeper = agent.pid().unwrap();
    let first = agent.serving_pid().unwrap();
    let parent_of = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(parent_of(first), keeper, "the agent is the keeper's child");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", pg.port);
    runtime.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        let tx = client.transaction().await.unwrap();
        tx.execute("insert into kept values (1)", &[]).await.unwrap();
        let said = check(Command::new(warden_bin()).args(["upgrade", "--config"]).arg(&agent.config));
        assert!(said.contains("upgraded: pid"), "{said}");
        let second = agent.serving_pid().unwrap();
        assert_ne!(second, first);
        assert_eq!(parent_of(second), keeper, "the keeper started the successor: it stays the main process");
        tx.execute("insert into kept values (2)", &[]).await.unwrap();
        tx.commit().await.expect("the transaction open across the upgrade commits");
        drop(client);
        let _ = conn.await;
        assert!(testkit::wait_gone(first, Duration::from_secs(10)), "the replaced agent drained and exited");
    });
    assert_eq!(pg.admin_sql("select count(*) from kept"), "2");
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    assert!(std::fs::metadata(format!("/proc/{keeper}")).is_ok(), "the keeper runs on");
    verify(&agent);
}
