//! Approval announcements: when a statement is held for a human's approval, the agent POSTs a
//! JSON document to the webhook url its policy names.
//!
//! A slow or dead webhook never blocks a session: [`Webhooks::announce`] only puts the delivery
//! on a bounded queue (1024) and returns at once, without waiting on the network, a lock or the
//! queue. When the queue is full the announcement is dropped, counted, and warned about (at most
//! one warning per 10 s, with the number dropped since the last one).
//!
//! One task takes deliveries off the queue and runs each in its own task, at most 16 at once, so
//! an endpoint that hangs or refuses holds only its own deliveries' slots. An attempt (connect,
//! TLS, request, response head) has 10 s; any 2xx delivers. Anything else is retried after 1, 2,
//! 4 and 8 s (5 attempts in all) or after the endpoint's `Retry-After` on 429 and 503 (capped at
//! 60 s), except a 4xx other than 408 and 429: the endpoint said the request itself is wrong.
//! A delivery given up is warned about with its url (without the query) and the last error.
//!
//! https trusts the Mozilla roots compiled into the agent (`webpki-roots`), through the ring
//! provider named explicitly, so it depends on no process-wide default provider.

use std::{
    error::Error as StdError,
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    HeaderMap, Method, Request, StatusCode,
    body::Incoming,
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

/// Announcements waiting for a delivery slot; beyond this `announce` drops them.
pub const QUEUE_CAPACITY: usize = 1024;
/// Deliveries (with their retries) in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Attempts per delivery, the first included.
const ATTEMPTS: u32 = 5;
/// One attempt's time for connect, TLS handshake, request and response head.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after the first failed attempt, doubled after each further one.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// The most of a response body read (and discarded).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// At most one queue-full warning per this interval.
const DROP_WARNING_INTERVAL_MS: u64 = 10_000;
const USER_AGENT_VALUE: &str = concat!("warden/", env!("CARGO_PKG_VERSION"));

/// A webhook url from a policy: `http://` or `https://`, a host (DNS name, IPv4 address or
/// bracketed IPv6 address), an optional port and a path with an optional query. User
/// information (`user:pass@`) and fragments are refused.
///
/// Its [`Display`](fmt::Display) form is `scheme://host:port/path` *without the query*: a query
/// may carry the endpoint's token, and this form is what logs and status output show. `Debug`
/// hides the query too (it shows `?…` when there is one).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    tls: bool,
    host: Host,
    port: u16,
    /// The request target: path and query, starting with `/`.
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// A DNS name, lowercased.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::V4(ip) => write!(f, "{ip}"),
            Host::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

impl WebhookUrl {
    /// Parses and validates a webhook url. The error is a sentence for a policy-file error
    /// message, e.g. "webhook url `ftp://x`: expected http:// or https://"; it quotes the url
    /// without user information or query, which may carry secrets.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let fail = |why: &str| format!("webhook url `{}`: {why}", shown(text));
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("contains whitespace or control characters"));
        }
        let (tls, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "http://") {
            (false, rest)
        } else {
            return Err(fail("expected http:// or https://"));
        };
        let (authority, target) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(fail(
                "user information (`user:pass@`) is not allowed: credentials go in the url's path or query \
                 (a token the endpoint checks), not before the host",
            ));
        }
        if target.contains('#') {
            return Err(fail("a fragment (`#...`) is not allowed"));
        }
        let (host, port) = parse_authority(authority).map_err(|why| fail(&why))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        let target = match target {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(fail("the path must be ASCII (percent-encode other characters)"));
        }
        if target.parse::<hyper::Uri>().is_err() {
            return Err(fail("the path is not a valid request target"));
        }
        Ok(WebhookUrl { tls, host, port, target })
    }

    /// Whether the url is `https://`.
    pub fn is_https(&self) -> bool {
        self.tls
    }

    fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The path without the query.
    fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The `Host` header: the host, with the port when it is not the scheme's default.
    fn host_header(&self) -> String {
        if self.port == self.default_port() { self.host.to_string() } else { format!("{}:{}", self.host, self.port) }
    }

    /// The name the TLS handshake verifies (and sends as SNI when a DNS name).
    fn server_name(&self) -> Result<ServerName<'static>, AttemptError> {
        match &self.host {
            Host::Name(name) => ServerName::try_from(name.clone())
                .map_err(|e| AttemptError::Request(format!("`{name}` is not a valid TLS server name: {e}"))),
            Host::V4(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())),
            Host::V6(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())),
        }
    }
}

