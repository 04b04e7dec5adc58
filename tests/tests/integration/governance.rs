//! Redirect, attribution and fail modes on the real kernel with a real PostgreSQL.
//! Run as root through `cargo xtask test` (one test at a time: they attach host-wide, but each
//! governs only the port of the PostgreSQL it started).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Agent, Netns, PROXY_V4, Postgres, check, output, psql, psql_argv};

fn host_netns_cookie() -> u64 {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let s = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len)
    };
    assert_eq!(rc, 0, "SO_NETNS_COOKIE");
    cookie
}

fn opens(agent: &Agent) -> Vec<Value> {
    agent.records().into_iter().filter(|r| r["kind"] == "connection_open").collect()
}

#[test]
fn psql_is_redirected_and_attributed_to_its_labelled_cgroup() {
    let pg = Postgres::start();
    // Any address on the port: this also governs the agent's own upstream address, so a
    // broken self-exemption would loop back into the proxy.
    let agent = Agent::start(&format!("  - {{name: main, address: '*:{}'}}", pg.port));
    let out = check(&mut agent.exec_psql(
        &["warden/identity=it-etl", "team=data"],
        "127.0.0.1",
        pg.port,
        "select inet_client_port()",
    ));
    let server_saw_port: u16 = out.trim().parse().expect("port");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    let id = &open["identity"];
    assert_eq!(open["database"], "main");
    assert_eq!(open["orig_dst"], format!("127.0.0.1:{}", pg.port));
    assert_eq!(id["comm"], "psql");
    assert!(id["exe"].as_str().is_some_and(|e| e.ends_with("/psql")), "{id}");
    assert_eq!(id["uid"], 0);
    assert_eq!(id["user"], "root");
    assert_eq!(id["labels"]["warden/identity"], "it-etl");
    assert_eq!(id["labels"]["team"], "data");
    assert!(id["cgroup"].as_str().is_some_and(|c| c.starts_with("/warden.workloads/it-etl-")), "{id}");
    assert!(id["pid"].as_u64().is_some_and(|p| p > 1));
    // The server's client is the agent's upstream socket: the bytes went through the proxy.
    let upstream: SocketAddr = open["upstream_local"].as_str().expect("upstream_local").parse().unwrap();
    assert_eq!(upstream.port(), server_saw_port);
    // Exactly one session: the agent's upstream connection was exempt, not redirected again.
    let close = agent.wait_record("connection_close", |r| r["kind"] == "connection_close");
    assert_eq!(close["session"], open["session"]);
    assert!(close["bytes_from_server"].as_u64().unwrap() > 0);
    assert_eq!(opens(&agent).len(), 1, "{:#?}", agent.records());
    assert!(agent.stat("exempted") >= 1);
    assert_eq!(agent.stat("redirected"), 1);

    // Another user, same labelled workload shape: attributed to that uid.
    let as_nobody: Vec<String> = ["runuser", "-u", "nobody", "--"]
        .into_iter()
        .map(String::from)
        .chain(psql_argv("127.0.0.1", pg.port, "select 1"))
        .collect();
    check(&mut agent.exec(&["warden/identity=it-nobody"], &as_nobody.iter().map(String::as_str).collect::<Vec<_>>()));
    let open = agent
        .wait_record("nobody's connection", |r| r["kind"] == "connection_open" && r["identity"]["user"] == "nobody");
    assert_eq!(open["identity"]["uid"], 65534);
    assert_eq!(open["identity"]["labels"]["warden/identity"], "it-nobody");
}

