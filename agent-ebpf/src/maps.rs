//! Maps shared by the programs. All are pinned by name under the agent's bpffs directory so
//! that governance (and the flow table) survives an agent restart.

use agent_common::{AgentState, Endpoint, EndpointPolicy, FailKey, FlowEvent, FlowKey, FlowOrigin, STAT_COUNT};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// For `FAIL_BY_POLICY` databases: the client cgroups (per database) whose identity's policies
/// guard nothing there, with the epoch the agent found that under; under the current epoch
/// they fail open, every other fails closed.
#[map]
pub static FAIL_OPEN_IDENTITIES: LruHashMap<FailKey, u64> = LruHashMap::pinned(65536, 0);

/// Governed endpoints: exact (address, port), or (any address, port).
#[map]
pub static GOVERNED: HashMap<Endpoint, EndpointPolicy> = HashMap::pinned(agent_common::GOVERNED_MAX_ENTRIES, 0);

/// Redirected sockets by socket cookie: original destination and who connected.
#[map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, FlowOrigin> = LruHashMap::pinned(65536, 0);

/// Redirected flows between the client's SYN and the proxy's side of the handshake, by 4-tuple.
/// Removed when the record moves to `FLOW_BY_ACCEPTED`, or when the client's socket closes
/// first (a failed or abandoned connect must not leave a record another socket could claim).
#[map]
pub static FLOW_BY_CLIENT: LruHashMap<FlowKey, FlowOrigin> = LruHashMap::pinned(65536, 0);

/// Redirected flows by the cookie of the proxy's accepted socket: the proxy looks its record up
/// by the identity of the socket it accepted, never by an address another socket could reuse.
#[map]
pub static FLOW_BY_ACCEPTED: LruHashMap<u64, FlowOrigin> = LruHashMap::pinned(65536, 0);

/// Observed (not redirected) sockets by kernel socket address, from SYN_SENT until CLOSE.
#[map]
pub static OBSERVED_SOCKS: LruHashMap<u64, FlowOrigin> = LruHashMap::pinned(65536, 0);

/// Events for the agent; written without wakeups, drained on a timer.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

/// The agent's published state (single entry).
#[map]
pub static AGENT_STATE: Array<AgentState> = Array::pinned(1, 0);

/// Counters, one slot per `STAT_*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// Bumps a counter.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The policy for a destination: the exact endpoint first, then the port on any address.
#[inline(always)]
pub fn governed(dst: &Endpoint) -> Option<EndpointPolicy> {
    // SAFETY: values are plain data copied out of the map.
    unsafe {
        if let Some(p) = GOVERNED.get(dst) {
            return Some(*p);
        }
        GOVERNED.get(&Endpoint::any_address(dst.port)).copied()
    }
}

/// BPF_RB_NO_WAKEUP: waking the agent per connection costs more than the connect itself; the
/// agent drains the ring on a timer instead.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Reserves an event in the ring, lets `fill` write it in place (events are too large to build
/// on the 512-byte BPF stack next to everything else), and submits it without a wakeup.
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut FlowEvent)) {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(agent_common::STAT_EVENTS_LOST);
        return;
    };
    // SAFETY: the reservation is sized for a FlowEvent; every field is written by zeroing first.
    unsafe {
        let event = entry.as_mut_ptr();
        core::ptr::write_bytes(event, 0, 1);
        fill(&mut *event);
    }
    entry.submit(BPF_RB_NO_WAKEUP);
}
