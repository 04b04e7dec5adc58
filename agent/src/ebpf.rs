//! Loading, attaching and pinning the kernel programs, and the agent's view of their maps.
//!
//! Links and maps are pinned under `bpffs_dir` so governance outlives the agent process: a
//! restart (or a crash) does not open a window where governed flows go direct. A new agent
//! reuses the pinned maps and swaps each pinned link for its own.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use agent_common::{
    AgentState, Endpoint, EndpointPolicy, FAIL_BY_POLICY, FAIL_CLOSED, FAIL_OPEN, FailKey, FlowEvent, FlowKey,
    FlowOrigin, MODE_ENFORCE, MODE_OBSERVE, STAT_COUNT,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};

use crate::{
    config::{Config, DatabaseAddress, FailMode, Mode},
    flow::endpoint_of,
};

/// The compiled kernel programs, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/warden"));

/// Something went wrong between the agent and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the pinned kernel maps are of another layout than this build's ({0}): the agent serving now reads them, so \
         this build cannot take over beside it; stop the serving agent, then start this one (its sessions end)"
    )]
    IncompatibleMaps(String),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("link {name}: {source}")]
    Link { name: &'static str, source: aya::programs::links::LinkError },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KernelError + 'a {
    move |source| KernelError::Io { what, path: path.to_path_buf(), source }
}

/// Where each program attaches.
enum Attach {
    Cgroup,
    Tracepoint(&'static str, &'static str),
}

const PROGRAMS: &[(&str, Attach)] = &[
    ("warden_connect4", Attach::Cgroup),
    ("warden_connect6", Attach::Cgroup),
    ("warden_getpeername4", Attach::Cgroup),
    ("warden_getpeername6", Attach::Cgroup),
    ("warden_sockops", Attach::Cgroup),
    ("warden_observe", Attach::Tracepoint("sock", "inet_sock_set_state")),
];

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}
fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

/// The loaded and attached programs, with handles to the maps the agent uses.
pub struct Kernel {
    _ebpf: Ebpf,
    /// This agent's references to its links (the pins hold them too). Released when a
    /// successor attaches: its pins then replace the last references and the programs of this
    /// agent detach, rather than run beside the successor's while this one drains.
    links: Mutex<Vec<PinnedLink>>,
    bpffs: PathBuf,
    /// Replaced while the agent runs as database host names resolve elsewhere (`net::dns`).
    governed: Mutex<HashMap<MapData, Endpoint, EndpointPolicy>>,
    /// Client cgroups (per database) that fail open where the fail mode follows policies.
    fail_open: Mutex<HashMap<MapData, FailKey, u64>>,
    state: Mutex<Array<MapData, AgentState>>,
    flows: FlowTable,
    stats: Stats,
    events: Mutex<RingBuf<MapData>>,
    /// Whether this agent writes the kernel's shared state (heartbeat, governed table, fail-open
    /// listings) and reads its events: from its start until a successor attaches.
    owner: std::sync::atomic::AtomicBool,
}

