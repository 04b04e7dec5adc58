//! The pods of this node as the Kubernetes API describes them, by pod UID: what a cgroup path's
//! pod UID (`container.rs`) turns into — namespace, name, labels, service account and the
//! workload that owns the pod.
//!
//! The index is fed by the node-scoped watch (`kube/pods.rs`) and read by the resolver and by
//! sessions. Three rules make it hold against timing:
//! - a deleted pod stays resolvable for `grace` (a flow's last statements, late kernel events);
//! - a flow whose pod is not known yet waits for it ([`Pods::wait`]), so it is never judged
//!   anonymously (the proxy refuses it if the wait runs out);
//! - every change moves a generation, so a session notices a relabelled pod at its next
//!   statement with one atomic load ([`Pods::generation`]).
//!
//! Pod labels are the workload's identity. Keys under [`RESERVED_PREFIX`] are Warden's own facts
//! about the pod (namespace, service account, owner): a pod's own labels with that prefix are
//! dropped, so no pod can claim another namespace or owner.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::cache::Clock;

/// Labels under this prefix are set by Warden from the pod's metadata, never taken from the pod.
pub const RESERVED_PREFIX: &str = "k8s.warden.dev/";
/// The pod's namespace.
pub const LABEL_NAMESPACE: &str = "k8s.warden.dev/namespace";
/// The pod's name.
pub const LABEL_POD: &str = "k8s.warden.dev/pod";
/// The pod's service account.
pub const LABEL_SERVICE_ACCOUNT: &str = "k8s.warden.dev/service-account";
/// The kind of the workload that owns the pod (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`,
/// `CronJob`, `ReplicaSet` when it has no Deployment, or any other controller's kind).
pub const LABEL_OWNER_KIND: &str = "k8s.warden.dev/owner-kind";
/// The name of that workload.
pub const LABEL_OWNER_NAME: &str = "k8s.warden.dev/owner-name";

/// The workload that owns a pod, followed through its ReplicaSet (to a Deployment) or Job (to a
/// CronJob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// One pod, as far as identity goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub owner: Option<Owner>,
    /// The pod's own labels, as the API shows them (reserved keys are dropped from
    /// [`Pod::identity_labels`]).
    pub labels: BTreeMap<String, String>,
}

impl Pod {
    /// The labels a policy selects this pod's flows by: its own, plus Warden's facts about it.
    pub fn identity_labels(&self) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = self
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_NAMESPACE.into(), self.namespace.clone());
        labels.insert(LABEL_POD.into(), self.name.clone());
        if let Some(sa) = &self.service_account {
            labels.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
        }
        if let Some(owner) = &self.owner {
            labels.insert(LABEL_OWNER_KIND.into(), owner.kind.clone());
            labels.insert(LABEL_OWNER_NAME.into(), owner.name.clone());
        }
        labels
    }
}

/// The pod's part of an audit record's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub owner: Option<Owner>,
}

impl From<&Pod> for PodIdentity {
    fn from(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: pod.service_account.clone(),
            owner: pod.owner.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Arc<Pod>>,
    /// Deleted pods and when they were found deleted.
    gone: HashMap<String, (Arc<Pod>, Instant)>,
    /// UIDs listed since the watch (re)started: at the end of the list, live pods not among them
    /// were deleted while the watch was down.
    listing: Option<HashSet<String>>,
}

/// The pods of this node by UID.
pub struct Pods {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    /// Whether a first full list arrived (readiness).
    synced: AtomicBool,
    changed: tokio::sync::Notify,
    grace: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl Pods {
    /// An empty index keeping deleted pods for `grace`.
    pub fn new(grace: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            grace,
            clock,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Moves whenever a pod appears, changes or goes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the first full list of the node's pods has arrived.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// How many pods are live, and how many deleted ones are still kept.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.live.len(), inner.gone.len())
    }

    /// The pod with `uid`: live, or deleted less than the grace period ago.
    pub fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        let inner = self.read();
        if let Some(pod) = inner.live.get(uid) {
            return Some(pod.clone());
        }
        let (pod, since) = inner.gone.get(uid)?;
        (self.clock.now().saturating_duration_since(*since) < self.grace).then(|| pod.clone())
    }

    /// A pod was added or changed.
    pub fn apply(&self, pod: Pod) {
        let mut inner = self.write();
        if let Some(seen) = &mut inner.listing {
            seen.insert(pod.uid.clone());
        }
        inner.gone.remove(&pod.uid);
        let changed = inner.live.get(&pod.uid).is_none_or(|old| **old != pod);
        if changed {
            inner.live.insert(pod.uid.clone(), Arc::new(pod));
        }
        drop(inner);
        if changed {
            self.bump();
        }
    }

