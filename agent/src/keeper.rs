//! The keeper (`upgrade.keeper: true`): `warden run` becomes a small parent process that starts
//! the agent and keeps copies of its listening sockets, so that an agent killed or crashed is
//! replaced at once by one that takes those sockets over. Connections that arrive meanwhile wait
//! in the backlog instead of being refused, and the kernel's grace period (3 s) usually never
//! runs out.
//!
//! The keeper and each agent it starts share a `SOCK_SEQPACKET` pair (the agent's end is its
//! descriptor 3, named by `WARDEN_KEEPER_FD`), speaking the hand-over's messages:
//! - keeper to agent, at start: the sockets it kept (an empty offer when it keeps none, or when
//!   an agent serves that the new one takes over from by hand-over);
//! - agent to keeper, once it serves: its sockets (the keeper replaces what it kept);
//! - agent to keeper: `Upgrade` (SIGUSR2, `warden upgrade`): the keeper starts the successor, so
//!   the service's main process never changes (systemd, a container).
//!
//! An agent that exits with status 0 stopped on purpose (a stop, or it was replaced and
//! drained): the keeper exits with it. Any other end is a crash: the next agent starts at once
//! (after three in ten seconds, with a growing pause). SIGTERM, SIGINT and SIGHUP are passed to
//! the agent; SIGUSR2 starts a successor. A successor becomes the keeper's agent once it sends
//! its sockets; if it exits before, the agent it was to replace stays.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use crate::handover::{self, Inherited, Message};

/// Names the agent's end of its keeper channel.
pub const FD_ENV: &str = "WARDEN_KEEPER_FD";
/// The descriptor the agent finds its end at.
const CHILD_FD: RawFd = 3;
/// Set for a successor the keeper starts: it takes over by hand-over or exits.
pub const SUCCESSOR_ENV: &str = "WARDEN_KEEPER_SUCCESSOR";
/// The keeper's pid, for the agent to name it as systemd's main process while it is its parent.
const PID_ENV: &str = "WARDEN_KEEPER_PID";
static KEEPER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The keeper this agent was started by, if any.
pub fn keeper_pid() -> Option<u32> {
    KEEPER_PID.get().copied()
}

/// The agent's side: the channel to the keeper it runs under.
pub struct Keeper {
    fd: OwnedFd,
    /// Started as a successor: it must take over by hand-over.
    pub successor: bool,
}

impl Keeper {
    /// Takes the channel named in the environment, if this agent runs under a keeper.
    pub fn from_env() -> Option<Self> {
        let raw: RawFd = std::env::var(FD_ENV).ok()?.parse().ok()?;
        // SAFETY: single-threaded at this point of start-up; nothing else reads it.
        unsafe { std::env::remove_var(FD_ENV) };
        // The descriptor must be open and a seqpacket socket: a stale variable is ignored.
        // SAFETY: F_GETFD only reads the flags of whatever `raw` is, or fails.
        if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: open (checked above), and passed by the keeper to this process for this use.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if socket::getsockopt(&fd, socket::sockopt::SockType).ok() != Some(SockType::SeqPacket) {
            // Not ours to close.
            std::mem::forget(fd);
            return None;
        }
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).ok()?;
        let successor = std::env::var_os(SUCCESSOR_ENV).is_some();
        if let Some(pid) = std::env::var(PID_ENV).ok().and_then(|p| p.parse().ok()) {
            let _ = KEEPER_PID.set(pid);
        }
        // SAFETY: as above.
        unsafe {
            std::env::remove_var(SUCCESSOR_ENV);
            std::env::remove_var(PID_ENV);
        }
        Some(Self { fd, successor })
    }

    /// The sockets the keeper kept for this agent (those of the agent before it), if any.
    pub fn kept(&self) -> Result<Inherited> {
        handover::set_timeout(&self.fd, handover::STEP_TIMEOUT)?;
        Ok(handover::receive_offer(self.fd.as_raw_fd(), "the keeper")?.unwrap_or_default())
    }

    /// Gives the keeper this agent's sockets to keep.
    pub fn keep(
        &self,
        proxy: &[(std::net::SocketAddr, std::net::TcpListener)],
        metrics: Option<&(std::net::SocketAddr, std::net::TcpListener)>,
    ) -> Result<()> {
        handover::send_offer(self.fd.as_raw_fd(), proxy, metrics)
    }

    /// Tells the keeper a successor took over: this agent drains and ends.
    pub fn replaced(&self) -> Result<()> {
        handover::send(self.fd.as_raw_fd(), &Message::Replaced, &[]).context("telling the keeper")
    }

    /// Asks the keeper to start a successor.
    pub fn upgrade(&self) -> Result<()> {
        handover::send(self.fd.as_raw_fd(), &Message::Upgrade, &[]).context("asking the keeper for a successor")
    }
}

