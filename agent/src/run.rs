//! `warden run`: bring everything up in a safe order, serve, and shut down cleanly.
//!
//! Order matters: listeners are bound before the programs attach (so the first redirected
//! connect finds a listener), and the agent moves into its own cgroup before anything opens an
//! upstream connection (so the exemption holds from the first one).

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_common::{AgentState, EVENT_OBSERVED_CLOSE, EVENT_OBSERVED_OPEN, EVENT_REFUSED, EVENT_UNGOVERNED, FlowEvent};
use anyhow::{Context as _, Result};

use crate::{
    audit::{AuditLog, Event, SessionId},
    cgroup::{self, CgroupId},
    config::{Config, DatabaseAddress, OnExit},
    ebpf::{Kernel, monotonic_ns},
    flow::{KernelFacts, endpoint_of, socket_addr_of},
    handover::{self, Inherited, Predecessor},
    identity::{Resolver, workloads_dir},
    kubernetes::Cluster,
    net::{
        dns::{self, HostFollower},
        governed::Governed,
        listener, netif,
        netns::Namespaces,
    },
    proxy::{self, SessionIds, Shared, limits::Limits},
};

/// How long start-up waits for the Kubernetes watches' first lists before it serves anyway.
const KUBE_SYNC_WAIT: Duration = Duration::from_secs(15);

/// SO_MARK the agent puts on its upstream sockets ("WDN").
pub const UPSTREAM_MARK: u32 = 0x0057_444e;
/// The cgroup (under the v2 root) the agent moves into when started in the root cgroup.
pub const AGENT_CGROUP: &str = "warden.agent";
/// Written once the agent serves; removed when it stops.
pub fn ready_file(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.ready")
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(mut config: Config) -> Result<()> {
    // Read now: an upgrade replaces the file behind the path, and SIGUSR2 starts the new one.
    let exe = started_from();
    // Under a keeper (`upgrade.keeper`), before any thread exists (it edits the environment).
    let keeper = crate::keeper::Keeper::from_env();
    // Before any thread exists: a thread keeps the cgroup namespace it was created in.
    join_host_cgroup_namespace()?;
    // The main runtime only keeps time (heartbeat, event drain, database host names) and writes
    // the audit trail; sessions run on the proxy workers.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Host names first: a name that resolves to nothing stops the agent before it changes
    // anything on the host. The follower's resolver lives on this runtime, as it must.
    let hosts = runtime.block_on(dns::resolve_at_start(&mut config)).context("resolving database host names")?;
    // The API server's configuration is read now: without it, pods could not be told apart.
    let cluster = match &config.kubernetes {
        Some(k) => Some(runtime.block_on(Cluster::connect(k)).context("connecting to the Kubernetes API")?),
        None => None,
    };
    let config = Arc::new(config);
    raise_open_file_limit();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if !config.proxy.allow_unprivileged_port {
        for addr in std::iter::once(config.proxy.listen_v4).chain(config.proxy.listen_v6) {
            listener::check_privileged(addr)?;
        }
    }
    fs::create_dir_all(workloads_dir(&config.state_dir))
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let own_cgroup = enter_own_cgroup(&config.cgroup_root)?;
    if let Some(name) = &config.proxy.interface {
        let mut addrs = vec![config.proxy.listen_v4.ip()];
        addrs.extend(config.proxy.listen_v6.map(|a| a.ip()));
        netif::ensure(name, &addrs).context("setting up the node-local proxy interface")?;
    }
    // The agent serving now, if any, hands its listening sockets over (asked before anything
    // is bound: its addresses are taken).
    let predecessor = Predecessor::find(&config.state_dir).context("taking over from the agent serving now")?;
    // What a keeper kept of the agent before (read whatever follows: its copies must not stay
    // queued here).
    let kept = match &keeper {
        Some(k) => k.kept().context("taking the sockets the keeper kept")?,
        None => Inherited::default(),
    };
    let (predecessor, inherited) = match predecessor {
        Some((p, inherited)) => {
            tracing::info!(pid = p.peer.pid, sockets = inherited.proxy.len(), "taking over from the agent serving now");
            (Some(p), inherited)
        }
        None if keeper.as_ref().is_some_and(|k| k.successor) => {
            anyhow::bail!(
                "started by the keeper to take over, but no agent serves: exiting (the keeper starts the agent)"
            )
        }
        // No agent serves: the keeper's copies of the last one's sockets, if it was killed.
        None => {
            if !kept.proxy.is_empty() {
                tracing::info!(
                    sockets = kept.proxy.len(),
                    "taking over the sockets the keeper kept of the agent before"
                );
            }
            (None, kept)
        }
    };
    runtime.block_on(serve(config, own_cgroup, hosts, cluster, Start { predecessor, inherited, exe, keeper }))
}

/// The path this agent was started from, as given (an upgrade that switches a symbolic link
/// is followed), made absolute; else the executable's resolved path.
pub fn started_from() -> Option<PathBuf> {
    let given = std::env::args_os().next().map(PathBuf::from)?;
    if given.components().count() > 1 {
        return std::path::absolute(&given).ok();
    }
    std::env::current_exe().ok()
}

/// In a container with its own cgroup namespace (the default for Kubernetes pods on cgroup v2),
/// `/proc/PID/cgroup` shows paths relative to the container's cgroup: workloads' paths would
/// not parse (`/../../kubepods.slice/...`) and the agent's own would look like the root. The
/// agent joins the host's (initial) cgroup namespace through any host process it can see (the
/// DaemonSet shares the host's PID namespace, and has CAP_SYS_ADMIN to enter it). Nothing to do
/// when it is already there.
fn join_host_cgroup_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    // The initial cgroup namespace's inode number (the kernel's PROC_CGROUP_INIT_INO).
    const INITIAL_CGROUP_NS: u64 = 0xEFFF_FFFB;
    let own = fs::metadata("/proc/self/ns/cgroup").context("reading the agent's cgroup namespace")?;
    if own.ino() == INITIAL_CGROUP_NS {
        return Ok(());
    }
    let host = fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .map(|e| e.path().join("ns/cgroup"))
        .filter(|ns| fs::metadata(ns).is_ok_and(|m| m.ino() == INITIAL_CGROUP_NS && m.dev() == own.dev()))
        .find_map(|ns| fs::File::open(ns).ok())
        .context(
            "the agent runs in a cgroup namespace of its own and sees no host process to join the host's \
             (in a container it needs the host's PID namespace: hostPID)",
        )?;
    nix::sched::setns(host, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("joining the host's cgroup namespace (in a container, the agent needs CAP_SYS_ADMIN)")?;
    tracing::info!("joined the host's cgroup namespace");
    Ok(())
}

/// Each proxied connection holds two descriptors: the default soft limit (1024) would refuse
/// clients long before memory or CPU run out. Raised to the hard limit, which needs no
/// privilege; a low hard limit is reported.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => tracing::warn!(soft, hard, error = %err, "could not raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "could not read the open-file limit"),
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < 65_536
    {
        tracing::warn!(limit = soft, "the open-file limit allows fewer than 32768 proxied connections");
    }
}

