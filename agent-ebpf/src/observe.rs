//! `sock/inet_sock_set_state`: attribute TCP flows to observe-only databases, without redirect.
//!
//! The SYN_SENT transition happens inside connect(), in the client's context, so the task's
//! identity is captured there; the 4-tuple is complete only once ESTABLISHED (the source port
//! is assigned after SYN_SENT), and CLOSE ends the record.

use agent_common::{
    AF_INET, EVENT_OBSERVED_CLOSE, EVENT_OBSERVED_OPEN, Endpoint, FlowEvent, FlowOrigin, MODE_OBSERVE, STAT_OBSERVED,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_ktime_get_ns,
    },
    programs::TracePointContext,
};

use crate::maps::{OBSERVED_SOCKS, count, emit, governed};

// Field offsets from /sys/kernel/tracing/events/sock/inet_sock_set_state/format (stable ABI).
const SKADDR: usize = 8;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const DPORT: usize = 26;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;
const SADDR: usize = 32;
const DADDR: usize = 36;
const SADDR_V6: usize = 40;
const DADDR_V6: usize = 56;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

pub fn inet_sock_set_state(ctx: &TracePointContext) -> u32 {
    // SAFETY: offsets come from the tracepoint's format; reads are bounds-checked by the helper.
    unsafe { try_observe(ctx) }.unwrap_or(0)
}

unsafe fn try_observe(ctx: &TracePointContext) -> Result<u32, i32> {
    // SAFETY: see inet_sock_set_state.
    unsafe {
        if ctx.read_at::<u16>(PROTOCOL)? != IPPROTO_TCP {
            return Ok(0);
        }
        let newstate: i32 = ctx.read_at(NEWSTATE)?;
        let skaddr: u64 = ctx.read_at(SKADDR)?;
        match newstate {
            TCP_SYN_SENT => {
                let dst = endpoint(ctx, DADDR, DADDR_V6, DPORT)?;
                let Some(policy) = governed(&dst) else {
                    return Ok(0);
                };
                if policy.mode != MODE_OBSERVE {
                    return Ok(0);
                }
                let pid_tgid = bpf_get_current_pid_tgid();
                let uid_gid = bpf_get_current_uid_gid();
                let origin = FlowOrigin {
                    orig_dst: dst,
                    database_id: policy.database_id,
                    pid: (pid_tgid >> 32) as u32,
                    tid: pid_tgid as u32,
                    uid: uid_gid as u32,
                    gid: (uid_gid >> 32) as u32,
                    cgroup_id: bpf_get_current_cgroup_id(),
                    connect_ns: bpf_ktime_get_ns(),
                    comm: bpf_get_current_comm().unwrap_or_default(),
                    family: ctx.read_at::<u16>(FAMILY)? as u32,
                    ..FlowOrigin::default()
                };
                let _ = OBSERVED_SOCKS.insert(&skaddr, &origin, 0);
            }
            TCP_ESTABLISHED | TCP_CLOSE => {
                let Some(origin) = OBSERVED_SOCKS.get(&skaddr) else {
                    return Ok(0);
                };
                let client = endpoint(ctx, SADDR, SADDR_V6, SPORT)?;
                emit(|event: &mut FlowEvent| {
                    event.kind = if newstate == TCP_CLOSE { EVENT_OBSERVED_CLOSE } else { EVENT_OBSERVED_OPEN };
                    event.at_ns = bpf_ktime_get_ns();
                    event.sock_id = skaddr;
                    event.origin = *origin;
                    event.client = client;
                });
                if newstate == TCP_CLOSE {
                    let _ = OBSERVED_SOCKS.remove(&skaddr);
                } else {
                    count(STAT_OBSERVED);
                }
            }
            _ => {}
        }
        Ok(0)
    }
}

unsafe fn endpoint(ctx: &TracePointContext, v4: usize, v6: usize, port: usize) -> Result<Endpoint, i32> {
    // SAFETY: see inet_sock_set_state.
    unsafe {
        let port: u16 = ctx.read_at(port)?; // host byte order in this tracepoint
        if ctx.read_at::<u16>(FAMILY)? as u32 == AF_INET {
            Ok(Endpoint::from_v4_octets(ctx.read_at(v4)?, port))
        } else {
            Ok(Endpoint::from_v6_octets(ctx.read_at(v6)?, port))
        }
    }
}