impl Kernel {
    /// Loads the programs (reusing pinned maps), fills the governed-endpoint table, publishes
    /// `state`, then attaches every program at the cgroup v2 root and pins the links.
    ///
    /// `beside` an agent it replaces, the pinned maps must be reused: that agent's programs
    /// read them until the hand-over completes, so maps of another layout (another build's) are
    /// not recreated under it; the start fails instead (such an upgrade is a stop and a start).
    pub fn start(
        config: &Config,
        state: AgentState,
        reached: &BTreeMap<usize, Reached>,
        beside: bool,
    ) -> Result<Self, KernelError> {
        let bpffs = config.bpffs_dir.clone();
        let maps = maps_dir(&bpffs);
        fs::create_dir_all(&maps).map_err(io_err("creating", &maps))?;
        fs::create_dir_all(links_dir(&bpffs)).map_err(io_err("creating", &bpffs))?;
        let mut ebpf = match EbpfLoader::new().default_map_pin_directory(&maps).load(OBJECT) {
            Ok(ebpf) => ebpf,
            Err(err) if beside => return Err(KernelError::IncompatibleMaps(err.to_string())),
            Err(err) => {
                // Pinned maps from an incompatible build: start from fresh maps.
                tracing::warn!(error = %err, "pinned maps could not be reused; recreating them");
                remove_dir_files(&maps)?;
                EbpfLoader::new().default_map_pin_directory(&maps).load(OBJECT)?
            }
        };

        let mut governed: HashMap<MapData, Endpoint, EndpointPolicy> = take_map(&mut ebpf, "GOVERNED")?;
        sync_governed(&mut governed, config, reached)?;
        // A previous agent's entries carry its epochs, which this agent's never equal.
        let fail_open: HashMap<MapData, FailKey, u64> = take_map(&mut ebpf, "FAIL_OPEN_IDENTITIES")?;
        let mut state_map: Array<MapData, AgentState> = take_map(&mut ebpf, "AGENT_STATE")?;
        state_map.set(0, state, 0).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
        let flows = FlowTable(Mutex::new(take_map(&mut ebpf, "FLOW_BY_ACCEPTED")?));
        let stats = Stats(take_map(&mut ebpf, "STATS")?);
        let events = Mutex::new(take_map(&mut ebpf, "FLOW_EVENTS")?);

        let mut links = Vec::new();
        // The heartbeat is renewed after each program: loading them all (the verifier) may take
        // longer than the kernel's grace period on a busy host, and until this start ends no
        // other agent beats (one being replaced paused when this one said it attaches).
        let mut beat = || {
            let _ = state_map.set(0, AgentState { heartbeat_ns: monotonic_ns(), ..state }, 0);
        };
        if let Err(err) = attach_all(&mut ebpf, config, &bpffs, &mut links, &mut beat) {
            // Never leave a partial set attached: a redirect without the flow table would
            // send governed clients to a proxy that refuses them.
            // The pins in force (the agent this one replaces) are untouched: only the staged
            // ones go.
            for link in links {
                if let Ok(link) = link.unpin() {
                    drop(link);
                }
            }
            let _ = fs::remove_dir(staging_dir(&bpffs));
            if !beside {
                let _ = state_map.set(0, AgentState { serving: 0, ..state }, 0);
            }
            return Err(err);
        }
        // Attaching (the verifier) takes a while: the heartbeat is fresh when the caller's own
        // starts beating.
        state_map
            .set(0, AgentState { heartbeat_ns: monotonic_ns(), ..state }, 0)
            .map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
        Ok(Self {
            _ebpf: ebpf,
            links: Mutex::new(links),
            bpffs,
            governed: Mutex::new(governed),
            fail_open: Mutex::new(fail_open),
            state: Mutex::new(state_map),
            flows,
            stats,
            events,
            owner: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Stops (or resumes) writing the kernel's shared state and reading its events: a successor
    /// attaching takes them over; an abandoned hand-over gives them back.
    pub fn set_owner(&self, owner: bool) {
        self.owner.store(owner, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this agent writes the kernel's shared state now.
    pub fn owns(&self) -> bool {
        self.owner.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long ago the published heartbeat was written (by whichever agent).
    pub fn heartbeat_age(&self) -> Option<std::time::Duration> {
        let map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = map.get(&0, 0).ok()?;
        Some(std::time::Duration::from_nanos(monotonic_ns().saturating_sub(state.heartbeat_ns)))
    }

    /// Publishes the agent's state (heartbeat, serving flag).
    pub fn publish(&self, state: AgentState) -> Result<(), KernelError> {
        if !self.owns() {
            return Ok(());
        }
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        map.set(0, state, 0).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Takes every event waiting in the ring buffer.
    pub fn drain_events(&self) -> Vec<FlowEvent> {
        if !self.owns() {
            return Vec::new();
        }
        let mut ring = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<FlowEvent>() {
                // SAFETY: FlowEvent is Pod and the item holds at least that many bytes.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
        }
        out
    }

    /// Governed endpoints currently in the kernel table (for status and tests).
    pub fn governed_count(&self) -> usize {
        let map = self.governed.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().filter(Result::is_ok).count()
    }

    /// Makes the governed-endpoint table exactly `wanted` (from `governed_table`); returns what
    /// it changed.
    /// Not while a successor owns the table (an abandoned hand-over re-applies it).
    pub fn replace_governed(&self, wanted: &[(Endpoint, EndpointPolicy)]) -> Result<GovernedDiff, KernelError> {
        if !self.owns() {
            return Ok(GovernedDiff::default());
        }
        let mut map = self.governed.lock().unwrap_or_else(|p| p.into_inner());
        apply_governed(&mut map, wanted)
    }

    /// Records that a client cgroup fails open for a database whose fail mode follows policies,
    /// under `epoch` (`None`: it fails closed).
    pub fn set_fail_open(&self, cgroup_id: u64, database_id: u32, epoch: Option<u64>) -> Result<(), KernelError> {
        if !self.owns() {
            // A replaced agent's findings belong to an epoch the kernel no longer uses.
            return Ok(());
        }
        let key = FailKey { cgroup_id, database_id, _pad: 0 };
        let mut map = self.fail_open.lock().unwrap_or_else(|p| p.into_inner());
        let result = match epoch {
            Some(epoch) => map.insert(key, epoch, 0),
            // Nothing listed for it (the common case of a guarded identity): nothing to remove.
            None => match map.remove(&key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                other => other,
            },
        };
        result.map_err(|source| KernelError::Map { name: "FAIL_OPEN_IDENTITIES", source })
    }

    /// Lets go of this agent's references to its links: they stay attached while pinned, and
    /// detach when a successor's pins replace them.
    pub fn release_links(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Detaches every program and removes all pins (maps included).
    pub fn detach(self) -> Result<(), KernelError> {
        let bpffs = self.bpffs.clone();
        for link in self.links.into_inner().unwrap_or_else(|p| p.into_inner()) {
            // Unpinning then dropping the last reference detaches the program (a pin already
            // gone, or held under another name, is removed with the rest below).
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
        drop(self._ebpf);
        detach_pinned(&bpffs)
    }
}

/// Loads and attaches every program, pinning each link as it goes (into `links`, so the caller
/// can roll back).
fn attach_all(
    ebpf: &mut Ebpf,
    config: &Config,
    bpffs: &Path,
    links: &mut Vec<PinnedLink>,
    beat: &mut dyn FnMut(),
) -> Result<(), KernelError> {
    let cgroup = File::open(&config.cgroup_root).map_err(io_err("opening cgroup", &config.cgroup_root))?;
    sweep_staging(bpffs);
    let staging = staging_dir(bpffs);
    fs::create_dir_all(&staging).map_err(io_err("creating", &staging))?;
    for (name, attach) in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or(KernelError::Program { name, source: aya::programs::ProgramError::UnexpectedProgramType })?;
        let perr = |source| KernelError::Program { name, source };
        let fd_link: FdLink = match attach {
            Attach::Cgroup => match program {
                aya::programs::Program::CgroupSockAddr(p) => {
                    let p: &mut CgroupSockAddr = p;
                    p.load().map_err(perr)?;
                    // Links always coexist with other programs; the flag must be 0 here.
                    let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(perr)?;
                    p.take_link(id).map_err(perr)?.try_into().map_err(|source| KernelError::Link { name, source })?
                }
                aya::programs::Program::SockOps(p) => {
                    let p: &mut SockOps = p;
                    p.load().map_err(perr)?;
                    // Links always coexist with other programs; the flag must be 0 here.
                    let id = p.attach(&cgroup, CgroupAttachMode::Single).map_err(perr)?;
                    p.take_link(id).map_err(perr)?.try_into().map_err(|source| KernelError::Link { name, source })?
                }
                _ => return Err(perr(aya::programs::ProgramError::UnexpectedProgramType)),
            },
            Attach::Tracepoint(category, event) => {
                let p: &mut TracePoint = program.try_into().map_err(perr)?;
                p.load().map_err(perr)?;
                let id = p.attach(category, event).map_err(perr)?;
                p.take_link(id).map_err(perr)?.try_into().map_err(|source| KernelError::Link { name, source })?
            }
        };
        links.push(pin_replacing(fd_link, &staging_dir(bpffs).join(name))?);
        beat();
    }
    // Every program is attached: only now do the new pins replace the old ones (each rename is
    // atomic), so a start that fails part-way never leaves a program unpinned.
    let live = links_dir(bpffs);
    for (i, (name, _)) in PROGRAMS.iter().enumerate() {
        let (staged, path) = (staging_dir(bpffs).join(name), live.join(name));
        fs::rename(&staged, &path).map_err(io_err("publishing pin", &path))?;
        // From the first rename on, nothing fails: a handle that cannot be reopened at the new
        // path keeps the staged one (its descriptor holds the link; detaching tolerates it).
        match PinnedLink::from_pin(&path) {
            Ok(published) => links[i] = published,
            Err(err) => tracing::warn!(name, error = %err, "reopening a published pin"),
        }
    }
    let _ = fs::remove_dir(staging_dir(bpffs));
    Ok(())
}

/// Removes what a start killed part-way left staged (its links detach with their pins).
fn sweep_staging(bpffs: &Path) {
    let Ok(entries) = fs::read_dir(links_dir(bpffs)) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("staging-").and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 || procfs::process::Process::new(pid).is_err() {
            let _ = remove_dir_files(&entry.path());
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Where a starting agent pins its links until every program is attached (bpffs refuses names
/// with a dot).
fn staging_dir(bpffs: &Path) -> PathBuf {
    links_dir(bpffs).join(format!("staging-{}", std::process::id()))
}

/// Pins `link` at `path`, replacing (and so detaching) a link a previous agent left there. The
/// new link is already attached (its fd is open), so coverage has no gap.
fn pin_replacing(link: FdLink, path: &Path) -> Result<PinnedLink, KernelError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KernelError::Io { what: "removing old pin", path: path.to_path_buf(), source });
        }
    }
    link.pin(path).map_err(|source| KernelError::Pin { path: path.to_path_buf(), source })
}

fn remove_dir_files(dir: &Path) -> Result<(), KernelError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // Pins a start left staged.
            remove_dir_files(&entry.path())?;
            fs::remove_dir(entry.path()).map_err(io_err("removing", &entry.path()))?;
            continue;
        }
        fs::remove_file(entry.path()).map_err(io_err("removing pin", &entry.path()))?;
    }
    Ok(())
}

/// Removes every pin under `bpffs` (links first, so programs detach before their maps go).
/// Safe to call when nothing is pinned.
pub fn detach_pinned(bpffs: &Path) -> Result<(), KernelError> {
    remove_dir_files(&links_dir(bpffs))?;
    remove_dir_files(&maps_dir(bpffs))?;
    for dir in [links_dir(bpffs), maps_dir(bpffs), bpffs.to_path_buf()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KernelError::Io { what: "removing", path: dir, source });
            }
        }
    }
    Ok(())
}

/// The programs attached (their pinned links' names).
pub fn pinned_programs(bpffs: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(links_dir(bpffs))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("staging-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether programs are pinned (attached) under `bpffs`.
pub fn is_attached(bpffs: &Path) -> bool {
    !pinned_programs(bpffs).is_empty()
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// The kernel-side keys and values for the configured databases, host names at the addresses
/// in the snapshot (those resolved at start-up).
pub fn governed_entries(config: &Config) -> Vec<(Endpoint, EndpointPolicy)> {
    governed_entries_with(config, &BTreeMap::new())
}

/// Where a database named by host name or Service is reached now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    /// Addresses: what a host name resolves to; a Service's cluster IPs and backends.
    pub addrs: Vec<SocketAddr>,
    /// Ports governed on every address: a Service's node port.
    pub any_address: Vec<u16>,
    /// A Service's backends (what its EndpointSlices list): governed after every database's
    /// front when the table cannot hold everything.
    pub backends: Vec<SocketAddr>,
}

impl Reached {
    /// Reached at `addrs` only.
    pub fn at(addrs: Vec<SocketAddr>) -> Self {
        Self { addrs, ..Self::default() }
    }

    /// Every endpoint, node ports as `[::]:PORT` (as the kernel's table keys them).
    pub fn endpoints(&self) -> std::collections::BTreeSet<SocketAddr> {
        let any = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        self.addrs
            .iter()
            .chain(&self.backends)
            .copied()
            .chain(self.any_address.iter().map(|p| SocketAddr::new(any, *p)))
            .collect()
    }
}

/// As `governed_entries`, with `resolved` (by database index) in place of the snapshot's
/// addresses for host-named databases (what their names resolve to now, `net::dns`) and the
/// endpoints of Service-named ones (`kube::services`).
pub fn governed_entries_with(config: &Config, resolved: &BTreeMap<usize, Reached>) -> Vec<(Endpoint, EndpointPolicy)> {
    let mut out = Vec::new();
    for (id, db) in config.databases.iter().enumerate() {
        let policy = EndpointPolicy {
            database_id: id as u32,
            mode: match db.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Observe => MODE_OBSERVE,
            },
            fail: match db.fail {
                FailMode::Closed => FAIL_CLOSED,
                FailMode::Open => FAIL_OPEN,
                FailMode::Policy => FAIL_BY_POLICY,
            },
            _pad: 0,
        };
        match &db.address {
            DatabaseAddress::AnyAddress(port) => out.push((Endpoint::any_address(*port), policy)),
            DatabaseAddress::Exact(addrs) => out.extend(addrs.iter().map(|a| (endpoint_of(*a), policy))),
            DatabaseAddress::Host { addrs, .. } => {
                let addrs = resolved.get(&id).map_or(addrs, |r| &r.addrs);
                out.extend(addrs.iter().map(|a| (endpoint_of(*a), policy)))
            }
            DatabaseAddress::Service { .. } => {
                if let Some(reached) = resolved.get(&id) {
                    out.extend(reached.addrs.iter().map(|a| (endpoint_of(*a), policy)));
                    out.extend(reached.any_address.iter().map(|p| (Endpoint::any_address(*p), policy)));
                    out.extend(reached.backends.iter().map(|a| (endpoint_of(*a), policy)));
                }
            }
        }
    }
    out
}

/// What it takes to turn the kernel's governed table into the wanted one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GovernedDiff {
    /// Endpoints to insert, or whose value changes (another database now owns them).
    pub upsert: Vec<(Endpoint, EndpointPolicy)>,
    /// Endpoints no database uses any more.
    pub remove: Vec<Endpoint>,
}

/// Compares the table's `current` entries with the `wanted` ones. An endpoint wanted twice
/// (two databases at one address) keeps the later database's value, as the table always has;
/// it is removed only when no database wants it.
pub fn governed_diff(current: &[(Endpoint, EndpointPolicy)], wanted: &[(Endpoint, EndpointPolicy)]) -> GovernedDiff {
    let wanted: std::collections::HashMap<Endpoint, EndpointPolicy> = wanted.iter().copied().collect();
    let current: std::collections::HashMap<Endpoint, EndpointPolicy> = current.iter().copied().collect();
    let mut diff = GovernedDiff {
        upsert: wanted.iter().filter(|(k, v)| current.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        remove: current.keys().filter(|k| !wanted.contains_key(k)).copied().collect(),
    };
    diff.upsert.sort_by_key(|(k, _)| (k.addr, k.port));
    diff.remove.sort_by_key(|k| (k.addr, k.port));
    diff
}

/// Makes the kernel's governed table exactly `wanted`. Endpoints no database wants go first
/// (they are unwanted: nothing is ungoverned by removing them early, and a full table makes
/// room), then inserts and updates; an endpoint that moves between databases is updated in
/// place, never absent.
fn apply_governed(
    map: &mut HashMap<MapData, Endpoint, EndpointPolicy>,
    wanted: &[(Endpoint, EndpointPolicy)],
) -> Result<GovernedDiff, KernelError> {
    let current: Vec<(Endpoint, EndpointPolicy)> = map.iter().filter_map(Result::ok).collect();
    let diff = governed_diff(&current, wanted);
    for key in &diff.remove {
        map.remove(key).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    }
    for (key, value) in &diff.upsert {
        map.insert(key, value, 0).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    }
    Ok(diff)
}

/// Databases that lost endpoints to a full table, with how many.
pub type Lost = Vec<(String, usize)>;

/// The governed table for `config` with `resolved`, cut to what the kernel's table holds. An
/// endpoint two databases name is the later one's, except that a database named by address or
/// host name always keeps its endpoints (a Service's backend list cannot take them). Beyond
/// capacity,
/// endpoints are kept in this order, the rest reported: every endpoint of the databases named
/// by address or host name; then Services' endpoints, one of each Service in turn, each
/// Service's own list in the order fronts (cluster, external and load-balancer IPs), node port,
/// backends.
pub fn governed_table(config: &Config, resolved: &BTreeMap<usize, Reached>) -> (Vec<(Endpoint, EndpointPolicy)>, Lost) {
    let is_service = |id: u32| {
        config.databases.get(id as usize).is_some_and(|d| matches!(d.address, DatabaseAddress::Service { .. }))
    };
    let wanted = governed_entries_with(config, resolved);
    let capacity = agent_common::GOVERNED_MAX_ENTRIES as usize;
    let mut table: std::collections::HashMap<Endpoint, EndpointPolicy> = std::collections::HashMap::new();
    for pass_services in [true, false] {
        for (key, value) in wanted.iter().filter(|(_, v)| is_service(v.database_id) == pass_services) {
            table.insert(*key, *value);
        }
    }
    if table.len() <= capacity {
        let mut entries: Vec<(Endpoint, EndpointPolicy)> = table.into_iter().collect();
        entries.sort_by_key(|(k, _)| (k.addr, k.port));
        return (entries, Vec::new());
    }
    // (tier, rank within its Service's backends, database) of each endpoint the table would hold.
    let rank = |key: &Endpoint, value: &EndpointPolicy| -> (u8, usize, u32) {
        let id = value.database_id;
        let Some(reached) = config
            .databases
            .get(id as usize)
            .filter(|d| matches!(d.address, DatabaseAddress::Service { .. }))
            .and_then(|_| resolved.get(&(id as usize)))
        else {
            return (0, 0, id);
        };
        // Its place in its own list (fronts, node ports, then backends): Services take turns,
        // one entry each, so no Service's list (however long its external IPs or its
        // EndpointSlices, which a namespace's users may write) can crowd out another's front.
        let ordered = reached
            .addrs
            .iter()
            .map(|a| endpoint_of(*a))
            .chain(reached.any_address.iter().map(|p| Endpoint::any_address(*p)))
            .chain(reached.backends.iter().map(|a| endpoint_of(*a)));
        let position = ordered.into_iter().position(|e| e == *key).unwrap_or(usize::MAX);
        (1, position, id)
    };
    let mut ranked: Vec<((u8, usize, u32), Endpoint, EndpointPolicy)> =
        table.into_iter().map(|(k, v)| (rank(&k, &v), k, v)).collect();
    ranked.sort_by_key(|(r, k, _)| (*r, k.addr, k.port));
    let mut lost: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, _, value) in ranked.iter().skip(capacity) {
        *lost.entry(value.database_id).or_default() += 1;
    }
    ranked.truncate(capacity);
    let lost = lost
        .into_iter()
        .map(|(id, n)| (config.databases.get(id as usize).map_or_else(|| format!("#{id}"), |d| d.name.clone()), n))
        .collect();
    (ranked.into_iter().map(|(_, k, v)| (k, v)).collect(), lost)
}

/// Makes the kernel's governed table the configured one (a previous agent's pinned table
/// included), with Service-named databases at `reached` (what the last agent knew of them).
fn sync_governed(
    map: &mut HashMap<MapData, Endpoint, EndpointPolicy>,
    config: &Config,
    reached: &BTreeMap<usize, Reached>,
) -> Result<(), KernelError> {
    let (wanted, lost) = governed_table(config, reached);
    for (database, n) in lost {
        tracing::error!(database, endpoints = n, "the governed-endpoint table is full: endpoints left ungoverned");
    }
    apply_governed(map, &wanted).map(drop)
}

/// Redirected flows, by the cookie of the proxy socket the kernel bound each one to.
pub struct FlowTable(Mutex<HashMap<MapData, u64, FlowOrigin>>);

/// Why an accepted connection has no usable flow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowRefusal {
    #[error("no redirect record for this connection")]
    NoRecord,
    #[error("the connection's redirect record is {0} ms old")]
    Stale(u64),
}

