//! Database host names (`address: db.internal:5432`): resolved once at start-up, then followed.
//! Each name is re-resolved when its DNS TTL (clamped to `dns.min_ttl_s`..`dns.max_ttl_s`)
//! expires, and the kernel's governed endpoints are brought in line without a restart, so a
//! failover, a Kubernetes Service whose IP changed or a DNS-balanced replica set stays governed.
//!
//! getaddrinfo gives no TTL, so names are resolved with hickory-resolver: the system's
//! /etc/resolv.conf and /etc/hosts, or `dns.nameservers` instead. A failed resolution keeps the
//! last known addresses (an outage of DNS must never ungovern a database); only an answer
//! changes them. Why, and the defaults: docs/decisions.md, "Database host names are re-resolved".

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig},
    lookup::Lookup,
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::RData,
};

use crate::{
    audit::{AuditLog, Event},
    config::{Config, DatabaseAddress, DnsConfig},
    ebpf::Reached,
    net::governed::Governed,
};

/// While a name keeps failing, its warning is repeated at most this often (the retries behind
/// it run every `dns.min_ttl_s`).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why one name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (e.g. /etc/resolv.conf unreadable).
    #[error("building the resolver: {0}")]
    Resolver(String),
    /// The name servers failed or refused (timeout, SERVFAIL, ...). The message is hickory's
    /// (not also chained as a source, which would print it twice).
    #[error("{0}")]
    Dns(Box<NetError>),
    /// The name exists in neither family, or has no address records.
    #[error("no A or AAAA record")]
    NoAddress,
}

/// A host-name problem that stops start-up (or `check-config`), naming the database at fault.
/// Each message carries its cause itself (no error chain to print it again).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("database {database:?}: host {host:?} resolved to no address: {reason}")]
    Unresolved { database: String, host: String, reason: LookupError },
    #[error("starting a runtime for DNS lookups: {0}")]
    Runtime(std::io::Error),
}

/// What one resolution found: the addresses, and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ips: BTreeSet<IpAddr>,
    /// The smallest TTL among the address records (unclamped).
    pub ttl: Duration,
}

/// What changed for one database when its host name resolved differently: the audit record
/// `endpoints_changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointsChange {
    pub database: String,
    pub host: String,
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

impl EndpointsChange {
    fn into_event(self) -> Event {
        Event::EndpointsChanged { database: self.database, host: self.host, added: self.added, removed: self.removed }
    }
}

/// A TTL as the schedule uses it: never below `min` (a TTL of 0 must not become a query loop),
/// never above `max` (a day-long TTL must not hide a failover for a day).
pub fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.clamp(min, max.max(min))
}

/// The databases of one host name (several may share it, on different ports).
#[derive(Debug)]
struct HostEntry {
    /// As written in the first database that names it.
    host: String,
    /// (index in the configuration, name, port).
    databases: Vec<(usize, String, u16)>,
    /// The last known addresses: replaced only by an answer with at least one address.
    ips: BTreeSet<IpAddr>,
    /// When to resolve it again.
    due: Instant,
    /// Failures since the last answer, and when the last warning about them was logged.
    failures: u32,
    warned_at: Option<Instant>,
}

