//! Who is on the other end of the admin socket: the kernel's credentials for it (SO_PEERCRED),
//! the process behind them read through /proc, and whether it may approve a given request.

use std::sync::Arc;

use crate::{approval::Approver, cgroup, flow::KernelFacts, identity::Identity};

use super::AdminState;

/// The admin socket's peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
    /// Its supplementary groups, read when it connected.
    groups: Vec<u32>,
    user: Option<String>,
    exe: Option<String>,
    comm: String,
    /// Its cgroup (path, id) when it connected, read through one handle on its /proc entry
    /// (a pid reused later reads nothing through it), or why it could not be.
    cgroup: Result<(String, crate::cgroup::CgroupId), String>,
}

impl Peer {
    /// The peer as the kernel's credentials name it, read at once (blocking: /proc and NSS).
    pub fn from_credentials(uid: u32, gid: u32, pid: Option<i32>, cgroup_root: &std::path::Path) -> Peer {
        let pid = pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        let process = pid.and_then(|p| procfs::process::Process::new(p as i32).ok());
        let status = process.as_ref().and_then(|p| p.status().ok());
        let cgroup = match &process {
            None => Err("the connecting process is gone or unreadable".to_string()),
            Some(process) => cgroup::path_of_process(process)
                .map_err(|e| format!("the connecting process's cgroup is unreadable: {e}"))
                .and_then(|path| {
                    let id = cgroup::id_at(cgroup_root, &path)
                        .map_err(|e| format!("the connecting process's cgroup is unreadable: {e}"))?;
                    // Still the same process (its entry answers through the same handle).
                    process.stat().map_err(|_| "the connecting process exited".to_string())?;
                    Ok((path, id))
                }),
        };
        Peer {
            uid,
            gid,
            pid,
            groups: status.as_ref().map(|s| s.groups.clone()).unwrap_or_default(),
            user: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name),
            exe: process.as_ref().and_then(|p| p.exe().ok()).map(|p| p.display().to_string()),
            comm: status.map(|s| s.name).unwrap_or_default(),
            cgroup,
        }
    }

    /// Root, or a member of the admin group (primary or supplementary).
    pub fn allowed(&self, group: Option<nix::unistd::Gid>) -> bool {
        self.uid == 0 || group.is_some_and(|g| self.gid == g.as_raw() || self.groups.contains(&g.as_raw()))
    }

    /// Who decided, as recorded.
    pub fn approver(&self) -> Approver {
        Approver { uid: self.uid, user: self.user.clone(), pid: self.pid, exe: self.exe.clone() }
    }

    /// Whether this peer may approve a request of `requester`: not from the requester's own
    /// cgroup, identity or (non-root) user, and not from any governed workload (a process
    /// whose identity carries workload labels, or runs in a container or pod).
    pub async fn may_approve(&self, requester: &Identity, state: &AdminState) -> Result<(), String> {
        let Some(pid) = self.pid else {
            return Err("the approving process is unknown (no peer pid)".into());
        };
        // Where it was when it connected: a process that passed its connection on, or exited
        // for its pid to be reused, is judged by what connected.
        let (path, cgroup_id) = self.cgroup.clone()?;
        if cgroup_id == requester.cgroup_id {
            return Err(format!("the approver runs in the held session's own cgroup ({path})"));
        }
        if self.uid != 0 && self.uid == requester.uid {
            return Err(format!("the approver is the held session's own user (uid {})", self.uid));
        }
        let facts = KernelFacts {
            pid,
            tid: pid,
            uid: self.uid,
            gid: self.gid,
            comm: self.comm.clone(),
            cgroup_id,
            netns_cookie: 0,
        };
        let approver: Arc<Identity> = Arc::new(state.resolver.resolve(facts).await);
        if !approver.labels.is_empty() && approver.labels == requester.labels {
            return Err("the approver has the held session's identity (the same labels)".into());
        }
        if !approver.labels.is_empty() || approver.container_id.is_some() || approver.pod_uid.is_some() {
            let labels: Vec<String> = approver.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(format!(
                "the approver runs in a governed workload ({}{}): approve from the host",
                path,
                if labels.is_empty() { String::new() } else { format!(", labels {}", labels.join(",")) }
            ));
        }
        Ok(())
    }
}
