//! Database host names are followed in DNS: when the name moves to another address, the agent
//! governs the new address and releases the old one without a restart, and a name server that
//! fails keeps the last known addresses governed. The name server is this test's own, on
//! 127.0.0.1 (a mock that speaks the real DNS wire format: hickory-resolver in the agent is the
//! client); PostgreSQL and the kernel programs are real. Run as root through `cargo xtask test`.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{JoinHandle, sleep},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Agent, DEFAULT_AUDIT, Postgres, check, free_port, psql};

/// The name the test's name server answers for.
const NAME: &str = "db.warden.test";

/// What the mock name server answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// `NAME IN A ip`, TTL 1 s (other names: NXDOMAIN; other types of NAME: no data).
    A(Ipv4Addr),
    /// SERVFAIL to everything: the name server is broken.
    ServFail,
}

/// A UDP name server on 127.0.0.1 answering for `NAME` only.
struct MockDns {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MockDns {
    fn start(reply: Reply) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the mock name server");
        // Woken regularly so that drop can stop it.
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let reply = Arc::new(Mutex::new(reply));
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, queries, stop) = (reply.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    let current = *reply.lock().expect("reply");
                    if let Some(response) = respond(&buf[..n], current) {
                        queries.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&response, from);
                    }
                }
            })
        };
        Self { addr, reply, queries, stop, thread: Some(thread) }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for MockDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The response to one query (RFC 1035 section 4): the header and question echoed, then the
/// answer. None for anything that is not a standard query with one question (dropped, as a
/// server drops garbage).
fn respond(query: &[u8], reply: Reply) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if is_response || opcode != 0 || questions != 1 {
        return None;
    }
    // QNAME: length-prefixed labels up to the root (queries carry no compression pointers).
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(pos + 2)?, *query.get(pos + 3)?]);
    let question_end = pos + 4;
    let ours = labels.join(".") == NAME;
    // RCODE: 0 no error (with or without data), 2 SERVFAIL, 3 NXDOMAIN.
    let (rcode, answer) = match reply {
        Reply::ServFail => (2u16, None),
        Reply::A(_) if !ours => (3, None),
        Reply::A(ip) => (0, (qtype == 1 && qclass == 1).then_some(ip)),
    };
    let recursion_desired = flags & 0x0100;
    // QR, AA, RD as asked, RA.
    let flags = 0x8000 | 0x0400 | recursion_desired | 0x0080 | rcode;
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&header[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    // No OPT record back: a server without EDNS, which every client must accept.
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&query[12..question_end]);
    if let Some(ip) = answer {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question's
        out.extend_from_slice(&1u16.to_be_bytes()); // A
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL: 1 s
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

fn opens_to(agent: &Agent, dst: &str) -> usize {
    agent.records().iter().filter(|r| r["kind"] == "connection_open" && r["orig_dst"] == dst).count()
}

/// psql to `ip` is redirected through the proxy: a new `connection_open` to that address whose
/// upstream socket is the client the server saw.
fn assert_governed(agent: &Agent, ip: &str, port: u16) {
    let dst = format!("{ip}:{port}");
    let before = opens_to(agent, &dst);
    let server_saw_port = check(&mut psql(ip, port, "select inet_client_port()"));
    let server_saw_port: u16 = server_saw_port.trim().parse().expect("a port");
    let deadline = Instant::now() + Duration::from_secs(10);
    let open: Value = loop {
        let opens: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["kind"] == "connection_open" && r["orig_dst"] == dst.as_str())
            .collect();
        if opens.len() > before {
            break opens.last().cloned().expect("an open");
        }
        assert!(Instant::now() < deadline, "{dst} is not governed: no connection_open\n{}", agent.log());
        sleep(Duration::from_millis(50));
    };
    assert_eq!(open["database"], "main");
    let upstream: SocketAddr = open["upstream_local"].as_str().expect("upstream_local").parse().expect("address");
    assert_eq!(upstream.port(), server_saw_port, "the server's client is the agent's upstream socket");
}

/// psql to `ip` goes direct: the kernel redirected nothing and no session was recorded.
fn assert_not_governed(agent: &Agent, ip: &str, port: u16) {
    let dst = format!("{ip}:{port}");
    let (redirected, before) = (agent.stat("redirected"), opens_to(agent, &dst));
    check(&mut psql(ip, port, "select 1"));
    sleep(Duration::from_millis(500));
    assert_eq!(agent.stat("redirected"), redirected, "{dst} was redirected");
    assert_eq!(opens_to(agent, &dst), before, "{dst} has a connection_open");
}

