//! Restart and upgrade without dropping a session: the serving agent hands its listening
//! sockets to the agent that replaces it, then serves its own live sessions until they end or
//! the drain deadline passes.
//!
//! The two agents talk over a unix `SOCK_SEQPACKET` socket in the state directory (one JSON
//! message per packet; the sockets travel with the offer as `SCM_RIGHTS`):
//!
//! ```text
//! successor                     serving agent
//!   Hello{pid}          ->
//!                       <-      Offer{proxy addrs, metrics addr} + the listening sockets
//!   (opens the audit ring beside it, loads policies, binds the admin socket)
//!   Attaching           ->      stops its heartbeat: the successor's state is published next
//!                       <-      Paused
//!   (attaches the programs, publishes its heartbeat, accepts on the sockets)
//!   Serving             ->      stops accepting (the sockets stay open: the successor holds
//!                               them), refuses its held statements, drains
//!                       <-      Draining{sessions, deadline_s}
//! ```
//!
//! The listening sockets are never closed in between, so the kernel always finds a listener and
//! connections queue in the backlog rather than being refused. Until `Serving` nothing is lost
//! if the successor fails: the serving agent takes the kernel state back and carries on; a
//! successor that cannot finish while the agent it replaces still runs exits rather than serve
//! beside it. Each side checks the other: the agent's user, in the agent's own user namespace,
//! with at least the agent's capabilities, pinned by a pidfd so that a recycled pid cannot pass
//! for it (whoever passes could attach the programs itself anyway).

use std::{
    io::{IoSlice, IoSliceMut},
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};
use serde::{Deserialize, Serialize};

/// Largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most sockets one message carries (the kernel's SCM_MAX_FD is 253): an offer of more (one
/// per worker and address) is sent in several.
const MAX_FDS: usize = 200;
/// How long either side waits for the other's next message, except the successor's start-up.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the serving agent waits for its successor to serve once it attached (start-up
/// includes the Kubernetes watches' first lists, up to 15 s).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the serving agent listens for its successor.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

/// What the two agents say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    Hello {
        pid: u32,
        version: String,
    },
    /// Proxy listeners (one per worker and address) and the metrics listener, in the order of
    /// the sockets attached; `last` ends the offer.
    Offer {
        proxy: Vec<SocketAddr>,
        metrics: Option<SocketAddr>,
        last: bool,
    },
    Attaching,
    Paused,
    Serving,
    Draining {
        sessions: usize,
        deadline_s: u64,
    },
    Refused {
        why: String,
    },
    /// From an agent to its keeper (`keeper`): start a successor.
    Upgrade,
    /// From an agent to its keeper: a successor took over, this agent drains and ends.
    Replaced,
}

fn nix_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

pub(crate) fn send(fd: RawFd, message: &Message, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    socket::sendmsg::<()>(fd, &[IoSlice::new(&bytes)], cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(nix_io)?;
    Ok(())
}

/// One message and the sockets that came with it; `None` when the other side closed.
pub(crate) fn receive(fd: RawFd) -> std::io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(nix_io)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(nix_io)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel installed these descriptors in this process for us.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds, msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC))
    };
    if n == 0 {
        return Ok(None);
    }
    if truncated {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a hand-over message was truncated"));
    }
    let message =
        serde_json::from_slice(&buf[..n]).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((message, fds)))
}

pub(crate) fn set_timeout(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv).context("setting the hand-over socket's timeout")?;
    // Connecting (to a full backlog) and sending wait no longer.
    socket::setsockopt(fd, sockopt::SendTimeout, &tv).context("setting the hand-over socket's timeout")?;
    Ok(())
}

/// The process at the other end of a hand-over socket, pinned by its pidfd.
pub struct Peer {
    pub pid: u32,
    uid: u32,
    pidfd: OwnedFd,
}

impl Peer {
    fn of(fd: &OwnedFd) -> Result<Self> {
        let creds = socket::getsockopt(fd, sockopt::PeerCredentials).context("reading the peer's credentials")?;
        let pidfd = socket::getsockopt(fd, sockopt::PeerPidfd).context("reading the peer's pidfd")?;
        Ok(Self { pid: u32::try_from(creds.pid()).unwrap_or(0), uid: creds.uid(), pidfd })
    }

