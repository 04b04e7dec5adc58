//! sock_ops: carry a redirected flow's record from the client's socket to the proxy's.
//!
//! - Client side, TCP_CONNECT_CB (before the SYN, when the local port is known): publish the
//!   record under the connection's 4-tuple and ask for state callbacks on this socket. The
//!   programs run in every network namespace and the 4-tuple only means something inside one:
//!   if another socket already published under the same 4-tuple, the entry becomes a conflict
//!   marker and the proxy refuses the flow rather than attribute it to either.
//! - Proxy side, PASSIVE_ESTABLISHED_CB (the handshake completed on a proxy listener in the
//!   agent's own namespace): move the record to the accepted socket's cookie. From then on it
//!   belongs to that one connection; the proxy takes it by the cookie of the socket `accept()`
//!   returned.
//! - Client side, STATE_CB to CLOSE: a connect that failed, timed out or was abandoned before
//!   the proxy's side existed leaves no record behind for a later socket on the same endpoint.

use core::ptr::{addr_of, read_volatile};

use agent_common::{
    AF_INET, AF_INET6, Endpoint, FLOW_CONFLICT, FlowKey, STAT_FLOWS_ABANDONED, STAT_FLOWS_ACCEPTED, STAT_FLOWS_RECORDED,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::SockOpsContext,
};

use crate::{
    connect::words_to_octets,
    maps::{AGENT_STATE, FLOW_BY_ACCEPTED, FLOW_BY_CLIENT, ORIG_BY_COOKIE, count},
};

pub fn sockops(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => client_connecting(ctx),
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

/// A connect that takes longer than this (the SYN retries of a default Linux client give up
/// after about 127 s) is not handed to the proxy: its record is stale.
const MAX_CONNECT_NS: u64 = 135_000_000_000;

fn client_connecting(ctx: &SockOpsContext) {
    let cookie = cookie(ctx);
    // SAFETY: a reference into the map's value, passed straight back to another map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    let Some((client, proxy)) = endpoints(ctx) else {
        return;
    };
    count(STAT_FLOWS_RECORDED);
    // State callbacks for this socket only: its close must withdraw an unclaimed record.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    let key = FlowKey { client, proxy };
    if FLOW_BY_CLIENT.insert(&key, origin, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Someone else's record under this 4-tuple: neither can be trusted to be the connection
    // the proxy will accept. The conflict marker makes the proxy refuse it.
    // SAFETY: plain data copied out of the map.
    if let Some(mut other) = unsafe { FLOW_BY_CLIENT.get(&key).copied() }
        && other.socket_cookie != origin.socket_cookie
    {
        other.flags |= FLOW_CONFLICT;
        let _ = FLOW_BY_CLIENT.insert(&key, &other, 0);
    }
}

fn proxy_accepted(ctx: &SockOpsContext) {
    let Some((local, remote)) = endpoints(ctx) else {
        return;
    };
    let Some(state) = AGENT_STATE.get(0) else {
        return;
    };
    // Every passive connection on the host comes through here: only the proxy's are looked at,
    // and only in the agent's own namespace (a workload may listen on the proxy's address in a
    // namespace of its own).
    if local != state.proxy_v4 && local != state.proxy_v6 {
        return;
    }
    // SAFETY: sock_ops context pointer, valid for the program's duration.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != state.agent_netns_cookie {
        return;
    }
    let key = FlowKey { client: remote, proxy: local };
    // SAFETY: plain data copied out of the map.
    let Some(mut origin) = (unsafe { FLOW_BY_CLIENT.get(&key).copied() }) else {
        return;
    };
    let _ = FLOW_BY_CLIENT.remove(&key);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if origin.flags & FLOW_CONFLICT != 0 || now.wrapping_sub(origin.connect_ns) > MAX_CONNECT_NS {
        return;
    }
    origin.established_ns = now;
    if FLOW_BY_ACCEPTED.insert(&cookie(ctx), &origin, 0).is_ok() {
        count(STAT_FLOWS_ACCEPTED);
    }
}

fn client_closed(ctx: &SockOpsContext) {
    // Only redirected sockets asked for state callbacks. Their per-socket record may already be
    // gone (evicted): the pending record is matched by this socket's own cookie instead.
    let cookie = cookie(ctx);
    let _ = ORIG_BY_COOKIE.remove(&cookie);
    let Some((client, proxy)) = endpoints(ctx) else {
        return;
    };
    let key = FlowKey { client, proxy };
    // Only this socket's own record: another socket may hold the endpoint by now.
    // SAFETY: plain data copied out of the map.
    let unclaimed = unsafe { FLOW_BY_CLIENT.get(&key).copied() };
    if unclaimed.is_some_and(|o| o.socket_cookie == cookie) {
        let _ = FLOW_BY_CLIENT.remove(&key);
        count(STAT_FLOWS_ABANDONED);
    }
}
