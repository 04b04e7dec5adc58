//! The proxy listener: accepts only flows the redirect created, attributes them, admits them
//! within the connection limits, connects to the original destination from the client's own
//! network namespace (exempt from the redirect) and relays.
//!
//! `protocol: postgres` databases get a full PostgreSQL protocol session (`postgres`); other
//! TCP protocols are relayed as bytes with connection-level records.

pub mod ledger;
pub mod limits;
pub mod live;
pub mod mysql;
pub mod postgres;
pub mod tls;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};

use self::{limits::Limits, postgres::SessionReport};
use crate::{
    audit::{AuditLog, Event, SessionId},
    cgroup::CgroupId,
    config::{Config, Database, Protocol},
    ebpf::Kernel,
    flow::{ClientAddr, KernelFacts, OrigDst, socket_addr_of},
    identity::{Identity, Resolver},
    net::{
        netns::{ClientNetns, Namespaces, NetnsError},
        upstream::{self, UpstreamError},
    },
};

/// What every session shares: an immutable config snapshot and the agent's services.
pub struct Shared {
    pub config: Arc<Config>,
    pub kernel: Arc<Kernel>,
    pub resolver: Arc<Resolver>,
    pub audit: AuditLog,
    /// The agent's own cgroup: a flow from it would be the agent redirecting itself.
    pub own_cgroup: CgroupId,
    /// SO_MARK on upstream sockets (checked by connect4/6 together with `own_cgroup`).
    pub upstream_mark: u32,
    pub sessions: SessionIds,
    /// Live PostgreSQL sessions by backend key, for CancelRequest routing.
    pub cancels: Arc<postgres::cancel::CancelRegistry>,
    /// Statement auditing shared by PostgreSQL sessions (each gets its own hooks).
    pub statements: Arc<crate::audit::statements::StatementAuditing>,
    /// The policy set in force and the statement descriptions every session's judgement shares.
    pub governor: Arc<crate::govern::Governor>,
    /// Client network namespaces (upstream connections are dialled from them).
    pub namespaces: Arc<Namespaces>,
    /// Connection limits, global and per identity.
    pub limits: Arc<Limits>,
    /// How many refusals of unredirected connections are recorded per source and second.
    pub refusals: limits::RefusalRecords,
    /// This agent's fail epochs start here (`AgentState::fail_epoch`).
    pub fail_epoch_base: u64,
    /// Live PostgreSQL sessions (the admin API lists and ends them).
    pub live: Arc<live::LiveSessions>,
    /// How long a flow from a pod the watch has not shown yet waits for it.
    pub pod_wait: Duration,
    /// Flows waiting for their pod now.
    pub pod_waits: std::sync::atomic::AtomicUsize,
    /// Flows, statements, set-up times (`/metrics`).
    pub metrics: Arc<crate::admin::metrics::Metrics>,
    /// Connections accepted and not yet ended, whatever their protocol or stage (a replaced
    /// agent drains until none is left).
    pub handling: AtomicUsize,
    /// Live sessions kept where they outlive a crash of this agent (`ledger`).
    pub ledger: Option<Arc<ledger::Ledger>>,
}

/// One accepted connection, counted in `Shared::handling` when accepted, until dropped.
struct Handling<'a>(&'a AtomicUsize);

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Allocates session ids unique across agent restarts (start time in the high bits).
pub struct SessionIds {
    base: u64,
    next: AtomicU64,
}

impl SessionIds {
    pub fn new() -> Self {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // Two agents started within the same second (a crash loop) must not reuse ids: the
        // counter starts at a random point of its range.
        let mut random = [0u8; 2];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random));
        let first = u64::from(u16::from_ne_bytes(random)) << 16;
        Self { base: (start & 0xffff_ffff) << 32, next: AtomicU64::new(first | 1) }
    }

    pub fn next(&self) -> SessionId {
        SessionId(self.base | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff))
    }
}

