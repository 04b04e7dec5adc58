//! Client network namespaces. A redirected flow's original destination is dialled from the
//! network namespace of the client's socket, so every address means what it means to the
//! client: a pod's `127.0.0.1` is the pod's loopback, and a destination the pod cannot route to
//! stays unreachable through the proxy too.
//!
//! The kernel records the client socket's network-namespace cookie at `connect()`; cookies are
//! unique for the life of the machine and never reused. A namespace handle (an open
//! `/proc/.../ns/net`) is found through the connecting thread or process and is trusted only
//! after a socket made in it reports that same cookie (`SO_NETNS_COOKIE`), so a pid reused by
//! another process, or a thread that moved to another namespace, can never redirect a dial.
//! Handles are cached by cookie, bounded, and dropped when idle.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// `SO_NETNS_COOKIE` (Linux 5.14+): the cookie of the namespace a socket belongs to. Neither
/// nix nor socket2 wraps it.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// Cached namespace handles (each one keeps its namespace alive while cached).
const MAX_CACHED: usize = 1024;
/// A handle unused this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// A network namespace could not be used for a client's upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the kernel recorded no network namespace for this flow")]
    Unknown,
    #[error(
        "the client's network namespace (cookie {cookie}) is gone or not reachable through process {pid} (thread {tid})"
    )]
    NotFound { cookie: u64, pid: u32, tid: u32 },
    #[error("entering network namespace (cookie {cookie}): {source}")]
    Enter { cookie: u64, source: io::Error },
    #[error("the agent's own network namespace: {0}")]
    Home(io::Error),
}

/// The network namespace a client's socket lives in.
#[derive(Debug, Clone)]
pub struct ClientNetns {
    cookie: u64,
    /// None: the agent's own namespace (no switch needed).
    handle: Option<Arc<OwnedFd>>,
}

impl ClientNetns {
    /// The namespace's cookie (what the kernel recorded for the client's socket).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Whether this is the agent's own namespace.
    pub fn is_agent_own(&self) -> bool {
        self.handle.is_none()
    }
}

struct Cached {
    handle: Arc<OwnedFd>,
    last_used: Instant,
}

/// The agent's own namespace and a cache of client namespaces by cookie.
pub struct Namespaces {
    home: OwnedFd,
    /// (device, inode) of the agent's namespace: nsfs inodes name namespaces.
    home_id: (u64, u64),
    home_cookie: u64,
    cache: Mutex<HashMap<u64, Cached>>,
}

