//! The per-host audit ring end to end: records from traffic through the redirect with the right
//! identity, the audit CLI, crash safety under load, tamper detection, wrap-around, and the
//! OTLP/HTTP exporter.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Agent, DEFAULT_AUDIT, Postgres, check, pgbench_bin, psql_argv, warden_bin};

fn governed(pg: &Postgres) -> String {
    format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port)
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "audit CLI failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[test]
fn statements_are_recorded_with_identity_and_the_cli_finds_them() {
    let pg = Postgres::start();
    pg.admin_sql("create table orders(id int primary key, total numeric, note text)");
    let agent = Agent::start(&governed(&pg));
    let sql = "insert into orders values (1, 9.99, 'secret note'); \
               select id, total from orders where note = 'secret note' \
               /*application='recsys',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/";
    let argv = psql_argv("127.0.0.1", pg.port, sql);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    check(&mut agent.exec(&["warden/identity=it-audit", "team=data"], &argv));
    let argv = psql_argv("127.0.0.1", pg.port, "select count(*) from orders");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    check(&mut agent.exec(&["warden/identity=someone-else"], &argv));

    let statement = agent.wait_record("statement", |r| r["kind"] == "statement" && r["class"] == "write");
    assert_eq!(statement["text"], "insert into orders values (?, ?, ?)", "literals are normalised by default");
    assert_eq!(statement["relations"], serde_json::json!(["orders"]));
    assert_eq!(statement["rows"], 1);
    assert_eq!(statement["verdict"]["decision"], "allow");
    assert_eq!(statement["command_tag"], "INSERT 0 1");
    assert_eq!(statement["tags"]["application"], "recsys");
    assert!(statement["tags"]["traceparent"].as_str().unwrap().starts_with("00-5bd66ef5"));
    let select = agent.wait_record("select", |r| {
        r["kind"] == "statement" && r["class"] == "read" && r["session"] == statement["session"]
    });
    assert_eq!(select["rows"], 1);
    // No value of the data reaches the ring.
    let ring = std::fs::read(&agent.audit).unwrap();
    assert!(!ring.windows(11).any(|w| w == b"secret note"), "a literal leaked into the ring");

    // query --identity joins statements to the identity of their session.
    let mine = lines(&agent.audit_cli(&["query", "--identity", "it-audit", "-o", "json"]));
    assert!(mine.iter().any(|r| r["kind"] == "connection_open" && r["identity"]["labels"]["team"] == "data"));
    assert_eq!(mine.iter().filter(|r| r["kind"] == "statement").count(), 2, "{mine:#?}");
    let others = lines(&agent.audit_cli(&[
        "query",
        "--label",
        "warden/identity=someone-else",
        "--kind",
        "statement",
        "-o",
        "json",
    ]));
    assert_eq!(others.len(), 1);
    assert_eq!(others[0]["text"], "select count(*) from orders");
    assert!(lines(&agent.audit_cli(&["query", "--database", "nope", "-o", "json"])).is_empty());
    assert!(lines(&agent.audit_cli(&["query", "--since", "1h", "--kind", "statement", "-o", "json"])).len() >= 3);
    assert!(lines(&agent.audit_cli(&["query", "--verdict", "deny", "-o", "json"])).is_empty());

    // show / replay a session, human output.
    let session = statement["session"].as_u64().unwrap().to_string();
    let show = agent.audit_cli(&["show", &session]);
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("connection_open") && show.contains("statement") && show.contains("connection_close"),
        "{show}"
    );
    let replay = agent.audit_cli(&["replay", &session]);
    let replay = String::from_utf8_lossy(&replay.stdout);
    let insert_at = replay.find("insert into orders").expect("insert replayed");
    let select_at = replay.find("select id, total").expect("select replayed");
    assert!(insert_at < select_at, "{replay}");
    assert!(replay.contains("2 statements, 2 rows, 0 errors, 0 refused"), "{replay}");
    assert!(!agent.audit_cli(&["replay", "12345"]).status.success(), "an unknown session is an error");

    // verify with the sealing key; stats.
    let verify = Command::new(warden_bin()).args(["audit", "verify", "--config"]).arg(&agent.config).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let stats = lines(&agent.audit_cli(&["stats", "-o", "json"]));
    assert!(stats[0]["by_kind"]["statement"].as_u64().unwrap() >= 3);
}

