//! Exporters ship records off-host without touching the hot path: they read the ring (like
//! `warden audit tail -f`), in batches, and remember how far they got. A collector that is down
//! costs nothing but a retry; records it missed stay in the local ring until overwritten, and
//! a gap is counted, never hidden.
//!
//! Seal records are shipped too: a copy of the seals held off-host is what shows, later, that
//! the local ring was cut short or rewritten (the ring alone cannot prove its own tail).

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};

use super::ring::{Kind, Record, RingFile};
use crate::config::OtlpEndpoint;

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
            // Events and seals alike (see the module's doc).
            match exporter.export(&taken) {
                Ok(()) => {
                    cursor = Some(last);
                    next = last.1 + 1;
                    counters.exported.fetch_add(taken.len() as u64, Ordering::Relaxed);
                    // Replaced whole (written beside, then renamed): a reader never sees it
                    // empty.
                    let staged = checkpoint.with_extension("tmp");
                    if std::fs::write(&staged, next.to_string()).is_ok() {
                        let _ = std::fs::rename(&staged, &checkpoint);
                    }
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

/// Connect, read and write timeout toward the collector.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a response read looking for its status (the head is all that matters).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// An OTLP/HTTP endpoint that cannot be used; `field` says which configuration field is wrong.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{0}")]
    NeedsCa(&'static str),
    #[error("{option} applies to https:// endpoints only (this one is http://)")]
    TlsOptionWithoutTls { option: &'static str },
    #[error("client_cert and client_key go together (mutual TLS): {missing} is missing")]
    HalfClientPair { missing: &'static str },
    #[error("CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("client certificate {path}: {message}")]
    ClientCert { path: PathBuf, message: String },
    #[error("client key {path}: {message}")]
    ClientKey { path: PathBuf, message: String },
    #[error("client certificate {cert} and key {key} cannot be used together: {source}")]
    ClientPair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("server name {name:?}: expected a DNS name or an IP address")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl EndpointError {
    /// The configuration field (under `audit.export`) the problem is in.
    pub fn field(&self) -> &'static str {
        match *self {
            Self::Url { .. } => "endpoint",
            Self::NeedsCa(_) | Self::Ca { .. } => "ca",
            Self::TlsOptionWithoutTls { option } => option,
            Self::HalfClientPair { missing } => missing,
            Self::ClientCert { .. } => "client_cert",
            Self::ClientKey { .. } | Self::ClientPair { .. } | Self::Tls(_) => "client_key",
            Self::ServerName { .. } => "server_name",
        }
    }
}

/// A collector's URL, taken apart: `http[s]://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorUrl {
    pub https: bool,
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// `HOST[:PORT]` as written: the Host header.
    pub authority: String,
    /// Path (and query) of the request; `/v1/logs` when the URL has none.
    pub path: String,
}

impl CollectorUrl {
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let bad = |message: &str| EndpointError::Url { url: url.to_string(), message: message.to_string() };
        let expected = "expected http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]";
        // Whitespace or controls would end up in the request line and Host header.
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("spaces and control characters are not allowed"));
        }
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(expected));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/logs"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the address"))?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad(expected))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(bad("an IPv6 address needs brackets: [ADDR]:PORT"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None if https => 443,
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("invalid port"))?,
        };
        Ok(Self { https, host: host.to_string(), port, authority: authority.to_string(), path })
    }
}

