//! Workload identity: from the kernel's facts about a connecting process (pid, uid, cgroup id)
//! to what an operator recognises — executable, user, cgroup path, container, labels.
//!
//! Labels come from `warden exec` (a file per labelled cgroup under the state directory, written
//! by root before the workload starts). Kubernetes pod labels come later through the same
//! cgroup → container → pod chain; the container id is parsed here already.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{cgroup::CgroupId, flow::KernelFacts};

/// Everything known about the workload behind a flow. Serialised into audit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub comm: String,
    /// `/proc/PID/exe` when the process was still alive at resolution time.
    pub exe: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub cgroup_id: CgroupId,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub netns_cookie: u64,
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

#[derive(Debug, Clone)]
struct CgroupInfo {
    path: Option<String>,
    container: Option<ContainerRef>,
    labels: BTreeMap<String, String>,
}

/// Resolves kernel facts into identities, caching per cgroup id.
pub struct Resolver {
    cgroup_root: PathBuf,
    workloads: PathBuf,
    cgroups: Mutex<HashMap<CgroupId, CgroupInfo>>,
    users: Mutex<HashMap<u32, Option<String>>>,
}

impl Resolver {
    pub fn new(cgroup_root: &Path, state_dir: &Path) -> Self {
        Self {
            cgroup_root: cgroup_root.to_path_buf(),
            workloads: workloads_dir(state_dir),
            cgroups: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    pub fn resolve(&self, facts: &KernelFacts) -> Identity {
        let info = self.cgroup_info(facts.cgroup_id, facts.pid);
        let exe = fs::read_link(format!("/proc/{}/exe", facts.pid)).ok().map(|p| p.display().to_string());
        Identity {
            pid: facts.pid,
            comm: facts.comm.clone(),
            exe,
            uid: facts.uid,
            user: self.user_name(facts.uid),
            gid: facts.gid,
            cgroup_id: facts.cgroup_id,
            cgroup: info.path,
            container_id: info.container.as_ref().map(|c| c.id.clone()),
            pod_uid: info.container.and_then(|c| c.pod_uid),
            labels: info.labels,
            netns_cookie: facts.netns_cookie,
        }
    }

    fn cgroup_info(&self, id: CgroupId, pid: u32) -> CgroupInfo {
        if let Some(info) = self.cgroups.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return info.clone();
        }
        let labelled: Option<WorkloadLabels> = fs::read(self.workloads.join(format!("{id}.json")))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        // The process's own view is cheapest and right while it lives (and is in that cgroup);
        // otherwise the label file names the path; walking the hierarchy is the last resort.
        let path = crate::cgroup::path_of_pid(pid)
            .ok()
            .filter(|p| crate::cgroup::id_of(&self.cgroup_root.join(p.trim_start_matches('/'))).ok() == Some(id))
            .or_else(|| labelled.as_ref().map(|l| l.cgroup.clone()))
            .or_else(|| crate::cgroup::find_path_of_id(&self.cgroup_root, id));
        let info = CgroupInfo {
            container: path.as_deref().and_then(parse_container),
            path,
            labels: labelled.map(|l| l.labels).unwrap_or_default(),
        };
        self.cgroups.lock().unwrap_or_else(|p| p.into_inner()).insert(id, info.clone());
        info
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users
            .entry(uid)
            .or_insert_with(|| {
                let passwd = fs::read_to_string("/etc/passwd").ok()?;
                passwd.lines().find_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let _pw = f.next()?;
                    (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
                })
            })
            .clone()
    }
}

/// A container found in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub runtime: &'static str,
    pub id: String,
    /// The Kubernetes pod UID when the path is under a kubepods hierarchy.
    pub pod_uid: Option<String>,
}

/// Parses the container id (and pod UID) out of a cgroup path, for the shapes the common
/// runtimes create with both the systemd and the cgroupfs drivers.
pub fn parse_container(path: &str) -> Option<ContainerRef> {
    const PREFIXES: &[(&str, &str)] = &[
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
        ("containerd-", "containerd"),
    ];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segments.iter().find_map(|s| {
        let s = s.strip_suffix(".slice").unwrap_or(s);
        // systemd driver: kubepods-besteffort-pod<uid with _>.slice; cgroupfs: pod<uid>
        let uid = s.rsplit_once("-pod").map(|(_, u)| u).or_else(|| s.strip_prefix("pod"))?;
        (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '_' || c == '-'))
            .then(|| uid.replace('_', "-"))
    });
    for (i, seg) in segments.iter().enumerate().rev() {
        let bare = seg.strip_suffix(".scope").unwrap_or(seg);
        let (runtime, id) = match PREFIXES.iter().find_map(|(p, r)| bare.strip_prefix(p).map(|id| (*r, id))) {
            Some(found) => found,
            // cgroupfs driver: the id is the whole segment, under /docker or a kubepods pod.
            None if i > 0 && (segments[i - 1] == "docker" || pod_uid.is_some()) => {
                (if segments[i - 1] == "docker" { "docker" } else { "containerd" }, bare)
            }
            None => continue,
        };
        if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(ContainerRef { runtime, id: id.to_string(), pod_uid });
        }
    }
    None
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
mod tests {
    use super::*;

    const ID: &str = "3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";

    #[test]
    fn container_ids_from_real_path_shapes() {
        let cases = [
            // containerd, systemd driver (kubeadm default)
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"),
            ),
            // containerd, cgroupfs driver
            (
                format!("/kubepods/besteffort/pod0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6/{ID}"),
                "containerd",
                Some("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"),
            ),
            // CRI-O
            (
                format!("/kubepods.slice/kubepods-pod0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6.slice/crio-{ID}.scope"),
                "cri-o",
                Some("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"),
            ),
            // Docker, systemd and cgroupfs drivers
            (format!("/system.slice/docker-{ID}.scope"), "docker", None),
            (format!("/docker/{ID}"), "docker", None),
            // Podman
            (format!("/machine.slice/libpod-{ID}.scope"), "podman", None),
        ];
        for (path, runtime, pod) in cases {
            let c = parse_container(&path).unwrap_or_else(|| panic!("no container in {path}"));
            assert_eq!((c.runtime, c.id.as_str(), c.pod_uid.as_deref()), (runtime, ID, pod), "{path}");
        }
    }

    #[test]
    fn host_paths_have_no_container() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/sshd.service",
            "/warden.workloads/etl-1234",
            // conmon is CRI-O's monitor process, not the container
            "/kubepods.slice/crio-conmon-abc.scope",
        ] {
            assert_eq!(parse_container(path), None, "{path}");
        }
    }

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
}