/// An accepted connection whose record is older than this was not made for this agent's
/// accept: refused rather than attributed.
const MAX_RECORD_AGE_NS: u64 = 60_000_000_000;

impl FlowTable {
    /// Takes the record the kernel bound to the accepted socket with `cookie`: only flows the
    /// redirect created have one. `accept()` returns a socket only after its handshake
    /// callbacks ran (the kernel locks the new socket), so the record is already there.
    pub fn take(&self, cookie: u64) -> Result<FlowOrigin, FlowRefusal> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let origin = map.get(&cookie, 0).map_err(|_| FlowRefusal::NoRecord)?;
        let _ = map.remove(&cookie);
        let age = monotonic_ns().saturating_sub(origin.established_ns);
        if origin.established_ns == 0 || age > MAX_RECORD_AGE_NS {
            return Err(FlowRefusal::Stale(age / 1_000_000));
        }
        Ok(origin)
    }
}

/// The kernel programs' counters.
pub struct Stats(PerCpuArray<MapData, u64>);

impl Stats {
    /// Every counter, summed over CPUs, indexed by `STAT_*`.
    pub fn read(&self) -> [u64; STAT_COUNT as usize] {
        let mut out = [0; STAT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.0.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Opens the pinned counters of a running (or stopped) agent.
    pub fn from_pin(bpffs: &Path) -> Result<Self, KernelError> {
        let data = MapData::from_pin(maps_dir(bpffs).join("STATS"))
            .map_err(|source| KernelError::Map { name: "STATS", source })?;
        let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name: "STATS", source })?;
        Ok(Self(PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name: "STATS", source })?))
    }
}

