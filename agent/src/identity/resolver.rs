//! The resolver: kernel facts -> [`Identity`], with a bounded, expiring cache per cgroup and
//! the filesystem work kept off the proxy's async path.
//!
//! - [`Resolver::cached`] is the fast path: a fresh cache hit, answered under one short lock
//!   (plus `/proc/PID` for the executable, which is per process and cannot be cached by cgroup).
//! - [`Resolver::resolve`] (async) answers from the cache when fresh, otherwise does the work on
//!   tokio's blocking pool; concurrent misses for one cgroup wait for the first (single flight).
//! - [`Resolver::resolve_blocking`] is the same for callers that are not async.
//!
//! An entry is fresh for `refresh` after it was last checked; the check (on the slow path) looks
//! at the label file's stamp (re-reading it when changed) and at whether the cgroup still
//! exists. A cgroup found gone stays answerable for `gone_grace` (late kernel events) and is
//! then dropped. The cache holds at most `capacity` cgroups, evicting the least recently used:
//! a workload that churns cgroups cannot grow it.

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    fs::OpenOptions,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    Identity, WorkloadLabels,
    cache::{Clock, FileStamp, Lru, MonotonicClock},
    container::{ContainerRef, RuntimeRoots},
    pods::{PodIdentity, Pods},
    users::UserNames,
    workloads_dir,
};
use crate::{
    cgroup::{self, CgroupId, WalkLimits},
    flow::KernelFacts,
};

/// Label files larger than this are refused (`warden exec` writes a few hundred bytes).
const MAX_LABEL_FILE_BYTES: u64 = 64 << 10;
/// Walks waiting for their turn at most; beyond that a lookup goes without (and is not cached),
/// so flows from short-lived cgroups cannot pile up the blocking pool behind walks.
const MAX_QUEUED_WALKS: usize = 4;
/// The kernel's TASK_COMM_LEN less the NUL: a comm the kernel reports may be cut to this.
const COMM_LEN: usize = 15;

/// How the resolver caches and where it looks.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Most cgroups cached.
    pub capacity: usize,
    /// How long an answer stands before the label file and the cgroup's existence are checked
    /// again (and how often the passwd file is checked for changes).
    pub refresh: Duration,
    /// How long a cgroup found gone still resolves (late kernel events), then is dropped.
    pub gone_grace: Duration,
    /// The uid -> name source.
    pub passwd: PathBuf,
    /// Bounds on the hierarchy walk that finds a cgroup whose process is gone.
    pub walk: WalkLimits,
    /// Where container runtimes create cgroups.
    pub roots: RuntimeRoots,
    /// Time for freshness and expiry (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            capacity: 16_384,
            refresh: Duration::from_secs(5),
            // The same as `warden exec`'s label files are kept after their cgroup is gone.
            gone_grace: Duration::from_secs(600),
            passwd: PathBuf::from("/etc/passwd"),
            walk: WalkLimits::default(),
            roots: RuntimeRoots::builtin(),
            clock: Arc::new(MonotonicClock),
        }
    }
}

/// What a cgroup id resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CgroupInfo {
    path: Option<String>,
    container: Option<ContainerRef>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct CgroupEntry {
    info: Arc<CgroupInfo>,
    /// The label file as last read (`None`: there was none).
    labels_stamp: Option<FileStamp>,
    /// When the label file and the cgroup's existence were last checked.
    checked: Instant,
    /// When the cgroup was first found gone (or could not be found at all).
    gone_since: Option<Instant>,
}

impl CgroupEntry {
    fn expired(&self, now: Instant, config: &ResolverConfig) -> bool {
        self.gone_since.is_some_and(|t| now.saturating_duration_since(t) >= config.gone_grace)
    }

    fn fresh(&self, now: Instant, config: &ResolverConfig) -> bool {
        now.saturating_duration_since(self.checked) < config.refresh && !self.expired(now, config)
    }
}

/// Waiters for one cgroup's slow path, and how many tasks hold a [`Flight`] for it.
type Inflight = HashMap<CgroupId, (Arc<tokio::sync::Mutex<()>>, usize)>;

/// Resolves kernel facts into identities, caching per cgroup id.
#[derive(Debug)]
pub struct Resolver {
    cgroup_root: PathBuf,
    workloads: PathBuf,
    config: ResolverConfig,
    cgroups: Mutex<Lru<CgroupId, CgroupEntry>>,
    users: UserNames,
    inflight: Mutex<Inflight>,
    /// One hierarchy walk at a time: each is bounded, and many at once would only compete.
    walking: Mutex<()>,
    /// Walks running or waiting.
    walkers: AtomicUsize,
    /// Resolutions that took the slow path.
    misses: AtomicU64,
    /// The node's pods, when the agent watches Kubernetes.
    pods: Option<Arc<Pods>>,
    /// Labels for host workloads (the configuration's `workloads:`).
    workload_rules: super::workloads::Workloads,
}