fn enter_own_cgroup(root: &Path) -> Result<CgroupId> {
    let current = cgroup::path_of_pid(std::process::id()).context("reading /proc/self/cgroup")?;
    let dir = if current == "/" {
        let dir = cgroup::create(root, AGENT_CGROUP).context("creating the agent's cgroup")?;
        cgroup::move_pid(&dir, std::process::id()).context("moving the agent into its cgroup")?;
        dir
    } else {
        root.join(current.trim_start_matches('/'))
    };
    cgroup::id_of(&dir).with_context(|| format!("reading the id of {}", dir.display()))
}

fn state(config: &Config, own_cgroup: CgroupId, netns_cookie: u64, serving: bool, fail_epoch: u64) -> AgentState {
    AgentState {
        heartbeat_ns: monotonic_ns(),
        agent_cgroup_id: own_cgroup.0,
        proxy_v4: endpoint_of(config.proxy.listen_v4),
        proxy_v6: config.proxy.listen_v6.map(endpoint_of).unwrap_or_default(),
        serving: u32::from(serving),
        upstream_mark: UPSTREAM_MARK,
        agent_netns_cookie: netns_cookie,
        fail_epoch,
    }
}

/// The base of this agent's fail epochs (`AgentState::fail_epoch` is it plus the policy set's
/// generation): its start time, beyond any epoch an earlier agent can have used.
fn fail_epoch_base() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Where the agent came from and what it takes over.
struct Start {
    /// The agent being replaced.
    predecessor: Option<Predecessor>,
    /// The sockets it handed over, or the keeper kept.
    inherited: Inherited,
    /// The keeper this agent runs under.
    keeper: Option<crate::keeper::Keeper>,
    /// The executable this agent was started from (a successor is started from the same path,
    /// where an upgrade has put the new build).
    exe: Option<PathBuf>,
}

/// How the serving loop ended.
enum Stop {
    /// SIGTERM or SIGINT with no successor: stop.
    Signal,
    /// A successor took over: drain, then exit without touching what is now its.
    Replaced(handover::Successor),
}

/// Proxy workers when the configuration names none: half the CPUs the agent may use (its
/// cgroup's quota counts), at least one. A session's client and server run on the same host's
/// CPUs: measured on 2 CPUs (docs/decisions.md, "Performance"), one worker spent 9-15% less
/// CPU per transaction than two, and the whole machine 6-10% less, at the same throughput.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
}