impl fmt::Display for WebhookUrl {
    /// `scheme://host:port/path`, without the query (which may carry a token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query = if self.target.contains('?') { "?…" } else { "" };
        f.debug_tuple("WebhookUrl").field(&format_args!("{self}{query}")).finish()
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// The url as an error message quotes it: without user information and query.
fn shown(text: &str) -> String {
    let cut = text.find(['?', '#']).unwrap_or(text.len());
    let text = &text[..cut];
    let authority_start = text.find("://").map_or(0, |i| i + 3);
    let authority_end = text[authority_start..].find('/').map_or(text.len(), |i| authority_start + i);
    match text[authority_start..authority_end].rfind('@') {
        Some(at) => format!("{}…@{}", &text[..authority_start], &text[authority_start + at + 1..]),
        None => text.to_string(),
    }
}

/// Parses `host[:port]`, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn parse_authority(authority: &str) -> Result<(Host, Option<u16>), String> {
    if authority.is_empty() {
        return Err("no host".to_string());
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return Err("unclosed `[` in the host".to_string());
        };
        let ip = inside.parse::<Ipv6Addr>().map_err(|_| format!("`[{inside}]` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(port)?),
                None => return Err(format!("unexpected `{after}` after the IPv6 address")),
            },
        };
        return Ok((Host::V6(ip), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            return Err("an IPv6 address must be written in brackets, e.g. `[::1]`".to_string());
        }
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("no host".to_string());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Host::V4(ip), port));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{host}` is not a valid IPv4 address"));
    }
    let name = host.to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) || ServerName::try_from(name.as_str()).is_err() {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok((Host::Name(name), port))
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("empty port after `:`".to_string());
    }
    match port.parse::<u16>() {
        Ok(n) if n != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("port `{port}` is not a number from 1 to 65535")),
    }
}

/// Delivery counters, for the admin API's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Announcements accepted onto the queue.
    pub queued: u64,
    /// Deliveries an endpoint answered with a 2xx.
    pub delivered: u64,
    /// Deliveries given up: attempts exhausted, or refused with a 4xx.
    pub failed: u64,
    /// Announcements dropped without an attempt: the queue was full (or webhooks are disabled).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The queue-full warning's rate limit, lock-free so `announce` never waits.
#[derive(Debug)]
struct DropWarnings {
    since: std::time::Instant,
    /// Milliseconds after `since` of the last warning, [`Self::NEVER`] before the first.
    last_ms: AtomicU64,
    /// Drops not yet reported in a warning.
    pending: AtomicU64,
}

impl DropWarnings {
    const NEVER: u64 = u64::MAX;

    fn new() -> DropWarnings {
        DropWarnings {
            since: std::time::Instant::now(),
            last_ms: AtomicU64::new(Self::NEVER),
            pending: AtomicU64::new(0),
        }
    }

    /// Notes a drop; returns the number to warn about when a warning is due.
    fn note(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(Self::NEVER - 1);
        self.note_at(now_ms)
    }

    fn note_at(&self, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != Self::NEVER && now_ms.saturating_sub(last) < DROP_WARNING_INTERVAL_MS {
            return None;
        }
        // One of the racing callers wins the warning; the others' drops are counted in it or the next.
        self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

/// Timing and limits of delivery; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Settings {
    queue: usize,
    in_flight: usize,
    attempts: u32,
    attempt_timeout: Duration,
    backoff_base: Duration,
    retry_after_cap: Duration,
}

impl Settings {
    const DEFAULT: Settings = Settings {
        queue: QUEUE_CAPACITY,
        in_flight: MAX_IN_FLIGHT,
        attempts: ATTEMPTS,
        attempt_timeout: ATTEMPT_TIMEOUT,
        backoff_base: BACKOFF_BASE,
        retry_after_cap: RETRY_AFTER_CAP,
    };
}

/// One announcement to deliver.
struct Delivery {
    url: WebhookUrl,
    body: Bytes,
}

/// What the delivery tasks share.
struct Context {
    settings: Settings,
    /// Built once at start; the error (reported then) fails each https delivery.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    counters: Arc<Counters>,
}

/// The approval webhook sender. Cloning is cheap (one `Arc`); all clones feed one queue. The
/// delivery task ends when the last clone is dropped and the queue is empty.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` when disabled.
    queue: Option<mpsc::Sender<Delivery>>,
    counters: Arc<Counters>,
    drops: DropWarnings,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks").field("enabled", &self.shared.queue.is_some()).field("stats", &self.stats()).finish()
    }
}

