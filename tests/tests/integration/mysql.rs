//! MySQL sessions (`protocol: mysql`) through the real redirect against a real MariaDB: the
//! command-line client and the Python drivers give the same transcript as on a direct
//! connection, statements are recorded with their class, and policy refusals are ERR 1142
//! naming the rule, leaving the database as it was and the session usable.

use serde_json::Value;
use testkit::{
    Agent, TestPki, check,
    mariadb::{MariaAuth, MariaDb, MariaDbOptions, MariaSsl, PY_MYSQL_DRIVERS, mariadb_cli, mysql_check},
    output, workspace_root,
};

const USER: &str = "app";
const PASSWORD: &str = "s3cret-pw";

fn database_yaml(db: &MariaDb) -> String {
    format!("  - {{name: shop, protocol: mysql, address: '{}:{}'}}", db.host, db.port)
}

/// The mariadb client run by a labelled workload: (success, stdout, stderr).
fn labelled_cli(agent: &Agent, labels: &[&str], db: &MariaDb, ssl: MariaSsl, sql: &str) -> (bool, String, String) {
    let cli = mariadb_cli(&db.host, db.port, USER, PASSWORD, ssl);
    let argv = testkit::argv_of(&cli, &["-e", sql]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = output(&mut agent.exec(labels, &argv));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn statements(agent: &Agent) -> Vec<Value> {
    agent.records().into_iter().filter(|r| r["kind"] == "statement").collect()
}

#[test]
fn the_mariadb_client_is_redirected_attributed_and_its_statements_recorded() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    let agent = Agent::start(&database_yaml(&db));
    let labels = ["warden/identity=it-mysql", "team=data"];
    db.sql("create table test.t (id int primary key, v varchar(20))");
    let sql = "insert into t values (1, 'a'), (2, 'b'); \
               select id, v from t order by id; select connection_id() = connection_id(); \
               create table u (id int)";
    let (ok, out, err) = labelled_cli(&agent, &labels, &db, MariaSsl::Off, sql);
    assert!(ok, "{err}\n{}", agent.log());
    assert_eq!(out, "1\ta\n2\tb\n1\n");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    assert_eq!(open["database"], "shop");
    assert_eq!(open["db_user"], USER);
    assert_eq!(open["db_name"], "test");
    assert_eq!(open["identity"]["labels"]["warden/identity"], "it-mysql");
    assert_eq!(open["identity"]["comm"], "mariadb");
    let insert = agent.wait_record("the INSERT", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|s| s.starts_with("insert"))
    });
    assert_eq!(insert["class"], "write", "{insert}");
    let select = agent.wait_record("the SELECT", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|s| s.starts_with("select id"))
    });
    assert_eq!(select["class"], "read", "{select}");
    assert_eq!(select["rows"], 2, "{select}");
    assert_eq!(select["relations"], serde_json::json!(["t"]), "{select}");
    assert_eq!(
        select["facts"]["relations"],
        serde_json::json!([[["test", "t"]]]),
        "unqualified names resolve in the session's database: {select}"
    );
    let create = agent.wait_record("the CREATE", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|s| s.starts_with("create"))
    });
    assert_eq!(create["class"], "ddl", "{create}");
    // The server really ran it all, through the proxy.
    assert_eq!(db.sql("select count(*) from test.t"), "2");
    let close = agent.wait_record("connection_close", |r| r["kind"] == "connection_close");
    assert!(close["error"].is_null(), "{close}");
}

const BASELINE: &str = "baseline.yaml";

