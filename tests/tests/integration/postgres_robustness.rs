//! Bad input and failures through the redirect: a client sending garbage or an oversized
//! message, a database that disappears mid-query. The client gets what PostgreSQL would send
//! (an ErrorResponse with a SQLSTATE, or a close without a word where the server gives none),
//! and other sessions carry on.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{Agent, Postgres, check, output, psql, psql_bin};

/// A raw protocol client through the redirect.
struct Raw(TcpStream);

impl Raw {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    fn startup(&mut self) {
        let mut body = vec![0, 3, 0, 0];
        body.extend(b"user\0postgres\0database\0postgres\0\0");
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        self.0.write_all(&packet).unwrap();
        while self.message().0 != b'Z' {}
    }

    /// Reads one message (tag, body); tag 0 on end of stream.
    fn message(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 5];
        if self.0.read_exact(&mut header).is_err() {
            return (0, Vec::new());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.0.read_exact(&mut body).unwrap();
        (header[0], body)
    }

    /// Reads until end of stream; returns the SQLSTATEs of the ErrorResponses seen.
    fn errors_until_closed(&mut self) -> Vec<String> {
        let mut codes = Vec::new();
        loop {
            let (tag, body) = self.message();
            match tag {
                0 => return codes,
                b'E' => {
                    let code = body.split(|&b| b == 0).find_map(|f| f.strip_prefix(b"C")).unwrap_or_default();
                    codes.push(String::from_utf8_lossy(code).into_owned());
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_misbehaving_client_gets_a_protocol_error_and_others_carry_on() {
    let pg = Postgres::start();
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    // A well-behaved session that stays open throughout.
    let mut good = Command::new(psql_bin())
        .args(["-X", "-At", "-U", "postgres", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    good.stdin.as_mut().unwrap().write_all(b"select 'before';\n").unwrap();

    // As PostgreSQL answers them: a length it will not read closes the session without a word;
    // an unknown message type is a FATAL; a malformed message is an ERROR and the session goes
    // on (here to its Terminate).
    let cases: [(&str, &[u8], &[&str]); 4] = [
        ("length below 4", b"Q\0\0\0\x01", &[]),
        ("oversized message", b"Q\x7f\xff\xff\xff", &[]),
        ("unknown message type", b"?\0\0\0\x04", &["08P01"]),
        (
            "Bind with a parameter running past its end",
            b"B\0\0\0\x0e\0\0\0\0\0\x01\0\0\0\x7fS\0\0\0\x04Q\0\0\0\x0dselect 1\0X\0\0\0\x04",
            &["08P01"],
        ),
    ];
    for (what, bytes, errors) in cases {
        let mut raw = Raw::connect(pg.port);
        raw.startup();
        raw.0.write_all(bytes).unwrap();
        assert_eq!(raw.errors_until_closed(), errors.to_vec(), "{what}");
    }
    // Not PostgreSQL at all: closed without a reply, the agent unharmed.
    let mut raw = Raw::connect(pg.port);
    raw.0.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(raw.errors_until_closed().is_empty());

    good.stdin.as_mut().unwrap().write_all(b"select 'after';\n\\q\n").unwrap();
    let out = good.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nafter\n");
    assert_eq!(check(&mut psql("127.0.0.1", pg.port, "select 'new session'")).trim(), "new session");
    let protocol_errors = agent
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "connection_close" && r["error"].as_str().is_some_and(|e| e.starts_with("client:")))
        .count();
    // The two lengths, the unknown type, the HTTP request (the malformed Bind ended cleanly).
    assert_eq!(protocol_errors, 4, "{:#?}", agent.records());
}

#[test]
fn a_database_lost_mid_query_is_reported_to_the_client() {
    let pg = Postgres::start();
    let _agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let started = Instant::now();
    let child = Command::new(psql_bin())
        .args(["-X", "-U", "postgres", "-h", "127.0.0.1", "-p", &pg.port.to_string(), "-c", "select pg_sleep(60)"])
        .env("PGAPPNAME", "warden_lost")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = loop {
        let pid = pg
            .admin_sql("select pid from pg_stat_activity where application_name = 'warden_lost' and state = 'active'");
        if !pid.is_empty() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "backend never became active");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The backend dies without a word (SIGKILL): only the proxy can tell the client.
    check(Command::new("kill").args(["-9", &pid]));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warden: the connection to the database was lost"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The server restarts after the crash; a new session through the agent works again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = output(&mut psql("127.0.0.1", pg.port, "select 1"));
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}
