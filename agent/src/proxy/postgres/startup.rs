//! The client's side of connection start-up: SSLRequest / GSSENCRequest negotiation (TLS is
//! terminated here when configured, including PostgreSQL 17's direct TLS), then either a
//! StartupMessage or a CancelRequest.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::stream::MaybeTls;
use crate::pg::{
    error::{Severity, put_error},
    frame,
    frontend::Startup,
};

/// How a client's connection began.
pub enum ClientStart {
    Session(SessionStart),
    Cancel { stream: MaybeTls, packet: Vec<u8>, pid: i32, key: Vec<u8> },
}

/// A client that wants a session.
pub struct SessionStart {
    pub stream: MaybeTls,
    /// The StartupMessage exactly as the client sent it (forwarded unchanged).
    pub packet: Vec<u8>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// The `replication` start-up parameter, when it asks for a replication connection.
    pub replication: Option<String>,
}

/// Start-up failed; whose fault it was is in the variant.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("client closed the connection during start-up")]
    Closed,
    #[error("client did not finish start-up within {0:?}")]
    Timeout(Duration),
    #[error("client: {0}")]
    Protocol(String),
    #[error("client: TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client: {0}")]
    Io(std::io::Error),
}

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Negotiates with the client until it sends a StartupMessage or a CancelRequest.
pub async fn negotiate(
    stream: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
    timeout: Duration,
) -> Result<ClientStart, StartError> {
    match tokio::time::timeout(timeout, negotiate_inner(stream, tls)).await {
        Ok(result) => result,
        Err(_) => Err(StartError::Timeout(timeout)),
    }
}

async fn negotiate_inner(
    stream: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<ClientStart, StartError> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.map_err(StartError::Io)?;
    if n == 0 {
        return Err(StartError::Closed);
    }
    let mut stream = if first[0] == TLS_HANDSHAKE_RECORD {
        // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): no SSLRequest, ALPN required.
        let Some(tls) = tls else {
            return Err(StartError::Protocol("direct TLS without a configured certificate".into()));
        };
        let s = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream).await.map_err(StartError::Tls)?;
        if s.get_ref().1.alpn_protocol() != Some(b"postgresql") {
            return Err(StartError::Protocol("direct TLS without the \"postgresql\" ALPN protocol".into()));
        }
        MaybeTls::ServerTls(Box::new(s))
    } else {
        MaybeTls::Plain(stream)
    };
    // SSLRequest and GSSENCRequest may each come once before the real start-up packet.
    for _ in 0..3 {
        let packet = read_packet(&mut stream).await?;
        match Startup::decode(&packet).map_err(|e| StartError::Protocol(e.to_string()))? {
            Startup::Ssl => {
                let plain = match stream {
                    MaybeTls::Plain(s) => s,
                    _ => return Err(StartError::Protocol("SSLRequest inside TLS".into())),
                };
                match tls {
                    Some(config) => {
                        let mut plain = plain;
                        plain.write_all(b"S").await.map_err(StartError::Io)?;
                        // Bytes the client sent after its SSLRequest are still in the socket
                        // and make the handshake fail: no plaintext injection (CVE-2021-23214).
                        let s = tokio_rustls::TlsAcceptor::from(config.clone())
                            .accept(plain)
                            .await
                            .map_err(StartError::Tls)?;
                        stream = MaybeTls::ServerTls(Box::new(s));
                    }
                    None => {
                        let mut plain = plain;
                        plain.write_all(b"N").await.map_err(StartError::Io)?;
                        stream = MaybeTls::Plain(plain);
                    }
                }
            }
            Startup::GssEnc => stream.write_all(b"N").await.map_err(StartError::Io)?,
            Startup::Cancel { pid, key } => {
                let key = key.to_vec();
                return Ok(ClientStart::Cancel { stream, packet, pid, key });
            }
            Startup::Startup { params, .. } => {
                let get = |name: &str| {
                    params.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| crate::pg::text(v).into_owned())
                };
                let replication = get("replication")
                    .filter(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"));
                let start = SessionStart {
                    user: get("user"),
                    database: get("database").or_else(|| get("user")),
                    application_name: get("application_name"),
                    replication,
                    stream,
                    packet,
                };
                return Ok(ClientStart::Session(start));
            }
        }
    }
    Err(StartError::Protocol("too many negotiation requests".into()))
}

async fn read_packet(stream: &mut MaybeTls) -> Result<Vec<u8>, StartError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(StartError::Closed),
        Err(e) => return Err(StartError::Io(e)),
    }
    let total = frame::startup_len(&len).map_err(|e| StartError::Protocol(e.to_string()))?.unwrap_or(0);
    let mut packet = vec![0u8; total];
    packet[..4].copy_from_slice(&len);
    stream.read_exact(&mut packet[4..]).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StartError::Closed,
        _ => StartError::Io(e),
    })?;
    Ok(packet)
}

/// Sends a FATAL ErrorResponse and closes (best effort: the client may already be gone).
pub async fn refuse(stream: &mut MaybeTls, sqlstate: &str, message: &str) {
    let mut out = Vec::new();
    put_error(&mut out, Severity::Fatal, sqlstate, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