/// Every host name in the configuration, its last known addresses and when it is due: the
/// follower's state, kept apart from the resolver and the kernel so it can be tested alone.
#[derive(Debug)]
pub struct HostTable {
    hosts: Vec<HostEntry>,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl HostTable {
    /// The host names of `config`, grouped case-insensitively (DNS names are), none resolved yet.
    pub fn new(config: &Config, now: Instant) -> Self {
        let mut hosts: Vec<HostEntry> = Vec::new();
        for (id, db) in config.databases.iter().enumerate() {
            let DatabaseAddress::Host { host, port, .. } = &db.address else { continue };
            let key = host.trim_end_matches('.');
            let entry = match hosts.iter_mut().find(|h| h.host.trim_end_matches('.').eq_ignore_ascii_case(key)) {
                Some(entry) => entry,
                None => {
                    hosts.push(HostEntry {
                        host: host.clone(),
                        databases: Vec::new(),
                        ips: BTreeSet::new(),
                        due: now,
                        failures: 0,
                        warned_at: None,
                    });
                    hosts.last_mut().expect("just pushed")
                }
            };
            entry.databases.push((id, db.name.clone(), *port));
        }
        Self {
            hosts,
            min_ttl: Duration::from_secs(config.dns.min_ttl_s),
            max_ttl: Duration::from_secs(config.dns.max_ttl_s),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The host names, by index.
    pub fn hosts(&self) -> impl Iterator<Item = (usize, &str)> {
        self.hosts.iter().enumerate().map(|(i, h)| (i, h.host.as_str()))
    }

    /// The earliest time a name is due (None: there are no names).
    pub fn next_due(&self) -> Option<Instant> {
        self.hosts.iter().map(|h| h.due).min()
    }

    /// The names due at `now`.
    pub fn due(&self, now: Instant) -> Vec<(usize, String)> {
        self.hosts.iter().enumerate().filter(|(_, h)| h.due <= now).map(|(i, h)| (i, h.host.clone())).collect()
    }

    /// Takes in the result of resolving host `index` at `now`; returns what changed for each of
    /// its databases (nothing when the addresses are the same, or the resolution failed).
    pub fn observe(&mut self, index: usize, result: Result<Answer, LookupError>, now: Instant) -> Vec<EndpointsChange> {
        let (min_ttl, max_ttl) = (self.min_ttl, self.max_ttl);
        let Some(entry) = self.hosts.get_mut(index) else { return Vec::new() };
        let answer = match result {
            Ok(answer) if !answer.ips.is_empty() => answer,
            Ok(_) => return entry.failed(&LookupError::NoAddress, now, min_ttl),
            Err(err) => return entry.failed(&err, now, min_ttl),
        };
        if entry.failures > 0 {
            tracing::info!(host = %entry.host, failures = entry.failures, "database host name resolves again");
            entry.failures = 0;
            entry.warned_at = None;
        }
        entry.due = now + clamp_ttl(answer.ttl, min_ttl, max_ttl);
        if answer.ips == entry.ips {
            return Vec::new();
        }
        let added: Vec<IpAddr> = answer.ips.difference(&entry.ips).copied().collect();
        let removed: Vec<IpAddr> = entry.ips.difference(&answer.ips).copied().collect();
        entry.ips = answer.ips;
        entry
            .databases
            .iter()
            .map(|(_, name, port)| EndpointsChange {
                database: name.clone(),
                host: entry.host.clone(),
                added: added.iter().map(|ip| SocketAddr::new(*ip, *port)).collect(),
                removed: removed.iter().map(|ip| SocketAddr::new(*ip, *port)).collect(),
            })
            .collect()
    }

    /// The current addresses of every host-named database, by its index in the configuration
    /// (what `ebpf::governed_entries_with` takes).
    pub fn resolved(&self) -> BTreeMap<usize, Vec<SocketAddr>> {
        let mut out = BTreeMap::new();
        for entry in &self.hosts {
            for (id, _, port) in &entry.databases {
                out.insert(*id, entry.ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect());
            }
        }
        out
    }
}

impl HostEntry {
    /// A failed resolution: the last known addresses stay governed, the name is retried after
    /// `retry`, and the warning is rate-limited (a DNS outage must not flood the log).
    fn failed(&mut self, err: &LookupError, now: Instant, retry: Duration) -> Vec<EndpointsChange> {
        self.failures += 1;
        self.due = now + retry;
        if self.warned_at.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            self.warned_at = Some(now);
            let kept: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
            tracing::warn!(
                host = %self.host,
                error = %err,
                failures = self.failures,
                kept = %kept.join(","),
                retry_s = retry.as_secs(),
                "cannot re-resolve a database host name; its last known addresses stay governed"
            );
        }
        Vec::new()
    }
}

/// Resolves every database host name once, writing the addresses into `config` (what
/// `check-config` prints and `Kernel::start` governs first), and returns the follower that keeps
/// them current. A name that resolves to nothing is an error naming its database: governing a
/// database at no address is never what the operator meant.
pub async fn resolve_at_start(config: &mut Config) -> Result<HostFollower, DnsError> {
    let mut table = HostTable::new(config, Instant::now());
    let hosts: Vec<(usize, String)> = table.hosts().map(|(i, h)| (i, h.to_string())).collect();
    let answers = lookup_all(&config.dns, hosts).await;
    let now = Instant::now();
    for (index, result) in answers {
        let result = match result {
            Ok(answer) if !answer.ips.is_empty() => Ok(answer),
            Ok(_) => Err(LookupError::NoAddress),
            Err(err) => Err(err),
        };
        if let Err(reason) = result {
            let entry = &table.hosts[index];
            let database = entry.databases.first().map(|(_, name, _)| name.clone()).unwrap_or_default();
            return Err(DnsError::Unresolved { database, host: entry.host.clone(), reason });
        }
        table.observe(index, result, now);
    }
    let resolved = table.resolved();
    for (id, db) in config.databases.iter_mut().enumerate() {
        if let (DatabaseAddress::Host { addrs, .. }, Some(now_at)) = (&mut db.address, resolved.get(&id)) {
            *addrs = now_at.clone();
        }
    }
    for entry in &table.hosts {
        let ips: Vec<String> = entry.ips.iter().map(ToString::to_string).collect();
        tracing::info!(host = %entry.host, addresses = %ips.join(","), "resolved a database host name");
    }
    Ok(HostFollower { table, dns: config.dns.clone() })
}

/// `resolve_at_start` for the commands that have no runtime of their own (`check-config`).
pub fn resolve_blocking(config: &mut Config) -> Result<(), DnsError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DnsError::Runtime)?;
    runtime.block_on(resolve_at_start(config)).map(drop)
}

