//! Databases named by Kubernetes Service (`address: NAMESPACE/NAME:PORT`): the hook sees a
//! connection's destination before any NAT, so a Service is governed wherever a client may
//! dial it — its cluster IPs (and external and load-balancer IPs) at the Service port, its node
//! port on every address, and each backend address at its target port (what a client dialling
//! a pod directly, or eBPF socket load balancing such as Cilium's, presents). All are followed
//! from the Service and its EndpointSlices without a restart, and each change is recorded
//! (`endpoints_changed`).
//!
//! The proxy dials the destination the client dialled, as the client would have: kube-proxy's
//! rules (or Cilium's connect hook) pick the backend for the agent's connection in the client's
//! network namespace. docs/decisions.md, "Kubernetes Services".

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Service, ServicePort as KubeServicePort},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};

use super::{SyncToken, WarnEvery};
use crate::{
    audit::{AuditLog, Event},
    config::ServicePort,
    ebpf::Reached,
    net::governed::{Governed, SavedPort},
};

/// One Service-named database.
#[derive(Debug, Clone)]
pub struct ServiceDatabase {
    pub index: usize,
    pub database: String,
    pub namespace: String,
    pub name: String,
    pub port: ServicePort,
}

/// The Service's port the database address names.
pub fn service_port<'a>(service: Option<&'a Service>, port: &ServicePort) -> Option<&'a KubeServicePort> {
    service?.spec.as_ref()?.ports.iter().flatten().find(|p| match port {
        ServicePort::Number(n) => p.port == i32::from(*n),
        ServicePort::Name(name) => p.name.as_deref() == Some(name),
    })
}

/// Where the Service is reached: its front (cluster, external and load-balancer IPs at
/// `service_port`, and its node port) when `service` has that port, and the backends of its
/// EndpointSlices at the port of the same name. With `service` absent (deleted, being
/// re-created), `service_port` is the port as last seen: the backends stay governed while
/// their slices exist.
pub fn reached(
    service: Option<&Service>,
    slices: &BTreeMap<String, EndpointSlice>,
    service_port: Option<&KubeServicePort>,
) -> Reached {
    let (mut addrs, mut any_address, mut backends) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let Some(service_port) = service_port else { return Reached::default() };
    if let Some(service) = service
        && let Some(spec) = &service.spec
    {
        let mut front: Vec<&str> = spec.cluster_ips.iter().flatten().map(String::as_str).collect();
        front.extend(spec.cluster_ip.as_deref());
        front.extend(spec.external_ips.iter().flatten().map(String::as_str));
        let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        front.extend(ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()));
        if let Ok(port) = u16::try_from(service_port.port) {
            // "None" marks a headless Service: only its backends are reached.
            addrs.extend(front.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, port)));
        }
        if let Some(node_port) = service_port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) {
            any_address.insert(node_port);
        }
    }
    for slice in slices.values() {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // The slice's port of the same name (the Service port's name, or none for a Service
        // with a single unnamed port).
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == service_port.name.as_deref().unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        // Every endpoint, ready or not: one becoming ready must already be governed.
        for endpoint in &slice.endpoints {
            backends.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, target)),
            );
        }
    }
    Reached {
        addrs: addrs.into_iter().collect(),
        any_address: any_address.into_iter().collect(),
        backends: backends.into_iter().collect(),
    }
}