/// A session's live view of its pod: the labels its next statement is judged by, which change
/// when the pod is relabelled.
#[derive(Debug)]
pub struct Relabel {
    pods: Arc<Pods>,
    uid: String,
    /// The index's generation last looked at.
    seen: AtomicU64,
}

impl Relabel {
    /// The pod's labels now, if the index moved since the last call (and still has the pod).
    pub fn changed(&self) -> Option<BTreeMap<String, String>> {
        let generation = self.pods.generation();
        if self.seen.swap(generation, Ordering::AcqRel) == generation {
            return None;
        }
        Some(self.pods.get(&self.uid)?.identity_labels())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Resolver {
    /// A resolver with the default configuration.
    pub fn new(cgroup_root: &Path, state_dir: &Path) -> Self {
        Self::with_config(cgroup_root, state_dir, ResolverConfig::default())
    }

    /// A resolver for the hierarchy mounted at `cgroup_root`, reading `warden exec` label files
    /// from `state_dir`.
    pub fn with_config(cgroup_root: &Path, state_dir: &Path, config: ResolverConfig) -> Self {
        Self {
            cgroup_root: cgroup_root.to_path_buf(),
            workloads: workloads_dir(state_dir),
            cgroups: Mutex::new(Lru::new(config.capacity)),
            users: UserNames::new(&config.passwd, config.refresh),
            inflight: Mutex::new(HashMap::new()),
            walking: Mutex::new(()),
            walkers: AtomicUsize::new(0),
            misses: AtomicU64::new(0),
            pods: None,
            workload_rules: super::workloads::Workloads::default(),
            config,
        }
    }

    /// Labels host workloads by `workloads` (cgroup, system unit, user, executable).
    pub fn with_workloads(mut self, workloads: super::workloads::Workloads) -> Self {
        self.workload_rules = workloads;
        self
    }

    /// A host workload's labels from the workloads file: only a process whose cgroup is known
    /// and is no pod's (a pod's labels come from its pod).
    fn label_host_workload(&self, identity: &mut Identity) {
        let host = identity.cgroup.is_some() && identity.pod_uid.is_none();
        if host && !self.workload_rules.is_empty() {
            self.workload_rules.label(identity);
        }
    }

    /// Resolves pods through `pods` (the node's watch).
    pub fn with_pods(mut self, pods: Arc<Pods>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The node's pods, when watched.
    pub fn pods(&self) -> Option<&Arc<Pods>> {
        self.pods.as_ref()
    }

    /// Fills in the pod behind `identity.pod_uid` (its labels win over any other source's).
    /// Returns false when the identity has a pod UID the index does not know (yet).
    pub fn attach_pod(&self, identity: &mut Identity) -> bool {
        let (Some(pods), Some(uid)) = (&self.pods, &identity.pod_uid) else { return true };
        if identity.pod.is_some() {
            return true;
        }
        let Some(pod) = pods.get(uid) else { return false };
        identity.pod = Some(PodIdentity::from(&*pod));
        // A pod's labels are its pod's, and only those.
        identity.labels = pod.identity_labels();
        true
    }

    /// Follows `identity`'s pod for later relabelling, if it has one.
    pub fn relabel(&self, identity: &Identity) -> Option<Relabel> {
        let pods = self.pods.clone()?;
        let uid = identity.pod_uid.clone()?;
        identity.pod.as_ref()?;
        // Not the index's generation now: the pod may have changed since `identity` was made
        // (between its resolution and this session's start), so the first statement looks.
        Some(Relabel { seen: AtomicU64::new(u64::MAX), pods, uid })
    }

    /// The identity from the cache when it is fresh; `None` means the slow path is due. Touches
    /// no file but `/proc/PID` (for the executable).
    pub fn cached(&self, facts: &KernelFacts) -> Option<Identity> {
        let now = self.config.clock.now();
        let user = self.users.cached(facts.uid, now)?;
        let info = {
            let mut cgroups = lock(&self.cgroups);
            let entry = cgroups.get(&facts.cgroup_id)?;
            if !entry.fresh(now, &self.config) {
                return None;
            }
            Arc::clone(&entry.info)
        };
        let mut identity = build(facts, &info, user);
        self.attach_pod(&mut identity);
        self.label_host_workload(&mut identity);
        Some(identity)
    }

    /// The identity behind `facts`: from the cache when fresh, otherwise resolved on tokio's
    /// blocking pool (filesystem work never runs on the caller's async thread).
    pub async fn resolve(self: &Arc<Self>, facts: KernelFacts) -> Identity {
        if let Some(identity) = self.cached(&facts) {
            return identity;
        }
        let flight = Flight::join(self, facts.cgroup_id);
        let _turn = flight.gate.lock().await;
        // Whoever had the turn before us has most likely just refreshed this cgroup.
        if let Some(identity) = self.cached(&facts) {
            return identity;
        }
        let resolver = Arc::clone(self);
        let fallback = Identity::from_facts(&facts);
        match tokio::task::spawn_blocking(move || resolver.resolve_uncached(&facts)).await {
            Ok(identity) => identity,
            Err(err) => {
                tracing::error!(cgroup_id = %fallback.cgroup_id, error = %err, "identity resolution failed; using the kernel's facts alone");
                fallback
            }
        }
    }

    /// [`Resolver::resolve`] for callers that are not async (it may read files and walk the
    /// cgroup hierarchy: do not call it on an async thread).
    pub fn resolve_blocking(&self, facts: &KernelFacts) -> Identity {
        self.cached(facts).unwrap_or_else(|| self.resolve_uncached(facts))
    }

    /// Drops the cgroups gone for longer than the grace period, first checking the existence of
    /// those due a check (a stat each, on the caller's thread). Returns how many were dropped.
    /// Lookups expire entries too; this only keeps idle ones from waiting for eviction.
    pub fn sweep(&self) -> usize {
        let now = self.config.clock.now();
        let due: Vec<(CgroupId, Option<String>)> = lock(&self.cgroups)
            .iter()
            .filter(|(_, e)| e.gone_since.is_none() && now.saturating_duration_since(e.checked) >= self.config.refresh)
            .map(|(id, e)| (*id, e.info.path.clone()))
            .collect();
        let gone: HashSet<CgroupId> =
            due.into_iter().filter(|(id, path)| !self.exists(*id, path.as_deref())).map(|(id, _)| id).collect();
        lock(&self.cgroups).retain(|id, entry| {
            if gone.contains(id) {
                entry.gone_since.get_or_insert(now);
            }
            !entry.expired(now, &self.config)
        })
    }

    /// How many cgroups are cached.
    pub fn cached_cgroups(&self) -> usize {
        lock(&self.cgroups).len()
    }

    /// How many resolutions have taken the slow path (cache miss or check due).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn resolve_uncached(&self, facts: &KernelFacts) -> Identity {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let now = self.config.clock.now();
        let user = self.users.lookup(facts.uid, now);
        let info = self.cgroup_info(facts, now);
        let mut identity = build(facts, &info, user);
        self.attach_pod(&mut identity);
        self.label_host_workload(&mut identity);
        identity
    }

    fn cgroup_info(&self, facts: &KernelFacts, now: Instant) -> Arc<CgroupInfo> {
        let id = facts.cgroup_id;
        let current = lock(&self.cgroups).peek(&id).cloned();
        let entry = match current {
            // Refreshed by another caller meanwhile (resolve_blocking has no single flight).
            Some(entry) if entry.fresh(now, &self.config) => return entry.info,
            Some(entry) if !entry.expired(now, &self.config) => self.revalidate(id, facts.pid, entry, now),
            _ => match self.discover(id, facts.pid, now) {
                (entry, Keep::Yes) => entry,
                // An answer for this flow, but not one to keep: the next lookup tries again.
                (entry, Keep::No) => return entry.info,
            },
        };
        let info = Arc::clone(&entry.info);
        if let Some((evicted, _)) = lock(&self.cgroups).insert(id, entry) {
            tracing::debug!(cgroup_id = %evicted, "identity cache full: evicted the least recently used cgroup");
        }
        info
    }

    /// First sight of a cgroup (or after its entry expired), and whether the answer is complete
    /// enough to cache.
    fn discover(&self, id: CgroupId, pid: u32, now: Instant) -> (CgroupEntry, Keep) {
        let label_file = self.label_file(id);
        // Stamp before reading: a file rewritten meanwhile then looks changed at the next check.
        let labels_stamp = FileStamp::of(&label_file);
        let labelled = labels_stamp.and_then(|_| read_labels(&label_file));
        // The process's own view is cheapest and right while it lives (and is in that cgroup);
        // otherwise the label file names the path; walking the hierarchy is the last resort.
        let mut keep = Keep::Yes;
        let path = self.path_from_pid(id, pid).or_else(|| labelled.as_ref().map(|l| l.cgroup.clone())).or_else(|| {
            self.walk(id).unwrap_or_else(|WalkBusy| {
                keep = Keep::No;
                None
            })
        });
        // A workload that makes a child cgroup of its labelled one (root in it can) keeps the
        // labels: they come from the nearest labelled ancestor.
        let labels = match labelled {
            Some(l) => l.labels,
            None => path.as_deref().and_then(|p| self.inherited_labels(p)).unwrap_or_default(),
        };
        let info = CgroupInfo { container: path.as_deref().and_then(|p| self.config.roots.parse(p)), labels, path };
        let exists = self.exists(id, info.path.as_deref());
        (CgroupEntry { info: Arc::new(info), labels_stamp, checked: now, gone_since: (!exists).then_some(now) }, keep)
    }

    /// A known cgroup due a check: labels changed? cgroup still there?
    fn revalidate(&self, id: CgroupId, pid: u32, old: CgroupEntry, now: Instant) -> CgroupEntry {
        let mut info = old.info;
        let mut exists = self.exists(id, info.path.as_deref());
        if !exists && let Some(path) = self.path_from_pid(id, pid) {
            // Renamed (cgroup v2 allows it within the parent) while its process lives on.
            let mut moved = (*info).clone();
            moved.container = self.config.roots.parse(&path);
            moved.path = Some(path);
            info = Arc::new(moved);
            exists = true;
        }
        let label_file = self.label_file(id);
        let labels_stamp = FileStamp::of(&label_file);
        // A label file removed once its cgroup is gone is `warden exec`'s sweep, not a
        // relabelling: late events keep the labels the workload ran with.
        let swept = labels_stamp.is_none() && !exists;
        if labels_stamp != old.labels_stamp && !swept {
            let labelled = labels_stamp.and_then(|_| read_labels(&label_file));
            let mut relabelled = (*info).clone();
            if relabelled.path.is_none()
                && let Some(l) = &labelled
            {
                relabelled.container = self.config.roots.parse(&l.cgroup);
                relabelled.path = Some(l.cgroup.clone());
            }
            relabelled.labels = labelled.map(|l| l.labels).unwrap_or_default();
            if relabelled != *info {
                tracing::debug!(cgroup_id = %id, "workload labels changed");
            }
            info = Arc::new(relabelled);
        }
        if labels_stamp.is_none() && exists {
            // No label file of its own: its labels are its nearest labelled ancestor's, which
            // may have been relabelled (or unlabelled) since.
            let inherited = info.path.as_deref().and_then(|p| self.inherited_labels(p)).unwrap_or_default();
            if inherited != info.labels {
                tracing::debug!(cgroup_id = %id, "inherited workload labels changed");
                let mut relabelled = (*info).clone();
                relabelled.labels = inherited;
                info = Arc::new(relabelled);
            }
        }
        let gone_since = if exists { None } else { old.gone_since.or(Some(now)) };
        CgroupEntry { info, labels_stamp, checked: now, gone_since }
    }

    fn label_file(&self, id: CgroupId) -> PathBuf {
        self.workloads.join(format!("{id}.json"))
    }

    /// The labels of the nearest ancestor of `path` (a cgroup path from the root) that has a
    /// label file naming that very ancestor.
    fn inherited_labels(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let mut current = Path::new(path);
        while let Some(parent) = current.parent() {
            let rel = parent.strip_prefix("/").unwrap_or(parent);
            if rel.as_os_str().is_empty() {
                return None;
            }
            if let Ok(id) = cgroup::id_of(&self.cgroup_root.join(rel))
                && let Some(l) = read_labels(&self.label_file(id))
                && Path::new(&l.cgroup) == parent
            {
                return Some(l.labels);
            }
            current = parent;
        }
        None
    }

    /// The path `/proc/PID/cgroup` gives, if that cgroup is the one the kernel recorded (the
    /// process may have moved, or the pid been reused).
    fn path_from_pid(&self, id: CgroupId, pid: u32) -> Option<String> {
        let path = cgroup::path_of_pid(pid).ok()?;
        self.exists(id, Some(&path)).then_some(path)
    }

    /// Whether `path` (if known) is still cgroup `id`'s directory.
    fn exists(&self, id: CgroupId, path: Option<&str>) -> bool {
        path.is_some_and(|p| cgroup::id_at(&self.cgroup_root, p).is_ok_and(|found| found == id))
    }

    /// The path of cgroup `id` by walking the hierarchy, one walk at a time, unless too many
    /// are already waiting.
    fn walk(&self, id: CgroupId) -> Result<Option<String>, WalkBusy> {
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let queued = Queued(&self.walkers);
        if queued.0.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_WALKS {
            tracing::debug!(cgroup_id = %id, "cgroup path unknown: too many hierarchy walks queued");
            return Err(WalkBusy);
        }
        let _one_at_a_time = lock(&self.walking);
        Ok(match cgroup::find_path_of_id(&self.cgroup_root, id, self.config.walk) {
            Ok(path) => Some(path),
            Err(err @ cgroup::CgroupError::WalkLimit { .. }) => {
                tracing::warn!(cgroup_id = %id, error = %err, "cgroup path unknown: the hierarchy is larger than the walk's limits");
                None
            }
            Err(err) => {
                tracing::debug!(cgroup_id = %id, error = %err, "cgroup path unknown");
                None
            }
        })
    }
}

/// A hierarchy walk was skipped because too many were queued.
struct WalkBusy;

/// Whether a resolution is worth caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    No,
}

/// One task's place in the single flight for a cgroup; leaving (even by cancellation) releases
/// the map entry once nobody holds one.
struct Flight<'a> {
    inflight: &'a Mutex<Inflight>,
    id: CgroupId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Flight<'a> {
    fn join(resolver: &'a Resolver, id: CgroupId) -> Self {
        let mut inflight = lock(&resolver.inflight);
        let (gate, holders) = inflight.entry(id).or_insert_with(|| (Arc::new(tokio::sync::Mutex::new(())), 0));
        *holders += 1;
        Self { inflight: &resolver.inflight, id, gate: Arc::clone(gate) }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Entry::Occupied(mut slot) = lock(self.inflight).entry(self.id) {
            slot.get_mut().1 -= 1;
            if slot.get().1 == 0 {
                slot.remove();
            }
        }
    }
}

