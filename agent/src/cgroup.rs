//! cgroup v2 helpers: where the hierarchy is mounted, ids, paths, and moving processes.
//!
//! Paths are "relative" cgroup paths as the kernel prints them (`/system.slice/sshd.service`):
//! absolute within the hierarchy, joined onto its mount point only after [`dir_of`] has checked
//! that they cannot climb out of it.

use std::{
    fmt, fs, io,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
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

/// What went wrong finding a cgroup, naming the process, path or walk at fault.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/{pid}/cgroup: {source}")]
    Proc { pid: u32, source: procfs::ProcError },
    /// A v2 entry is what we read; more than one means the file was not what it seems (a cgroup
    /// name with a newline in it prints as an extra line), so none of them is trusted.
    #[error("/proc/{pid}/cgroup has {count} cgroup v2 entries, expected exactly one")]
    ProcEntries { pid: u32, count: usize },
    #[error("cgroup path {path:?} is not a clean absolute path (empty, `.` or `..` segments)")]
    BadPath { path: String },
    #[error("cgroup {id} is not under {}", root.display())]
    NotFound { root: PathBuf, id: CgroupId },
    #[error("cgroup {id} not found under {} before the walk's limit ({visited} directories, depth {max_depth})", root.display())]
    WalkLimit { root: PathBuf, id: CgroupId, visited: usize, max_depth: usize },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid
/// one.
pub fn default_root() -> PathBuf {
    let mut found: Vec<PathBuf> = procfs::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fs_vfstype == "cgroup2")
        .map(|m| PathBuf::from(m.fs_file))
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// The id of the cgroup at `path`.
pub fn id_of(path: &Path) -> io::Result<CgroupId> {
    Ok(CgroupId(fs::metadata(path)?.ino()))
}

/// The directory of cgroup `rel` (a path as the kernel prints it) under the mount `root`, once
/// `rel` is known not to climb out of it.
pub fn dir_of(root: &Path, rel: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadPath { path: rel.to_string() };
    let inner = rel.strip_prefix('/').ok_or_else(bad)?;
    if inner.is_empty() {
        return Ok(root.to_path_buf());
    }
    if inner.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad());
    }
    Ok(root.join(inner))
}

/// The id of cgroup `rel` under `root`, without following symlinks (a cgroup hierarchy has none;
/// a test's stand-in might).
pub fn id_at(root: &Path, rel: &str) -> Result<CgroupId, CgroupError> {
    let dir = dir_of(root, rel)?;
    let meta =
        fs::symlink_metadata(&dir).map_err(|source| CgroupError::Io { what: "reading", path: dir.clone(), source })?;
    if !meta.is_dir() {
        return Err(CgroupError::Io { what: "reading", path: dir, source: io::ErrorKind::NotADirectory.into() });
    }
    Ok(CgroupId(meta.ino()))
}

/// The cgroup v2 path (relative to the hierarchy root, starting with `/`) of a process, as seen
/// from this process's cgroup namespace.
pub fn path_of_pid(pid: u32) -> Result<String, CgroupError> {
    let proc_err = |source| CgroupError::Proc { pid, source };
    let process = procfs::process::Process::new(i32::try_from(pid).unwrap_or(i32::MAX)).map_err(proc_err)?;
    path_of_process(&process)
}

/// [`path_of_pid`] for a process already opened (so the answer is about that very process).
pub fn path_of_process(process: &procfs::process::Process) -> Result<String, CgroupError> {
    let pid = u32::try_from(process.pid).unwrap_or(0);
    let groups = process.cgroups().map_err(|source| CgroupError::Proc { pid, source })?;
    let v2: Vec<_> = groups.into_iter().filter(|g| g.hierarchy == 0 && g.controllers.is_empty()).collect();
    match <[_; 1]>::try_from(v2) {
        Ok([only]) => Ok(only.pathname),
        Err(v2) => Err(CgroupError::ProcEntries { pid, count: v2.len() }),
    }
}

/// Bounds on [`find_path_of_id`]'s walk: a workload that can create cgroups (a delegated
/// subtree) must not be able to make a lookup arbitrarily expensive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Deepest level searched (the root's children are at depth 1).
    pub max_depth: usize,
    /// Most directories read before giving up.
    pub max_dirs: usize,
}

impl Default for WalkLimits {
    /// Deeper than any runtime's layout (a kind pod's container is at depth 7); a few thousand
    /// cgroups is a busy host, so tens of thousands is a generous ceiling.
    fn default() -> Self {
        Self { max_depth: 32, max_dirs: 20_000 }
    }
}

