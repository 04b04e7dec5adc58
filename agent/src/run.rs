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
    runtime.block_on(serve(config, own_cgroup, hosts, cluster))
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

async fn serve(config: Arc<Config>, own_cgroup: CgroupId, hosts: HostFollower, cluster: Option<Cluster>) -> Result<()> {
    // Handlers first: a SIGTERM that arrives once we are attached must reach the clean
    // shutdown (which publishes "not serving" at once), not the default action.
    let signals = Signals::install()?;
    let workers = config.proxy.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut addrs = vec![config.proxy.listen_v4];
    addrs.extend(config.proxy.listen_v6);
    // Every worker gets its own listening socket per address (SO_REUSEPORT): the kernel spreads
    // connections, and a session's two directions never wake another thread.
    let listeners =
        (0..workers).map(|_| addrs.iter().map(|a| bind(*a)).collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
    let (audit, audit_writer) = AuditLog::open(&config.audit)
        .with_context(|| format!("opening the audit ring {}", config.audit.path.display()))?;
    let ticker = audit.spawn_ticker();
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
    // The admin socket before serving: an agent whose API cannot be reached could hold
    // statements nobody can approve.
    let (admin_listener, admin_group) = crate::admin::bind(&config.admin)?;
    // The metrics and probe port before serving, too: a port taken stops the start.
    let metrics_listener = match &config.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("binding the metrics listener on {}", m.listen))?,
        ),
        None => None,
    };
    let fail_epoch_base = fail_epoch_base();
    // The namespace the proxy listens in: the kernel hands over flow records only for
    // connections accepted there.
    let namespaces = Arc::new(Namespaces::new().context("opening the agent's network namespace")?);
    // Service-named databases where the last agent left them, until the API answers.
    let saved_services = crate::net::governed::saved_services(&config);
    let kernel = Arc::new(
        Kernel::start(
            &config,
            state(&config, own_cgroup, namespaces.agent_cookie(), true, fail_epoch_base + governor.generation()),
            &saved_services.0,
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
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (i, listeners) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let mut stopped = stopped.clone();
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
                let _ = stopped.wait_for(|s| *s).await;
            });
        })?;
        threads.push(thread);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let governor_generation_source = governor.clone();
    tasks.spawn(crate::govern::reload::watch(governor, config.policies.clone()));
    tasks.spawn(heartbeat(shared.clone()));
    tasks.spawn(drain_events(shared.clone()));
    tasks.spawn(sweep_workload_labels(shared.clone()));
    let governed = Arc::new(Governed::new(config.clone(), kernel.clone(), saved_services));
    tasks.spawn(hosts.follow(governed.clone(), audit.clone()));
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
        tasks.spawn(crate::admin::metrics::serve(listener, metrics.clone(), health));
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
                tasks.spawn(crate::kubernetes::services::follow(
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
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        Arc::new(crate::admin::AdminState {
            approvals: approvals.clone(),
            live: shared.live.clone(),
            audit: audit.clone(),
            resolver: shared.resolver.clone(),
            governor: shared.governor.clone(),
            cgroup_root: config.cgroup_root.clone(),
            started: std::time::Instant::now(),
            group: admin_group,
        }),
    ));
    fs::write(ready_file(&config.state_dir), std::process::id().to_string())?;
    tracing::info!(
        v4 = %config.proxy.listen_v4,
        v6 = ?config.proxy.listen_v6,
        workers,
        databases = config.databases.len(),
        governed_endpoints = kernel.governed_count(),
        "serving"
    );

    signals.wait().await;
    tracing::info!("shutting down");
    // "Not serving" first: from here connect4/6 apply each database's fail mode at once, so no
    // client is sent to the proxy's address once nothing listens there.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    metrics.stop_sampling();
    // The followers are gone: the table's owner holds the kernel handle the detach needs.
    drop(governed);
    let governor_generation = governor_generation_source.generation();
    kernel.publish(state(
        &config,
        own_cgroup,
        namespaces.agent_cookie(),
        false,
        fail_epoch_base + governor_generation,
    ))?;
    let _ = fs::remove_file(ready_file(&config.state_dir));
    // Held statements are refused, never left for a later agent: their clients get the refusal
    // (42501) before the sessions close.
    let refused = approvals.refuse_all("the agent is stopping");
    if refused > 0 {
        tracing::info!(refused, "held statements refused: the agent is stopping");
        approvals.settled(Duration::from_secs(2)).await;
        // The refusals travel through the server (the poison statement) before the client sees
        // them.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    admin.abort();
    let _ = admin.await;
    let _ = fs::remove_file(&config.admin.socket);
    let _ = stop.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    handle_events(&shared, kernel.drain_events(), &mut HashMap::new());
    // Every holder of an audit handle goes before the writer is joined (it ends when the last
    // one does).
    drop(shared);
    drop(governor_generation_source);
    drop(approvals);
    drop(audit);
    ticker.abort();
    let _ = ticker.await;
    audit_writer.join();
    export_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(exporter) = exporter {
        let _ = exporter.join();
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

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    listener::bind(addr).with_context(|| format!("binding the proxy listener on {addr}"))
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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
            EVENT_UNGOVERNED => Event::Ungoverned { database, orig_dst, identity: identity() },
            EVENT_REFUSED => Event::RefusedNotServing { database, orig_dst, identity: identity() },
            EVENT_OBSERVED_OPEN => {
                let session = shared.sessions.next();
                open.insert(event.sock_id, (session, event.at_ns, database.clone()));
                Event::Observed {
                    session,
                    database,
                    orig_dst,
                    client: socket_addr_of(&event.client),
                    identity: identity(),
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