    /// Whether the process still runs (its pidfd turns readable when it exits).
    pub fn alive(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Whether it may hand sockets over or take them: the agent's user, in the agent's user
    /// namespace (inside one of its own, any user has every capability), with at least the
    /// agent's effective capabilities; read from /proc, then the pidfd confirms the process read
    /// was this peer (not a later one with its pid).
    fn check(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let own_uid = nix::unistd::geteuid().as_raw();
        if self.uid != own_uid {
            bail!("it runs as uid {}, not the agent's uid {own_uid}", self.uid);
        }
        let userns = |pid: &str| -> Result<(u64, u64)> {
            let m = std::fs::metadata(format!("/proc/{pid}/ns/user"))?;
            Ok((m.dev(), m.ino()))
        };
        if userns(&self.pid.to_string())? != userns("self")? {
            bail!("it runs in a user namespace other than the agent's");
        }
        let caps = |p: procfs::process::Process| -> Result<u64> { Ok(p.status()?.capeff) };
        let own = caps(procfs::process::Process::myself()?)?;
        let theirs = caps(procfs::process::Process::new(self.pid as i32)?)?;
        if own & !theirs != 0 {
            bail!("it lacks capabilities the agent has (CapEff {theirs:016x}, the agent's {own:016x})");
        }
        if !self.alive() {
            bail!("it exited while it was checked");
        }
        Ok(())
    }
}

/// The sockets an agent took over from the one it replaces.
#[derive(Default)]
pub struct Inherited {
    pub proxy: Vec<(SocketAddr, std::net::TcpListener)>,
    pub metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Inherited {
    /// Takes the inherited proxy listeners bound to `addr`.
    pub fn take_proxy(&mut self, addr: SocketAddr) -> Vec<std::net::TcpListener> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.proxy).into_iter().partition(|(a, _)| *a == addr);
        self.proxy = rest;
        mine.into_iter().map(|(_, l)| l).collect()
    }

    /// Takes the inherited metrics listener if it is bound to `addr`.
    pub fn take_metrics(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        match self.metrics.take() {
            Some((a, l)) if a == addr => Some(l),
            other => {
                self.metrics = other;
                None
            }
        }
    }
}

/// The agent being replaced, as its successor sees it.
pub struct Predecessor {
    fd: OwnedFd,
    pub peer: Peer,
}

impl Predecessor {
    /// Asks the agent serving now (if any) for its listening sockets. `None`: no agent answers
    /// (none runs, or it stopped: a stale socket file, or it exited meanwhile).
    pub fn find(state_dir: &Path) -> Result<Option<(Self, Inherited)>> {
        let path = socket_path(state_dir);
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
            .context("creating the hand-over socket")?;
        set_timeout(&fd, STEP_TIMEOUT)?;
        let addr = UnixAddr::new(&path).context("the hand-over socket's path")?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(nix::Error::ENOENT | nix::Error::ECONNREFUSED) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
        let peer = Peer::of(&fd)?;
        peer.check().with_context(|| {
            format!("{} is served by pid {}, which may not hand the agent's sockets over", path.display(), peer.pid)
        })?;
        let hello = Message::Hello { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into() };
        send(fd.as_raw_fd(), &hello, &[]).context("greeting the serving agent")?;
        match receive_offer(fd.as_raw_fd(), "the serving agent")? {
            Some(inherited) => Ok(Some((Self { fd, peer }, inherited))),
            // It exited meanwhile: start as if it had not been there.
            None if !peer.alive() => Ok(None),
            None => bail!(
                "the serving agent (pid {}) closed the hand-over without offering its sockets (its log says why); \
                 not starting beside it",
                peer.pid
            ),
        }
    }

    /// Tells the agent being replaced that this one attaches now: it stops writing the kernel's
    /// state.
    pub fn attaching(&self) -> Result<()> {
        send(self.fd.as_raw_fd(), &Message::Attaching, &[]).context("telling the serving agent")?;
        match receive(self.fd.as_raw_fd()).context("waiting for the serving agent to pause")? {
            Some((Message::Paused, _)) => Ok(()),
            Some((other, _)) => bail!("the serving agent sent {other:?} instead of pausing"),
            None => bail!("the serving agent went away before pausing"),
        }
    }

    /// Tells the agent being replaced that this one serves: it stops accepting and drains.
    /// Returns what it said: its live sessions and drain deadline, or that it refused.
    pub fn serving(&self) -> Confirmed {
        let _ = set_timeout(&self.fd, START_TIMEOUT);
        // A refusal may already wait to be read, even when the agent closed its end since.
        let told = send(self.fd.as_raw_fd(), &Message::Serving, &[]);
        match (receive(self.fd.as_raw_fd()), told) {
            (Ok(Some((Message::Draining { sessions, deadline_s }, _))), _) => {
                Confirmed::Draining { sessions, deadline_s }
            }
            (Ok(Some((Message::Refused { why }, _))), _) => Confirmed::Refused(why),
            (_, Err(e)) => Confirmed::NotTold(e.to_string()),
            (Ok(Some((other, _))), Ok(())) => Confirmed::Unanswered(format!("it sent {other:?}")),
            (Ok(None), Ok(())) => Confirmed::Unanswered("it closed the hand-over".into()),
            (Err(e), Ok(())) => Confirmed::Unanswered(e.to_string()),
        }
    }