async fn serve(
    config: Arc<Config>,
    own_cgroup: CgroupId,
    hosts: HostFollower,
    cluster: Option<Cluster>,
    start: Start,
) -> Result<()> {
    // Handlers first: a SIGTERM that arrives once we are attached must reach the clean
    // shutdown (which publishes "not serving" at once), not the default action.
    let mut signals = Signals::install()?;
    let workers = config.proxy.workers.unwrap_or_else(default_workers);
    let (predecessor, mut inherited) = (start.predecessor, start.inherited);
    let mut addrs = vec![config.proxy.listen_v4];
    addrs.extend(config.proxy.listen_v6);
    // Every worker gets its own listening socket per address (SO_REUSEPORT): the kernel spreads
    // connections, and a session's two directions never wake another thread. The sockets of
    // the agent being replaced are taken over where it listened at the same address (never
    // closed in between: connections wait in their backlog), the rest bound. A copy of each is
    // kept to hand over to this agent's own successor.
    let mut listeners: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut offerable = Vec::new();
    for addr in &addrs {
        let mut sockets = inherited.take_proxy(*addr);
        while sockets.len() < workers {
            sockets.push(bind(*addr)?);
        }
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true).context("making a taken-over listener non-blocking")?;
            offerable.push((*addr, socket.try_clone().context("keeping a copy of a proxy listener")?));
            listeners[i % workers].push(socket);
        }
    }
    if !inherited.proxy.is_empty() {
        tracing::info!(
            sockets = inherited.proxy.len(),
            "the replaced agent's listeners at addresses this configuration does not use are closed"
        );
        inherited.proxy.clear();
    }
    let (audit, audit_writer) = AuditLog::open_beside(&config.audit, predecessor.is_some())
        .with_context(|| format!("opening the audit ring {}", config.audit.path.display()))?;
    let ticker = audit.spawn_ticker();
    // A policy set with mistakes stops the start: an agent that cannot say what it enforces
    // must not serve (a reload with mistakes, later, keeps the set in force instead).
    let policies = crate::govern::reload::load(&config.policies)
        .map_err(|errors| anyhow::anyhow!("the policy set has mistakes:\n{errors}"))?;
    tracing::info!(policies = policies.len(), paths = ?config.policies, "policy set loaded");
    let approvals = crate::approval::Approvals::new(audit.clone(), crate::approval::webhook::Webhooks::start());
    // Masking keys: outside policies, root-only, rotated on SIGHUP.
    let metrics = Arc::new(crate::admin::metrics::Metrics::new());
    let governor = crate::govern::Governor::new(policies)
        .with_approvals(approvals.clone())
        .with_mask_keys(config.mask_keys.clone())
        .with_metrics(metrics.clone());
    let governor = Arc::new(governor);
    // The metrics and probe port before serving, too: a port taken stops the start.
    let (metrics_listener, metrics_offer) = match &config.metrics {
        Some(m) => {
            let listener = match inherited.take_metrics(m.listen) {
                Some(l) => l,
                None => std::net::TcpListener::bind(m.listen)
                    .with_context(|| format!("binding the metrics listener on {}", m.listen))?,
            };
            listener.set_nonblocking(true).context("making the metrics listener non-blocking")?;
            let offer = (m.listen, listener.try_clone().context("keeping a copy of the metrics listener")?);
            (Some(tokio::net::TcpListener::from_std(listener)?), Some(offer))
        }
        None => (None, None),
    };
    let fail_epoch_base = fail_epoch_base();
    // The namespace the proxy listens in: the kernel hands over flow records only for
    // connections accepted there.
    let namespaces = Arc::new(Namespaces::new().context("opening the agent's network namespace")?);
    // Service-named databases where the last agent left them, until the API answers.
    let saved_services = crate::net::governed::saved_services(&config);
    if let Some(predecessor) = &predecessor {
        // From here this agent writes the kernel's state; the one it replaces stops. One that
        // still runs without having paused may serve on: this agent must not start beside it.
        if let Err(err) = predecessor.attaching() {
            if predecessor.peer.alive() {
                return Err(err.context("the agent being replaced did not pause; not starting beside it"));
            }
            tracing::warn!(pid = predecessor.peer.pid, error = %format!("{err:#}"), "the agent being replaced exited during the hand-over; carrying on with its sockets");
        }
    }
    // The admin socket before serving: an agent whose API cannot be reached could hold
    // statements nobody can approve. (Beside an agent being replaced, only once it paused: until
    // then the socket is its own.)
    let (admin_listener, admin_group) = crate::admin::bind(&config.admin)?;
    let kernel = Arc::new(
        Kernel::start(
            &config,
            state(&config, own_cgroup, namespaces.agent_cookie(), true, fail_epoch_base + governor.generation()),
            &saved_services.0,
            predecessor.is_some(),
        )
        .context("loading and attaching the eBPF programs")?,
    );
    let pods = cluster
        .as_ref()
        .map(|c| Arc::new(crate::identity::Pods::new(c.deleted_grace, Arc::new(crate::identity::MonotonicClock))));
    let mut resolver = Resolver::new(&config.cgroup_root, &config.state_dir).with_workloads(config.workloads.clone());
    if let Some(pods) = &pods {
        resolver = resolver.with_pods(pods.clone());
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        kernel: kernel.clone(),
        resolver: Arc::new(resolver),
        audit: audit.clone(),
        own_cgroup,
        upstream_mark: UPSTREAM_MARK,
        sessions: SessionIds::new(),
        cancels: Arc::new(proxy::postgres::cancel::CancelRegistry::default()),
        statements: Arc::new(crate::audit::statements::StatementAuditing::new(
            audit.clone(),
            &config.audit,
            governor.descriptions.clone(),
        )),
        governor: governor.clone(),
        namespaces: namespaces.clone(),
        limits: Limits::new(config.proxy.max_connections, config.proxy.max_connections_per_identity),
        refusals: proxy::limits::RefusalRecords::new(10),
        fail_epoch_base,
        live: Arc::new(proxy::live::LiveSessions::default()),
        pod_wait: cluster.as_ref().map_or(Duration::ZERO, |c| c.pod_wait),
        pod_waits: std::sync::atomic::AtomicUsize::new(0),
        metrics: metrics.clone(),
        handling: std::sync::atomic::AtomicUsize::new(0),
        ledger: proxy::ledger::Ledger::create(&config.state_dir, config.proxy.max_connections + 64, audit.clone()),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Accepting ends when a successor serves; the sessions go on until `stop`.
    let (accepting, accepting_rx) = tokio::sync::watch::channel(true);
    let still_accepting = Arc::new(std::sync::atomic::AtomicUsize::new(workers));
    let mut threads = Vec::new();
    for (i, listeners) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        let mut accepting = accepting_rx.clone();
        let acked = still_accepting.clone();
        let thread = std::thread::Builder::new().name(format!("warden-proxy-{i}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!(error = %err, "proxy worker could not start its runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut serving = tokio::task::JoinSet::new();
                for listener in listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            serving.spawn(proxy::serve(l, shared.clone()));
                        }
                        Err(err) => tracing::error!(error = %err, "proxy worker could not register its listener"),
                    }
                }
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = accepting.wait_for(|a| !*a) => {
                        serving.shutdown().await;
                        acked.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                }
                let _ = stopped.wait_for(|s| *s).await;
            });
        })?;
        threads.push(thread);
    }
    // What belongs to the agent that owns the kernel state: handed to a successor with it.
    let mut owned = tokio::task::JoinSet::new();
    // What serves this agent's own sessions until they end.
    let mut tasks = tokio::task::JoinSet::new();
    let governor_generation_source = governor.clone();
    tasks.spawn(crate::govern::reload::watch(governor, config.policies.clone()));
    let heartbeat_task = tokio::spawn(heartbeat(shared.clone()));
    owned.spawn(drain_events(shared.clone()));
    owned.spawn(sweep_workload_labels(shared.clone()));
    owned.spawn(reap_crashed(shared.clone()));
    let governed = Arc::new(Governed::new(config.clone(), kernel.clone(), saved_services));
    owned.spawn(hosts.follow(governed.clone(), audit.clone()));
    let kube_sync = Arc::new(crate::kubernetes::Sync::default());
    // Probes and metrics before the Kubernetes watches are awaited: liveness must answer.
    if let Some(listener) = metrics_listener {
        metrics.sample(crate::admin::metrics::Sampled {
            approvals: approvals.clone(),
            live: shared.live.clone(),
            audit: audit.clone(),
            audit_path: config.audit.path.clone(),
            bpffs: config.bpffs_dir.clone(),
            stats: kernel.clone(),
            pods: pods.clone(),
            governed: governed.clone(),
        });
        let health = Arc::new(crate::admin::metrics::Health {
            bpffs: config.bpffs_dir.clone(),
            audit: audit.probe(),
            kube: kube_sync.clone(),
            governed: governed.clone(),
        });
        owned.spawn(crate::admin::metrics::serve(listener, metrics.clone(), health));
    }
    if let (Some(cluster), Some(pods)) = (&cluster, &pods) {
        tasks.spawn(crate::kubernetes::pods::watch(
            cluster.client.clone(),
            cluster.node.clone(),
            pods.clone(),
            kube_sync.expect("pods"),
        ));
        for (index, db) in config.databases.iter().enumerate() {
            if let DatabaseAddress::Service { namespace, name, port } = &db.address {
                let service = crate::kubernetes::services::ServiceDatabase {
                    index,
                    database: db.name.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: port.clone(),
                };
                let synced = kube_sync.expect(&format!("service {namespace}/{name}"));
                owned.spawn(crate::kubernetes::services::follow(
                    cluster.client.clone(),
                    service,
                    governed.clone(),
                    audit.clone(),
                    synced,
                ));
            }
        }
        // Serving is announced once the node's pods and the databases' Services are known (or
        // after KUBE_SYNC_WAIT, with a warning: flows of pods not known yet wait for them).
        let deadline = tokio::time::Instant::now() + KUBE_SYNC_WAIT;
        while !kube_sync.waiting().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waiting = kube_sync.waiting();
        if !waiting.is_empty() {
            tracing::warn!(?waiting, "serving before these Kubernetes watches listed; they are retried");
        }
    }
    let admin_state = Arc::new(crate::admin::AdminState {
        approvals: approvals.clone(),
        live: shared.live.clone(),
        audit: audit.clone(),
        resolver: shared.resolver.clone(),
        governor: shared.governor.clone(),
        cgroup_root: config.cgroup_root.clone(),
        started: std::time::Instant::now(),
        group: admin_group,
    });
    let mut admin = tokio::spawn(crate::admin::serve(admin_listener, admin_state.clone()));
    fs::write(ready_file(&config.state_dir), std::process::id().to_string())?;
    tracing::info!(
        v4 = %config.proxy.listen_v4,
        v6 = ?config.proxy.listen_v6,
        workers,
        databases = config.databases.len(),
        governed_endpoints = kernel.governed_count(),
        "serving"
    );
    if let Some(predecessor) = predecessor {
        took_over(predecessor).await?;
    }
    // The keeper makes this agent its own, and systemd its main process, only once the agent
    // it replaced gave way.
    if let Some(keeper) = &start.keeper
        && let Err(err) = keeper.keep(&offerable, metrics_offer.as_ref())
    {
        tracing::warn!(error = %format!("{err:#}"), "the keeper could not take copies of the sockets");
    }
    notify_systemd(start.keeper.is_some());
    // Off-host export once this agent is the one serving (the one it replaced stopped its own
    // exporter first: both read and advance the same checkpoint).
    let export_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exporter = match &config.audit.export {
        Some(crate::config::ExportConfig::OtlpHttp { endpoint }) => {
            let otlp = crate::audit::export::OtlpHttp::new(endpoint).map_err(anyhow::Error::msg)?;
            Some(crate::audit::export::spawn(
                config.audit.path.clone(),
                Box::new(otlp),
                export_stop.clone(),
                Arc::new(crate::audit::export::ExportCounters::default()),
            )?)
        }
        None => None,
    };
    let successors = match handover::Listener::bind(&config.state_dir) {
        Ok(l) => Some(l),
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "no hand-over socket: a restart of this agent will drop its sessions");
            None
        }
    };

    // A successor this agent started runs (until it exits; it then serves, or failed).
    let successor_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended = loop {
        tokio::select! {
            received = signals.next() => match received {
                Received::Stop => break Stop::Signal,
                Received::Upgrade if successors.is_none() => {
                    tracing::error!("SIGUSR2: no hand-over socket, so a successor could not take over; not starting one");
                }
                Received::Upgrade if successor_running.load(std::sync::atomic::Ordering::Acquire) => {
                    tracing::warn!("SIGUSR2: a successor started earlier is still starting; not starting another");
                }
                Received::Upgrade => match &start.keeper {
                    Some(keeper) => {
                        if let Err(err) = keeper.upgrade() {
                            tracing::error!(error = %format!("{err:#}"), "SIGUSR2: the keeper could not be asked");
                        }
                    }
                    None => spawn_successor(start.exe.as_deref(), &config.path, &successor_running),
                },
            },
            accepted = accept_successor(successors.as_ref()) => {
                let successor = match accepted {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting on the hand-over socket failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let offer = Offer { proxy: &offerable, metrics: metrics_offer.as_ref() };
                match hand_over(&successor, offer, &kernel).await {
                    Ok(()) => break Stop::Replaced(successor),
                    Err(Abandoned { error, successor_attached }) => {
                        tracing::warn!(error = %format!("{error:#}"), "hand-over abandoned; this agent serves on");
                        let _ = successor.send(&handover::Message::Refused { why: format!("{error:#}") });
                        // What it sent and this agent did not read is read now: a unix socket
                        // closed with unread data resets its peer, which would then never read
                        // why it was refused.
                        for _ in 0..2 {
                            if !matches!(successor.receive(Duration::from_millis(300)).await, Ok(Some(_))) {
                                break;
                            }
                        }
                        if successor_attached {
                            // It may have published its state, changed the governed table and
                            // replaced the admin socket: all are this agent's again (the
                            // heartbeat publishes within half a second).
                            kernel.set_owner(true);
                            if let Err(err) = governed.retry() {
                                tracing::error!(error = %err, "restoring the governed-endpoint table failed");
                            }
                            match crate::admin::bind(&config.admin) {
                                Ok((listener, _)) => {
                                    admin.abort();
                                    admin = tokio::spawn(crate::admin::serve(listener, admin_state.clone()));
                                }
                                Err(err) => tracing::error!(error = %format!("{err:#}"), "re-binding the admin socket failed"),
                            }
                            let _ = fs::write(ready_file(&config.state_dir), std::process::id().to_string());
                            notify_systemd(start.keeper.is_some());
                        }
                    }
                }
            }
        }
    };
    // The kernel state is no longer this agent's to publish (a successor does), or is about to
    // say "not serving".
    heartbeat_task.abort();
    owned.abort_all();
    while owned.join_next().await.is_some() {}
    metrics.stop_sampling();
    drop(successors);
    // This agent hands over no more: its copies of the sockets go (were the successor to die,
    // sockets nobody accepts on would hold connections in the listening group).
    drop(offerable);
    drop(metrics_offer);
    let stop_export = || {
        export_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        exporter.map(|e| tokio::task::spawn_blocking(move || e.join()))
    };
    let replaced = match ended {
        Stop::Replaced(successor) => {
            // The successor's programs replace this agent's when its references go.
            kernel.release_links();
            let _ = accepting.send(false);
            // Every worker has stopped accepting before the connections are counted.
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while still_accepting.load(std::sync::atomic::Ordering::Acquire) > 0 && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let refused = approvals.refuse_all("the agent is being replaced; send the statement again");
            if refused > 0 {
                tracing::info!(refused, "held statements refused: the agent is being replaced");
            }
            // The exporter is told to stop first (it stops at its next step; a batch in flight
            // may be sent again by the successor's: off-host export is at least once).
            let exporting = stop_export();
            let deadline_s = config.upgrade.drain_deadline_s;
            let sessions = shared.handling.load(std::sync::atomic::Ordering::Acquire);
            if let Err(err) = successor.send(&handover::Message::Draining { sessions, deadline_s }) {
                tracing::warn!(error = %format!("{err:#}"), "telling the successor that this agent drains");
            }
            if let Some(keeper) = &start.keeper {
                // Its keeper must not start it again, nor keep sockets for it.
                let _ = keeper.replaced();
            }
            if let Some(join) = exporting {
                let _ = join.await;
            }
            tracing::info!(sessions, deadline_s, "replaced: no longer accepting; serving live sessions until they end");
            drain(&shared, Duration::from_secs(deadline_s), &mut signals).await;
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            Some(successor)
        }
        Stop::Signal => {
            tracing::info!("shutting down");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            // "Not serving" first: from here connect4/6 apply each database's fail mode at
            // once, so no client is sent to the proxy's address once nothing listens there.
            let governor_generation = governor_generation_source.generation();
            kernel.publish(state(
                &config,
                own_cgroup,
                namespaces.agent_cookie(),
                false,
                fail_epoch_base + governor_generation,
            ))?;
            let _ = fs::remove_file(ready_file(&config.state_dir));
            // Held statements are refused, never left for a later agent: their clients get the
            // refusal (42501) before the sessions close.
            let refused = approvals.refuse_all("the agent is stopping");
            if refused > 0 {
                tracing::info!(refused, "held statements refused: the agent is stopping");
                approvals.settled(Duration::from_secs(2)).await;
                // The refusals travel through the server (the poison statement) before the
                // client sees them.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // Live sessions are told why they end (57P01) rather than cut.
            let ending = shared.live.terminate_all(&proxy::live::Ending::Stopping);
            if ending > 0 {
                tracing::info!(sessions = ending, "live sessions ended: the agent is stopping");
                settle(&shared, Duration::from_secs(3)).await;
            }
            if let Some(join) = stop_export() {
                let _ = join.await;
            }
            None
        }
    };
    admin.abort();
    let _ = admin.await;
    if replaced.is_none() {
        let _ = fs::remove_file(&config.admin.socket);
    }
    let _ = stop.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    if replaced.is_none() {
        handle_events(&shared, kernel.drain_events(), &mut HashMap::new());
    }
    // Every holder of an audit handle goes before the writer is joined (it ends when the last
    // one does).
    drop(governed);
    drop(shared);
    drop(governor_generation_source);
    drop(approvals);
    drop(admin_state);
    drop(audit);
    ticker.abort();
    let _ = ticker.await;
    audit_writer.join();
    if replaced.is_some() {
        // The successor owns the programs, the admin and hand-over sockets and the ready file.
        tracing::info!("drained; exiting");
        return Ok(());
    }
    if config.on_exit == OnExit::Detach {
        let kernel = Arc::into_inner(kernel).context("kernel handle still shared at shutdown")?;
        kernel.detach()?;
        if let Some(name) = &config.proxy.interface {
            netif::remove(name)?;
        }
        tracing::info!("programs detached");
    }
    Ok(())
}

/// The sockets a successor is offered.
struct Offer<'a> {
    proxy: &'a [(SocketAddr, std::net::TcpListener)],
    metrics: Option<&'a (SocketAddr, std::net::TcpListener)>,
}