impl Default for SessionIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                // Counted before the task runs: a draining agent must not miss one accepted
                // just before it stopped accepting.
                shared.handling.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let counted = shared.clone();
                    let _handling = Handling(&counted.handling);
                    handle(shared, stream, ClientAddr(peer)).await
                });
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, client: TcpStream, peer: ClientAddr) {
    let accepted = Instant::now();
    let refused = |reason: String| {
        let now_s = crate::audit::now_ms() / 1000;
        if let limits::RefusalRecord::Record { suppressed } =
            shared.refusals.admit(limits::RefusalSource::Address(peer.0.ip()), now_s)
        {
            let reason = match suppressed {
                0 => reason,
                n => format!("{reason} (and {n} earlier refusals from this address not recorded one by one)"),
            };
            shared.audit.record(Event::ProxyRefused { client: peer.0, reason });
        }
    };
    // The record is bound to this accepted socket by the kernel: looked up by the socket's
    // identity, never by an address another socket could take.
    let origin = match socket2::SockRef::from(&client).cookie() {
        Ok(cookie) => shared.kernel.flows().take(cookie),
        Err(err) => {
            refused(format!("reading the accepted socket's cookie: {err}"));
            return;
        }
    };
    let origin = match origin {
        Ok(origin) => origin,
        Err(why) => {
            // Only flows the redirect created have a record: anything else dialled the proxy
            // directly (or from another host) and is refused without a byte.
            refused(why.to_string());
            return;
        }
    };
    let facts = KernelFacts::from_origin(&origin);
    if facts.cgroup_id == shared.own_cgroup {
        refused("flow from the agent's own cgroup".into());
        return;
    }
    let database_index = origin.database_id as usize;
    let origin_database_id = origin.database_id;
    let Some(db) = shared.config.databases.get(database_index) else {
        refused("flow for an unknown database".into());
        return;
    };
    let orig_dst = OrigDst(socket_addr_of(&origin.orig_dst));
    // Resolved off the accept path (a cache miss reads /proc and the cgroup tree on the
    // blocking pool).
    let mut identity = shared.resolver.resolve(facts.clone()).await;
    if let Some(reason) = pod_identity(&shared, &mut identity).await {
        tracing::warn!(database = %db.name, pod_uid = ?identity.pod_uid, cgroup = ?identity.cgroup, "{reason}");
        record_refusal(&shared, db, orig_dst, peer, identity, &reason);
        refuse_fatal(db.protocol, client, crate::pg::error::sqlstate::CANNOT_CONNECT_NOW, &format!("warden: {reason}"))
            .await;
        return;
    }
    let _slot = match shared.limits.admit(&identity.tenant_key()) {
        Ok(slot) => slot,
        Err(limit) => {
            record_refusal(&shared, db, orig_dst, peer, identity, &limit.to_string());
            let message = format!("warden: too many connections: {limit}");
            refuse_fatal(db.protocol, client, crate::pg::error::sqlstate::TOO_MANY_CONNECTIONS, &message).await;
            return;
        }
    };
    shared.metrics.flow(&db.name, &identity);
    if db.fail == crate::config::FailMode::Policy {
        // Whether this identity fails open here while no agent serves: only if none of its
        // policies guards anything in this database (whatever role it would act as), and its
        // labels were read (a cgroup whose path could not be found may be anyone). Written with
        // the epoch of the policy set that said so: the kernel ignores it once the set moves.
        let (guarded, generation) = shared.governor.guards(&identity.labels, &db.name);
        let open = !guarded && identity.cgroup.is_some();
        let epoch = open.then_some(shared.fail_epoch_base + generation);
        if let Err(err) = shared.kernel.set_fail_open(identity.cgroup_id.0, origin.database_id, epoch) {
            tracing::error!(database = %db.name, error = %err, "the identity's fail mode could not be recorded");
        }
    }
    if db.protocol == Protocol::Tcp {
        // No statements to judge: the identity's policies allow or refuse the connection.
        let snapshot = shared.governor.snapshot();
        let subject = crate::policy::Subject { labels: &identity.labels, database: &db.name, user: None };
        let decision = snapshot.set.select(&subject).decide_connection(&snapshot.set);
        if decision.action != crate::policy::Action::Allow {
            let by = match &decision.policy {
                Some(p) => format!("policy \"{p}\""),
                None => "policy".into(),
            };
            shared.audit.record(Event::ConnectionRefused {
                database: db.name.clone(),
                orig_dst: orig_dst.0,
                client: peer.0,
                reason: format!("refused by {by}: {}", decision.reason),
                identity: Box::new(identity),
            });
            // As a refused direct connection: closed without a byte.
            drop(client);
            return;
        }
    }
    // The upstream is dialled from the client's own network namespace; where that cannot be
    // found the session is refused when it would dial.
    let netns = shared.namespaces.find(origin.netns_cookie, facts.pid, facts.tid);
    let session = shared.sessions.next();
    let ledger = shared.ledger.as_ref().map(|l| l.enter(session, &db.name));
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let open = |r: &SessionReport| {
        shared.metrics.connected_in(accepted.elapsed());
        shared.audit.record(Event::ConnectionOpen {
            session,
            database: db.name.clone(),
            orig_dst: orig_dst.0,
            client: peer.0,
            upstream_local: r.upstream_local,
            db_user: r.db_user.clone(),
            db_name: r.db_name.clone(),
            db_role: r.db_role.clone(),
            application_name: r.application_name.clone(),
            client_tls: r.client_tls,
            upstream_tls: r.upstream_tls,
            cancel_request: r.cancel_request,
            identity: Box::new(identity.clone()),
        })
    };
    let dial =
        Dial { namespaces: shared.namespaces.clone(), netns: netns.map_err(Arc::new), mark: shared.upstream_mark };
    let report = match db.protocol {
        Protocol::Postgres | Protocol::Mysql => {
            let shared_identity = Arc::new(identity.clone());
            let registered = shared.live.register(session, &db.name, shared_identity.clone());
            let ctx = postgres::SessionContext {
                database: Arc::new(db.clone()),
                database_index,
                orig_dst,
                dial,
                client_tls: shared.config.proxy.tls.as_ref().and_then(|t| {
                    t.server_config
                        .clone()
                        .map(|config| postgres::ClientTls { config, leaf_certificate: t.leaf_certificate.clone() })
                }),
                max_message: shared.config.proxy.max_message_bytes,
                hooks: {
                    // Judged (policy), then recorded (audit): the audit records the judgement.
                    let record: Arc<dyn crate::session::hooks::SessionHooks> = if shared.config.audit.statements {
                        Arc::new(crate::audit::statements::SessionAudit::new(
                            shared.statements.clone(),
                            session,
                            db.name.clone(),
                        ))
                    } else {
                        Arc::new(crate::session::hooks::AllowAll)
                    };
                    let origin = crate::govern::Origin { session, identity: shared_identity.clone() };
                    let database = db.name.clone();
                    let (relabelled, fail_policy) = (shared.clone(), db.fail == crate::config::FailMode::Policy);
                    let (cgroup_id, database_id) = (identity.cgroup_id.0, origin_database_id);
                    Arc::new(
                        shared.governor.session(identity.labels.clone(), &db.name, Some(origin), record).with_relabel(
                            shared.resolver.relabel(&identity),
                            move |labels| {
                                tracing::info!(session = session.0, database = %database, "the pod was relabelled: later statements are judged by its new labels");
                                if fail_policy {
                                    // The pod's fail-open listing, as at connect, for its new labels.
                                    let (guarded, generation) = relabelled.governor.guards(labels, &database);
                                    let epoch = (!guarded).then_some(relabelled.fail_epoch_base + generation);
                                    if let Err(err) = relabelled.kernel.set_fail_open(cgroup_id, database_id, epoch) {
                                        tracing::error!(database = %database, error = %err, "the identity's fail mode could not be recorded");
                                    }
                                }
                                relabelled.audit.record(Event::IdentityRelabelled {
                                    session,
                                    database: database.clone(),
                                    labels: labels.clone(),
                                });
                            },
                        ),
                    )
                },
                cancels: shared.cancels.clone(),
                live: Some(registered.session.clone()),
            };
            let report = match db.protocol {
                Protocol::Mysql => mysql::run(&ctx, client, open).await,
                _ => postgres::run(&ctx, client, open).await,
            };
            drop(registered);
            if let Some(error) = &report.error {
                tracing::debug!(database = %db.name, %orig_dst, %error, "session ended with an error");
            }
            report
        }
        Protocol::Tcp => relay_bytes(db, orig_dst, &dial, client, open).await,
    };
    shared.audit.record(Event::ConnectionClose {
        session,
        database: db.name.clone(),
        bytes_from_client: report.bytes_from_client,
        bytes_from_server: report.bytes_from_server,
        statements: report.statements,
        rows: report.rows,
        duration_ms: started.elapsed().as_millis() as u64,
        error: report.error,
    });
    if let Some(entry) = ledger {
        entry.finish();
    }
}

