//! The audit trail against a hostile host, end to end: the ring and its sealing key are private
//! files (created 0600; a ring left 0644 by an earlier version is tightened at start), and the
//! OTLP/HTTP exporter ships statements and seals over TLS to a collector that requires a client
//! certificate (mutual TLS with a CA made for the test).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde_json::Value;
use testkit::{Agent, Postgres, TestPki, check, warden_bin};

fn governed(pg: &Postgres) -> String {
    format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).mode() & 0o7777
}

/// The sealing key's default path: `RING.key`.
fn key_path(agent: &Agent) -> PathBuf {
    let mut p = agent.audit.clone().into_os_string();
    p.push(".key");
    PathBuf::from(p)
}

#[test]
fn the_ring_and_its_key_are_private_and_a_loose_ring_is_tightened() {
    let pg = Postgres::start();
    let mut agent = Agent::start(&governed(&pg));
    let key = key_path(&agent);
    assert_eq!(mode(&agent.audit), 0o600, "ring {} mode", agent.audit.display());
    assert_eq!(mode(&key), 0o600, "key {} mode", key.display());
    assert_eq!(std::fs::metadata(&agent.audit).unwrap().uid(), 0, "the ring belongs to the agent (root)");

    // What earlier versions left: a world-readable ring (and a key someone loosened).
    agent.stop();
    std::fs::set_permissions(&agent.audit, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    agent.spawn();
    assert_eq!(mode(&agent.audit), 0o600, "ring tightened at start");
    assert_eq!(mode(&key), 0o600, "key tightened at start");
    let log = agent.log();
    assert!(
        log.contains("tightened to 0600") && log.contains("0644") && log.contains(&agent.audit.display().to_string()),
        "the agent warns, naming the path and the old mode:\n{log}"
    );
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 'still recorded'"));
    agent.wait_record("statement after tightening", |r| r["kind"] == "statement");
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("PEM file").collect::<Result<Vec<_>, _>>().expect("certificates")
}

fn roots(pki: &TestPki) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&pki.ca()) {
        roots.add(ca).expect("CA certificate");
    }
    Arc::new(roots)
}

/// Reads one HTTP/1.1 request (head, then Content-Length bytes of body); returns the body.
fn read_request(stream: &mut impl std::io::Read) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        if data.len() >= end + 4 + len {
            return Some(String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned());
        }
    }
}

/// An OTLP/HTTP collector over TLS (certificate for 127.0.0.1 from `pki`) that requires a
/// client certificate from the same CA. Keeps the bodies of the requests it accepts.
fn tls_collector(pki: &TestPki) -> (u16, Arc<Mutex<Vec<String>>>) {
    let (cert, key) = pki.server_cert("collector", "DNS:localhost,IP:127.0.0.1");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pki), provider.clone())
        .build()
        .expect("client verifier");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(pem_certs(&cert), PrivateKeyDer::from_pem_file(&key).expect("server key"))
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).expect("server connection");
            let mut tls = rustls::StreamOwned::new(conn, stream);
            // A handshake without a valid client certificate fails here: nothing is kept.
            let Some(body) = read_request(&mut tls) else { continue };
            assert!(tls.conn.peer_certificates().is_some_and(|c| !c.is_empty()), "a client certificate");
            kept.lock().unwrap().push(body);
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, bodies)
}

/// The log records of every body received: (warden.kind, warden.seq, the record's own JSON).
fn log_records(bodies: &[String]) -> Vec<(String, u64, Value)> {
    let mut out = Vec::new();
    for body in bodies {
        let doc: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"));
        for r in doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().expect("logRecords") {
            let attr = |key: &str| {
                r["attributes"].as_array().unwrap().iter().find(|a| a["key"] == key).map(|a| a["value"].clone())
            };
            let kind = attr("warden.kind").and_then(|v| v["stringValue"].as_str().map(str::to_string));
            let seq = attr("warden.seq").and_then(|v| v["intValue"].as_str().and_then(|s| s.parse().ok()));
            let inner = serde_json::from_str(r["body"]["stringValue"].as_str().expect("string body")).expect("JSON");
            out.push((kind.expect("warden.kind"), seq.expect("warden.seq"), inner));
        }
    }
    out
}

#[test]
fn statements_and_seals_are_exported_over_mutual_tls() {
    let pki = TestPki::new("warden-test-collector-ca");
    let (port, bodies) = tls_collector(&pki);
    let (client_crt, client_key) = pki.client_cert("warden-agent");

    // The collector really requires a client certificate: a client without one gets nothing in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(anonymous), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(b"POST /v1/logs HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "the collector accepted a client without a certificate");

    let pg = Postgres::start();
    let audit = format!(
        "  ring_bytes: 16777216\n  seal_every: 1\n  export:\n    kind: otlp-http\n    endpoint: 'https://127.0.0.1:{port}/v1/logs'\n    ca: '{}'\n    client_cert: '{}'\n    client_key: '{}'",
        pki.ca().display(),
        client_crt.display(),
        client_key.display()
    );
    let agent = Agent::start_with_audit(&warden_bin(), &governed(&pg), &audit);
    check(&mut testkit::psql("127.0.0.1", pg.port, "select 'over mutual tls'"));

    let deadline = Instant::now() + Duration::from_secs(20);
    let (statement_seq, seal) = loop {
        let records = log_records(&bodies.lock().unwrap());
        let statement = records.iter().find(|(kind, _, r)| kind == "statement" && r["text"] == "select ?");
        // seal_every: 1 seals right after each record: the statement's own seal.
        let seal = statement.and_then(|(_, seq, _)| {
            records.iter().find(|(kind, _, r)| kind == "seal" && r["upto_seq"].as_u64() == Some(*seq))
        });
        if let (Some((_, seq, _)), Some((_, _, seal))) = (statement, seal) {
            break (*seq, seal.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no statement and seal exported over TLS within 20 s; received {} bodies; agent log:\n{}",
            bodies.lock().unwrap().len(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seal["kind"], "seal");
    assert_eq!(seal["every"], 1, "the seal says how often the writer seals: {seal}");
    assert!(seal["hmac"].as_str().is_some_and(|h| h.len() == 64), "{seal}");
    // The same seal is in the local ring, and verify accepts the ring.
    let local = agent.audit_cli(&["query", "--kind", "seal", "-o", "json"]);
    let local = String::from_utf8_lossy(&local.stdout);
    assert!(
        local.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|r| r["upto_seq"] == statement_seq)),
        "{local}"
    );
    let verify = agent.audit_cli(&["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