/// What one side of the watch said.
enum Seen {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Follows one Service and its EndpointSlices into the governed table until aborted.
pub async fn follow(client: Client, db: ServiceDatabase, governed: Arc<Governed>, audit: AuditLog, synced: SyncToken) {
    let services: Api<Service> = Api::namespaced(client.clone(), &db.namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &db.namespace);
    let service_watch = watcher(services, watcher::Config::default().fields(&format!("metadata.name={}", db.name)))
        .default_backoff()
        .map(|e| e.map(|e| Seen::Service(Box::new(e))));
    let slice_watch =
        watcher(slices, watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", db.name)))
            .default_backoff()
            .map(|e| e.map(|e| Seen::Slice(Box::new(e))));
    let mut stream = futures::stream::select(service_watch.boxed(), slice_watch.boxed());
    let what = format!("service {}/{}", db.namespace, db.name);
    let mut warn = WarnEvery::new("Kubernetes watch failed; retrying");
    let mut service: Option<Service> = None;
    let mut listing_service: Option<Option<Service>> = None;
    let mut endpoint_slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut listing_slices: Option<BTreeMap<String, EndpointSlice>> = None;
    let (mut service_listed, mut slices_listed) = (false, false);
    // Starts from what the last agent saved (already in the kernel's table): the first list
    // then reports only what changed since.
    let mut current = governed.reached(db.index).unwrap_or_default();
    let mut behind = false;
    // The Service's port as last seen (by this agent or, saved, the last): its backends stay
    // governed while it is re-created.
    let mut last_port: Option<KubeServicePort> = governed.service_port(db.index).map(|p| KubeServicePort {
        name: p.name,
        port: p.port,
        ..KubeServicePort::default()
    });
    let mut missing = WarnEvery::new("a Service-named database is not fully known");
    while let Some(event) = stream.next().await {
        let changed = match event {
            Err(error) => {
                warn.warn(&what, &error);
                // A failed kernel update is retried on the watch's next word (or error).
                behind
            }
            Ok(Seen::Service(event)) => match *event {
                watcher::Event::Init => {
                    listing_service = Some(None);
                    false
                }
                watcher::Event::InitApply(s) => {
                    listing_service = Some(Some(s));
                    false
                }
                watcher::Event::InitDone => {
                    service = listing_service.take().flatten();
                    service_listed = true;
                    true
                }
                watcher::Event::Apply(s) => {
                    service = Some(s);
                    true
                }
                watcher::Event::Delete(_) => {
                    service = None;
                    true
                }
            },
            Ok(Seen::Slice(event)) => {
                let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
                match *event {
                    watcher::Event::Init => {
                        listing_slices = Some(BTreeMap::new());
                        false
                    }
                    watcher::Event::InitApply(s) => {
                        listing_slices.get_or_insert_default().insert(name(&s), s);
                        false
                    }
                    watcher::Event::InitDone => {
                        endpoint_slices = listing_slices.take().unwrap_or_default();
                        slices_listed = true;
                        true
                    }
                    watcher::Event::Apply(s) => {
                        endpoint_slices.insert(name(&s), s);
                        true
                    }
                    watcher::Event::Delete(s) => {
                        endpoint_slices.remove(&name(&s));
                        true
                    }
                }
            }
        };
        if !(changed && service_listed && slices_listed) {
            continue;
        }
        // Ready once both lists arrived, whatever they showed (a missing Service is warned about,
        // and must not keep every node from rolling out).
        synced.done();
        let found = service_port(service.as_ref(), &db.port).cloned();
        if let Some(port) = &found {
            if last_port.as_ref().is_none_or(|last| last.name != port.name || last.port != port.port) {
                governed.set_service_port(db.index, SavedPort { name: port.name.clone(), port: port.port });
            }
            last_port.clone_from(&found);
        } else {
            missing.warn(
                &what,
                &format!(
                    "no such Service, or it has no port {}: {} (backends as last seen stay governed while their EndpointSlices exist)",
                    db.port,
                    if last_port.is_some() { "it went away" } else { "check the database's address" }
                ),
            );
        }
        if let Some(kind) = service.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.type_.as_deref())
            && kind == "ExternalName"
        {
            missing.warn(
                &what,
                &"an ExternalName Service has no address of its own: name the database by the DNS name it points to",
            );
        }
        let now =
            reached(found.as_ref().and(service.as_ref()), &endpoint_slices, found.as_ref().or(last_port.as_ref()));
        if now == current && !behind {
            continue;
        }
        match governed.update(|r| {
            r.insert(db.index, now.clone());
        }) {
            Ok(_) => {
                behind = false;
                let (added, removed) = difference(&current, &now);
                if !added.is_empty() || !removed.is_empty() {
                    tracing::info!(
                        database = %db.database,
                        service = %what,
                        added = ?added,
                        removed = ?removed,
                        "Service endpoints changed; governed endpoints updated"
                    );
                    audit.record(Event::EndpointsChanged {
                        database: db.database.clone(),
                        host: format!("{what}:{}", db.port),
                        added,
                        removed,
                    });
                }
                current = now;
            }
            Err(error) => {
                behind = true;
                tracing::error!(database = %db.database, error = %error, "cannot update the governed endpoints");
            }
        }
    }
}

/// Endpoints (node ports as `[::]:PORT`, as the kernel's table keys them) gained and lost.
fn difference(before: &Reached, after: &Reached) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let (b, a) = (before.endpoints(), after.endpoints());
    (a.difference(&b).copied().collect(), b.difference(&a).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).expect("a Service")
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("an EndpointSlice")
    }

    fn pg_service() -> Service {
        service(serde_json::json!({
            "metadata": {"name": "pg", "namespace": "crm"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ports": [
                    {"name": "metrics", "port": 9187, "targetPort": 9187},
                    {"name": "postgres", "port": 5432, "targetPort": "pg", "nodePort": 30432}
                ]
            }
        }))
    }

    fn pg_slices() -> BTreeMap<String, EndpointSlice> {
        let s = slice(serde_json::json!({
            "metadata": {"name": "pg-abc", "namespace": "crm", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "ports": [{"name": "postgres", "port": 15432, "protocol": "TCP"}, {"name": "metrics", "port": 9187}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}
            ]
        }));
        BTreeMap::from([("pg-abc".to_string(), s)])
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = list.iter().map(|a| a.parse().expect("address")).collect();
        v.sort();
        v
    }

    #[test]
    fn a_service_port_by_number_or_name_reaches_cluster_ips_node_port_and_backends() {
        let service = pg_service();
        for port in [ServicePort::Number(5432), ServicePort::Name("postgres".into())] {
            let r = reached(Some(&service), &pg_slices(), service_port(Some(&service), &port));
            assert_eq!(r.addrs, addrs(&["10.96.0.10:5432", "[fd00:96::10]:5432"]));
            assert_eq!(r.backends, addrs(&["10.244.1.7:15432", "10.244.2.9:15432"]));
            assert_eq!(r.any_address, vec![30432]);
        }
        assert!(service_port(Some(&service), &ServicePort::Number(5433)).is_none());
        assert_eq!(reached(Some(&service), &pg_slices(), None), Reached::default(), "no such port: nothing known");
        // The Service goes (re-created): its front is released, its backends stay while the
        // slices say so.
        let last = service_port(Some(&service), &ServicePort::Number(5432));
        let r = reached(None, &pg_slices(), last);
        assert!(r.addrs.is_empty());
        assert_eq!(r.backends, addrs(&["10.244.1.7:15432", "10.244.2.9:15432"]));
        assert!(r.any_address.is_empty());
        assert_eq!(reached(None, &BTreeMap::new(), last), Reached::default());
    }

    #[test]
    fn a_headless_service_is_reached_at_its_backends_only() {
        let mut s = pg_service();
        let spec = s.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.type_ = Some("ClusterIP".into());
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
        let r = reached(Some(&s), &pg_slices(), service_port(Some(&s), &ServicePort::Number(5432)));
        assert!(r.addrs.is_empty());
        assert_eq!(r.backends, addrs(&["10.244.1.7:15432", "10.244.2.9:15432"]));
        assert!(r.any_address.is_empty());
    }

    #[test]
    fn changes_are_reported_as_endpoints_gained_and_lost() {
        let before =
            Reached { addrs: addrs(&["10.0.0.1:5432"]), any_address: vec![30432], backends: addrs(&["10.0.0.2:5432"]) };
        let after =
            Reached { addrs: vec![], any_address: vec![], backends: addrs(&["10.0.0.2:5432", "10.0.0.3:5432"]) };
        let (added, removed) = difference(&before, &after);
        assert_eq!(added, addrs(&["10.0.0.3:5432"]));
        assert_eq!(removed, addrs(&["10.0.0.1:5432", "[::]:30432"]));
    }
}
