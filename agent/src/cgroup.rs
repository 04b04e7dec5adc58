//! cgroup v2 helpers: where the hierarchy is mounted, ids, paths, and moving processes.

use std::{
    fmt, fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A cgroup v2 id (the kernfs inode number of the cgroup's directory), as
/// `bpf_get_current_cgroup_id()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid
/// one.
pub fn default_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == "cgroup2").then(|| PathBuf::from(mnt))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// The id of the cgroup at `path`.
pub fn id_of(path: &Path) -> io::Result<CgroupId> {
    Ok(CgroupId(fs::metadata(path)?.ino()))
}

/// The cgroup v2 path (relative to the hierarchy root, starting with `/`) of a process.
pub fn path_of_pid(pid: u32) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry"))
}

/// Finds the path of a cgroup id by walking the hierarchy (the fallback when the process that
/// owned the flow is gone). Returns the path relative to `root`, starting with `/`.
pub fn find_path_of_id(root: &Path, id: CgroupId) -> Option<String> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if meta.ino() == id.0 {
            let rel = dir.strip_prefix(root).ok()?;
            return Some(format!("/{}", rel.display()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
            );
        }
    }
    None
}

/// Creates a cgroup (and its parents) under `root`.
pub fn create(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let path = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(&path)?;
    Ok(path)
}

/// Moves a process (all its threads) into the cgroup at `path`.
pub fn move_pid(path: &Path, pid: u32) -> io::Result<()> {
    fs::write(path.join("cgroup.procs"), pid.to_string())
}
