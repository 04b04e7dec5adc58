//! sock_ops: once a redirected socket has its local port (TCP_CONNECT_CB, before the SYN),
//! publish its record keyed by the client's local endpoint, which is what the proxy sees as
//! the accepted connection's peer.

use core::ptr::{addr_of, read_volatile};

use agent_common::{AF_INET, AF_INET6, Endpoint, STAT_FLOWS_RECORDED};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::generated::bpf_get_socket_cookie,
    programs::SockOpsContext,
};

use crate::{
    connect::words_to_octets,
    maps::{FLOW_BY_CLIENT, ORIG_BY_COOKIE, count},
};

pub fn sockops(ctx: &SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: sock_ops context pointer, valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a reference into the map's value, passed straight back to another map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return 1;
    };
    // local_port is in host byte order here (unlike remote_port).
    let port = ctx.local_port() as u16;
    let client = match ctx.family() {
        // A dual-stack socket on IPv4 reports its local address v4-mapped in local_ip6.
        AF_INET6 => {
            // Word by word with volatile reads: the verifier rejects a context access through a
            // pointer LLVM derived from the context base.
            // SAFETY: in-bounds reads of the sock_ops context.
            let words = unsafe {
                let ops = ctx.ops;
                [
                    read_volatile(addr_of!((*ops).local_ip6[0])),
                    read_volatile(addr_of!((*ops).local_ip6[1])),
                    read_volatile(addr_of!((*ops).local_ip6[2])),
                    read_volatile(addr_of!((*ops).local_ip6[3])),
                ]
            };
            Endpoint::from_v6_octets(words_to_octets(&words), port)
        }
        AF_INET => Endpoint::from_v4_octets(ctx.local_ip4().to_ne_bytes(), port),
        _ => return 1,
    };
    // Written at both callbacks: the first normally wins; the second covers a lost update.
    // Entries are not deleted when the client closes (that races fast connect-and-close
    // clients): the proxy deletes what it consumes and the LRU bounds the rest.
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        count(STAT_FLOWS_RECORDED);
    }
    let _ = FLOW_BY_CLIENT.insert(&client, origin, 0);
    1
}
