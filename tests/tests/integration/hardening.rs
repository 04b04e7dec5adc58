//! Attacks a hostile workload can try on what Warden ships, each performed for real: another
//! namespace's loopback, a flow record left by an abandoned connect, the proxy's address during
//! a restart, repeated start-up parameters, resource exhaustion, and statements that run
//! without a record. Run as root through `cargo xtask test`.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    Agent, Netns, PROXY_V4, PgOptions, Postgres, check, output, pgbench_bin, psql_argv, psql_bin,
    raw::{Raw, errors, message, parse, sqlstate, startup_packet},
};

const PYTHON: &str = "/usr/bin/python3";

fn governed_any(port: u16) -> String {
    format!("  - {{name: main, address: '*:{port}'}}")
}

fn in_netns(ns: &Netns, argv: &[String]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]).args(argv);
    c
}

/// A start-up packet with these parameters, in order (repeats included).
// ---------------------------------------------------------------------------------------------
// Network namespaces: the upstream is dialled from the client's own namespace.

#[test]
fn a_pods_loopback_is_the_pods_own_never_the_hosts() {
    // The host's PostgreSQL listens on every address of its port, loopback included.
    let host_pg = Postgres::start_with(PgOptions { conf: "log_connections = on", ..PgOptions::default() });
    let port = host_pg.port;
    let pod = Netns::create(21);
    let agent = Agent::start(&governed_any(port));
    let host_log = || std::fs::read_to_string(host_pg.socket_dir().join("log")).unwrap_or_default();
    let received = |log: &str| log.matches("connection received").count();
    let before = received(&host_log());

    // Nothing listens on the pod's own 127.0.0.1:PORT: the client gets what a direct
    // connection would get (refused), and the host's database is not reached.
    let out = output(&mut in_netns(&pod, &psql_argv("127.0.0.1", port, "select 'reached'")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pod reached a database through its empty loopback");
    assert!(err.contains("Connection refused"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(&host_log()), before, "the host's PostgreSQL saw a connection:\n{}", host_log());
    let close = agent.wait_record("refused session", |r| r["kind"] == "connection_close");
    assert!(close["error"].as_str().is_some_and(|e| e.contains("Connection refused")), "{close}");

    // The pod's own PostgreSQL on its 127.0.0.1:PORT (the sidecar pattern): reached, governed
    // and recorded.
    let pod_pg = Postgres::start_with(PgOptions { netns: Some(&pod), port: Some(port), ..PgOptions::default() });
    pod_pg.admin_sql("create table pod_marker(id int)");
    let out = check(&mut in_netns(
        &pod,
        &psql_argv("127.0.0.1", port, "select count(*) from pg_tables where tablename = 'pod_marker'"),
    ));
    assert_eq!(out.trim(), "1", "the query did not reach the pod's own server");
    let open = agent.wait_record("pod session", |r| {
        r["kind"] == "connection_open" && r["upstream_local"].as_str().is_some_and(|u| u.starts_with("127.0.0.1:"))
    });
    assert_eq!(open["orig_dst"], format!("127.0.0.1:{port}"));
    agent.wait_record("pod statement", |r| {
        r["kind"] == "statement" && r["session"] == open["session"] && r["outcome"] == "completed"
    });
    assert_eq!(received(&host_log()), before, "the host's PostgreSQL saw a connection");
    drop(pod_pg);
}

#[test]
fn a_pods_loopback_is_its_own_for_other_tcp_protocols_too() {
    // A host service on the governed port, on every address.
    let host = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let pod = Netns::create(22);
    let agent = Agent::start(&format!("  - {{name: cache, address: '*:{port}', protocol: tcp}}"));
    // The reset may come before the client's connect() has returned (its non-blocking connect
    // reads the socket's error after the handshake): the same outcome, nothing reached.
    let script = format!(
        "import socket\ntry:\n  s=socket.create_connection(('127.0.0.1',{port}),timeout=5)\n  s.sendall(b'PING')\nexcept ConnectionResetError as e:\n  print('error', e.errno)\n  raise SystemExit\ntry:\n  print(len(s.recv(16)))\nexcept OSError as e:\n  print('error', e.errno)\n"
    );
    let out = check(&mut in_netns(&pod, &[PYTHON.into(), "-c".into(), script]));
    // Reset (or closed) without a byte: nothing listens on the pod's loopback.
    assert!(out.trim() == "0" || out.starts_with("error"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.accept().is_err(), "the host's service on the same port was reached");
    let close = agent.wait_record("close", |r| r["kind"] == "connection_close");
    assert!(close["error"].as_str().is_some_and(|e| e.contains("unreachable")), "{close}");
}

// ---------------------------------------------------------------------------------------------
// Flow records: a record belongs to one connection, never to an address.

const VICTIM: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setblocking(False)
s.bind((sys.argv[1], int(sys.argv[2])))
print(s.connect_ex((sys.argv[3], int(sys.argv[4]))))
time.sleep(0.5)
s.close()
"#;

const CLAIMANT: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
s.connect((sys.argv[3], int(sys.argv[4])))
body = b"\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
s.sendall((len(body) + 4).to_bytes(4, "big") + body)
got = b""
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
except OSError as e:
    print("error", e.errno)
print(len(got))
"#;

#[test]
fn an_abandoned_connects_record_cannot_be_claimed_by_another_socket() {
    let pg = Postgres::start();
    let pod = Netns::create(23);
    let agent = Agent::start(&governed_any(pg.port));
    let source_port = "41234";
    // The victim (a labelled workload) dials the database while its SYNs are lost (the pod's
    // link is down), then gives up: the redirect recorded its flow under its source endpoint.
    check(Command::new("ip").args(["link", "set", &format!("wdnh{}", 23), "down"]));
    let victim: Vec<String> = ["ip", "netns", "exec", &pod.name, PYTHON, "-c", VICTIM, &pod.pod_ip, source_port]
        .iter()
        .map(|s| s.to_string())
        .chain([pod.host_ip.clone(), pg.port.to_string()])
        .collect();
    let out =
        check(&mut agent.exec(&["warden/identity=victim"], &victim.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(out.trim(), "115", "the victim's connect should be in progress (EINPROGRESS)");
    check(Command::new("ip").args(["link", "set", &format!("wdnh{}", 23), "up"]));

    // Another process binds the same source endpoint and dials the proxy directly.
    let (proxy_ip, proxy_port) = PROXY_V4.split_once(':').unwrap();
    let out = check(&mut in_netns(
        &pod,
        &[PYTHON, "-c", CLAIMANT, &pod.pod_ip, source_port, proxy_ip, proxy_port].map(String::from),
    ));
    // Closed without a byte (reset or end of stream): not a single message of a session.
    assert_eq!(out.lines().last(), Some("0"), "the claimant was served as the victim: {out}");
    agent.wait_record("proxy_refused", |r| r["kind"] == "proxy_refused");
    assert!(
        !agent.records().iter().any(|r| r["kind"] == "connection_open"),
        "a session was opened for the claimant: {:#?}",
        agent.records()
    );
    // The victim's record was withdrawn when its socket closed, not merely missed.
    assert!(
        agent.stat("flows_abandoned") >= 1,
        "the abandoned connect left no record to withdraw:\n{}",
        agent.status()
    );
}

// ---------------------------------------------------------------------------------------------
// The proxy's address: no other process can take it, even while the agent restarts.

const TAKEOVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(16)
except OSError as e:
    print("bind-failed", e.errno)
    sys.exit(0)
s.settimeout(float(sys.argv[3]))
try:
    c, a = s.accept()
    print("accepted", a)
except socket.timeout:
    print("no-connection")
"#;

#[test]
fn no_unprivileged_process_can_take_the_proxy_address_during_a_restart() {
    let pg = Postgres::start();
    // A listener port any local process could bind is refused before anything is set up (the
    // old default was 15432).
    let tmp = testkit::temp_dir("warden-port-");
    let dir = tmp.path().to_path_buf();
    let config = dir.join("warden.yaml");
    std::fs::write(
        &config,
        format!(
            "databases:\n  - {{name: main, address: '127.0.0.1:{}'}}\nproxy:\n  listen_v4: 169.254.77.101:15433\n  listen_v6: null\n  interface: null\naudit:\n  path: {}/audit.ring\nstate_dir: {}/state\nbpffs_dir: /sys/fs/bpf/{}\n",
            pg.port,
            dir.display(),
            dir.display(),
            testkit::unique("warden-port-")
        ),
    )
    .unwrap();
    let refused = output(Command::new(testkit::warden_bin()).args(["run", "--config"]).arg(&config));
    drop(tmp);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "an unprivileged proxy port was accepted");
    assert!(said.contains("is not privileged") && said.contains("allow_unprivileged_port"), "{said}");
    let mut agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}', fail: closed}}", pg.port));
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    let (ip, port) = PROXY_V4.split_once(':').unwrap();
    agent.stop();
    // While no agent serves, a non-root user tries to take the proxy's address and waits for
    // redirected clients; a governed client connects meanwhile.
    let takeover = Command::new("runuser")
        .args(["-u", "nobody", "--", PYTHON, "-c", TAKEOVER, ip, port, "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client = output(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    assert!(!client.status.success(), "a governed client got through while no agent served");
    let out = takeover.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), "bind-failed 13", "the proxy's address was taken: {said}");
    // The next agent binds and serves.
    agent.spawn();
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
}

#[test]
fn an_agent_that_cannot_listen_says_who_holds_the_address_and_fails_closed() {
    let pg = Postgres::start();
    let mut agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}', fail: closed}}", pg.port));
    agent.stop();
    // A root process (the only kind that can) holds the address without joining the group.
    let (ip, port) = PROXY_V4.split_once(':').unwrap();
    let held = std::net::TcpListener::bind((ip, port.parse::<u16>().unwrap())).expect("bind as root");
    let failure = agent.try_spawn().expect_err("the agent must not start without its listener");
    assert!(failure.contains("held by pid") && failure.contains(&std::process::id().to_string()), "{failure}");
    // The kernel side keeps failing closed, at once.
    let out = output(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
    drop(held);
    agent.spawn();
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
}

// ---------------------------------------------------------------------------------------------
// Start-up: one reading of the packet, the server's.

#[test]
fn repeated_start_up_parameters_are_refused_and_the_role_is_recorded() {
    let pg = Postgres::start_with(PgOptions { hba: "host replication all 127.0.0.1/32 trust", ..PgOptions::default() });
    pg.admin_sql("create role app_reader");
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let addr = format!("127.0.0.1:{}", pg.port);
    let cases: [&[(&str, &str)]; 4] = [
        &[("user", "postgres"), ("replication", "false"), ("database", "postgres"), ("replication", "database")],
        &[("user", "nobody"), ("database", "postgres"), ("user", "postgres")],
        &[("user", "postgres"), ("database", "template1"), ("database", "postgres")],
        &[("user", "postgres"), ("role", "app_reader"), ("ROLE", "postgres")],
    ];
    for params in cases {
        let mut raw = Raw::connect(&addr);
        raw.send(&startup_packet(params));
        let answer = raw.until_ready();
        assert_eq!(errors(&answer), vec!["08P01".to_string()], "{params:?}: {answer:?}");
        assert_eq!(answer.last().map(|m| m.0), Some(0), "{params:?}: the connection must end");
    }
    let walsenders = pg.admin_sql("select count(*) from pg_stat_replication");
    assert_eq!(walsenders, "0", "a replication connection was started");
    assert!(!agent.records().iter().any(|r| r["kind"] == "connection_open" && r["upstream_local"].is_string()));

    // The role a session acts as is recorded beside the login user.
    let out = check(
        Command::new(psql_bin())
            .args([
                "-X",
                "-tA",
                "-U",
                "postgres",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-c",
                "select current_user",
            ])
            .env("PGOPTIONS", "-c role=app_reader"),
    );
    assert_eq!(out.trim(), "app_reader");
    let open = agent.wait_record("session with a role", |r| r["kind"] == "connection_open" && r["db_role"].is_string());
    assert_eq!((open["db_user"].as_str(), open["db_role"].as_str()), (Some("postgres"), Some("app_reader")));
}

// ---------------------------------------------------------------------------------------------
// Resource limits: one tenant does not stall the others.

fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer for getrlimit; setrlimit with the hard limit read just now.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_floods_slow_start_ups_and_pathological_statements_do_not_stall_another_identity() {
    raise_fd_limit();
    let pg = Postgres::start();
    pg.pgbench_init(1);
    let agent =
        Agent::start_custom(&governed_any(pg.port), "  max_connections_per_identity: 600", testkit::DEFAULT_AUDIT);
    let pid = agent.pid().unwrap();
    let rss_before = rss_kib(pid);
    let addr = format!("127.0.0.1:{}", pg.port);

    // Another identity's load, running throughout.
    let bench_argv: Vec<String> = [pgbench_bin().display().to_string()]
        .into_iter()
        .chain(
            ["-n", "-S", "-c", "2", "-j", "1", "-T", "12", "-P", "1", "-h", "127.0.0.1", "-U", "postgres", "-p"]
                .map(String::from),
        )
        .chain([pg.port.to_string(), "postgres".into()])
        .collect();
    let bench = agent
        .exec(&["warden/identity=bench"], &bench_argv.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // A statement built to make a quadratic lexer spin: ~1.5 MB of unterminated dollar quotes.
    let started = Instant::now();
    let mut quad = Raw::login(&addr);
    let text: String = (0..150_000).map(|i| format!("$t{i}$ ")).collect();
    let mut body = text.into_bytes();
    body.push(0);
    quad.send(&message(b'Q', &body));
    let answer = quad.until_ready();
    assert_eq!(errors(&answer), vec!["42601".to_string()], "the server's own syntax error comes back");
    eprintln!("pathological statement answered in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "the pathological statement stalled its worker");
    drop(quad);

    // A slow start-up attacker: one byte every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let stop = stop.clone();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            for b in startup_packet(&[("user", "postgres")]) {
                if stop.load(Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The pathological session's slot is released once the agent sees it close.
    std::thread::sleep(Duration::from_millis(500));

    // 1,000 idle connections from the same identity as the slow attacker: with its one, 600
    // are held, the rest refused with 53300.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(&addr).expect("idle connection"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut refused = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf)
            && n > 0
            && buf[0] == b'E'
        {
            assert_eq!(sqlstate(&buf[5..n]), "53300");
            refused += 1;
        }
    }
    assert_eq!(refused, 401, "600 connections of one identity held, the rest refused");
    let rss_during = rss_kib(pid);

    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{report}\n{progress}");
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    // Every progress line of the run reports transactions: no second passed without any.
    let stalled: Vec<&str> =
        progress.lines().filter(|l| l.starts_with("progress:") && l.contains(" 0.0 tps")).collect();
    assert!(stalled.is_empty(), "another identity stalled:\n{progress}");
    stop.store(true, Ordering::Relaxed);
    let _ = slow.join();
    eprintln!("agent RSS: {rss_before} KiB at start, {rss_during} KiB with 1,000 idle connections");
    assert!(rss_during < 256 * 1024, "agent RSS {rss_during} KiB with 1,000 idle connections");
    drop(idle);
}

// ---------------------------------------------------------------------------------------------
// The audit trail: statements that run are recorded, and no tenant can erase the others.

#[test]
fn statements_are_recorded_when_forwarded_whatever_the_client_does_next() {
    let pg = Postgres::start();
    pg.admin_sql("create table t(id int); insert into t select generate_series(1, 30)");
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let addr = format!("127.0.0.1:{}", pg.port);

    // A DELETE sent, and the client gone at once: the server commits it; it is recorded.
    let mut raw = Raw::login(&addr);
    raw.send(&message(b'Q', b"delete from t where id <= 10\0"));
    raw.0.shutdown(std::net::Shutdown::Both).unwrap();
    drop(raw);
    let delete = agent.wait_record("the DELETE", |r| {
        r["kind"] == "statement" && r["text"] == "delete from t where id <= ?" && r["outcome"] == "completed"
    });
    assert_eq!((delete["rows"].as_u64(), delete["command_tag"].as_str()), (Some(10), Some("DELETE 10")));
    assert_eq!(pg.admin_sql("select count(*) from t"), "20");

    // A fast-path function call is recorded by the function it runs.
    let oid: u32 = pg.admin_sql("select 'int4pl'::regproc::oid").parse().unwrap();
    let mut raw = Raw::login(&addr);
    let mut call = oid.to_be_bytes().to_vec();
    call.extend([0, 1, 0, 1]); // one format code: binary
    call.extend([0, 2]); // two arguments
    for v in [40i32, 2] {
        call.extend(4i32.to_be_bytes());
        call.extend(v.to_be_bytes());
    }
    call.extend([0, 1]); // binary result
    raw.send(&message(b'F', &call));
    let answer = raw.until_ready();
    let result = answer.iter().find(|m| m.0 == b'V').expect("FunctionCallResponse");
    assert_eq!(&result.1[4..8], &42i32.to_be_bytes());
    let fastpath =
        agent.wait_record("the fast-path call", |r| r["kind"] == "statement" && r["protocol"] == "function_call");
    assert_eq!(fastpath["function_oid"], oid);
    assert_eq!((fastpath["class"].as_str(), fastpath["outcome"].as_str()), (Some("unknown"), Some("completed")));

    // An Execute with a row limit: DELETE ... RETURNING runs in full, one row comes back, the
    // portal is suspended. Recorded, with what it returned.
    let mut parse = b"\0delete from t where id > 10 returning id\0".to_vec();
    parse.extend([0, 0]);
    let mut batch = message(b'P', &parse);
    batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\x01"));
    batch.extend(message(b'S', b""));
    raw.send(&batch);
    let answer = raw.until_ready();
    let tags: Vec<u8> = answer.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"12DsZ".to_vec(), "{answer:?}");
    assert_eq!(pg.admin_sql("select count(*) from t"), "0", "the DELETE ran in full");
    let suspended = agent.wait_record("the suspended DELETE", |r| {
        r["kind"] == "statement" && r["text"] == "delete from t where id > ? returning id"
    });
    assert_eq!((suspended["outcome"].as_str(), suspended["rows"].as_u64()), (Some("suspended"), Some(1)));
    assert_eq!(suspended["protocol"], "extended");
}

#[test]
fn one_tenants_huge_statements_do_not_evict_everyone_elses_history() {
    let pg = Postgres::start();
    // The tests' ring is 16 MiB: each statement below is close to a quarter of it.
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    check(&mut agent.exec_psql(
        &["warden/identity=bystander"],
        "127.0.0.1",
        pg.port,
        "select 'the bystander was here'",
    ));
    let bystander = agent.wait_record("bystander", |r| r["kind"] == "statement" && r["outcome"] == "completed");
    let addr = format!("127.0.0.1:{}", pg.port);
    let mut flood = Raw::login(&addr);
    for i in 0..5 {
        // A comment is kept by normalisation: the recorded text is as long as the statement.
        let mut body = format!("select {i} /* {} */", "x".repeat(3_900_000)).into_bytes();
        body.push(0);
        flood.send(&message(b'Q', &body));
        let answer = flood.until_ready();
        assert!(errors(&answer).is_empty(), "{answer:?}");
    }
    drop(flood);
    let records = agent.records();
    assert!(
        records.iter().any(|r| r["kind"] == "statement" && r["session"] == bystander["session"]),
        "the bystander's statement was evicted"
    );
    let huge: Vec<&Value> =
        records.iter().filter(|r| r["kind"] == "statement" && r["text_bytes"].as_u64() > Some(1_000_000)).collect();
    assert_eq!(huge.len(), 5, "every huge statement is recorded");
    for r in huge {
        assert!(r["text"].as_str().unwrap().len() <= 8192, "recorded text is capped");
        assert_eq!(r["text_sha256"].as_str().map(str::len), Some(64), "{r}");
        assert_eq!(r["outcome"], "completed");
    }
    let stats: Value = serde_json::from_slice(&agent.audit_cli(&["stats", "-o", "json"]).stdout).unwrap();
    assert_eq!(stats["overwritten"], 0, "{stats}");
}

#[test]
fn a_container_id_outside_the_runtimes_roots_is_not_believed() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    // A delegated subtree (what a user with systemd delegation can create) shaped like a pod.
    let root = Path::new("/sys/fs/cgroup/unified");
    let root = if root.join("cgroup.procs").exists() { root.to_path_buf() } else { Path::new("/sys/fs/cgroup").into() };
    let base = root.join(testkit::unique("wdn-forge-"));
    let id = "3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
    let leaf = base.join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6.slice/cri-containerd-{id}.scope"
    ));
    std::fs::create_dir_all(&leaf).unwrap();
    let argv =
        psql_argv("127.0.0.1", pg.port, "select 1").iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    let out =
        output(Command::new("sh").args(["-c", &format!("echo $$ > {}/cgroup.procs && exec {argv}", leaf.display())]));
    let open = agent.wait_record("connection", |r| r["kind"] == "connection_open");
    // Clean up the fake tree, deepest first.
    let mut dir = leaf.clone();
    while dir.starts_with(&base) {
        let _ = std::fs::remove_dir(&dir);
        dir = dir.parent().unwrap().to_path_buf();
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let identity = &open["identity"];
    assert!(identity["cgroup"].as_str().is_some_and(|c| c.contains("cri-containerd")), "{identity}");
    assert_eq!(identity["container_id"], Value::Null, "a forged container id was believed: {identity}");
    assert_eq!(identity["pod_uid"], Value::Null, "a forged pod UID was believed: {identity}");
}

#[test]
fn the_audit_ring_and_its_key_are_readable_by_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.audit), 0o600, "{}", agent.audit.display());
    let mut key = agent.audit.clone().into_os_string();
    key.push(".key");
    assert_eq!(mode(Path::new(&key)), 0o600);
    // Another user cannot read what tenants did.
    let out = output(Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(&agent.audit));
    assert!(!out.status.success(), "nobody read the audit ring");
}