#[test]
fn a_database_host_name_is_followed_when_it_moves_to_another_address() {
    let dns = MockDns::start(Reply::A(Ipv4Addr::new(127, 0, 0, 1)));
    let pg = Postgres::start();
    let agent = Agent::start_with_top_level(
        &format!("  - {{name: main, address: '{NAME}:{}'}}", pg.port),
        "",
        DEFAULT_AUDIT,
        &format!("dns:\n  nameservers: ['{}']\n  min_ttl_s: 1\n  max_ttl_s: 2\n", dns.addr),
    );
    assert!(dns.queries() > 0, "the agent resolved {NAME} through the test's name server");
    assert!(agent.log().contains("resolved a database host name"), "{}", agent.log());

    // The name resolves to 127.0.0.1: that address is governed, another one of the same server
    // is not.
    assert_governed(&agent, "127.0.0.1", pg.port);
    assert_not_governed(&agent, "127.0.0.2", pg.port);

    // The name moves (a failover): within a TTL or two the new address is governed and the old
    // one released, and the audit trail says so.
    dns.set(Reply::A(Ipv4Addr::new(127, 0, 0, 2)));
    let changed = agent.wait_record("endpoints_changed", |r| r["kind"] == "endpoints_changed");
    assert_eq!(changed["database"], "main");
    assert_eq!(changed["host"], NAME);
    assert_eq!(changed["added"], serde_json::json!([format!("127.0.0.2:{}", pg.port)]));
    assert_eq!(changed["removed"], serde_json::json!([format!("127.0.0.1:{}", pg.port)]));
    assert!(agent.log().contains("governed endpoints updated"), "{}", agent.log());
    assert_governed(&agent, "127.0.0.2", pg.port);
    assert_not_governed(&agent, "127.0.0.1", pg.port);

    // Re-resolution follows the (clamped) TTL, it does not spin: at most one round a second,
    // each an A and an AAAA query (and a retry each, at worst).
    let (queries, since) = (dns.queries(), Instant::now());
    sleep(Duration::from_secs(3));
    let rounds = since.elapsed().as_secs() + 1;
    assert!(dns.queries() - queries <= rounds * 4, "{} queries in {rounds} s", dns.queries() - queries);

    // The name server breaks: nothing is released; the last known address stays governed and
    // the failure is logged.
    dns.set(Reply::ServFail);
    sleep(Duration::from_secs(3));
    assert_governed(&agent, "127.0.0.2", pg.port);
    assert!(agent.log().contains("cannot re-resolve a database host name"), "{}", agent.log());
    let changes = agent.records().into_iter().filter(|r| r["kind"] == "endpoints_changed").count();
    assert_eq!(changes, 1, "a failure changes nothing:\n{:#?}", agent.records());

    // And it recovers with the same answer: still one change, still governed.
    dns.set(Reply::A(Ipv4Addr::new(127, 0, 0, 2)));
    sleep(Duration::from_secs(3));
    assert!(agent.log().contains("database host name resolves again"), "{}", agent.log());
    assert_governed(&agent, "127.0.0.2", pg.port);
    assert_eq!(agent.records().into_iter().filter(|r| r["kind"] == "endpoints_changed").count(), 1);
}

#[test]
fn a_host_name_that_resolves_to_nothing_stops_the_agent_at_start() {
    // NXDOMAIN for the configured name: the agent refuses to start, naming database and host.
    // It stops before it attaches anything, so no PostgreSQL is needed.
    let dns = MockDns::start(Reply::A(Ipv4Addr::new(127, 0, 0, 1)));
    // The harness panics with the agent's log when it exits before serving.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Agent::start_with_top_level(
            &format!("  - {{name: orders, address: 'nowhere.warden.test:{}'}}", free_port()),
            "",
            DEFAULT_AUDIT,
            &format!("dns:\n  nameservers: ['{}']\n", dns.addr),
        )
    }));
    let Err(panic) = started else { panic!("the agent started although its database's name resolves to nothing") };
    let log = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(log.contains("database \"orders\": host \"nowhere.warden.test\" resolved to no address"), "{log}");
}
