//! The bench's zero-work relay: the floor any proxy that sees the bytes stands on. One thread,
//! one level-triggered epoll loop: each readable socket is read once into a 64 KiB buffer and
//! written to its peer at once; what the peer cannot take yet waits (and its source is not read)
//! until the peer is writable. TCP_NODELAY on both legs, as PgBouncer and Warden set it. It
//! inspects nothing, records nothing and pools nothing.
//!
//! Run as its own process (`xtask bench-relay LISTEN TARGET`) so that its CPU time is read
//! apart from the bench's.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// One side of a relayed connection.
struct Leg {
    stream: TcpStream,
    /// The other side's index.
    peer: usize,
    /// Bytes read from the peer that this side could not take yet.
    pending: Vec<u8>,
    /// What epoll watches for on it now (changed only when it must: no syscall otherwise).
    interest: EpollFlags,
}

const LISTENER: u64 = u64::MAX;

/// Serves until killed.
pub fn serve(listen: SocketAddr, target: SocketAddr) -> Result<()> {
    // Ends with the bench, however the bench ends.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut legs: Vec<Option<Leg>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..n] {
            let token = event.data();
            if token == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = TcpStream::connect(target) else { continue };
                    for s in [&client, &server] {
                        s.set_nodelay(true)?;
                        s.set_nonblocking(true)?;
                    }
                    let mut slot = || {
                        free.pop().unwrap_or_else(|| {
                            legs.push(None);
                            legs.len() - 1
                        })
                    };
                    let (a, b) = (slot(), slot());
                    epoll.add(&client, EpollEvent::new(EpollFlags::EPOLLIN, a as u64))?;
                    epoll.add(&server, EpollEvent::new(EpollFlags::EPOLLIN, b as u64))?;
                    let interest = EpollFlags::EPOLLIN;
                    legs[a] = Some(Leg { stream: client, peer: b, pending: Vec::new(), interest });
                    legs[b] = Some(Leg { stream: server, peer: a, pending: Vec::new(), interest });
                }
                continue;
            }
            let i = token as usize;
            let Some(peer) = legs.get(i).and_then(Option::as_ref).map(|l| l.peer) else { continue };
            let flags = event.events();
            let mut closed = false;
            if flags.contains(EpollFlags::EPOLLOUT) {
                closed |= !flush(&mut legs, i);
            }
            let peer_full = legs[peer].as_ref().is_some_and(|p| !p.pending.is_empty());
            if !closed
                && !peer_full
                && flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            {
                closed |= !forward(&mut legs, i, peer, &mut buf);
            }
            if closed {
                for leg in [i, peer] {
                    if let Some(l) = legs[leg].take() {
                        let _ = epoll.delete(&l.stream);
                        free.push(leg);
                    }
                }
                continue;
            }
            for leg in [i, peer] {
                let wants = interest(&legs, leg);
                if let Some(l) = legs[leg].as_mut()
                    && l.interest != wants
                {
                    epoll.modify(&l.stream, &mut EpollEvent::new(wants, leg as u64))?;
                    l.interest = wants;
                }
            }
        }
    }
}

/// What a leg waits for: input unless its peer still holds bytes from it, output while it holds
/// bytes for itself.
fn interest(legs: &[Option<Leg>], i: usize) -> EpollFlags {
    let Some(leg) = &legs[i] else { return EpollFlags::empty() };
    let mut flags = EpollFlags::empty();
    if legs[leg.peer].as_ref().is_some_and(|p| p.pending.is_empty()) {
        flags |= EpollFlags::EPOLLIN;
    }
    if !leg.pending.is_empty() {
        flags |= EpollFlags::EPOLLOUT;
    }
    flags
}

/// Reads `i` once and writes it to `peer`; false when the connection is over.
fn forward(legs: &mut [Option<Leg>], i: usize, peer: usize, buf: &mut [u8]) -> bool {
    let Some(leg) = legs[i].as_mut() else { return false };
    let n = match leg.stream.read(buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => return true,
        Err(_) => return false,
    };
    let Some(to) = legs[peer].as_mut() else { return false };
    let mut written = 0;
    while written < n {
        match to.stream.write(&buf[written..n]) {
            Ok(0) => return false,
            Ok(k) => written += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                to.pending.extend_from_slice(&buf[written..n]);
                break;
            }
            Err(_) => return false,
        }
    }
    true
}

/// Writes what `i` holds; false when the connection is over.
fn flush(legs: &mut [Option<Leg>], i: usize) -> bool {
    let Some(leg) = legs[i].as_mut() else { return false };
    while !leg.pending.is_empty() {
        match leg.stream.write(&leg.pending) {
            Ok(0) => return false,
            Ok(k) => {
                leg.pending.drain(..k);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// The relay, started as a child process of this xtask binary.
pub struct Relay {
    child: Child,
    pub port: u16,
}

impl Relay {
    pub fn start(xtask: &Path, target: SocketAddr) -> Result<Self> {
        let port = testkit::free_port();
        let child = Command::new(xtask)
            .args(["bench-relay", &format!("127.0.0.1:{port}"), &target.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the bench relay")?;
        let relay = Relay { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(relay);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the bench relay did not start listening on 127.0.0.1:{port}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
