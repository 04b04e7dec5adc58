//! connect4 / connect6: decide, in the connecting task's context, whether a flow is governed,
//! and if so record who is connecting where and rewrite the destination to the proxy.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use agent_common::{
    AF_INET, AF_INET6, AgentState, EVENT_REFUSED, EVENT_UNGOVERNED, Endpoint, EndpointPolicy, FAIL_BY_POLICY,
    FAIL_OPEN, FailKey, FlowEvent, FlowOrigin, HEARTBEAT_STALE_NS, MODE_ENFORCE, STAT_EXEMPTED, STAT_REDIRECTED,
    STAT_REFUSED, STAT_UNGOVERNED,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    },
    programs::SockAddrContext,
};

use crate::maps::{AGENT_STATE, FAIL_OPEN_IDENTITIES, ORIG_BY_COOKIE, count, emit, governed};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's duration; volatile reads keep LLVM
    // from merging context accesses into widths the verifier rejects.
    let (protocol, ip, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).protocol)),
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // user_ip4 and user_port are in network byte order (the port in the low 16 bits).
    let dst = unspecified_as_loopback(Endpoint::from_v4_octets(ip.to_ne_bytes(), u16::from_be(port as u16)));
    let Some(policy) = governed(&dst) else {
        return ALLOW;
    };
    let Some(state) = agent_state() else {
        return ALLOW;
    };
    match decide(ctx, sa, &dst, &policy, state, AF_INET) {
        Decision::Redirect => {
            let proxy = state.proxy_v4;
            // SAFETY: as above; writes are volatile and full-width.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(proxy.v4_octets()));
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(proxy.port.to_be()));
            }
            ALLOW
        }
        Decision::Pass => ALLOW,
        Decision::Refuse => REFUSE,
    }
}

pub fn connect6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: see connect4.
    let (protocol, words, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).protocol)),
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = unspecified_as_loopback(Endpoint::from_v6_octets(words_to_octets(&words), u16::from_be(port as u16)));
    let Some(policy) = governed(&dst) else {
        return ALLOW;
    };
    let Some(state) = agent_state() else {
        return ALLOW;
    };
    // A dual-stack socket dialling ::ffff:a.b.c.d stays on IPv4: send it to the v4 listener,
    // still v4-mapped. Native IPv6 goes to the v6 listener, if there is one.
    let proxy = if dst.is_v4_mapped() { state.proxy_v4 } else { state.proxy_v6 };
    let decision = if proxy.is_unset() {
        if policy.mode != MODE_ENFORCE || is_agent_upstream(sa, state) {
            // Observe-only endpoints are never redirected; the agent's own dials pass.
            Decision::Pass
        } else {
            // Nowhere to redirect to: "not serving" for this flow, while the agent serves, so an
            // identity listed to fail open (for when the agent is down) is not let through.
            not_serving(ctx, &dst, &policy, state, false)
        }
    } else {
        decide(ctx, sa, &dst, &policy, state, AF_INET6)
    };
    match decision {
        Decision::Redirect => {
            let w = octets_to_words(&proxy.addr);
            // SAFETY: see connect4.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip6[0]), w[0]);
                write_volatile(addr_of_mut!((*sa).user_ip6[1]), w[1]);
                write_volatile(addr_of_mut!((*sa).user_ip6[2]), w[2]);
                write_volatile(addr_of_mut!((*sa).user_ip6[3]), w[3]);
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(proxy.port.to_be()));
            }
            ALLOW
        }
        Decision::Pass => ALLOW,
        Decision::Refuse => REFUSE,
    }
}

/// The kernel connects `0.0.0.0` to `127.0.0.1` and `::` to `::1`: judged (and recorded, and
/// dialled by the proxy) as the loopback address they reach, so a database governed on
/// loopback cannot be reached through the unspecified address.
#[inline(always)]
fn unspecified_as_loopback(mut dst: Endpoint) -> Endpoint {
    let a = &mut dst.addr;
    let mut zero = true;
    let mut i = 0;
    while i < 16 {
        if i < 10 || i >= 12 {
            zero &= a[i] == 0;
        }
        i += 1;
    }
    if zero && a[10] == 0xff && a[11] == 0xff {
        // ::ffff:0.0.0.0
        a[12] = 127;
        a[15] = 1;
    } else if zero && a[10] == 0 && a[11] == 0 {
        // ::
        a[15] = 1;
    }
    dst
}

enum Decision {
    Redirect,
    Pass,
    Refuse,
}

#[inline(always)]
fn agent_state() -> Option<&'static AgentState> {
    AGENT_STATE.get(0)
}

