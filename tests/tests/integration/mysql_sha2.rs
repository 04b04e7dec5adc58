//! caching_sha2_password — MySQL 8's default, which MariaDB has no server side for — through the
//! proxy, against a server built from the packet crate the proxy uses (`mysql_common`),
//! speaking the real wire format: fast authentication (a scramble of the server's nonce), full
//! authentication over TLS on both legs (the password crosses in clear inside TLS), and the
//! proxy refusing to forward a cleartext password over an upstream leg it does not encrypt.

use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
};

use mysql_common::{
    constants::{CapabilityFlags as Caps, ColumnType, StatusFlags},
    io::ParseBuf,
    packets::{Column, HandshakePacket, HandshakeResponse},
    proto::MySerialize as _,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use testkit::{Agent, TestPki, output};

const USER: &str = "sha2user";
const PASSWORD: &str = "sha2-secret";
const NONCE: [u8; 20] = *b"0123456789abcdefghij";

/// How the fake server asks the client to authenticate.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Fast authentication: the client's scramble is checked, then AuthMoreData 0x03 and OK.
    Fast,
    /// "Perform full authentication" (AuthMoreData 0x04): the client sends its password.
    Full,
}

/// What the fake server saw of each connection.
#[derive(Default, Debug)]
struct Seen {
    /// Passwords it received in clear (full authentication).
    cleartext: Vec<String>,
    /// Clients' `select 1` answered (after authenticating).
    served: usize,
    /// The last connection's TLS state.
    tls: Option<bool>,
}

fn read_packet(stream: &mut impl std::io::Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).ok()?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some((head[3], payload))
}

fn write_packet(stream: &mut impl std::io::Write, seq: u8, payload: &[u8]) {
    let len = payload.len();
    let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    out.extend_from_slice(payload);
    let _ = stream.write_all(&out);
    let _ = stream.flush();
}

const OK: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";

/// A MySQL 8-shaped server on 127.0.0.1 for one user with caching_sha2_password.
fn fake_server(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (tls, seen) = (tls.clone(), kept.clone());
            std::thread::spawn(move || serve(stream, mode, tls, &seen));
        }
    });
    (port, seen)
}

fn serve(mut tcp: TcpStream, mode: Mode, tls: Option<Arc<rustls::ServerConfig>>, seen: &Mutex<Seen>) {
    let mut caps = Caps::CLIENT_PROTOCOL_41
        | Caps::CLIENT_SECURE_CONNECTION
        | Caps::CLIENT_PLUGIN_AUTH
        | Caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | Caps::CLIENT_CONNECT_WITH_DB
        | Caps::CLIENT_DEPRECATE_EOF
        | Caps::CLIENT_TRANSACTIONS
        | Caps::CLIENT_MULTI_RESULTS
        | Caps::CLIENT_LONG_PASSWORD;
    if tls.is_some() {
        caps |= Caps::CLIENT_SSL;
    }
    let mut greeting = Vec::new();
    let scramble_2 = [&NONCE[8..], &b"\0"[..]].concat();
    HandshakePacket::new(
        10,
        &b"8.0.36-warden-fake"[..],
        7,
        NONCE[..8].try_into().unwrap(),
        Some(&scramble_2[..]),
        caps,
        255,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(&b"caching_sha2_password"[..]),
    )
    .serialize(&mut greeting);
    write_packet(&mut tcp, 0, &greeting);
    let Some((seq, first)) = read_packet(&mut tcp) else { return };
    if first.len() == 32 {
        // SSLRequest: the handshake response follows inside TLS.
        let Some(config) = tls else { return };
        let Ok(conn) = rustls::ServerConnection::new(config) else { return };
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let Some((seq, response)) = read_packet(&mut stream) else { return };
        seen.lock().unwrap().tls = Some(true);
        session(&mut stream, seq, &response, caps, mode, true, seen);
    } else {
        seen.lock().unwrap().tls = Some(false);
        session(&mut tcp, seq, &first, caps, mode, false, seen);
    }
}

fn err(code: u16, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.extend_from_slice(b"#28000");
    p.extend_from_slice(message.as_bytes());
    p
}