    /// Waits (blocking) until the replaced agent has exited.
    pub fn wait_exit(self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let mut fds = [PollFd::new(self.peer.pidfd.as_fd(), PollFlags::POLLIN)];
        while matches!(poll(&mut fds, PollTimeout::NONE), Ok(0) | Err(nix::Error::EINTR)) {}
    }
}

/// Receives an offer (in as many messages as it comes); `None` when the other side closed
/// first.
pub(crate) fn receive_offer(fd: RawFd, from: &str) -> Result<Option<Inherited>> {
    let mut inherited = Inherited::default();
    loop {
        let (offer, fds) = match receive(fd) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("waiting for the offer of {from}")),
        };
        let (proxy, metrics, last) = match offer {
            Message::Offer { proxy, metrics, last } => (proxy, metrics, last),
            Message::Refused { why } => bail!("{from} refused the hand-over: {why}"),
            other => bail!("{from} sent {other:?} instead of its offer"),
        };
        if fds.len() != proxy.len() + usize::from(metrics.is_some()) {
            bail!("{from} offered {} sockets for {} addresses", fds.len(), proxy.len());
        }
        let mut fds = fds.into_iter();
        for addr in proxy {
            inherited.proxy.push((addr, offered(fds.next().expect("counted above"), addr)?));
        }
        if let Some(addr) = metrics {
            inherited.metrics = Some((addr, offered(fds.next().expect("counted above"), addr)?));
        }
        if last {
            return Ok(Some(inherited));
        }
    }
}

/// Sends an offer of sockets (their descriptors are duplicated into the receiver), in as many
/// messages as it takes.
pub(crate) fn send_offer(
    fd: RawFd,
    proxy: &[(SocketAddr, std::net::TcpListener)],
    metrics: Option<&(SocketAddr, std::net::TcpListener)>,
) -> Result<()> {
    let chunks: Vec<&[(SocketAddr, std::net::TcpListener)]> = proxy.chunks(MAX_FDS - 1).collect();
    let count = chunks.len().max(1);
    for i in 0..count {
        let chunk = chunks.get(i).copied().unwrap_or_default();
        let last = i + 1 == count;
        let metrics = metrics.filter(|_| last);
        let mut fds: Vec<RawFd> = chunk.iter().map(|(_, l)| l.as_raw_fd()).collect();
        fds.extend(metrics.map(|(_, l)| l.as_raw_fd()));
        let offer =
            Message::Offer { proxy: chunk.iter().map(|(a, _)| *a).collect(), metrics: metrics.map(|(a, _)| *a), last };
        send(fd, &offer, &fds).context("sending the listening sockets")?;
    }
    Ok(())
}

/// What the agent being replaced answers when told its successor serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmed {
    Draining {
        sessions: usize,
        deadline_s: u64,
    },
    /// It gave up waiting and serves on.
    Refused(String),
    /// Told, but no answer came (late, or it exited): once told, it drains.
    Unanswered(String),
    /// It could not be told (it closed the hand-over): it did not give way.
    NotTold(String),
}

/// An offered socket, checked: a listening TCP socket bound where the offer says.
pub(crate) fn offered(fd: OwnedFd, addr: SocketAddr) -> Result<std::net::TcpListener> {
    if !socket::getsockopt(&fd, sockopt::AcceptConn).context("reading an offered socket")? {
        bail!("an offered socket for {addr} is not listening");
    }
    if socket::getsockopt(&fd, sockopt::SockType).context("reading an offered socket")? != SockType::Stream {
        bail!("an offered socket for {addr} is not a stream socket");
    }
    let listener = std::net::TcpListener::from(fd);
    let local = listener.local_addr().context("reading an offered socket's address")?;
    if local != addr {
        bail!("an offered socket is bound to {local}, not {addr}");
    }
    Ok(listener)
}

