//! `warden exec --label K=V -- CMD`: run a command in a fresh cgroup that the agent maps to
//! those labels. This is how an operator tags a host workload (and how tests make identities).
//!
//! The label file is written (by root, in the agent's state directory) before the command
//! starts, so its very first connection resolves. The cgroup is removed when the command exits;
//! the label file stays for late events and is swept by the agent after a grace period.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    cgroup,
    identity::{WorkloadLabels, validate_label, workloads_dir},
};

/// The parent cgroup (under the v2 root) of every `warden exec` workload.
pub const WORKLOADS_CGROUP: &str = "warden.workloads";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid label {0:?}: expected KEY=VALUE")]
    LabelSyntax(String),
    #[error("{0}")]
    Label(String),
    #[error("no command given")]
    NoCommand,
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("starting {command}: {source}")]
    Spawn { command: String, source: io::Error },
}

/// Removes label files whose cgroup is gone and that are older than `grace` (late events for
/// an exited workload still resolve until then). Returns how many were removed.
pub fn sweep_labels(cgroup_root: &Path, state_dir: &Path, grace: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(workloads_dir(state_dir)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > grace);
        if !old {
            continue;
        }
        let gone = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<WorkloadLabels>(&b).ok())
            .is_none_or(|l| !cgroup_root.join(l.cgroup.trim_start_matches('/')).exists());
        if gone && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Parses `KEY=VALUE` arguments into validated labels.
pub fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>, ExecError> {
    let mut labels = BTreeMap::new();
    for arg in args {
        let (k, v) = arg.split_once('=').ok_or_else(|| ExecError::LabelSyntax(arg.clone()))?;
        validate_label(k, v).map_err(ExecError::Label)?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

/// Runs `command` in a labelled cgroup and returns its exit code (128+signal if killed).
pub fn exec(
    cgroup_root: &Path,
    state_dir: &Path,
    labels: BTreeMap<String, String>,
    command: &[String],
) -> Result<i32, ExecError> {
    let (program, args) = command.split_first().ok_or(ExecError::NoCommand)?;
    let name = format!(
        "{}-{}",
        labels.get("warden/identity").or_else(|| labels.values().next()).map_or("workload", String::as_str),
        std::process::id()
    );
    let rel = format!("{WORKLOADS_CGROUP}/{name}");
    let dir = cgroup::create(cgroup_root, &rel).map_err(|source| ExecError::Io {
        what: "creating cgroup",
        path: cgroup_root.join(&rel),
        source,
    })?;
    let result = run_in(&dir, &rel, state_dir, labels, program, args);
    // The cgroup is empty once the command (and anything it left running in it) has exited.
    if let Err(err) = fs::remove_dir(&dir) {
        tracing::warn!(cgroup = %dir.display(), error = %err, "could not remove the workload cgroup");
    }
    result
}

fn run_in(
    dir: &Path,
    rel: &str,
    state_dir: &Path,
    labels: BTreeMap<String, String>,
    program: &str,
    args: &[String],
) -> Result<i32, ExecError> {
    let id = cgroup::id_of(dir).map_err(|source| ExecError::Io {
        what: "reading cgroup",
        path: dir.to_path_buf(),
        source,
    })?;
    let files = workloads_dir(state_dir);
    fs::create_dir_all(&files).map_err(|source| ExecError::Io { what: "creating", path: files.clone(), source })?;
    let label_file = files.join(format!("{id}.json"));
    let body = serde_json::to_vec(&WorkloadLabels { cgroup: format!("/{rel}"), labels }).expect("labels serialise");
    fs::write(&label_file, body).map_err(|source| ExecError::Io {
        what: "writing",
        path: label_file.clone(),
        source,
    })?;

    let procs = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).map_err(|source| ExecError::Io {
        what: "opening",
        path: dir.join("cgroup.procs"),
        source,
    })?;
    let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec only async-signal-safe calls: write(2) of a constant
    // ("0" means the writing process itself) to an fd opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The terminal's SIGINT reaches the child directly; the parent just waits for it.
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { command: program.to_string(), source })?;
    drop(procs);
    // Like system(3): while the child runs, an interactive ^C is the child's to handle, and
    // this process must live on to remove the cgroup.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = child.wait().map_err(|source| ExecError::Spawn { command: program.to_string(), source })?;
    Ok(status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
