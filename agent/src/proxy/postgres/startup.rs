//! The client's side of connection start-up: SSLRequest / GSSENCRequest negotiation (TLS is
//! terminated here when configured, including PostgreSQL 17's direct TLS), then either a
//! StartupMessage or a CancelRequest.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{refusal::refuse, stream::MaybeTls};
use crate::pg::{frame, frontend::Startup};

/// How a client's connection began.
pub enum ClientStart {
    Session(SessionStart),
    Cancel { stream: MaybeTls, packet: Vec<u8>, pid: i32, key: Vec<u8> },
}

/// A client that wants a session.
pub struct SessionStart {
    pub stream: MaybeTls,
    /// The StartupMessage exactly as the client sent it (forwarded unchanged).
    pub packet: Vec<u8>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// The role the session will act as, when the packet sets one (see `startup_role`).
    pub role: Option<String>,
    /// The search_path the packet sets, if it sets one (see `startup_setting`).
    pub search_path: Option<String>,
    /// The `replication` start-up parameter, when it asks for a replication connection.
    pub replication: Option<String>,
}

/// Start-up failed; whose fault it was is in the variant.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("client closed the connection during start-up")]
    Closed,
    #[error("client did not finish start-up within {0:?}")]
    Timeout(Duration),
    #[error("client: {0}")]
    Protocol(String),
    #[error("client: TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client: {0}")]
    Io(std::io::Error),
}

const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Negotiates with the client until it sends a StartupMessage or a CancelRequest.
pub async fn negotiate(
    stream: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
    timeout: Duration,
) -> Result<ClientStart, StartError> {
    match tokio::time::timeout(timeout, negotiate_inner(stream, tls)).await {
        Ok(result) => result,
        Err(_) => Err(StartError::Timeout(timeout)),
    }
}

async fn negotiate_inner(
    stream: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<ClientStart, StartError> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.map_err(StartError::Io)?;
    if n == 0 {
        return Err(StartError::Closed);
    }
    let mut stream = if first[0] == TLS_HANDSHAKE_RECORD {
        // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): no SSLRequest, ALPN required.
        let Some(tls) = tls else {
            return Err(StartError::Protocol("direct TLS without a configured certificate".into()));
        };
        let s = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream).await.map_err(StartError::Tls)?;
        if s.get_ref().1.alpn_protocol() != Some(b"postgresql") {
            return Err(StartError::Protocol("direct TLS without the \"postgresql\" ALPN protocol".into()));
        }
        MaybeTls::ServerTls(Box::new(s))
    } else {
        MaybeTls::Plain(stream)
    };
    // SSLRequest and GSSENCRequest may each come once before the real start-up packet.
    for _ in 0..3 {
        let packet = read_packet(&mut stream).await?;
        let decoded = match Startup::decode(&packet) {
            Ok(decoded) => decoded,
            Err(e) => {
                // A protocol 3 start-up packet whose parameters are not laid out as they must be
                // gets a FATAL, as the server says; a CancelRequest or SSLRequest of the wrong
                // length is closed without a word, as the server does.
                if packet.get(4..6) == Some(&[0, 3]) {
                    let message = format!("warden: invalid startup packet layout: {e}");
                    refuse(&mut stream, crate::pg::error::sqlstate::PROTOCOL_VIOLATION, &message).await;
                }
                discard_pending(&mut stream).await;
                return Err(StartError::Protocol(e.to_string()));
            }
        };
        match decoded {
            Startup::Ssl => {
                let plain = match stream {
                    MaybeTls::Plain(s) => s,
                    _ => return Err(StartError::Protocol("SSLRequest inside TLS".into())),
                };
                match tls {
                    Some(config) => {
                        let mut plain = plain;
                        plain.write_all(b"S").await.map_err(StartError::Io)?;
                        // Bytes the client sent after its SSLRequest are still in the socket
                        // and make the handshake fail: no plaintext injection (CVE-2021-23214).
                        let s = tokio_rustls::TlsAcceptor::from(config.clone())
                            .accept(plain)
                            .await
                            .map_err(StartError::Tls)?;
                        stream = MaybeTls::ServerTls(Box::new(s));
                    }
                    None => {
                        let mut plain = plain;
                        plain.write_all(b"N").await.map_err(StartError::Io)?;
                        stream = MaybeTls::Plain(plain);
                    }
                }
            }
            Startup::GssEnc => stream.write_all(b"N").await.map_err(StartError::Io)?,
            Startup::Unsupported { major, minor } => {
                refuse_version(&mut stream, major, minor).await;
                discard_pending(&mut stream).await;
                return Err(StartError::Protocol(format!("unsupported frontend protocol {major}.{minor}")));
            }
            Startup::Cancel { pid, key } => {
                let key = key.to_vec();
                return Ok(ClientStart::Cancel { stream, packet, pid, key });
            }
            Startup::Startup { params, .. } => {
                // PostgreSQL reads a repeated key last-wins; a reader that took the first would
                // check one value and let the server act on another (`replication=false ...
                // replication=database`, `user=a ... user=b`). A real driver never repeats one.
                if let Some(dup) = duplicate_parameter(&params) {
                    let message = format!("warden: start-up parameter \"{dup}\" given more than once");
                    refuse(&mut stream, crate::pg::error::sqlstate::PROTOCOL_VIOLATION, &message).await;
                    return Err(StartError::Protocol(format!("start-up parameter {dup:?} given more than once")));
                }
                let get = |name: &str| {
                    params.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| crate::pg::text(v).into_owned())
                };
                let replication = get("replication")
                    .filter(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"));
                let start = SessionStart {
                    user: get("user"),
                    database: get("database").or_else(|| get("user")),
                    application_name: get("application_name"),
                    role: startup_role(&params),
                    search_path: startup_setting(&params, &["search_path"]),
                    replication,
                    stream,
                    packet,
                };
                return Ok(ClientStart::Session(start));
            }
        }
    }
    Err(StartError::Protocol("too many negotiation requests".into()))
}