/// Why a hand-over did not happen, and whether the successor had begun to attach (this agent
/// then takes back what it may have changed).
struct Abandoned {
    error: anyhow::Error,
    successor_attached: bool,
}

/// The serving agent's side of a hand-over, up to the successor's `Serving`. When the successor
/// attaches, this agent stops writing the kernel's shared state; were the successor to stop
/// beating meanwhile (hung), the hand-over is abandoned before the kernel calls the node not
/// serving.
async fn hand_over(successor: &handover::Successor, offer: Offer<'_>, kernel: &Kernel) -> Result<(), Abandoned> {
    let early = |error: anyhow::Error| Abandoned { error, successor_attached: false };
    let peer = successor.check_peer().map_err(early)?;
    match successor.receive(handover::STEP_TIMEOUT).await.map_err(early)? {
        Some(handover::Message::Hello { pid, version }) => {
            tracing::info!(pid, version, "a successor asks to take over; handing over the listening sockets")
        }
        other => return Err(early(anyhow::anyhow!("the successor sent {other:?} instead of a greeting"))),
    }
    successor.offer(offer.proxy, offer.metrics).map_err(early)?;
    match successor.receive(handover::START_TIMEOUT).await.map_err(early)? {
        Some(handover::Message::Attaching) => {}
        None => return Err(early(anyhow::anyhow!("the successor went away before attaching (see its log)"))),
        other => return Err(early(anyhow::anyhow!("the successor sent {other:?} instead of attaching"))),
    }
    kernel.set_owner(false);
    let late = |error: anyhow::Error| Abandoned { error, successor_attached: true };
    successor.send(&handover::Message::Paused).map_err(late)?;
    let stalled = async {
        // The successor publishes its first heartbeat as it loads its programs.
        tokio::time::sleep(Duration::from_secs(3)).await;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if kernel.heartbeat_age().is_none_or(|age| age > Duration::from_secs(2)) || !peer.alive() {
                return;
            }
        }
    };
    tokio::select! {
        received = successor.receive(handover::START_TIMEOUT) => match received.map_err(late)? {
            Some(handover::Message::Serving) => Ok(()),
            None => Err(late(anyhow::anyhow!("the successor went away before serving (see its log)"))),
            other => Err(late(anyhow::anyhow!("the successor sent {other:?} instead of serving"))),
        },
        _ = stalled => Err(late(anyhow::anyhow!("the successor stopped beating before it served"))),
    }
}