// ---------------------------------------------------------------------------------------------
// Coverage: what the configuration does not govern is said, with the fix.

#[test]
fn check_config_names_what_it_does_not_govern() {
    // A local PostgreSQL's unix socket in a standard directory, and the port written as an
    // unspecified address instead of `*:PORT`.
    let port = testkit::free_port();
    let socket = Path::new("/tmp").join(format!(".s.PGSQL.{port}"));
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("unix socket");
    let tmp = testkit::temp_dir("warden-cc-");
    let dir = tmp.path().to_path_buf();
    let config = dir.join("warden.yaml");
    std::fs::write(&config, format!("databases:\n  - {{name: local, address: '0.0.0.0:{port}'}}\n")).unwrap();
    let out = output(Command::new(testkit::warden_bin()).args(["check-config"]).arg(&config));
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    drop(tmp);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("'*:{port}'")), "no advice for 0.0.0.0: {said}");
    assert!(
        said.contains(&socket.display().to_string()) && said.contains("local all all reject"),
        "no warning for the unix socket: {said}"
    );
}

// ---------------------------------------------------------------------------------------------
// What is judged and recorded is what the server runs.

#[test]
fn a_reused_statement_name_is_never_recorded_as_the_text_the_server_refused() {
    let pg = Postgres::start();
    pg.admin_sql("create table t(id int); insert into t values (1), (2)");
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let mut raw = Raw::login(&format!("127.0.0.1:{}", pg.port));
    let parse = |sql: &str| {
        let mut body = b"s\0".to_vec();
        body.extend(sql.as_bytes());
        body.extend([0, 0, 0]);
        message(b'P', &body)
    };
    let mut first = parse("delete from t where id = 1");
    first.extend(message(b'S', b""));
    raw.send(&first);
    assert!(errors(&raw.until_ready()).is_empty());
    // The same name again: the server refuses the Parse (42P05), keeps the DELETE, and runs it
    // for the Bind that follows.
    let mut second = parse("select 1");
    second.extend(message(b'S', b""));
    second.extend(message(b'B', b"\0s\0\0\0\0\0\0\0"));
    second.extend(message(b'E', b"\0\0\0\0\0"));
    second.extend(message(b'S', b""));
    raw.send(&second);
    assert_eq!(errors(&raw.until_ready()), vec!["42P05".to_string()]);
    let ran = raw.until_ready();
    assert!(ran.iter().any(|m| m.0 == b'C' && m.1.starts_with(b"DELETE 1")), "{ran:?}");
    assert_eq!(pg.admin_sql("select count(*) from t"), "1");
    let delete = agent.wait_record("the DELETE as run", |r| {
        r["kind"] == "statement" && r["protocol"] == "extended" && r["outcome"] == "completed"
    });
    // Which text "s" held was not known until the server answered the Parse: never the SELECT,
    // recorded (and judged) as unknown.
    assert_eq!(delete["class"], "unknown", "not recorded as the SELECT: {delete}");
    assert_ne!(delete["text"], "select ?", "{delete}");
}