#[test]
fn the_baseline_refuses_mysql_statements_with_error_1142_and_the_session_goes_on() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    db.sql(
        "create table test.accounts (id int primary key, owner varchar(10), balance int); \
            insert into test.accounts values (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)",
    );
    let baseline = std::fs::read_to_string(workspace_root().join("policies").join(BASELINE)).unwrap();
    let agent = Agent::start_with_policies(&database_yaml(&db), &[(BASELINE, &baseline)]);
    let bot = ["warden/kind=agent", "warden/identity=it-bot"];

    let (ok, _, err) = labelled_cli(&agent, &bot, &db, MariaSsl::Off, "delete from accounts");
    assert!(!ok && err.contains("ERROR 1142 (42000)") && err.contains("no-unscoped-writes"), "{err}");
    assert_eq!(db.sql("select count(*) from test.accounts"), "3", "nothing was deleted");

    // An executable comment is code: the DROP inside it is judged and refused.
    let (ok, _, err) = labelled_cli(&agent, &bot, &db, MariaSsl::Off, "select 1 /*!50000 ; drop table accounts */");
    assert!(!ok && err.contains("ERROR 1142"), "{err}");
    assert_eq!(db.sql("select count(*) from test.accounts"), "3");

    // The client sends each statement of its script alone: the SELECT runs, the DROP is
    // refused naming its rule, and the session goes on.
    let (ok, out, err) =
        labelled_cli(&agent, &bot, &db, MariaSsl::Off, "select owner from accounts where id = 2; drop table accounts");
    assert!(!ok && err.contains("ERROR 1142") && err.contains("no-ddl"), "{err}");
    assert_eq!(out, "bob\n");
    assert_eq!(db.sql("select count(*) from test.accounts"), "3");

    // LOAD DATA LOCAL sends a client file: refused for agents by the baseline, naming the rule.
    let csv = testkit::temp_file("warden-load-", ".csv", "7,eve,70\n");
    let load =
        format!("load data local infile '{}' into table accounts fields terminated by ','", csv.path().display());
    let cli = mariadb_cli(&db.host, db.port, USER, PASSWORD, MariaSsl::Off);
    let argv = testkit::argv_of(&cli, &["--local-infile=1", "-e", &load]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = output(&mut agent.exec(&bot, &argv));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ERROR 1142") && err.contains("no-client-files"), "{err}");
    assert_eq!(db.sql("select count(*) from test.accounts"), "3");
    // A person's session may.
    let out = output(&mut agent.exec(&["warden/identity=it-human"], &argv));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.sql("select owner from test.accounts where id = 7"), "eve");
    drop(csv);
    db.sql("delete from test.accounts where id = 7");

    // Unlabelled workloads are not selected by the baseline.
    let (ok, _, err) =
        labelled_cli(&agent, &["warden/identity=it-human"], &db, MariaSsl::Off, "delete from accounts where id = 3");
    assert!(ok, "{err}");
    assert_eq!(db.sql("select count(*) from test.accounts"), "2");

    let refused = agent.wait_record("the refused DELETE", |r| {
        r["kind"] == "statement" && r["text"] == "delete from accounts" && r["verdict"]["decision"] == "deny"
    });
    assert_eq!(refused["verdict"]["rule"], "no-unscoped-writes", "{refused}");
}

#[test]
fn python_drivers_give_the_same_transcript_through_the_proxy_as_direct() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    for driver in PY_MYSQL_DRIVERS {
        let direct = output(&mut mysql_check(driver, &db.host, db.port, USER, PASSWORD));
        assert!(direct.status.success(), "{driver} direct: {}", String::from_utf8_lossy(&direct.stderr));
        let agent = Agent::start(&database_yaml(&db));
        let cmd = mysql_check(driver, &db.host, db.port, USER, PASSWORD);
        let argv = testkit::argv_of(&cmd, &[]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let proxied = output(&mut agent.exec(&["warden/identity=it-driver"], &argv));
        let (direct_out, proxied_out) =
            (String::from_utf8_lossy(&direct.stdout), String::from_utf8_lossy(&proxied.stdout));
        assert!(
            proxied.status.success(),
            "{driver} through the proxy: {}\n{}",
            String::from_utf8_lossy(&proxied.stderr),
            agent.log()
        );
        for (a, b) in direct_out.lines().zip(proxied_out.lines()) {
            assert_eq!(a, b, "{driver}: the first line that differs");
        }
        assert_eq!(direct_out.lines().count(), proxied_out.lines().count(), "{driver}");
        assert!(!statements(&agent).is_empty(), "{driver}: statements are recorded");
        let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
        assert_eq!(open["identity"]["labels"]["warden/identity"], "it-driver");
    }
}