/// An agent the keeper started.
struct Child {
    process: tokio::process::Child,
    channel: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
}

impl Child {
    fn pid(&self) -> i32 {
        self.process.id().map_or(0, |p| p as i32)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if self.pid() > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
        }
    }
}

/// The sockets the keeper holds.
#[derive(Default)]
struct Kept {
    proxy: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    metrics: Option<(std::net::SocketAddr, std::net::TcpListener)>,
}

impl From<Inherited> for Kept {
    fn from(i: Inherited) -> Self {
        Self { proxy: i.proxy, metrics: i.metrics }
    }
}

/// Runs the keeper until its agent stops on purpose; returns its exit code.
pub fn keep(exe: &Path, config: &Path) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(Keeping::new(exe.to_path_buf(), config.to_path_buf()).run())
}

/// The keeper's state.
struct Keeping {
    exe: PathBuf,
    config: PathBuf,
    /// The agent (none while a restart waits).
    agent: Option<Child>,
    /// It sent its sockets: it serves.
    served: bool,
    /// It said a successor took over: it drains, and is not started again.
    replaced: bool,
    /// ... and that successor is another keeper's (its sockets are not this keeper's to keep).
    replaced_elsewhere: bool,
    /// A successor starting (it must take over from the agent by hand-over).
    successor: Option<Child>,
    /// Agents replaced by one the keeper started, draining.
    draining: Vec<tokio::process::Child>,
    kept: Kept,
    /// Agents in a row that ended before they served.
    unserved: u32,
    restart_at: Option<tokio::time::Instant>,
    stopping: bool,
}

impl Keeping {
    fn new(exe: PathBuf, config: PathBuf) -> Self {
        Self {
            exe,
            config,
            agent: None,
            served: false,
            replaced: false,
            replaced_elsewhere: false,
            successor: None,
            draining: Vec::new(),
            kept: Kept::default(),
            unserved: 0,
            restart_at: Some(tokio::time::Instant::now()),
            stopping: false,
        }
    }

