//! The connection phase: the server's greeting, TLS on each leg, the client's handshake
//! response, and the authentication exchange relayed until the server's OK or ERR.
//!
//! The proxy does not authenticate anyone: every authentication packet passes through (the
//! server's nonce reaches the client unchanged, so mysql_native_password, caching_sha2_password
//! fast and full authentication, its RSA key exchange, MariaDB's ed25519 and auth switches all
//! work as on a direct connection). What it changes:
//! - capabilities: the greeting offers only what the proxy can read (no compression, no query
//!   attributes, no optional metadata, none of MariaDB's extended ones), and the response
//!   forwarded names only what both sides offered, TLS as the upstream leg really is (a client
//!   that would compress anyway is refused);
//! - sequence ids: a TLS request on one leg and not the other shifts them by one;
//! - a cleartext password never crosses a leg the client did not trust with one: a server that
//!   asks for it in clear (caching_sha2 full authentication, mysql_clear_password) over an
//!   unencrypted upstream, from a client that encrypted its own leg, ends the session.

use std::{io, sync::Arc, time::Duration};

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags as Caps;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    packet::{self, Packet},
    refusal, state,
};
use crate::{
    config::TlsMode,
    net::upstream::UpstreamError,
    proxy::postgres::{SessionContext, SessionError, SessionReport, state::ProtocolError, stream::MaybeTls},
};

/// How long a client may take to send its handshake response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the authentication exchange may take, in all.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest packet of the connection phase (a response with connection attributes, an RSA
/// key): MySQL's own limit for it is far smaller.
const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// Capabilities the proxy lets through (it reads every packet they shape).
fn supported() -> Caps {
    Caps::CLIENT_LONG_PASSWORD
        | Caps::CLIENT_FOUND_ROWS
        | Caps::CLIENT_LONG_FLAG
        | Caps::CLIENT_CONNECT_WITH_DB
        | Caps::CLIENT_NO_SCHEMA
        | Caps::CLIENT_ODBC
        | Caps::CLIENT_LOCAL_FILES
        | Caps::CLIENT_IGNORE_SPACE
        | Caps::CLIENT_PROTOCOL_41
        | Caps::CLIENT_INTERACTIVE
        | Caps::CLIENT_IGNORE_SIGPIPE
        | Caps::CLIENT_TRANSACTIONS
        | Caps::CLIENT_RESERVED
        | Caps::CLIENT_SECURE_CONNECTION
        | Caps::CLIENT_MULTI_STATEMENTS
        | Caps::CLIENT_MULTI_RESULTS
        | Caps::CLIENT_PS_MULTI_RESULTS
        | Caps::CLIENT_PLUGIN_AUTH
        | Caps::CLIENT_CONNECT_ATTRS
        | Caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | Caps::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
        | Caps::CLIENT_SESSION_TRACK
        | Caps::CLIENT_DEPRECATE_EOF
}

/// A session past authentication.
pub struct Established {
    pub client: MaybeTls,
    pub server: MaybeTls,
    /// Bytes read past the end of the connection phase.
    pub client_buf: BytesMut,
    pub server_buf: BytesMut,
    /// The capabilities the server and client agreed on (as the server saw them).
    pub caps: Caps,
    pub user: String,
    pub database: Option<String>,
    /// The client's character set, by the collation its response named.
    pub charset: String,
    /// The server's status flags in its OK.
    pub status: u16,
    /// The server is MariaDB (its status flags then say whether ANSI_QUOTES is on).
    pub mariadb: bool,
}

