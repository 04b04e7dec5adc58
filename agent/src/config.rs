//! The agent's configuration file (YAML): governed databases, the proxy listeners, where state
//! and audit records live. Parsed, then validated, into an immutable snapshot; every mistake is
//! reported with the file, the field and what was expected.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use std::sync::Arc;

use serde::Deserialize;

/// A configuration problem, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// serde_yaml_ng's message names the field path, the line and column, and what it expected.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: PathBuf, field: String, message: String },
}

/// How connections to a database are governed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Redirected through the proxy.
    Enforce,
    /// Attributed and recorded, never redirected.
    Observe,
}

/// What happens to a governed connection when the agent is not serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// connect() fails at once (EPERM).
    Closed,
    /// The flow goes direct and is recorded as ungoverned.
    Open,
    /// Per identity, as its policies say: open for a workload the agent found that no policy
    /// guards in this database, closed for every other (guarded, or never seen: the kernel
    /// cannot read its labels).
    Policy,
}

/// The database protocol spoken on a governed endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    /// MySQL 8 and MariaDB 10.11+: statements judged, audited and refused as PostgreSQL's.
    Mysql,
    /// Any other TCP protocol: connection-level governance only.
    Tcp,
}

/// Upstream TLS, with libpq's `sslmode` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    /// Encrypt if the server agrees; no certificate check (libpq's default).
    #[default]
    Prefer,
    /// Encrypt or fail; no certificate check unless a CA is given.
    Require,
    /// Encrypt, and the certificate chain must lead to `ca`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the server.
    VerifyFull,
}

/// TLS toward one database.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA(s) that sign the server certificate.
    pub ca: Option<PathBuf>,
    /// Name to verify (verify-full) and send as SNI; defaults to the host of `address`.
    pub server_name: Option<String>,
    #[serde(skip)]
    pub client_config: Option<Arc<rustls::ClientConfig>>,
}

/// The certificate the proxy presents to clients that ask for TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(skip)]
    pub server_config: Option<Arc<rustls::ServerConfig>>,
    /// DER of the certificate presented (channel binding holds only if it is the server's).
    #[serde(skip)]
    pub leaf_certificate: Arc<[u8]>,
}

/// Where a database listens: exact addresses, or a port on any address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseAddress {
    /// An IP address and port.
    Exact(Vec<SocketAddr>),
    /// A host name and port. Parsing checks only the name's syntax: `addrs` stays empty until
    /// `net::dns` resolves it at start-up (and `check-config`), and the running agent follows
    /// later answers in its own table, not in this snapshot.
    Host { host: String, port: u16, addrs: Vec<SocketAddr> },
    /// `*:PORT`: the port on every address, including ones a workload might try instead.
    AnyAddress(u16),
    /// `NAMESPACE/NAME:PORT`: a Kubernetes Service, by its port's number or name. Its cluster
    /// IPs, its node port (on every address) and its backends' addresses are governed, followed
    /// from the API (`kube/services.rs`); none are known at parse time.
    Service { namespace: String, name: String, port: ServicePort },
}

/// A Service's port, as the database address names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePort {
    Number(u16),
    Name(String),
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// A DNS-1123 label (Kubernetes namespaces and Service names).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `NAMESPACE/NAME:PORT`.
fn parse_service(text: &str) -> Result<DatabaseAddress, String> {
    let expected = "expected NAMESPACE/SERVICE:PORT (a Kubernetes Service, PORT its number or name)";
    let (namespace, rest) = text.split_once('/').ok_or_else(|| format!("{text:?}: {expected}"))?;
    let (name, port) = rest.rsplit_once(':').ok_or_else(|| format!("{text:?} has no port; {expected}"))?;
    if !is_dns_label(namespace) {
        return Err(format!("{namespace:?} is not a namespace name (a DNS-1123 label); {expected}"));
    }
    if !is_dns_label(name) || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{name:?} is not a Service name (a DNS-1035 label); {expected}"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("port 0 in {text:?}; {expected}")),
        Ok(n) => ServicePort::Number(n),
        // An IANA service name, as Kubernetes validates port names.
        Err(_) if is_dns_label(port) && port.len() <= 15 && port.chars().any(|c| c.is_ascii_lowercase()) => {
            ServicePort::Name(port.to_string())
        }
        Err(_) => return Err(format!("invalid port {port:?} in {text:?}; {expected}")),
    };
    Ok(DatabaseAddress::Service { namespace: namespace.to_string(), name: name.to_string(), port })
}

impl TryFrom<String> for DatabaseAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let expected = "expected HOST:PORT, IP:PORT, [IPV6]:PORT, *:PORT or NAMESPACE/SERVICE:PORT";
        if text.contains('/') && !text.starts_with('[') {
            return parse_service(&text);
        }
        if let Some(port) = text.strip_prefix("*:") {
            let port: u16 = port.parse().map_err(|_| format!("invalid port in {text:?}; {expected}"))?;
            if port == 0 {
                return Err(format!("port 0 in {text:?}; {expected}"));
            }
            return Ok(Self::AnyAddress(port));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("port 0 in {text:?}; {expected}"));
            }
            return Ok(Self::Exact(vec![addr]));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no port; {expected}"));
        };
        let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
            return Err(format!("invalid port in {text:?}; {expected}"));
        };
        if host.contains(':') {
            return Err(format!("{text:?}: an IPv6 address needs brackets; {expected}"));
        }
        check_host_name(host).map_err(|why| format!("{host:?} is not a host name ({why}); {expected}"))?;
        Ok(Self::Host { host: host.to_string(), port, addrs: Vec::new() })
    }
}

