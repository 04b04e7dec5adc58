//! sock_ops: carry a redirected flow's record from the client's socket to the proxy's.
//!
//! - Client side, TCP_CONNECT_CB (before the SYN, when the local port is known): publish the
//!   record under the connection's 4-tuple and ask for state callbacks on this socket.
//! - Proxy side, PASSIVE_ESTABLISHED_CB (the handshake completed on a proxy listener): move the
//!   record to the accepted socket's cookie. From then on it belongs to that one connection; the
//!   proxy takes it by the cookie of the socket `accept()` returned.
//! - Client side, STATE_CB to CLOSE: a connect that failed, timed out or was abandoned before
//!   the proxy's side existed leaves no record behind for a later socket on the same endpoint.

use core::ptr::{addr_of, read_volatile};

use agent_common::{
    AF_INET, AF_INET6, Endpoint, FlowKey, STAT_FLOWS_ABANDONED, STAT_FLOWS_ACCEPTED, STAT_FLOWS_RECORDED,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockOpsContext,
};

use crate::{
    connect::words_to_octets,
    maps::{AGENT_STATE, FLOW_BY_ACCEPTED, FLOW_BY_CLIENT, ORIG_BY_COOKIE, count},
};

pub fn sockops(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => client_connecting(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => proxy_accepted(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => client_closed(ctx),
        _ => {}
    }
    1
}

/// The 4-tuple of this socket: (local, remote) endpoints, IPv4 stored v4-mapped.
#[inline(always)]
fn endpoints(ctx: &SockOpsContext) -> Option<(Endpoint, Endpoint)> {
    // local_port is in host byte order here; remote_port is network order in the upper 16 bits.
    let local_port = ctx.local_port() as u16;
    let remote_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    match ctx.family() {
        // A dual-stack socket on IPv4 reports its addresses v4-mapped in the ip6 fields.
        AF_INET6 => {
            // Word by word with volatile reads: the verifier rejects a context access through a
            // pointer LLVM derived from the context base.
            // SAFETY: in-bounds reads of the sock_ops context.
            let (local, remote) = unsafe {
                let ops = ctx.ops;
                (
                    [
                        read_volatile(addr_of!((*ops).local_ip6[0])),
                        read_volatile(addr_of!((*ops).local_ip6[1])),
                        read_volatile(addr_of!((*ops).local_ip6[2])),
                        read_volatile(addr_of!((*ops).local_ip6[3])),
                    ],
                    [
                        read_volatile(addr_of!((*ops).remote_ip6[0])),
                        read_volatile(addr_of!((*ops).remote_ip6[1])),
                        read_volatile(addr_of!((*ops).remote_ip6[2])),
                        read_volatile(addr_of!((*ops).remote_ip6[3])),
                    ],
                )
            };
            Some((
                Endpoint::from_v6_octets(words_to_octets(&local), local_port),
                Endpoint::from_v6_octets(words_to_octets(&remote), remote_port),
            ))
        }
        AF_INET => Some((
            Endpoint::from_v4_octets(ctx.local_ip4().to_ne_bytes(), local_port),
            Endpoint::from_v4_octets(ctx.remote_ip4().to_ne_bytes(), remote_port),
        )),
        _ => None,
    }
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops context pointer, valid for the program's duration.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

fn client_connecting(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    // SAFETY: a reference into the map's value, passed straight back to another map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    let Some((client, proxy)) = endpoints(ctx) else {
        return;
    };
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        count(STAT_FLOWS_RECORDED);
        // State callbacks for this socket only: its close must withdraw an unclaimed record.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    // Written at both callbacks: the first normally wins; the second covers a lost update. Both
    // come before the client's ACK, so before the proxy's side moves the record.
    let _ = FLOW_BY_CLIENT.insert(&FlowKey { client, proxy }, origin, 0);
}

fn proxy_accepted(ctx: &SockOpsContext) {
    let Some((local, remote)) = endpoints(ctx) else {
        return;
    };
    let Some(state) = AGENT_STATE.get(0) else {
        return;
    };
    // Every passive connection on the host comes through here: only the proxy's are looked at.
    if local != state.proxy_v4 && local != state.proxy_v6 {
        return;
    }
    let key = FlowKey { client: remote, proxy: local };
    // SAFETY: plain data copied out of the map.
    let Some(mut origin) = (unsafe { FLOW_BY_CLIENT.get(&key).copied() }) else {
        return;
    };
    // SAFETY: helper without preconditions.
    origin.established_ns = unsafe { bpf_ktime_get_ns() };
    if FLOW_BY_ACCEPTED.insert(&cookie(ctx), &origin, 0).is_ok() {
        count(STAT_FLOWS_ACCEPTED);
    }
    let _ = FLOW_BY_CLIENT.remove(&key);
}

fn client_closed(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    // SAFETY: plain data copied out of the map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie).copied() }) else {
        return;
    };
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    let Some((client, proxy)) = endpoints(ctx) else {
        return;
    };
    let key = FlowKey { client, proxy };
    // Only this socket's own record: another socket may hold the endpoint by now.
    // SAFETY: plain data copied out of the map.
    let unclaimed = unsafe { FLOW_BY_CLIENT.get(&key).copied() };
    if unclaimed.is_some_and(|o| o.socket_cookie == origin.socket_cookie) {
        let _ = FLOW_BY_CLIENT.remove(&key);
        count(STAT_FLOWS_ABANDONED);
    }
}
