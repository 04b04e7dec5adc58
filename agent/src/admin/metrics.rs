//! `/metrics` (Prometheus text format, the `prometheus-client` crate), `/healthz` and
//! `/readyz` over HTTP on a local address (`metrics.listen`).
//!
//! Counted where it happens (cheap, lock-free after a series exists): flows by database and
//! identity, statements by database, class and decision, masked values, the time a statement's
//! judgement takes and the time a connection's set-up takes. Read at scrape time from their
//! owners: sessions open, approvals pending, the audit ring (usage, overwrites, losses), the
//! kernel's tables (fill levels) and counters (events lost), the pod index.
//!
//! Cardinality is bounded: databases come from the configuration, classes and decisions are
//! enums, and an identity is named by its `warden/identity` label, else its pod's workload
//! (`namespace/owner`), else its user — at most [`MAX_IDENTITY_SERIES`] of them, the rest
//! counted as `other`.

use std::{
    collections::HashSet,
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    approval::Approvals,
    audit::AuditLog,
    identity::{Identity, Pods},
    kubernetes::Sync as KubeSync,
    proxy::live::LiveSessions,
};

/// Distinct identities given their own flow series; the rest are `other`.
pub const MAX_IDENTITY_SERIES: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    database: String,
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    database: String,
    class: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WouldLabels {
    database: String,
    /// How the would-be verdict differs: deny, hold, allow or mask.
    would: &'static str,
    policy: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoppedLabels {
    database: String,
    policy: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

/// The counters the proxy and the judgement update as they work.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The owners read at scrape time; taken away at shutdown (they hold handles the shutdown
    /// waits for: the audit writer's, the kernel's).
    sampled: Arc<Mutex<Option<Sampled>>>,
    flows: Family<FlowLabels, Counter>,
    statements: Family<StatementLabels, Counter>,
    would: Family<WouldLabels, Counter>,
    stopped: Family<StoppedLabels, Counter>,
    masked_values: Family<DatabaseLabels, Counter>,
    judgement: Histogram,
    reused: Counter,
    connect: Histogram,
    identities: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warden");
        let flows = Family::<FlowLabels, Counter>::default();
        registry.register("flows", "Governed connections accepted, by database and identity", flows.clone());
        let statements = Family::<StatementLabels, Counter>::default();
        registry.register(
            "statements",
            "Statements judged, by database, class and decision (allow: forwarded; deny: refused; hold: held for approval)",
            statements.clone(),
        );
        let would = Family::<WouldLabels, Counter>::default();
        registry.register(
            "statements_dryrun",
            "Statements whose would-be verdict (dry-run policies and rules enforced) differs from the real one, by database, what enforcing would change (deny, hold, allow, mask), and the dry-run policy and rule",
            would.clone(),
        );
        let stopped = Family::<StoppedLabels, Counter>::default();
        registry.register(
            "statements_stopped",
            "Statements stopped mid-stream at a volume limit, by database, policy and rule",
            stopped.clone(),
        );
        let masked_values = Family::<DatabaseLabels, Counter>::default();
        registry.register("masked_values", "Result values masked or withheld, by database", masked_values.clone());
        // 5 µs to ~40 ms: a cached judgement is microseconds, a described one tens of them.
        let judgement = Histogram::new(exponential_buckets(5e-6, 2.0, 14));
        registry.register(
            "judgement_seconds",
            "Time from a statement's arrival to its verdict (analysis, policy, mask plan)",
            judgement.clone(),
        );
        let reused = Counter::default();
        registry.register(
            "judgements_reused",
            "Statements given again the judgement the same text, or the same text with other literals, got last, under the same policy set and with nothing the session knows changed since (a prepared statement bound again, a simple query sent again with new values)",
            reused.clone(),
        );
        // 100 µs to ~3 s.
        let connect = Histogram::new(exponential_buckets(1e-4, 2.0, 15));
        registry.register(
            "connect_seconds",
            "Time from accepting a governed connection to its session being set up with the database",
            connect.clone(),
        );
        let sampled = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(SampledNow(sampled.clone())));
        Self {
            sampled,
            registry: Mutex::new(registry),
            flows,
            statements,
            would,
            stopped,
            masked_values,
            judgement,
            reused,
            connect,
            identities: Mutex::new(HashSet::new()),
        }
    }

    /// Reads these owners at each scrape from now on.
    pub fn sample(&self, sampled: Sampled) {
        *self.sampled.lock().unwrap_or_else(|p| p.into_inner()) = Some(sampled);
    }

    /// Lets go of the owners (at shutdown).
    pub fn stop_sampling(&self) {
        self.sampled.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The identity a flow series is named by (bounded: see the module's doc).
    fn identity_series(&self, identity: &Identity) -> String {
        // A pod by its namespace and workload (never a label it chooses itself).
        let name = if let Some(pod) = &identity.pod {
            let workload = pod.owner.as_ref().map_or(pod.name.as_str(), |o| o.name.as_str());
            format!("pod:{}/{workload}", pod.namespace)
        } else if let Some(name) = identity.labels.get("warden/identity") {
            format!("identity:{name}")
        } else if let Some(user) = &identity.user {
            format!("user:{user}")
        } else {
            format!("uid:{}", identity.uid)
        };
        let mut known = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(&name) {
            return name;
        }
        if known.len() >= MAX_IDENTITY_SERIES {
            return "other".into();
        }
        known.insert(name.clone());
        name
    }

    /// A governed connection was accepted and attributed.
    pub fn flow(&self, database: &str, identity: &Identity) {
        let identity = self.identity_series(identity);
        self.flows.get_or_create(&FlowLabels { database: database.to_string(), identity }).inc();
    }

    /// A statement was judged.
    pub fn statement(&self, database: &str, class: &'static str, decision: &'static str) {
        self.statements.get_or_create(&StatementLabels { database: database.to_string(), class, decision }).inc();
    }

    /// A statement's would-be verdict differs from its real one (`would`: deny, hold, allow,
    /// mask), decided by `policy` and `rule` (names from the policy files: bounded).
    pub fn would(&self, database: &str, would: &'static str, policy: &str, rule: &str) {
        let labels = WouldLabels { database: database.to_string(), would, policy: policy.into(), rule: rule.into() };
        self.would.get_or_create(&labels).inc();
    }

    /// A statement was stopped at a volume limit.
    pub fn stopped(&self, database: &str, policy: &str, rule: &str) {
        let labels = StoppedLabels { database: database.to_string(), policy: policy.into(), rule: rule.into() };
        self.stopped.get_or_create(&labels).inc();
    }

    /// The counter of masked values of `database` (kept by a result's filter).
    pub fn masked_values(&self, database: &str) -> Counter {
        self.masked_values.get_or_create(&DatabaseLabels { database: database.to_string() }).clone()
    }

    /// One database's counters for a session to keep: each series is looked up once (labels
    /// built, hashed, found under the family's lock), then counted through directly.
    pub fn for_database(self: &Arc<Self>, database: &str) -> DatabaseCounters {
        DatabaseCounters {
            metrics: self.clone(),
            database: database.to_string(),
            statements: Mutex::new(Vec::new()),
            masked_values: std::sync::OnceLock::new(),
        }
    }

    pub fn judged_in(&self, took: Duration) {
        self.judgement.observe(took.as_secs_f64());
    }

    pub fn judgement_reused(&self) {
        self.reused.inc();
    }

    pub fn connected_in(&self, took: Duration) {
        self.connect.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %err, "encoding the metrics failed");
        }
        out
    }
}