/// The successor's side once it serves: tells the agent it replaced, and notes when that one
/// has drained and exited. Only an explicit refusal (the agent gave up waiting and serves on)
/// makes this agent exit rather than serve beside it; once told, the agent being replaced does
/// not go back (a reply that is late or lost is no refusal).
async fn took_over(predecessor: Predecessor) -> Result<()> {
    let pid = predecessor.peer.pid;
    let (predecessor, told) = tokio::task::spawn_blocking(move || {
        let told = predecessor.serving();
        (predecessor, told)
    })
    .await
    .context("the hand-over's last step")?;
    match told {
        handover::Confirmed::Draining { sessions, deadline_s } => {
            tracing::info!(
                pid,
                sessions,
                deadline_s,
                "took over from the agent being replaced; it drains its sessions"
            );
        }
        handover::Confirmed::Refused(why) => {
            anyhow::bail!("the agent being replaced (pid {pid}) refused the hand-over and serves on: {why}")
        }
        handover::Confirmed::NotTold(why) if predecessor.peer.alive() => {
            anyhow::bail!(
                "the agent being replaced (pid {pid}) could not be told this one serves ({why}); it serves on"
            )
        }
        handover::Confirmed::NotTold(why) | handover::Confirmed::Unanswered(why) => {
            tracing::warn!(
                pid,
                why,
                "took over from the agent being replaced; it did not confirm (it may still be stopping its exporter, or have exited)"
            );
        }
    }
    // A thread of its own: the runtime does not wait for it when this agent stops first.
    let _ = std::thread::Builder::new().name("warden-replaced".into()).spawn(move || {
        predecessor.wait_exit();
        tracing::info!(pid, "the replaced agent has exited");
    });
    Ok(())
}