/// Keeps the kernel's governed endpoints in line with what the database host names resolve to.
#[derive(Debug)]
pub struct HostFollower {
    table: HostTable,
    dns: DnsConfig,
}

impl HostFollower {
    /// Runs until aborted: re-resolves each name as it falls due, updates the kernel's table
    /// (new endpoints first, then the ones no database uses any more), then records each change.
    /// `config` must be the snapshot `resolve_at_start` filled in.
    pub async fn follow(mut self, governed: Arc<Governed>, audit: AuditLog) {
        let retry = Duration::from_secs(self.dns.min_ttl_s);
        // Changes are recorded once the kernel has them: a record must not claim an endpoint is
        // governed while the map update that governs it is still failing.
        let mut pending: Vec<EndpointsChange> = Vec::new();
        let mut kernel_behind = false;
        loop {
            let Some(mut wake) = self.table.next_due() else { return };
            if kernel_behind {
                wake = wake.min(Instant::now() + retry);
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
            let due = self.table.due(Instant::now());
            if !due.is_empty() {
                let answers = lookup_all(&self.dns, due).await;
                let now = Instant::now();
                for (index, result) in answers {
                    pending.extend(self.table.observe(index, result, now));
                }
            }
            if pending.is_empty() && !kernel_behind {
                continue;
            }
            let hosts = self.table.resolved();
            match governed.update(|reached| {
                for (index, addrs) in hosts {
                    reached.insert(index, Reached::at(addrs));
                }
            }) {
                Ok(diff) => {
                    kernel_behind = false;
                    tracing::debug!(
                        upserted = diff.upsert.len(),
                        removed = diff.remove.len(),
                        "governed endpoints updated"
                    );
                    for change in pending.drain(..) {
                        tracing::info!(
                            database = %change.database,
                            host = %change.host,
                            added = ?change.added,
                            removed = ?change.removed,
                            "database host name resolves to other addresses; governed endpoints updated"
                        );
                        audit.record(change.into_event());
                    }
                }
                Err(err) => {
                    kernel_behind = true;
                    tracing::error!(error = %err, retry_s = retry.as_secs(), "cannot update the governed endpoints");
                }
            }
        }
    }
}

/// Resolves `hosts` at once (one slow name must not hold up the others). Every round gets a
/// fresh resolver: answers then come from the name servers (or /etc/hosts and resolv.conf as
/// they are now), never from a cache whose lifetimes the clamping would have to second-guess.
async fn lookup_all(dns: &DnsConfig, hosts: Vec<(usize, String)>) -> Vec<(usize, Result<Answer, LookupError>)> {
    if hosts.is_empty() {
        // Nothing to ask: not even /etc/resolv.conf is read.
        return Vec::new();
    }
    let resolver = match resolver(dns) {
        Ok(resolver) => resolver,
        Err(err) => {
            let message = err.to_string();
            return hosts.into_iter().map(|(i, _)| (i, Err(LookupError::Resolver(message.clone())))).collect();
        }
    };
    let mut lookups = tokio::task::JoinSet::new();
    for (index, host) in hosts {
        let resolver = resolver.clone();
        lookups.spawn(async move { (index, lookup(&resolver, &host).await) });
    }
    lookups.join_all().await
}

/// The resolver for `dns`: the system's configuration, or only the name servers given.
fn resolver(dns: &DnsConfig) -> Result<TokioResolver, NetError> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                // UDP, and TCP for answers too large for a datagram, both on the given port.
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = addr.port();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Name servers given explicitly replace the whole system configuration, /etc/hosts too.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    // Both families are asked for separately (see `lookup`); this only affects lookup_ip.
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build()
}