/// Records an attributed connection's refusal. Refused attempts are as cheap to repeat as direct
/// dials: recorded a few a second per identity, the rest counted in the next record.
fn record_refusal(
    shared: &Shared,
    db: &Database,
    orig_dst: OrigDst,
    peer: ClientAddr,
    identity: Identity,
    reason: &str,
) {
    let now_s = crate::audit::now_ms() / 1000;
    let source = limits::RefusalSource::Tenant(identity.tenant_key());
    if let limits::RefusalRecord::Record { suppressed } = shared.refusals.admit(source, now_s) {
        let reason = match suppressed {
            0 => reason.to_string(),
            n => format!("{reason} (and {n} earlier refusals of this identity not recorded one by one)"),
        };
        shared.audit.record(Event::ConnectionRefused {
            database: db.name.clone(),
            orig_dst: orig_dst.0,
            client: peer.0,
            reason,
            identity: Box::new(identity),
        });
    }
}

/// Flows waiting for their pod at most (each holds a task and its client's socket); beyond, a
/// flow of an unknown pod is refused at once. Sized for a node's connection pools reconnecting
/// together after an agent restart, before the first list of pods arrives.
const MAX_POD_WAITS: usize = 4096;

/// One flow counted among those waiting for their pod, until dropped.
struct PodWait<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> PodWait<'a> {
    fn enter(waits: &'a std::sync::atomic::AtomicUsize) -> Option<Self> {
        let guard = PodWait(waits);
        (waits.fetch_add(1, Ordering::AcqRel) < MAX_POD_WAITS).then_some(guard)
    }
}