#[test]
fn kill_9_under_load_loses_nothing_written_and_tampering_is_found() {
    let pg = Postgres::start();
    pg.pgbench_init(1);
    let mut agent = Agent::start(&governed(&pg));
    let load = Command::new(pgbench_bin())
        .args([
            "-n",
            "-S",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "20",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &pg.port.to_string(),
            "postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Everything in the ring at this moment has been written; the agent dies right after.
    let before = lines(&agent.audit_cli(&["stats", "-o", "json"]))[0]["last_seq"].as_u64().unwrap();
    agent.kill9();
    let mut load = load;
    let _ = load.kill();
    let _ = load.wait();
    assert!(before > 100, "load produced records ({before})");
    let verify = agent.audit_cli(&["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    // Every record written up to `before` is either still in the ring or was overwritten by
    // newer ones (counted); none is missing in between.
    // The records as written (the default view merges each statement's outcome into it).
    let all = lines(&agent.audit_cli(&["export", "--raw"]));
    let seals = lines(&agent.audit_cli(&["query", "--kind", "seal", "-o", "json"]));
    assert!(!seals.is_empty(), "the chain was sealed along the way");
    let seqs: std::collections::BTreeSet<u64> =
        all.iter().chain(seals.iter()).filter_map(|r| r["seq"].as_u64()).collect();
    let first = *seqs.first().unwrap();
    let stats = lines(&agent.audit_cli(&["stats", "-o", "json"]))[0].clone();
    assert_eq!(stats["overwritten"].as_u64().unwrap(), first - 1, "{stats}");
    for seq in first..=before {
        assert!(seqs.contains(&seq), "record {seq} lost (ring holds {first}..)");
    }
    // The agent comes back and continues the same chain.
    agent.spawn();
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 1"));
    agent.wait_record("statement after restart", |r| r["kind"] == "statement" && r["seq"].as_u64() > Some(before));
    agent.stop();
    let verify = Command::new(warden_bin()).args(["audit", "verify", "--config"]).arg(&agent.config).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    // A copy with one flipped byte in the middle: verify finds it (offline, on the copy).
    let copy = agent.dir.join("copy.ring");
    let mut bytes = std::fs::read(&agent.audit).unwrap();
    let target = bytes.windows(9).position(|w| w == b"statement").expect("a statement record") + 20;
    bytes[target] ^= 0x20;
    std::fs::write(&copy, &bytes).unwrap();
    let out = Command::new(warden_bin()).args(["audit", "verify", "--ring"]).arg(&copy).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && report.contains("checksum mismatch"), "{report}");
}

#[test]
fn a_full_ring_keeps_the_newest_records() {
    let pg = Postgres::start();
    pg.pgbench_init(1);
    // One identity fills the ring here: fair shares off, so wrap-around itself is what is tested.
    let audit = "  ring_bytes: 65536\n  seal_every: 50\n  identity_share: 1.0";
    let agent = Agent::start_with_audit(&warden_bin(), &governed(&pg), audit);
    let out = check(Command::new(pgbench_bin()).args([
        "-n",
        "-S",
        "-c",
        "2",
        "-t",
        "300",
        "-M",
        "prepared",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
        &pg.port.to_string(),
        "postgres",
    ]));
    assert!(out.contains("600/600"), "{out}");
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 'the very last statement'"));
    agent.wait_record("last statement", |r| r["kind"] == "statement" && r["text"] == "select ?");
    let stats = lines(&agent.audit_cli(&["stats", "-o", "json"]))[0].clone();
    assert!(stats["overwritten"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["capacity_bytes"].as_u64().unwrap() == 65536);
    let records = agent.records();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(records.last().unwrap()["kind"], "connection_close", "the newest survive");
    let verify = agent.audit_cli(&["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// A minimal OTLP/HTTP collector: accepts POSTs, keeps the bodies, answers 200.
fn collector() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Read headers, then Content-Length bytes of body.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + len {
                        kept.lock().unwrap().push(String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    (port, bodies)
}

#[test]
fn records_are_exported_as_otlp_logs_and_kept_locally() {
    let (port, bodies) = collector();
    let pg = Postgres::start();
    let audit = format!("{DEFAULT_AUDIT}\n  export: {{kind: otlp-http, endpoint: 'http://127.0.0.1:{port}/v1/logs'}}");
    let agent = Agent::start_with_audit(&warden_bin(), &governed(&pg), &audit);
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 'exported'"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let found = bodies.lock().unwrap().iter().find(|b| b.contains("\\\"kind\\\":\\\"statement\\\"")).cloned();
        if let Some(b) = found {
            break b;
        }
        assert!(Instant::now() < deadline, "nothing exported; agent log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let doc: Value = serde_json::from_str(&body).unwrap();
    let logs = &doc["resourceLogs"][0];
    assert_eq!(logs["resource"]["attributes"][0]["value"]["stringValue"], "warden");
    let records = logs["scopeLogs"][0]["logRecords"].as_array().unwrap();
    let statement = records
        .iter()
        .find(|r| r["attributes"][0]["value"]["stringValue"] == "statement")
        .expect("statement log record");
    let inner: Value = serde_json::from_str(statement["body"]["stringValue"].as_str().unwrap()).unwrap();
    assert_eq!(inner["text"], "select ?");
    // The local ring still has everything.
    assert!(agent.records().iter().any(|r| r["kind"] == "statement"));
    let _ = Stdio::null();
}

#[test]
fn records_that_cannot_be_queued_are_counted_never_silently_lost() {
    let pg = Postgres::start();
    // A one-record queue: a burst of statements outruns the writer.
    let agent = Agent::start_with_audit(&warden_bin(), &governed(&pg), "  ring_bytes: 16777216\n  queue: 1");
    let burst: String = (0..300).map(|i| format!("select {i};")).collect();
    check(&mut testkit::psql("127.0.0.1", pg.port, &burst));
    // Every statement (and both connection records) ends up in the ring or counted as lost;
    // the count settles once the session's last records are handled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = lines(&agent.audit_cli(&["stats", "-o", "json"]))[0].clone();
        let count = |k: &str| stats["by_kind"][k].as_u64().unwrap_or(0);
        let lost = stats["lost"].as_u64().unwrap();
        // A statement that completed before the writer took it is one record with its outcome.
        let raw = lines(&agent.audit_cli(&["export", "--raw"]));
        let with_outcome = raw.iter().filter(|r| r["kind"] == "statement" && r["outcome"].is_string()).count() as u64;
        let accounted = count("statement")
            + with_outcome
            + count("statement_end")
            + count("connection_open")
            + count("connection_close")
            + lost;
        // 300 statements, each recorded when forwarded and again when it completed, and the
        // connection's two records.
        if accounted == 602 {
            eprintln!("queue-1 burst: {} statements recorded, {lost} lost", count("statement"));
            // Each recorded statement of the 300-statement string is its own, not the string.
            let texts = lines(&agent.audit_cli(&["query", "--kind", "statement", "-o", "json"]));
            assert!(texts.iter().all(|r| r["text"] == "select ?"), "{texts:?}");
            break;
        }
        assert!(accounted < 602, "more records than events: {stats}");
        assert!(Instant::now() < deadline, "records neither written nor counted: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