#[test]
fn tokio_postgres_driver_through_redirect_sees_the_address_it_dialled() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (server_port, peer) = rt.block_on(async {
        let dst: SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
        let stream = tokio::net::TcpStream::connect(dst).await.expect("connect");
        // getpeername4 reports the original destination, not the proxy.
        let peer = stream.peer_addr().unwrap();
        let mut config = tokio_postgres::Config::new();
        config.user("postgres").dbname("postgres");
        let (client, conn) = config.connect_raw(stream, tokio_postgres::NoTls).await.expect("startup through warden");
        tokio::spawn(conn);
        let row = client.query_one("select inet_client_port(), $1::int8 * 2", &[&21i64]).await.expect("query");
        let doubled: i64 = row.get(1);
        assert_eq!(doubled, 42);
        (row.get::<_, i32>(0) as u16, peer)
    });
    assert_eq!(peer.to_string(), format!("127.0.0.1:{}", pg.port));
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    assert_eq!(open["identity"]["pid"], std::process::id());
    let upstream: SocketAddr = open["upstream_local"].as_str().unwrap().parse().unwrap();
    assert_eq!(upstream.port(), server_port);
}

#[test]
fn native_ipv6_and_v4_mapped_destinations_are_redirected() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!(
        "  - {{name: v4, address: '127.0.0.1:{p}'}}\n  - {{name: v6, address: '[::1]:{p}'}}",
        p = pg.port
    ));
    // Native IPv6.
    let v6 = check(&mut psql("::1", pg.port, "select inet_client_port()"));
    let open = agent.wait_record("v6 open", |r| r["kind"] == "connection_open" && r["database"] == "v6");
    assert_eq!(open["orig_dst"], format!("[::1]:{}", pg.port));
    let upstream: SocketAddr = open["upstream_local"].as_str().unwrap().parse().unwrap();
    assert!(upstream.is_ipv6());
    assert_eq!(upstream.port().to_string(), v6.trim());
    // A dual-stack (AF_INET6) socket dialling ::ffff:127.0.0.1, as Java clients do.
    let mapped = check(&mut psql("::ffff:127.0.0.1", pg.port, "select inet_client_port()"));
    let open = agent.wait_record("mapped open", |r| r["kind"] == "connection_open" && r["database"] == "v4");
    assert_eq!(open["orig_dst"], format!("127.0.0.1:{}", pg.port));
    let upstream: SocketAddr = open["upstream_local"].as_str().unwrap().parse().unwrap();
    assert_eq!(upstream.port().to_string(), mapped.trim());
    // getpeername6 returns what was dialled, in both shapes.
    let s = TcpStream::connect(format!("[::1]:{}", pg.port)).unwrap();
    assert_eq!(s.peer_addr().unwrap().to_string(), format!("[::1]:{}", pg.port));
    let s = TcpStream::connect(format!("[::ffff:127.0.0.1]:{}", pg.port)).unwrap();
    assert_eq!(s.peer_addr().unwrap().to_string(), format!("[::ffff:127.0.0.1]:{}", pg.port));
    assert_eq!(agent.stat("redirected"), 4);
}

#[test]
fn flows_outside_governance_are_untouched() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    // Same server, an address that is not governed: direct.
    let out = check(&mut psql("::1", pg.port, "select inet_client_addr()"));
    assert_eq!(out.trim(), "::1");
    // An unrelated service on loopback: the listener sees the client itself.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(client.peer_addr().unwrap(), listener.local_addr().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.records().is_empty(), "{:#?}", agent.records());
    assert_eq!(agent.stat("redirected"), 0);
}

