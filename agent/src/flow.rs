//! Flows as the agent sees them: the original destination (never to be confused with the
//! proxy's own address), the client's address, and the kernel's record of who connected.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use agent_common::{Endpoint, FlowOrigin};

use crate::cgroup::CgroupId;

/// The destination a client dialled, before the redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OrigDst(pub SocketAddr);

/// The client's end of a proxied connection, as the proxy's listener sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The kernel key for a socket address: IPv4 (and v4-mapped IPv6) as v4-mapped.
pub fn endpoint_of(addr: SocketAddr) -> Endpoint {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Endpoint::from_v6_octets(v6.octets(), addr.port())
}

/// The socket address for a kernel endpoint: v4-mapped endpoints become IPv4.
pub fn socket_addr_of(ep: &Endpoint) -> SocketAddr {
    let v6 = Ipv6Addr::from(ep.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, ep.port)
}

/// What the kernel recorded about the process that opened a flow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelFacts {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: CgroupId,
    pub netns_cookie: u64,
}

impl KernelFacts {
    pub fn from_origin(o: &FlowOrigin) -> Self {
        let end = o.comm.iter().position(|&b| b == 0).unwrap_or(o.comm.len());
        Self {
            pid: o.pid,
            tid: o.tid,
            uid: o.uid,
            gid: o.gid,
            comm: String::from_utf8_lossy(&o.comm[..end]).into_owned(),
            cgroup_id: CgroupId(o.cgroup_id),
            netns_cookie: o.netns_cookie,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_mapped_share_a_key_and_round_trip() {
        let v4: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5432".parse().unwrap();
        assert_eq!(endpoint_of(v4), endpoint_of(mapped));
        assert!(endpoint_of(v4).is_v4_mapped());
        assert_eq!(endpoint_of(v4).v4_octets(), [127, 0, 0, 1]);
        assert_eq!(socket_addr_of(&endpoint_of(mapped)), v4);
        let v6: SocketAddr = "[fd00::5]:6543".parse().unwrap();
        assert!(!endpoint_of(v6).is_v4_mapped());
        assert_eq!(socket_addr_of(&endpoint_of(v6)), v6);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut o = FlowOrigin::default();
        o.comm[..4].copy_from_slice(b"psql");
        assert_eq!(KernelFacts::from_origin(&o).comm, "psql");
    }
}