fn build(facts: &KernelFacts, info: &CgroupInfo, user: Option<String>) -> Identity {
    let container = info.container.as_ref();
    Identity {
        exe: exe_of(facts),
        user,
        cgroup: info.path.clone(),
        container_id: container.map(|c| c.id.clone()),
        container_runtime: container.map(|c| c.runtime.clone()),
        pod_uid: container.and_then(|c| c.pod_uid.clone()),
        labels: info.labels.clone(),
        ..Identity::from_facts(facts)
    }
}

/// `/proc/PID/exe` of the process behind a flow, if it still runs the program it connected
/// from. Read per call: it belongs to the process, not the cgroup.
///
/// Once opened, the `/proc/PID` handle pins that process: if the pid is reused afterwards,
/// reads through it fail rather than describe the newcomer. Before that it may already be
/// another process (pid reused), or the same one after an execve: then its comm is most likely
/// not the one the kernel recorded at connect, and the exe would name another program, so none
/// is reported. (A process can still set its comm to match and then exec: the exe is evidence,
/// not proof; only the kernel program recording it at connect would close that.)
fn exe_of(facts: &KernelFacts) -> Option<String> {
    let process = procfs::process::Process::new(i32::try_from(facts.pid).ok()?).ok()?;
    // The kernel recorded the connecting thread's comm; the thread may have exited since.
    let stat = i32::try_from(facts.tid)
        .ok()
        .and_then(|tid| process.task_from_tid(tid).and_then(|t| t.stat()).ok())
        .or_else(|| process.stat().ok())?;
    let same = stat.comm == facts.comm || (facts.comm.len() == COMM_LEN && stat.comm.starts_with(&facts.comm));
    if !same {
        return None;
    }
    process.exe().ok().map(|p| p.display().to_string())
}

