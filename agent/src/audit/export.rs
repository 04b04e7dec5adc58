//! Exporters ship records off-host without touching the hot path: they read the ring (like
//! `warden audit tail -f`), in batches, and remember how far they got. A collector that is down
//! costs nothing but a retry; records it missed stay in the local ring until overwritten, and
//! a gap is counted, never hidden.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::ring::{Kind, Record, RingFile};

/// Something that takes batches of records (JSON payloads) somewhere else.
pub trait Exporter: Send {
    /// A short name for logs and the checkpoint file.
    fn name(&self) -> &str;
    /// Ships a batch; an error leaves the checkpoint where it was (the batch is retried).
    fn export(&mut self, batch: &[Record]) -> Result<(), String>;
}

/// Counters of an exporter.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub exported: AtomicU64,
    pub failures: AtomicU64,
    /// Records overwritten in the ring before they could be exported.
    pub missed: AtomicU64,
}

/// Runs `exporter` over the ring at `ring_path` until `stop` is set; returns its thread.
pub fn spawn(
    ring_path: PathBuf,
    mut exporter: Box<dyn Exporter>,
    stop: Arc<AtomicBool>,
    counters: Arc<ExportCounters>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let checkpoint = checkpoint_path(&ring_path, exporter.name());
    std::thread::Builder::new().name(format!("warden-export-{}", exporter.name())).spawn(move || {
        let mut next =
            std::fs::read_to_string(&checkpoint).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1);
        // Position and sequence of the last record taken: the next read follows the chain from
        // there instead of rescanning the ring.
        let mut cursor: Option<(u64, u64)> = None;
        let mut backoff = Duration::from_millis(500);
        while !stop.load(Ordering::Relaxed) {
            let records = match RingFile::open(&ring_path) {
                Ok(ring) => {
                    cursor.and_then(|(pos, seq)| ring.records_after(pos, seq)).unwrap_or_else(|| ring.records(next))
                }
                Err(_) => Vec::new(),
            };
            let taken: Vec<Record> = records.into_iter().take(512).collect();
            if let Some(first) = taken.first()
                && first.seq > next
            {
                counters.missed.fetch_add(first.seq - next, Ordering::Relaxed);
            }
            let Some(last) = taken.last().map(|r| (r.position, r.seq)) else {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            };
            let events: Vec<Record> = taken.into_iter().filter(|r| r.kind == Kind::Event).collect();
            match if events.is_empty() { Ok(()) } else { exporter.export(&events) } {
                Ok(()) => {
                    cursor = Some(last);
                    next = last.1 + 1;
                    counters.exported.fetch_add(events.len() as u64, Ordering::Relaxed);
                    let _ = std::fs::write(&checkpoint, next.to_string());
                    backoff = Duration::from_millis(500);
                }
                Err(error) => {
                    if counters.failures.fetch_add(1, Ordering::Relaxed).is_multiple_of(60) {
                        tracing::warn!(exporter = exporter.name(), %error, "audit export failed; retrying");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

fn checkpoint_path(ring: &Path, name: &str) -> PathBuf {
    let mut p = ring.as_os_str().to_owned();
    p.push(format!(".export-{name}"));
    PathBuf::from(p)
}

/// OpenTelemetry logs over OTLP/HTTP with the JSON encoding (`POST /v1/logs`): each audit
/// record becomes a log record whose body is the record's JSON, with its kind and sequence
/// number as attributes.
pub struct OtlpHttp {
    host_port: String,
    path: String,
    host_name: String,
}

impl OtlpHttp {
    /// `endpoint` is `http://HOST:PORT/PATH` (validated with the configuration).
    pub fn new(endpoint: &str) -> Result<Self, String> {
        let rest = endpoint.strip_prefix("http://").ok_or("expected an http:// URL")?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/logs"),
        };
        let host_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:80") };
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        Ok(Self { host_port, path: path.to_string(), host_name })
    }

    fn body(&self, batch: &[Record]) -> Vec<u8> {
        let records: Vec<serde_json::Value> = batch
            .iter()
            .map(|r| {
                let payload = String::from_utf8_lossy(&r.payload);
                let kind = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                    .unwrap_or_default();
                serde_json::json!({
                    "timeUnixNano": (r.at_ms as u128 * 1_000_000).to_string(),
                    "severityNumber": 9,
                    "severityText": "INFO",
                    "body": { "stringValue": payload },
                    "attributes": [
                        { "key": "warden.kind", "value": { "stringValue": kind } },
                        { "key": "warden.seq", "value": { "intValue": r.seq.to_string() } }
                    ]
                })
            })
            .collect();
        let doc = serde_json::json!({
            "resourceLogs": [{
                "resource": { "attributes": [
                    { "key": "service.name", "value": { "stringValue": "warden" } },
                    { "key": "host.name", "value": { "stringValue": self.host_name } }
                ]},
                "scopeLogs": [{ "scope": { "name": "warden.audit" }, "logRecords": records }]
            }]
        });
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

impl Exporter for OtlpHttp {
    fn name(&self) -> &str {
        "otlp-http"
    }

    fn export(&mut self, batch: &[Record]) -> Result<(), String> {
        let body = self.body(batch);
        let mut stream = TcpStream::connect(&self.host_port).map_err(|e| format!("{}: {e}", self.host_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host_port,
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body)).map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let _ = stream.take(64 * 1024).read_to_end(&mut response);
        let status = String::from_utf8_lossy(&response);
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if code.starts_with('2') {
            Ok(())
        } else {
            Err(format!("collector answered {:?}", status.lines().next().unwrap_or("")))
        }
    }
}