async fn accept_successor(listener: Option<&handover::Listener>) -> std::io::Result<handover::Successor> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves the live sessions of a replaced agent until none is left, or until the deadline,
/// when those still open are ended with 57P01. A stop signal while draining is noted; a second
/// one ends the drain at once.
async fn drain(shared: &Shared, deadline: Duration, signals: &mut Signals) {
    let mut until = tokio::time::Instant::now() + deadline;
    let mut signalled = false;
    loop {
        if shared.handling.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        if tokio::time::Instant::now() >= until {
            let ending = proxy::live::Ending::DrainDeadline { deadline_s: deadline.as_secs() };
            let ended = shared.live.terminate_all(&ending);
            tracing::info!(sessions = ended, "drain deadline: ending the sessions still open (57P01)");
            settle(shared, Duration::from_secs(5)).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(100))) => {}
            received = signals.next() => {
                if matches!(received, Received::Upgrade) {
                    tracing::info!("SIGUSR2 while draining: this agent was already replaced");
                } else if signalled {
                    tracing::info!("a second stop signal while draining: ending the sessions now");
                    until = tokio::time::Instant::now();
                } else {
                    signalled = true;
                    tracing::info!(
                        sessions = shared.handling.load(std::sync::atomic::Ordering::Acquire),
                        "stop signal while draining: sessions go on until they end or the deadline (a second signal ends them now)"
                    );
                }
            }
        }
    }
}