/// Reads a label file (never through a symlink, at most [`MAX_LABEL_FILE_BYTES`]).
fn read_labels(path: &Path) -> Option<WorkloadLabels> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let mut bytes = Vec::new();
    if let Err(err) = file.take(MAX_LABEL_FILE_BYTES + 1).read_to_end(&mut bytes) {
        tracing::warn!(path = %path.display(), error = %err, "cannot read the label file");
        return None;
    }
    if bytes.len() as u64 > MAX_LABEL_FILE_BYTES {
        tracing::warn!(path = %path.display(), limit = MAX_LABEL_FILE_BYTES, "label file too large; ignored");
        return None;
    }
    serde_json::from_slice(&bytes)
        .inspect_err(|err| tracing::warn!(path = %path.display(), error = %err, "label file is not valid; ignored"))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::identity::ManualClock;

    const REFRESH: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_secs(600);
    /// Above any pid_max: `/proc/PID` never exists, as for a process already gone.
    const GONE_PID: u32 = 0x7fff_fff0;

    /// A fake cgroup root (plain directories: a cgroup id is the directory's inode), a fake state
    /// directory and passwd file, a manual clock, all removed on drop.
    struct Fixture {
        dir: PathBuf,
        clock: Arc<ManualClock>,
        resolver: Arc<Resolver>,
    }

    impl Fixture {
        fn new(name: &str, capacity: usize) -> Self {
            let dir = std::env::temp_dir().join(format!("warden-resolver-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("cgroup")).unwrap();
            fs::create_dir_all(workloads_dir(&dir.join("state"))).unwrap();
            fs::write(dir.join("passwd"), "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
                .unwrap();
            let clock = Arc::new(ManualClock::new());
            let config = ResolverConfig {
                capacity,
                refresh: REFRESH,
                gone_grace: GRACE,
                passwd: dir.join("passwd"),
                clock: clock.clone(),
                ..ResolverConfig::default()
            };
            let resolver = Arc::new(Resolver::with_config(&dir.join("cgroup"), &dir.join("state"), config));
            Self { dir, clock, resolver }
        }

        fn root(&self) -> PathBuf {
            self.dir.join("cgroup")
        }

        fn mkdir(&self, rel: &str) -> CgroupId {
            let dir = cgroup::create(&self.root(), rel).unwrap();
            cgroup::id_of(&dir).unwrap()
        }

        fn rmdir(&self, rel: &str) {
            fs::remove_dir(self.root().join(rel.trim_start_matches('/'))).unwrap();
        }

        fn label(&self, id: CgroupId, rel: &str, labels: &[(&str, &str)], version: u64) {
            let file = workloads_dir(&self.dir.join("state")).join(format!("{id}.json"));
            let body = WorkloadLabels {
                cgroup: rel.to_string(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
            fs::write(&file, serde_json::to_vec(&body).unwrap()).unwrap();
            // Distinct mtimes whatever the filesystem's timestamp granularity.
            let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + version);
            fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        }

        fn unlabel(&self, id: CgroupId) {
            fs::remove_file(workloads_dir(&self.dir.join("state")).join(format!("{id}.json"))).unwrap();
        }

        fn facts(&self, id: CgroupId, uid: u32) -> KernelFacts {
            KernelFacts {
                pid: GONE_PID,
                tid: GONE_PID,
                uid,
                gid: uid,
                comm: "worker".into(),
                cgroup_id: id,
                netns_cookie: 1,
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn labels(identity: &Identity) -> Vec<(&str, &str)> {
        identity.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_miss_walks_the_tree_and_a_hit_is_served_from_the_cache() {
        let f = Fixture::new("walk", 16);
        let id = f.mkdir("/system.slice/docker-3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab.scope");
        let facts = f.facts(id, 1000);
        assert_eq!(f.resolver.cached(&facts), None, "nothing cached yet");
        let identity = f.resolver.resolve_blocking(&facts);
        assert_eq!(
            identity.cgroup.as_deref(),
            Some("/system.slice/docker-3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab.scope")
        );
        assert_eq!(identity.container_runtime.as_deref(), Some("docker"));
        assert_eq!(
            identity.container_id.as_deref(),
            Some("3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab")
        );
        assert_eq!(identity.user.as_deref(), Some("alice"));
        assert_eq!(identity.exe, None, "the process is gone");
        assert_eq!(f.resolver.cached(&facts), Some(identity.clone()), "now a fresh hit");
        // Facts other than the cgroup's come from the flow, not the cache.
        let root_facts = KernelFacts { pid: 7, uid: 0, comm: "psql".into(), ..facts.clone() };
        let hit = f.resolver.cached(&root_facts).expect("same cgroup");
        assert_eq!((hit.pid, hit.user.as_deref(), hit.comm.as_str()), (7, Some("root"), "psql"));
    }

    #[test]
    fn label_changes_are_seen_after_the_refresh_interval() {
        let f = Fixture::new("relabel", 16);
        let id = f.mkdir("/warden.workloads/etl-1");
        f.label(id, "/warden.workloads/etl-1", &[("warden/identity", "etl")], 1);
        let facts = f.facts(id, 0);
        let first = f.resolver.resolve_blocking(&facts);
        assert_eq!(labels(&first), vec![("warden/identity", "etl")]);
        assert_eq!(first.cgroup.as_deref(), Some("/warden.workloads/etl-1"));

        f.label(id, "/warden.workloads/etl-1", &[("warden/identity", "etl"), ("team", "data")], 2);
        f.clock.advance(REFRESH / 2);
        assert_eq!(
            labels(&f.resolver.resolve_blocking(&facts)),
            vec![("warden/identity", "etl")],
            "within the interval"
        );
        f.clock.advance(REFRESH);
        assert_eq!(f.resolver.cached(&facts), None, "due a check");
        let relabelled = f.resolver.resolve_blocking(&facts);
        assert_eq!(labels(&relabelled), vec![("team", "data"), ("warden/identity", "etl")]);
        assert_eq!(f.resolver.cached(&facts).map(|i| i.labels), Some(relabelled.labels));

        // Removing the file while the cgroup lives removes the labels.
        f.unlabel(id);
        f.clock.advance(REFRESH);
        assert!(f.resolver.resolve_blocking(&facts).labels.is_empty());
    }

    #[test]
    fn a_child_cgroup_keeps_its_labelled_parents_labels() {
        let f = Fixture::new("child", 16);
        let parent = f.mkdir("/warden.workloads/etl-2");
        f.label(parent, "/warden.workloads/etl-2", &[("warden/identity", "etl")], 1);
        // The workload (root in its cgroup) made a child and moved into it.
        let child = f.mkdir("/warden.workloads/etl-2/escape/deeper");
        let identity = f.resolver.resolve_blocking(&f.facts(child, 0));
        assert_eq!(labels(&identity), vec![("warden/identity", "etl")]);
        assert_eq!(identity.tenant_key(), "identity:etl", "the same tenant for limits and fair shares");
        // A label file that names another cgroup is not inherited.
        let other = f.mkdir("/warden.workloads/other-1");
        f.label(other, "/warden.workloads/somewhere-else", &[("warden/identity", "forged")], 1);
        let below = f.mkdir("/warden.workloads/other-1/x");
        assert!(f.resolver.resolve_blocking(&f.facts(below, 0)).labels.is_empty());

        // The parent is relabelled: the child follows at its next check.
        let facts = f.facts(child, 0);
        f.label(parent, "/warden.workloads/etl-2", &[("warden/identity", "etl"), ("tier", "restricted")], 2);
        f.clock.advance(REFRESH);
        assert_eq!(
            labels(&f.resolver.resolve_blocking(&facts)),
            vec![("tier", "restricted"), ("warden/identity", "etl")],
            "inherited labels are revalidated too"
        );
    }

    #[test]
    fn gone_cgroups_resolve_for_the_grace_period_then_are_dropped() {
        let f = Fixture::new("gone", 16);
        let id = f.mkdir("/warden.workloads/batch-1");
        f.label(id, "/warden.workloads/batch-1", &[("warden/identity", "batch")], 1);
        let facts = f.facts(id, 0);
        f.resolver.resolve_blocking(&facts);
        assert_eq!(f.resolver.cached_cgroups(), 1);

        // The workload exits: its cgroup goes, and `warden exec`'s sweep removes the label file.
        f.rmdir("/warden.workloads/batch-1");
        f.unlabel(id);
        f.clock.advance(REFRESH);
        let late = f.resolver.resolve_blocking(&facts);
        assert_eq!(labels(&late), vec![("warden/identity", "batch")], "late events keep the labels");
        assert_eq!(late.cgroup.as_deref(), Some("/warden.workloads/batch-1"));
        f.clock.advance(GRACE - REFRESH * 2);
        assert_eq!(
            labels(&f.resolver.resolve_blocking(&facts)),
            vec![("warden/identity", "batch")],
            "still within grace"
        );

        f.clock.advance(REFRESH * 2);
        assert_eq!(f.resolver.cached(&facts), None, "expired");
        assert_eq!(f.resolver.sweep(), 1);
        assert_eq!(f.resolver.cached_cgroups(), 0);
        // A very late event still gets the kernel's facts, with nothing left to resolve.
        let after = f.resolver.resolve_blocking(&facts);
        assert_eq!((after.cgroup, after.labels.len()), (None, 0));
    }

    #[test]
    fn sweep_notices_idle_cgroups_that_went() {
        let f = Fixture::new("sweep", 16);
        let kept = f.mkdir("/a");
        let went = f.mkdir("/b");
        f.resolver.resolve_blocking(&f.facts(kept, 0));
        f.resolver.resolve_blocking(&f.facts(went, 0));
        f.rmdir("/b");
        assert_eq!(f.resolver.sweep(), 0, "nothing due yet");
        f.clock.advance(REFRESH);
        assert_eq!(f.resolver.sweep(), 0, "gone, within grace");
        f.clock.advance(GRACE);
        assert_eq!(f.resolver.sweep(), 1);
        assert_eq!(f.resolver.cached_cgroups(), 1);
        assert!(f.resolver.resolve_blocking(&f.facts(kept, 0)).cgroup.is_some());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_used() {
        let f = Fixture::new("bounded", 4);
        let hot = f.mkdir("/hot");
        f.resolver.resolve_blocking(&f.facts(hot, 0));
        for i in 0..32 {
            let id = f.mkdir(&format!("/churn/{i}"));
            f.resolver.resolve_blocking(&f.facts(id, 0));
            assert!(f.resolver.cached(&f.facts(hot, 0)).is_some(), "the hot cgroup stays");
            assert!(f.resolver.cached_cgroups() <= 4);
        }
        assert_eq!(f.resolver.cached_cgroups(), 4);
    }

    #[test]
    fn a_walk_skipped_for_a_full_queue_is_not_cached() {
        let f = Fixture::new("busy", 16);
        let id = f.mkdir("/user.slice/user-1000.slice/user@1000.service/app.slice/short-lived.scope");
        f.resolver.walkers.store(MAX_QUEUED_WALKS, Ordering::Relaxed);
        let identity = f.resolver.resolve_blocking(&f.facts(id, 1000));
        assert_eq!((identity.cgroup, identity.user.as_deref()), (None, Some("alice")));
        assert_eq!(f.resolver.cached_cgroups(), 0);
        f.resolver.walkers.store(0, Ordering::Relaxed);
        let identity = f.resolver.resolve_blocking(&f.facts(id, 1000));
        assert_eq!(
            identity.cgroup.as_deref(),
            Some("/user.slice/user-1000.slice/user@1000.service/app.slice/short-lived.scope")
        );
        assert_eq!(identity.container_id, None);
        assert_eq!(f.resolver.cached_cgroups(), 1);
        assert_eq!(f.resolver.walkers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn passwd_changes_are_seen_after_the_refresh_interval() {
        let f = Fixture::new("passwd", 16);
        let id = f.mkdir("/x");
        let facts = f.facts(id, 1000);
        assert_eq!(f.resolver.resolve_blocking(&facts).user.as_deref(), Some("alice"));
        fs::write(f.dir.join("passwd"), "root:x:0:0::/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n").unwrap();
        assert_eq!(f.resolver.resolve_blocking(&facts).user.as_deref(), Some("alice"));
        f.clock.advance(REFRESH);
        assert_eq!(f.resolver.resolve_blocking(&facts).user.as_deref(), Some("bob"));
    }

    #[test]
    fn unknown_cgroups_resolve_to_the_kernel_facts() {
        let f = Fixture::new("unknown", 16);
        let facts = f.facts(CgroupId(u64::MAX), 4242);
        let identity = f.resolver.resolve_blocking(&facts);
        assert_eq!(identity, Identity { user: None, ..Identity::from_facts(&facts) });
    }

    #[test]
    fn exe_is_reported_only_for_the_process_that_connected() {
        let own = || {
            // SAFETY: gettid(2) has no preconditions.
            let tid = u32::try_from(unsafe { libc::gettid() }).unwrap();
            let comm = fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap().trim_end().to_string();
            KernelFacts {
                pid: std::process::id(),
                tid,
                uid: 0,
                gid: 0,
                comm,
                cgroup_id: CgroupId(u64::MAX),
                netns_cookie: 0,
            }
        };
        let facts = own();
        let expected = fs::read_link("/proc/self/exe").unwrap().display().to_string();
        assert_eq!(exe_of(&facts), Some(expected));
        // Another comm than the kernel recorded: the pid was reused, or the process exec'd.
        assert_eq!(exe_of(&KernelFacts { comm: "something-else".into(), ..facts.clone() }), None);
        assert_eq!(exe_of(&KernelFacts { pid: GONE_PID, ..facts }), None);
    }

    #[test]
    fn async_resolve_fills_the_cache_off_the_async_thread_once_per_cgroup() {
        let f = Fixture::new("async", 16);
        let id = f.mkdir("/kubepods/besteffort/pod0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6/3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let identities = runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let resolver = f.resolver.clone();
                let facts = f.facts(id, 0);
                tasks.spawn(async move { resolver.resolve(facts).await });
            }
            tasks.join_all().await
        });
        assert_eq!(identities.len(), 8);
        assert!(identities.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(identities[0].pod_uid.as_deref(), Some("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"));
        assert_eq!(identities[0].container_runtime.as_deref(), Some("cri"));
        assert_eq!(f.resolver.misses(), 1, "one slow path for eight concurrent misses");
        assert!(lock(&f.resolver.inflight).is_empty(), "no flight left behind");
        assert!(f.resolver.cached(&f.facts(id, 0)).is_some());
    }

    #[test]
    fn a_cancelled_waiter_leaves_no_flight_behind() {
        let f = Fixture::new("cancel", 16);
        let id = f.mkdir("/y");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // Hold the cgroup's turn, so a resolve for it has to wait.
            let held = Flight::join(&f.resolver, id);
            let turn = held.gate.lock().await;
            let resolver = f.resolver.clone();
            let facts = f.facts(id, 0);
            let waiter = tokio::spawn(async move { resolver.resolve(facts).await });
            tokio::task::yield_now().await;
            assert_eq!(lock(&f.resolver.inflight).get(&id).map(|(_, n)| *n), Some(2));
            waiter.abort();
            assert!(waiter.await.unwrap_err().is_cancelled());
            drop(turn);
            drop(held);
        });
        assert!(lock(&f.resolver.inflight).is_empty());
        assert_eq!(f.resolver.misses(), 0);
    }
}