/// RFC 1123 host name syntax (underscores allowed: internal names use them). Checked at parse
/// time so a typo fails `check-config` without asking a name server.
fn check_host_name(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("expected 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label needs 1 to 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err("expected letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot begin or end with '-'");
        }
    }
    // No top-level domain is numeric: this is a mistyped IP address, which DNS would only
    // reject at start-up.
    if name.rsplit('.').next().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
        return Err("it looks like an IPv4 address but is not a valid one");
    }
    Ok(())
}

impl<'de> Deserialize<'de> for DatabaseAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Validating inside the visitor (not after deserialising a String) makes the YAML
        // error point at the address's own line and field path.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DatabaseAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("HOST:PORT, IP:PORT, [IPV6]:PORT, *:PORT or NAMESPACE/SERVICE:PORT")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DatabaseAddress, E> {
                DatabaseAddress::try_from(v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl DatabaseAddress {
    /// The port governed (0 for a Service: its ports come from the API).
    pub fn port(&self) -> u16 {
        match self {
            Self::AnyAddress(port) | Self::Host { port, .. } => *port,
            Self::Exact(addrs) => addrs.first().map_or(0, SocketAddr::port),
            Self::Service { .. } => 0,
        }
    }
}

impl fmt::Display for DatabaseAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyAddress(port) => write!(f, "*:{port}"),
            Self::Service { namespace, name, port } => write!(f, "service {namespace}/{name}:{port}"),
            Self::Host { host, port, addrs } if addrs.is_empty() => write!(f, "{host}:{port} (not resolved)"),
            Self::Host { host, addrs, .. } => {
                let parts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                write!(f, "{host} ({})", parts.join(","))
            }
            Self::Exact(addrs) => {
                let parts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// One governed database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: String,
    pub address: DatabaseAddress,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Defaults to `policy`: closed for identities whose policies guard the database, open for
    /// those the agent found no policy guards. See docs/decisions.md.
    #[serde(default = "default_fail")]
    pub fail: FailMode,
    /// Upstream connect timeout in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// Whether replication connections (`replication=...` at start-up) may pass.
    #[serde(default)]
    pub allow_replication: bool,
}

impl Database {
    /// The name to verify and send as SNI upstream: `tls.server_name`, else the host name of
    /// `address`, else none (an IP address is then checked against the certificate).
    pub fn tls_server_name(&self) -> Option<&str> {
        self.tls.server_name.as_deref().or(match &self.address {
            DatabaseAddress::Host { host, .. } => Some(host.as_str()),
            _ => None,
        })
    }
}

fn default_protocol() -> Protocol {
    Protocol::Postgres
}
fn default_mode() -> Mode {
    Mode::Enforce
}
fn default_fail() -> FailMode {
    FailMode::Policy
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// The node-local proxy listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// IPv4 listener on a node-local address every network namespace can route to (a link-local
    /// address on a dummy interface the agent owns, the NodeLocal DNSCache pattern).
    #[serde(default = "default_listen_v4")]
    pub listen_v4: SocketAddr,
    /// IPv6 listener for native IPv6 flows (a ULA on the same interface); `null` disables it.
    #[serde(default = "default_listen_v6")]
    pub listen_v6: Option<SocketAddr>,
    /// The dummy interface that carries the listener addresses; `null` to manage none.
    #[serde(default = "default_interface")]
    pub interface: Option<String>,
    /// TLS toward clients that ask for it; without it, SSLRequest is answered 'N'.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Largest protocol message the proxy decodes (queries, Bind parameters, COPY data).
    /// DataRows and COPY OUT data are streamed and bounded by PostgreSQL's own 1 GiB limit.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Proxy worker threads (each with its own listening socket); default: half the CPUs, at
    /// least one.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Connections the proxy serves at once; more are refused with SQLSTATE 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one identity (its `warden/identity` label, else its container, else its
    /// cgroup) may hold at once.
    #[serde(default = "default_max_connections_per_identity")]
    pub max_connections_per_identity: usize,
    /// Accept a listener port that unprivileged processes could bind (see docs/decisions.md).
    #[serde(default)]
    pub allow_unprivileged_port: bool,
}

fn default_max_connections() -> usize {
    16_384
}
fn default_max_connections_per_identity() -> usize {
    2_048
}

fn default_max_message_bytes() -> usize {
    256 * 1024 * 1024
}

/// The proxy's port: privileged, so no unprivileged process can bind the proxy's address.
pub const DEFAULT_PROXY_PORT: u16 = 432;

fn default_listen_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 77, 1)), DEFAULT_PROXY_PORT)
}
fn default_listen_v6() -> Option<SocketAddr> {
    Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd77, 0x7761, 0x7264, 0, 0, 0, 0, 1)), DEFAULT_PROXY_PORT))
}
fn default_interface() -> Option<String> {
    Some("warden0".to_string())
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen_v4: default_listen_v4(),
            listen_v6: default_listen_v6(),
            interface: default_interface(),
            tls: None,
            max_message_bytes: default_max_message_bytes(),
            workers: None,
            max_connections: default_max_connections(),
            max_connections_per_identity: default_max_connections_per_identity(),
            allow_unprivileged_port: false,
        }
    }
}

