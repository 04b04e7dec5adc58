//! Loading, attaching and pinning the kernel programs, and the agent's view of their maps.
//!
//! Links and maps are pinned under `bpffs_dir` so governance outlives the agent process: a
//! restart (or a crash) does not open a window where governed flows go direct. A new agent
//! reuses the pinned maps and swaps each pinned link for its own.

use std::{
    fs::{self, File},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use agent_common::{
    AgentState, Endpoint, EndpointPolicy, FAIL_CLOSED, FAIL_OPEN, FlowEvent, FlowOrigin, MODE_ENFORCE, MODE_OBSERVE,
    STAT_COUNT,
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
    links: Vec<PinnedLink>,
    bpffs: PathBuf,
    governed: HashMap<MapData, Endpoint, EndpointPolicy>,
    state: Mutex<Array<MapData, AgentState>>,
    flows: FlowTable,
    stats: Stats,
    events: Mutex<RingBuf<MapData>>,
}

impl Kernel {
    /// Loads the programs (reusing pinned maps), fills the governed-endpoint table, publishes
    /// `state`, then attaches every program at the cgroup v2 root and pins the links.
    pub fn start(config: &Config, state: AgentState) -> Result<Self, KernelError> {
        let bpffs = config.bpffs_dir.clone();
        let maps = maps_dir(&bpffs);
        fs::create_dir_all(&maps).map_err(io_err("creating", &maps))?;
        fs::create_dir_all(links_dir(&bpffs)).map_err(io_err("creating", &bpffs))?;
        let mut ebpf = match EbpfLoader::new().default_map_pin_directory(&maps).load(OBJECT) {
            Ok(ebpf) => ebpf,
            Err(err) => {
                // Pinned maps from an incompatible build: start from fresh maps.
                tracing::warn!(error = %err, "pinned maps could not be reused; recreating them");
                remove_dir_files(&maps)?;
                EbpfLoader::new().default_map_pin_directory(&maps).load(OBJECT)?
            }
        };

        let mut governed: HashMap<MapData, Endpoint, EndpointPolicy> = take_map(&mut ebpf, "GOVERNED")?;
        sync_governed(&mut governed, config)?;
        let mut state_map: Array<MapData, AgentState> = take_map(&mut ebpf, "AGENT_STATE")?;
        state_map.set(0, state, 0).map_err(|source| KernelError::Map { name: "AGENT_STATE", source })?;
        let flows = FlowTable(Mutex::new(take_map(&mut ebpf, "FLOW_BY_CLIENT")?));
        let stats = Stats(take_map(&mut ebpf, "STATS")?);
        let events = Mutex::new(take_map(&mut ebpf, "FLOW_EVENTS")?);

        let mut links = Vec::new();
        if let Err(err) = attach_all(&mut ebpf, config, &bpffs, &mut links) {
            // Never leave a partial set attached: a redirect without the flow table would
            // send governed clients to a proxy that refuses them.
            for link in links {
                if let Ok(link) = link.unpin() {
                    drop(link);
                }
            }
            let _ = state_map.set(0, AgentState { serving: 0, ..state }, 0);
            return Err(err);
        }
        Ok(Self { _ebpf: ebpf, links, bpffs, governed, state: Mutex::new(state_map), flows, stats, events })
    }

    /// Publishes the agent's state (heartbeat, serving flag).
    pub fn publish(&self, state: AgentState) -> Result<(), KernelError> {
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
        self.governed.keys().filter(Result::is_ok).count()
    }

    /// Detaches every program and removes all pins (maps included).
    pub fn detach(self) -> Result<(), KernelError> {
        let bpffs = self.bpffs.clone();
        for link in self.links {
            // Unpinning then dropping the last reference detaches the program.
            drop(link.unpin().map_err(io_err("unpinning link in", &bpffs))?);
        }
        drop(self._ebpf);
        detach_pinned(&bpffs)
    }
}

/// Loads and attaches every program, pinning each link as it goes (into `links`, so the caller
/// can roll back).
fn attach_all(ebpf: &mut Ebpf, config: &Config, bpffs: &Path, links: &mut Vec<PinnedLink>) -> Result<(), KernelError> {
    let cgroup = File::open(&config.cgroup_root).map_err(io_err("opening cgroup", &config.cgroup_root))?;
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
        links.push(pin_replacing(fd_link, &links_dir(bpffs).join(name))?);
    }
    Ok(())
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

/// Whether programs are pinned (attached) under `bpffs`.
pub fn is_attached(bpffs: &Path) -> bool {
    fs::read_dir(links_dir(bpffs)).is_ok_and(|mut d| d.next().is_some())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// The kernel-side keys and values for the configured databases.
pub fn governed_entries(config: &Config) -> Vec<(Endpoint, EndpointPolicy)> {
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
            },
            _pad: 0,
        };
        match &db.address {
            DatabaseAddress::AnyAddress(port) => out.push((Endpoint::any_address(*port), policy)),
            DatabaseAddress::Exact(addrs) | DatabaseAddress::Host { addrs, .. } => {
                out.extend(addrs.iter().map(|a| (endpoint_of(*a), policy)))
            }
        }
    }
    out
}

/// Makes the kernel's governed table exactly the configured one.
fn sync_governed(map: &mut HashMap<MapData, Endpoint, EndpointPolicy>, config: &Config) -> Result<(), KernelError> {
    let wanted = governed_entries(config);
    let stale: Vec<Endpoint> =
        map.keys().filter_map(Result::ok).filter(|k| !wanted.iter().any(|(w, _)| w == k)).collect();
    for key in stale {
        map.remove(&key).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    }
    for (key, value) in wanted {
        map.insert(key, value, 0).map_err(|source| KernelError::Map { name: "GOVERNED", source })?;
    }
    Ok(())
}

/// Redirected flows keyed by the client's endpoint (the accepted connection's peer).
pub struct FlowTable(Mutex<HashMap<MapData, Endpoint, FlowOrigin>>);

impl FlowTable {
    /// Takes the record for a connection accepted from `peer`: only flows the redirect created
    /// have one.
    pub fn take(&self, peer: SocketAddr) -> Option<FlowOrigin> {
        let key = endpoint_of(peer);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let origin = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(origin)
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
