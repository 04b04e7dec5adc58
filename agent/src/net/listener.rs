//! The proxy's listening sockets, and why no other process may take the proxy's address.
//!
//! Redirected clients are sent to the proxy's address whether or not the agent is there. A
//! process that held that address while the agent restarts would receive governed clients (and
//! could ask them for cleartext passwords), and the new agent could not bind. So the proxy
//! listens on a privileged port (below `net.ipv4.ip_unprivileged_port_start`): a process needs
//! CAP_NET_BIND_SERVICE to bind it, which a non-root workload, and a root workload without
//! capabilities, do not have (joining the SO_REUSEPORT group needs the bind too). The agent
//! also publishes "not serving" to the kernel before it closes its listeners, so no client is
//! redirected to an address nobody serves.

use std::{fs, io, net::SocketAddr};

/// `proxy.listen_*` is a port any local process could bind.
#[derive(Debug, thiserror::Error)]
#[error(
    "{addr}: port {port} is not privileged on this host (net.ipv4.ip_unprivileged_port_start = {start}): any local \
     process could take the proxy's address while the agent restarts; choose a port below {start}, or set \
     proxy.allow_unprivileged_port: true to accept the risk"
)]
pub struct UnprivilegedPort {
    pub addr: SocketAddr,
    pub port: u16,
    pub start: u16,
}

/// The first unprivileged port of the agent's network namespace (1024 unless lowered).
pub fn unprivileged_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Refuses a listener address that an unprivileged process could bind.
pub fn check_privileged(addr: SocketAddr) -> Result<(), UnprivilegedPort> {
    let start = unprivileged_port_start();
    if addr.port() >= start {
        return Err(UnprivilegedPort { addr, port: addr.port(), start });
    }
    Ok(())
}

/// Binds a non-blocking proxy listener: SO_REUSEADDR so a restarted agent can bind at once,
/// SO_REUSEPORT so each proxy worker has its own socket on the same address. When the address
/// is taken, the error names who holds it.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Err(err) = socket.bind(&addr.into()) {
        if err.kind() == io::ErrorKind::AddrInUse {
            let holders = holders_of(addr);
            let who = if holders.is_empty() { "another process".to_string() } else { holders.join(", ") };
            return Err(io::Error::new(err.kind(), format!("{err}: held by {who}")));
        }
        return Err(err);
    }
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Processes with a TCP socket bound to `addr` (for the error when the agent cannot bind).
pub fn holders_of(addr: SocketAddr) -> Vec<String> {
    let entries = match addr {
        SocketAddr::V4(_) => procfs::net::tcp(),
        SocketAddr::V6(_) => procfs::net::tcp6(),
    };
    let Ok(entries) = entries else { return Vec::new() };
    let inodes: Vec<u64> = entries.iter().filter(|e| e.local_address == addr).map(|e| e.inode).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let Ok(processes) = procfs::process::all_processes() else { return out };
    for process in processes.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let holds =
            fds.flatten().any(|fd| matches!(fd.target, procfs::process::FDTarget::Socket(i) if inodes.contains(&i)));
        if holds {
            let comm = process.stat().map(|s| s.comm).unwrap_or_default();
            let uid = process.uid().map_or_else(|_| "?".into(), |u| u.to_string());
            out.push(format!("pid {} ({comm}, uid {uid})", process.pid));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_port_is_refused_with_the_fix() {
        let start = unprivileged_port_start();
        if start == 0 {
            return; // every port is unprivileged here: nothing to distinguish
        }
        let err = check_privileged(SocketAddr::from(([169, 254, 77, 1], start))).expect_err("unprivileged");
        assert!(err.to_string().contains("allow_unprivileged_port"), "{err}");
        assert!(check_privileged(SocketAddr::from(([169, 254, 77, 1], start - 1))).is_ok());
    }

    #[test]
    fn a_taken_address_names_its_holder() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let holders = holders_of(addr);
        assert!(holders.iter().any(|h| h.contains(&format!("pid {}", std::process::id()))), "{holders:?}");
    }
}
