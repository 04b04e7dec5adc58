//! Statements held for approval inside their own session, decided from the CLI over the admin
//! API, through the real redirect against a real PostgreSQL: approved and run, denied, timed
//! out, approved for a while, held in a transaction and in a pipeline, abandoned by the client,
//! refused by a stopping agent, self-approval refused, sessions listed and ended, and who may
//! reach the admin API at all.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Agent, Postgres, output, psql_bin, warden_bin, workspace_root};

const AGENT: [&str; 2] = ["warden/kind=agent", "warden/identity=it-approvals"];

fn policy(webhook: &str) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1\n\
         kind: DatabasePolicy\n\
         metadata: {{name: held-writes}}\n\
         spec:\n\
         \x20 selector: {{matchLabels: {{warden/kind: agent}}}}\n\
         \x20 approval: {{timeout: 60s{webhook}}}\n\
         \x20 rules:\n\
         \x20   - {{name: log, match: {{class: [write], relations: [\"*.pipelog\"]}}, action: allow}}\n\
         \x20   - {{name: quick, match: {{class: [write], relations: [\"*.ledger\"]}}, action: require_approval, approval: {{timeout: 2s}}}}\n\
         \x20   - {{name: windowed, match: {{class: [write], relations: [\"*.notes\"]}}, action: require_approval, approval: {{grant: 10m}}}}\n\
         \x20   - {{name: writes, match: {{class: [write]}}, action: require_approval}}\n"
    )
}

fn fixture(pg: &Postgres) {
    pg.admin_sql(
        "create table accounts(id int primary key, owner text); \
         insert into accounts select g, 'owner' || g from generate_series(1, 9) g; \
         create table ledger(id int); insert into ledger values (1); \
         create table notes(id int, note text); insert into notes values (1, 'a'), (2, 'b'), (3, 'c'); \
         create table pipelog(note text)",
    );
}

/// `warden ARGS --config CONFIG` (the CLI on the host, as root).
fn cli(agent: &Agent, args: &[&str]) -> Output {
    output(Command::new(warden_bin()).args(args).arg("--config").arg(&agent.config))
}

fn cli_json(agent: &Agent, args: &[&str]) -> Vec<Value> {
    let out = cli(agent, &[args, &["-o", "json"]].concat());
    assert!(out.status.success(), "warden {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

/// A psql in the background and the script file it reads, removed once it has ended.
struct Script {
    child: Child,
    _file: tempfile::NamedTempFile,
}

/// A labelled psql running `script` (statement by statement, continuing after errors), in the
/// background.
fn spawn_script(agent: &Agent, port: u16, script: &str) -> Script {
    let file = testkit::temp_file("approval-script-", ".sql", script);
    let psql = psql_bin().display().to_string();
    let port = port.to_string();
    let path = file.path().display().to_string();
    let child = agent
        .exec(&AGENT, &[&psql, "-X", "-tA", "-U", "postgres", "-h", "127.0.0.1", "-p", &port, "-f", &path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    Script { child, _file: file }
}

fn finish(script: Script) -> (String, String) {
    let out = script.child.wait_with_output().expect("psql ended");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits for a pending request whose statement contains `needle`.
fn wait_request(agent: &Agent, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(r) = cli_json(agent, &["approvals", "list"])
            .into_iter()
            .find(|r| r["statement"].as_str().is_some_and(|s| s.contains(needle)))
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no request for {needle:?}; agent log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn decided(agent: &Agent, id: &str) -> Value {
    agent.wait_record("approval_decided", |r| r["kind"] == "approval_decided" && r["request"] == id)
}

#[test]
fn held_statements_run_when_approved_and_are_refused_when_denied_timed_out_or_abandoned() {
    let pg = Postgres::start();
    fixture(&pg);
    // The policy's webhook: a local endpoint that answers 200.
    let hook = TcpListener::bind("127.0.0.1:0").expect("webhook listener");
    let hook_url = format!(", webhook: {{url: \"http://{}/hooks/warden?token=s3cret\"}}", hook.local_addr().unwrap());
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("held.yaml", &policy(&hook_url))],
    );

    // An approver follows requests as they come.
    let mut watch = Command::new(warden_bin())
        .args(["approvals", "watch", "-o", "json", "--config"])
        .arg(&agent.config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("approvals watch");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let watch_out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(watch_out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // Held, then approved from the CLI: it runs, and the session goes on.
    let child = spawn_script(&agent, pg.port, "delete from accounts where id = 1;\nselect 'after-approve';\n");
    let request = wait_request(&agent, "delete from accounts");
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["rule"], "writes");
    assert_eq!(request["identity"]["labels"]["warden/identity"], "it-approvals");
    assert_eq!(request["statement"], "delete from accounts where id = ?", "normalised: no literal");
    assert!(request.get("text").is_none(), "the list carries no text: {request}");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 1"), "1", "nothing ran while held");
    let shown = cli_json(&agent, &["approvals", "show", &id]);
    assert_eq!(shown[0]["text"], "delete from accounts where id = 1;", "the approver sees the text");
    let table = cli(&agent, &["approvals", "show", &id]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("held-writes/writes"), "{table:?}");
    let approve = cli(&agent, &["approvals", "approve", &id, "--reason", "ticket 42"]);
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));
    // The watcher saw the request, then the decision.
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["event"] == "decided" && v["id"] == id.as_str()) {
        let line = lines.recv_timeout(Duration::from_secs(10)).expect("watch lines");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            seen.push(v);
        }
    }
    assert!(seen.iter().any(|v| v["event"] == "requested" && v["request"]["id"] == id.as_str()), "{seen:?}");
    let _ = watch.kill();
    let _ = watch.wait();
    let (out, err) = finish(child);
    assert!(out.contains("after-approve"), "{out} / {err}");
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 1"), "0", "the approved DELETE ran");
    let d = decided(&agent, &id);
    assert_eq!(d["outcome"], "approved");
    assert_eq!(d["by"]["uid"], 0);
    assert_eq!(d["reason"], "ticket 42");
    let ran = agent.wait_record("approved statement", |r| {
        r["kind"] == "statement"
            && r["text"].as_str().is_some_and(|t| t.contains("delete from accounts where id"))
            && r["verdict"]["decision"] == "allow"
    });
    assert_eq!(ran["verdict"]["decision"], "allow");
    assert!(ran["verdict"]["reason"].as_str().unwrap().contains(&id), "{ran}");
    // The webhook got the request: normalised statement, no text, no literal.
    hook.set_nonblocking(false).unwrap();
    let (mut conn, _) = hook.accept().expect("webhook delivery");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    std::io::Write::write_all(&mut conn, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /hooks/warden?token=s3cret HTTP/1.1"), "{head}");
    let body: Value = serde_json::from_slice(&body).expect("webhook JSON");
    assert_eq!(body["request"]["id"], id.as_str());
    assert!(body["text"].as_str().unwrap().contains(&id), "{body}");
    assert!(!body.to_string().contains("id = 1"), "no literal leaves: {body}");

    // Denied with a reason: refused with 42501 naming the approver; the session goes on.
    let child = spawn_script(&agent, pg.port, "delete from accounts where id = 2;\nselect 'after-deny';\n");
    let id = wait_request(&agent, "delete from accounts")["id"].as_str().unwrap().to_string();
    assert!(cli(&agent, &["approvals", "deny", &id, "--reason", "not today"]).status.success());
    let (out, err) = finish(child);
    assert!(err.contains("denied by approver root") && err.contains("not today") && err.contains(&id), "{err}");
    assert!(out.contains("after-deny"), "{out}");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 2"), "1", "the denied DELETE did not run");
    assert_eq!(decided(&agent, &id)["outcome"], "denied");

    // Nobody decides: refused at the rule's timeout (2 s).
    let started = Instant::now();
    let child = spawn_script(&agent, pg.port, "delete from ledger;\nselect 'after-timeout';\n");
    let (out, err) = finish(child);
    assert!(err.contains("no approver decided within 2s"), "{err}");
    assert!(out.contains("after-timeout"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(pg.admin_sql("select count(*) from ledger"), "1");

    // Approved for 10 minutes: the next statement of the same shape passes without asking, a
    // different one is held again.
    let child = spawn_script(&agent, pg.port, "delete from notes where id = 1;\n");
    let id = wait_request(&agent, "delete from notes")["id"].as_str().unwrap().to_string();
    assert!(cli(&agent, &["approvals", "approve", &id]).status.success());
    finish(child);
    let (out, err) = finish(spawn_script(&agent, pg.port, "delete from notes where id = 2;\nselect 'granted';\n"));
    assert!(out.contains("granted") && !err.contains("ERROR"), "{out} / {err}");
    assert_eq!(pg.admin_sql("select count(*) from notes"), "1", "both DELETEs ran");
    let child = spawn_script(&agent, pg.port, "delete from notes where note = 'c';\n");
    let other = wait_request(&agent, "delete from notes where note");
    assert!(cli(&agent, &["approvals", "deny", other["id"].as_str().unwrap()]).status.success());
    let (_, err) = finish(child);
    assert!(err.contains("denied"), "{err}");

    // In an explicit transaction: held, approved, committed.
    let child =
        spawn_script(&agent, pg.port, "begin;\ndelete from accounts where id = 3;\ncommit;\nselect 'tx-done';\n");
    let id = wait_request(&agent, "delete from accounts")["id"].as_str().unwrap().to_string();
    // Sessions list shows it held.
    let sessions = cli_json(&agent, &["sessions", "list"]);
    assert!(sessions.iter().any(|s| s["held"] == id.as_str()), "{sessions:?}");
    assert!(cli(&agent, &["approvals", "approve", &id]).status.success());
    let (out, err) = finish(child);
    assert!(out.contains("tx-done") && !err.contains("ERROR"), "{out} / {err}");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 3"), "0");

    // A governed workload cannot approve its own request (nor any other).
    let child = spawn_script(&agent, pg.port, "delete from accounts where id = 4;\nselect 'after-self';\n");
    let request = wait_request(&agent, "delete from accounts");
    let id = request["id"].as_str().unwrap().to_string();
    let psql_pid = request["identity"]["pid"].as_i64().unwrap() as i32;
    let bin = warden_bin().display().to_string();
    let config = agent.config.display().to_string();
    let selfish = output(&mut agent.exec(&AGENT, &[&bin, "approvals", "approve", &id, "--config", &config]));
    assert!(!selfish.status.success());
    assert!(String::from_utf8_lossy(&selfish.stderr).contains("approval refused"), "{selfish:?}");
    let other_workload = output(
        &mut agent.exec(&["warden/identity=it-helper"], &[&bin, "approvals", "approve", &id, "--config", &config]),
    );
    assert!(String::from_utf8_lossy(&other_workload.stderr).contains("governed workload"), "{other_workload:?}");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 4"), "1", "still held");
    // The client leaves while held: the request is cancelled, nothing runs.
    // SAFETY: kill(2) of the psql process the request names (a child of this test's workload).
    assert_eq!(unsafe { libc::kill(psql_pid, libc::SIGKILL) }, 0);
    let _ = finish(child);
    assert_eq!(decided(&agent, &id)["outcome"], "cancelled");
    assert!(cli_json(&agent, &["approvals", "list"]).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 4"), "1", "the abandoned DELETE never ran");

    // A pipeline (psycopg): the statements before the held one run, nothing after it is sent
    // before the decision, and all of it completes once approved.
    let script = workspace_root().join("tests/drivers/held_pipeline.py");
    let python = agent
        .exec(&AGENT, &["python3", &script.display().to_string(), "127.0.0.1", &pg.port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let id = wait_request(&agent, "delete from accounts")["id"].as_str().unwrap().to_string();
    assert_eq!(pg.admin_sql("select count(*) from pipelog"), "0", "nothing after the hold ran");
    assert!(cli(&agent, &["approvals", "approve", &id]).status.success());
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\nagent log:\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[1, 1, 42]");
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 5"), "0");
    assert_eq!(pg.admin_sql("select count(*) from pipelog"), "1");

    // An operator ends a live session: the client gets FATAL 57P01, the audit says who.
    let mut sleeper = agent
        .exec_psql(&AGENT, "127.0.0.1", pg.port, "select pg_sleep(60)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        let live = cli_json(&agent, &["sessions", "list"]);
        if let Some(s) = live.iter().find(|s| s["last_statement"].as_str().is_some_and(|t| t.contains("pg_sleep"))) {
            break s["session"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "{live:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(cli(&agent, &["sessions", "kill", &session.to_string()]).status.success());
    let status = sleeper.wait().unwrap();
    let mut err = String::new();
    sleeper.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success() && err.contains("terminated by operator"), "{err}");
    let t = agent.wait_record("session_terminated", |r| r["kind"] == "session_terminated");
    assert_eq!(t["session"], session);
    assert_eq!(t["by"]["uid"], 0);

    // The replay shows the approvals inline.
    let replay = agent.audit_cli(&["replay", &d["session"].to_string()]);
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.contains("approval requested") && replay.contains("approved by root"), "{replay}");
}

#[test]
fn a_stopping_agent_refuses_held_statements_and_a_new_one_never_runs_them() {
    let pg = Postgres::start();
    fixture(&pg);
    let mut agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("held.yaml", &policy(""))],
    );
    let child = spawn_script(&agent, pg.port, "delete from accounts where id = 6;\n");
    let id = wait_request(&agent, "delete from accounts")["id"].as_str().unwrap().to_string();
    agent.stop();
    let (_, err) = finish(child);
    assert!(err.contains("the agent is stopping") || err.contains("terminat") || err.contains("closed"), "{err}");
    assert_eq!(decided(&agent, &id)["outcome"], "refused");
    agent.spawn();
    assert!(cli_json(&agent, &["approvals", "list"]).is_empty(), "a new agent holds nothing of the old one");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pg.admin_sql("select count(*) from accounts where id = 6"), "1", "the held DELETE never ran");
    // The session after a restart works as before (a fresh connection).
    let (out, _) = finish(spawn_script(&agent, pg.port, "select 'fresh';\n"));
    assert!(out.contains("fresh"));
}

#[test]
fn only_root_and_the_admin_group_reach_the_admin_api() {
    let pg = Postgres::start();
    let as_user = |agent: &Agent, user: &str| {
        output(
            Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(warden_bin())
                .args(["approvals", "list", "--socket"])
                .arg(agent.state.join("admin.sock")),
        )
    };
    let databases = format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port);
    // No group: root only.
    let agent = Agent::start(&databases);
    let out = as_user(&agent, "nobody");
    assert!(!out.status.success(), "nobody reached the admin API");
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin socket"), "{out:?}");
    assert!(cli(&agent, &["approvals", "list"]).status.success(), "root reaches it");
    drop(agent);
    // With `admin.group: nogroup`, a member (nobody) reaches it; others (daemon) do not.
    let agent = Agent::start_with_top_level(&databases, "", testkit::DEFAULT_AUDIT, "admin:\n  group: nogroup\n");
    let out = as_user(&agent, "nobody");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_user(&agent, "daemon");
    assert!(!out.status.success(), "daemon is not in nogroup");
}

/// An unlabelled cgroup of its own for the approver (removed on drop).
struct OperatorCgroup(std::path::PathBuf);

impl OperatorCgroup {
    fn new() -> Self {
        let dir = warden::cgroup::default_root().join(testkit::unique("warden-it-operator-"));
        std::fs::create_dir(&dir).expect("operator cgroup");
        OperatorCgroup(dir)
    }

    /// `warden ARGS --config CONFIG` run inside it.
    fn cli(&self, agent: &Agent, args: &[&str]) -> Output {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", self.0.display());
        output(Command::new("sh").args(["-c", &script]).arg(warden_bin()).args(args).arg("--config").arg(&agent.config))
    }
}

impl Drop for OperatorCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A raw client's pipelines (what no driver sends, but an attacker can): nothing slips past a
/// hold, a decision never serves another message, what was sent while held is answered without
/// the client sending more, and a CancelRequest cancels the hold.
#[test]
fn raw_pipelines_cannot_slip_past_a_hold() {
    use testkit::raw::{Raw, bind, errors, execute, message, parse, query, startup_packet};
    let pg = Postgres::start();
    pg.admin_sql("create table rawt(id int); insert into rawt select generate_series(1, 9)");
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: raw-holds}\nspec:\n  \
                  selector: {}\n  approval: {timeout: 60s}\n  rules:\n    \
                  - {name: rawt, match: {class: [write], relations: [\"*.rawt\"]}, action: require_approval}\n";
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("raw.yaml", policy)],
    );
    let addr = format!("127.0.0.1:{}", pg.port);
    let count = |id: u32| pg.admin_sql(&format!("select count(*) from rawt where id = {id}"));
    // The raw clients run in this test's own cgroup, so the approver runs in another (an
    // unlabelled one: the operator's shell).
    let operator = OperatorCgroup::new();
    let decide = |needle: &str, verb: &str| {
        let id = wait_request(&agent, needle)["id"].as_str().unwrap().to_string();
        let out = operator.cli(&agent, &["approvals", verb, &id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        id
    };

    // A statement redefined under a bound SQL EXECUTE: the Execute is held, not passed as a
    // Parse would be.
    let mut raw = Raw::login(&addr);
    let mut first = parse("s1", "select 1");
    first.extend(parse("x", "execute s1"));
    first.extend(message(b'S', b""));
    raw.send(&first);
    assert!(errors(&raw.until_ready()).is_empty());
    let mut second = bind("p", "x", &[]);
    second.extend(message(b'C', b"Ss1\0"));
    second.extend(parse("s1", "delete from rawt where id = 7"));
    second.extend(execute("p"));
    second.extend(message(b'S', b""));
    raw.send(&second);
    let request = wait_request(&agent, "execute s1");
    assert!(request["statement"].as_str().unwrap().contains("runs: delete from rawt where id = ?"), "{request}");
    assert!(cli(&agent, &["approvals", "deny", request["id"].as_str().unwrap()]).status.success());
    assert_eq!(errors(&raw.until_ready()), vec!["42501".to_string()]);
    assert_eq!(count(7), "1", "the redefined DELETE did not run");

    // An approval whose Bind the server then skipped (an earlier error of its batch) serves
    // nothing else: the next Bind, with other parameters, is held again.
    raw.send(&[parse("d", "delete from rawt where id = $1"), message(b'S', b"")].concat());
    assert!(errors(&raw.until_ready()).is_empty());
    let mut batch = parse("", "select 1/0");
    batch.extend(bind("", "", &[]));
    batch.extend(execute(""));
    batch.extend(bind("", "d", &["8"]));
    batch.extend(execute(""));
    batch.extend(message(b'S', b""));
    raw.send(&batch);
    std::thread::sleep(Duration::from_millis(300));
    decide("delete from rawt where id = $1", "approve");
    assert_eq!(errors(&raw.until_ready()), vec!["22012".to_string()]);
    raw.send(&[bind("", "d", &["9"]), execute(""), message(b'S', b"")].concat());
    let again = decide("delete from rawt where id = $1", "deny");
    assert_eq!(errors(&raw.until_ready()), vec!["42501".to_string()], "held again ({again})");
    assert_eq!((count(8), count(9)), ("1".to_string(), "1".to_string()));

    // What the client sent while held is answered once the hold ends, without it sending more.
    raw.send(&query("insert into rawt values (10)"));
    let id = wait_request(&agent, "insert into rawt")["id"].as_str().unwrap().to_string();
    raw.send(&query("select 'next'"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(operator.cli(&agent, &["approvals", "approve", &id]).status.success());
    assert!(errors(&raw.until_ready()).is_empty());
    let answer = raw.until_ready();
    assert!(answer.iter().any(|(tag, body)| *tag == b'D' && body.ends_with(b"next")), "{answer:?}");
    assert_eq!(count(10), "1");

    // A text long enough to be described off the proxy's workers is held, approved, and run
    // (judged again from its description, not described and held again).
    let long = format!("insert into rawt values (11) /* {} */", "x".repeat(20_000));
    raw.send(&query(&long));
    decide("insert into rawt values (?)", "approve");
    assert!(errors(&raw.until_ready()).is_empty());
    assert_eq!(count(11), "1");

    // A CancelRequest from the client cancels its held statement: refused, never run later.
    let mut held = Raw::connect(&addr);
    held.send(&startup_packet(&[("user", "postgres"), ("database", "postgres")]));
    let login = held.until_ready();
    let key = login.iter().find(|(tag, _)| *tag == b'K').map(|(_, body)| body.clone()).expect("BackendKeyData");
    held.send(&query("delete from rawt where id = 5"));
    let id = wait_request(&agent, "delete from rawt where id = ?")["id"].as_str().unwrap().to_string();
    let mut cancel = 16u32.to_be_bytes().to_vec();
    cancel.extend(80_877_102u32.to_be_bytes());
    cancel.extend(&key);
    let mut canceller = std::net::TcpStream::connect(&addr).expect("cancel connection");
    std::io::Write::write_all(&mut canceller, &cancel).unwrap();
    let answer = held.until_ready();
    assert_eq!(errors(&answer), vec!["42501".to_string()], "{answer:?}");
    assert_eq!(decided(&agent, &id)["outcome"], "cancelled");
    assert_eq!(count(5), "1");
    held.send(&query("select 1"));
    assert!(errors(&held.until_ready()).is_empty(), "the session goes on");
}
