//! Upstream connections: to a flow's original destination, from the client's own network
//! namespace, carrying the agent's socket mark so connect4/6 let them through unredirected.

use std::{io, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use super::netns::{ClientNetns, Namespaces, NetnsError};
use crate::flow::OrigDst;

/// The upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Namespace(#[from] NetnsError),
    #[error("{0}")]
    Unreachable(io::Error),
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

/// Connects to `dst` as the client would have: from its namespace `ns`.
pub async fn connect(
    namespaces: &Namespaces,
    ns: &ClientNetns,
    dst: OrigDst,
    mark: u32,
    timeout_ms: u64,
) -> Result<TcpStream, UpstreamError> {
    let socket = namespaces.tcp_socket(ns, socket2::Domain::for_address(dst.0))?;
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
