//! Kubernetes: pods are identities and Services are governed databases. The API server is this
//! test's own (`testkit::kubeapi`, the real list/watch wire format: resourceVersion, bookmarks,
//! 410 Gone); everything else is real — the agent's kube client, the kernel programs, cgroups
//! at kubelet's path shapes, network namespaces as pods, PostgreSQL and psql. A Service's
//! cluster IP lives on a dummy interface the test makes, and kube-proxy's DNAT is an nftables
//! table the test makes, so nothing leaves the machine. Run as root through `cargo xtask test`.

use std::{
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use testkit::{
    Agent, DEFAULT_AUDIT, Netns, PgOptions, Postgres, check,
    kubeapi::{FakeKubeApi, PodCgroup, Resource, pod},
    output, psql, psql_argv, sample, scrape, unique,
};

const NODE: &str = "node-1";
const TOKEN: &str = "warden-test-token";

fn pod_uid(n: u8) -> String {
    format!("5f0c7a1e-1b2c-4d3e-8f40-0000000000{n:02}")
}

fn container_id(n: u8) -> String {
    format!("{:064x}", 0x00c0_ffee_0000_u64 + u64::from(n))
}

/// Pod `n`'s container cgroup under kubelet's systemd driver (containerd).
fn systemd(n: u8) -> PodCgroup {
    PodCgroup::systemd(&pod_uid(n), &container_id(n))
}

/// Pod `n`'s container cgroup under kubelet's cgroupfs driver (CRI-O).
fn cgroupfs(n: u8) -> PodCgroup {
    PodCgroup::at(&format!("/kubepods/burstable/pod{}/crio-{}", pod_uid(n), container_id(n)))
}

fn kube_yaml(api: &FakeKubeApi, dir: &std::path::Path) -> String {
    let kubeconfig = dir.join(unique("kubeconfig-"));
    std::fs::write(&kubeconfig, api.kubeconfig(TOKEN)).expect("kubeconfig");
    format!(
        "kubernetes:\n  kubeconfig: {}\n  node_name: {NODE}\n  pod_wait_ms: 2000\n  deleted_pod_grace_s: 3\n",
        kubeconfig.display()
    )
}

fn opens(agent: &Agent) -> Vec<Value> {
    agent.records().into_iter().filter(|r| r["kind"] == "connection_open").collect()
}

/// The next connection_open after `before` of them.
fn next_open(agent: &Agent, before: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = opens(agent);
        if all.len() > before {
            return all[before].clone();
        }
        assert!(Instant::now() < deadline, "no connection_open\n{}", agent.log());
        sleep(Duration::from_millis(50));
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etl_pod(labels: Value) -> Value {
    pod("crm", "etl-7d9f6c-x2x4z", &pod_uid(1), NODE, labels, Some(("ReplicaSet", "etl-7d9f6c")))
}

const RESTRICTED: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: restricted}\nspec:\n  selector: {matchLabels: {tier: restricted}}\n  rules: []\n  default: deny\n";

#[test]
fn pods_are_identities_followed_through_relabelling_late_arrival_deletion_and_relists() {
    let api = FakeKubeApi::start();
    api.put(
        Resource::ReplicaSets,
        json!({
            "metadata": {"name": "etl-7d9f6c", "namespace": "crm", "uid": "etl-7d9f6c-uid",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "etl", "uid": "d-uid", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "etl"}}, "template": {"metadata": {"labels": {"app": "etl"}}}}
        }),
    );
    // The pod claims Warden's own keys: they are Warden's to set, and it cannot.
    api.put(
        Resource::Pods,
        etl_pod(json!({"app": "etl", "warden/identity": "etl-agent", "k8s.warden.dev/namespace": "kube-system"})),
    );
    // A pod of another node: this node's watch never shows it.
    api.put(Resource::Pods, pod("crm", "elsewhere", &pod_uid(9), "node-2", json!({"app": "etl"}), None));

    let pg = Postgres::start();
    let net = Netns::create(41);
    let tmp = testkit::temp_dir("warden-k8s-");
    let dir = tmp.path().to_path_buf();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    std::fs::write(policies.join("restricted.yaml"), RESTRICTED).expect("policy");
    // The agent runs as in its DaemonSet: in a cgroup of its own and a cgroup namespace rooted
    // there, so that until it joins the host's, every path it reads is relative to itself.
    let agent_cgroup = PodCgroup::at(&format!("/{}", unique("wdn-agent-pod")));
    let wrapper = dir.join("warden-in-a-pod");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > {}/cgroup.procs && exec unshare --cgroup {} \"$@\"\n",
            agent_cgroup.leaf.display(),
            testkit::warden_bin().display()
        ),
    )
    .expect("wrapper");
    check(Command::new("chmod").arg("755").arg(&wrapper));
    let agent = Agent::start_with_bin_top_level(
        &wrapper,
        &format!("  - {{name: main, address: '*:{}'}}", pg.port),
        &format!("{}policies: [{}]\n", kube_yaml(&api, &dir), policies.display()),
    );
    assert!(agent.log().contains("joined the host's cgroup namespace"), "{}", agent.log());
    assert!(agent.log().contains("pods of this node listed"), "{}", agent.log());
    assert!(api.authorizations().iter().all(|a| a == &format!("Bearer {TOKEN}")), "{:?}", api.authorizations());
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.contains("/api/v1/pods?") && r.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "a node-scoped list: {requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "a watch with bookmarks: {requests:#?}"
    );

    // A client in the pod is the pod: labels, namespace, service account, owning Deployment.
    let etl = systemd(1);
    let before = opens(&agent).len();
    ok(&output(&mut etl.command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 1"))));
    let open = next_open(&agent, before);
    let identity = &open["identity"];
    assert_eq!(identity["pod_uid"], pod_uid(1), "{open}");
    assert_eq!(identity["container_id"], container_id(1));
    assert_eq!(identity["container_runtime"], "containerd");
    assert_eq!(
        identity["pod"],
        json!({"namespace": "crm", "name": "etl-7d9f6c-x2x4z", "service_account": "etl-7d9f6c-x2x4z-sa",
            "owner": {"kind": "Deployment", "name": "etl"}})
    );
    let labels = &identity["labels"];
    assert_eq!(labels["app"], "etl");
    assert_eq!(labels["warden/identity"], "etl-agent");
    assert_eq!(labels["k8s.warden.dev/namespace"], "crm", "the pod's own claim is dropped: {labels}");
    assert_eq!(labels["k8s.warden.dev/owner-kind"], "Deployment");
    assert_eq!(labels["k8s.warden.dev/owner-name"], "etl");
    assert_eq!(labels["k8s.warden.dev/service-account"], "etl-7d9f6c-x2x4z-sa");

    // Relabelled while a session is open: its next statement is judged by the new labels.
    let script = dir.join("relabel.sql");
    std::fs::write(
        &script,
        "select 'before-relabel' as before_relabel;\n\\! sleep 3\nselect 'after-relabel' as after_relabel;\n",
    )
    .expect("script");
    let mut argv = psql_argv(&net.host_ip, pg.port, "");
    argv.truncate(argv.len() - 2);
    argv.extend(["-f".to_string(), script.display().to_string()]);
    let session: Child =
        etl.command(&net.name, &argv).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("psql");
    let before_relabel = agent.wait_record("the statement before relabelling", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|t| t.contains("before_relabel"))
    });
    api.put(Resource::Pods, etl_pod(json!({"app": "etl", "tier": "restricted"})));
    let out = session.wait_with_output().expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("before-relabel") && !stdout.contains("after-relabel"), "{stdout}\n{stderr}");
    assert!(stderr.contains("restricted"), "refused by the policy the new labels select: {stderr}");
    let relabelled = agent.wait_record("identity_relabelled", |r| r["kind"] == "identity_relabelled");
    assert_eq!(relabelled["labels"]["tier"], "restricted");
    assert_eq!(relabelled["session"], before_relabel["session"]);
    let after = agent.wait_record("the refused statement", |r| {
        r["kind"] == "statement" && r["text"].as_str().is_some_and(|t| t.contains("after_relabel"))
    });
    assert_eq!(after["verdict"]["decision"], "deny", "{after}");

    // A flow that arrives before its pod: it waits, and is the pod once the watch shows it.
    api.put(
        Resource::Jobs,
        json!({
            "metadata": {"name": "report-29000000", "namespace": "batch", "uid": "report-29000000-uid",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report", "uid": "cj-uid", "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "report:1"}]}}}
        }),
    );
    let late = cgroupfs(2);
    let before = opens(&agent).len();
    let client = late
        .command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 'late'"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    sleep(Duration::from_millis(700));
    let late_pod = pod(
        "batch",
        "report-29000000-q8w7e",
        &pod_uid(2),
        NODE,
        json!({"app": "report"}),
        Some(("Job", "report-29000000")),
    );
    api.put(Resource::Pods, late_pod);
    let out = client.wait_with_output().expect("psql");
    assert_eq!(ok(&out).trim(), "late");
    let open = next_open(&agent, before);
    assert_eq!(open["identity"]["pod"]["name"], "report-29000000-q8w7e");
    assert_eq!(open["identity"]["pod"]["owner"], json!({"kind": "CronJob", "name": "report"}));
    assert_eq!(open["identity"]["container_runtime"], "cri-o");

    // A pod the watch never shows (another node's): refused, never judged anonymously.
    let stranger = systemd(9);
    let out = output(&mut stranger.command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 1")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not known to the Kubernetes API"), "{out:?}");
    let refused = agent.wait_record("connection_refused", |r| r["kind"] == "connection_refused");
    assert_eq!(refused["identity"]["pod_uid"], pod_uid(9));

    // A deleted pod still resolves within its grace period (late flows, last statements), and
    // not after it.
    api.delete(Resource::Pods, "batch", "report-29000000-q8w7e");
    let deleted = Instant::now();
    sleep(Duration::from_millis(300));
    let before = opens(&agent).len();
    ok(&output(&mut late.command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 1"))));
    assert_eq!(next_open(&agent, before)["identity"]["pod"]["name"], "report-29000000-q8w7e");
    sleep(Duration::from_secs(4).saturating_sub(deleted.elapsed()));
    let out = output(&mut late.command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 1")));
    assert!(!out.status.success(), "a pod deleted past its grace period is nobody: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not known to the Kubernetes API"), "{out:?}");

    // The API compacts its history: the watch gets 410 Gone, lists again, and goes on.
    let lists = |api: &FakeKubeApi| {
        api.requests().iter().filter(|r| r.contains("/api/v1/pods?") && !r.contains("watch=true")).count()
    };
    let listed = lists(&api);
    api.expire();
    let deadline = Instant::now() + Duration::from_secs(15);
    while lists(&api) == listed {
        assert!(Instant::now() < deadline, "no relist after 410 Gone: {:#?}", api.requests());
        sleep(Duration::from_millis(50));
    }
    api.put(Resource::Pods, pod("crm", "after-relist", &pod_uid(3), NODE, json!({"app": "etl"}), None));
    let third = systemd(3);
    let before = opens(&agent).len();
    ok(&output(&mut third.command(&net.name, &psql_argv(&net.host_ip, pg.port, "select 1"))));
    assert_eq!(next_open(&agent, before)["identity"]["pod"]["name"], "after-relist");
    drop(agent);
    drop(agent_cgroup);
    drop(tmp);
}

/// kube-proxy's part, for the test: DNAT from a Service's cluster IP and node port to its
/// backend, in the host's namespace (pods' packets arrive through PREROUTING, the host's own
/// through OUTPUT). Removed on drop.
struct KubeProxy {
    table: String,
}

impl KubeProxy {
    /// `cluster_ip` is put on `interface` (one the test made: a packet that escaped the
    /// redirect would stay on the machine).
    fn install(interface: &str, cluster_ip: &str, port: u16, node_ip: &str, node_port: u16, backend: &str) -> Self {
        let proxy = Self { table: unique("wdnkp") };
        check(Command::new("ip").args(["addr", "add", &format!("{cluster_ip}/32"), "dev", interface]));
        let rules = format!(
            "table ip {t} {{\n chain pre {{ type nat hook prerouting priority -100; ip daddr {cluster_ip} tcp dport {port} dnat to {backend}; ip daddr {node_ip} tcp dport {node_port} dnat to {backend}; }}\n chain out {{ type nat hook output priority -100; ip daddr {cluster_ip} tcp dport {port} dnat to {backend}; ip daddr {node_ip} tcp dport {node_port} dnat to {backend}; }}\n}}\n",
            t = proxy.table
        );
        let file = testkit::temp_file(&format!("{}-", proxy.table), ".nft", rules);
        check(Command::new("nft").arg("-f").arg(file.path()));
        drop(file);
        proxy
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        let _ = output(Command::new("nft").args(["delete", "table", "ip", &self.table]));
    }
}

fn governed_as(agent: &Agent, netns: Option<&Netns>, ip: &str, port: u16) -> Value {
    let before = opens(agent).len();
    let argv = psql_argv(ip, port, "select 1");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = ns.command(std::path::Path::new(&argv[0]));
            c.args(&argv[1..]);
            c
        }
        None => psql(ip, port, "select 1"),
    };
    assert_eq!(ok(&output(&mut cmd)).trim(), "1");
    next_open(agent, before)
}

