//! The proxy listener: accepts only flows the redirect created, attributes them, connects to
//! the original destination (exempt from the redirect) and relays.
//!
//! `protocol: postgres` databases get a full PostgreSQL protocol session (`postgres`); other
//! TCP protocols are relayed as bytes with connection-level records.

pub mod postgres;
pub mod tls;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use self::postgres::SessionReport;
use crate::{
    audit::{AuditLog, Event, SessionId},
    cgroup::CgroupId,
    config::{Config, Database, Protocol},
    ebpf::Kernel,
    flow::{ClientAddr, KernelFacts, OrigDst, socket_addr_of},
    identity::Resolver,
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
}

/// Allocates session ids unique across agent restarts (start time in the high bits).
pub struct SessionIds {
    base: u64,
    next: AtomicU64,
}

impl SessionIds {
    pub fn new() -> Self {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { base: (start & 0xffff_ffff) << 32, next: AtomicU64::new(1) }
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

/// The upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Unreachable(io::Error),
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { handle(shared, stream, ClientAddr(peer)).await });
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
    let Some(origin) = shared.kernel.flows().take(peer.0) else {
        // Only flows the redirect created have a record: anything else dialled the proxy
        // directly (or from another host) and is refused without a byte.
        shared.audit.record(Event::ProxyRefused { client: peer.0, reason: "no redirect record for this peer".into() });
        return;
    };
    let facts = KernelFacts::from_origin(&origin);
    if facts.cgroup_id == shared.own_cgroup {
        shared.audit.record(Event::ProxyRefused { client: peer.0, reason: "flow from the agent's own cgroup".into() });
        return;
    }
    let database_index = origin.database_id as usize;
    let Some(db) = shared.config.databases.get(database_index) else {
        shared.audit.record(Event::ProxyRefused { client: peer.0, reason: "flow for an unknown database".into() });
        return;
    };
    let orig_dst = OrigDst(socket_addr_of(&origin.orig_dst));
    let identity = shared.resolver.resolve(&facts);
    let session = shared.sessions.next();
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let open = |r: &SessionReport| {
        shared.audit.record(Event::ConnectionOpen {
            session,
            database: db.name.clone(),
            orig_dst: orig_dst.0,
            client: peer.0,
            upstream_local: r.upstream_local,
            db_user: r.db_user.clone(),
            db_name: r.db_name.clone(),
            application_name: r.application_name.clone(),
            client_tls: r.client_tls,
            upstream_tls: r.upstream_tls,
            cancel_request: r.cancel_request,
            identity: identity.clone(),
        })
    };
    let report = match db.protocol {
        Protocol::Postgres => {
            let ctx = postgres::SessionContext {
                database: Arc::new(db.clone()),
                database_index,
                orig_dst,
                upstream_mark: shared.upstream_mark,
                client_tls: shared.config.proxy.tls.as_ref().and_then(|t| {
                    t.server_config
                        .clone()
                        .map(|config| postgres::ClientTls { config, leaf_certificate: t.leaf_certificate.clone() })
                }),
                max_message: shared.config.proxy.max_message_bytes,
                hooks: if shared.config.audit.statements {
                    Arc::new(crate::audit::statements::SessionAudit::new(
                        shared.statements.clone(),
                        session,
                        db.name.clone(),
                    ))
                } else {
                    Arc::new(postgres::hooks::AllowAll)
                },
                cancels: shared.cancels.clone(),
            };
            let report = postgres::run(&ctx, client, open).await;
            if let Some(error) = &report.error {
                tracing::debug!(database = %db.name, %orig_dst, %error, "session ended with an error");
            }
            report
        }
        Protocol::Tcp => relay_bytes(&shared, db, orig_dst, client, open).await,
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
}

/// Connection-level governance for protocols without a module: relay bytes both ways.
async fn relay_bytes(
    shared: &Shared,
    db: &Database,
    orig_dst: OrigDst,
    mut client: TcpStream,
    open: impl FnOnce(&SessionReport),
) -> SessionReport {
    let mut report = SessionReport::default();
    match connect_upstream(orig_dst, shared.upstream_mark, db.connect_timeout_ms).await {
        Err(err) => {
            tracing::warn!(database = %db.name, %orig_dst, error = %err, "upstream connect failed");
            open(&report);
            report.error = Some(format!("upstream {orig_dst} unreachable: {err}"));
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

/// Connects to the original destination with the agent's mark, so connect4/6 let it through.
pub async fn connect_upstream(dst: OrigDst, mark: u32, timeout_ms: u64) -> Result<TcpStream, UpstreamError> {
    let domain = socket2::Domain::for_address(dst.0);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(UpstreamError::Unreachable)?;
    socket.set_mark(mark).map_err(UpstreamError::Unreachable)?;
    socket.set_nonblocking(true).map_err(UpstreamError::Unreachable)?;
    socket.set_tcp_nodelay(true).map_err(UpstreamError::Unreachable)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(Duration::from_millis(timeout_ms), socket.connect(dst.0)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(UpstreamError::Unreachable(source)),
        Err(_) => Err(UpstreamError::Timeout(timeout_ms)),
    }
}

/// Binds a non-blocking proxy listener: SO_REUSEADDR so a restarted agent can bind at once,
/// SO_REUSEPORT so each proxy worker has its own socket on the same address.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