/// Waits until no connection is left, at most `limit`.
async fn settle(shared: &Shared, limit: Duration) {
    let until = tokio::time::Instant::now() + limit;
    while shared.handling.load(std::sync::atomic::Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.handling.load(std::sync::atomic::Ordering::Acquire);
    if left > 0 {
        tracing::warn!(connections = left, "connections still open are closed with the agent");
    }
}

/// Starts a new agent from the executable this one was started from (SIGUSR2, `warden
/// upgrade`): it takes the listening sockets over, and this agent drains.
fn spawn_successor(exe: Option<&Path>, config: &Path, running: &Arc<std::sync::atomic::AtomicBool>) {
    let Some(exe) = exe else {
        tracing::error!("the agent's executable is not known: start the new agent by hand");
        return;
    };
    match std::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tracing::info!(pid = child.id(), exe = %exe.display(), "started a successor to take over");
            running.store(true, std::sync::atomic::Ordering::Release);
            let running = running.clone();
            // Reaped here while this agent lives (one that fails to start says why in its log).
            let _ = std::thread::Builder::new().name("warden-successor".into()).spawn(move || {
                if let Ok(status) = child.wait()
                    && !status.success()
                {
                    tracing::warn!(%status, "the successor exited");
                }
                running.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        Err(err) => tracing::error!(exe = %exe.display(), error = %err, "starting a successor failed"),
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is the service's main
/// process and ready: after an upgrade the successor, not the replaced agent, is the service.
/// Under a keeper, the keeper stays the main process.
fn notify_systemd(kept: bool) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        // Under a keeper, the keeper (this agent's parent) is the service's main process.
        let keeper = kept.then(std::os::unix::process::parent_id).filter(|&p| Some(p) == crate::keeper::keeper_pid());
        let main = keeper.unwrap_or_else(std::process::id);
        let message = format!("MAINPID={main}\nREADY=1\n");
        socket.send_to_addr(message.as_bytes(), &addr)
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, "telling systemd the agent is ready failed");
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    listener::bind(addr).with_context(|| format!("binding the proxy listener on {addr}"))
}

/// SIGTERM and SIGINT (stop), SIGUSR2 (start a successor), caught from the moment they are
/// installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop,
            _ = self.int.recv() => Received::Stop,
            _ = self.usr2.recv() => Received::Upgrade,
        }
    }
}

