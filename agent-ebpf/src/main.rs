//! Warden's kernel programs. This file holds only the entry points; each attach point's logic
//! lives in its own module.
#![no_std]
#![no_main]

mod connect;
mod maps;
mod observe;
mod peername;
mod sockops;

use aya_ebpf::{
    macros::{cgroup_sock_addr, sock_ops, tracepoint},
    programs::{SockAddrContext, SockOpsContext, TracePointContext},
};

/// connect() on AF_INET sockets: redirect governed flows to the proxy.
#[cgroup_sock_addr(connect4)]
pub fn warden_connect4(ctx: SockAddrContext) -> i32 {
    connect::connect4(&ctx)
}

/// connect() on AF_INET6 sockets: native IPv6 and v4-mapped destinations.
#[cgroup_sock_addr(connect6)]
pub fn warden_connect6(ctx: SockAddrContext) -> i32 {
    connect::connect6(&ctx)
}

/// getpeername() on AF_INET sockets: report the address the client dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn warden_getpeername4(ctx: SockAddrContext) -> i32 {
    peername::getpeername4(&ctx)
}

/// getpeername() on AF_INET6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn warden_getpeername6(ctx: SockAddrContext) -> i32 {
    peername::getpeername6(&ctx)
}

/// TCP lifecycle callbacks: publish redirected flows keyed by the client's local endpoint.
#[sock_ops]
pub fn warden_sockops(ctx: SockOpsContext) -> u32 {
    sockops::sockops(&ctx)
}

/// `sock/inet_sock_set_state`: attribute flows to observe-only databases.
#[tracepoint]
pub fn warden_observe(ctx: TracePointContext) -> u32 {
    observe::inet_sock_set_state(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
