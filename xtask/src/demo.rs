//! `cargo xtask demo`: a throwaway PostgreSQL, the agent governing it, and a tour of what
//! governance looks like from the workload's side and from the audit trail.

use std::{path::Path, process::Command};

use anyhow::Result;
use testkit::{
    Agent, Netns, PROXY_V4, Postgres,
    kubeapi::{FakeKubeApi, PodCgroup, Resource, pod},
    mariadb::{MariaAuth, MariaDb, MariaSsl, mariadb_cli},
    output, psql, psql_argv,
};

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(cmd: &mut Command) -> bool {
    print_output(&output(cmd))
}

fn print_output(out: &std::process::Output) -> bool {
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out.status.success()
}

fn expect_refused(host: &str, port: u16, why: &str) {
    println!("$ psql -h {host} -p {port} -c \"select 1\"");
    let ok = show(&mut psql(host, port, "select 1"));
    println!("-> {}", if ok { "UNEXPECTED: connected" } else { why });
}

/// The mariadb client, as the demo's app user, run by a workload labelled `labels`.
fn mariadb_exec(agent: &Agent, maria: &MariaDb, labels: &[&str], sql: &str) -> Command {
    let cli = mariadb_cli(&maria.host, maria.port, "app", "app-pw", MariaSsl::Off);
    let argv = testkit::argv_of(&cli, &["-e", sql]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    agent.exec(labels, &argv)
}

/// The demo's own policy: deleting accounts needs a human.
/// Masking for agents: emails tokenised, cards partial, an exempt team.
const MASKING: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: customer-pii}
spec:
  selector: {matchLabels: {warden/kind: agent}}
  rules:
    - {name: emails, match: {columns: [\"*.customers.email\"]}, mask: token, exempt: {matchLabels: {warden/team: dpo}}}
    - {name: cards, match: {columns: [\"*.customers.card\"]}, mask: {method: partial, keep: 4}, exempt: {matchLabels: {warden/team: dpo}}}
";

/// Quarantine: a workload labelled so may run nothing.
const QUARANTINE: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: quarantine}
spec:
  selector: {matchLabels: {warden/quarantine: \"true\"}}
  default: deny
";

const APPROVALS: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: human-in-the-loop}
spec:
  selector: {matchLabels: {warden/kind: agent}}
  approval: {timeout: 2m}
  rules:
    - {name: account-deletes, match: {class: [write], relations: [public.accounts]}, action: require_approval}
";

/// Writes a policy file into the agent's directory and waits until the agent reloaded it.
fn install_policy(agent: &Agent, file: &str, yaml: &str) -> Result<()> {
    let reloads = agent.log().matches("policy set reloaded").count();
    agent.write_policy(file, yaml);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.log().matches("policy set reloaded").count() <= reloads {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{file} was not loaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// `warden ARGS --config CONFIG`, shown as the operator types it.
fn operator(warden: &Path, agent: &Agent, args: &[&str]) -> std::process::Output {
    let shown: Vec<String> =
        args.iter().map(|a| if a.contains(' ') { format!("\"{a}\"") } else { a.to_string() }).collect();
    println!("$ warden {}", shown.join(" "));
    let out = output(Command::new(warden).args(args).arg("--config").arg(&agent.config));
    print_output(&out);
    out
}

pub fn demo(warden: &Path) -> Result<()> {
    step("Starting a throwaway PostgreSQL");
    let pg = Postgres::start();
    let port = pg.port;
    println!("PostgreSQL listening on port {port} (every address)");

    // No cluster on this machine: a local stand-in serves the Kubernetes API (list and watch).
    let api = FakeKubeApi::start();
    let kubeconfig = std::env::temp_dir().join(testkit::unique("warden-demo-kubeconfig-"));
    std::fs::write(&kubeconfig, api.kubeconfig("demo-token"))?;
    let metrics = format!("127.0.0.1:{}", testkit::free_port());

    step("Starting a throwaway MariaDB too (the second protocol)");
    let maria = MariaDb::start();
    maria.create_user("app", "app-pw", MariaAuth::NativePassword);
    maria.sql(
        "create table test.accounts (id int primary key, owner varchar(10), balance int); \
         insert into test.accounts values (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)",
    );
    println!("MariaDB listening on 127.0.0.1:{}", maria.port);

    step("Starting the Warden agent, governing that port on any address (fail: closed), and MariaDB's");
    let baseline = std::fs::read_to_string(testkit::workspace_root().join("policies/baseline.yaml"))?;
    let mut agent = Agent::start_with_bin_policies_top_level(
        warden,
        &format!(
            "  - {{name: demo-db, address: '*:{port}', fail: closed}}\n  - {{name: demo-mysql, protocol: mysql, address: '127.0.0.1:{}'}}",
            maria.port
        ),
        &[("baseline.yaml", &baseline), ("approvals.yaml", APPROVALS), ("quarantine.yaml", QUARANTINE)],
        &format!(
            "kubernetes: {{kubeconfig: {}, node_name: demo-node}}\nmetrics: {{listen: '{metrics}'}}\n",
            kubeconfig.display()
        ),
    );
    println!("config: {}", std::fs::read_to_string(&agent.config)?.trim_end().replace('\n', "\n        "));
    print!("{}", agent.status());

    step("An unmodified psql, tagged as an AI agent with `warden exec --label`");
    let sql = "select current_user, inet_client_addr() as server_sees, inet_client_port() as from_port";
    let labels = ["warden/identity=recsys-agent", "warden/kind=agent"];
    println!("$ warden exec --label {} --label {} -- psql -h 127.0.0.1 -p {port} -c \"{sql}\"", labels[0], labels[1]);
    println!("current_user|server_sees|from_port");
    show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, sql));

    step("What the audit ring recorded (identity from the kernel, labels from the cgroup)");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    agent.wait_record("connection_close", |r| r["kind"] == "connection_close");
    println!("{}", serde_json::to_string_pretty(&open["identity"])?);
    let session = open["session"].to_string();
    println!("$ warden audit query --identity recsys-agent");
    print_output(&agent.audit_cli(&["query", "--identity", "recsys-agent"]));
    println!("$ warden audit replay {session}");
    print_output(&agent.audit_cli(&["replay", &session]));
    println!("$ warden audit verify");
    print_output(&agent.audit_cli(&["verify"]));

    step("Policy: the shipped baseline pack judges every statement of a `warden/kind=agent` by its effect");
    pg.admin_sql(
        "create table accounts(id int primary key, owner text, balance int); \
         insert into accounts values (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)",
    );
    let hidden = "with x as (select 1) delete from accounts";
    println!("$ warden policy explain --label warden/kind=agent \"{hidden}\"");
    print_output(&output(
        Command::new(warden)
            .args(["policy", "explain", "--policies"])
            .arg(testkit::workspace_root().join("policies"))
            .args(["--label", "warden/kind=agent", "--database", "demo-db", hidden]),
    ));
    for sql in [hidden, "select 1; drop table accounts", "select owner, balance from accounts where id = 2"] {
        println!("$ warden exec --label {} --label {} -- psql -c \"{sql}\"", labels[0], labels[1]);
        show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, sql));
    }
    println!("-> still {} rows in accounts", pg.admin_sql("select count(*) from accounts"));

    step("MySQL: the same baseline judges the mariadb client's statements; refusals are ERROR 1142");
    for sql in ["delete from accounts", "select owner, balance from accounts where id = 2"] {
        println!(
            "$ warden exec --label {} --label {} -- mariadb -h 127.0.0.1 -P {} -e \"{sql}\"",
            labels[0], labels[1], maria.port
        );
        show(&mut mariadb_exec(&agent, &maria, &labels, sql));
    }
    println!("-> still {} rows in MariaDB's accounts", maria.sql("select count(*) from test.accounts"));
    let refused = agent.wait_record("the refused MySQL DELETE", |r| {
        r["kind"] == "statement" && r["database"] == "demo-mysql" && r["verdict"]["decision"] == "deny"
    });
    println!(
        "audit: database={} text={} class={} verdict={} rule={}",
        refused["database"],
        refused["text"],
        refused["class"],
        refused["verdict"]["decision"],
        refused["verdict"]["rule"]
    );

    step("A DELETE waits for a human: held inside the agent's own session, approved from the CLI");
    let delete = "delete from accounts where id = 3";
    println!("$ warden exec --label {} --label {} -- psql -c \"{delete}\" &", labels[0], labels[1]);
    let held = agent
        .exec_psql(&labels, "127.0.0.1", pg.port, delete)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let id = loop {
        let out = output(Command::new(warden).args(["approvals", "list", "-o", "json", "--config"]).arg(&agent.config));
        let first = String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string);
        if let Some(line) = first {
            let request: serde_json::Value = serde_json::from_str(&line)?;
            break request["id"].as_str().unwrap_or_default().to_string();
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the DELETE was not held");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    println!(
        "(psql waits; the row is still there: {} row with id 3)",
        pg.admin_sql("select count(*) from accounts where id = 3")
    );
    operator(warden, &agent, &["approvals", "list"]);
    operator(warden, &agent, &["approvals", "show", &id]);
    operator(warden, &agent, &["approvals", "approve", &id, "--reason", "cleanup ticket 7"]);
    let out = held.wait_with_output()?;
    println!("(the agent's psql, unchanged, now prints:)");
    print_output(&out);
    let decided = agent.wait_record("the decision", |r| r["kind"] == "approval_decided" && r["request"] == id.as_str());
    let session = decided["session"].to_string();
    agent.wait_record("its outcome", |r| r["kind"] == "connection_close" && r["session"] == decided["session"]);
    println!("$ warden audit replay {session}");
    print_output(&agent.audit_cli(&["replay", &session]));

    step("Masking: the agent reads customers; emails become tokens, cards keep their last 4 digits");
    pg.admin_sql(
        "create table customers(id int primary key, name text, email text, card text); \
         insert into customers values (1, 'Ann Lee', 'ann.lee@example.com', '4539148803436467'), \
         (2, 'Bob Roy', 'bob.roy@example.org', '5425233430109903'); \
         create view vip as select id, email as contact from customers where id = 1",
    );
    println!("(the operator adds a masking policy; the agent reloads it)\n{}", MASKING.trim_end());
    agent.write_policy("masking.yaml", MASKING);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.log().matches("policy set reloaded").count() < 1 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the masking policy was not loaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for sql in [
        "select id, name, email, card from customers order by id",
        "select c.email as name, upper(c.card) from customers c",
        "select * from vip",
        "select id from customers where email like 'a%'",
    ] {
        println!("$ warden exec --label {} --label {} -- psql -c \"{sql}\"", labels[0], labels[1]);
        show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, sql));
    }
    let dpo = ["warden/identity=dpo-review", "warden/kind=agent", "warden/team=dpo"];
    let sql = "select id, email, card from customers order by id";
    println!("$ warden exec --label {} --label {} --label {} -- psql -c \"{sql}\"   # exempt", dpo[0], dpo[1], dpo[2]);
    show(&mut agent.exec_psql(&dpo, "127.0.0.1", pg.port, sql));
    let record = agent.wait_record("a masked statement", |r| {
        r["kind"] == "statement" && r["masked"].as_array().is_some_and(|m| !m.is_empty())
    });
    println!("(the audit record of the first: which columns, by which rule and method, never the values)");
    println!("{}", serde_json::to_string_pretty(&record["masked"])?);
    maria.sql(
        "create table test.customers (id int primary key, name varchar(20), email varchar(40), card varchar(20)); \
         insert into test.customers values (1, 'Ann Lee', 'ann.lee@example.com', '4539148803436467'), \
         (2, 'Bob Roy', 'bob.roy@example.org', '5425233430109903')",
    );
    let sql = "select id, name, email, card from customers order by id";
    println!(
        "$ warden exec --label {} --label {} -- mariadb -h 127.0.0.1 -P {} -e \"{sql}\"   # the same policy, MariaDB",
        labels[0], labels[1], maria.port
    );
    show(&mut mariadb_exec(&agent, &maria, &labels, sql));

    step("The database's own catalog: a user overload of a built-in name is not the built-in");
    let overload = "create function public.lower(int) returns text language sql volatile \
                    as 'delete from accounts returning ''gone'''";
    println!("(the DBA, directly) {overload}");
    pg.admin_sql(overload);
    for sql in ["select lower(5)", "select pg_catalog.lower(owner) from accounts where id = 1"] {
        println!("$ warden exec --label {} --label {} -- psql -c \"{sql}\"", labels[0], labels[1]);
        show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, sql));
    }
    println!("-> still {} rows in accounts", pg.admin_sql("select count(*) from accounts"));
    println!("$ warden audit query --verdict deny");
    agent.wait_record("the refusals", |r| r["kind"] == "statement" && r["verdict"]["decision"] == "deny");
    print_output(&agent.audit_cli(&["query", "--verdict", "deny"]));

    step("Rolling a policy out: a dry-run rule records what it would refuse; simulate replays the ring");
    let candidate = |mode: &str| {
        format!(
            "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {{name: agents-read-only}}\nspec:\n  \
             selector: {{matchLabels: {{warden/kind: agent}}}}\n  mode: {mode}\n  rules:\n    \
             - {{name: no-writes, match: {{class: [write]}}, action: deny}}\n"
        )
    };
    println!("(the operator adds a candidate policy in dry-run mode)\n{}", candidate("dryrun").trim_end());
    pg.admin_sql("create table notes(id int, body text)");
    install_policy(&agent, "rollout.yaml", &candidate("dryrun"))?;
    let insert = "insert into notes values (1, 'draft')";
    println!("$ warden exec --label {} --label {} -- psql -c \"{insert}\"", labels[0], labels[1]);
    show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, insert));
    println!("-> it ran; the ring says what enforcing the candidate would have done:");
    agent.wait_record("the would-be verdict", |r| r["kind"] == "statement" && r["would"]["change"] == "deny");
    println!("$ warden audit query --would-deny");
    print_output(&agent.audit_cli(&["query", "--would-deny"]));
    let candidates = std::env::temp_dir().join(testkit::unique("warden-demo-candidate-"));
    std::fs::create_dir_all(&candidates)?;
    std::fs::write(candidates.join("rollout.yaml"), candidate("enforce"))?;
    println!("$ warden policy simulate --policies candidate/ --identity recsys-agent");
    print_output(&output(
        Command::new(warden)
            .args(["policy", "simulate", "--policies"])
            .arg(&candidates)
            .args(["--identity", "recsys-agent", "--ring"])
            .arg(&agent.audit),
    ));
    let _ = std::fs::remove_dir_all(&candidates);

    step("Volume limits: an agent's read is stopped at 1,000 rows, the server's work cancelled");
    let volume = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: agent-volume}\nspec:\n  \
                  selector: {matchLabels: {warden/kind: agent}}\n  rules:\n    \
                  - {name: bulk-reads, match: {class: [read]}, limit: {rows: 1000}}\n";
    println!("{}", volume.trim_end());
    install_policy(&agent, "volume.yaml", volume)?;
    let endless = "select generate_series(1, 100000000) as n";
    println!("$ warden exec --label {} --label {} -- psql -c \"{endless}\"", labels[0], labels[1]);
    let started = std::time::Instant::now();
    show(&mut agent.exec_psql(&labels, "127.0.0.1", pg.port, endless));
    println!("-> stopped after {:.1} s (100 million rows would take minutes)", started.elapsed().as_secs_f64());
    let stopped = agent.wait_record("the stopped statement", |r| r["kind"] == "statement" && r["outcome"] == "stopped");
    println!("(its audit record)");
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "text": stopped["text"], "outcome": stopped["outcome"], "rows": stopped["rows"],
            "error": stopped["error"], "stopped": {"policy": stopped["stopped"]["policy"], "rule": stopped["stopped"]["rule"]},
            "limits": stopped["limits"],
        }))?
    );

    step("Kubernetes: a pod is its identity, and relabelling it reaches its open session");
    println!(
        "(no cluster here: a local stand-in serves the Kubernetes API; the pod is a cgroup at kubelet's path and a network namespace)"
    );
    let uid = "3f6a2c1e-9b7d-4e2a-8c55-0d1e2f3a4b5c";
    api.put(
        Resource::ReplicaSets,
        serde_json::json!({
            "metadata": {"name": "recsys-6d9c7f", "namespace": "ml", "uid": "recsys-6d9c7f-uid",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "recsys", "uid": "d1", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "recsys"}}}
        }),
    );
    let recsys = |labels: serde_json::Value| {
        pod("ml", "recsys-6d9c7f-kq2zt", uid, "demo-node", labels, Some(("ReplicaSet", "recsys-6d9c7f")))
    };
    api.put(Resource::Pods, recsys(serde_json::json!({"app": "recsys", "warden/kind": "agent"})));
    let net = Netns::create(31);
    let cgroup = PodCgroup::systemd(uid, &format!("{:064x}", 0x5eed_u64));
    let script = std::env::temp_dir().join(testkit::unique("warden-demo-pod-"));
    std::fs::write(
        &script,
        "select count(*) as accounts from accounts;\n\\! sleep 2\nselect count(*) as accounts from accounts;\n",
    )?;
    let mut argv = psql_argv(&net.host_ip, port, "");
    argv.truncate(argv.len() - 2);
    argv.extend(["-f".to_string(), script.display().to_string()]);
    println!(
        "$ kubectl exec -n ml recsys-6d9c7f-kq2zt -- psql -h {} -p {port} -f script.sql   # two reads, 2 s apart",
        net.host_ip
    );
    let session = cgroup
        .command(&net.name, &argv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let open = agent.wait_record("the pod's connection", |r| {
        r["kind"] == "connection_open" && r["identity"]["pod"]["name"] == "recsys-6d9c7f-kq2zt"
    });
    println!("$ kubectl label pod -n ml recsys-6d9c7f-kq2zt warden/quarantine=true   # during the pause");
    api.put(
        Resource::Pods,
        recsys(serde_json::json!({"app": "recsys", "warden/kind": "agent", "warden/quarantine": "true"})),
    );
    print_output(&session.wait_with_output()?);
    println!("(the identity the audit ring recorded for the connection)");
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"pod": open["identity"]["pod"], "labels": open["identity"]["labels"]})
        )?
    );
    let relabelled = agent.wait_record("identity_relabelled", |r| r["kind"] == "identity_relabelled");
    println!("(and for its session, mid-way) {}", serde_json::to_string(&relabelled)?);
    let _ = std::fs::remove_file(&script);
    drop(cgroup);
    drop(net);

    step("What an operator sees of the node: warden status, and /metrics");
    print!("{}", agent.status());
    let scraped = scrape(&metrics);
    for line in scraped.lines().filter(|l| {
        l.starts_with("warden_flows_total{")
            || l.starts_with("warden_statements_total{")
            || l.starts_with("warden_masked_values_total{")
            || l.starts_with("warden_kubernetes_pods{")
    }) {
        println!("{line}");
    }

    step("A pod's 127.0.0.1 is the pod's own: the proxy dials from the client's network namespace");
    let pod = Netns::create(30);
    println!("$ ip netns exec {} psql -h 127.0.0.1 -p {port} -c \"select 1\"   # nothing listens in the pod", pod.name);
    let argv = psql_argv("127.0.0.1", port, "select 1");
    let ok = show(Command::new("ip").args(["netns", "exec", &pod.name]).args(&argv));
    println!(
        "-> {}",
        if ok {
            "UNEXPECTED: reached a database"
        } else {
            "refused, as a direct connection in the pod would be; the host's database was not reached"
        }
    );
    drop(pod);

    step("Dialling the proxy directly is refused: it serves only flows its redirect created");
    let (ip, proxy_port) = PROXY_V4.split_once(':').unwrap_or_default();
    expect_refused(ip, proxy_port.parse()?, "refused by the proxy");

    step("An upgrade without dropping a session: a transaction open across it commits");
    pg.admin_sql("create table upgrade_demo(id int)");
    let mut session = Command::new(testkit::psql_bin())
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = session.stdin.take().expect("piped");
    println!("(a psql session through the agent) begin; insert into upgrade_demo values (1);");
    std::io::Write::write_all(&mut stdin, b"begin;\ninsert into upgrade_demo values (1);\n")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = agent.pid().unwrap_or_default();
    println!("$ warden upgrade --config {}", agent.config.display());
    print!("{}", agent.upgrade());
    for line in agent.log().lines().filter(|l| l.contains("took over from") || l.contains("replaced: no longer")) {
        println!("  log: {}", strip_ansi(line));
    }
    println!("(the same psql session) insert into upgrade_demo values (2); commit; select count(*) ...");
    std::io::Write::write_all(
        &mut stdin,
        b"insert into upgrade_demo values (2);\ncommit;\n\\t on\nselect count(*) || ' rows committed' from upgrade_demo;\n",
    )?;
    drop(stdin);
    let out = session.wait_with_output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "-> pid {before} served that session to its end, pid {} serves every new one",
        agent.pid().unwrap_or_default()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent.log().contains("drained; exiting") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for line in agent.log().lines().filter(|l| l.contains("drained; exiting")) {
        println!("  log: {}", strip_ansi(line));
    }

    step("The agent stops: this database fails closed, at once");
    agent.stop();
    expect_refused("127.0.0.1", pg.port, "refused by the kernel while no agent serves");
    print!("{}", agent.status());

    step("Cleaning up (programs detached, PostgreSQL and MariaDB stopped)");
    drop(agent);
    drop(pg);
    drop(maria);
    drop(api);
    let _ = std::fs::remove_file(&kubeconfig);
    println!("done");
    Ok(())
}

/// `/metrics` of the agent at `addr` (plain HTTP/1.0).
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: warden\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
