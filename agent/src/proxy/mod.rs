//! The proxy listener: accepts only flows the redirect created, attributes them, connects to
//! the original destination (exempt from the redirect) and relays.
//!
//! For now every protocol is relayed as bytes; the PostgreSQL protocol session replaces the
//! relay for `protocol: postgres` databases.

mod pg_startup;

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

use crate::{
    audit::{AuditLog, Event, SessionId},
    cgroup::CgroupId,
    config::{Config, Database, Protocol},
    ebpf::Kernel,
    flow::{ClientAddr, KernelFacts, OrigDst, socket_addr_of},
    identity::Resolver,
};

pub use pg_startup::error_response;

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
}

/// Allocates session ids unique across agent restarts (start time in the high bits).
pub struct SessionIds {
    base: u64,
    next: AtomicU64,
}

impl SessionIds {
    pub fn new() -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            base: (start & 0xffff_ffff) << 32,
            next: AtomicU64::new(1),
        }
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

/// Why a session ended abnormally, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("upstream {dst} unreachable: {source}")]
    UpstreamUnreachable { dst: OrigDst, source: io::Error },
    #[error("upstream {dst} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { dst: OrigDst, timeout_ms: u64 },
    #[error("relay: {0}")]
    Relay(io::Error),
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

async fn handle(shared: Arc<Shared>, mut client: TcpStream, peer: ClientAddr) {
    let Some(origin) = shared.kernel.flows().take(peer.0) else {
        // Only flows the redirect created have a record: anything else dialled the proxy
        // directly (or from another host) and is refused without a byte.
        shared.audit.record(Event::ProxyRefused {
            client: peer.0,
            reason: "no redirect record for this peer".into(),
        });
        return;
    };
    let facts = KernelFacts::from_origin(&origin);
    if facts.cgroup_id == shared.own_cgroup {
        shared.audit.record(Event::ProxyRefused {
            client: peer.0,
            reason: "flow from the agent's own cgroup".into(),
        });
        return;
    }
    let Some(db) = shared.config.databases.get(origin.database_id as usize) else {
        shared.audit.record(Event::ProxyRefused {
            client: peer.0,
            reason: "flow for an unknown database".into(),
        });
        return;
    };
    let orig_dst = OrigDst(socket_addr_of(&origin.orig_dst));
    let identity = shared.resolver.resolve(&facts);
    let session = shared.sessions.next();
    let started = Instant::now();
    let upstream = connect_upstream(orig_dst, shared.upstream_mark, db).await;
    let upstream_local = upstream.as_ref().ok().and_then(|s| s.local_addr().ok());
    shared.audit.record(Event::ConnectionOpen {
        session,
        database: db.name.clone(),
        orig_dst: orig_dst.0,
        client: peer.0,
        upstream_local,
        identity,
    });
    let (from_client, from_server, error) = match upstream {
        Err(err) => {
            tracing::warn!(database = %db.name, %orig_dst, error = %err, "upstream connect failed");
            if db.protocol == Protocol::Postgres {
                let message = format!(
                    "warden: database \"{}\" at {} is unreachable: {}",
                    db.name, orig_dst, err
                );
                pg_startup::refuse(&mut client, "08001", &message).await;
            }
            (0, 0, Some(err.to_string()))
        }
        Ok(mut upstream) => {
            let _ = client.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((c, s)) => (c, s, None),
                Err(err) => (0, 0, Some(SessionError::Relay(err).to_string())),
            }
        }
    };
    shared.audit.record(Event::ConnectionClose {
        session,
        database: db.name.clone(),
        bytes_from_client: from_client,
        bytes_from_server: from_server,
        duration_ms: started.elapsed().as_millis() as u64,
        error,
    });
}

/// Connects to the original destination with the agent's mark, so connect4/6 let it through.
async fn connect_upstream(
    dst: OrigDst,
    mark: u32,
    db: &Database,
) -> Result<TcpStream, SessionError> {
    let unreachable = |source| SessionError::UpstreamUnreachable { dst, source };
    let domain = socket2::Domain::for_address(dst.0);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(unreachable)?;
    socket.set_mark(mark).map_err(unreachable)?;
    socket.set_nonblocking(true).map_err(unreachable)?;
    socket.set_tcp_nodelay(true).map_err(unreachable)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(
        Duration::from_millis(db.connect_timeout_ms),
        socket.connect(dst.0),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(unreachable(source)),
        Err(_) => Err(SessionError::UpstreamTimeout {
            dst,
            timeout_ms: db.connect_timeout_ms,
        }),
    }
}

/// Binds a proxy listener (with SO_REUSEADDR so a restarted agent can bind at once).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