impl Drop for PodWait<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// On Kubernetes, a pod's flow is judged with its pod's identity or not at all: a flow that
/// arrives before the watch shows its pod waits for it; one whose cgroup cannot be told apart
/// from a pod's (not found, or under kubelet's tree without naming a pod) is refused. Returns
/// why the flow is refused, if it is.
async fn pod_identity(shared: &Shared, identity: &mut Identity) -> Option<String> {
    let pods = shared.resolver.pods()?;
    let Some(uid) = identity.pod_uid.clone() else {
        return match identity.cgroup.as_deref() {
            None => Some("the connecting process's cgroup could not be found, so it may be any pod's; refused".into()),
            Some(path) if path.contains("kubepods") => {
                Some(format!("cgroup {path} is kubelet's but names no pod Warden recognises; refused"))
            }
            Some(_) => None,
        };
    };
    if identity.pod.is_some() {
        return None;
    }
    let waiting = PodWait::enter(&shared.pod_waits);
    if waiting.is_some() && pods.wait(&uid, shared.pod_wait).await.is_some() {
        shared.resolver.attach_pod(identity);
    }
    drop(waiting);
    identity.pod.is_none().then(|| {
        format!(
            "pod {uid} is not known to the Kubernetes API (waited up to {} ms); refused rather than judged without its identity",
            shared.pod_wait.as_millis()
        )
    })
}