/// A database's statement and masked-value counters, as one session counts them (`for_database`).
/// Each is a handle on the family's own series: what it counts is what a scrape shows.
pub struct DatabaseCounters {
    metrics: Arc<Metrics>,
    database: String,
    /// By class and decision (a handful: both are from fixed sets).
    statements: Mutex<Vec<(&'static str, &'static str, Counter)>>,
    masked_values: std::sync::OnceLock<Counter>,
}

impl DatabaseCounters {
    /// A statement of `class` was decided (`decision`: allow, deny, hold).
    pub fn statement(&self, class: &'static str, decision: &'static str) {
        let mut kept = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, counter)) = kept.iter().find(|(c, d, _)| *c == class && *d == decision) {
            counter.inc();
            return;
        }
        let labels = StatementLabels { database: self.database.clone(), class, decision };
        let counter = self.metrics.statements.get_or_create(&labels).clone();
        counter.inc();
        kept.push((class, decision, counter));
    }

    /// The counter of the database's masked values.
    pub fn masked_values(&self) -> Counter {
        self.masked_values.get_or_init(|| self.metrics.masked_values(&self.database)).clone()
    }
}

/// What is read from its owner at each scrape.
pub struct Sampled {
    pub approvals: Arc<Approvals>,
    pub live: Arc<LiveSessions>,
    pub audit: AuditLog,
    pub audit_path: PathBuf,
    pub bpffs: PathBuf,
    pub stats: Arc<crate::ebpf::Kernel>,
    pub pods: Option<Arc<Pods>>,
    pub governed: Arc<crate::net::governed::Governed>,
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_of_label, value) in values {
        let labels = [(label, value_of_label)];
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The collector registered once: whatever is being sampled now.
#[derive(Debug)]
struct SampledNow(Arc<Mutex<Option<Sampled>>>);

impl Collector for SampledNow {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(sampled) => sampled.encode(encoder),
            None => Ok(()),
        }
    }
}