#[test]
fn the_unspecified_address_is_governed_as_the_loopback_it_reaches() {
    let pg = Postgres::start();
    // Governed on loopback only: 0.0.0.0 reaches it all the same.
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    check(&mut testkit::psql("0.0.0.0", pg.port, "select 1"));
    let open = agent.wait_record("connection through 0.0.0.0", |r| r["kind"] == "connection_open");
    assert_eq!(open["orig_dst"], format!("127.0.0.1:{}", pg.port));
}

#[test]
fn a_statement_too_deep_to_parse_does_not_bring_the_agent_down() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let mut raw = Raw::login(&format!("127.0.0.1:{}", pg.port));
    // A left-deep expression: parsed naively, dropping its tree overflows a thread's stack.
    let mut body = format!("select {}", vec!["1"; 50_000].join("+")).into_bytes();
    body.push(0);
    raw.send(&message(b'Q', &body));
    let answer = raw.until_ready();
    assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "{:?}", errors(&answer));
    let r = agent.wait_record("the deep statement", |r| r["kind"] == "statement");
    assert_eq!(r["class"], "unknown");
    // The agent is still there, serving.
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
}

// ---------------------------------------------------------------------------------------------
// The audit trail's own defences, attacked on a real ring.

#[test]
fn a_ring_rewritten_without_its_seals_fails_verify() {
    use warden::audit::ring::{Kind, Ring, RingFile};
    let pg = Postgres::start();
    let mut agent = Agent::start_with_audit(
        &testkit::warden_bin(),
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        "  ring_bytes: 16777216\n  seal_every: 5",
    );
    for i in 0..20 {
        check(&mut testkit::psql("127.0.0.1", pg.port, &format!("select {i}")));
    }
    agent.stop();
    // With the agent's configuration, verify knows its key and how often it seals.
    let verify = |ring: &Path| {
        output(
            Command::new(testkit::warden_bin())
                .args(["audit", "verify", "--config"])
                .arg(&agent.config)
                .arg("--ring")
                .arg(ring),
        )
    };
    assert!(verify(&agent.audit).status.success(), "the agent's own ring verifies");
    // Someone able to write the ring rewrites it without the seals: every checksum and chain
    // hash is valid again, only the seals (HMAC under a key they do not have) are gone.
    let forged = agent.dir.join("forged.ring");
    let records = RingFile::open(&agent.audit).unwrap().records(0);
    let mut ring = Ring::open(&forged, 16_777_216).unwrap();
    for r in records.iter().filter(|r| r.kind == Kind::Event) {
        ring.append(Kind::Event, r.at_ms, &r.payload).unwrap();
    }
    drop(ring);
    let out = verify(&forged);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a ring stripped of its seals passed verify:\n{report}");
    assert!(report.contains("not sealed"), "{report}");
}