/// The TLS client configuration for an https endpoint (none for http), from its `ca`,
/// `client_cert` and `client_key`. The system's roots are never used: the collector is trusted
/// only through the CA the configuration names.
pub fn client_tls(endpoint: &OtlpEndpoint) -> Result<Option<Arc<rustls::ClientConfig>>, EndpointError> {
    let url = CollectorUrl::parse(&endpoint.url)?;
    let client_pair = match (&endpoint.client_cert, &endpoint.client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(EndpointError::HalfClientPair { missing: "client_key" }),
        (None, Some(_)) => return Err(EndpointError::HalfClientPair { missing: "client_cert" }),
    };
    if !url.https {
        let option = [
            ("ca", endpoint.ca.is_some()),
            ("client_cert", client_pair.is_some()),
            ("server_name", endpoint.server_name.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        return match option {
            Some(option) => Err(EndpointError::TlsOptionWithoutTls { option }),
            None => Ok(None),
        };
    }
    let ca = endpoint.ca.as_deref().ok_or(EndpointError::NeedsCa(
        "an https:// endpoint needs `ca`, a PEM file of the CA(s) that sign the collector's certificate \
         (the system's trust store is not used)",
    ))?;
    server_name(endpoint, &url)?;
    let mut roots = rustls::RootCertStore::empty();
    let ca_error = |message: String| EndpointError::Ca { path: ca.to_path_buf(), message };
    for cert in pem_certs(ca).map_err(ca_error)? {
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client_pair {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = pem_certs(cert).map_err(|message| EndpointError::ClientCert { path: cert.clone(), message })?;
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| EndpointError::ClientKey { path: key.clone(), message: e.to_string() })?;
            builder.with_client_auth_cert(chain, private).map_err(|source| EndpointError::ClientPair {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?
        }
    };
    // This client speaks HTTP/1.1 only; say so rather than let a server pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The name checked against the collector's certificate (and sent as SNI): `server_name`, else
/// the URL's host (an IP address is then checked against the certificate's IP addresses).
fn server_name(endpoint: &OtlpEndpoint, url: &CollectorUrl) -> Result<ServerName<'static>, EndpointError> {
    let name = endpoint.server_name.clone().unwrap_or_else(|| url.host.clone());
    ServerName::try_from(name.clone()).map_err(|_| EndpointError::ServerName { name })
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// OpenTelemetry logs over OTLP/HTTP with the JSON encoding (`POST /v1/logs`), over plain HTTP
/// or TLS (optionally with a client certificate): each audit record becomes a log record whose
/// body is the record's JSON, with its kind (`seal` for seals) and sequence number as attributes.
/// One request per connection: batches are large and infrequent, and it keeps the client small.
pub struct OtlpHttp {
    url: CollectorUrl,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    host_name: String,
}

impl OtlpHttp {
    /// An exporter to `endpoint` (validated with the configuration, which also built its TLS).
    pub fn new(endpoint: &OtlpEndpoint) -> Result<Self, EndpointError> {
        let url = CollectorUrl::parse(&endpoint.url)?;
        let config = match &endpoint.tls {
            Some(config) => Some(config.clone()),
            // Not built with a configuration (an endpoint made in code): build it now.
            None => client_tls(endpoint)?,
        };
        let tls = match config.filter(|_| url.https) {
            Some(config) => Some((config, server_name(endpoint, &url)?)),
            None => None,
        };
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        Ok(Self { url, tls, host_name })
    }

    fn body(&self, batch: &[Record]) -> Vec<u8> {
        let records: Vec<serde_json::Value> = batch
            .iter()
            .map(|r| {
                let payload = String::from_utf8_lossy(&r.payload);
                let kind = match r.kind {
                    Kind::Seal => "seal".to_string(),
                    Kind::Event => serde_json::from_str::<serde_json::Value>(&payload)
                        .ok()
                        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                        .unwrap_or_default(),
                };
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

    fn connect(&self) -> Result<TcpStream, String> {
        let target = format!("{}:{}", self.url.host, self.url.port);
        let addrs = (self.url.host.as_str(), self.url.port).to_socket_addrs().map_err(|e| format!("{target}: {e}"))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
                    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => format!("{target}: {e}"),
            None => format!("{target}: resolved to no address"),
        })
    }
}

impl Exporter for OtlpHttp {
    fn name(&self) -> &str {
        "otlp-http"
    }

    fn export(&mut self, batch: &[Record]) -> Result<(), String> {
        let body = self.body(batch);
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.url.path,
            self.url.authority,
            body.len()
        );
        let tcp = self.connect()?;
        let status = match &self.tls {
            None => exchange(&mut &tcp, head.as_bytes(), &body),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let status = exchange(&mut tls, head.as_bytes(), &body);
                // Polite, not required: the request is answered either way.
                tls.conn.send_close_notify();
                let _ = tls.flush();
                status
            }
        }
        .map_err(|e| format!("{}: {e}", self.url.authority))?;
        if (200..300).contains(&status.code) {
            Ok(())
        } else {
            Err(format!("collector answered {} {}", status.code, status.reason))
        }
    }
}

/// Sends one request and reads the status of its answer.
fn exchange(stream: &mut (impl Read + Write), head: &[u8], body: &[u8]) -> Result<Status, String> {
    // A TLS handshake failure (an unknown CA, a refused client certificate) shows here.
    stream
        .write_all(head)
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| e.to_string())?;
    read_status(stream)
}

/// The status of an HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    code: u16,
    reason: String,
}

/// Where a response head ends (after its blank line), accepting bare LF line ends.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads response heads until a final one (interim 1xx answers are skipped) and returns its
/// status. Reads arrive in any sizes; a connection that ends after the status line but before
/// the head does (or a TLS peer that closes without close_notify) still gives the status.
fn read_status(stream: &mut impl Read) -> Result<Status, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut interim = None;
    loop {
        if let Some(end) = head_end(&buf) {
            let status = parse_status_line(&buf[..end])?;
            if (100..200).contains(&status.code) {
                interim = Some(status.code);
                buf.drain(..end);
                continue;
            }
            return Ok(status);
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(format!("response head longer than {MAX_RESPONSE_HEAD} bytes"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if buf.is_empty() && interim.is_none() => return Err(format!("reading the response: {e}")),
            Err(_) => break,
        }
    }
    let status = match (buf.iter().all(u8::is_ascii_whitespace), interim) {
        (true, None) => return Err("the collector closed the connection without answering".into()),
        (true, Some(code)) => Status { code, reason: String::new() },
        (false, _) => parse_status_line(&buf)?,
    };
    if (100..200).contains(&status.code) {
        return Err(format!("the collector closed the connection after an interim {} answer", status.code));
    }
    Ok(status)
}

/// Parses `HTTP/1.x NNN reason` from the first line of `head`.
fn parse_status_line(head: &[u8]) -> Result<Status, String> {
    let line = &head[..head.iter().position(|&b| b == b'\n').unwrap_or(head.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let not_http = || {
        let shown: String = String::from_utf8_lossy(&line[..line.len().min(60)])
            .chars()
            .map(|c| c.escape_debug().to_string())
            .collect();
        format!("not an HTTP/1.x response: \"{shown}\"")
    };
    let text = std::str::from_utf8(line).map_err(|_| not_http())?;
    let rest = text.strip_prefix("HTTP/1.").ok_or_else(not_http)?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if minor.len() != 1 || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_http());
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_http());
    }
    let code: u16 = code.parse().map_err(|_| not_http())?;
    let reason = parts.next().unwrap_or("").trim().chars().filter(|c| !c.is_control()).take(200).collect();
    Ok(Status { code, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> OtlpEndpoint {
        OtlpEndpoint { url: url.into(), ca: None, client_cert: None, client_key: None, server_name: None, tls: None }
    }

    fn record(seq: u64, kind: Kind, payload: &str) -> Record {
        Record {
            seq,
            at_ms: 1_700_000_000_000 + seq,
            kind,
            payload: payload.as_bytes().to_vec(),
            prev_hash: [0; 32],
            position: 0,
        }
    }

    const STATEMENT: &str = r#"{"at_ms":1700000000001,"kind":"statement","session":7,"text":"select ?"}"#;
    const SEAL: &str = r#"{"kind":"seal","upto_seq":1,"head":"ab","every":1000,"hmac":"cd"}"#;

    #[test]
    fn urls_are_taken_apart() {
        let u = CollectorUrl::parse("https://collector.example:4318/v1/logs").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.authority.as_str(), u.path.as_str()),
            (true, "collector.example", 4318, "collector.example:4318", "/v1/logs")
        );
        let u = CollectorUrl::parse("http://[::1]:4318").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 4318, "/v1/logs"));
        assert_eq!(CollectorUrl::parse("https://[fd00::1]/x").unwrap().port, 443, "https default port");
        assert_eq!(CollectorUrl::parse("http://c").unwrap().port, 80, "http default port");
        assert_eq!(CollectorUrl::parse("http://c:1?x=1").unwrap().path, "/?x=1");
        for bad in [
            "ftp://c/",
            "c:4318",
            "http://",
            "http://:80/",
            "http://c:0/",
            "http://c:99999/",
            "http://::1:80/",
            "http://[::1/",
            "http://u:p@c/",
            "http://c/x\r\nX-Injected: 1",
            "http://c/a b",
        ] {
            assert!(CollectorUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn https_needs_a_ca_and_tls_options_need_https() {
        let err = client_tls(&endpoint("https://c:4318/v1/logs")).unwrap_err();
        assert_eq!(err.field(), "ca");
        assert!(err.to_string().contains("system's trust store is not used"), "{err}");
        let mut http = endpoint("http://c:4318/v1/logs");
        http.server_name = Some("c".into());
        let err = client_tls(&http).unwrap_err();
        assert_eq!((err.field(), err.to_string().contains("https:// endpoints only")), ("server_name", true), "{err}");
        let mut half = endpoint("https://c/");
        half.client_cert = Some("/nonexistent.pem".into());
        assert_eq!(client_tls(&half).unwrap_err().field(), "client_key");
        let mut missing = endpoint("https://c/");
        missing.ca = Some("/nonexistent/ca.pem".into());
        let err = client_tls(&missing).unwrap_err();
        assert!(err.field() == "ca" && err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let mut name = endpoint("https://c/");
        name.ca = Some("/nonexistent/ca.pem".into());
        name.server_name = Some("not a name!".into());
        assert_eq!(client_tls(&name).unwrap_err().field(), "server_name");
        assert!(client_tls(&endpoint("http://c:4318/v1/logs")).unwrap().is_none(), "plain http");
    }

    #[test]
    fn the_request_body_carries_events_and_seals() {
        let otlp = OtlpHttp::new(&endpoint("http://127.0.0.1:4318/v1/logs")).unwrap();
        let body = otlp.body(&[record(1, Kind::Event, STATEMENT), record(2, Kind::Seal, SEAL)]);
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let logs = &doc["resourceLogs"][0];
        assert_eq!(logs["resource"]["attributes"][0]["value"]["stringValue"], "warden");
        assert_eq!(logs["scopeLogs"][0]["scope"]["name"], "warden.audit");
        let records = logs["scopeLogs"][0]["logRecords"].as_array().expect("log records");
        let attr = |r: &serde_json::Value, k: &str| {
            r["attributes"].as_array().unwrap().iter().find(|a| a["key"] == k).map(|a| a["value"].clone()).unwrap()
        };
        assert_eq!(records.len(), 2);
        assert_eq!(attr(&records[0], "warden.kind")["stringValue"], "statement");
        assert_eq!(attr(&records[0], "warden.seq")["intValue"], "1");
        assert_eq!(records[0]["body"]["stringValue"], STATEMENT);
        assert_eq!(records[0]["timeUnixNano"], "1700000000001000000");
        assert_eq!(attr(&records[1], "warden.kind")["stringValue"], "seal");
        assert_eq!(attr(&records[1], "warden.seq")["intValue"], "2");
        assert_eq!(records[1]["body"]["stringValue"], SEAL, "the seal as written, HMAC included");
    }

    /// A reader that hands out its bytes a few at a time, then fails or ends.
    struct Trickle(Vec<u8>, usize, bool);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return if self.2 { Err(std::io::ErrorKind::UnexpectedEof.into()) } else { Ok(0) };
            }
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    fn status(response: &str, step: usize, fails_at_end: bool) -> Result<(u16, String), String> {
        read_status(&mut Trickle(response.as_bytes().to_vec(), step, fails_at_end)).map(|s| (s.code, s.reason))
    }

    #[test]
    fn response_status_is_read_robustly() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        for step in [1, 3, 7, 4096] {
            assert_eq!(status(ok, step, false), Ok((200, "OK".into())), "in reads of {step}");
        }
        assert_eq!(
            status("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 5, false),
            Ok((204, "No Content".into())),
            "interim answers are skipped"
        );
        assert_eq!(status("HTTP/1.0 503 Service Unavailable\n\n", 2, false).unwrap().0, 503, "bare LF");
        assert_eq!(status("HTTP/1.1 202\r\n\r\n", 64, false), Ok((202, String::new())), "no reason phrase");
        assert_eq!(status("HTTP/1.1 200 OK\r\n", 4, true).unwrap().0, 200, "peer gone after the status line");
        assert!(status("", 1, false).unwrap_err().contains("without answering"));
        assert!(status("", 1, true).unwrap_err().contains("reading the response"));
        assert!(status("SSH-2.0-OpenSSH_9.6\r\n", 8, false).unwrap_err().contains("not an HTTP/1.x response"));
        assert!(status("HTTP/1.1 20 OK\r\n\r\n", 8, false).is_err(), "two-digit status");
        assert!(status("HTTP/2 200\r\n\r\n", 8, false).is_err());
        assert!(status("HTTP/1.1 100 Continue\r\n\r\n", 8, false).unwrap_err().contains("interim"));
        assert!(status(&"x".repeat(MAX_RESPONSE_HEAD + 10), 4096, false).unwrap_err().contains("longer than"));
    }

    /// Serves one HTTP request on loopback with `answer`; returns the port and the request.
    fn one_shot_collector(answer: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = stream.read(&mut buf).expect("read request");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                if let Some(end) = head_end(&request) {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                        .expect("content-length");
                    if request.len() >= end + len {
                        break;
                    }
                }
            }
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, thread)
    }

    #[test]
    fn a_batch_is_posted_and_the_answer_decides() {
        let (port, collector) = one_shot_collector("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let mut otlp = OtlpHttp::new(&endpoint(&format!("http://127.0.0.1:{port}/v1/logs"))).unwrap();
        let batch = [record(1, Kind::Event, STATEMENT), record(2, Kind::Seal, SEAL)];
        otlp.export(&batch).expect("accepted");
        let request = collector.join().unwrap();
        assert!(request.starts_with("POST /v1/logs HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")), "{request}");
        assert!(request.contains(r#"\"kind\":\"seal\""#), "the seal is in the request: {request}");

        let (port, collector) = one_shot_collector("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let mut otlp = OtlpHttp::new(&endpoint(&format!("http://127.0.0.1:{port}/"))).unwrap();
        let err = otlp.export(&batch).expect_err("refused");
        assert_eq!(err, "collector answered 503 Service Unavailable");
        collector.join().unwrap();
    }

    /// Collects what it is given.
    struct Recorder(Arc<std::sync::Mutex<Vec<(u64, Kind)>>>);

    impl Exporter for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn export(&mut self, batch: &[Record]) -> Result<(), String> {
            self.0.lock().unwrap().extend(batch.iter().map(|r| (r.seq, r.kind)));
            Ok(())
        }
    }

    #[test]
    fn the_exporter_ships_seals_with_the_events() {
        let dir = crate::test_dir("warden-export-test-");
        let path = dir.path().join("audit.ring");
        let mut ring = super::super::ring::Ring::open(&path, super::super::ring::MIN_CAPACITY).unwrap();
        ring.append(Kind::Event, 1, STATEMENT.as_bytes()).unwrap();
        ring.append(Kind::Seal, 2, SEAL.as_bytes()).unwrap();
        ring.append(Kind::Event, 3, STATEMENT.as_bytes()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ExportCounters::default());
        let thread = spawn(path.clone(), Box::new(Recorder(seen.clone())), stop.clone(), counters.clone()).unwrap();
        // Waits for the exporter's first pass (it reads the ring at once).
        for _ in 0..600 {
            if counters.exported.load(Ordering::Relaxed) >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(1, Kind::Event), (2, Kind::Seal), (3, Kind::Event)]);
        assert_eq!(std::fs::read_to_string(checkpoint_path(&path, "recorder")).unwrap(), "4", "checkpoint");
    }
}