/// Registers a socket with the runtime's reactor.
pub(crate) fn register(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd's descriptor stays open, and the same, for as long as it is owned.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Where the serving agent waits for a successor.
pub struct Listener {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl Listener {
    /// Binds the hand-over socket (replacing a stale one, or the one of the agent this one
    /// replaced), owner-only.
    pub fn bind(state_dir: &Path) -> Result<Self> {
        use std::os::unix::fs::FileTypeExt as _;
        let path = socket_path(state_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?
            }
            Ok(_) => bail!("{} exists and is not a socket: not replacing it", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("creating the hand-over socket")?;
        let addr = UnixAddr::new(&path).context("the hand-over socket's path")?;
        // Created owner-only: no window in which others may connect.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = socket::bind(fd.as_raw_fd(), &addr);
        nix::sys::stat::umask(umask);
        bound.with_context(|| format!("binding {}", path.display()))?;
        socket::listen(&fd, Backlog::new(4).expect("a small backlog")).context("listening on the hand-over socket")?;
        Ok(Self { fd: register(fd).context("registering the hand-over socket")? })
    }

    /// The next successor that connects.
    pub async fn accept(&self) -> std::io::Result<Successor> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK).map_err(nix_io)
            }) {
                // SAFETY: accept4 returned a new descriptor we own.
                Ok(Ok(raw)) => {
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(Successor { fd: register(fd)? });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// An agent asking to take over, as the serving agent sees it.
pub struct Successor {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl Successor {
    /// Who asks (pinned by its pidfd), and why it may not take over.
    pub fn check_peer(&self) -> Result<Peer> {
        let peer = Peer::of(self.fd.get_ref())?;
        peer.check().with_context(|| format!("pid {} may not take the agent's sockets", peer.pid))?;
        Ok(peer)
    }

    /// The next message, waiting at most `timeout`; `None` when the successor went away.
    pub async fn receive(&self, timeout: Duration) -> Result<Option<Message>> {
        let read = async {
            loop {
                let mut guard = self.fd.readable().await?;
                match guard.try_io(|fd| receive(fd.as_raw_fd())) {
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(m)) => Ok(m.map(|(m, _)| m)),
            Ok(Err(e)) => Err(e).context("reading from the successor"),
            Err(_) => bail!("the successor said nothing for {} s", timeout.as_secs()),
        }
    }

    pub fn send(&self, message: &Message) -> Result<()> {
        send(self.fd.get_ref().as_raw_fd(), message, &[]).context("writing to the successor")
    }

    /// Sends the offer with the sockets (their descriptors are duplicated into the successor),
    /// in as many messages as it takes.
    pub fn offer(
        &self,
        proxy: &[(SocketAddr, std::net::TcpListener)],
        metrics: Option<&(SocketAddr, std::net::TcpListener)>,
    ) -> Result<()> {
        send_offer(self.fd.get_ref().as_raw_fd(), proxy, metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sockets_cross_over_and_each_step_is_answered() {
        let tmp = crate::test_dir("warden-handover-test-");
        let dir = tmp.path().to_path_buf();
        assert!(Predecessor::find(&dir).unwrap().is_none(), "nobody serves: nothing to take over");
        let listener = Listener::bind(&dir).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = metrics_tcp.local_addr().unwrap();
        let serving = async {
            let successor = listener.accept().await.unwrap();
            let peer = successor.check_peer().unwrap();
            assert_eq!(peer.pid, std::process::id());
            assert!(peer.alive());
            assert!(matches!(successor.receive(STEP_TIMEOUT).await.unwrap(), Some(Message::Hello { .. })));
            // More sockets than one message carries: the offer comes in several.
            let copies: Vec<_> = (0..450).map(|_| (addr, tcp.try_clone().unwrap())).collect();
            successor.offer(&copies, Some(&(metrics, metrics_tcp.try_clone().unwrap()))).unwrap();
            assert_eq!(successor.receive(STEP_TIMEOUT).await.unwrap(), Some(Message::Attaching));
            successor.send(&Message::Paused).unwrap();
            assert_eq!(successor.receive(STEP_TIMEOUT).await.unwrap(), Some(Message::Serving));
            successor.send(&Message::Draining { sessions: 3, deadline_s: 60 }).unwrap();
            successor
        };
        let dir2 = dir.clone();
        let taking = tokio::task::spawn_blocking(move || {
            let (predecessor, mut inherited) = Predecessor::find(&dir2).unwrap().expect("an agent serves");
            let taken = inherited.take_proxy(addr);
            assert_eq!(taken.len(), 450);
            assert!(inherited.take_metrics(metrics).is_some());
            // The very socket: a connection made to it is accepted through the copy.
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (accepted, _) = taken[0].accept().unwrap();
            assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
            predecessor.attaching().unwrap();
            assert_eq!(predecessor.serving(), Confirmed::Draining { sessions: 3, deadline_s: 60 });
            predecessor
        });
        let (successor, predecessor) = tokio::join!(serving, taking);
        let predecessor = predecessor.unwrap();
        drop(successor);
        // The "other agent" is this very process: it runs.
        assert!(predecessor.peer.alive());
    }
}