async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<Option<Packet>> {
    loop {
        match packet::take(buf, limit) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn client_error(e: io::Error) -> SessionError {
    if e.kind() == io::ErrorKind::InvalidData {
        SessionError::Protocol(ProtocolError::Client(e.to_string()))
    } else {
        SessionError::ClientIo(e)
    }
}

fn server_error(e: io::Error) -> SessionError {
    if e.kind() == io::ErrorKind::InvalidData {
        SessionError::Protocol(ProtocolError::Server(e.to_string()))
    } else {
        SessionError::UpstreamIo(e)
    }
}

/// Tells the client why its session ends (an ERR with sequence id `seq`), best effort.
async fn tell<S: AsyncWrite + Unpin>(client: &mut S, seq: u8, code: u16, sqlstate: [u8; 5], message: &str) {
    let _ = client.write_all(&refusal::err_packet(seq, code, sqlstate, message)).await;
    let _ = client.flush().await;
}

/// Where the greeting keeps what the proxy rewrites.
struct GreetingLayout {
    caps_low: usize,
    caps_high: Option<usize>,
    /// MariaDB's extended capabilities (the last 4 of the reserved bytes).
    mariadb_caps: Option<usize>,
}

fn greeting_layout(p: &[u8]) -> Option<GreetingLayout> {
    if p.first() != Some(&10) {
        return None;
    }
    let version_end = 1 + memchr::memchr(0, &p[1..])?;
    // Connection id (4), scramble part 1 (8), filler (1).
    let caps_low = version_end + 1 + 4 + 8 + 1;
    if p.len() < caps_low + 2 {
        return None;
    }
    // Character set (1), status (2), then the upper capabilities, the scramble length (1) and
    // 10 reserved bytes.
    let caps_high = caps_low + 2 + 1 + 2;
    let full = p.len() >= caps_high + 2 + 1 + 10;
    Some(GreetingLayout {
        caps_low,
        caps_high: full.then_some(caps_high),
        mariadb_caps: full.then_some(caps_high + 2 + 1 + 6),
    })
}

fn read_caps(p: &[u8], layout: &GreetingLayout) -> Caps {
    let low = u32::from(u16::from_le_bytes([p[layout.caps_low], p[layout.caps_low + 1]]));
    let high = layout.caps_high.map_or(0, |h| u32::from(u16::from_le_bytes([p[h], p[h + 1]])));
    Caps::from_bits_retain(low | high << 16)
}

fn write_caps(p: &mut [u8], layout: &GreetingLayout, caps: Caps) {
    let bits = caps.bits();
    p[layout.caps_low..layout.caps_low + 2].copy_from_slice(&(bits as u16).to_le_bytes());
    if let Some(h) = layout.caps_high {
        p[h..h + 2].copy_from_slice(&((bits >> 16) as u16).to_le_bytes());
    }
    if let Some(m) = layout.mariadb_caps {
        p[m..m + 4].copy_from_slice(&[0; 4]);
    }
}

/// The connection phase, from the accepted client connection to an authenticated session.
pub async fn establish(
    ctx: &SessionContext,
    mut client: TcpStream,
    report: &mut SessionReport,
    on_open: impl FnOnce(&SessionReport),
) -> Result<Established, SessionError> {
    let dst = ctx.orig_dst;
    let db = &ctx.database;
    // The server speaks first: the upstream is dialled before the client hears anything.
    let server = match ctx.dial.connect(dst, db.connect_timeout_ms).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let err = match e {
                UpstreamError::Namespace(source) => SessionError::ClientNamespace { source },
                UpstreamError::Unreachable(source) => SessionError::UpstreamUnreachable { dst, source },
                UpstreamError::Timeout(timeout_ms) => SessionError::UpstreamTimeout { dst, timeout_ms },
            };
            on_open(report);
            let message = format!("warden: the database {} cannot be reached: {err}", db.name);
            tell(&mut client, 0, refusal::SERVER_UNREACHABLE, *b"HY000", &message).await;
            return Err(err);
        }
    };
    report.upstream_local = server.local_addr().ok();
    // The connection is recorded once the client has said who it is (or the phase ended
    // before it could).
    let mut on_open = Some(on_open);
    let result = negotiate(ctx, client, server, report, &mut on_open).await;
    if let Some(open) = on_open.take() {
        open(report);
    }
    result
}