    async fn run(mut self) -> Result<ExitCode> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        loop {
            tokio::select! {
                _ = sleep_until(self.restart_at) => self.restart(),
                event = child_event(self.agent.as_mut()) => match event {
                    ChildEvent::Exited(status) => if let Some(code) = self.agent_ended(status) {
                        return Ok(self.finish(code).await);
                    },
                    ChildEvent::Message(message) => self.heard_from_agent(message),
                },
                event = child_event(self.successor.as_mut()) => self.heard_from_successor(event),
                _ = reap(&mut self.draining) => {}
                _ = term.recv() => if let Some(code) = self.stop(nix::sys::signal::Signal::SIGTERM) {
                    return Ok(self.finish(code).await);
                },
                _ = int.recv() => if let Some(code) = self.stop(nix::sys::signal::Signal::SIGINT) {
                    return Ok(self.finish(code).await);
                },
                _ = hup.recv() => if let Some(a) = &self.agent { a.signal(nix::sys::signal::Signal::SIGHUP) },
                _ = usr2.recv() => self.start_successor(),
            }
        }
    }

    /// Starts the agent (at first, or after a crash) with the sockets kept.
    fn restart(&mut self) {
        self.restart_at = None;
        if self.stopping {
            return;
        }
        match start(&self.exe, &self.config, &self.kept, false) {
            Ok(child) => {
                tracing::info!(pid = child.pid(), sockets = self.kept.proxy.len(), "keeper: started the agent");
                self.agent = Some(child);
                self.served = false;
                self.replaced = false;
                self.replaced_elsewhere = false;
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "keeper: starting the agent failed");
                self.schedule_restart();
            }
        }
    }

    /// After an agent that ended without being stopped: at once after one that served (with
    /// its sockets: clients wait in their backlog); after one that did not, without them (what
    /// waits there would wait for nothing) and after a pause that doubles up to 32 s.
    fn schedule_restart(&mut self) {
        if !self.served {
            self.unserved += 1;
        }
        let pause = match self.unserved {
            0 => Duration::ZERO,
            n => {
                self.kept = Kept::default();
                Duration::from_secs(1 << (n - 1).min(5))
            }
        };
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            sockets = self.kept.proxy.len(),
            "keeper: starting the next agent"
        );
        self.served = false;
        self.restart_at = Some(tokio::time::Instant::now() + pause);
    }

    /// The agent ended; returns the keeper's exit code when the keeper ends too.
    fn agent_ended(&mut self, status: std::io::Result<std::process::ExitStatus>) -> Option<u8> {
        let code = status.as_ref().ok().and_then(|s| s.code()).unwrap_or(1).clamp(0, 255) as u8;
        let clean = status.as_ref().is_ok_and(|s| s.success());
        self.agent = None;
        if self.stopping {
            return Some(code);
        }
        if self.replaced {
            if self.replaced_elsewhere {
                tracing::info!(code, "keeper: the agent drained for another keeper's; so does the keeper end");
                return Some(code);
            }
            if let Some(successor) = self.successor.take() {
                // Ours took over (its sockets come with its offer).
                tracing::info!(pid = successor.pid(), "keeper: the agent drained; its successor is the agent");
                self.agent = Some(successor);
                self.served = false;
                self.replaced = false;
                return None;
            }
            // Ours took over and ended since: the next agent starts with the sockets.
            self.served = true;
            self.schedule_restart();
            return None;
        }
        if clean {
            // A stop (the agent was signalled itself): what was starting stops too.
            if let Some(successor) = &self.successor {
                successor.signal(nix::sys::signal::Signal::SIGTERM);
            }
            tracing::info!(code, "keeper: the agent stopped; so does the keeper");
            return Some(code);
        }
        tracing::error!(status = ?status, "keeper: the agent was killed or crashed");
        if self.successor.is_some() {
            // A successor may have taken the sockets over already: it serves (its offer says
            // so) or it ends, and the next agent starts with the sockets then.
            tracing::info!("keeper: a successor was starting; it serves, or the next agent starts when it ends");
            return None;
        }
        self.schedule_restart();
        None
    }

    fn heard_from_agent(&mut self, message: Result<Option<Received>>) {
        match message {
            Ok(Some(Received::Offer(offer))) => {
                self.kept = offer.into();
                self.served = true;
                self.unserved = 0;
                tracing::info!(sockets = self.kept.proxy.len(), "keeper: keeping the agent's sockets");
            }
            Ok(Some(Received::Upgrade)) => self.start_successor(),
            Ok(Some(Received::Replaced)) => {
                self.replaced = true;
                if self.successor.is_none() {
                    // Another keeper's agent took over: the sockets are its.
                    self.replaced_elsewhere = true;
                    self.kept = Kept::default();
                }
                tracing::info!("keeper: the agent was replaced; it drains");
            }
            Ok(None) | Err(_) => {
                if let Some(agent) = self.agent.as_mut() {
                    agent.channel = None;
                }
            }
        }
    }

    fn heard_from_successor(&mut self, event: ChildEvent) {
        match event {
            ChildEvent::Exited(status) => {
                self.successor = None;
                if self.stopping {
                    return;
                }
                if self.agent.is_none() && self.restart_at.is_none() {
                    // The agent it was to replace is gone too: the next starts with the sockets.
                    tracing::warn!(status = ?status, "keeper: the successor ended before it served, and the agent is gone");
                    self.served = true;
                    self.schedule_restart();
                } else if self.replaced && !self.replaced_elsewhere {
                    // It ended after the agent gave way to it: the agent drains, the next
                    // agent starts with the sockets.
                    tracing::warn!(status = ?status, "keeper: the successor ended after taking over; starting the next agent");
                    if let Some(previous) = self.agent.take() {
                        self.draining.push(previous.process);
                    }
                    self.served = true;
                    self.schedule_restart();
                } else {
                    tracing::warn!(status = ?status, "keeper: the successor ended before it served; the agent stays");
                }
            }
            ChildEvent::Message(Ok(Some(Received::Offer(offer)))) => {
                // It serves: it is the agent now; the one it replaced drains.
                let successor = self.successor.take().expect("it sent this");
                if let Some(previous) = self.agent.replace(successor) {
                    self.draining.push(previous.process);
                }
                self.kept = offer.into();
                self.served = true;
                self.replaced = false;
                self.replaced_elsewhere = false;
                self.unserved = 0;
                self.restart_at = None;
                tracing::info!(pid = self.agent.as_ref().map_or(0, Child::pid), "keeper: the successor serves");
            }
            ChildEvent::Message(Ok(Some(_))) => {}
            ChildEvent::Message(Ok(None) | Err(_)) => {
                if let Some(s) = self.successor.as_mut() {
                    s.channel = None;
                }
            }
        }
    }

    fn start_successor(&mut self) {
        if self.stopping || !self.served || self.replaced || self.successor.is_some() {
            tracing::warn!("keeper: no successor started (the agent does not serve yet, or one is already starting)");
            return;
        }
        // No sockets offered: it takes them over from the agent, by hand-over, or exits.
        match start(&self.exe, &self.config, &Kept::default(), true) {
            Ok(child) => {
                tracing::info!(pid = child.pid(), "keeper: started a successor");
                self.successor = Some(child);
            }
            Err(err) => tracing::error!(error = %format!("{err:#}"), "keeper: starting a successor failed"),
        }
    }

    /// A stop signal: passed to every agent; returns an exit code when there is none to wait
    /// for.
    fn stop(&mut self, signal: nix::sys::signal::Signal) -> Option<u8> {
        self.stopping = true;
        self.restart_at = None;
        for child in self.agent.iter().chain(self.successor.iter()) {
            child.signal(signal);
        }
        for process in &self.draining {
            if let Some(pid) = process.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
            }
        }
        self.agent.is_none().then_some(0)
    }

    /// Ends the other agents (a second signal ends a drain at once, with 57P01) and waits for
    /// them at most 15 s, then exits with `code`.
    async fn finish(mut self, code: u8) -> ExitCode {
        for process in &self.draining {
            if let Some(pid) = process.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        let mut others: Vec<tokio::process::Child> = self.draining.drain(..).collect();
        others.extend(self.successor.take().map(|s| s.process));
        let wait_all = async {
            for mut child in others {
                let _ = child.wait().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), wait_all).await;
        ExitCode::from(code)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Received {
    Offer(Inherited),
    Upgrade,
    Replaced,
}

async fn receive_opt(channel: Option<&tokio::io::unix::AsyncFd<OwnedFd>>) -> Result<Option<Received>> {
    let Some(channel) = channel else { return std::future::pending().await };
    loop {
        let mut guard = channel.readable().await?;
        let raw = channel.get_ref().as_raw_fd();
        let message = match guard.try_io(|fd| handover::receive(fd.as_raw_fd())) {
            Ok(m) => m?,
            Err(_would_block) => continue,
        };
        return match message {
            None => Ok(None),
            Some((Message::Upgrade, _)) => Ok(Some(Received::Upgrade)),
            Some((Message::Replaced, _)) => Ok(Some(Received::Replaced)),
            Some((first @ Message::Offer { .. }, fds)) => Ok(Some(Received::Offer(rest_of_offer(raw, first, fds)?))),
            Some((other, _)) => anyhow::bail!("unexpected {other:?} from an agent"),
        };
    }
}

/// The rest of an offer whose first message was read.
fn rest_of_offer(raw: RawFd, first: Message, fds: Vec<OwnedFd>) -> Result<Inherited> {
    let Message::Offer { proxy, metrics, last } = first else { unreachable!("an offer") };
    let mut inherited = Inherited::default();
    let mut fds = fds.into_iter();
    if fds.len() != proxy.len() + usize::from(metrics.is_some()) {
        anyhow::bail!("the agent offered {} sockets for {} addresses", fds.len(), proxy.len());
    }
    for addr in proxy {
        inherited.proxy.push((addr, handover::offered(fds.next().expect("counted"), addr)?));
    }
    if let Some(addr) = metrics {
        inherited.metrics = Some((addr, handover::offered(fds.next().expect("counted"), addr)?));
    }
    if !last {
        // The agent's own channel, blocking for the rest of what it sends at once.
        // SAFETY: `raw` is the channel's descriptor, open for as long as the caller holds it.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))?;
        handover::set_timeout(&fd, handover::STEP_TIMEOUT)?;
        let rest = handover::receive_offer(fd.as_raw_fd(), "the agent")?.unwrap_or_default();
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        inherited.proxy.extend(rest.proxy);
        if rest.metrics.is_some() {
            inherited.metrics = rest.metrics;
        }
    }
    Ok(inherited)
}

enum ChildEvent {
    Exited(std::io::Result<std::process::ExitStatus>),
    Message(Result<Option<Received>>),
}

/// The next thing an agent does: exit, or say something.
async fn child_event(child: Option<&mut Child>) -> ChildEvent {
    let Some(Child { process, channel }) = child else { return std::future::pending().await };
    tokio::select! {
        status = process.wait() => ChildEvent::Exited(status),
        message = receive_opt(channel.as_ref()) => ChildEvent::Message(message),
    }
}

/// Reaps replaced agents as they finish draining.
async fn reap(replaced: &mut Vec<tokio::process::Child>) {
    if replaced.is_empty() {
        return std::future::pending().await;
    }
    loop {
        replaced.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if replaced.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts an agent with its end of a new channel at descriptor 3, and offers it `kept`. A
/// `successor` must take over from the serving agent by hand-over, or exit.
fn start(exe: &Path, config: &Path, kept: &Kept, successor: bool) -> Result<Child> {
    let (mine, theirs) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .context("creating the keeper's channel")?;
    let theirs_raw = theirs.as_raw_fd();
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(FD_ENV, CHILD_FD.to_string())
        .env(PID_ENV, std::process::id().to_string())
        .stdin(std::process::Stdio::null());
    if successor {
        command.env(SUCCESSOR_ENV, "1");
    }
    // Until it is the keeper's to watch.
    command.kill_on_drop(true);
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if theirs_raw == CHILD_FD {
                let flags = libc::fcntl(CHILD_FD, libc::F_GETFD);
                libc::fcntl(CHILD_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(theirs_raw, CHILD_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = command.spawn().with_context(|| format!("starting {}", exe.display()))?;
    drop(theirs);
    let offered = handover::send_offer(mine.as_raw_fd(), &kept.proxy, kept.metrics.as_ref())
        .and_then(|()| Ok(nix::fcntl::fcntl(&mine, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?))
        .and_then(|_| Ok(handover::register(mine)?));
    match offered {
        Ok(channel) => Ok(Child { process, channel: Some(channel) }),
        Err(err) => {
            let _ = process.start_kill();
            Err(err)
        }
    }
}
