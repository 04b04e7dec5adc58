//! The Kubernetes API, read-only: this node's pods (identity, `pods.rs`) and the Services that
//! name governed databases (`services.rs`), each followed by kube-runtime's watcher (list, then
//! watch from the list's resourceVersion with bookmarks; a 410 Gone or a broken stream starts a
//! fresh list, with backoff).
//!
//! What the agent reads, and so all its RBAC grants (`deploy/`): pods (list, watch; this node's
//! only, by field selector), replicasets and jobs (get: a pod's owning Deployment or CronJob),
//! services and endpointslices (list, watch; only those databases name).

pub mod pods;
pub mod services;

use std::{path::Path, sync::Arc, time::Duration};

use crate::config::KubernetesConfig;

/// Why the API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes configuration (in-cluster service account, $KUBECONFIG or ~/.kube/config): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error("no node name: set kubernetes.node_name or $NODE_NAME ({0})")]
    NodeName(String),
}

/// A client of the API server and the node this agent serves.
#[derive(Clone)]
pub struct Cluster {
    pub client: ::kube::Client,
    pub node: String,
    pub pod_wait: Duration,
    pub deleted_grace: Duration,
}

impl Cluster {
    /// Connects as `config` says (the connection itself is made by the first request).
    pub async fn connect(config: &KubernetesConfig) -> Result<Self, KubeError> {
        let kube_config = match &config.kubeconfig {
            Some(path) => from_file(path).await?,
            None => ::kube::Config::infer().await.map_err(|e| KubeError::Infer(e.to_string()))?,
        };
        let client = ::kube::Client::try_from(kube_config).map_err(|e| KubeError::Client(e.to_string()))?;
        Ok(Self {
            client,
            node: node_name(config)?,
            pod_wait: Duration::from_millis(config.pod_wait_ms),
            deleted_grace: Duration::from_secs(config.deleted_pod_grace_s),
        })
    }
}

async fn from_file(path: &Path) -> Result<::kube::Config, KubeError> {
    let err = |message: String| KubeError::Kubeconfig { path: path.display().to_string(), message };
    let kubeconfig = ::kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    ::kube::Config::from_custom_kubeconfig(kubeconfig, &::kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))
}

/// `kubernetes.node_name`, else `$NODE_NAME` (the DaemonSet's downward API), else the host name.
fn node_name(config: &KubernetesConfig) -> Result<String, KubeError> {
    if let Some(name) = &config.node_name {
        return Ok(name.clone());
    }
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return Ok(name);
    }
    let host = nix::unistd::gethostname().map_err(|e| KubeError::NodeName(e.to_string()))?;
    host.into_string().map_err(|h| KubeError::NodeName(format!("host name {h:?} is not UTF-8")))
}

/// Whether each watch has delivered its first full list: the agent is ready once all have.
#[derive(Debug, Default)]
pub struct Sync {
    waiting: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Sync {
    /// A watch that must list before the agent is ready.
    pub fn expect(self: &Arc<Self>, what: &str) -> SyncToken {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(what.to_string());
        SyncToken { sync: self.clone(), what: what.to_string() }
    }

    /// The watches that have not listed yet.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Marks one watch as listed.
#[derive(Debug)]
pub struct SyncToken {
    sync: Arc<Sync>,
    what: String,
}

impl SyncToken {
    pub fn done(&self) {
        self.sync.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.what);
    }
}

/// Warns at most once a minute about a condition that persists (a failing watch retries with
/// backoff; a missing Service is looked at on every change).
pub(crate) struct WarnEvery {
    message: &'static str,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl WarnEvery {
    pub(crate) fn new(message: &'static str) -> Self {
        Self { message, last: None, suppressed: 0 }
    }

    pub(crate) fn warn(&mut self, what: &str, error: &dyn std::fmt::Display) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(watch = what, error = %error, repeated = self.suppressed, "{}", self.message);
        self.last = Some(now);
        self.suppressed = 0;
    }
}