/// When the audit ring is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Never msync: records survive an agent crash (the page cache keeps them), not a host crash.
    None,
    /// msync once a second: a host crash loses at most the last second.
    #[default]
    Periodic,
    /// msync after every record: nothing acknowledged is lost, at the cost of a disk flush each.
    Always,
}

/// How statement text is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Literals {
    /// As sent.
    Keep,
    /// Literals replaced by `?` (values never reach the audit trail).
    #[default]
    Normalise,
}

/// The per-host audit ring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The ring file.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Size of the ring's data region; the oldest records are overwritten (and counted) beyond it.
    #[serde(default = "default_ring_bytes")]
    pub ring_bytes: u64,
    /// Secret for sealing the hash chain (created, mode 0600, if missing); default PATH.key.
    pub key: Option<PathBuf>,
    /// Records buffered between sessions and the writer.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    /// When true, statements are refused (SQLSTATE 53000) while records cannot be queued or
    /// written; when false, such records are dropped and counted.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub literals: Literals,
    /// Record bind parameter values (off by default: they are data, not code).
    #[serde(default)]
    pub parameters: bool,
    /// Statement text recorded at most (a longer one keeps this prefix, its length and the
    /// SHA-256 of the whole): one statement must not evict everyone's history.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// Record every statement (connection records are always kept).
    #[serde(default = "default_true")]
    pub statements: bool,
    /// Seal the chain head every this many records (and at least every 10 s with traffic).
    #[serde(default = "default_seal_every")]
    pub seal_every: u64,
    /// The fraction of `ring_bytes` one identity may write within `identity_window_s` before
    /// its statement records are condensed (and beyond twice that, dropped and counted), so
    /// one tenant's flood cannot overwrite everyone's history (docs/audit.md, "Fair shares").
    /// 1.0 disables it.
    #[serde(default = "default_identity_share")]
    pub identity_share: f64,
    /// The sliding window over which `identity_share` is measured, in seconds; flood summaries
    /// (`audit_flood`) are written once per window.
    #[serde(default = "default_identity_window_s")]
    pub identity_window_s: u64,
    /// Optional off-host exporter.
    #[serde(default)]
    pub export: Option<ExportConfig>,
}

/// Shipping records off-host, in addition to the local ring.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawExport")]
pub enum ExportConfig {
    /// OpenTelemetry logs over OTLP/HTTP (JSON encoding), e.g. `https://collector:4318/v1/logs`.
    OtlpHttp { endpoint: OtlpEndpoint },
}

/// Where an OTLP/HTTP collector is, and the TLS to reach it with.
#[derive(Debug, Clone)]
pub struct OtlpEndpoint {
    /// `http://HOST[:PORT][/PATH]` or `https://HOST[:PORT][/PATH]` (path default `/v1/logs`).
    pub url: String,
    /// PEM file of the CA(s) that sign the collector's certificate. Required for https: the
    /// system's trust store is not used, so an audit sink is trusted only if named.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain the agent presents (mutual TLS), with `client_key`: both or neither.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name to verify in the collector's certificate and send as SNI; defaults to the URL's host.
    pub server_name: Option<String>,
    /// Built from the fields above at load (https only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Exporter kinds (`audit.export.kind`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ExportKind {
    OtlpHttp,
}

/// `audit.export` as written: the kind beside its fields. One plain struct rather than an
/// internally tagged enum with a flattened struct: serde ignores unknown fields of a flattened
/// struct, and a misspelt TLS option must be an error, not a silently plain connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    kind: ExportKind,
    endpoint: String,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    server_name: Option<String>,
}

impl From<RawExport> for ExportConfig {
    fn from(raw: RawExport) -> Self {
        match raw.kind {
            ExportKind::OtlpHttp => Self::OtlpHttp {
                endpoint: OtlpEndpoint {
                    url: raw.endpoint,
                    ca: raw.ca,
                    client_cert: raw.client_cert,
                    client_key: raw.client_key,
                    server_name: raw.server_name,
                    tls: None,
                },
            },
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_audit_path() -> PathBuf {
    PathBuf::from("/var/lib/warden/audit.ring")
}
fn default_ring_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_text_bytes() -> usize {
    8 * 1024
}
fn default_audit_queue() -> usize {
    65_536
}
fn default_seal_every() -> u64 {
    1_000
}
fn default_identity_share() -> f64 {
    0.25
}
fn default_identity_window_s() -> u64 {
    60
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: default_audit_path(),
            ring_bytes: default_ring_bytes(),
            key: None,
            queue: default_audit_queue(),
            required: false,
            durability: Durability::default(),
            literals: Literals::default(),
            parameters: false,
            max_text_bytes: default_max_text_bytes(),
            statements: true,
            seal_every: default_seal_every(),
            identity_share: default_identity_share(),
            identity_window_s: default_identity_window_s(),
            export: None,
        }
    }
}

impl AuditConfig {
    /// The sealing key's path.
    pub fn key_path(&self) -> PathBuf {
        self.key.clone().unwrap_or_else(|| {
            let mut p = self.path.clone().into_os_string();
            p.push(".key");
            PathBuf::from(p)
        })
    }
}

/// How database host names are resolved and followed (`dns:`; docs/decisions.md, "Database
/// host names are re-resolved").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`IP` or `IP:PORT`, port 53 by default) asked instead of the system's
    /// configuration; empty: /etc/resolv.conf and /etc/hosts.
    #[serde(default, deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// A name is re-resolved no sooner than this many seconds after an answer, whatever its
    /// TTL (a TTL of 0 must not mean a query loop), and a failed resolution is retried this often.
    #[serde(default = "default_min_ttl_s")]
    pub min_ttl_s: u64,
    /// ... and no later than this, whatever its TTL (entries from /etc/hosts have none).
    #[serde(default = "default_max_ttl_s")]
    pub max_ttl_s: u64,
}