/// The connection phase once the upstream is connected; `on_open` is taken once both legs are
/// settled (who the client is, TLS on each).
async fn negotiate(
    ctx: &SessionContext,
    mut client: TcpStream,
    mut server: TcpStream,
    report: &mut SessionReport,
    on_open: &mut Option<impl FnOnce(&SessionReport)>,
) -> Result<Established, SessionError> {
    let dst = ctx.orig_dst;
    let db = &ctx.database;
    let mut server_buf = BytesMut::with_capacity(4096);
    let timeout = Duration::from_millis(db.connect_timeout_ms);
    let greeting =
        match tokio::time::timeout(timeout, read_packet(&mut server, &mut server_buf, MAX_HANDSHAKE_PACKET)).await {
            Err(_) => {
                let err = SessionError::UpstreamTimeout { dst, timeout_ms: db.connect_timeout_ms };
                tell(&mut client, 0, refusal::SERVER_UNREACHABLE, *b"HY000", &format!("warden: {err}")).await;
                return Err(err);
            }
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return Err(SessionError::UpstreamClosed),
            Ok(Err(e)) => return Err(server_error(e)),
        };
    if greeting.header() == Some(state::ERR) {
        // The server refuses the connection itself (too many connections, a blocked host).
        let _ = client.write_all(&framed(greeting.seq, &greeting.payload)).await;
        let why = refusal::read_err(&greeting.payload)
            .map_or_else(|| "refused".into(), |(code, _, m)| format!("{code}: {m}"));
        return Err(SessionError::Protocol(ProtocolError::Server(format!("refused the connection: {why}"))));
    }
    let mut greeting_bytes = greeting.payload.to_vec();
    let Some(layout) = greeting_layout(&greeting_bytes) else {
        return Err(SessionError::Protocol(ProtocolError::Server("sent a greeting that is not protocol 10".into())));
    };
    let server_caps = read_caps(&greeting_bytes, &layout);
    let mariadb = memchr::memmem::find(&greeting_bytes[..layout.caps_low], b"MariaDB").is_some();
    if !server_caps.contains(Caps::CLIENT_PROTOCOL_41) {
        return Err(SessionError::Protocol(ProtocolError::Server("does not speak protocol 4.1".into())));
    }
    let client_tls = ctx.client_tls.as_ref().map(|t| t.config.clone());
    let mut offered = server_caps & supported();
    offered.set(Caps::CLIENT_SSL, client_tls.is_some());
    write_caps(&mut greeting_bytes, &layout, offered);
    client.write_all(&framed(greeting.seq, &greeting_bytes)).await.map_err(SessionError::ClientIo)?;

    // The client's response, after TLS if it asks for it.
    let mut client_buf = BytesMut::with_capacity(4096);
    // Read to its exact end: a client asking for TLS sends its ClientHello at once, and those
    // bytes are the TLS acceptor's to read.
    let first = match tokio::time::timeout(CLIENT_TIMEOUT, read_exact_packet(&mut client)).await {
        Err(_) => return Err(SessionError::ClientIo(io::Error::new(io::ErrorKind::TimedOut, "no handshake response"))),
        Ok(result) => result.map_err(client_error)?,
    };
    let mut client_stream = MaybeTls::Plain(client);
    let mut client_ssl = 0u8;
    let response = if first.payload.len() == 32 && caps_of(&first.payload).contains(Caps::CLIENT_SSL) {
        let Some(config) = client_tls else {
            return Err(SessionError::Protocol(ProtocolError::Client("asked for TLS, which was not offered".into())));
        };
        let MaybeTls::Plain(tcp) = client_stream else { unreachable!() };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
        let tls = tokio::time::timeout(CLIENT_TIMEOUT, accept)
            .await
            .map_err(|_| SessionError::ClientIo(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")))?
            .map_err(SessionError::ClientIo)?;
        client_stream = MaybeTls::ServerTls(Box::new(tls));
        client_ssl = 1;
        read_client(&mut client_stream, &mut client_buf).await?
    } else {
        first
    };
    report.client_tls = client_ssl == 1;
    // Read, and forwarded, with the flags both sides offered: a client names its own abilities
    // but lays its response out by what the server offered (attributes only if the server
    // takes them, ...), and the server reads it with the flags both name.
    let asked = caps_of(&response.payload);
    // TLS is per leg: set below as the server's leg has it.
    let mut agreed = (asked & offered & supported()) - Caps::CLIENT_SSL;
    let mut response_bytes = response.payload.to_vec();
    if response_bytes.len() >= 32 {
        response_bytes[..4].copy_from_slice(&agreed.bits().to_le_bytes());
        response_bytes[28..32].copy_from_slice(&[0; 4]);
    }
    let Ok(parsed) =
        mysql_common::io::ParseBuf(&response_bytes).parse::<mysql_common::packets::HandshakeResponse<'_>>(())
    else {
        tell(
            &mut client_stream,
            response.next_seq(),
            refusal::UNKNOWN_ERROR,
            *b"08S01",
            "warden: malformed handshake response",
        )
        .await;
        return Err(SessionError::Protocol(ProtocolError::Client("sent a malformed handshake response".into())));
    };
    let plugin = parsed.auth_plugin().map(|p| p.as_bytes().to_vec());
    let user = String::from_utf8_lossy(parsed.user()).into_owned();
    let database = parsed.db_name().filter(|d| !d.is_empty()).map(|d| String::from_utf8_lossy(d).into_owned());
    let charset = charset_of(parsed.collation());
    drop(parsed);
    report.db_user = Some(user.clone());
    report.db_name = database.clone();
    if !asked.contains(Caps::CLIENT_PROTOCOL_41) {
        let message = "warden: clients older than protocol 4.1 are not supported";
        tell(&mut client_stream, response.next_seq(), refusal::NOT_SUPPORTED, *b"08004", message).await;
        return Err(SessionError::Protocol(ProtocolError::Client("does not speak protocol 4.1".into())));
    }
    // A client names what it can do; each side uses what both name, so flags the greeting did
    // not offer are simply not passed on. Compression alone cannot be: a client that would
    // compress anyway is told so.
    let compression = Caps::CLIENT_COMPRESS | Caps::CLIENT_ZSTD_COMPRESSION_ALGORITHM;
    if asked.intersects(compression) && !offered.intersects(compression) {
        let message = "warden: the compressed protocol is not supported through Warden: connect without compression";
        tell(&mut client_stream, response.next_seq(), refusal::NOT_SUPPORTED, *b"08004", message).await;
        return Err(SessionError::Protocol(ProtocolError::Client("asked for the compressed protocol".into())));
    }

    // TLS toward the server, as the database's tls.mode says.
    let (mut server_stream, server_ssl) = match &db.tls.client_config {
        Some(config) if server_caps.contains(Caps::CLIENT_SSL) => {
            let mut request = response_bytes[..32].to_vec();
            let with_ssl = agreed | Caps::CLIENT_SSL;
            request[..4].copy_from_slice(&with_ssl.bits().to_le_bytes());
            request[28..32].copy_from_slice(&[0; 4]);
            server.write_all(&framed(1, &request)).await.map_err(SessionError::UpstreamIo)?;
            let name = match db.tls_server_name() {
                Some(host) => rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| SessionError::UpstreamTls { dst, source: io::Error::other(e) })?,
                None => rustls_pki_types::ServerName::IpAddress(dst.0.ip().into()),
            };
            let connect = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, server);
            let tls = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| SessionError::UpstreamTimeout { dst, timeout_ms: db.connect_timeout_ms })?
                .map_err(|source| SessionError::UpstreamTls { dst, source })?;
            agreed |= Caps::CLIENT_SSL;
            (MaybeTls::ClientTls(Box::new(tls)), 1u8)
        }
        Some(_) if db.tls.mode != TlsMode::Prefer => {
            let err = SessionError::UpstreamTlsRefused { dst, mode: db.tls.mode };
            tell(
                &mut client_stream,
                response.next_seq(),
                refusal::SERVER_UNREACHABLE,
                *b"08004",
                &format!("warden: {err}"),
            )
            .await;
            return Err(err);
        }
        _ => (MaybeTls::Plain(server), 0u8),
    };
    report.upstream_tls = server_ssl == 1;
    if client_ssl == 1 && server_ssl == 0 && plugin.as_deref().is_some_and(sends_cleartext) {
        // The password itself is in the response: it must not cross a leg the client did not
        // trust with it.
        let message = "warden: the client sends its password in clear text (mysql_clear_password, dialog or sha256_password), and Warden's connection to the server is not encrypted (set the database's tls.mode)";
        tell(&mut client_stream, response.next_seq(), refusal::CONNECTION_DENIED, *b"28000", message).await;
        return Err(SessionError::Protocol(ProtocolError::Client(
            "sent a cleartext password, which an unencrypted upstream must not carry".into(),
        )));
    }
    if let Some(open) = on_open.take() {
        open(report);
    }
    // The response as the server is to read it: the capabilities agreed, TLS as it is.
    response_bytes[..4].copy_from_slice(&agreed.bits().to_le_bytes());
    response_bytes[28..32].copy_from_slice(&[0; 4]);
    // Sequence ids on the server's leg run ahead of (or behind) the client's by the TLS requests.
    let shift = server_ssl.wrapping_sub(client_ssl);
    server_stream
        .write_all(&framed(response.seq.wrapping_add(shift), &response_bytes))
        .await
        .map_err(SessionError::UpstreamIo)?;

    let mut auth = Auth {
        client: &mut client_stream,
        server: &mut server_stream,
        client_buf: &mut client_buf,
        server_buf: &mut server_buf,
        shift,
        cleartext_forbidden: client_ssl == 1 && server_ssl == 0,
    };
    let status = match tokio::time::timeout(AUTH_TIMEOUT, auth.relay()).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(SessionError::ClientIo(io::Error::new(
                io::ErrorKind::TimedOut,
                "authentication took too long",
            )));
        }
    };
    Ok(Established {
        client: client_stream,
        server: server_stream,
        client_buf,
        server_buf,
        mariadb,
        caps: agreed,
        user,
        database,
        charset,
        status,
    })
}