/// Both address families of `host`. A family the name does not have (NXDOMAIN, NODATA) adds
/// nothing; any other failure fails the whole resolution, because answering with one family
/// while the other timed out would ungovern the addresses of the family that timed out.
async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Answer, LookupError> {
    let (v4, v6) = tokio::join!(resolver.ipv4_lookup(host), resolver.ipv6_lookup(host));
    let mut ips = BTreeSet::new();
    let mut valid_until: Option<Instant> = None;
    for result in [v4, v6] {
        let lookup: Lookup = match result {
            Ok(lookup) => lookup,
            Err(err) if err.is_no_records_found() => continue,
            Err(err) => return Err(LookupError::Dns(Box::new(err))),
        };
        let found: Vec<IpAddr> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if !found.is_empty() {
            ips.extend(found);
            valid_until = Some(valid_until.map_or(lookup.valid_until(), |v| v.min(lookup.valid_until())));
        }
    }
    let Some(valid_until) = valid_until else { return Err(LookupError::NoAddress) };
    Ok(Answer { ips, ttl: valid_until.saturating_duration_since(Instant::now()) })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(databases: &str, dns: &str) -> Config {
        Config::parse(Path::new("warden.yaml"), &format!("databases:\n{databases}\ndns: {dns}\n")).expect("config")
    }

    fn answer(ips: &[&str], ttl_s: u64) -> Result<Answer, LookupError> {
        Ok(Answer { ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(), ttl: Duration::from_secs(ttl_s) })
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn ttls_are_clamped_to_the_configured_bounds() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(clamp_ttl(Duration::ZERO, min, max), min, "a TTL of 0 is not a query loop");
        assert_eq!(clamp_ttl(Duration::from_secs(30), min, max), Duration::from_secs(30));
        assert_eq!(clamp_ttl(Duration::from_secs(86_400), min, max), max, "a day-long TTL is re-checked");
        assert_eq!(clamp_ttl(Duration::from_secs(9), min, Duration::from_secs(1)), min, "no panic on min > max");

        let c = config("  - {name: a, address: 'db.internal:5432'}", "{min_ttl_s: 2, max_ttl_s: 60}");
        let t0 = Instant::now();
        let mut table = HostTable::new(&c, t0);
        assert_eq!(table.next_due(), Some(t0), "unresolved names are due at once");
        table.observe(0, answer(&["10.0.0.5"], 0), t0);
        assert_eq!(table.next_due(), Some(t0 + Duration::from_secs(2)));
        table.observe(0, answer(&["10.0.0.5"], 3_600), t0);
        assert_eq!(table.next_due(), Some(t0 + Duration::from_secs(60)));
        table.observe(0, answer(&["10.0.0.5"], 7), t0);
        assert_eq!(table.next_due(), Some(t0 + Duration::from_secs(7)));
        assert!(table.due(t0 + Duration::from_secs(6)).is_empty());
        assert_eq!(table.due(t0 + Duration::from_secs(7)), vec![(0, "db.internal".to_string())]);
    }

    #[test]
    fn a_new_answer_reports_what_each_database_of_the_name_gained_and_lost() {
        let c = config(
            "  - {name: orders, address: 'db.internal:5432'}\n  - {name: orders-pool, address: 'DB.internal.:6432'}\n  - {name: fixed, address: '10.0.0.9:5432'}",
            "{}",
        );
        let t0 = Instant::now();
        let mut table = HostTable::new(&c, t0);
        assert_eq!(table.hosts().count(), 1, "one name, asked once, whatever its spelling");
        let first = table.observe(0, answer(&["10.0.0.5", "10.0.0.6"], 30), t0);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].added, addrs(&["10.0.0.5:5432", "10.0.0.6:5432"]));
        assert_eq!(first[1].added, addrs(&["10.0.0.5:6432", "10.0.0.6:6432"]));

        assert!(table.observe(0, answer(&["10.0.0.6", "10.0.0.5"], 30), t0).is_empty(), "same set, no change");

        let failover = table.observe(0, answer(&["10.0.0.6", "10.0.0.7"], 30), t0);
        assert_eq!(
            failover,
            vec![
                EndpointsChange {
                    database: "orders".into(),
                    host: "db.internal".into(),
                    added: addrs(&["10.0.0.7:5432"]),
                    removed: addrs(&["10.0.0.5:5432"]),
                },
                EndpointsChange {
                    database: "orders-pool".into(),
                    host: "db.internal".into(),
                    added: addrs(&["10.0.0.7:6432"]),
                    removed: addrs(&["10.0.0.5:6432"]),
                },
            ]
        );
        let resolved = table.resolved();
        assert_eq!(resolved.get(&0), Some(&addrs(&["10.0.0.6:5432", "10.0.0.7:5432"])));
        assert_eq!(resolved.get(&1), Some(&addrs(&["10.0.0.6:6432", "10.0.0.7:6432"])));
        assert_eq!(resolved.get(&2), None, "exact addresses are not the follower's");
    }

    #[test]
    fn a_failed_resolution_keeps_the_last_known_addresses_and_retries_soon() {
        let c = config("  - {name: a, address: 'db.internal:5432'}", "{min_ttl_s: 5, max_ttl_s: 300}");
        let t0 = Instant::now();
        let mut table = HostTable::new(&c, t0);
        table.observe(0, answer(&["10.0.0.5"], 300), t0);
        let t1 = t0 + Duration::from_secs(300);
        for result in [
            Err(LookupError::Dns(Box::new(NetError::Timeout))),
            Err(LookupError::NoAddress),
            answer(&[], 300),
            Err(LookupError::Resolver("resolv.conf unreadable".into())),
        ] {
            assert!(table.observe(0, result, t1).is_empty());
            assert_eq!(table.resolved().get(&0), Some(&addrs(&["10.0.0.5:5432"])), "still governed");
            assert_eq!(table.next_due(), Some(t1 + Duration::from_secs(5)), "retried after min_ttl_s");
        }
        assert_eq!(table.hosts[0].failures, 4);
        assert_eq!(table.hosts[0].warned_at, Some(t1), "warned once for the burst");
        table.observe(0, Err(LookupError::NoAddress), t1 + WARN_EVERY);
        assert_eq!(table.hosts[0].warned_at, Some(t1 + WARN_EVERY), "and again a minute later");

        let back = table.observe(0, answer(&["10.0.0.8"], 30), t1 + WARN_EVERY);
        assert_eq!(back[0].added, addrs(&["10.0.0.8:5432"]));
        assert_eq!(back[0].removed, addrs(&["10.0.0.5:5432"]));
        assert_eq!((table.hosts[0].failures, table.hosts[0].warned_at), (0, None));
    }

    #[test]
    fn a_configuration_without_host_names_needs_no_resolver() {
        let mut c = config("  - {name: a, address: '10.0.0.5:5432'}\n  - {name: b, address: '*:6432'}", "{}");
        let table = HostTable::new(&c, Instant::now());
        assert!(table.is_empty() && table.next_due().is_none());
        // Not even /etc/resolv.conf is read: there is nothing to ask.
        resolve_blocking(&mut c).expect("nothing to resolve");
    }

    #[test]
    fn localhost_resolves_without_a_name_server() {
        // hickory answers localhost itself (RFC 6761), whatever the system's name servers.
        let mut c = config("  - {name: local, address: 'localhost:5433'}", "{nameservers: ['127.0.0.1:9']}");
        resolve_blocking(&mut c).expect("localhost");
        let DatabaseAddress::Host { addrs, .. } = &c.databases[0].address else { panic!("a host") };
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 5433), "{addrs:?}");
    }
}