/// How a session reaches its upstream: from the client's network namespace, with the agent's
/// socket mark.
#[derive(Clone)]
pub struct Dial {
    pub namespaces: Arc<Namespaces>,
    /// The client's namespace, or why it could not be found (the session is then refused).
    pub netns: Result<ClientNetns, Arc<NetnsError>>,
    pub mark: u32,
}

impl Dial {
    /// Connects to `dst` from the client's namespace.
    pub async fn connect(&self, dst: OrigDst, timeout_ms: u64) -> Result<TcpStream, UpstreamError> {
        let netns = match &self.netns {
            Ok(ns) => ns,
            Err(err) => {
                return Err(UpstreamError::Unreachable(io::Error::new(io::ErrorKind::NotFound, err.to_string())));
            }
        };
        upstream::connect(&self.namespaces, netns, dst, self.mark, timeout_ms).await
    }
}

/// Refuses an attributed connection before its session begins (a connection limit: 53300, what
/// the server says when it has too many clients; a pod not known: 57P03): PostgreSQL clients get
/// the FATAL after their start-up, others are closed. Whatever the client already sent is read
/// and discarded briefly, so the close is not a reset that hides the error.
async fn refuse_fatal(protocol: Protocol, mut client: TcpStream, sqlstate: &str, message: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if protocol == Protocol::Mysql {
        // A server that cannot take the connection answers its greeting with an ERR.
        let _ = client.write_all(&mysql::refusal_greeting(sqlstate, message)).await;
    }
    if protocol == Protocol::Postgres {
        // As a server that cannot take the connection: encryption declined, the start-up
        // packet read, then the error (a client that asked for TLS would not read it sooner).
        let _ = tokio::time::timeout(Duration::from_secs(2), skip_startup(&mut client)).await;
        let _ = client
            .write_all(&crate::pg::error::error_message(crate::pg::error::Severity::Fatal, sqlstate, message))
            .await;
    }
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Reads the client's start-up: SSLRequest and GSSENCRequest are declined ('N'), the start-up
/// packet itself is read and dropped (at most 10,000 bytes, PostgreSQL's own limit).
async fn skip_startup(client: &mut TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..3 {
        let mut head = [0u8; 8];
        client.read_exact(&mut head).await?;
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len == 8 && (code == crate::pg::frame::SSL_REQUEST || code == crate::pg::frame::GSSENC_REQUEST) {
            client.write_all(b"N").await?;
            continue;
        }
        let rest = usize::try_from(len).ok().filter(|l| (8..=10_000).contains(l)).map_or(0, |l| l - 8);
        let mut body = vec![0u8; rest];
        client.read_exact(&mut body).await?;
        return Ok(());
    }
    Ok(())
}

/// Connection-level governance for protocols without a module: relay bytes both ways. A
/// client whose upstream cannot be reached is reset, as a refused direct connection would be.
async fn relay_bytes(
    db: &Database,
    orig_dst: OrigDst,
    dial: &Dial,
    mut client: TcpStream,
    open: impl FnOnce(&SessionReport),
) -> SessionReport {
    let mut report = SessionReport::default();
    match dial.connect(orig_dst, db.connect_timeout_ms).await {
        Err(err) => {
            tracing::debug!(database = %db.name, %orig_dst, error = %err, "upstream connect failed");
            open(&report);
            report.error = Some(format!("upstream {orig_dst} unreachable: {err}"));
            // SO_LINGER 0: the close sends a reset, the nearest a proxy can come to "refused".
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
        Ok(mut upstream) => {
            report.upstream_local = upstream.local_addr().ok();
            open(&report);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((c, s)) => (report.bytes_from_client, report.bytes_from_server) = (c, s),
                Err(err) => report.error = Some(format!("relay: {err}")),
            }
        }
    }
    report
}