impl Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = self.live.list();
        let mut by_database: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for s in &sessions {
            *by_database.entry(s.database.as_str()).or_default() += 1;
        }
        gauges(&mut encoder, "sessions_open", "PostgreSQL sessions open, by database", "database", by_database)?;
        gauge(
            &mut encoder,
            "approvals_pending",
            "Statements held for approval now",
            self.approvals.pending().len() as i64,
        )?;

        let counters = self.audit.counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        counter(&mut encoder, "audit_records_written", "Audit records written to the ring", load(&counters.written))?;
        counter(
            &mut encoder,
            "audit_records_dropped",
            "Audit records dropped before the ring (queue full)",
            load(&counters.dropped),
        )?;
        counter(&mut encoder, "audit_write_errors", "Failed writes to the audit ring", load(&counters.write_errors))?;
        counter(
            &mut encoder,
            "audit_records_condensed_by_share",
            "Statement records condensed: their identity was over its share of the ring",
            load(&counters.share_condensed),
        )?;
        counter(
            &mut encoder,
            "audit_records_dropped_by_share",
            "Statement records dropped: their identity was over its share of the ring",
            load(&counters.share_dropped),
        )?;
        counter(
            &mut encoder,
            "audit_outcomes_merged",
            "Statement outcomes written in their statement's record (it ended before the writer wrote it)",
            load(&counters.outcomes_merged),
        )?;
        gauge(
            &mut encoder,
            "audit_healthy",
            "1 while the audit writer's last write succeeded",
            i64::from(self.audit.healthy()),
        )?;
        if let Ok(ring) = crate::audit::ring::RingFile::open(&self.audit_path) {
            gauge(&mut encoder, "audit_ring_capacity_bytes", "The audit ring's capacity", ring.capacity() as i64)?;
            gauge(&mut encoder, "audit_ring_used_bytes", "Bytes of records in the audit ring", ring.used() as i64)?;
            counter(
                &mut encoder,
                "audit_records_overwritten",
                "Oldest audit records overwritten as the ring wrapped",
                ring.overwritten(),
            )?;
            counter(&mut encoder, "audit_records_lost", "Audit records the agent failed to keep", ring.lost())?;
        }

        let stats = self.stats.stats().read();
        for (i, (name, help)) in [
            ("kernel_redirected", "Connections the kernel sent to the proxy"),
            ("kernel_exempted", "Connections of the agent itself, left alone"),
            ("kernel_ungoverned", "Governed connections that went direct (fail open, agent not serving)"),
            ("kernel_refused", "Governed connections refused (fail closed, agent not serving)"),
            ("kernel_observed", "Connections to observe-only databases"),
            ("kernel_events_lost", "Kernel events lost (the event ring was full)"),
            ("kernel_flows_recorded", "Flow records the kernel wrote"),
            ("kernel_flows_accepted", "Flow records the proxy took"),
            ("kernel_flows_abandoned", "Flow records dropped unused"),
        ]
        .iter()
        .enumerate()
        {
            counter(&mut encoder, name, help, stats.get(i).copied().unwrap_or(0))?;
        }
        let fill = crate::ebpf::map_fill(&self.bpffs);
        gauges(
            &mut encoder,
            "kernel_map_entries",
            "Entries in the kernel's tables",
            "map",
            fill.iter().map(|m| (m.name, m.entries as i64)),
        )?;
        gauges(
            &mut encoder,
            "kernel_map_max_entries",
            "Capacity of the kernel's tables",
            "map",
            fill.iter().map(|m| (m.name, m.max_entries as i64)),
        )?;
        let overflow = self.governed.overflow();
        gauges(
            &mut encoder,
            "governed_endpoints_dropped",
            "Endpoints of a Service left ungoverned because the kernel's table is full",
            "database",
            overflow.iter().map(|(d, n)| (d.as_str(), *n as i64)),
        )?;
        if let Some(pods) = &self.pods {
            let (live, gone) = pods.counts();
            gauges(
                &mut encoder,
                "kubernetes_pods",
                "Pods of this node known to the agent (deleted ones are kept for a grace period)",
                "state",
                [("live", live as i64), ("deleted", gone as i64)],
            )?;
        }
        Ok(())
    }
}