async fn read_client<S: AsyncRead + Unpin>(client: &mut S, buf: &mut BytesMut) -> Result<Packet, SessionError> {
    match tokio::time::timeout(CLIENT_TIMEOUT, read_packet(client, buf, MAX_HANDSHAKE_PACKET)).await {
        Err(_) => Err(SessionError::ClientIo(io::Error::new(io::ErrorKind::TimedOut, "no handshake response"))),
        Ok(Ok(Some(p))) => Ok(p),
        Ok(Ok(None)) => {
            Err(SessionError::ClientIo(io::Error::new(io::ErrorKind::UnexpectedEof, "left during the handshake")))
        }
        Ok(Err(e)) => Err(client_error(e)),
    }
}

/// Reads one packet (a single fragment) and not a byte more.
async fn read_exact_packet(stream: &mut TcpStream) -> io::Result<Packet> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    if len > MAX_HANDSHAKE_PACKET {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a handshake packet of {len} bytes")));
    }
    let mut payload = BytesMut::zeroed(len);
    stream.read_exact(&mut payload).await?;
    Ok(Packet { seq: head[3], fragments: 1, payload })
}

fn caps_of(response: &[u8]) -> Caps {
    response.get(..4).map_or(Caps::empty(), |b| Caps::from_bits_retain(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

/// The character set a collation id names ("" when not known).
pub fn charset_of(collation: u8) -> String {
    let id = mysql_common::collations::CollationId::from(u16::from(collation));
    mysql_common::collations::Collation::from(id).charset().to_string()
}

fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    packet::put(&mut out, seq, payload);
    out
}

/// The authentication exchange (also COM_CHANGE_USER's): packets relayed both ways, their
/// sequence ids shifted, until the server's OK or ERR.
pub struct Auth<'a> {
    pub client: &'a mut MaybeTls,
    pub server: &'a mut MaybeTls,
    pub client_buf: &'a mut BytesMut,
    pub server_buf: &'a mut BytesMut,
    /// Added to a client packet's sequence id on its way to the server.
    pub shift: u8,
    /// The client encrypted its leg and the server's is not: no password may cross in clear.
    pub cleartext_forbidden: bool,
}

impl Auth<'_> {
    /// Relays until the server accepts (its OK's status flags) or refuses (the session ends).
    ///
    /// Turn by turn: the client may send one packet after each server packet that asks for a
    /// reply (an auth switch, more authentication data other than fast authentication's
    /// success), and nothing else. Whatever else it sends meanwhile waits for the command
    /// phase, where it is judged: a command sent along with the handshake response would
    /// otherwise reach the server the moment it accepts the login, unjudged.
    pub async fn relay(&mut self) -> Result<u16, SessionError> {
        let mut replies = 0usize;
        // The sequence id the client's reply must carry (client numbering).
        let mut reply_seq = 0u8;
        loop {
            while let Some(p) = packet::take(self.server_buf, MAX_HANDSHAKE_PACKET)
                .map_err(|e| SessionError::Protocol(ProtocolError::Server(e.to_string())))?
            {
                let seq = p.seq.wrapping_sub(self.shift);
                if self.cleartext_forbidden && asks_for_cleartext(&p.payload) {
                    let message = "warden: the server asked for the password in clear text, and Warden's connection to it is not encrypted (set the database's tls.mode)";
                    tell(self.client, seq, refusal::CONNECTION_DENIED, *b"28000", message).await;
                    return Err(SessionError::Protocol(ProtocolError::Server(
                        "asked for a cleartext password over an unencrypted connection".into(),
                    )));
                }
                self.client.write_all(&framed(seq, &p.payload)).await.map_err(SessionError::ClientIo)?;
                match p.header() {
                    Some(state::OK) => {
                        self.client.flush().await.map_err(SessionError::ClientIo)?;
                        return Ok(state::status_of(&p.payload).unwrap_or(0));
                    }
                    Some(state::ERR) => {
                        let _ = self.client.flush().await;
                        let why =
                            refusal::read_err(&p.payload).map_or_else(String::new, |(c, _, m)| format!("{c}: {m}"));
                        return Err(SessionError::Protocol(ProtocolError::Server(format!(
                            "refused the authentication: {why}"
                        ))));
                    }
                    // Fast authentication succeeded: the OK follows, the client says nothing.
                    _ if p.payload[..] == [0x01, 0x03] => {}
                    _ => {
                        replies = 1;
                        reply_seq = seq.wrapping_add(1);
                    }
                }
            }
            if replies > 0
                && let Some(p) = packet::take(self.client_buf, MAX_HANDSHAKE_PACKET)
                    .map_err(|e| SessionError::Protocol(ProtocolError::Client(e.to_string())))?
            {
                replies = 0;
                if p.seq != reply_seq {
                    // Not the reply (a command the client sent early, with sequence id 0):
                    // the server would take it as a command the moment it accepts the login.
                    return Err(SessionError::Protocol(ProtocolError::Client(format!(
                        "sent a packet with sequence id {} during authentication, where its reply ({reply_seq}) was due",
                        p.seq
                    ))));
                }
                let seq = p.seq.wrapping_add(self.shift);
                self.server.write_all(&framed(seq, &p.payload)).await.map_err(SessionError::UpstreamIo)?;
            }
            self.client.flush().await.map_err(SessionError::ClientIo)?;
            self.server.flush().await.map_err(SessionError::UpstreamIo)?;
            self.server_buf.reserve(4096);
            // The client is read only when its reply is awaited (and then at most a packet's
            // worth is kept): what it sends early waits in the socket.
            let read_client = replies > 0 && self.client_buf.len() < MAX_HANDSHAKE_PACKET + 4;
            if read_client {
                self.client_buf.reserve(4096);
            }
            tokio::select! {
                read = self.server.read_buf(self.server_buf) => match read {
                    Ok(0) => return Err(SessionError::UpstreamClosed),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::UpstreamIo(e)),
                },
                read = self.client.read_buf(self.client_buf), if read_client => match read {
                    Ok(0) => {
                        return Err(SessionError::ClientIo(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "left during authentication",
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }
}

/// Plugins whose client sends the password itself (over a connection it believes encrypted:
/// sha256_password and caching_sha2_password's full authentication; always: the others).
const CLEARTEXT_PLUGINS: &[&[u8]] = &[b"mysql_clear_password", b"dialog", b"sha256_password"];

/// Whether a client naming authentication plugin `plugin` in its response sends its password
/// in clear in it.
pub fn sends_cleartext(plugin: &[u8]) -> bool {
    CLEARTEXT_PLUGINS.contains(&plugin)
}

/// Whether a server packet of the authentication exchange asks the client for its password in
/// clear: caching_sha2_password's "perform full authentication" (the client answers with the
/// password itself on a connection it believes encrypted), or a switch to a plugin that sends
/// it as is.
fn asks_for_cleartext(p: &[u8]) -> bool {
    match p {
        [0x01, 0x04] => true,
        [state::EOF, rest @ ..] if !rest.is_empty() => {
            let name = &rest[..memchr::memchr(0, rest).unwrap_or(rest.len())];
            sends_cleartext(name)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MariaDB 10.11's greeting (scramble bytes replaced).
    fn greeting() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.5.5-10.11.19-MariaDB\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        let caps = Caps::CLIENT_PROTOCOL_41
            | Caps::CLIENT_SECURE_CONNECTION
            | Caps::CLIENT_PLUGIN_AUTH
            | Caps::CLIENT_COMPRESS
            | Caps::CLIENT_LOCAL_FILES
            | Caps::CLIENT_SSL
            | Caps::CLIENT_DEPRECATE_EOF
            | Caps::CLIENT_MULTI_STATEMENTS;
        p.extend_from_slice(&(caps.bits() as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&((caps.bits() >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x1d, 0, 0, 0]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        p
    }

    #[test]
    fn the_greeting_offers_only_what_the_proxy_reads() {
        let mut p = greeting();
        let layout = greeting_layout(&p).unwrap();
        let caps = read_caps(&p, &layout);
        assert!(caps.contains(Caps::CLIENT_COMPRESS | Caps::CLIENT_LOCAL_FILES));
        let offered = caps & supported();
        write_caps(&mut p, &layout, offered);
        let parsed: mysql_common::packets::HandshakePacket<'_> = mysql_common::io::ParseBuf(&p).parse(()).unwrap();
        assert_eq!(parsed.capabilities(), offered);
        assert!(!parsed.capabilities().intersects(Caps::CLIENT_COMPRESS | Caps::CLIENT_SSL));
        assert!(parsed.capabilities().contains(Caps::CLIENT_DEPRECATE_EOF | Caps::CLIENT_MULTI_STATEMENTS));
        assert!(parsed.mariadb_ext_capabilities().is_empty(), "MariaDB's extended capabilities are withdrawn");
        assert_eq!(parsed.nonce(), b"abcdefghijklmnopqrst", "the nonce reaches the client unchanged");
        assert_eq!(parsed.auth_plugin_name_ref(), Some(&b"mysql_native_password"[..]));
    }

    #[test]
    fn truncated_greetings_are_not_read() {
        let p = greeting();
        for cut in [0, 1, 10, 30] {
            assert!(greeting_layout(&p[..cut]).is_none(), "{cut}");
        }
        assert!(greeting_layout(b"\x09old").is_none());
    }

    #[test]
    fn requests_for_a_cleartext_password_are_recognised() {
        assert!(asks_for_cleartext(b"\x01\x04"));
        assert!(!asks_for_cleartext(b"\x01\x03"), "fast authentication succeeded");
        assert!(asks_for_cleartext(b"\xfemysql_clear_password\0"));
        assert!(asks_for_cleartext(b"\xfedialog\0\x01"));
        assert!(!asks_for_cleartext(b"\xfecaching_sha2_password\0nonce"));
        assert!(asks_for_cleartext(b"\xfesha256_password\0nonce"));
        assert!(!asks_for_cleartext(b"\x00\x00\x00\x02\x00\x00\x00"));
    }

    #[test]
    fn collations_name_their_character_sets() {
        assert_eq!(charset_of(28), "gbk");
        assert_eq!(charset_of(45), "utf8mb4");
        assert_eq!(charset_of(8), "latin1");
    }
}
