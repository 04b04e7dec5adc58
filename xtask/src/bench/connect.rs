//! Connection set-up and scale: what a new connection costs through each path (p50 and p99, to
//! ReadyForQuery and to a first statement's answer), and 1,000 concurrent sessions through
//! Warden (memory per idle and per active session, the active ones' throughput).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A PostgreSQL session opened by hand (trust authentication, user and database `postgres`).
pub struct Session {
    stream: TcpStream,
}

impl Session {
    /// Connects and reads up to ReadyForQuery; returns the session and the time that took.
    pub fn open(host: &str, port: u16) -> Result<(Self, Duration)> {
        let started = Instant::now();
        let stream = TcpStream::connect((host, port)).with_context(|| format!("connecting to {host}:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut session = Session { stream };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        session.stream.write_all(&packet)?;
        session.until_ready()?;
        Ok((session, started.elapsed()))
    }

    /// Sends a simple query and reads to ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Result<()> {
        let mut packet = vec![b'Q'];
        packet.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        packet.extend_from_slice(sql.as_bytes());
        packet.push(0);
        self.stream.write_all(&packet)?;
        self.until_ready()
    }

    fn until_ready(&mut self) -> Result<()> {
        loop {
            let mut head = [0u8; 5];
            self.stream.read_exact(&mut head).context("reading the server's answer")?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            self.stream.read_exact(&mut body)?;
            match head[0] {
                b'Z' => return Ok(()),
                b'E' => bail!("the server refused: {}", String::from_utf8_lossy(&body).replace('\0', " ")),
                b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                    bail!("the server asks for a password (trust expected)")
                }
                _ => {}
            }
        }
    }

    /// Terminate, then close.
    pub fn close(mut self) {
        let _ = self.stream.write_all(&[b'X', 0, 0, 0, 4]);
    }
}

/// One connection's set-up: to ReadyForQuery, and to the answer of its first statement.
pub fn connect_once(host: &str, port: u16) -> Result<(f64, f64)> {
    let (mut session, ready) = Session::open(host, port)?;
    let started = Instant::now();
    session.query("select 1")?;
    let first = started.elapsed();
    session.close();
    Ok((ready.as_secs_f64() * 1e6, (ready + first).as_secs_f64() * 1e6))
}

/// The `q`-quantile (0..=1) of `v` (sorted in place).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A memory figure of `pid` from `/proc/PID/status` (`VmRSS`: resident now, `VmHWM`: its
/// peak), in KiB; 0 when the process is gone.
pub fn status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The agent's resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS")
}

/// Opens `n` sessions, each having run one statement (as a pool's idle connection has).
pub fn open_idle(host: &str, port: u16, n: usize) -> Result<Vec<Session>> {
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let (mut s, _) = Session::open(host, port).with_context(|| format!("opening idle session {i}"))?;
        s.query("select 1")?;
        sessions.push(s);
    }
    Ok(sessions)
}

/// This process may hold as many sockets as its hard limit allows.
pub fn raise_fd_limit() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}
