//! Warden's agent: kernel-program loader, identity resolution (processes, cgroups, Kubernetes
//! pods), the proxy and the audit trail.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod cgroup;
pub mod config;
pub mod ebpf;
pub mod exec;
pub mod flow;
pub mod govern;
pub mod handover;
pub mod identity;
pub mod keeper;
pub mod kubernetes;
pub mod mask;
pub mod net;
pub mod pg;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod session;
pub mod sql;

/// A fresh directory for a test, removed when the guard drops (also on a panic). Mode 0755
/// whatever the umask (set after it is made: a mode given to mkdir is cut by the umask): the
/// ring and the key files refuse a directory others may write to, and a umask of 002 would
/// make one.
#[cfg(test)]
pub(crate) fn test_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("a test directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("a test directory's mode");
    dir
}
