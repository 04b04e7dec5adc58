//! getpeername4/6: a redirected client still sees the address it dialled.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext};

use crate::{connect::octets_to_words, maps::ORIG_BY_COOKIE};

pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: sock_addr context pointer, valid for the program's duration.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain data copied out of the map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie).copied() }) else {
        return 1;
    };
    if !origin.orig_dst.is_v4_mapped() {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: full-width volatile writes to the context, as the verifier requires.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(origin.orig_dst.v4_octets()));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(origin.orig_dst.port.to_be()));
    }
    1
}

pub fn getpeername6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as in getpeername4.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain data copied out of the map.
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie).copied() }) else {
        return 1;
    };
    // An AF_INET6 socket reports v4-mapped destinations v4-mapped, native ones as they were.
    let w = octets_to_words(&origin.orig_dst.addr);
    let sa = ctx.sock_addr;
    // SAFETY: as in getpeername4.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), w[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), w[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), w[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), w[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(origin.orig_dst.port.to_be()));
    }
    1
}