#[test]
fn tls_on_both_legs_and_ed25519_and_native_authentication_pass_through() {
    let pki = TestPki::new("warden-mysql-ca");
    let (cert, key) = pki.server_cert("db", "DNS:db.test,IP:127.0.0.1");
    let db = MariaDb::start_with(MariaDbOptions { tls: Some((cert, key)), ..Default::default() });
    db.create_user(USER, PASSWORD, MariaAuth::Ed25519);
    db.create_user("native", PASSWORD, MariaAuth::NativePassword);
    let (proxy_cert, proxy_key) = pki.server_cert("warden", "DNS:localhost,IP:127.0.0.1");
    let agent = Agent::start_with_proxy(
        &format!("  - {{name: shop, protocol: mysql, address: '{}:{}', tls: {{mode: require}}}}", db.host, db.port),
        &format!("  tls: {{cert: '{}', key: '{}'}}", proxy_cert.display(), proxy_key.display()),
    );
    let labels = ["warden/identity=it-tls"];
    let (ok, out, err) = labelled_cli(
        &agent,
        &labels,
        &db,
        MariaSsl::On,
        "select variable_value != '' from information_schema.session_status where variable_name = 'Ssl_cipher'; select current_user()",
    );
    assert!(ok, "{err}\n{}", agent.log());
    assert_eq!(out, "1\napp@%\n", "the server's leg is TLS too");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    assert_eq!((open["client_tls"].as_bool(), open["upstream_tls"].as_bool()), (Some(true), Some(true)), "{open}");
    // Verified against the proxy's certificate authority.
    let cli = mariadb_cli(&db.host, db.port, "native", PASSWORD, MariaSsl::Verify(pki.ca()));
    let argv = testkit::argv_of(&cli, &["-e", "select current_user()"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = check(&mut agent.exec(&labels, &argv));
    assert_eq!(out, "native@%\n");
    // A plain client reaches the TLS upstream too.
    let tls_in_use =
        "select variable_value != '' from information_schema.session_status where variable_name = 'Ssl_cipher'";
    let (ok, out, err) = labelled_cli(&agent, &labels, &db, MariaSsl::Off, tls_in_use);
    assert!(ok, "{err}");
    assert_eq!(out, "1\n");
    // A wrong password is the server's refusal, relayed.
    let cli = mariadb_cli(&db.host, db.port, USER, "wrong", MariaSsl::Off);
    let argv = testkit::argv_of(&cli, &["-e", "select 1"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = output(&mut agent.exec(&labels, &argv));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("1045"), "{out:?}");
}

#[test]
fn compression_is_not_offered_and_the_client_goes_on_without_it() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    let agent = Agent::start(&database_yaml(&db));
    let (ok, out, err) = labelled_cli(&agent, &["warden/identity=it-c"], &db, MariaSsl::Off, "select 1");
    assert!(ok && out == "1\n", "{err}");
    // The greeting does not offer compression, so the client does not use it: the session works.
    let cli = mariadb_cli(&db.host, db.port, USER, PASSWORD, MariaSsl::Off);
    let argv = testkit::argv_of(&cli, &["--compress", "-e", "select 2"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = check(&mut agent.exec(&["warden/identity=it-c"], &argv));
    assert_eq!(out, "2\n");
}

#[test]
fn kill_query_from_a_second_connection_cancels_through_the_redirect() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    let baseline = std::fs::read_to_string(workspace_root().join("policies").join(BASELINE)).unwrap();
    let agent = Agent::start_with_policies(&database_yaml(&db), &[(BASELINE, &baseline)]);
    let script = workspace_root().join("tests/drivers/mysql_kill.py");
    let port = db.port.to_string();
    let argv = ["python3", script.to_str().unwrap(), &db.host, &port, USER, PASSWORD, "test"];
    // An agent cancels its own statement (KILL QUERY: a cancel); ending a connection is
    // administration, which the baseline refuses it.
    let out = check(&mut agent.exec(&["warden/kind=agent", "warden/identity=it-killer"], &argv));
    // MariaDB answers the interrupted SLEEP with 1 or with ER_QUERY_INTERRUPTED (1317).
    let out = out.replace("victim: error 1317\n", "victim: 1\n");
    assert_eq!(
        out,
        "victim: 1\ncancelled early: True\nvictim after: still usable\nkill connection: error 1142\n",
        "{}",
        agent.log()
    );
    let kill = agent.wait_record("the KILL QUERY", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|t| t.starts_with("KILL QUERY"))
    });
    assert_eq!((kill["class"].as_str(), kill["outcome"].as_str()), (Some("utility"), Some("completed")), "{kill}");
}

#[test]
fn a_rust_client_with_binary_prepared_statements_gives_the_same_answers_through_the_proxy() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let direct = runtime.block_on(crate::mysql_harness::sqlx_mysql_workload(&db.host, db.port, USER, PASSWORD));
    // Parameters recorded (`audit.parameters`): read from the binary protocol.
    let audit = format!("{}\n  parameters: true", testkit::DEFAULT_AUDIT);
    let agent = Agent::start_with_audit(&testkit::warden_bin(), &database_yaml(&db), &audit);
    // This test process is a workload too: its connection is redirected like any other.
    let proxied = runtime.block_on(crate::mysql_harness::sqlx_mysql_workload(&db.host, db.port, USER, PASSWORD));
    assert_eq!(direct, proxied);
    let executed = agent.wait_record("an execution of a prepared statement", |r| {
        r["kind"] == "statement" && r["protocol"] == "extended" && r["outcome"] == "completed"
    });
    assert!(executed["text"].as_str().is_some_and(|t| !t.is_empty()), "{executed}");
    let bound = agent.wait_record("an execution with its parameters", |r| {
        r["kind"] == "statement" && r["params"].as_array().is_some_and(|p| p.first() == Some(&serde_json::json!("50")))
    });
    assert_eq!(bound["protocol"], "extended", "{bound}");
    let inserted = agent.wait_record("an INSERT with its parameters", |r| {
        r["kind"] == "statement" && r["params"].as_array().is_some_and(|p| p.get(1) == Some(&serde_json::json!("v1")))
    });
    assert_eq!(inserted["params"][0], "1", "{inserted}");
    assert_eq!(inserted["params"][2], "\\x0100ff", "bytes as hex: {inserted}");
    assert_eq!(agent.records().iter().filter(|r| r["kind"] == "connection_open").count(), 1);
}

