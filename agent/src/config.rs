//! The agent's configuration file (YAML): governed databases, the proxy listeners, where state
//! and audit records live. Parsed, then validated, into an immutable snapshot; every mistake is
//! reported with the file, the field and what was expected.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
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
}

/// The database protocol spoken on a governed endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
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
    /// A host name and port: every address it resolved to at load time.
    Host { host: String, addrs: Vec<SocketAddr> },
    /// `*:PORT`: the port on every address, including ones a workload might try instead.
    AnyAddress(u16),
}

impl TryFrom<String> for DatabaseAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let expected = "expected HOST:PORT, IP:PORT, [IPV6]:PORT or *:PORT";
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
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("invalid address {text:?}; {expected}"));
        }
        let addrs: Vec<SocketAddr> = text
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host:?} resolved to no address"));
        }
        Ok(Self::Host { host: host.to_string(), addrs })
    }
}

impl<'de> Deserialize<'de> for DatabaseAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Validating inside the visitor (not after deserialising a String) makes the YAML
        // error point at the address's own line and field path.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DatabaseAddress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("HOST:PORT, IP:PORT, [IPV6]:PORT or *:PORT")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DatabaseAddress, E> {
                DatabaseAddress::try_from(v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl fmt::Display for DatabaseAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyAddress(port) => write!(f, "*:{port}"),
            Self::Host { host, addrs } => {
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
    /// Defaults to closed: until policies exist, an operator who declared a database governed
    /// is better served by refusal than by silent bypass. See docs/decisions.md.
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
    FailMode::Closed
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
    /// Proxy worker threads (each with its own listening socket); default: one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
}

fn default_max_message_bytes() -> usize {
    256 * 1024 * 1024
}

fn default_listen_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 77, 1)), 15432)
}
fn default_listen_v6() -> Option<SocketAddr> {
    Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd77, 0x7761, 0x7264, 0, 0, 0, 0, 1)), 15432))
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
    /// Record every statement (connection records are always kept).
    #[serde(default = "default_true")]
    pub statements: bool,
    /// Seal the chain head every this many records (and at least every 10 s with traffic).
    #[serde(default = "default_seal_every")]
    pub seal_every: u64,
    /// Optional off-host exporter.
    #[serde(default)]
    pub export: Option<ExportConfig>,
}

/// Shipping records off-host, in addition to the local ring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum ExportConfig {
    /// OpenTelemetry logs over OTLP/HTTP (JSON encoding), e.g. `http://collector:4318/v1/logs`.
    OtlpHttp { endpoint: String },
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
fn default_audit_queue() -> usize {
    65_536
}
fn default_seal_every() -> u64 {
    1_000
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
            statements: true,
            seal_every: default_seal_every(),
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
        if raw.audit.seal_every == 0 {
            return Err(invalid("audit.seal_every".into(), "expected at least 1".into()));
        }
        if let Some(ExportConfig::OtlpHttp { endpoint }) = &raw.audit.export
            && !endpoint.starts_with("http://")
        {
            return Err(invalid("audit.export.endpoint".into(), "expected an http:// URL".into()));
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
        Ok(Self {
            path: path.to_path_buf(),
            databases: raw.databases,
            proxy: raw.proxy,
            audit: raw.audit,
            state_dir: raw.state_dir,
            bpffs_dir: raw.bpffs_dir,
            cgroup_root: raw.cgroup_root,
            on_exit: raw.on_exit,
        })
    }

    /// Whether any database fails closed (then pins must outlive the agent).
    pub fn any_fail_closed(&self) -> bool {
        self.databases.iter().any(|d| d.mode == Mode::Enforce && d.fail == FailMode::Closed)
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
        assert_eq!((db.mode, db.fail, db.protocol), (Mode::Enforce, FailMode::Closed, Protocol::Postgres));
        assert_eq!(c.proxy.listen_v4, "169.254.77.1:15432".parse().unwrap());
        assert_eq!(c.on_exit, OnExit::Keep);
    }

    #[test]
    fn addresses_of_every_shape() {
        let c = parse(
            "databases:\n  - {name: a, address: '*:6432'}\n  - {name: b, address: '[::1]:5432'}\n  - {name: c, address: 'localhost:5433', mode: observe, fail: open}\n",
        )
        .expect("valid");
        assert_eq!(c.databases[0].address, DatabaseAddress::AnyAddress(6432));
        assert_eq!(c.databases[1].address, DatabaseAddress::Exact(vec!["[::1]:5432".parse().unwrap()]));
        let DatabaseAddress::Host { addrs: local, .. } = &c.databases[2].address else { panic!("localhost is exact") };
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 5433), "{local:?}");
        assert_eq!(c.databases[2].mode, Mode::Observe);
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
}
