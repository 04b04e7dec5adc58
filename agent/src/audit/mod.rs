//! Audit records. Sessions hand records to a single writer task through a bounded queue, so
//! the proxy never waits on the disk; a full queue drops the record and counts it.
//!
//! The sink is a JSON-lines file for now; the per-host memory-mapped ring replaces it, keeping
//! these record shapes.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

pub mod ring;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::identity::Identity;

/// Identifies one proxied or observed connection across its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// What happened, with who did it. Field names are stable: tests and operators read them.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A redirected connection reached the proxy and was attributed.
    ConnectionOpen {
        session: SessionId,
        database: String,
        orig_dst: SocketAddr,
        client: SocketAddr,
        /// The agent's local address toward the database (what the server sees as its client).
        upstream_local: Option<SocketAddr>,
        /// The database user and database name from the start-up message.
        db_user: Option<String>,
        db_name: Option<String>,
        application_name: Option<String>,
        client_tls: bool,
        upstream_tls: bool,
        /// The connection carried a CancelRequest, not a session.
        cancel_request: bool,
        identity: Identity,
    },
    /// A proxied connection ended.
    ConnectionClose {
        session: SessionId,
        database: String,
        bytes_from_client: u64,
        bytes_from_server: u64,
        /// Statements the server completed, and rows it returned.
        statements: u64,
        rows: u64,
        duration_ms: u64,
        /// Why it ended abnormally, and who caused it.
        error: Option<String>,
    },
    /// The proxy refused a connection (not created by the redirect, or a loop).
    ProxyRefused { client: SocketAddr, reason: String },
    /// A governed connection went direct because the agent was not serving (`fail: open`).
    Ungoverned { database: String, orig_dst: SocketAddr, identity: Identity },
    /// A governed connection was refused because the agent was not serving (`fail: closed`).
    RefusedNotServing { database: String, orig_dst: SocketAddr, identity: Identity },
    /// A connection to an observe-only database was established (not redirected).
    Observed { session: SessionId, database: String, orig_dst: SocketAddr, client: SocketAddr, identity: Identity },
    /// An observed connection closed.
    ObservedClose { session: SessionId, database: String, duration_ms: u64, established: bool },
}

/// One line of the audit file.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Counters an operator watches: a non-zero `dropped` means records were lost.
#[derive(Debug, Default)]
pub struct AuditCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The sessions' handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Record>,
    counters: Arc<AuditCounters>,
}

impl AuditLog {
    /// Opens (appending) the audit file and starts the writer task.
    pub fn open(path: &Path, queue: usize) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(AuditCounters::default());
        let writer = tokio::task::spawn_blocking({
            let counters = counters.clone();
            let path = path.to_path_buf();
            move || write_loop(file, path, rx, &counters)
        });
        Ok((Self { tx, counters }, writer))
    }

    /// Queues a record; never waits. A full queue drops it and counts the loss.
    pub fn record(&self, event: Event) {
        let record = Record { at_ms: now_ms(), event };
        if self.tx.try_send(record).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counters(&self) -> &AuditCounters {
        &self.counters
    }
}

fn write_loop(file: std::fs::File, path: PathBuf, mut rx: mpsc::Receiver<Record>, counters: &AuditCounters) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            line.clear();
            // Serialising our own types cannot fail (no maps with non-string keys).
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                match out.write_all(&line) {
                    Ok(()) => {
                        counters.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        if counters.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::error!(path = %path.display(), error = %err, "audit write failed; counting further failures");
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        // Flush once the queue is empty: batches under load, prompt when idle.
        if let Err(err) = out.flush()
            && counters.write_errors.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::error!(path = %path.display(), error = %err, "audit flush failed; counting further failures");
        }
    }
    let _ = out.flush();
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