/// Finds the path of a cgroup id by walking the hierarchy (the fallback when the process that
/// owned the flow is gone). Returns the path relative to `root`, starting with `/`.
///
/// Never follows symlinks, reads at most `limits.max_dirs` directories and goes no deeper than
/// `limits.max_depth`. Directories that cannot be read (removed meanwhile) are skipped.
pub fn find_path_of_id(root: &Path, id: CgroupId, limits: WalkLimits) -> Result<String, CgroupError> {
    let root_meta = fs::symlink_metadata(root).map_err(|source| CgroupError::Io {
        what: "reading",
        path: root.to_path_buf(),
        source,
    })?;
    if root_meta.ino() == id.0 {
        return Ok("/".to_string());
    }
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    let mut truncated = false;
    while let Some((dir, depth)) = stack.pop() {
        if visited >= limits.max_dirs {
            truncated = true;
            break;
        }
        visited += 1;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            // d_type from readdir: a symlink is reported as one, never as its target.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // d_ino is the kernfs node id, i.e. the cgroup id; confirm with an lstat so a
            // filesystem whose readdir inode numbers differ (overlayfs) cannot mislead us.
            if entry.ino() == id.0 && entry.metadata().is_ok_and(|m| m.ino() == id.0) {
                let path = entry.path();
                let rel =
                    path.strip_prefix(root).map_err(|_| CgroupError::NotFound { root: root.to_path_buf(), id })?;
                return Ok(format!("/{}", rel.display()));
            }
            if depth + 1 < limits.max_depth {
                stack.push((entry.path(), depth + 1));
            } else {
                truncated = true;
            }
        }
    }
    if truncated {
        Err(CgroupError::WalkLimit { root: root.to_path_buf(), id, visited, max_depth: limits.max_depth })
    } else {
        Err(CgroupError::NotFound { root: root.to_path_buf(), id })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory tree standing in for a cgroup hierarchy, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("warden-cgroup-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("creating the fake cgroup root");
            Self(dir)
        }
        fn mkdir(&self, rel: &str) -> CgroupId {
            let dir = create(&self.0, rel).expect("creating a fake cgroup");
            id_of(&dir).expect("reading its inode")
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn walk_finds_a_cgroup_by_its_inode() {
        let root = FakeRoot::new("walk");
        root.mkdir("/system.slice/sshd.service");
        let id = root.mkdir("/user.slice/user-1000.slice/session-3.scope");
        let found = find_path_of_id(&root.0, id, WalkLimits::default()).expect("found");
        assert_eq!(found, "/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(find_path_of_id(&root.0, id_of(&root.0).unwrap(), WalkLimits::default()).unwrap(), "/");
        assert!(matches!(
            find_path_of_id(&root.0, CgroupId(u64::MAX), WalkLimits::default()),
            Err(CgroupError::NotFound { .. })
        ));
    }

    #[test]
    fn walk_is_bounded_in_depth_and_breadth() {
        let root = FakeRoot::new("bounded");
        let deep = root.mkdir("/a/b/c/d/e/f");
        let shallow = root.mkdir("/a/b");
        let limits = WalkLimits { max_depth: 3, max_dirs: 1_000 };
        assert_eq!(find_path_of_id(&root.0, shallow, limits).unwrap(), "/a/b");
        assert!(matches!(find_path_of_id(&root.0, deep, limits), Err(CgroupError::WalkLimit { .. })));
        for i in 0..20 {
            root.mkdir(&format!("/wide/{i}"));
        }
        let last = root.mkdir("/wide/zz/target");
        let limits = WalkLimits { max_depth: 32, max_dirs: 5 };
        assert!(matches!(find_path_of_id(&root.0, last, limits), Err(CgroupError::WalkLimit { visited: 5, .. })));
    }

    #[test]
    fn walk_does_not_follow_symlinks() {
        let root = FakeRoot::new("symlink");
        let outside = FakeRoot::new("symlink-outside");
        let target = outside.mkdir("/secret/cg");
        std::os::unix::fs::symlink(&outside.0, root.0.join("link")).expect("symlink");
        assert!(matches!(find_path_of_id(&root.0, target, WalkLimits::default()), Err(CgroupError::NotFound { .. })));
    }

    #[test]
    fn paths_cannot_climb_out_of_the_root() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(dir_of(root, "/").unwrap(), root);
        assert_eq!(dir_of(root, "/a.slice/b.scope").unwrap(), root.join("a.slice/b.scope"));
        for bad in ["", "a", "/../etc", "/a/../../etc", "/a//b", "/a/./b", "/a/"] {
            assert!(dir_of(root, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_cgroup_path_is_read_from_proc() {
        // A cgroup v1-only host has no v2 entry; everywhere else there is exactly one.
        match path_of_pid(std::process::id()) {
            Ok(path) => assert!(path.starts_with('/'), "{path}"),
            Err(err) => assert!(matches!(err, CgroupError::ProcEntries { count: 0, .. }), "{err}"),
        }
    }
}
