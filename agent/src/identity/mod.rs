//! Workload identity: from the kernel's facts about a connecting process (pid, uid, cgroup id)
//! to what an operator recognises — executable, user, cgroup path, container, labels.
//!
//! Labels come from Kubernetes (cgroup path → container and pod UID ([`container`]) → the pod
//! as the node's watch shows it ([`pods`]): its labels, namespace, service account and owner),
//! else from `warden exec` (a file per labelled cgroup under the state directory, written by
//! root before the workload starts). The [`Resolver`] keeps the filesystem work off the proxy's
//! async path and caches per cgroup; pods are looked up per flow (they change on their own).

pub mod cache;
pub mod container;
pub mod pods;
mod resolver;
mod users;
pub mod workloads;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use self::{
    cache::{Clock, ManualClock, MonotonicClock},
    container::{ContainerRef, Layout, RootError, RuntimeRoot, RuntimeRoots, parse_container},
    pods::{Pod, PodIdentity, Pods},
    resolver::{Relabel, Resolver, ResolverConfig},
};
use crate::{cgroup::CgroupId, flow::KernelFacts};

/// Everything known about the workload behind a flow. Serialised into audit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub comm: String,
    /// `/proc/PID/exe` when the process was still alive at resolution time and still ran the
    /// program it connected from (same comm as the kernel recorded).
    pub exe: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub cgroup_id: CgroupId,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    /// The runtime that made the container (`containerd`, `cri-o`, `docker`, `podman`, `cri`).
    pub container_runtime: Option<String>,
    pub pod_uid: Option<String>,
    /// The pod behind `pod_uid`, as the Kubernetes API describes it.
    pub pod: Option<PodIdentity>,
    pub labels: BTreeMap<String, String>,
    pub netns_cookie: u64,
}

impl Identity {
    /// The tenant this identity belongs to, for what is shared out per tenant (connection
    /// limits, the audit ring's fair shares): a pod's namespace; else its `warden/identity`
    /// label, else its container, else its user. Not its cgroup: cgroups are cheap to make (systemd user scopes,
    /// delegated subtrees, a root workload's own mkdir), users are not. Prefixed by kind, so a
    /// label cannot name another tenant's container.
    pub fn tenant_key(&self) -> String {
        if let Some(pod) = &self.pod {
            // A pod's labels and name are its own to choose (and change): one tenant per
            // namespace, so relabelling or new pods never multiply a namespace's shares.
            format!("namespace:{}", pod.namespace)
        } else if let Some(name) = self.labels.get("warden/identity") {
            format!("identity:{name}")
        } else if let Some(container) = &self.container_id {
            format!("container:{container}")
        } else {
            format!("uid:{}", self.uid)
        }
    }

    /// The identity from the kernel's facts alone (nothing resolved yet).
    pub fn from_facts(facts: &KernelFacts) -> Self {
        Self {
            pid: facts.pid,
            comm: facts.comm.clone(),
            exe: None,
            uid: facts.uid,
            user: None,
            gid: facts.gid,
            cgroup_id: facts.cgroup_id,
            cgroup: None,
            container_id: None,
            container_runtime: None,
            pod_uid: None,
            pod: None,
            labels: BTreeMap::new(),
            netns_cookie: facts.netns_cookie,
        }
    }
}

/// A `warden exec` workload's label file (`STATE_DIR/workloads/CGROUP_ID.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadLabels {
    pub cgroup: String,
    pub labels: BTreeMap<String, String>,
}

/// Where `warden exec` writes label files.
pub fn workloads_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("workloads")
}

/// Validates a label as Kubernetes does: an optional DNS-subdomain prefix and `/`, a name of at
/// most 63 characters (alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric), and a
/// value of the same shape (or empty).
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    fn name_ok(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(|part| name_ok(part) && !part.contains('_')))
    {
        return Err(format!("label key {key:?}: prefix must be a DNS subdomain"));
    }
    if !name_ok(name) {
        return Err(format!(
            "label key {key:?}: expected at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "label value {value:?} (for {key:?}): expected at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

#[cfg(test)]
impl Identity {
    /// The identity of a psql process (pid 1, root) in cgroup `cgroup`, for tests.
    pub(crate) fn psql_for_tests(cgroup: u64) -> Self {
        Self::from_facts(&crate::flow::KernelFacts {
            pid: 1,
            tid: 1,
            uid: 0,
            gid: 0,
            comm: "psql".into(),
            cgroup_id: crate::cgroup::CgroupId(cgroup),
            netns_cookie: cgroup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_syntax() {
        assert!(validate_label("warden/identity", "recsys-agent").is_ok());
        assert!(validate_label("app.kubernetes.io/name", "etl").is_ok());
        assert!(validate_label("team", "").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("-bad", "x").is_err());
        assert!(validate_label("ok", "bad value").is_err());
        assert!(validate_label("a/b/c", "x").is_err());
        assert!(validate_label(&"k".repeat(64), "x").is_err());
    }

    #[test]
    fn a_pods_tenant_is_namespaced_whatever_its_labels_claim() {
        let mut identity = Identity::psql_for_tests(7);
        identity.labels.insert("warden/identity".into(), "payments-api".into());
        assert_eq!(identity.tenant_key(), "identity:payments-api");
        identity.pod = Some(PodIdentity {
            namespace: "sandbox".into(),
            name: "x-1".into(),
            service_account: None,
            owner: Some(pods::Owner { kind: "Deployment".into(), name: "x".into() }),
        });
        assert_eq!(identity.tenant_key(), "namespace:sandbox", "labels a pod chooses make no tenant");
        identity.labels.clear();
        assert_eq!(identity.tenant_key(), "namespace:sandbox");
    }

    #[test]
    fn identity_keeps_its_audit_field_names() {
        let identity = Identity::psql_for_tests(7);
        let json = serde_json::to_value(&identity).expect("serialises");
        let keys: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        for key in [
            "pid",
            "comm",
            "exe",
            "uid",
            "user",
            "gid",
            "cgroup_id",
            "cgroup",
            "container_id",
            "pod_uid",
            "pod",
            "labels",
            "netns_cookie",
        ] {
            assert!(keys.contains(&key), "{key} missing from {json}");
        }
        assert_eq!(json["cgroup_id"], 7);
        assert_eq!(json["container_runtime"], serde_json::Value::Null);
    }
}