#[inline(always)]
fn decide(
    ctx: &SockAddrContext,
    sa: *mut bpf_sock_addr,
    dst: &Endpoint,
    policy: &EndpointPolicy,
    state: &AgentState,
    family: u32,
) -> Decision {
    if policy.mode != MODE_ENFORCE {
        // Observe-only endpoints are attributed by the tracepoint, never redirected.
        return Decision::Pass;
    }
    if is_agent_upstream(sa, state) {
        count(STAT_EXEMPTED);
        return Decision::Pass;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let alive = state.serving == 1 && now.wrapping_sub(state.heartbeat_ns) < HEARTBEAT_STALE_NS;
    if !alive {
        return not_serving(ctx, dst, policy, state, true);
    }
    let mut origin = FlowOrigin::default();
    fill_origin(&mut origin, ctx, dst, policy, family);
    origin.connect_ns = now;
    if ORIG_BY_COOKIE.insert(&origin.socket_cookie, &origin, 0).is_err() {
        // Without a record the proxy could not attribute the flow; it would refuse it.
        return not_serving(ctx, dst, policy, state, false);
    }
    count(STAT_REDIRECTED);
    Decision::Redirect
}

/// The agent's own upstream connections carry its socket mark AND come from its cgroup: a
/// governed workload would need both to slip past (a mark alone needs only CAP_NET_ADMIN).
#[inline(always)]
fn is_agent_upstream(sa: *mut bpf_sock_addr, state: &AgentState) -> bool {
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if state.agent_cgroup_id == 0 || cgroup != state.agent_cgroup_id {
        return false;
    }
    // SAFETY: ctx->sk is a valid socket pointer for sock_addr programs.
    let mark = unsafe {
        let sk = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        if sk.is_null() {
            return false;
        }
        read_volatile(addr_of!((*sk).mark))
    };
    mark == state.upstream_mark
}

#[inline(always)]
/// A governed flow that cannot go through the proxy. `agent_down`: because no agent serves
/// (then `fail: policy` consults the identities the agent listed to fail open); otherwise the
/// agent serves but this flow cannot be redirected, and `fail: policy` fails closed.
fn not_serving(
    ctx: &SockAddrContext,
    dst: &Endpoint,
    policy: &EndpointPolicy,
    state: &AgentState,
    agent_down: bool,
) -> Decision {
    let open = match policy.fail {
        FAIL_OPEN => true,
        FAIL_BY_POLICY if agent_down => {
            // SAFETY: helper without preconditions.
            let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            let key = FailKey { cgroup_id, database_id: policy.database_id, _pad: 0 };
            // SAFETY: the value is read at once, never held across a call.
            unsafe { FAIL_OPEN_IDENTITIES.get(&key) }.is_some_and(|epoch| *epoch == state.fail_epoch)
        }
        _ => false,
    };
    count(if open { STAT_UNGOVERNED } else { STAT_REFUSED });
    emit(|event: &mut FlowEvent| {
        event.kind = if open { EVENT_UNGOVERNED } else { EVENT_REFUSED };
        // SAFETY: helper without preconditions.
        event.at_ns = unsafe { bpf_ktime_get_ns() };
        fill_origin(&mut event.origin, ctx, dst, policy, 0);
        event.origin.connect_ns = event.at_ns;
    });
    if open { Decision::Pass } else { Decision::Refuse }
}

#[inline(always)]
fn fill_origin(out: &mut FlowOrigin, ctx: &SockAddrContext, dst: &Endpoint, policy: &EndpointPolicy, family: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helpers valid for cgroup_sock_addr programs; the context pointer is the program's.
    let (cgroup_id, netns_cookie, socket_cookie) = unsafe {
        (bpf_get_current_cgroup_id(), bpf_get_netns_cookie(ctx.as_ptr()), bpf_get_socket_cookie(ctx.as_ptr()))
    };
    out.orig_dst = *dst;
    out.database_id = policy.database_id;
    out.pid = (pid_tgid >> 32) as u32;
    out.tid = pid_tgid as u32;
    out.uid = uid_gid as u32;
    out.gid = (uid_gid >> 32) as u32;
    out.cgroup_id = cgroup_id;
    out.netns_cookie = netns_cookie;
    out.socket_cookie = socket_cookie;
    out.comm = bpf_get_current_comm().unwrap_or_default();
    out.family = family;
}

/// The kernel's `__u32[4]` (each word in network byte order) as 16 address octets.
#[inline(always)]
pub fn words_to_octets(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
pub fn octets_to_words(octets: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([octets[i * 4], octets[i * 4 + 1], octets[i * 4 + 2], octets[i * 4 + 3]]);
        i += 1;
    }
    out
}
