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

/// The annotation of a static pod's mirror: the config hash kubelet names the pod's cgroups by.
const MIRROR: &str = "kubernetes.io/config.mirror";

/// The pod as identity needs it, and its controller reference (`None`: not a Kubernetes pod
/// with a UID, which the API never sends). A static pod (run by this node's kubelet from a
/// file) is known by its config hash, which is what its cgroups carry; its mirror in the API
/// is believed only when this node owns it.
pub fn pod_of(pod: &KubePod, node: &str) -> Option<(Pod, Option<OwnerReference>)> {
    let meta = &pod.metadata;
    // Only a config hash (32 lowercase hex, never a UID's shape) on this node's own mirror.
    let mirror = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR))
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .filter(|_| {
            meta.owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "Node" && r.name == node && r.controller == Some(true))
        });
    let uid = mirror.cloned().or_else(|| meta.uid.clone())?;
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

/// The workload behind controllers, read from the API and cached by namespace and controller
/// UID (a controller's own owner never changes). A read object whose UID is not the one the pod
/// names is not believed (nor cached): a pod cannot borrow another controller's workload.
struct Owners {
    client: Client,
    cache: HashMap<(String, String), Owner>,
}

impl Owners {
    /// The workload owning a pod of `namespace` whose controller is `controller`; `None` when
    /// the controller could not be read (the caller keeps what it knew).
    async fn workload(&mut self, namespace: &str, controller: &OwnerReference, warn: &mut WarnEvery) -> Option<Owner> {
        let direct = Owner { kind: controller.kind.clone(), name: controller.name.clone() };
        let key = (namespace.to_string(), controller.uid.clone());
        if let Some(owner) = self.cache.get(&key) {
            return Some(owner.clone());
        }
        let parent = match controller.kind.as_str() {
            "ReplicaSet" if controller.api_version.starts_with("apps/") => {
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
                read(api.get(&controller.name)).await.and_then(|rs| match rs {
                    Some(rs) if rs.metadata.uid.as_deref() != Some(controller.uid.as_str()) => {
                        Err("its UID is not the one the pod names".to_string())
                    }
                    rs => Ok(rs.map(|rs| rs.metadata.owner_references)),
                })
            }
            "Job" if controller.api_version.starts_with("batch/") => {
                let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
                read(api.get(&controller.name)).await.and_then(|job| match job {
                    Some(job) if job.metadata.uid.as_deref() != Some(controller.uid.as_str()) => {
                        Err("its UID is not the one the pod names".to_string())
                    }
                    job => Ok(job.map(|job| job.metadata.owner_references)),
                })
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
                Some(owner)
            }
            Err(error) => {
                warn.warn("owner", &format!("reading {} {namespace}/{}: {error}", controller.kind, controller.name));
                None
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
    let mut warn = WarnEvery::new("Kubernetes watch failed; retrying");
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
                let Some((mut found, controller)) = pod_of(&pod, &node) else { continue };
                // A mirror pod claims a config hash: never one another pod already holds.
                if pod.metadata.uid.as_deref() != Some(found.uid.as_str())
                    && let Some(holder) = pods.get(&found.uid)
                    && (holder.namespace != found.namespace || holder.name != found.name)
                {
                    tracing::warn!(pod = %found.name, namespace = %found.namespace, holder = %holder.name, "a second mirror pod claims a static pod's config hash; ignored");
                    continue;
                }
                if let Some(controller) = controller {
                    // A failed read keeps the owner known before (no flapping identity), else
                    // the controller itself.
                    found.owner = match owners.workload(&found.namespace, &controller, &mut warn).await {
                        Some(owner) => Some(owner),
                        None => pods.get(&found.uid).and_then(|p| p.owner.clone()).or(found.owner),
                    };
                }
                tracing::debug!(pod = %found.name, namespace = %found.namespace, uid = %found.uid, "pod");
                pods.apply(found);
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some((gone, _)) = pod_of(&pod, &node) {
                    tracing::debug!(pod = %gone.name, uid = %gone.uid, "pod deleted");
                    pods.delete(&gone.uid);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kube_pod(json: serde_json::Value) -> KubePod {
        serde_json::from_value(json).expect("a Pod")
    }

    #[test]
    fn a_pod_is_known_by_its_uid_and_a_static_pod_by_its_config_hash_on_its_own_node() {
        let regular = kube_pod(serde_json::json!({
            "metadata": {"name": "etl-1", "namespace": "crm", "uid": "u-1", "labels": {"app": "etl"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "etl-7d", "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "c"}], "serviceAccountName": "etl"}
        }));
        let (p, controller) = pod_of(&regular, "node-1").expect("a pod");
        assert_eq!((p.uid.as_str(), p.namespace.as_str(), p.service_account.as_deref()), ("u-1", "crm", Some("etl")));
        assert_eq!(controller.expect("a controller").kind, "ReplicaSet");

        let mirror = |node: &str| {
            kube_pod(serde_json::json!({
                "metadata": {"name": "kube-apiserver-node-1", "namespace": "kube-system", "uid": "server-assigned",
                    "annotations": {"kubernetes.io/config.mirror": "0123456789abcdef0123456789abcdef"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": "n", "controller": true}]},
                "spec": {"containers": [{"name": "c"}]}
            }))
        };
        assert_eq!(pod_of(&mirror("node-1"), "node-1").expect("a pod").0.uid, "0123456789abcdef0123456789abcdef");
        assert_eq!(pod_of(&mirror("node-2"), "node-1").expect("a pod").0.uid, "server-assigned", "another node's");
    }
}