    /// A pod was deleted: it resolves for the grace period still.
    pub fn delete(&self, uid: &str) {
        let now = self.clock.now();
        let mut inner = self.write();
        if let Some(pod) = inner.live.remove(uid) {
            inner.gone.insert(uid.to_string(), (pod, now));
        }
        drop(inner);
        self.bump();
    }

    /// The watch (re)started: a full list follows.
    pub fn list_started(&self) {
        self.write().listing = Some(HashSet::new());
    }

    /// The full list ended: pods not in it were deleted while the watch was not looking.
    pub fn list_done(&self) {
        let now = self.clock.now();
        let mut inner = self.write();
        let seen = inner.listing.take().unwrap_or_default();
        let missing: Vec<String> = inner.live.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
        for uid in missing {
            if let Some(pod) = inner.live.remove(&uid) {
                inner.gone.insert(uid, (pod, now));
            }
        }
        drop(inner);
        self.synced.store(true, Ordering::Release);
        self.bump();
    }

    /// Forgets deleted pods older than the grace period; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let mut inner = self.write();
        let before = inner.gone.len();
        inner.gone.retain(|_, (_, since)| now.saturating_duration_since(*since) < self.grace);
        before - inner.gone.len()
    }

    /// The pod with `uid`, waiting up to `timeout` for it to appear.
    pub async fn wait(&self, uid: &str, timeout: Duration) -> Option<Arc<Pod>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an apply between the look and the wait wakes it.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(pod) = self.get(uid) {
                return Some(pod);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ManualClock;

    fn pod(uid: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            uid: uid.into(),
            namespace: "crm".into(),
            name: format!("etl-{uid}"),
            service_account: Some("etl".into()),
            owner: Some(Owner { kind: "Deployment".into(), name: "etl".into() }),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn index() -> (Pods, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (Pods::new(Duration::from_secs(60), clock.clone()), clock)
    }

    #[test]
    fn reserved_labels_come_from_the_pod_metadata_only() {
        let p = pod("a", &[("app", "etl"), (LABEL_NAMESPACE, "prod"), ("k8s.warden.dev/owner-name", "x")]);
        let labels = p.identity_labels();
        assert_eq!(labels[LABEL_NAMESPACE], "crm");
        assert_eq!(labels[LABEL_OWNER_NAME], "etl");
        assert_eq!(labels[LABEL_OWNER_KIND], "Deployment");
        assert_eq!(labels[LABEL_SERVICE_ACCOUNT], "etl");
        assert_eq!(labels[LABEL_POD], "etl-a");
        assert_eq!(labels["app"], "etl");
        assert_eq!(labels.len(), 6);
    }

    #[test]
    fn deleted_pods_resolve_for_the_grace_period() {
        let (pods, clock) = index();
        pods.apply(pod("a", &[]));
        pods.delete("a");
        clock.advance(Duration::from_secs(59));
        assert!(pods.get("a").is_some());
        assert_eq!(pods.sweep(), 0);
        clock.advance(Duration::from_secs(2));
        assert!(pods.get("a").is_none());
        assert_eq!(pods.sweep(), 1);
        assert_eq!(pods.counts(), (0, 0));
    }

    #[test]
    fn a_relist_retires_pods_it_no_longer_shows_and_changes_move_the_generation() {
        let (pods, _) = index();
        pods.apply(pod("a", &[]));
        pods.apply(pod("b", &[]));
        let g = pods.generation();
        pods.apply(pod("b", &[]));
        assert_eq!(pods.generation(), g, "an unchanged pod is not a change");
        pods.list_started();
        pods.apply(pod("b", &[("tier", "gold")]));
        assert!(pods.generation() > g);
        pods.list_done();
        assert!(pods.synced());
        assert_eq!(pods.counts(), (1, 1));
        assert_eq!(pods.get("b").expect("live").labels["tier"], "gold");
        assert!(pods.get("a").is_some(), "retired, within grace");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_pod_when_it_appears_and_gives_up_at_its_deadline() {
        let (pods, _) = index();
        let pods = Arc::new(pods);
        let waiter = tokio::spawn({
            let pods = pods.clone();
            async move { pods.wait("late", Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        pods.apply(pod("other", &[]));
        pods.apply(pod("late", &[("app", "late")]));
        let found = waiter.await.expect("joins").expect("the pod appeared");
        assert_eq!(found.labels["app"], "late");
        assert!(pods.wait("never", Duration::from_millis(20)).await.is_none());
    }
}