const NO_SECRET: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: no-secret}
spec:
  selector: {matchLabels: {warden/kind: agent}}
  rules:
    - {name: no-secret-reads, match: {relations: [\"secret.*\"]}, action: deny}
";

#[test]
fn protocol_tricks_do_not_get_a_statement_past_its_judgement() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    db.sql(
        "create table test.accounts (id int primary key); create database secret; \
         create table secret.customers (v varchar(10)); insert into secret.customers values ('hidden')",
    );
    let baseline = std::fs::read_to_string(workspace_root().join("policies").join(BASELINE)).unwrap();
    let agent =
        Agent::start_with_policies(&database_yaml(&db), &[(BASELINE, &baseline), ("no-secret.yaml", NO_SECRET)]);
    let script = workspace_root().join("tests/drivers/mysql_tricks.py");
    let port = db.port.to_string();
    let argv = ["python3", script.to_str().unwrap(), &db.host, &port, USER, PASSWORD, "test"];
    let out = output(&mut agent.exec(&["warden/kind=agent", "warden/identity=it-tricks"], &argv));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
    let lines: Vec<&str> = stdout.lines().collect();
    // The DROP sent with the login is judged as a command once the login is done: refused.
    assert_eq!(lines[0], "login+command: login ok, command error 1142", "{stdout}");
    // The database selected is judged (USE `secret`), and the pipelined query is judged where it
    // runs: in secret, whose reads the policy refuses.
    assert_eq!(lines[1], "init-db+select: ok, error 1142", "{stdout}");
    // The facts are read as bytes, whatever character_set_results says: ANSI_QUOTES is known and
    // the DROP it would hide is seen.
    // A client claiming the compressed protocol anyway is told, not misread: ER_NOT_SUPPORTED_YET.
    assert_eq!(lines[2], "forced-compression: error 1235", "{stdout}");
    assert_eq!(lines[3], "garbled-facts: error 1142", "{stdout}");
    assert_eq!(
        db.sql(
            "select count(*) from information_schema.tables where table_schema = 'test' and table_name = 'accounts'"
        ),
        "1"
    );
    let use_db = agent.wait_record("COM_INIT_DB as USE", |r| r["kind"] == "statement" && r["text"] == "USE `secret`");
    assert_eq!(use_db["class"], "session", "{use_db}");
}

const HELD: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: held-writes}
spec:
  selector: {matchLabels: {warden/kind: agent}}
  approval: {timeout: 60s}
  rules:
    - {name: writes, match: {class: [write]}, action: require_approval}
";

/// The warden CLI on the host, as root: its output lines (it must succeed).
fn warden_cli(agent: &Agent, args: &[&str]) -> Vec<String> {
    let out = output(std::process::Command::new(testkit::warden_bin()).args(args).arg("--config").arg(&agent.config));
    assert!(out.status.success(), "warden {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The pending request whose statement contains `needle`.
fn held_request(agent: &Agent, needle: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(r) = warden_cli(agent, &["approvals", "list", "-o", "json"])
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
            .find(|r| r["statement"].as_str().is_some_and(|s| s.contains(needle)))
        {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "no request for {needle:?}: {}", agent.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_held_mysql_statement_runs_when_approved_and_is_refused_when_denied() {
    let db = MariaDb::start();
    db.create_user(USER, PASSWORD, MariaAuth::NativePassword);
    db.sql("create table test.accounts (id int primary key); insert into test.accounts values (1), (2), (3)");
    let agent = Agent::start_with_policies(&database_yaml(&db), &[("held.yaml", HELD)]);
    let bot = ["warden/kind=agent", "warden/identity=it-held"];
    let spawn = |sql: &str| {
        let cli = mariadb_cli(&db.host, db.port, USER, PASSWORD, MariaSsl::Off);
        let argv = testkit::argv_of(&cli, &["-e", sql]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        agent
            .exec(&bot, &argv)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("mariadb")
    };
    // Held (the client waits), approved from the CLI: it runs, and the session goes on.
    let child = spawn("delete from accounts where id = 1; select 'after-approve'");
    let request = held_request(&agent, "delete from accounts");
    assert_eq!(db.sql("select count(*) from test.accounts where id = 1"), "1", "nothing ran while held");
    let id = request["id"].as_str().unwrap().to_string();
    warden_cli(&agent, &["approvals", "approve", &id, "--reason", "ticket 7"]);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("after-approve"), "{stdout} / {stderr}");
    assert_eq!(db.sql("select count(*) from test.accounts where id = 1"), "0", "the approved DELETE ran");
    // Denied: ERROR 1142 naming the decision, nothing changed.
    let child = spawn("delete from accounts where id = 2");
    let request = held_request(&agent, "delete from accounts");
    let id = request["id"].as_str().unwrap().to_string();
    warden_cli(&agent, &["approvals", "deny", &id, "--reason", "no"]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ERROR 1142"), "{stderr}");
    assert_eq!(db.sql("select count(*) from test.accounts where id = 2"), "1", "the denied DELETE did not run");
    let decided = agent.wait_record("the denial", |r| r["kind"] == "approval_decided" && r["request"] == id.as_str());
    assert_eq!(decided["outcome"], "denied", "{decided}");
    // The session's replay shows the held statement and its decision inline.
    let replay = agent.audit_cli(&["replay", &decided["session"].to_string()]);
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.contains("delete from accounts") && replay.contains("approval requested"), "{replay}");
    assert!(replay.contains("denied"), "{replay}");
}