enum Received {
    Stop,
    Upgrade,
}

async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut beats = 0u64;
    loop {
        tick.tick().await;
        beats += 1;
        if beats.is_multiple_of(120) {
            // Idle client namespaces are released about once a minute.
            shared.namespaces.sweep();
        }
        let cookie = shared.namespaces.agent_cookie();
        // The fail epoch moves with the policy set: identities found under an earlier one fail
        // closed until found again (within half a second of a reload).
        let epoch = shared.fail_epoch_base + shared.governor.generation();
        if let Err(err) = shared.kernel.publish(state(&shared.config, shared.own_cgroup, cookie, true, epoch)) {
            tracing::error!(error = %err, "heartbeat failed; governed flows will fail over after the grace period");
        }
    }
}

/// At start, then every few seconds: the sessions of agents that ended without closing them
/// (killed, crashed: the one this agent replaced, or one that drained beside it) are recorded
/// as ended by that.
async fn reap_crashed(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if !shared.kernel.owns() {
            continue;
        }
        let (state_dir, audit) = (shared.config.state_dir.clone(), shared.audit.clone());
        let _ = tokio::task::spawn_blocking(move || proxy::ledger::reap(&state_dir, &audit)).await;
    }
}

/// Label files of exited `warden exec` workloads are kept this long for late events.
const LABEL_GRACE: Duration = Duration::from_secs(600);

/// Once a minute: label files of exited workloads, and identities of cgroups gone for longer
/// than their grace period (on the blocking pool: both read the filesystem).
async fn sweep_workload_labels(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let (root, state) = (shared.config.cgroup_root.clone(), shared.config.state_dir.clone());
        let _ = tokio::task::spawn_blocking(move || crate::exec::sweep_labels(&root, &state, LABEL_GRACE)).await;
        let resolver = shared.resolver.clone();
        let _ = tokio::task::spawn_blocking(move || resolver.sweep()).await;
    }
}

/// Observed sockets between their open and close events.
type OpenObserved = HashMap<u64, (SessionId, u64, String)>;

/// Drains the kernel's event ring on a timer (events are written without wakeups).
async fn drain_events(shared: Arc<Shared>) {
    let mut open = OpenObserved::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let events = shared.kernel.drain_events();
        if !events.is_empty() {
            // Identity resolution may read /proc and walk the cgroup tree: never on the thread
            // that publishes the heartbeat.
            let shared = shared.clone();
            let mut taken = std::mem::take(&mut open);
            open = tokio::task::spawn_blocking(move || {
                handle_events(&shared, events, &mut taken);
                taken
            })
            .await
            .unwrap_or_default();
        }
    }
}

fn handle_events(shared: &Shared, events: Vec<FlowEvent>, open: &mut OpenObserved) {
    for event in events {
        let database = shared
            .config
            .databases
            .get(event.origin.database_id as usize)
            .map_or_else(|| format!("#{}", event.origin.database_id), |d| d.name.clone());
        let orig_dst = socket_addr_of(&event.origin.orig_dst);
        let identity = || shared.resolver.resolve_blocking(&KernelFacts::from_origin(&event.origin));
        let record = match event.kind {
            EVENT_UNGOVERNED => Event::Ungoverned { database, orig_dst, identity: Box::new(identity()) },
            EVENT_REFUSED => Event::RefusedNotServing { database, orig_dst, identity: Box::new(identity()) },
            EVENT_OBSERVED_OPEN => {
                let session = shared.sessions.next();
                open.insert(event.sock_id, (session, event.at_ns, database.clone()));
                Event::Observed {
                    session,
                    database,
                    orig_dst,
                    client: socket_addr_of(&event.client),
                    identity: Box::new(identity()),
                }
            }
            EVENT_OBSERVED_CLOSE => match open.remove(&event.sock_id) {
                Some((session, opened_ns, database)) => Event::ObservedClose {
                    session,
                    database,
                    duration_ms: event.at_ns.saturating_sub(opened_ns) / 1_000_000,
                    established: true,
                },
                None => Event::ObservedClose {
                    session: shared.sessions.next(),
                    database,
                    duration_ms: event.at_ns.saturating_sub(event.origin.connect_ns) / 1_000_000,
                    established: false,
                },
            },
            other => {
                tracing::warn!(kind = other, "unknown kernel event kind");
                continue;
            }
        };
        shared.audit.record(record);
    }
}