/// Refuses a start-up packet of a protocol version other than 3.x as the server does: FATAL
/// 0A000, in the error format of protocol 2 for a client older than 3 (the one it can read).
async fn refuse_version(stream: &mut MaybeTls, major: u16, minor: u16) {
    let message = format!("warden: unsupported frontend protocol {major}.{minor}: only protocol 3 is spoken");
    if major < 3 {
        let mut out = b"EFATAL:  ".to_vec();
        out.extend_from_slice(message.as_bytes());
        out.extend_from_slice(b"\n\0");
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    } else {
        refuse(stream, crate::pg::error::sqlstate::FEATURE_NOT_SUPPORTED, &message).await;
    }
}

/// The first parameter name that appears twice (compared without ASCII case: run-time
/// parameter names are case-insensitive to the server).
fn duplicate_parameter(params: &[(&[u8], &[u8])]) -> Option<String> {
    let mut seen = std::collections::HashSet::with_capacity(params.len());
    params.iter().find(|(k, _)| !seen.insert(k.to_ascii_lowercase())).map(|(k, _)| crate::pg::text(k).into_owned())
}

/// The role a session acts as, as the server will apply its start-up packet (`startup_setting`);
/// `session_authorization` counts too.
fn startup_role(params: &[(&[u8], &[u8])]) -> Option<String> {
    startup_setting(params, &["role", "session_authorization"])
}

/// The value a run-time setting named one of `names` gets from a start-up packet, as the server
/// applies it: `-c name=X` (or `--name=X`, `-cname=X`) in `options` first, then a parameter of
/// the packet itself (parameters other than user, database, options and replication are
/// run-time settings, and override `options`). Names without ASCII case, `-` read as `_`. Last
/// assignment wins.
fn startup_setting(params: &[(&[u8], &[u8])], names: &[&str]) -> Option<String> {
    let named = |name: &str| names.contains(&name.replace('-', "_").to_ascii_lowercase().as_str());
    let mut value = None;
    if let Some((_, options)) = params.iter().find(|(k, _)| *k == b"options") {
        for setting in option_settings(&split_options(&crate::pg::text(options))) {
            if let Some((name, v)) = setting.split_once('=')
                && named(name)
            {
                value = Some(v.to_string());
            }
        }
    }
    const PROTOCOL_KEYS: [&[u8]; 4] = [b"user", b"database", b"options", b"replication"];
    for (k, v) in params {
        if !PROTOCOL_KEYS.contains(k) && named(&crate::pg::text(k)) {
            value = Some(crate::pg::text(v).into_owned());
        }
    }
    value
}

/// The `name=value` settings in `options` arguments, read with the server's own option letters
/// (getopt `B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:`): flags may be grouped (`-ec role=x`,
/// `-Pcrole=x`), an option's value is the rest of its argument or the next one, and `--name=value`
/// is the long form of `-c`. Reading stops where the server would refuse the options anyway.
fn option_settings(args: &[String]) -> Vec<String> {
    const WITH_VALUE: &[u8] = b"BCcDdfhkNprStvW-";
    const FLAGS: &[u8] = b"bEeFijlnOPsT";
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        if arg.len() < 2 || arg[0] != b'-' || &args[i] == "--" {
            break;
        }
        let mut j = 1;
        while j < arg.len() {
            let c = arg[j];
            if WITH_VALUE.contains(&c) {
                let value = if j + 1 < arg.len() {
                    Some(args[i][j + 1..].to_string())
                } else {
                    i += 1;
                    args.get(i).cloned()
                };
                if let Some(value) = value
                    && (c == b'c' || c == b'-')
                {
                    out.push(value);
                }
                break;
            } else if FLAGS.contains(&c) {
                j += 1;
            } else {
                return out;
            }
        }
        i += 1;
    }
    out
}

