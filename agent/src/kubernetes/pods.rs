//! This node's pods, watched (`spec.nodeName=NODE`) into the identity index
//! ([`crate::identity::Pods`]), each with the workload that owns it.
//!
//! A pod's controller is usually a ReplicaSet (then its Deployment is the workload) or a Job
//! (then possibly a CronJob): those are read once per owner and cached, since a controller
//! reference never changes. When the read fails the direct owner stands, uncached, and is
//! asked again for the next pod of it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod as KubePod},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

use super::{SyncToken, WarnEvery};
use crate::identity::{
    Pods,
    pods::{Owner, Pod},
};

/// Owners cached at most (a node runs a few hundred pods; their owners are fewer).
const MAX_OWNERS: usize = 4096;
/// How long one owner read may take before the direct owner stands.
const OWNER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often deleted pods past their grace period are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The pod as identity needs it, and its controller reference (`None`: not a Kubernetes pod
/// with a UID, which the API never sends).
pub fn pod_of(pod: &KubePod) -> Option<(Pod, Option<OwnerReference>)> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let controller = meta
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first()))
        .cloned();
    let spec = pod.spec.as_ref();
    Some((
        Pod {
            uid,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            service_account: spec.and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty()),
            owner: controller.as_ref().map(|c| Owner { kind: c.kind.clone(), name: c.name.clone() }),
            labels: meta.labels.clone().unwrap_or_default(),
        },
        controller,
    ))
}

/// The workload behind controllers, read from the API and cached.
struct Owners {
    client: Client,
    cache: HashMap<(String, String, String), Owner>,
}

impl Owners {
    /// The workload owning a pod of `namespace` whose controller is `controller`.
    async fn workload(&mut self, namespace: &str, controller: &OwnerReference, warn: &mut WarnEvery) -> Owner {
        let direct = Owner { kind: controller.kind.clone(), name: controller.name.clone() };
        let key = (namespace.to_string(), controller.kind.clone(), controller.name.clone());
        if let Some(owner) = self.cache.get(&key) {
            return owner.clone();
        }
        let parent = match controller.kind.as_str() {
            "ReplicaSet" if controller.api_version.starts_with("apps/") => {
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
                read(api.get(&controller.name)).await.map(|rs| rs.map(|rs| rs.metadata.owner_references))
            }
            "Job" if controller.api_version.starts_with("batch/") => {
                let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
                read(api.get(&controller.name)).await.map(|job| job.map(|job| job.metadata.owner_references))
            }
            // StatefulSet, DaemonSet, a bare ReplicaSet's or Job's other controllers: the
            // controller is the workload.
            _ => Ok(None),
        };
        match parent {
            Ok(refs) => {
                let owner = refs
                    .flatten()
                    .and_then(|refs| refs.into_iter().find(|r| r.controller == Some(true)))
                    .filter(|r| matches!(r.kind.as_str(), "Deployment" | "CronJob"))
                    .map_or(direct, |r| Owner { kind: r.kind, name: r.name });
                if self.cache.len() >= MAX_OWNERS {
                    self.cache.clear();
                }
                self.cache.insert(key, owner.clone());
                owner
            }
            Err(error) => {
                warn.warn("owner", &format!("reading {} {namespace}/{}: {error}", controller.kind, controller.name));
                direct
            }
        }
    }
}

/// A read of one object: `Ok(None)` when it does not exist (its owner is then the controller).
async fn read<T>(get: impl Future<Output = Result<T, kube::Error>>) -> Result<Option<T>, String> {
    match tokio::time::timeout(OWNER_READ_TIMEOUT, get).await {
        Err(_) => Err("timed out".into()),
        Ok(Ok(object)) => Ok(Some(object)),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(None),
        Ok(Err(error)) => Err(error.to_string()),
    }
}

/// Follows this node's pods into `pods` until aborted.
pub async fn watch(client: Client, node: String, pods: Arc<Pods>, synced: SyncToken) {
    let api: Api<KubePod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut owners = Owners { client, cache: HashMap::new() };
    let mut warn = WarnEvery::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut last_sweep = Instant::now();
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = sweep.tick() => {
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    let dropped = pods.sweep();
                    tracing::debug!(dropped, "deleted pods past their grace period forgotten");
                    last_sweep = Instant::now();
                }
                continue;
            }
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => pods.list_started(),
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                let Some((mut found, controller)) = pod_of(&pod) else { continue };
                if let Some(controller) = controller {
                    found.owner = Some(owners.workload(&found.namespace, &controller, &mut warn).await);
                }
                tracing::debug!(pod = %found.name, namespace = %found.namespace, uid = %found.uid, "pod");
                pods.apply(found);
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    tracing::debug!(pod = ?pod.metadata.name, uid = %uid, "pod deleted");
                    pods.delete(uid);
                }
            }
            Ok(watcher::Event::InitDone) => {
                pods.list_done();
                synced.done();
                let (live, gone) = pods.counts();
                tracing::info!(node = %node, pods = live, deleted_kept = gone, "pods of this node listed");
            }
            Err(error) => warn.warn("pods", &error),
        }
    }
}
