//! `#[repr(C)]` types shared by the kernel programs (agent-ebpf) and the agent.
//!
//! Every type has explicit padding fields and a size assertion: the verifier rejects reads of
//! uninitialised stack bytes, and both sides must agree on the layout to the byte.
#![no_std]

/// Address families as the kernel numbers them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// `EndpointPolicy::mode`: connections are redirected through the proxy.
pub const MODE_ENFORCE: u32 = 1;
/// `EndpointPolicy::mode`: connections are attributed and recorded, never redirected.
pub const MODE_OBSERVE: u32 = 2;

/// `EndpointPolicy::fail`: when the agent is not serving, connect() fails with EPERM.
pub const FAIL_CLOSED: u32 = 0;
/// `EndpointPolicy::fail`: when the agent is not serving, the flow goes direct, flagged ungoverned.
pub const FAIL_OPEN: u32 = 1;
/// `EndpointPolicy::fail`: when the agent is not serving, a flow from a cgroup the agent listed
/// in `FAIL_OPEN_IDENTITIES` for the database, under the current `AgentState::fail_epoch`, goes
/// direct (its identity's policies guard nothing there); any other is refused.
pub const FAIL_BY_POLICY: u32 = 2;

/// The agent's heartbeat older than this means "not serving" to the kernel programs.
pub const HEARTBEAT_STALE_NS: u64 = 3_000_000_000;
/// Entries the kernel's governed-endpoint table holds.
pub const GOVERNED_MAX_ENTRIES: u32 = 1024;

/// `FlowOrigin::flags`: two sockets published a record under the same 4-tuple (a socket in
/// another network namespace using the same addresses): the flow is refused, never attributed
/// to either.
pub const FLOW_CONFLICT: u32 = 1;

/// `FlowEvent::kind` values.
pub const EVENT_UNGOVERNED: u32 = 1;
pub const EVENT_REFUSED: u32 = 2;
pub const EVENT_OBSERVED_OPEN: u32 = 3;
pub const EVENT_OBSERVED_CLOSE: u32 = 4;

/// Indexes into the per-CPU `STATS` array.
pub const STAT_REDIRECTED: u32 = 0;
pub const STAT_EXEMPTED: u32 = 1;
pub const STAT_UNGOVERNED: u32 = 2;
pub const STAT_REFUSED: u32 = 3;
pub const STAT_OBSERVED: u32 = 4;
pub const STAT_EVENTS_LOST: u32 = 5;
pub const STAT_FLOWS_RECORDED: u32 = 6;
/// Flow records handed to an accepted proxy socket.
pub const STAT_FLOWS_ACCEPTED: u32 = 7;
/// Flow records dropped because the client's socket closed before the proxy's side existed.
pub const STAT_FLOWS_ABANDONED: u32 = 8;
pub const STAT_COUNT: u32 = 9;

/// An IP endpoint. IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`) so one key type covers
/// AF_INET sockets, dual-stack AF_INET6 sockets dialling v4-mapped addresses, and native IPv6.
/// The port is in host byte order. An all-zero address is the "any address" wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

impl Endpoint {
    /// An endpoint from an IPv4 address in network byte order (as the kernel hands it over).
    pub const fn from_v4_octets(octets: [u8; 4], port: u16) -> Self {
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]],
            port,
            _pad: [0; 2],
        }
    }

    pub const fn from_v6_octets(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, _pad: [0; 2] }
    }

    /// The wildcard key for "this port on any address".
    pub const fn any_address(port: u16) -> Self {
        Self { addr: [0; 16], port, _pad: [0; 2] }
    }

    pub const fn is_v4_mapped(&self) -> bool {
        let a = &self.addr;
        a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && a[3] == 0
            && a[4] == 0
            && a[5] == 0
            && a[6] == 0
            && a[7] == 0
            && a[8] == 0
            && a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
    }

    /// The IPv4 address in network byte order, for v4-mapped endpoints.
    pub const fn v4_octets(&self) -> [u8; 4] {
        [self.addr[12], self.addr[13], self.addr[14], self.addr[15]]
    }

    pub const fn is_unset(&self) -> bool {
        self.port == 0
    }
}

/// What the agent declared about a governed endpoint (value of `GOVERNED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// Index of the database in the agent's configuration.
    pub database_id: u32,
    /// `MODE_ENFORCE` or `MODE_OBSERVE`.
    pub mode: u32,
    /// `FAIL_CLOSED` or `FAIL_OPEN`.
    pub fail: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointPolicy>() == 16);

/// Who opened a flow and where it was going, captured in the connecting task's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowOrigin {
    /// The destination the client dialled (before any redirect).
    pub orig_dst: Endpoint,
    pub database_id: u32,
    /// Thread-group id (the process id) in the initial pid namespace.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Network-namespace cookie of the socket (0 where the hook cannot read it).
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// CLOCK_MONOTONIC at connect().
    pub connect_ns: u64,
    pub comm: [u8; 16],
    /// Socket family (`AF_INET` or `AF_INET6`; a dual-stack socket dialling `::ffff:a.b.c.d` is
    /// `AF_INET6` with a v4-mapped `orig_dst`).
    pub family: u32,
    /// `FLOW_*` flags.
    pub flags: u32,
    /// CLOCK_MONOTONIC when the proxy's side of the connection was established (the record is
    /// bound to that accepted socket from then on; 0 before).
    pub established_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowOrigin>() == 104);

/// A redirected connection as both of its ends see it: the client's local endpoint and the
/// proxy listener it was sent to. The same 4-tuple is what the proxy's accepted socket reports,
/// so the kernel can hand the record from the client's socket to the proxy's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub client: Endpoint,
    pub proxy: Endpoint,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Key of `FAIL_OPEN_IDENTITIES`: a client cgroup and a database (its index in the config).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FailKey {
    pub cgroup_id: u64,
    pub database_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FailKey>() == 16);

/// State the agent publishes to the kernel programs (single entry of `AGENT_STATE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentState {
    /// CLOCK_MONOTONIC of the agent's last heartbeat.
    pub heartbeat_ns: u64,
    /// The agent's own cgroup v2 id: with `upstream_mark`, exempts its upstream connections.
    pub agent_cgroup_id: u64,
    /// Proxy listener for IPv4 (and v4-mapped) flows, v4-mapped.
    pub proxy_v4: Endpoint,
    /// Proxy listener for native IPv6 flows (unset: native IPv6 flows cannot be redirected).
    pub proxy_v6: Endpoint,
    /// 1 while the agent serves; 0 after a clean shutdown.
    pub serving: u32,
    /// SO_MARK the agent sets on its upstream sockets.
    pub upstream_mark: u32,
    /// Cookie of the network namespace the proxy listens in: only connections accepted there
    /// are the proxy's (another namespace may have a listener on the same address).
    pub agent_netns_cookie: u64,
    /// `FAIL_OPEN_IDENTITIES` entries hold the epoch they were found under: only those equal to
    /// this one count (the agent moves it with every policy set and every start).
    pub fail_epoch: u64,
}
const _: () = assert!(core::mem::size_of::<AgentState>() == 80);

/// A record the kernel programs hand to the agent through the `FLOW_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC when the event happened.
    pub at_ns: u64,
    /// Pairs the open and close events of one observed socket (opaque; never shown).
    pub sock_id: u64,
    pub origin: FlowOrigin,
    /// The client's local endpoint, where known (observed flows once established).
    pub client: Endpoint,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 152);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made of integers and byte arrays, with explicit
    // padding, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::EndpointPolicy {}
    unsafe impl aya::Pod for super::FlowOrigin {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::AgentState {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::FailKey {}
}