/// Splits the `options` parameter as the server does: on whitespace, a backslash taking the next
/// character literally.
fn split_options(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                in_word = true;
            }
            // The server splits where C's isspace() is true: vertical tab too.
            c if c.is_ascii_whitespace() || c == '\x0B' => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(current);
    }
    out
}

async fn read_packet(stream: &mut MaybeTls) -> Result<Vec<u8>, StartError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(StartError::Closed),
        Err(e) => return Err(StartError::Io(e)),
    }
    let total = match frame::startup_len(&len) {
        Ok(total) => total.unwrap_or(0),
        Err(e) => {
            // Not a start-up packet (a Terminate first, garbage): the server reads what came
            // with it before closing, so the client sees an end of stream, not a reset.
            discard_pending(stream).await;
            return Err(StartError::Protocol(e.to_string()));
        }
    };
    let mut packet = vec![0u8; total];
    packet[..4].copy_from_slice(&len);
    stream.read_exact(&mut packet[4..]).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StartError::Closed,
        _ => StartError::Io(e),
    })?;
    Ok(packet)
}

/// After our last words (a FATAL, and our side shut down): reads and drops what the client still
/// sends until it closes or is quiet for a moment (at most 2 s and 1 MiB), so that closing sends
/// a FIN rather than a reset, which would make the client's system drop the FATAL unread.
pub async fn linger<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut left = 1usize << 20;
    while left > 0 {
        let quiet = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
        match tokio::time::timeout_at(quiet, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// Reads and drops what the client has already sent (at most 64 KiB, without waiting), so that
/// closing the connection sends a FIN rather than a reset that could hide our last words.
pub async fn discard_pending<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match tokio::time::timeout(Duration::ZERO, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_found_whatever_their_case() {
        let p = |v: &[(&'static str, &'static str)]| -> Vec<(&'static [u8], &'static [u8])> {
            v.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
        };
        assert_eq!(duplicate_parameter(&p(&[("user", "a"), ("database", "d")])), None);
        assert_eq!(
            duplicate_parameter(&p(&[("replication", "false"), ("user", "a"), ("replication", "database")])),
            Some("replication".into())
        );
        assert_eq!(duplicate_parameter(&p(&[("role", "a"), ("ROLE", "b")])), Some("ROLE".into()));
    }

    #[test]
    fn the_role_is_read_as_the_server_applies_it() {
        let p = |v: &[(&'static str, &'static str)]| -> Vec<(&'static [u8], &'static [u8])> {
            v.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
        };
        assert_eq!(startup_role(&p(&[("user", "app")])), None);
        assert_eq!(startup_role(&p(&[("options", "-c role=admin")])), Some("admin".into()));
        assert_eq!(startup_role(&p(&[("options", "-crole=a --role=b")])), Some("b".into()));
        assert_eq!(startup_role(&p(&[("options", "-c statement_timeout=5 -c ROLE=x")])), Some("x".into()));
        assert_eq!(startup_role(&p(&[("options", "-c role=a\\ b")])), Some("a b".into()));
        // A packet parameter overrides options, as the server applies them in that order.
        assert_eq!(startup_role(&p(&[("role", "direct"), ("options", "-c role=opt")])), Some("direct".into()));
        assert_eq!(startup_role(&p(&[("options", "-c session_authorization=boss")])), Some("boss".into()));
        // Grouped flags, as the server's getopt reads them.
        assert_eq!(startup_role(&p(&[("options", "-ec role=admin")])), Some("admin".into()));
        assert_eq!(startup_role(&p(&[("options", "-Pcrole=admin")])), Some("admin".into()));
        assert_eq!(startup_role(&p(&[("options", "-c work_mem=64MB --role=x")])), Some("x".into()));
        assert_eq!(split_options("  -c  a=1\t-c b=2 "), vec!["-c", "a=1", "-c", "b=2"]);
    }

    #[test]
    fn the_search_path_is_read_as_the_server_applies_it() {
        let p = |v: &[(&'static str, &'static str)]| -> Vec<(&'static [u8], &'static [u8])> {
            v.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
        };
        let path = |v: &[(&'static str, &'static str)]| startup_setting(&p(v), &["search_path"]);
        assert_eq!(path(&[("user", "app"), ("options", "-c role=x")]), None);
        assert_eq!(path(&[("options", "-c search_path=evil,pg_catalog")]), Some("evil,pg_catalog".into()));
        assert_eq!(path(&[("options", "--search-path=evil,\\ pg_catalog")]), Some("evil, pg_catalog".into()));
        assert_eq!(path(&[("options", "-c SEARCH_PATH=a"), ("Search_Path", "b")]), Some("b".into()));
        assert_eq!(path(&[("options", "-c\x0Bsearch_path=evil,pg_catalog")]), Some("evil,pg_catalog".into()));
        assert_eq!(startup_role(&p(&[("options", "-c\x0Brole=admin")])), Some("admin".into()));
    }
}