#[test]
fn a_statement_cannot_rewrite_the_operators_terminal() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    // A comment survives normalisation: the recorded text holds the escape sequences.
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1 /* \x1b[2J\x1b]0;pwned\x07 \u{202e}txt.exe */"));
    agent.wait_record("the statement", |r| r["kind"] == "statement" && r["outcome"] == "completed");
    for args in [&["tail"][..], &["query", "--kind", "statement"]] {
        let out = agent.audit_cli(args);
        assert!(out.status.success());
        let shown = &out.stdout;
        assert!(!shown.contains(&0x1b) && !shown.contains(&0x07), "raw control bytes reach the terminal");
        assert!(!String::from_utf8_lossy(shown).contains('\u{202e}'), "a bidi override reaches the terminal");
        assert!(String::from_utf8_lossy(shown).contains("\\x1b"), "shown as a visible escape");
    }
}

#[test]
fn a_statement_swapped_under_a_bound_sql_execute_is_refused_before_it_runs() {
    let pg = Postgres::start();
    pg.admin_sql("create table t(id int); insert into t values (1), (2)");
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: everyone}\nspec:\n  selector: {}\n  rules:\n    - {name: no-unscoped, match: {class: [write], unscoped: true}, action: deny}\n  default: allow\n";
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("everyone.yaml", policy)],
    );
    let mut raw = Raw::login(&format!("127.0.0.1:{}", pg.port));
    let mut first = parse("p", "select 1");
    first.extend(parse("x", "execute p"));
    first.extend(message(b'S', b""));
    raw.send(&first);
    assert!(errors(&raw.until_ready()).is_empty());
    // Bind x (EXECUTE p: a read now), then p replaced by an unscoped DELETE before the Execute.
    let mut second = message(b'B', b"\0x\0\0\0\0\0\0\0");
    second.extend(message(b'C', b"Sp\0"));
    second.extend(parse("p", "delete from t"));
    second.extend(message(b'E', b"\0\0\0\0\0"));
    second.extend(message(b'S', b""));
    raw.send(&second);
    let answer = raw.until_ready();
    assert_eq!(errors(&answer), vec!["42501".to_string()], "{answer:?}");
    assert_eq!(pg.admin_sql("select count(*) from t"), "2", "nothing was deleted");
    // Bound afresh, the Execute itself is judged as what p holds when it runs.
    let mut third = parse("p2", "select 1");
    third.extend(parse("y", "execute p2"));
    third.extend(message(b'B', b"\0y\0\0\0\0\0\0\0"));
    third.extend(message(b'E', b"\0\0\0\0\0"));
    third.extend(message(b'S', b""));
    raw.send(&third);
    let answer = raw.until_ready();
    assert!(errors(&answer).is_empty(), "{answer:?}");
    drop(agent);
}

