//! A PostgreSQL session through the proxy: start-up and TLS on both legs, authentication
//! passthrough, then two relay loops (client to server, server to client) that feed every
//! message to the session's one protocol state machine and call the statement hooks.
//!
//! Relaying is chunked: each read is scanned for message boundaries and written on in one
//! piece unless a message has to be replaced. DataRow and CopyData bodies are never decoded
//! (or buffered whole) unless a hook asks for rows.

mod auth;
pub mod cancel;
mod catalog;
mod incoming;
mod refusal;
mod relay;
mod rewrite;
pub mod startup;
pub mod state;
pub mod stream;
mod upstream;

use std::{io, sync::Arc, time::Duration};

use tokio::net::TcpStream;

use self::{cancel::CancelRegistry, startup::ClientStart, state::ProtocolError};
use crate::session::hooks::{self, SessionHooks};
use crate::{
    config::{Database, TlsMode},
    flow::OrigDst,
};

/// How long a client may take to send its start-up packet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a session needs from the agent.
pub struct SessionContext {
    pub database: Arc<Database>,
    pub database_index: usize,
    pub orig_dst: OrigDst,
    /// How the upstream is reached (the client's network namespace, the agent's mark).
    pub dial: super::Dial,
    pub client_tls: Option<ClientTls>,
    pub max_message: usize,
    pub hooks: Arc<dyn SessionHooks>,
    pub cancels: Arc<CancelRegistry>,
    /// Its entry among the agent's live sessions (what the admin API lists and can end).
    pub live: Option<Arc<crate::proxy::live::LiveSession>>,
}

/// The TLS the proxy offers clients.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ServerConfig>,
    /// DER of the certificate presented to clients.
    pub leaf_certificate: Arc<[u8]>,
}

/// What happened in a session, for the audit trail.
#[derive(Debug, Default, Clone)]
pub struct SessionReport {
    pub db_user: Option<String>,
    pub db_name: Option<String>,
    /// The role the session acts as when the start-up packet sets one (`options=-c role=...`
    /// or a `role` parameter), beside the login user.
    pub db_role: Option<String>,
    pub application_name: Option<String>,
    pub client_tls: bool,
    pub upstream_tls: bool,
    pub upstream_local: Option<std::net::SocketAddr>,
    pub cancel_request: bool,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    pub statements: u64,
    pub rows: u64,
    /// Why the session ended abnormally, and who caused it.
    pub error: Option<String>,
}

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Start(#[from] startup::StartError),
    #[error("upstream {dst} unreachable: {source}")]
    UpstreamUnreachable { dst: OrigDst, source: io::Error },
    #[error("the client's network namespace cannot be used: {source}")]
    ClientNamespace { source: crate::net::netns::NetnsError },
    #[error("upstream {dst} did not accept a connection within {timeout_ms} ms")]
    UpstreamTimeout { dst: OrigDst, timeout_ms: u64 },
    #[error("upstream {dst} refused TLS, which tls.mode {mode:?} requires")]
    UpstreamTlsRefused { dst: OrigDst, mode: TlsMode },
    #[error("upstream {dst}: TLS handshake failed: {source}")]
    UpstreamTls { dst: OrigDst, source: io::Error },
    #[error("replication connection refused (allow_replication is off)")]
    ReplicationRefused,
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("client: {0}")]
    ClientIo(io::Error),
    #[error("upstream: {0}")]
    UpstreamIo(io::Error),
    #[error("upstream closed the connection")]
    UpstreamClosed,
    #[error("{0}")]
    Terminated(crate::proxy::live::Ending),
}

/// Runs a session on an accepted, attributed client connection. `on_open` is called once the
/// upstream connection exists (the audit trail's connection record).
pub async fn run(ctx: &SessionContext, client: TcpStream, on_open: impl FnOnce(&SessionReport)) -> SessionReport {
    let mut report = SessionReport::default();
    if let Err(err) = run_inner(ctx, client, &mut report, on_open).await {
        report.error = Some(err.to_string());
    }
    report
}

async fn run_inner(
    ctx: &SessionContext,
    client: TcpStream,
    report: &mut SessionReport,
    on_open: impl FnOnce(&SessionReport),
) -> Result<(), SessionError> {
    let start = startup::negotiate(client, ctx.client_tls.as_ref().map(|t| &t.config), STARTUP_TIMEOUT).await?;
    let mut start = match start {
        ClientStart::Cancel { packet, pid, key, .. } => {
            report.cancel_request = true;
            on_open(report);
            return cancel::forward_cancel(ctx, &packet, pid, &key, true).await;
        }
        ClientStart::Session(s) => s,
    };
    report.client_tls = start.stream.is_tls();
    report.db_user = start.user.clone();
    report.db_name = start.database.clone();
    report.db_role = start.role.clone();
    report.application_name = start.application_name.clone();
    if start.replication.is_some() && !ctx.database.allow_replication {
        refusal::refuse_replication(ctx, &mut start.stream).await;
        on_open(report);
        return Err(SessionError::ReplicationRefused);
    }
    let upstream = match upstream::connect(ctx).await {
        Ok(u) => u,
        Err(err) => {
            refusal::refuse_unreachable(ctx, &mut start.stream, &err).await;
            on_open(report);
            return Err(err);
        }
    };
    report.upstream_tls = upstream.stream.is_tls();
    report.upstream_local = upstream.local;
    on_open(report);
    if let Some(live) = &ctx.live {
        live.set_user(start.role.as_deref().or(start.user.as_deref()));
    }
    ctx.hooks.on_session_start(&hooks::SessionStart {
        user: start.user.as_deref(),
        database: start.database.as_deref(),
        role: start.role.as_deref(),
        search_path: start.search_path.as_deref(),
    });
    let channel_binding_holds = auth::channel_binding_holds(ctx, &start, &upstream);
    relay::relay(ctx, start, upstream.stream, channel_binding_holds, report).await
}