fn default_min_ttl_s() -> u64 {
    5
}
fn default_max_ttl_s() -> u64 {
    300
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { nameservers: Vec::new(), min_ttl_s: default_min_ttl_s(), max_ttl_s: default_max_ttl_s() }
    }
}

/// `dns.nameservers`, each checked where it is written (the error names its line).
fn nameservers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Nameserver(SocketAddr);
    impl<'de> Deserialize<'de> for Nameserver {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Nameserver;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("IP, IP:PORT or [IPV6]:PORT")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Nameserver, E> {
                    let addr = match v.parse::<IpAddr>() {
                        Ok(ip) => SocketAddr::new(ip, 53),
                        Err(_) => v.parse::<SocketAddr>().map_err(|_| {
                            E::custom(format!("{v:?}: expected a name server's IP, IP:PORT or [IPV6]:PORT"))
                        })?,
                    };
                    if addr.port() == 0 {
                        return Err(E::custom(format!("port 0 in name server {v:?}")));
                    }
                    Ok(Nameserver(addr))
                }
            }
            d.deserialize_str(Visitor)
        }
    }
    Ok(Vec::<Nameserver>::deserialize(d)?.into_iter().map(|n| n.0).collect())
}

/// What the agent leaves behind when it exits cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Programs stay attached (pinned): fail-closed databases stay closed until the next agent.
    #[default]
    Keep,
    /// Programs are detached and pins removed: everything goes direct.
    Detach,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    databases: Vec<Database>,
    #[serde(default)]
    proxy: ProxyConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_bpffs_dir")]
    bpffs_dir: PathBuf,
    #[serde(default = "default_cgroup_root")]
    cgroup_root: PathBuf,
    #[serde(default)]
    on_exit: OnExit,
    #[serde(default)]
    dns: DnsConfig,
    #[serde(default = "default_policies")]
    policies: Vec<PathBuf>,
    #[serde(default)]
    admin: RawAdminConfig,
    #[serde(default)]
    masking: RawMaskingConfig,
    #[serde(default)]
    kubernetes: Option<KubernetesConfig>,
    #[serde(default)]
    metrics: Option<MetricsConfig>,
    #[serde(default)]
    workloads: Vec<crate::identity::workloads::WorkloadEntry>,
    #[serde(default)]
    upgrade: UpgradeConfig,
}

/// Kubernetes (`kubernetes:`): pod identity from a watch of this node's pods, and databases
/// named by Service. Absent: neither (a plain host).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The node whose pods are watched: default `$NODE_NAME` (the DaemonSet sets it from the
    /// downward API), else the host name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// A kubeconfig file; default: the pod's service account (in-cluster), else `$KUBECONFIG`
    /// or `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// How long a flow from a pod the watch has not shown yet waits for it before it is refused
    /// (never judged without its pod's identity).
    #[serde(default = "default_pod_wait_ms")]
    pub pod_wait_ms: u64,
    /// How long a deleted pod still resolves (a flow's last statements, late kernel events).
    #[serde(default = "default_deleted_pod_grace_s")]
    pub deleted_pod_grace_s: u64,
}

fn default_pod_wait_ms() -> u64 {
    5_000
}
fn default_deleted_pod_grace_s() -> u64 {
    300
}

/// `/metrics`, `/healthz` and `/readyz` over HTTP (`metrics:`). Absent: not served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where they are served: a local address (the DaemonSet's probes and Prometheus reach it
    /// on the node's loopback or host network).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaskingConfig {
    /// Where the masking keys live (`mask-N.key`, root-only): default `keys/` beside the
    /// audit ring (persistent, unlike the state directory).
    keys: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminConfig {
    socket: Option<PathBuf>,
    group: Option<String>,
}

/// The admin API (approvals, live sessions, status): HTTP/1.1 on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `STATE_DIR/admin.sock`.
    pub socket: PathBuf,
    /// Members of this group may use it besides root (the socket is made group-accessible);
    /// none: root only.
    pub group: Option<String>,
}

fn default_policies() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/warden/policies")]
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/warden")
}
fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/warden")
}
fn default_cgroup_root() -> PathBuf {
    crate::cgroup::default_root()
}