#[test]
fn a_service_is_governed_at_its_cluster_ip_node_port_and_backends_and_followed() {
    let api = FakeKubeApi::start();
    // The host's own connection to the cluster IP leaves from that (local) address.
    let pg = Postgres::start_with(PgOptions { hba: "host all all 10.96.0.0/16 trust", ..PgOptions::default() });
    let net = Netns::create(42);
    let (cluster_ip, node_port) = ("10.96.77.10", 30432u16);
    let backend = format!("{}:{}", net.host_ip, pg.port);
    let _kube_proxy = KubeProxy::install(&net.host_if, cluster_ip, 5432, &net.host_ip, node_port, &backend);
    let service = json!({
        "metadata": {"name": "pg", "namespace": "crm", "uid": "svc-uid"},
        "spec": {"type": "NodePort", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres", "nodePort": node_port, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}}
    });
    api.put(Resource::Services, service.clone());
    let slice = |ip: &str| {
        json!({
            "metadata": {"name": "pg-x7k2p", "namespace": "crm", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "ports": [{"name": "postgres", "port": pg.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": NODE}]
        })
    };
    api.put(Resource::EndpointSlices, slice(&net.host_ip));
    let tmp = testkit::temp_dir("warden-k8s-");
    let dir = tmp.path().to_path_buf();
    let agent = Agent::start_with_top_level(
        "  - {name: crm-pg, address: 'crm/pg:postgres'}",
        "",
        DEFAULT_AUDIT,
        &kube_yaml(&api, &dir),
    );
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.contains("/api/v1/namespaces/crm/services?") && r.contains("metadata.name%3Dpg"))
    );
    assert!(requests.iter().any(|r| r.contains("/apis/discovery.k8s.io/v1/namespaces/crm/endpointslices?")
        && r.contains("kubernetes.io%2Fservice-name%3Dpg")));

    // The cluster IP (from a pod and from the host), the node port, the backend: all governed.
    for (netns, ip, port) in [
        (Some(&net), cluster_ip, 5432),
        (None, cluster_ip, 5432),
        (Some(&net), net.host_ip.as_str(), node_port),
        (Some(&net), net.host_ip.as_str(), pg.port),
    ] {
        let open = governed_as(&agent, netns, ip, port);
        assert_eq!(open["database"], "crm-pg");
        assert_eq!(open["orig_dst"], format!("{ip}:{port}"));
    }

    // The backend moves: the new address is governed, the old one released, without a restart.
    api.put(Resource::EndpointSlices, slice("127.0.0.1"));
    let changed = agent.wait_record("endpoints_changed", |r| {
        r["kind"] == "endpoints_changed" && r["added"] == json!([format!("127.0.0.1:{}", pg.port)])
    });
    assert_eq!(changed["database"], "crm-pg");
    assert_eq!(changed["removed"], json!([backend]));
    assert_eq!(governed_as(&agent, None, "127.0.0.1", pg.port)["database"], "crm-pg");
    let redirected = agent.stat("redirected");
    let before = opens(&agent).len();
    ok(&output(&mut psql(&net.host_ip, pg.port, "select 1")));
    sleep(Duration::from_millis(300));
    assert_eq!(agent.stat("redirected"), redirected, "the old backend is no longer governed");
    assert_eq!(opens(&agent).len(), before);

    // A restart while the API server is down: the Service stays governed (the agent starts from
    // the endpoints its predecessor saved, not from nothing).
    let api_addr = api.addr.to_string();
    drop(api);
    let mut agent = agent;
    agent.stop();
    agent.spawn();
    assert!(agent.log().contains("serving before these Kubernetes watches listed"), "{}", agent.log());
    assert_eq!(governed_as(&agent, Some(&net), cluster_ip, 5432)["database"], "crm-pg");
    assert_eq!(governed_as(&agent, None, "127.0.0.1", pg.port)["database"], "crm-pg");
    // The API server is back, with its objects.
    let api = FakeKubeApi::start_on(&api_addr);
    api.put(Resource::Services, service.clone());
    api.put(Resource::EndpointSlices, slice("127.0.0.1"));
    // Both watches list again (and then watch) before the Service is deleted.
    let watching =
        |api: &FakeKubeApi, what: &str| api.requests().iter().any(|r| r.contains(what) && r.contains("watch=true"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(watching(&api, "/services?") && watching(&api, "/endpointslices?")) {
        assert!(Instant::now() < deadline, "the watches did not come back: {:#?}", api.requests());
        sleep(Duration::from_millis(100));
    }

    // The Service goes (deleted, or being re-created): its cluster IP and node port are
    // released; its backends stay governed while their EndpointSlice exists.
    api.delete(Resource::Services, "crm", "pg");
    let gone = agent.wait_record("the Service's front removed", |r| {
        r["kind"] == "endpoints_changed"
            && r["removed"].as_array().is_some_and(|a| a.contains(&json!(format!("{cluster_ip}:5432"))))
    });
    let removed = gone["removed"].as_array().expect("removed");
    assert!(removed.contains(&json!(format!("[::]:{node_port}"))), "{gone}");
    assert!(!removed.contains(&json!(format!("127.0.0.1:{}", pg.port))), "{gone}");
    assert_eq!(governed_as(&agent, None, "127.0.0.1", pg.port)["database"], "crm-pg");
    // Its EndpointSlice goes too: nothing of it is governed any more.
    api.delete(Resource::EndpointSlices, "crm", "pg-x7k2p");
    agent.wait_record("the backends removed", |r| {
        r["kind"] == "endpoints_changed" && r["removed"] == json!([format!("127.0.0.1:{}", pg.port)])
    });
    drop(agent);
    drop(tmp);
}

#[test]
fn metrics_move_under_load_and_stay_bounded_with_a_thousand_pods() {
    const PODS: usize = 1_000;
    let api = FakeKubeApi::start();
    for n in 0..PODS {
        let uid = format!("7a000000-0000-4000-8000-{n:012}");
        api.put(Resource::Pods, pod("load", &format!("worker-{n}"), &uid, NODE, json!({"app": "worker"}), None));
    }
    let pg = Postgres::start();
    pg.pgbench_init(1);
    let tmp = testkit::temp_dir("warden-k8s-");
    let dir = tmp.path().to_path_buf();
    let metrics_addr = format!("127.0.0.1:{}", testkit::free_port());
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    std::fs::write(
        policies.join("no-ddl.yaml"),
        "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: no-ddl}\nspec:\n  selector: {}\n  rules:\n    - {name: no-ddl, match: {class: [ddl]}, action: deny}\n  default: allow\n",
    )
    .expect("policy");
    let agent = Agent::start_with_top_level(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        "",
        DEFAULT_AUDIT,
        &format!("{}metrics:\n  listen: '{metrics_addr}'\npolicies: [{}]\n", kube_yaml(&api, &dir), policies.display()),
    );
    assert_eq!(scrape(&metrics_addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(scrape(&metrics_addr, "/readyz"), (200, "ready\n".to_string()));
    let (status, before) = scrape(&metrics_addr, "/metrics");
    assert_eq!(status, 200);
    assert!(sample(&before, "warden_kernel_map_entries", &["map=\"GOVERNED\""]) >= 1.0, "{before}");
    assert_eq!(sample(&before, "warden_kubernetes_pods", &["state=\"live\""]), PODS as f64, "{before}");

    // pgbench (select-only, 4 clients) through the proxy; scraped while it runs.
    let mut bench = Command::new(testkit::pgbench_bin())
        .args(["-S", "-c", "4", "-j", "2", "-T", "4", "-n", "-U", "postgres", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .arg("postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    sleep(Duration::from_secs(2));
    let (_, during) = scrape(&metrics_addr, "/metrics");
    let out = bench.wait().expect("pgbench");
    assert!(out.success());
    let (_, after) = scrape(&metrics_addr, "/metrics");
    assert_eq!(sample(&during, "warden_sessions_open", &["database=\"main\""]), 4.0, "{during}");
    let reads = |m: &str| sample(m, "warden_statements_total", &["class=\"read\"", "decision=\"allow\""]);
    assert!(reads(&before) < reads(&during) && reads(&during) < reads(&after), "statements counted as they run");
    let judged = |m: &str| sample(m, "warden_judgement_seconds_count", &[]);
    assert!(judged(&during) < judged(&after));
    assert!(sample(&after, "warden_flows_total", &["database=\"main\""]) >= 4.0, "{after}");
    assert!(sample(&after, "warden_connect_seconds_count", &[]) >= 4.0);
    assert!(sample(&after, "warden_audit_ring_used_bytes", &[]) > sample(&before, "warden_audit_ring_used_bytes", &[]));
    assert!(sample(&after, "warden_kernel_redirected_total", &[]) >= 4.0);
    // A refused statement is counted as denied.
    let refused = output(&mut psql("127.0.0.1", pg.port, "create table refused_here(i int)"));
    assert!(!refused.status.success());
    let (_, denied) = scrape(&metrics_addr, "/metrics");
    assert_eq!(sample(&denied, "warden_statements_total", &["class=\"ddl\"", "decision=\"deny\""]), 1.0, "{denied}");

    // A thousand pods connect once each (one process moving through their cgroups): the flow
    // series stay bounded, the rest counted as `other`.
    let cgroups: Vec<PodCgroup> = (0..PODS)
        .map(|n| {
            PodCgroup::systemd(
                &format!("7a000000-0000-4000-8000-{n:012}"),
                &format!("{:064x}", 0x7a00_0000_u64 + n as u64),
            )
        })
        .collect();
    let script = format!(
        "import os, sys, psycopg\nroot = sys.argv[1]\nfor leaf in sys.argv[2:]:\n    open(os.path.join(leaf, 'cgroup.procs'), 'w').write(str(os.getpid()))\n    psycopg.connect(host='127.0.0.1', port={}, user='postgres', dbname='postgres').close()\nopen(os.path.join(root, 'cgroup.procs'), 'w').write(str(os.getpid()))\n",
        pg.port
    );
    let root = warden::cgroup::default_root();
    let run =
        output(Command::new("python3").arg("-c").arg(&script).arg(&root).args(cgroups.iter().map(|c| c.leaf.clone())));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (_, metrics) = scrape(&metrics_addr, "/metrics");
    let series = metrics.lines().filter(|l| l.starts_with("warden_flows_total{")).count();
    assert!(series <= warden::admin::metrics::MAX_IDENTITY_SERIES + 2, "{series} flow series");
    assert!(
        sample(&metrics, "warden_flows_total", &["identity=\"other\""])
            >= (PODS - warden::admin::metrics::MAX_IDENTITY_SERIES) as f64
    );
    assert!(
        sample(&metrics, "warden_flows_total", &["identity=\"pod:load/worker-7\""]) >= 1.0,
        "pods are named by workload"
    );
    drop(cgroups);
    drop(agent);
    drop(tmp);
}