/// How full one of the kernel's tables is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

/// How full the pinned tables are (entries are counted one key at a time: call it off any
/// latency-sensitive thread). A table that cannot be opened is left out.
pub fn map_fill(bpffs: &Path) -> Vec<MapFill> {
    fn count<K: aya::Pod, V: aya::Pod>(bpffs: &Path, name: &'static str) -> Option<MapFill> {
        let data = MapData::from_pin(maps_dir(bpffs).join(name)).ok()?;
        let max_entries = u64::from(data.info().ok()?.max_entries());
        let map: HashMap<MapData, K, V> = HashMap::try_from(Map::from_map_data(data).ok()?).ok()?;
        let entries = map.keys().filter(Result::is_ok).count() as u64;
        Some(MapFill { name, entries, max_entries })
    }
    [
        count::<Endpoint, EndpointPolicy>(bpffs, "GOVERNED"),
        count::<FailKey, u64>(bpffs, "FAIL_OPEN_IDENTITIES"),
        count::<u64, FlowOrigin>(bpffs, "ORIG_BY_COOKIE"),
        count::<FlowKey, FlowOrigin>(bpffs, "FLOW_BY_CLIENT"),
        count::<u64, FlowOrigin>(bpffs, "FLOW_BY_ACCEPTED"),
        count::<u64, FlowOrigin>(bpffs, "OBSERVED_SOCKS"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The governed endpoints in the pinned table, with the database index each belongs to.
pub fn pinned_governed(bpffs: &Path) -> Result<Vec<(SocketAddr, u32)>, KernelError> {
    let data = MapData::from_pin(maps_dir(bpffs).join("GOVERNED"))
        .map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    let map: HashMap<MapData, Endpoint, EndpointPolicy> =
        HashMap::try_from(map).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    let mut out: Vec<(SocketAddr, u32)> =
        map.iter().filter_map(Result::ok).map(|(k, v)| (crate::flow::socket_addr_of(&k), v.database_id)).collect();
    out.sort();
    Ok(out)
}

/// Reads the pinned agent state (for `warden status`).
pub fn pinned_state(bpffs: &Path) -> Result<AgentState, KernelError> {
    let data = MapData::from_pin(maps_dir(bpffs).join("AGENT_STATE"))
        .map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
    let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
    let array: Array<MapData, AgentState> =
        Array::try_from(map).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
    array.get(&0, 0).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(databases: &str) -> Config {
        Config::parse(Path::new("warden.yaml"), &format!("databases:\n{databases}\n")).expect("config")
    }

    fn ep(addr: &str) -> Endpoint {
        endpoint_of(addr.parse().expect("address"))
    }

    fn resolved(entries: &[(usize, &[&str])]) -> BTreeMap<usize, Reached> {
        entries
            .iter()
            .map(|(id, addrs)| (*id, Reached::at(addrs.iter().map(|a| a.parse().unwrap()).collect())))
            .collect()
    }

    /// The database each endpoint belongs to, as the kernel would look it up.
    fn owners(entries: &[(Endpoint, EndpointPolicy)]) -> Vec<(SocketAddr, u32)> {
        let table: std::collections::HashMap<Endpoint, EndpointPolicy> = entries.iter().copied().collect();
        let mut out: Vec<(SocketAddr, u32)> =
            table.iter().map(|(k, v)| (crate::flow::socket_addr_of(k), v.database_id)).collect();
        out.sort();
        out
    }

    #[test]
    fn host_names_are_governed_at_the_addresses_they_resolve_to_now() {
        let mut c = config("  - {name: a, address: 'db.internal:5432'}\n  - {name: b, address: '*:6432'}");
        // Unresolved and not followed: nothing to govern for it yet.
        assert_eq!(owners(&governed_entries(&c)), vec![("[::]:6432".parse().unwrap(), 1)]);
        let DatabaseAddress::Host { addrs, .. } = &mut c.databases[0].address else { panic!("a host") };
        *addrs = vec!["10.0.0.5:5432".parse().unwrap()];
        assert_eq!(owners(&governed_entries(&c))[0], ("10.0.0.5:5432".parse().unwrap(), 0), "start-up addresses");
        let now = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.6:5432", "[fd00::6]:5432"])]));
        assert_eq!(
            owners(&now),
            vec![
                ("10.0.0.6:5432".parse().unwrap(), 0),
                ("[::]:6432".parse().unwrap(), 1),
                ("[fd00::6]:5432".parse().unwrap(), 0)
            ]
        );
    }

    #[test]
    fn a_full_table_keeps_addresses_then_every_front_then_backends_in_turn() {
        let c = config(
            "  - {name: a, address: '10.0.0.1:5432'}\n  - {name: big, address: 'crm/big:5432'}\n  - {name: small, address: 'crm/small:5432'}\nkubernetes: {node_name: n1}",
        );
        let backends = |base: u8, n: usize| -> Vec<SocketAddr> {
            (0..n).map(|i| SocketAddr::from(([10, base, (i / 250) as u8, (i % 250) as u8 + 1], 5432))).collect()
        };
        let mut resolved = BTreeMap::new();
        // `big` lists the address database's endpoint as a backend too: it stays a's.
        let mut big = backends(1, 1500);
        big.push("10.0.0.1:5432".parse().unwrap());
        resolved.insert(
            1,
            Reached { addrs: vec!["10.96.0.1:5432".parse().unwrap()], any_address: vec![30001], backends: big },
        );
        resolved.insert(
            2,
            Reached { addrs: vec!["10.96.0.2:5432".parse().unwrap()], any_address: vec![], backends: backends(2, 10) },
        );
        let (table, lost) = governed_table(&c, &resolved);
        assert_eq!(table.len(), agent_common::GOVERNED_MAX_ENTRIES as usize);
        let owners = owners(&table);
        let owner = |a: &str| owners.iter().find(|(k, _)| *k == a.parse::<SocketAddr>().unwrap()).map(|(_, id)| *id);
        assert_eq!(owner("10.0.0.1:5432"), Some(0), "the address database keeps its endpoint");
        assert_eq!(owner("10.96.0.1:5432"), Some(1));
        assert_eq!(owner("[::]:30001"), Some(1));
        assert_eq!(owner("10.96.0.2:5432"), Some(2), "the small Service's front fits, whatever big lists");
        assert_eq!(owner("10.2.0.10:5432"), Some(2), "the small Service's backends fit: one of each in turn");
        // 1 + 1514 Service entries; 1024 kept: the small Service's 11, big's first 1012.
        assert_eq!(lost, vec![("big".to_string(), 490)]);
        // Within capacity: everything, untouched.
        resolved.get_mut(&1).expect("big").backends.truncate(5);
        assert!(governed_table(&c, &resolved).1.is_empty());
    }

    #[test]
    fn a_service_is_governed_at_its_cluster_ips_backends_and_node_port_once_known() {
        let c = config("  - {name: a, address: 'crm/pg:5432'}\nkubernetes: {node_name: n1}");
        assert!(governed_entries(&c).is_empty(), "nothing known before the API answers");
        let mut known = resolved(&[(0, &["10.96.0.10:5432", "10.244.1.7:5432"])]);
        known.get_mut(&0).expect("set").any_address.push(30432);
        assert_eq!(
            owners(&governed_entries_with(&c, &known)),
            vec![
                ("10.96.0.10:5432".parse().unwrap(), 0),
                ("10.244.1.7:5432".parse().unwrap(), 0),
                ("[::]:30432".parse().unwrap(), 0)
            ]
        );
    }

    #[test]
    fn the_diff_adds_updates_and_removes_only_what_changed() {
        let c = config("  - {name: a, address: 'db.internal:5432'}\n  - {name: b, address: '10.0.0.9:5432'}");
        let before = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.5:5432", "10.0.0.6:5432"])]));
        let after = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.6:5432", "10.0.0.7:5432"])]));
        let diff = governed_diff(&before, &after);
        assert_eq!(diff.upsert.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![ep("10.0.0.7:5432")]);
        assert_eq!(diff.remove, vec![ep("10.0.0.5:5432")]);
        assert_eq!(governed_diff(&after, &after), GovernedDiff::default(), "nothing to do when nothing changed");
        // A previous agent's table holding someone else's entries: replaced.
        let stale = [(ep("192.0.2.1:1"), EndpointPolicy::default())];
        let diff = governed_diff(&stale, &after);
        assert_eq!((diff.upsert.len(), diff.remove.clone()), (3, vec![ep("192.0.2.1:1")]));
    }

    #[test]
    fn an_endpoint_two_databases_share_stays_while_either_uses_it() {
        // a and b both resolve to 10.0.0.5; c names it exactly.
        let c = config(
            "  - {name: a, address: 'a.internal:5432'}\n  - {name: b, address: 'b.internal:5432'}\n  - {name: c, address: '10.0.0.5:5432', mode: observe}",
        );
        let shared = ep("10.0.0.5:5432");
        let both = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.5:5432"]), (1, &["10.0.0.5:5432"])]));
        // b moves away: c still names the endpoint, so it stays (with c's value, the later one).
        let b_moved = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.5:5432"]), (1, &["10.0.0.8:5432"])]));
        let diff = governed_diff(&both, &b_moved);
        assert!(!diff.remove.contains(&shared), "{diff:?}");
        assert_eq!(owners(&b_moved)[0], ("10.0.0.5:5432".parse().unwrap(), 2));

        // Without c: when the later of two databases moves away, the endpoint is handed to the
        // other in place (an update), never removed and re-added.
        let c = config("  - {name: a, address: 'a.internal:5432'}\n  - {name: b, address: 'b.internal:5432'}");
        let both = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.5:5432"]), (1, &["10.0.0.5:5432"])]));
        assert_eq!(owners(&both), vec![("10.0.0.5:5432".parse().unwrap(), 1)]);
        let b_moved = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.5:5432"]), (1, &["10.0.0.8:5432"])]));
        let diff = governed_diff(&both, &b_moved);
        assert!(diff.remove.is_empty(), "{diff:?}");
        let handed_over = diff.upsert.iter().find(|(k, _)| *k == shared).expect("updated in place");
        assert_eq!(handed_over.1.database_id, 0);
        // Once neither uses it, it goes.
        let both_moved = governed_entries_with(&c, &resolved(&[(0, &["10.0.0.7:5432"]), (1, &["10.0.0.8:5432"])]));
        assert_eq!(governed_diff(&b_moved, &both_moved).remove, vec![shared]);
    }
}