impl Webhooks {
    /// Starts the delivery task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn start() -> Webhooks {
        Webhooks::start_with(Settings::DEFAULT)
    }

    fn start_with(settings: Settings) -> Webhooks {
        let (queue, receiver) = mpsc::channel(settings.queue);
        let counters = Arc::new(Counters::default());
        let tls = tls_config().map_err(|e| {
            tracing::error!(error = %e, "cannot build the TLS configuration: https webhooks will fail");
            e.to_string()
        });
        let context = Arc::new(Context { settings, tls, counters: counters.clone() });
        tokio::spawn(dispatch(receiver, context));
        Webhooks { shared: Arc::new(Shared { queue: Some(queue), counters, drops: DropWarnings::new() }) }
    }

    /// Webhooks that deliver nothing: `announce` drops silently (counted in `dropped`) and returns
    /// false. Needs no runtime; for agents without webhooks and for tests.
    pub fn disabled() -> Webhooks {
        Webhooks { shared: Arc::new(Shared { queue: None, counters: Arc::default(), drops: DropWarnings::new() }) }
    }

    /// Queues a POST of `body` (`Content-Type: application/json`) to `url`. Never waits: when the
    /// queue is full the announcement is dropped (with a rate-limited warning) and this returns
    /// false.
    pub fn announce(&self, url: &WebhookUrl, body: Bytes) -> bool {
        let shared = &*self.shared;
        let Some(queue) = &shared.queue else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match queue.try_send(Delivery { url: url.clone(), body }) {
            Ok(()) => {
                shared.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "the queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the delivery task has ended",
                };
                if let Some(dropped) = shared.drops.note() {
                    tracing::warn!(
                        url = %url,
                        dropped,
                        capacity = queue.max_capacity(),
                        "approval webhook announcements dropped since the last warning: {reason}"
                    );
                }
                false
            }
        }
    }

    /// The delivery counters.
    pub fn stats(&self) -> WebhookStats {
        let counters = &self.shared.counters;
        WebhookStats {
            queued: counters.queued.load(Ordering::Relaxed),
            delivered: counters.delivered.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The client TLS configuration: Mozilla's roots, the ring provider, ALPN http/1.1.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Takes deliveries off the queue, each into its own task while a slot is free.
async fn dispatch(mut queue: mpsc::Receiver<Delivery>, context: Arc<Context>) {
    let slots = Arc::new(Semaphore::new(context.settings.in_flight));
    loop {
        // A slot first: while all are taken, announcements wait in the (bounded) queue.
        let slot = match slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(e) => {
                tracing::error!(error = %e, "approval webhook delivery stopped");
                return;
            }
        };
        let Some(delivery) = queue.recv().await else { return };
        let context = context.clone();
        tokio::spawn(async move {
            deliver(&context, delivery).await;
            drop(slot);
        });
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("TLS is not available: {0}")]
    TlsConfig(String),
    #[error("HTTP: {}", chain(.0))]
    Http(hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("no response within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the endpoint answered {status}")]
    Status { status: StatusCode, retry_after: Option<Duration> },
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Retry after the backoff.
    Backoff,
    /// Retry after the endpoint's `Retry-After` (already capped).
    After(Duration),
    /// Do not retry.
    GiveUp,
}

impl AttemptError {
    fn status(status: StatusCode, headers: &HeaderMap, cap: Duration) -> AttemptError {
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(headers).map(|after| after.min(cap))
            }
            _ => None,
        };
        AttemptError::Status { status, retry_after }
    }

    fn next(&self) -> Next {
        match self {
            AttemptError::Status { status, .. }
                if status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS =>
            {
                Next::GiveUp
            }
            AttemptError::Status { retry_after: Some(after), .. } => Next::After(*after),
            // Neither gets better by trying again.
            AttemptError::TlsConfig(_) | AttemptError::Request(_) => Next::GiveUp,
            _ => Next::Backoff,
        }
    }
}

