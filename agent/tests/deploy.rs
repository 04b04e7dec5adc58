//! The deployment files hold up: every Kubernetes manifest in `deploy/kubernetes` deserialises
//! strictly into its `k8s-openapi` type (a field the type does not know is an error, where the
//! API server would silently drop it), the ConfigMaps carry a configuration and policies the
//! agent accepts, the DaemonSet agrees with them, and the container build file builds the binary
//! the way README.md does.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf()
}

/// Where `original` has something `typed` lost (an unknown field) or changed.
fn difference(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => return Some(format!("{here} is not a field of this type")),
                    Some(v) => {
                        if let Some(d) = difference(value, v, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys().find(|k| !a.contains_key(*k)).map(|k| format!("{path}.{k} appeared"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| difference(x, y, &format!("{path}[{i}]")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: {a} became {b}")),
    }
}

/// `document` as `T`, refusing any field `T` does not have.
fn strict<T: DeserializeOwned + Serialize>(document: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match difference(document, &back, "") {
        None => Ok(typed),
        Some(d) => Err(d),
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn checked<T: DeserializeOwned + Serialize>(file: &Path, doc: &Value) -> T {
    strict::<T>(doc).unwrap_or_else(|e| panic!("{} ({}): {e}", file.display(), doc["kind"]))
}

/// Every manifest the kustomization lists, checked strictly by kind.
struct Manifests {
    config: ConfigMap,
    policies: ConfigMap,
    daemonset: DaemonSet,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    account: ServiceAccount,
}

fn manifests() -> Manifests {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = documents(&dir.join("kustomization.yaml")).remove(0);
    let (mut config, mut policies, mut daemonset, mut role, mut binding, mut account) =
        (None, None, None, None, None, None);
    let mut namespaces = 0;
    for resource in kustomization["resources"].as_array().expect("resources") {
        let file = dir.join(resource.as_str().expect("a file name"));
        for doc in documents(&file) {
            match doc["kind"].as_str().expect("a kind") {
                "Namespace" => {
                    checked::<Namespace>(&file, &doc);
                    namespaces += 1;
                }
                "ServiceAccount" => account = Some(checked::<ServiceAccount>(&file, &doc)),
                "ClusterRole" => role = Some(checked::<ClusterRole>(&file, &doc)),
                "ClusterRoleBinding" => binding = Some(checked::<ClusterRoleBinding>(&file, &doc)),
                "ConfigMap" => {
                    let map = checked::<ConfigMap>(&file, &doc);
                    match map.metadata.name.as_deref() {
                        Some("warden-config") => config = Some(map),
                        Some("warden-policies") => policies = Some(map),
                        other => panic!("unexpected ConfigMap {other:?}"),
                    }
                }
                "DaemonSet" => daemonset = Some(checked::<DaemonSet>(&file, &doc)),
                other => panic!("{}: unexpected kind {other}", file.display()),
            }
        }
    }
    assert_eq!(namespaces, 1);
    Manifests {
        config: config.expect("the config ConfigMap"),
        policies: policies.expect("the policies ConfigMap"),
        daemonset: daemonset.expect("the DaemonSet"),
        role: role.expect("the ClusterRole"),
        binding: binding.expect("the ClusterRoleBinding"),
        account: account.expect("the ServiceAccount"),
    }
}

#[test]
fn a_misspelt_field_is_an_error_not_silently_dropped() {
    let doc = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"hostNetwrk": true, "containers": []}}}
    });
    let err = strict::<DaemonSet>(&doc).expect_err("an unknown field");
    assert!(err.contains(".spec.template.spec.hostNetwrk"), "{err}");
}

#[test]
fn the_manifests_are_strictly_kubernetes_and_agree_with_each_other() {
    let m = manifests();
    // The configuration the ConfigMap carries is one the agent accepts.
    let config_text = m.config.data.as_ref().and_then(|d| d.get("warden.yaml")).expect("warden.yaml");
    let config = warden::config::Config::parse(Path::new("warden.yaml"), config_text).expect("a valid configuration");
    assert!(config.kubernetes.is_some(), "the DaemonSet's agent watches its node's pods");
    let metrics = config.metrics.as_ref().expect("probes need metrics.listen");
    assert!(metrics.listen.ip().is_loopback());
    assert_eq!(config.cgroup_root, Path::new("/host/sys/fs/cgroup"));

    // The policies too.
    let tmp = tempfile::Builder::new().prefix("warden-deploy-policies-").tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    for (name, text) in m.policies.data.as_ref().expect("policy files") {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let loaded = warden::govern::reload::load(std::slice::from_ref(&dir));
    drop(tmp);
    let set = loaded.unwrap_or_else(|e| panic!("the policies ConfigMap has mistakes:\n{e}"));
    assert!(!set.is_empty());

    // The DaemonSet: host namespaces, probes on the metrics port, mounts where the
    // configuration points, the node name from the downward API, every node.
    let pod = m.daemonset.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod spec");
    assert_eq!((pod.host_network, pod.host_pid), (Some(true), Some(true)));
    assert!(pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    assert_eq!(pod.service_account_name.as_deref(), m.account.metadata.name.as_deref());
    let agent = &pod.containers[0];
    let get = agent.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP liveness probe");
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(metrics.listen.port()))
    );
    assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    // Started and ready ask whether the agent serving the node is this pod's (during a surge
    // the replaced pod's agent answers the shared port too).
    for probe in [&agent.startup_probe, &agent.readiness_probe] {
        let exec = probe.as_ref().and_then(|p| p.exec.as_ref()).expect("an exec probe");
        assert_eq!(
            exec.command.as_deref(),
            Some(&["warden".to_string(), "ready".into(), "--config".into(), "/etc/warden/warden.yaml".into()][..])
        );
    }
    // The update is a surge with a hand-over: never a node without its agent, and the replaced
    // agent is given longer than its drain deadline.
    let strategy = m.daemonset.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).expect("an update strategy");
    let rolling = strategy.rolling_update.as_ref().expect("a rolling update");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        (rolling.max_surge.clone(), rolling.max_unavailable.clone()),
        (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
    );
    assert!(
        pod.termination_grace_period_seconds.unwrap_or(30) > config.upgrade.drain_deadline_s as i64,
        "the grace period outlasts the drain deadline"
    );
    assert!(
        agent.ports.as_ref().is_none_or(|p| p.iter().all(|p| p.host_port.is_none())),
        "no host port: surge pods fit"
    );
    let mounts: Vec<&str> = agent.volume_mounts.iter().flatten().map(|v| v.mount_path.as_str()).collect();
    for needed in
        ["/sys/fs/bpf", "/host/sys/fs/cgroup", "/var/lib/warden", "/run/warden", "/etc/warden/policies", "/etc/passwd"]
    {
        assert!(mounts.contains(&needed), "{needed} not mounted: {mounts:?}");
    }
    assert!(config.audit.path.starts_with("/var/lib/warden") && config.state_dir.starts_with("/run/warden"));
    assert!(config.bpffs_dir.starts_with("/sys/fs/bpf"));
    assert_eq!(
        agent.args.as_deref(),
        Some(&["run".to_string(), "--config".into(), "/etc/warden/warden.yaml".into()][..])
    );
    let node_name = agent.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
    let security = agent.security_context.as_ref().expect("a security context");
    assert_eq!(security.privileged, Some(false));
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    // RBAC: read-only, and bound to the agent's account.
    for rule in &m.role.rules.clone().unwrap_or_default() {
        for verb in &rule.verbs {
            assert!(["get", "list", "watch"].contains(&verb.as_str()), "a write verb: {verb}");
        }
    }
    assert_eq!(m.binding.role_ref.name, m.role.metadata.name.clone().unwrap_or_default());
    assert!(m.binding.subjects.iter().flatten().any(|s| Some(&s.name) == m.account.metadata.name.as_ref()));
}

#[test]
fn the_container_build_file_builds_the_binary_as_the_readme_does() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let containerfile = std::fs::read_to_string(repo().join("deploy/Containerfile")).expect("Containerfile");
    let build = "cargo xtask build --release";
    assert!(readme.contains(build), "README.md builds with `{build}`");
    let runs: Vec<&str> = containerfile.lines().filter_map(|l| l.strip_prefix("RUN ")).collect();
    assert!(runs.contains(&build), "the build stage runs `{build}`: {runs:?}");
    assert!(containerfile.contains("COPY --from=build /src/target/release/warden /usr/local/bin/warden"));
    assert!(containerfile.lines().filter(|l| l.starts_with("FROM ")).count() >= 2, "a multi-stage build");
}