#[test]
fn a_pod_in_another_network_namespace_is_governed_and_the_proxy_refuses_direct_dials() {
    let pg = Postgres::start();
    let pod = Netns::create(1);
    let agent = Agent::start(&format!("  - {{name: main, address: '*:{}'}}", pg.port));
    // Labelled cgroup first, then into the namespace (`ip netns exec` remounts /sys, hiding the
    // cgroup hierarchy, as a pod's view would).
    let in_pod: Vec<String> = ["ip", "netns", "exec", pod.name.as_str()]
        .into_iter()
        .map(String::from)
        .chain(psql_argv(&pod.host_ip, pg.port, "select inet_client_port()"))
        .collect();
    let out = check(&mut agent.exec(&["app=pod-a"], &in_pod.iter().map(String::as_str).collect::<Vec<_>>()));
    let open = agent.wait_record("pod open", |r| r["kind"] == "connection_open");
    assert_eq!(open["orig_dst"], format!("{}:{}", pod.host_ip, pg.port));
    assert!(open["client"].as_str().unwrap().starts_with(&format!("{}:", pod.pod_ip)), "{open}");
    assert_eq!(open["identity"]["labels"]["app"], "pod-a");
    // The connecting socket lived in the pod's network namespace, not the host's.
    assert_ne!(open["identity"]["netns_cookie"].as_u64().unwrap(), host_netns_cookie());
    let upstream: SocketAddr = open["upstream_local"].as_str().unwrap().parse().unwrap();
    assert_eq!(upstream.port().to_string(), out.trim());

    // Dialling the proxy directly (from the pod, and from the host) is refused: the proxy only
    // serves flows its redirect created.
    let (ip, port) = PROXY_V4.split_once(':').unwrap();
    let argv = psql_argv(ip, port.parse().unwrap(), "select 1");
    let mut direct = pod.command(std::path::Path::new(&argv[0]));
    direct.args(&argv[1..]);
    let refused = output(&mut direct);
    assert!(!refused.status.success(), "a direct dial of the proxy must not reach PostgreSQL");
    let refused = output(&mut psql(ip, port.parse().unwrap(), "select 1"));
    assert!(!refused.status.success());
    let refusals: Vec<Value> = {
        agent.wait_record("proxy_refused", |r| r["kind"] == "proxy_refused");
        std::thread::sleep(Duration::from_millis(300));
        agent.records().into_iter().filter(|r| r["kind"] == "proxy_refused").collect()
    };
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    assert!(refusals.iter().any(|r| { r["client"].as_str().unwrap().starts_with(&format!("{}:", pod.pod_ip)) }));
    assert_eq!(opens(&agent).len(), 1);
}

#[test]
fn fail_closed_refuses_fast_when_the_agent_is_stopped_or_killed() {
    let pg = Postgres::start();
    let mut agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}', fail: closed}}", pg.port));
    check(&mut psql("127.0.0.1", pg.port, "select 1"));
    // Clean stop: programs stay pinned, connect() fails at once with EPERM.
    agent.stop();
    let started = Instant::now();
    let out = output(&mut psql("127.0.0.1", pg.port, "select 1"));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    // The refusal is recorded from the pinned ring by the next agent.
    agent.spawn();
    let refused = agent.wait_record("refused_not_serving", |r| r["kind"] == "refused_not_serving");
    assert_eq!(refused["identity"]["comm"], "psql");
    check(&mut psql("127.0.0.1", pg.port, "select 1"));

    // Crash: nothing listens on the proxy; connections fail fast, never hang.
    agent.kill9();
    let started = Instant::now();
    let out = output(&mut psql("127.0.0.1", pg.port, "select 1"));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Once the heartbeat is stale the kernel side applies fail-closed itself.
    std::thread::sleep(Duration::from_millis(3_500));
    let out = output(&mut psql("127.0.0.1", pg.port, "select 1"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
}

#[test]
fn fail_open_goes_direct_and_is_recorded_as_ungoverned() {
    let pg = Postgres::start();
    let mut agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}', fail: open}}", pg.port));
    agent.stop();
    // Direct: the server sees the client's own address, not the proxy's upstream.
    let out = check(&mut psql("127.0.0.1", pg.port, "select inet_client_addr()"));
    assert_eq!(out.trim(), "127.0.0.1");
    agent.spawn();
    let ungoverned = agent.wait_record("ungoverned", |r| r["kind"] == "ungoverned");
    assert_eq!(ungoverned["database"], "main");
    assert_eq!(ungoverned["identity"]["comm"], "psql");
    assert!(opens(&agent).is_empty());
    // Serving again: governed again.
    check(&mut psql("127.0.0.1", pg.port, "select 1"));
    agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
}