/// `Retry-After` in seconds; the HTTP-date form is not honoured (the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error with its sources: hyper's own message is often only the outermost layer.
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Delivers one announcement, retrying as the module documentation says.
async fn deliver(context: &Context, delivery: Delivery) {
    let settings = &context.settings;
    let url = &delivery.url;
    let mut attempt = 1;
    loop {
        let error = match attempt_once(context, url, delivery.body.clone()).await {
            Ok(()) => {
                context.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %url, attempt, "approval webhook delivered");
                return;
            }
            Err(error) => error,
        };
        let delay = match error.next() {
            Next::GiveUp => {
                context.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %url, attempt, error = %error, "approval webhook refused; not retried");
                return;
            }
            _ if attempt >= settings.attempts => {
                context.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %url, attempts = attempt, error = %error, "approval webhook not delivered; given up");
                return;
            }
            Next::After(after) => after,
            Next::Backoff => settings.backoff_base.saturating_mul(1 << (attempt - 1).min(16)),
        };
        tracing::debug!(url = %url, attempt, error = %error, delay_ms = delay.as_millis(), "approval webhook attempt failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// One attempt: the response head within the attempt's timeout, then at most
/// [`MAX_RESPONSE_BODY`] of the body read and discarded (within the same deadline).
async fn attempt_once(context: &Context, url: &WebhookUrl, body: Bytes) -> Result<(), AttemptError> {
    let timeout = context.settings.attempt_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let exchange = match tokio::time::timeout_at(deadline, exchange(context, url, body)).await {
        Ok(exchange) => exchange?,
        Err(_) => return Err(AttemptError::Timeout(timeout)),
    };
    let (head, body) = exchange.response.into_parts();
    // The verdict is the status's; the body is read only so the endpoint is not cut off mid-answer.
    match tokio::time::timeout_at(deadline, discard(body)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(url = %url, error = %chain(&e), "approval webhook response body unread"),
        Err(_) => tracing::debug!(url = %url, "approval webhook response body not read within the timeout"),
    }
    drop(exchange.connection);
    if head.status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::status(head.status, &head.headers, context.settings.retry_after_cap))
    }
}

/// Reads and discards a response body, stopping after [`MAX_RESPONSE_BODY`] bytes.
async fn discard(mut body: Incoming) -> Result<usize, hyper::Error> {
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        let Some(frame) = body.frame().await else { break };
        if let Ok(data) = frame?.into_data() {
            read += data.len();
        }
    }
    Ok(read)
}