/// Behind a statement that may begin a COPY FROM STDIN, the client's next messages wait for the
/// server's answer, and what the client sends meanwhile is read ahead only up to a bound: a
/// client streaming such statements (and reading the answers, so the server keeps going) meets
/// backpressure, and the agent's memory stays flat.
#[test]
fn a_client_whose_every_statement_waits_for_the_server_cannot_grow_the_agents_memory() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let pid = agent.pid().expect("the agent runs");
    let raw = Raw::login(&format!("127.0.0.1:{}", pg.port));
    let mut reader = raw.0.try_clone().expect("clone");
    let mut writer = raw.0;
    let done = Arc::new(AtomicBool::new(false));
    let drain = {
        let done = done.clone();
        std::thread::spawn(move || {
            reader.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            let mut sink = vec![0u8; 1 << 16];
            while !done.load(Ordering::Relaxed) {
                if let Ok(0) = reader.read(&mut sink) {
                    break;
                }
            }
        })
    };
    let before = rss_kib(pid);
    let batch: Vec<u8> = (0..4096).flat_map(|_| testkit::raw::query("select 'copy'")).collect();
    writer.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let (started, mut sent) = (Instant::now(), 0usize);
    while started.elapsed() < Duration::from_secs(5) {
        match writer.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("the session ended: {e}"),
        }
    }
    let during = rss_kib(pid);
    done.store(true, Ordering::Relaxed);
    drop(writer);
    let _ = drain.join();
    assert!(sent > 1 << 20, "the client got to send ({sent} bytes)");
    assert!(
        during < before + 64 * 1024,
        "the agent grew from {before} KiB to {during} KiB while the client sent {sent} bytes"
    );
}
