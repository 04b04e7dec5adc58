//! The node-local interface that carries the proxy's listener addresses: a dummy (or empty
//! bridge) interface the agent owns, with a link-local IPv4 address and a ULA IPv6 address, reachable from every
//! network namespace that routes to the host (the NodeLocal DNSCache pattern).
//!
//! Managed with iproute2 (`ip`), which every node has; the agent needs CAP_NET_ADMIN anyway.

use std::{net::IpAddr, process::Command};

/// An interface operation failed; carries the command and what `ip` said.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {message}")]
pub struct NetifError {
    args: String,
    message: String,
}

fn ip(args: &[&str]) -> Result<String, NetifError> {
    let fail = |message: String| NetifError { args: args.join(" "), message };
    let out = Command::new("ip").args(args).output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the dummy interface if needed, brings it up and adds the addresses it lacks.
pub fn ensure(name: &str, addrs: &[IpAddr]) -> Result<(), NetifError> {
    if ip(&["link", "show", "dev", name]).is_err() {
        // A dummy interface where the kernel has the driver; otherwise an empty bridge, which
        // every kernel that runs containers has and which serves the same purpose here.
        if ip(&["link", "add", name, "type", "dummy"]).is_err() {
            ip(&["link", "add", name, "type", "bridge"])?;
        }
    }
    ip(&["link", "set", name, "up"])?;
    let present = ip(&["-o", "addr", "show", "dev", name])?;
    for addr in addrs {
        let (cidr, extra): (String, &[&str]) = match addr {
            IpAddr::V4(a) => (format!("{a}/32"), &[]),
            // nodad: usable at once instead of after duplicate-address detection.
            IpAddr::V6(a) => (format!("{a}/128"), &["nodad"]),
        };
        if present.split_whitespace().any(|w| w == cidr) {
            continue;
        }
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", name];
        args.extend_from_slice(extra);
        ip(&args)?;
    }
    Ok(())
}

/// Deletes the interface (and its addresses); fine if it does not exist.
pub fn remove(name: &str) -> Result<(), NetifError> {
    if ip(&["link", "show", "dev", name]).is_ok() {
        ip(&["link", "del", name])?;
    }
    Ok(())
}