/// A validated configuration snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub databases: Vec<Database>,
    pub proxy: ProxyConfig,
    pub audit: AuditConfig,
    /// Runtime state: readiness file, workload label files.
    pub state_dir: PathBuf,
    /// Where programs, links and maps are pinned.
    pub bpffs_dir: PathBuf,
    /// The cgroup v2 mount the programs attach to (its root covers the whole host).
    pub cgroup_root: PathBuf,
    pub on_exit: OnExit,
    pub dns: DnsConfig,
    /// Policy files and directories (their `*.yaml`/`*.yml`), reloaded on change and SIGHUP. A
    /// path that does not exist holds no policies.
    pub policies: Vec<PathBuf>,
    pub admin: AdminConfig,
    /// The directory of the masking keys (tokens and format-preserving masks).
    pub mask_keys: PathBuf,
    pub kubernetes: Option<KubernetesConfig>,
    pub metrics: Option<MetricsConfig>,
    /// Labels for host workloads by cgroup, system unit, user and executable.
    pub workloads: crate::identity::workloads::Workloads,
    /// Restart and upgrade without dropping sessions (`handover`).
    pub upgrade: UpgradeConfig,
}

/// Restarts and upgrades (`upgrade:`): a replaced agent hands its listening sockets to its
/// successor and keeps serving its live sessions until they end or the deadline passes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// How long a replaced agent keeps serving its live sessions; those still open then get
    /// FATAL 57P01. Kubernetes' `terminationGracePeriodSeconds` must be longer.
    #[serde(default = "default_drain_deadline_s")]
    pub drain_deadline_s: u64,
    /// `warden run` starts the agent under a keeper that holds copies of its listening sockets:
    /// an agent killed or crashed is replaced at once by one that takes them over, and clients
    /// wait in the backlog instead of being refused (`keeper`).
    #[serde(default)]
    pub keeper: bool,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self { drain_deadline_s: default_drain_deadline_s(), keeper: false }
    }
}