/// A response and the task driving its connection, aborted when dropped.
struct Exchange {
    response: hyper::Response<Incoming>,
    connection: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects (with TLS for https), sends the POST and waits for the response head.
async fn exchange(context: &Context, url: &WebhookUrl, body: Bytes) -> Result<Exchange, AttemptError> {
    let request = request(url, body)?;
    let tcp = match &url.host {
        Host::Name(name) => TcpStream::connect((name.as_str(), url.port)).await,
        Host::V4(ip) => TcpStream::connect(SocketAddr::from((*ip, url.port))).await,
        Host::V6(ip) => TcpStream::connect(SocketAddr::from((*ip, url.port))).await,
    }
    .map_err(AttemptError::Connect)?;
    if !url.tls {
        return send(tcp, request).await;
    }
    let config = context.tls.clone().map_err(AttemptError::TlsConfig)?;
    let tls =
        tokio_rustls::TlsConnector::from(config).connect(url.server_name()?, tcp).await.map_err(AttemptError::Tls)?;
    send(tls, request).await
}

fn request(url: &WebhookUrl, body: Bytes) -> Result<Request<Full<Bytes>>, AttemptError> {
    Request::builder()
        .method(Method::POST)
        .uri(url.target.as_str())
        .header(HOST, url.host_header())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONTENT_LENGTH, body.len())
        // One request per connection: the endpoint need not keep it open for us.
        .header(CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| AttemptError::Request(e.to_string()))
}