/// Authenticates the client, then answers every COM_QUERY with one row, `1` (a SET with OK).
fn session(
    stream: &mut (impl std::io::Read + std::io::Write),
    seq: u8,
    response: &[u8],
    caps: Caps,
    mode: Mode,
    secure: bool,
    seen: &Mutex<Seen>,
) {
    // As a server reads it: with the flags both sides name (a client names more than it uses).
    let mut response = response.to_vec();
    if response.len() >= 4 {
        let asked = u32::from_le_bytes([response[0], response[1], response[2], response[3]]);
        response[..4].copy_from_slice(&(asked & caps.bits()).to_le_bytes());
    }
    let Ok(parsed) = ParseBuf(&response).parse::<HandshakeResponse<'_>>(()) else { return };
    let deprecate_eof = parsed.capabilities().contains(Caps::CLIENT_DEPRECATE_EOF);
    let mut seq = seq.wrapping_add(1);
    if parsed.user() != USER.as_bytes() {
        write_packet(stream, seq, &err(1045, "unknown user"));
        return;
    }
    match mode {
        Mode::Fast => {
            let expected =
                mysql_common::auth::plugins::caching_sha2_password::scramble_sha256(&NONCE, PASSWORD.as_bytes());
            if expected.as_ref().map(|e| &e[..]) != Some(parsed.scramble_buf()) {
                write_packet(stream, seq, &err(1045, "wrong scramble"));
                return;
            }
            write_packet(stream, seq, b"\x01\x03");
            write_packet(stream, seq.wrapping_add(1), OK);
        }
        Mode::Full => {
            write_packet(stream, seq, b"\x01\x04");
            let Some((s, password)) = read_packet(stream) else { return };
            seq = s.wrapping_add(1);
            if password == [0x02] {
                write_packet(stream, seq, &err(1045, "the fake server has no RSA key"));
                return;
            }
            let text = String::from_utf8_lossy(password.strip_suffix(b"\0").unwrap_or(&password)).into_owned();
            seen.lock().unwrap().cleartext.push(text.clone());
            if text != PASSWORD || !secure {
                write_packet(stream, seq, &err(1045, "access denied"));
                return;
            }
            write_packet(stream, seq, OK);
        }
    }
    loop {
        let Some((_, command)) = read_packet(stream) else { return };
        match command.first() {
            // A setting (drivers send SET autocommit and the like after connecting): OK.
            Some(0x03) if command.len() > 4 && command[1..4].eq_ignore_ascii_case(b"set") => {
                write_packet(stream, 1, OK)
            }
            Some(0x03) => {
                write_packet(stream, 1, b"\x01");
                let mut column = Vec::new();
                Column::new(ColumnType::MYSQL_TYPE_VAR_STRING).with_name(b"x").serialize(&mut column);
                write_packet(stream, 2, &column);
                let mut next = 3;
                if !deprecate_eof {
                    write_packet(stream, next, b"\xfe\x00\x00\x02\x00");
                    next += 1;
                }
                write_packet(stream, next, b"\x011");
                let end: &[u8] = if deprecate_eof { b"\xfe\x00\x00\x02\x00\x00\x00" } else { b"\xfe\x00\x00\x02\x00" };
                write_packet(stream, next + 1, end);
                if command[1..] == *b"select 1" {
                    // The client's own query (the proxy asks for the session's facts too).
                    seen.lock().unwrap().served += 1;
                }
            }
            Some(0x0e) => write_packet(stream, 1, OK),
            Some(0x01) | None => return,
            Some(_) => write_packet(stream, 1, &err(1047, "unknown command")),
        }
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("PEM file").collect::<Result<Vec<_>, _>>().expect("certificates")
}

fn server_tls(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    let (cert, key) = pki.server_cert("fake-mysql", "DNS:localhost,IP:127.0.0.1");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(pem_certs(&cert), PrivateKeyDer::from_pem_file(&key).expect("key"))
            .expect("server config"),
    )
}

/// PyMySQL through the redirect (over TLS to the proxy when `ca` is given): `select 1`'s
/// value, or the error code and message.
fn pymysql(agent: Option<&Agent>, port: u16, ca: Option<&Path>) -> String {
    let script = format!(
        "import pymysql\ntry:\n    c = pymysql.connect(host='127.0.0.1', port={port}, user='{USER}', password='{PASSWORD}'{})\n    cur = c.cursor()\n    cur.execute('select 1')\n    print(cur.fetchone()[0])\nexcept pymysql.MySQLError as e:\n    print('error', e.args[0], e.args[1] if len(e.args) > 1 else '')\n",
        ca.map_or(String::new(), |ca| format!(", ssl_ca='{}'", ca.display()))
    );
    let argv = ["python3", "-c", &script];
    let out = match agent {
        Some(agent) => output(&mut agent.exec(&["warden/identity=it-sha2"], &argv)),
        None => output(std::process::Command::new(argv[0]).args(&argv[1..])),
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn agent_for(port: u16, upstream_tls: &str, pki: &TestPki) -> Agent {
    let (cert, key) = pki.server_cert("warden", "DNS:localhost,IP:127.0.0.1");
    Agent::start_with_proxy(
        &format!("  - {{name: m8, protocol: mysql, address: '127.0.0.1:{port}', tls: {{mode: {upstream_tls}}}}}"),
        &format!("  tls: {{cert: '{}', key: '{}'}}", cert.display(), key.display()),
    )
}

#[test]
fn caching_sha2_fast_authentication_passes_through() {
    let pki = TestPki::new("warden-sha2-ca");
    let (port, seen) = fake_server(Mode::Fast, None);
    assert_eq!(pymysql(None, port, None), "1", "the fake server, directly");
    let agent = agent_for(port, "disable", &pki);
    assert_eq!(pymysql(Some(&agent), port, None), "1", "{}", agent.log());
    let seen = seen.lock().unwrap();
    assert_eq!((seen.served, seen.tls, seen.cleartext.len()), (2, Some(false), 0), "{seen:?}");
}

#[test]
fn caching_sha2_full_authentication_over_tls_on_both_legs() {
    let pki = TestPki::new("warden-sha2-ca");
    let (port, seen) = fake_server(Mode::Full, Some(server_tls(&pki)));
    let agent = agent_for(port, "require", &pki);
    assert_eq!(pymysql(Some(&agent), port, Some(&pki.ca())), "1", "{}", agent.log());
    let seen = seen.lock().unwrap();
    assert_eq!((seen.served, seen.tls), (1, Some(true)), "{seen:?}");
    assert_eq!(seen.cleartext, [PASSWORD], "the password crossed inside TLS on both legs");
    let open = agent.wait_record("connection_open", |r| r["kind"] == "connection_open");
    assert_eq!((open["client_tls"].as_bool(), open["upstream_tls"].as_bool()), (Some(true), Some(true)));
}

#[test]
fn a_cleartext_password_is_not_forwarded_over_an_unencrypted_upstream() {
    let pki = TestPki::new("warden-sha2-ca");
    let (port, seen) = fake_server(Mode::Full, None);
    let agent = agent_for(port, "disable", &pki);
    let answer = pymysql(Some(&agent), port, Some(&pki.ca()));
    assert!(answer.starts_with("error 1045") && answer.contains("in clear text"), "{answer}");
    assert!(seen.lock().unwrap().cleartext.is_empty(), "the server never received the password");
}