impl Namespaces {
    /// Opens the calling thread's namespace as the agent's own: every thread of the agent runs
    /// there, and returns there after making a socket in a client's namespace.
    pub fn new() -> Result<Self, NetnsError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Home)?;
        let probe =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(NetnsError::Home)?;
        let home_cookie = netns_cookie(&probe).map_err(NetnsError::Home)?;
        let home_id = ns_id(&home).map_err(NetnsError::Home)?;
        Ok(Self { home: home.into(), home_id, home_cookie, cache: Mutex::new(HashMap::new()) })
    }

    /// The agent's own namespace cookie.
    pub fn agent_cookie(&self) -> u64 {
        self.home_cookie
    }

    /// The agent's own namespace (for connections the agent makes on its own behalf).
    pub fn agent_own(&self) -> ClientNetns {
        ClientNetns { cookie: self.home_cookie, handle: None }
    }

    /// The namespace with `cookie`, found through the thread (`tid`) or process (`pid`) that
    /// connected. Checked here for candidates found through /proc, and again (cheaply) by every
    /// socket made in it.
    pub fn find(&self, cookie: u64, pid: u32, tid: u32) -> Result<ClientNetns, NetnsError> {
        if cookie == 0 {
            return Err(NetnsError::Unknown);
        }
        if cookie == self.home_cookie {
            return Ok(ClientNetns { cookie, handle: None });
        }
        if let Some(cached) = self.lock().get_mut(&cookie) {
            cached.last_used = Instant::now();
            return Ok(ClientNetns { cookie, handle: Some(cached.handle.clone()) });
        }
        let candidates = [format!("/proc/{pid}/task/{tid}/ns/net"), format!("/proc/{pid}/ns/net")];
        for path in candidates {
            let Ok(file) = File::open(&path) else { continue };
            if ns_id(&file).is_ok_and(|id| id == self.home_id) {
                // The agent's own namespace, whose cookie is not the one wanted.
                continue;
            }
            let handle: OwnedFd = file.into();
            match self.in_namespace(&handle, || {
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).and_then(|s| netns_cookie(&s))
            }) {
                Ok(Ok(found)) if found == cookie => {
                    let handle = Arc::new(handle);
                    self.remember(cookie, handle.clone());
                    return Ok(ClientNetns { cookie, handle: Some(handle) });
                }
                Ok(_) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(NetnsError::NotFound { cookie, pid, tid })
    }

    /// A TCP socket in `ns`, verified to be there.
    pub fn tcp_socket(&self, ns: &ClientNetns, domain: socket2::Domain) -> Result<socket2::Socket, NetnsError> {
        let make = || socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP));
        let enter = |source| NetnsError::Enter { cookie: ns.cookie, source };
        let socket = match &ns.handle {
            None => make().map_err(enter)?,
            Some(handle) => self.in_namespace(handle, make)?.map_err(enter)?,
        };
        if netns_cookie(&socket).map_err(enter)? != ns.cookie {
            // Cookies are never reused: a mismatch means the handle is not what it claimed.
            return Err(NetnsError::NotFound { cookie: ns.cookie, pid: 0, tid: 0 });
        }
        Ok(socket)
    }

    /// Runs `f` with the calling thread in `target`'s namespace, then returns it home. Sockets
    /// keep the namespace they were made in, so only their creation needs the switch.
    fn in_namespace<T>(&self, target: &OwnedFd, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::Enter { cookie: 0, source: io::Error::from(e) })?;
        let out = f();
        if let Err(err) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A proxy thread stranded in a client's namespace would dial from there for every
            // later session on it: never continue in that state.
            tracing::error!(error = %err, "could not return to the agent's network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }

    fn remember(&self, cookie: u64, handle: Arc<OwnedFd>) {
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, c| now.duration_since(c.last_used) < IDLE);
            if cache.len() >= MAX_CACHED
                && let Some(oldest) = cache.iter().min_by_key(|(_, c)| c.last_used).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(cookie, Cached { handle, last_used: Instant::now() });
    }

    /// Closes handles idle for a while (a deleted pod's namespace is then released).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, c| now.duration_since(c.last_used) < IDLE);
    }

    /// Namespaces currently held.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// (device, inode) of an open namespace file.
fn ns_id(file: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The network-namespace cookie of a socket.
pub fn netns_cookie(socket: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and an out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_namespace_needs_no_switch() {
        let ns = Namespaces::new().expect("own namespace");
        let own = ns.find(ns.agent_cookie(), std::process::id(), std::process::id()).expect("found");
        assert!(own.is_agent_own());
        let socket = ns.tcp_socket(&own, socket2::Domain::IPV4).expect("socket");
        assert_eq!(netns_cookie(&socket).unwrap(), ns.agent_cookie());
        assert!(matches!(ns.find(0, 1, 1), Err(NetnsError::Unknown)));
    }

    #[test]
    fn a_cookie_no_candidate_has_is_not_found() {
        let ns = Namespaces::new().expect("own namespace");
        // Our own process is in the agent's namespace, whose cookie differs.
        let me = std::process::id();
        assert!(matches!(ns.find(ns.agent_cookie() + 1_000_000, me, me), Err(NetnsError::NotFound { .. })));
        assert_eq!(ns.cached(), 0);
    }
}