async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Exchange, AttemptError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(AttemptError::Http)?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %chain(&e), "approval webhook connection ended with an error");
        }
    }));
    let response = sender.send_request(request).await.map_err(AttemptError::Http)?;
    Ok(Exchange { response, connection })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// Short timings: a test's retries take milliseconds.
    const FAST: Settings = Settings {
        attempt_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(5),
        retry_after_cap: Duration::from_millis(5),
        ..Settings::DEFAULT
    };

    fn url(text: &str) -> WebhookUrl {
        WebhookUrl::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(text: &str) -> String {
        match WebhookUrl::parse(text) {
            Ok(parsed) => panic!("`{text}` was accepted as {parsed:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parse_accepts_http_and_https_urls() {
        let plain = url("http://example.com");
        assert_eq!(
            plain,
            WebhookUrl { tls: false, host: Host::Name("example.com".into()), port: 80, target: "/".into() }
        );
        let secure = url("HTTPS://Hooks.Example.COM:8443/a/b?token=x&y=1");
        assert_eq!(
            secure,
            WebhookUrl {
                tls: true,
                host: Host::Name("hooks.example.com".into()),
                port: 8443,
                target: "/a/b?token=x&y=1".into()
            }
        );
        assert!(secure.is_https());
        let query_only = url("http://127.0.0.1:9000?x=1");
        assert_eq!(query_only.host, Host::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((query_only.port, query_only.target.as_str()), (9000, "/?x=1"));
        let v6 = url("https://[::1]/hook");
        assert_eq!((v6.host, v6.port, v6.target.as_str()), (Host::V6(Ipv6Addr::LOCALHOST), 443, "/hook"));
        let v6_port = url("http://[2001:db8::1]:8080/");
        assert_eq!((v6_port.port, v6_port.host_header().as_str()), (8080, "[2001:db8::1]:8080"));
        assert_eq!(url("http://my-host_1.internal/x%20y").target, "/x%20y");
    }

    #[test]
    fn parse_refuses_bad_urls_with_a_reason() {
        assert_eq!(refused("ftp://x"), "webhook url `ftp://x`: expected http:// or https://");
        assert!(refused("example.com/hook").contains("expected http:// or https://"));
        let userinfo = refused("https://alice:s3cret@example.com/hook?token=t0k");
        assert!(userinfo.contains("`user:pass@`") && userinfo.contains("path or query"), "{userinfo}");
        assert!(!userinfo.contains("s3cret") && !userinfo.contains("t0k"), "the secret is echoed: {userinfo}");
        assert!(refused("https://example.com/hook#part").contains("fragment"));
        assert!(refused("https://").contains("no host"));
        assert!(refused("http://:80/").contains("no host"));
        assert!(refused("https://example.com:0/").contains("from 1 to 65535"));
        assert!(refused("https://example.com:65536/").contains("from 1 to 65535"));
        assert!(refused("https://example.com:http/").contains("from 1 to 65535"));
        assert!(refused("https://example.com:/").contains("empty port"));
        assert!(refused("https://[::1/").contains("unclosed"));
        assert!(refused("https://[1.2.3.4]/").contains("not an IPv6 address"));
        assert!(refused("https://[::1]x/").contains("after the IPv6 address"));
        assert!(refused("https://::1/").contains("brackets"));
        assert!(refused("https://300.1.1.1/").contains("not a valid IPv4 address"));
        assert!(refused("https://-bad.example/").contains("not a valid host name"));
        assert!(refused("https://a..b/").contains("not a valid host name"));
        assert!(refused("https://exa%mple.com/").contains("not a valid host name"));
        assert!(refused("https://example.com/a b").contains("whitespace"));
        assert!(refused("https://example.com/caf\u{e9}").contains("ASCII"));
        // Error messages quote the url without its query.
        assert!(!refused("https://example.com:0/x?token=t0k").contains("t0k"));
    }

    #[test]
    fn display_hides_the_query_and_host_header_names_non_default_ports() {
        assert_eq!(url("https://example.com/hook?token=secret").to_string(), "https://example.com:443/hook");
        assert_eq!(
            format!("{:?}", url("https://example.com/hook?token=secret")),
            "WebhookUrl(https://example.com:443/hook?…)"
        );
        assert_eq!(url("http://[::1]:8080").to_string(), "http://[::1]:8080/");
        assert_eq!(url("https://example.com/hook").host_header(), "example.com");
        assert_eq!(url("http://example.com:443/").host_header(), "example.com:443");
        assert_eq!(url("https://[::1]/").host_header(), "[::1]");
    }

    #[test]
    fn retry_decisions_follow_the_status() {
        let cap = Duration::from_secs(60);
        let mut headers = HeaderMap::new();
        let next = |status: u16, headers: &HeaderMap| {
            AttemptError::status(StatusCode::from_u16(status).expect("status"), headers, cap).next()
        };
        assert_eq!(next(404, &headers), Next::GiveUp);
        assert_eq!(next(400, &headers), Next::GiveUp);
        assert_eq!(next(408, &headers), Next::Backoff);
        assert_eq!(next(429, &headers), Next::Backoff);
        assert_eq!(next(500, &headers), Next::Backoff);
        assert_eq!(next(503, &headers), Next::Backoff);
        headers.insert(RETRY_AFTER, " 7 ".parse().expect("header"));
        assert_eq!(next(429, &headers), Next::After(Duration::from_secs(7)));
        assert_eq!(next(503, &headers), Next::After(Duration::from_secs(7)));
        assert_eq!(next(500, &headers), Next::Backoff, "Retry-After counts on 429 and 503 only");
        headers.insert(RETRY_AFTER, "3600".parse().expect("header"));
        assert_eq!(next(503, &headers), Next::After(cap));
        headers.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"));
        assert_eq!(next(429, &headers), Next::Backoff);
        assert_eq!(AttemptError::Timeout(ATTEMPT_TIMEOUT).next(), Next::Backoff);
        assert_eq!(AttemptError::TlsConfig("x".into()).next(), Next::GiveUp);
    }

    #[test]
    fn drop_warnings_are_rate_limited() {
        let drops = DropWarnings::new();
        assert_eq!(drops.note_at(0), Some(1));
        assert_eq!(drops.note_at(5_000), None);
        assert_eq!(drops.note_at(9_999), None);
        assert_eq!(drops.note_at(10_000), Some(3), "the warning counts the drops since the last one");
        assert_eq!(drops.note_at(10_001), None);
    }

    #[test]
    fn disabled_webhooks_need_no_runtime() {
        let webhooks = Webhooks::disabled();
        assert!(!webhooks.announce(&url("http://127.0.0.1:9/"), Bytes::from_static(b"{}")));
        assert_eq!(webhooks.stats(), WebhookStats { dropped: 1, ..WebhookStats::default() });
    }

    #[test]
    fn tls_config_builds_with_roots_and_alpn() {
        let config = tls_config().expect("TLS configuration");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    /// A request as the test server read it.
    #[derive(Debug)]
    struct Received {
        head: String,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim())
            })
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Received {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read the request head");
            assert!(n > 0, "connection closed in the request head: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
        let mut received = Received { head, body: Vec::new() };
        let length: usize = received.header("content-length").expect("Content-Length").parse().expect("length");
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.expect("read the request body");
            assert!(n > 0, "connection closed in the request body");
            buf.extend_from_slice(&chunk[..n]);
        }
        received.body = buf[head_end..head_end + length].to_vec();
        received
    }

    /// Answers each connection with the next status line of `script` (and extra header lines),
    /// passing on each request it read.
    fn serve(listener: TcpListener, script: Vec<(&'static str, &'static str)>) -> mpsc::UnboundedReceiver<Received> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (status, extra) in script {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let received = read_request(&mut stream).await;
                let body = "ignored body";
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.expect("answer");
                let _ = tx.send(received);
            }
        });
        rx
    }

    async fn local() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        (listener, port)
    }

    /// Waits (polling, at most 5 s: the limit is reached only when the test fails) for the stats.
    async fn wait_for(webhooks: &Webhooks, done: impl Fn(&WebhookStats) -> bool) -> WebhookStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = webhooks.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never reached the expected state: {stats:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn next_request(requests: &mut mpsc::UnboundedReceiver<Received>) -> Received {
        tokio::time::timeout(Duration::from_secs(5), requests.recv())
            .await
            .expect("no request within 5 s")
            .expect("the server ended")
    }

    #[tokio::test]
    async fn delivers_a_json_post() {
        let (listener, port) = local().await;
        let mut requests = serve(listener, vec![("200 OK", "")]);
        let webhooks = Webhooks::start_with(FAST);
        let body = Bytes::from_static(br#"{"statement":"DELETE FROM t","approve":"https://x/1"}"#);
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{port}/hook?k=v")), body.clone()));

        let request = next_request(&mut requests).await;
        assert!(request.head.starts_with("POST /hook?k=v HTTP/1.1\r\n"), "{}", request.head);
        assert_eq!(request.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some(USER_AGENT_VALUE));
        assert_eq!(request.header("content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(request.body, body);
        let stats = wait_for(&webhooks, |s| s.delivered == 1).await;
        assert_eq!(stats, WebhookStats { queued: 1, delivered: 1, failed: 0, dropped: 0 });
    }

    #[tokio::test]
    async fn retries_server_errors_until_delivered() {
        let (listener, port) = local().await;
        let script = vec![
            ("500 Internal Server Error", ""),
            ("503 Service Unavailable", "retry-after: 3600\r\n"),
            ("200 OK", ""),
        ];
        let mut requests = serve(listener, script);
        let webhooks = Webhooks::start_with(FAST);
        let started = Instant::now();
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{port}/")), Bytes::from_static(b"{\"n\":1}")));

        for _ in 0..3 {
            assert_eq!(next_request(&mut requests).await.body, b"{\"n\":1}");
        }
        let stats = wait_for(&webhooks, |s| s.delivered == 1).await;
        assert_eq!(stats, WebhookStats { queued: 1, delivered: 1, failed: 0, dropped: 0 });
        // The hour-long Retry-After was capped (at 5 ms here).
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn gives_up_after_five_attempts() {
        let (listener, port) = local().await;
        let mut requests = serve(listener, vec![("502 Bad Gateway", ""); 6]);
        let webhooks = Webhooks::start_with(FAST);
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{port}/")), Bytes::from_static(b"{}")));

        let stats = wait_for(&webhooks, |s| s.failed == 1).await;
        assert_eq!(stats, WebhookStats { queued: 1, delivered: 0, failed: 1, dropped: 0 });
        for _ in 0..ATTEMPTS {
            next_request(&mut requests).await;
        }
        assert!(requests.try_recv().is_err(), "more than {ATTEMPTS} attempts");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (listener, port) = local().await;
        let mut requests = serve(listener, vec![("404 Not Found", ""), ("200 OK", "")]);
        let webhooks = Webhooks::start_with(FAST);
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{port}/gone")), Bytes::from_static(b"{}")));

        let stats = wait_for(&webhooks, |s| s.failed == 1).await;
        assert_eq!(stats, WebhookStats { queued: 1, delivered: 0, failed: 1, dropped: 0 });
        next_request(&mut requests).await;
        assert!(requests.try_recv().is_err(), "a 404 was retried");
    }

    #[tokio::test]
    async fn an_attempt_without_an_answer_times_out() {
        // Bound and listening, never accepting: the connect succeeds, no answer ever comes.
        let (_silent, port) = local().await;
        let settings = Settings { attempt_timeout: Duration::from_millis(50), attempts: 2, ..FAST };
        let webhooks = Webhooks::start_with(settings);
        let started = Instant::now();
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{port}/")), Bytes::from_static(b"{}")));

        let stats = wait_for(&webhooks, |s| s.failed == 1).await;
        assert_eq!(stats.delivered, 0);
        assert!(started.elapsed() >= Duration::from_millis(100), "two attempts of 50 ms took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn dead_and_silent_endpoints_do_not_hold_up_a_healthy_one() {
        let dead_port = local().await.1; // bound, then dropped: connections are refused
        let (_silent, silent_port) = local().await; // never accepts: each attempt waits 10 s
        let (listener, healthy_port) = local().await;
        let mut requests = serve(listener, vec![("204 No Content", "")]);
        // The real timings: the dead and silent deliveries are still retrying at the end.
        let webhooks = Webhooks::start();
        let started = Instant::now();
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{dead_port}/")), Bytes::from_static(b"{}")));
        assert!(webhooks.announce(&url(&format!("http://127.0.0.1:{silent_port}/")), Bytes::from_static(b"{}")));
        assert!(
            webhooks.announce(&url(&format!("http://127.0.0.1:{healthy_port}/")), Bytes::from_static(b"{\"ok\":1}"))
        );
        assert!(started.elapsed() < Duration::from_millis(100), "announce waited: {:?}", started.elapsed());

        let request = tokio::time::timeout(Duration::from_millis(500), requests.recv())
            .await
            .expect("the healthy endpoint was held up")
            .expect("the server ended");
        assert_eq!(request.body, b"{\"ok\":1}");
        let stats = wait_for(&webhooks, |s| s.delivered == 1).await;
        assert_eq!(stats, WebhookStats { queued: 3, delivered: 1, failed: 0, dropped: 0 });
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_returns_false() {
        // The runtime is single-threaded: nothing takes from the queue until this test awaits.
        let webhooks = Webhooks::start_with(Settings { queue: 2, ..FAST });
        let target = url("http://127.0.0.1:9/");
        assert!(webhooks.announce(&target, Bytes::from_static(b"{}")));
        assert!(webhooks.announce(&target, Bytes::from_static(b"{}")));
        assert!(!webhooks.announce(&target, Bytes::from_static(b"{}")));
        assert!(!webhooks.clone().announce(&target, Bytes::from_static(b"{}")));
        assert_eq!(webhooks.stats(), WebhookStats { queued: 2, delivered: 0, failed: 0, dropped: 2 });
    }

    #[tokio::test]
    async fn https_offers_sni_and_alpn() {
        let (listener, port) = local().await;
        let hello = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut record = vec![0u8; 5];
            stream.read_exact(&mut record).await.expect("TLS record header");
            let length = usize::from(u16::from_be_bytes([record[3], record[4]]));
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await.expect("TLS record");
            (record[0], body)
        });
        let webhooks = Webhooks::start_with(Settings { attempts: 1, ..FAST });
        assert!(webhooks.announce(&url(&format!("https://localhost:{port}/")), Bytes::from_static(b"{}")));

        let (content_type, body) =
            tokio::time::timeout(Duration::from_secs(5), hello).await.expect("no ClientHello").expect("server");
        assert_eq!(content_type, 0x16, "not a TLS handshake record");
        assert_eq!(body[0], 0x01, "not a ClientHello");
        let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"localhost"), "no SNI");
        assert!(contains(b"\x08http/1.1"), "no ALPN http/1.1");
        // The server hung up without a handshake: the one attempt fails.
        wait_for(&webhooks, |s| s.failed == 1).await;
    }
}