/// What `/readyz` and `/healthz` look at.
pub struct Health {
    pub bpffs: PathBuf,
    pub audit: crate::audit::AuditProbe,
    pub kube: Arc<KubeSync>,
    pub governed: Arc<crate::net::governed::Governed>,
}

impl Health {
    /// Why the agent is not alive (its time-keeping loop stopped publishing the heartbeat).
    fn dead(&self) -> Option<String> {
        match crate::ebpf::pinned_state(&self.bpffs) {
            Ok(state) => {
                let age = crate::ebpf::monotonic_ns().saturating_sub(state.heartbeat_ns);
                (age >= agent_common::HEARTBEAT_STALE_NS).then(|| format!("heartbeat {} ms old", age / 1_000_000))
            }
            Err(err) => Some(format!("agent state unreadable: {err}")),
        }
    }

    /// Why the agent should not be counted as serving.
    fn unready(&self) -> Vec<String> {
        let mut why: Vec<String> = self.dead().into_iter().collect();
        if let Ok(state) = crate::ebpf::pinned_state(&self.bpffs)
            && state.serving != 1
        {
            why.push("not serving".into());
        }
        if !self.audit.healthy() {
            why.push("the audit ring's last write failed".into());
        }
        why.extend(self.kube.waiting().into_iter().map(|w| format!("Kubernetes watch not listed yet: {w}")));
        why.extend(self.governed.overflow().into_iter().map(|(database, n)| {
            format!("the governed-endpoint table is full: {n} endpoints of {database} are not governed")
        }));
        why
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

async fn handle(metrics: &Arc<Metrics>, health: &Arc<Health>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            // The kernel tables are counted key by key: off the runtime's threads.
            let metrics = metrics.clone();
            match tokio::task::spawn_blocking(move || metrics.encode()).await {
                Ok(body) => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{err}\n")),
            }
        }
        "/healthz" => match health.dead() {
            None => text(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        "/readyz" => {
            let why = health.unready();
            if why.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{}\n", why.join("\n")))
            }
        }
        other => text(StatusCode::NOT_FOUND, "text/plain", format!("no such endpoint: {other}\n")),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move { Ok::<_, Infallible>(handle(&metrics, &health, req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: usize) -> Identity {
        let mut identity = Identity::psql_for_tests(1);
        identity.pod = Some(crate::identity::PodIdentity {
            namespace: "crm".into(),
            name: format!("etl-{n}"),
            service_account: None,
            owner: None,
        });
        identity
    }

    #[test]
    fn flow_series_stay_bounded_whatever_the_number_of_pods() {
        let metrics = Metrics::new();
        for n in 0..1_000 {
            metrics.flow("main", &identity(n));
        }
        let text = metrics.encode();
        let series = text.lines().filter(|l| l.starts_with("warden_flows_total{")).count();
        assert_eq!(series, MAX_IDENTITY_SERIES + 1, "{text}");
        assert!(text.contains("warden_flows_total{database=\"main\",identity=\"other\"} 800"), "{text}");
        metrics.statement("main", "read", "allow");
        metrics.judged_in(Duration::from_micros(40));
        let text = metrics.encode();
        assert!(
            text.contains("warden_statements_total{database=\"main\",class=\"read\",decision=\"allow\"} 1"),
            "{text}"
        );
        // A session's kept counters count in the same series as the family's.
        let metrics = Arc::new(metrics);
        let session = metrics.for_database("main");
        for _ in 0..3 {
            session.statement("read", "allow");
            session.statement("write", "deny");
        }
        session.masked_values().inc_by(5);
        metrics.for_database("main").masked_values().inc();
        let text = metrics.encode();
        for series in [
            "warden_statements_total{database=\"main\",class=\"read\",decision=\"allow\"} 4",
            "warden_statements_total{database=\"main\",class=\"write\",decision=\"deny\"} 3",
            "warden_masked_values_total{database=\"main\"} 6",
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
        assert!(text.contains("warden_judgement_seconds_count 1"), "{text}");
    }
}
