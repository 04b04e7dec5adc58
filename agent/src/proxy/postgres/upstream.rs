//! The server's side of a session: dialling the upstream (exempt from the redirect, from the
//! client's network namespace) and negotiating TLS with it as the database's `tls.mode` says.

use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{SessionContext, SessionError, state::ProtocolError, stream::MaybeTls};
use crate::{config::TlsMode, net::upstream::UpstreamError, pg::frame};

/// The upstream connection.
pub(super) struct Upstream {
    pub(super) stream: MaybeTls,
    pub(super) local: Option<std::net::SocketAddr>,
    /// DER of the server's certificate, when on TLS.
    pub(super) server_certificate: Option<Vec<u8>>,
}

/// Opens the upstream connection (exempt from the redirect by the agent's mark) and negotiates
/// TLS as the database's `tls.mode` says.
pub(super) async fn connect(ctx: &SessionContext) -> Result<Upstream, SessionError> {
    let dst = ctx.orig_dst;
    let db = &ctx.database;
    let tcp = ctx.dial.connect(dst, db.connect_timeout_ms).await.map_err(|e| match e {
        UpstreamError::Namespace(source) => SessionError::ClientNamespace { source },
        UpstreamError::Unreachable(source) => SessionError::UpstreamUnreachable { dst, source },
        UpstreamError::Timeout(timeout_ms) => SessionError::UpstreamTimeout { dst, timeout_ms },
    })?;
    let local = tcp.local_addr().ok();
    let plain = |tcp| Upstream { stream: MaybeTls::Plain(tcp), local, server_certificate: None };
    let Some(config) = db.tls.client_config.clone() else {
        return Ok(plain(tcp));
    };
    // The server's answer to SSLRequest and the handshake are bounded like the connect: a
    // server that accepts and says nothing must not hold the session (and its slot) forever.
    let timeout_ms = db.connect_timeout_ms;
    match tokio::time::timeout(Duration::from_millis(timeout_ms), negotiate_tls(ctx, tcp, config, local)).await {
        Ok(result) => result,
        Err(_) => Err(SessionError::UpstreamTimeout { dst, timeout_ms }),
    }
}

/// Asks the upstream for TLS (SSLRequest) and, when it agrees, performs the handshake.
async fn negotiate_tls(
    ctx: &SessionContext,
    mut tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    local: Option<std::net::SocketAddr>,
) -> Result<Upstream, SessionError> {
    let dst = ctx.orig_dst;
    let db = &ctx.database;
    let plain = |tcp| Upstream { stream: MaybeTls::Plain(tcp), local, server_certificate: None };
    let io = |source| SessionError::UpstreamIo(source);
    let mut request = Vec::with_capacity(8);
    request.extend_from_slice(&8u32.to_be_bytes());
    request.extend_from_slice(&frame::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let name = match db.tls_server_name() {
                Some(host) => rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| SessionError::UpstreamTls { dst, source: io::Error::other(e) })?,
                None => rustls_pki_types::ServerName::IpAddress(dst.0.ip().into()),
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| SessionError::UpstreamTls { dst, source })?;
            let server_certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            Ok(Upstream { stream: MaybeTls::ClientTls(Box::new(tls)), local, server_certificate })
        }
        b'N' if db.tls.mode == TlsMode::Prefer => Ok(plain(tcp)),
        b'N' => Err(SessionError::UpstreamTlsRefused { dst, mode: db.tls.mode }),
        other => {
            Err(SessionError::Protocol(ProtocolError::Server(format!("answered SSLRequest with {:?}", other as char))))
        }
    }
}