fn default_drain_deadline_s() -> u64 {
    600
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let invalid =
            |field: String, message: String| ConfigError::Invalid { path: path.to_path_buf(), field, message };
        if raw.databases.is_empty() {
            return Err(invalid("databases".into(), "expected at least one database".into()));
        }
        let mut names = BTreeSet::new();
        for (i, db) in raw.databases.iter().enumerate() {
            let field = |f: &str| format!("databases[{i}].{f}");
            if db.name.is_empty() || !db.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(invalid(
                    field("name"),
                    format!("{:?}: expected letters, digits, '-', '_' or '.'", db.name),
                ));
            }
            if !names.insert(db.name.as_str()) {
                return Err(invalid(field("name"), format!("duplicate database name {:?}", db.name)));
            }
            if db.connect_timeout_ms == 0 {
                return Err(invalid(field("connect_timeout_ms"), "expected a positive number of milliseconds".into()));
            }
        }
        let mut raw = raw;
        for (i, db) in raw.databases.iter_mut().enumerate() {
            let field = |f: &str| format!("databases[{i}].tls.{f}");
            if matches!(db.tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && db.tls.ca.is_none() {
                return Err(invalid(field("ca"), format!("{:?} needs a CA file", db.tls.mode)));
            }
            db.tls.client_config = crate::proxy::tls::client_config(db.tls.mode, db.tls.ca.as_deref())
                .map_err(|e| invalid(field("ca"), e.to_string()))?;
        }
        if let Some(tls) = raw.proxy.tls.as_mut() {
            let (config, leaf) = crate::proxy::tls::server_config(&tls.cert, &tls.key)
                .map_err(|e| invalid("proxy.tls".into(), e.to_string()))?;
            tls.server_config = Some(config);
            tls.leaf_certificate = leaf.into();
        }
        if raw.audit.ring_bytes < crate::audit::ring::MIN_CAPACITY {
            return Err(invalid(
                "audit.ring_bytes".into(),
                format!("expected at least {}", crate::audit::ring::MIN_CAPACITY),
            ));
        }
        if raw.audit.max_text_bytes < 64 {
            return Err(invalid("audit.max_text_bytes".into(), "expected at least 64".into()));
        }
        if raw.audit.seal_every == 0 {
            return Err(invalid("audit.seal_every".into(), "expected at least 1".into()));
        }
        // A share of 0 would condense every statement.
        let share = raw.audit.identity_share;
        if share.is_nan() || share <= 0.0 || share > 1.0 {
            return Err(invalid(
                "audit.identity_share".into(),
                format!("{share}: expected a fraction of audit.ring_bytes above 0, at most 1 (1 disables fair shares)"),
            ));
        }
        if !(1..=86_400).contains(&raw.audit.identity_window_s) {
            return Err(invalid("audit.identity_window_s".into(), "expected 1 to 86400 seconds".into()));
        }
        if let Some(ExportConfig::OtlpHttp { endpoint }) = raw.audit.export.as_mut() {
            // Files are read and the TLS configuration built now: a mistake stops `check-config`
            // and start-up, not the exporter an hour later.
            endpoint.tls = crate::audit::export::client_tls(endpoint)
                .map_err(|e| invalid(format!("audit.export.{}", e.field()), e.to_string()))?;
        }
        if raw.proxy.max_connections == 0 || raw.proxy.max_connections_per_identity == 0 {
            return Err(invalid("proxy.max_connections".into(), "expected limits of at least 1".into()));
        }
        if raw.dns.min_ttl_s == 0 {
            return Err(invalid("dns.min_ttl_s".into(), "expected at least 1 second".into()));
        }
        if raw.dns.max_ttl_s < raw.dns.min_ttl_s || raw.dns.max_ttl_s > 86_400 {
            return Err(invalid(
                "dns.max_ttl_s".into(),
                format!("expected {} (dns.min_ttl_s) to 86400 seconds", raw.dns.min_ttl_s),
            ));
        }
        if raw.proxy.workers == Some(0) {
            return Err(invalid("proxy.workers".into(), "expected at least 1".into()));
        }
        if raw.proxy.max_message_bytes < 64 * 1024 {
            return Err(invalid("proxy.max_message_bytes".into(), "expected at least 65536".into()));
        }
        if !raw.proxy.listen_v4.is_ipv4() || raw.proxy.listen_v4.port() == 0 {
            return Err(invalid("proxy.listen_v4".into(), "expected an IPv4 address with a non-zero port".into()));
        }
        if let Some(v6) = raw.proxy.listen_v6
            && (!v6.is_ipv6() || v6.port() == 0)
        {
            return Err(invalid("proxy.listen_v6".into(), "expected [IPV6]:PORT with a non-zero port".into()));
        }
        // Relative policy paths are relative to the configuration file, as includes usually are.
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(group) = &raw.admin.group
            && group.is_empty()
        {
            return Err(invalid("admin.group".into(), "empty group name".into()));
        }
        let admin = AdminConfig {
            socket: raw.admin.socket.unwrap_or_else(|| raw.state_dir.join("admin.sock")),
            group: raw.admin.group,
        };
        if let Some(k) = &raw.kubernetes {
            if k.pod_wait_ms > 60_000 {
                return Err(invalid("kubernetes.pod_wait_ms".into(), "expected at most 60000".into()));
            }
            if k.node_name.as_deref() == Some("") {
                return Err(invalid("kubernetes.node_name".into(), "empty node name".into()));
            }
        }
        if raw.kubernetes.is_none()
            && let Some(i) = raw.databases.iter().position(|d| matches!(d.address, DatabaseAddress::Service { .. }))
        {
            return Err(invalid(
                format!("databases[{i}].address"),
                "a Service address needs the `kubernetes:` section (the agent follows the Service from the API)".into(),
            ));
        }
        let workloads = crate::identity::workloads::Workloads::compile(&raw.workloads).map_err(|message| {
            let field = message.split(':').next().unwrap_or("workloads").to_string();
            invalid(field, message)
        })?;
        let mask_keys = raw
            .masking
            .keys
            .unwrap_or_else(|| raw.audit.path.parent().unwrap_or(Path::new("/var/lib/warden")).join("mask-keys"));
        Ok(Self {
            mask_keys,
            path: path.to_path_buf(),
            databases: raw.databases,
            proxy: raw.proxy,
            audit: raw.audit,
            state_dir: raw.state_dir,
            bpffs_dir: raw.bpffs_dir,
            cgroup_root: raw.cgroup_root,
            on_exit: raw.on_exit,
            dns: raw.dns,
            policies: raw.policies.iter().map(|p| if p.is_relative() { base.join(p) } else { p.clone() }).collect(),
            admin,
            kubernetes: raw.kubernetes,
            metrics: raw.metrics,
            workloads,
            upgrade: raw.upgrade,
        })
    }

    /// What the configuration does not govern although it may look as if it did, each with the
    /// fix. Printed by `check-config` and logged at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for db in &self.databases {
            let addrs: &[SocketAddr] = match &db.address {
                DatabaseAddress::Exact(a) | DatabaseAddress::Host { addrs: a, .. } => a,
                DatabaseAddress::AnyAddress(_) | DatabaseAddress::Service { .. } => &[],
            };
            for a in addrs.iter().filter(|a| a.ip().is_unspecified()) {
                out.push(format!(
                    "databases {:?}: {a} governs only connections dialled to {} itself, not the port on every \
                     address; to govern the port on every address write '*:{}'",
                    db.name,
                    a.ip(),
                    a.port()
                ));
            }
            let local = match &db.address {
                DatabaseAddress::AnyAddress(_) => true,
                _ => addrs.iter().any(|a| a.ip().is_loopback() || a.ip().is_unspecified()),
            };
            if db.protocol == Protocol::Postgres && local {
                let port = db.address.port();
                for dir in ["/run/postgresql", "/var/run/postgresql", "/tmp"] {
                    let socket = Path::new(dir).join(format!(".s.PGSQL.{port}"));
                    if socket.exists() {
                        out.push(format!(
                            "databases {:?}: the local PostgreSQL also accepts connections on its unix socket {}, \
                             which Warden does not govern (docs/decisions.md, \"Unix-domain sockets\"); allow \
                             only administrators there: pg_hba.conf `local` lines (e.g. `local all postgres \
                             peer` then `local all all reject`), or unix_socket_permissions / \
                             unix_socket_group",
                            db.name,
                            socket.display()
                        ));
                    }
                }
            }
        }
        if self.proxy.allow_unprivileged_port {
            out.push(
                "proxy.allow_unprivileged_port: a local process could take the proxy's address while the agent \
                 restarts; prefer a port below 1024"
                    .into(),
            );
        }
        out
    }

    /// Whether any database fails closed (then pins must outlive the agent).
    pub fn any_fail_closed(&self) -> bool {
        self.databases.iter().any(|d| d.mode == Mode::Enforce && d.fail != FailMode::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("warden.yaml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("databases:\n  - name: main\n    address: 127.0.0.1:5432\n").expect("valid");
        let db = &c.databases[0];
        assert_eq!(db.address, DatabaseAddress::Exact(vec!["127.0.0.1:5432".parse().unwrap()]));
        assert_eq!((db.mode, db.fail, db.protocol), (Mode::Enforce, FailMode::Policy, Protocol::Postgres));
        assert_eq!(c.proxy.listen_v4, "169.254.77.1:432".parse().unwrap());
        assert_eq!(c.on_exit, OnExit::Keep);
    }

    #[test]
    fn services_are_named_as_kubernetes_does_and_need_the_kubernetes_section() {
        let address = |a: &str| DatabaseAddress::try_from(a.to_string());
        assert_eq!(
            address("crm/pg-primary:5432").expect("a Service"),
            DatabaseAddress::Service {
                namespace: "crm".into(),
                name: "pg-primary".into(),
                port: ServicePort::Number(5432)
            }
        );
        assert!(matches!(
            address("crm/pg:postgres"),
            Ok(DatabaseAddress::Service { port: ServicePort::Name(n), .. }) if n == "postgres"
        ));
        for bad in ["Crm/pg:5432", "crm/pg", "crm/1pg:5432", "crm/pg:0", "crm/pg:Post_gres", "/pg:5432", "a/b/c:1"] {
            assert!(address(bad).is_err(), "{bad}");
        }
        let err = parse("databases:\n  - {name: a, address: 'crm/pg:5432'}\n").expect_err("no kubernetes");
        assert!(err.to_string().contains("kubernetes"), "{err}");
        let c =
            parse("databases:\n  - {name: a, address: 'crm/pg:5432'}\nkubernetes: {node_name: n1}\n").expect("valid");
        assert_eq!(c.kubernetes.expect("set").pod_wait_ms, 5_000);
    }

    #[test]
    fn addresses_of_every_shape() {
        let c = parse(
            "databases:\n  - {name: a, address: '*:6432'}\n  - {name: b, address: '[::1]:5432'}\n  - {name: c, address: 'localhost:5433', mode: observe, fail: open}\n",
        )
        .expect("valid");
        assert_eq!(c.databases[0].address, DatabaseAddress::AnyAddress(6432));
        assert_eq!(c.databases[1].address, DatabaseAddress::Exact(vec!["[::1]:5432".parse().unwrap()]));
        // Host names are only checked here; net::dns resolves them.
        assert_eq!(
            c.databases[2].address,
            DatabaseAddress::Host { host: "localhost".into(), port: 5433, addrs: Vec::new() }
        );
        assert_eq!(c.databases[2].address.port(), 5433);
        assert_eq!(c.databases[2].mode, Mode::Observe);
        assert_eq!(c.dns, DnsConfig { nameservers: Vec::new(), min_ttl_s: 5, max_ttl_s: 300 });
    }

    #[test]
    fn host_names_are_checked_without_asking_a_name_server() {
        let address = |a: &str| DatabaseAddress::try_from(a.to_string());
        // Resolvable or not, a well-formed name parses: nothing is looked up here.
        assert!(matches!(address("db-1.internal.example:5432"), Ok(DatabaseAddress::Host { port: 5432, .. })));
        assert!(matches!(address("_pg._tcp.db.:5432"), Ok(DatabaseAddress::Host { .. })));
        for (bad, why) in [
            ("db internal:5432", "not a host name"),
            ("db..internal:5432", "1 to 63 characters"),
            ("-db.internal:5432", "begin or end with '-'"),
            ("10.0.0.300:5432", "looks like an IPv4 address"),
            ("::1:5432", "IPv6 address needs brackets"),
            ("db.internal:0", "invalid port"),
            ("db.internal:65536", "invalid port"),
            (":5432", "not a host name"),
        ] {
            let err = address(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err =
            parse("databases:\n  - name: main\n    address: 'db internal:5432'\n").expect_err("space").to_string();
        assert!(err.contains("databases[0].address") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn the_dns_block_is_checked() {
        let with_dns =
            |dns: &str| parse(&format!("databases:\n  - {{name: a, address: 'db.internal:5432'}}\ndns: {dns}\n"));
        let c = with_dns("{nameservers: ['127.0.0.1:5353', '10.0.0.2', '[::1]:53'], min_ttl_s: 1, max_ttl_s: 60}")
            .expect("valid");
        assert_eq!(
            c.dns.nameservers,
            ["127.0.0.1:5353", "10.0.0.2:53", "[::1]:53"].map(|a| a.parse::<SocketAddr>().unwrap()).to_vec()
        );
        assert_eq!((c.dns.min_ttl_s, c.dns.max_ttl_s), (1, 60));

        let err = with_dns("{nameservers: ['dns.internal:53']}").expect_err("a name").to_string();
        assert!(err.contains("dns.nameservers[0]") && err.contains("expected a name server's IP"), "{err}");
        let err = with_dns("{min_ttl_s: 0}").expect_err("zero").to_string();
        assert!(err.contains("dns.min_ttl_s: expected at least 1 second"), "{err}");
        let err = with_dns("{min_ttl_s: 10, max_ttl_s: 5}").expect_err("inverted").to_string();
        assert!(err.contains("dns.max_ttl_s: expected 10 (dns.min_ttl_s) to 86400 seconds"), "{err}");
        let err = with_dns("{nameserver: ['127.0.0.1']}").expect_err("typo").to_string();
        assert!(err.contains("unknown field `nameserver`"), "{err}");
    }

    #[test]
    fn an_unspecified_address_is_not_taken_for_every_address() {
        let c = parse("databases:\n  - {name: a, address: '0.0.0.0:6543'}\n  - {name: b, address: '[::]:6543'}\n")
            .expect("valid");
        let w = c.warnings();
        assert_eq!(w.iter().filter(|w| w.contains("'*:6543'")).count(), 2, "{w:?}");
        let c = parse("databases:\n  - {name: a, address: '*:6543'}\n").expect("valid");
        assert!(c.warnings().iter().all(|w| !w.contains("'*:6543'")));
    }

    #[test]
    fn mistakes_name_file_line_field_and_expectation() {
        let err = parse("databases:\n  - name: main\n    address: 127.0.0.1:5432\n    mode: enforced\n")
            .expect_err("bad mode")
            .to_string();
        assert!(err.starts_with("warden.yaml: "), "{err}");
        assert!(err.contains("databases[0].mode"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("expected `enforce` or `observe`"), "{err}");

        let err = parse("databases:\n  - name: main\n    address: 127.0.0.1\n").expect_err("no port").to_string();
        assert!(err.contains("databases[0].address") && err.contains("line 3") && err.contains("has no port"), "{err}");

        let err = parse("databases:\n  - name: main\n    adress: 127.0.0.1:1\n").expect_err("typo").to_string();
        assert!(err.contains("unknown field `adress`"), "{err}");

        let err = parse("databases:\n  - {name: a, address: '*:1'}\n  - {name: a, address: '*:2'}\n")
            .expect_err("dup")
            .to_string();
        assert_eq!(err, "warden.yaml: databases[1].name: duplicate database name \"a\"");

        let err = parse("databases: []\n").expect_err("empty").to_string();
        assert!(err.contains("databases: expected at least one database"), "{err}");

        let err = parse("databases:\n  - {name: a, address: '*:1'}\nproxy:\n  listen_v4: '[::1]:1'\n")
            .expect_err("v6 as v4")
            .to_string();
        assert!(err.contains("proxy.listen_v4"), "{err}");
    }

    #[test]
    fn exporter_endpoints_are_checked_at_load() {
        let with_export =
            |export: &str| parse(&format!("databases:\n  - {{name: a, address: '*:1'}}\naudit:\n  export: {export}\n"));
        let c = with_export("{kind: otlp-http, endpoint: 'http://collector:4318/v1/logs'}").expect("plain http");
        let Some(ExportConfig::OtlpHttp { endpoint }) = &c.audit.export else { panic!("an otlp-http exporter") };
        assert_eq!((endpoint.url.as_str(), endpoint.tls.is_none()), ("http://collector:4318/v1/logs", true));

        let err = with_export("{kind: otlp-http, endpoint: 'https://collector:4318/v1/logs'}").expect_err("no CA");
        let err = err.to_string();
        assert!(err.starts_with("warden.yaml: audit.export.ca: an https:// endpoint needs `ca`"), "{err}");
        assert!(err.contains("system's trust store is not used"), "{err}");

        let err = with_export("{kind: otlp-http, endpoint: 'ftp://collector/'}").expect_err("scheme").to_string();
        assert!(err.contains("audit.export.endpoint") && err.contains("expected http://"), "{err}");

        let err = with_export("{kind: otlp-http, endpoint: 'https://c/', ca: /nonexistent/ca.pem}")
            .expect_err("missing CA file")
            .to_string();
        assert!(err.contains("audit.export.ca: CA file /nonexistent/ca.pem"), "{err}");

        let err = with_export("{kind: otlp-http, endpoint: 'https://c/', ca: /x.pem, client_cert: /c.pem}")
            .expect_err("half a pair")
            .to_string();
        assert!(err.contains("audit.export.client_key") && err.contains("go together"), "{err}");

        let err = with_export("{kind: otlp-http, endpoint: 'http://c/', client_cert: /c.pem, client_key: /k.pem}")
            .expect_err("mTLS over http")
            .to_string();
        assert!(err.contains("audit.export.client_cert") && err.contains("https:// endpoints only"), "{err}");

        let err = with_export("{kind: otlp-http, endpoint: 'https://c/', cert: /c.pem}").expect_err("typo").to_string();
        assert!(err.contains("audit.export: unknown field `cert`") && err.contains("line 4"), "{err}");
        let err = with_export("{kind: otlp-grpc, endpoint: 'https://c/'}").expect_err("kind").to_string();
        assert!(err.contains("unknown variant `otlp-grpc`, expected `otlp-http`"), "{err}");
        let err = with_export("{endpoint: 'https://c/'}").expect_err("no kind").to_string();
        assert!(err.contains("missing field `kind`"), "{err}");
    }
}