#[test]
fn observe_mode_records_without_redirect() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: reporting, address: '127.0.0.1:{}', mode: observe}}", pg.port));
    let out = check(&mut agent.exec_psql(
        &["warden/identity=it-observed"],
        "127.0.0.1",
        pg.port,
        "select inet_client_port()",
    ));
    let observed = agent.wait_record("observed", |r| r["kind"] == "observed");
    // The server's client port is the client's own: no proxy in between.
    let client: SocketAddr = observed["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.port().to_string(), out.trim());
    assert_eq!(observed["database"], "reporting");
    assert_eq!(observed["identity"]["comm"], "psql");
    assert_eq!(observed["identity"]["labels"]["warden/identity"], "it-observed");
    let close = agent.wait_record("observed_close", |r| r["kind"] == "observed_close");
    assert_eq!(close["session"], observed["session"]);
    assert!(opens(&agent).is_empty());
    assert_eq!(agent.stat("redirected"), 0);
}

#[test]
fn an_unreachable_database_gives_the_client_a_clear_error() {
    let port = testkit::free_port();
    let agent = Agent::start(&format!("  - {{name: gone, address: '127.0.0.1:{port}', connect_timeout_ms: 2000}}"));
    let started = Instant::now();
    let out = output(&mut psql("127.0.0.1", port, "select 1"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warden: database \"gone\"") && err.contains("unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let close = agent.wait_record("close with error", |r| r["kind"] == "connection_close");
    assert!(close["error"].as_str().unwrap().contains("unreachable"), "{close}");
}

#[test]
fn a_malformed_config_names_file_line_and_expectation() {
    let tmp = testkit::temp_dir("warden-badcfg-");
    let dir = tmp.path().to_path_buf();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "databases:\n  - name: main\n    address: 127.0.0.1:5432\n    fail: sometimes\n").unwrap();
    let out = output(Command::new(testkit::warden_bin()).args(["run", "--config"]).arg(&path));
    drop(tmp);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml")
            && err.contains("databases[0].fail")
            && err.contains("line 4")
            && err.contains("`closed`"),
        "{err}"
    );
}

#[test]
fn another_tcp_protocol_is_relayed_with_connection_records() {
    use std::io::{Read as _, Write as _};
    // A line-echo server standing in for a database without a protocol module.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut conn, peer) = server.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap();
        conn.write_all(&buf[..n]).unwrap();
        peer
    });
    let agent = Agent::start(&format!("  - {{name: cache, address: '127.0.0.1:{port}', protocol: tcp}}"));
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 6];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"PING\r\n");
    drop(client);
    let server_saw = echo.join().unwrap();
    let open = agent.wait_record("open", |r| r["kind"] == "connection_open" && r["database"] == "cache");
    // The server's peer is the agent's upstream socket: the bytes went through the proxy.
    assert_eq!(open["upstream_local"], server_saw.to_string());
    assert_eq!(open["identity"]["pid"], std::process::id());
    let close = agent.wait_record("close", |r| r["kind"] == "connection_close");
    assert_eq!((close["bytes_from_client"].as_u64(), close["bytes_from_server"].as_u64()), (Some(6), Some(6)));
}

#[test]
fn the_workloads_file_labels_host_workloads_by_user_and_cgroup() {
    let pg = Postgres::start();
    let agent = testkit::Agent::start_with_top_level(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        "",
        testkit::DEFAULT_AUDIT,
        "workloads:\n  - match: {user: postgres}\n    labels: {warden/identity: dba-tools, warden/kind: human}\n  - match: {user: 'post*', executable: '*/psql'}\n    labels: {warden/kind: job, tool: psql}\n  - match: {unit: 'nothing-*.service'}\n    labels: {never: 'true'}\n",
    );
    let argv = testkit::psql_argv("127.0.0.1", pg.port, "select 1");
    let out = testkit::output(std::process::Command::new("runuser").args(["-u", "postgres", "--"]).args(&argv));
    assert!(out.status.success(), "{out:?}");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    let labels = &open["identity"]["labels"];
    assert_eq!(labels["warden/identity"], "dba-tools");
    assert_eq!(labels["warden/kind"], "human", "the earlier entry wins");
    assert_eq!(labels["tool"], "psql");
    assert!(labels.get("never").is_none(), "{labels}");
}
