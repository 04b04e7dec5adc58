//! A Kubernetes API server for tests, on 127.0.0.1 over plain HTTP/1.1: the real wire format
//! for what the agent reads (list and watch with resourceVersion, label and field selectors,
//! watch bookmarks, a 410 Gone that forces a relist, get of a single object, 404 as a Status),
//! over objects the test puts and deletes. It stands in for the one real part that cannot run
//! here (no cluster); the agent's client (kube-rs) is real.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A resource type the server knows: its API path prefix, plural, kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    Services,
    EndpointSlices,
    ReplicaSets,
    Jobs,
}

impl Resource {
    const ALL: [Resource; 5] =
        [Resource::Pods, Resource::Services, Resource::EndpointSlices, Resource::ReplicaSets, Resource::Jobs];

    fn group_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Services => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::ReplicaSets => "apps/v1",
            Resource::Jobs => "batch/v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::ReplicaSets => "replicasets",
            Resource::Jobs => "jobs",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::ReplicaSets => "ReplicaSet",
            Resource::Jobs => "Job",
        }
    }
}

struct WatchEvent {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    events: Vec<WatchEvent>,
    /// Watches from a resourceVersion below this get 410 Gone (the history was compacted).
    floor: u64,
    /// Moves to end every open watch.
    epoch: u64,
    /// Request lines served ("GET /api/v1/pods?..."), and the Authorization headers seen.
    requests: Vec<String>,
    authorizations: Vec<String>,
}

/// The server. Dropped: it stops and closes every watch.
pub struct FakeKubeApi {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often an open watch gets a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

impl FakeKubeApi {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// A server at `addr` (e.g. the address of one that was dropped: an API server back up).
    pub fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).expect("bind the fake API server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new((Mutex::new(State { rv: 100, ..State::default() }), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (shared, stop) = (shared.clone(), stop.clone());
                            std::thread::spawn(move || serve(stream, &shared, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self { addr, shared, stop, thread: Some(thread) }
    }

    /// A kubeconfig that points at this server with a bearer token.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://{}'}}\nusers:\n- name: warden\n  user: {{token: {token}}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: warden}}\ncurrent-context: fake\n",
            self.addr
        )
    }

    fn change(&self, resource: Resource, kind: &'static str, mut object: Value) {
        let (lock, cv) = &*self.shared;
        let mut state = lock.lock().expect("state");
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().expect("a name").to_string();
        if kind == "DELETED" {
            state.objects.remove(&(resource, ns, name));
        } else {
            state.objects.insert((resource, ns, name), object.clone());
        }
        state.events.push(WatchEvent { rv, resource, kind, object });
        cv.notify_all();
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn put(&self, resource: Resource, mut object: Value) {
        object["kind"] = json!(resource.kind());
        object["apiVersion"] = json!(resource.group_version());
        let key = (
            resource,
            object["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            object["metadata"]["name"].as_str().expect("a name").to_string(),
        );
        let exists = self.shared.0.lock().expect("state").objects.contains_key(&key);
        self.change(resource, if exists { "MODIFIED" } else { "ADDED" }, object);
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let key = (resource, namespace.to_string(), name.to_string());
        let object = self.shared.0.lock().expect("state").objects.get(&key).cloned().expect("the object exists");
        self.change(resource, "DELETED", object);
    }

    /// Compacts the history and ends every watch: a watcher that resumes from its last
    /// resourceVersion gets 410 Gone and must list again.
    pub fn expire(&self) {
        let (lock, cv) = &*self.shared;
        let mut state = lock.lock().expect("state");
        state.floor = state.rv + 1;
        state.epoch += 1;
        cv.notify_all();
    }

    /// The request lines served so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.0.lock().expect("state").requests.clone()
    }

    /// The Authorization headers seen so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.0.lock().expect("state").authorizations.clone()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a request path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    query: BTreeMap<String, String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(path: &str) -> Option<Target> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group_version, rest) = match *segments.first()? {
        "api" => (segments.get(1)?.to_string(), &segments[2..]),
        "apis" => (format!("{}/{}", segments.get(1)?, segments.get(2)?), &segments[3..]),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = Resource::ALL.into_iter().find(|r| r.plural() == plural && r.group_version() == group_version)?;
    Some(Target { resource, namespace, name, query })
}

/// Whether `object` passes the request's namespace and selectors (equality terms only).
fn selected(target: &Target, resource: Resource, object: &Value) -> bool {
    if resource != target.resource {
        return false;
    }
    if let Some(ns) = &target.namespace
        && object["metadata"]["namespace"] != ns.as_str()
    {
        return false;
    }
    let terms = |key: &str| -> Vec<(String, String)> {
        target
            .query
            .get(key)
            .map(|s| {
                s.split(',')
                    .filter(|t| !t.is_empty())
                    .filter_map(|t| t.split_once("==").or_else(|| t.split_once('=')))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let fields_ok = terms("fieldSelector").iter().all(|(path, want)| {
        let mut v = object;
        for part in path.split('.') {
            v = &v[part];
        }
        v.as_str() == Some(want.as_str())
    });
    let labels_ok =
        terms("labelSelector").iter().all(|(k, want)| object["metadata"]["labels"][k].as_str() == Some(want.as_str()));
    fields_ok && labels_ok
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

fn chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn serve(stream: TcpStream, shared: &Arc<(Mutex<State>, Condvar)>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        let mut authorization = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request_line = request_line.trim_end().to_string();
        {
            let mut state = shared.0.lock().expect("state");
            state.requests.push(request_line.clone());
            state.authorizations.extend(authorization);
        }
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let Some(target) = parse_target(path).filter(|_| method == "GET") else {
            if respond(&mut writer, 404, &status(404, "NotFound", "the server could not find the requested resource"))
                .is_err()
            {
                return;
            }
            continue;
        };
        let result = if target.query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            // A watch ends the connection (as when the server's timeout ends it).
            let _ = watch(&mut writer, &target, shared, stop);
            return;
        } else if let Some(name) = &target.name {
            let state = shared.0.lock().expect("state");
            let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.clone());
            match state.objects.get(&key) {
                Some(object) => respond(&mut writer, 200, object),
                None => respond(
                    &mut writer,
                    404,
                    &status(404, "NotFound", &format!("{} \"{name}\" not found", target.resource.plural())),
                ),
            }
        } else {
            let state = shared.0.lock().expect("state");
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((r, _, _), o)| selected(&target, *r, o))
                .map(|(_, o)| o.clone())
                .collect();
            let list = json!({
                "kind": format!("{}List", target.resource.kind()),
                "apiVersion": target.resource.group_version(),
                "metadata": {"resourceVersion": state.rv.to_string()},
                "items": items,
            });
            respond(&mut writer, 200, &list)
        };
        if result.is_err() {
            return;
        }
    }
}

fn watch(
    stream: &mut TcpStream,
    target: &Target,
    shared: &Arc<(Mutex<State>, Condvar)>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    let from: u64 = target.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = target.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(target.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300));
    let ends = Instant::now() + timeout;
    let (lock, cv) = &**shared;
    let mut state = lock.lock().expect("state");
    if from != 0 && from < state.floor {
        let gone = json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({})", state.floor))});
        drop(state);
        chunk(stream, &gone)?;
        return write!(stream, "0\r\n\r\n");
    }
    let epoch = state.epoch;
    let mut sent = if from == 0 { state.rv } else { from };
    let mut last_bookmark = Instant::now();
    loop {
        let due: Vec<Value> = state
            .events
            .iter()
            .filter(|e| e.rv > sent && selected(target, e.resource, &e.object))
            .map(|e| json!({"type": e.kind, "object": e.object}))
            .collect();
        let newest = state.rv;
        let (ended, epoch_now) = (stop.load(Ordering::Relaxed) || Instant::now() >= ends, state.epoch);
        drop(state);
        for event in &due {
            chunk(stream, event)?;
        }
        sent = newest;
        if ended || epoch_now != epoch {
            return write!(stream, "0\r\n\r\n");
        }
        if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": target.resource.kind(),
                "apiVersion": target.resource.group_version(),
                "metadata": {"resourceVersion": sent.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
            }});
            chunk(stream, &bookmark)?;
            last_bookmark = Instant::now();
        }
        state = lock.lock().expect("state");
        if state.rv == sent && state.epoch == epoch {
            state = cv.wait_timeout(state, Duration::from_millis(200)).expect("state").0;
        }
    }
}

/// A pod as the API server returns it, on `node`, owned by `owner` (kind, name) if any.
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str, labels: Value, owner: Option<(&str, &str)>) -> Value {
    let owners = match owner {
        Some((kind, owner_name)) => json!([{
            "apiVersion": if kind == "ReplicaSet" { "apps/v1" } else if kind == "Job" { "batch/v1" } else { "apps/v1" },
            "kind": kind, "name": owner_name, "uid": format!("{owner_name}-uid"),
            "controller": true, "blockOwnerDeletion": true
        }]),
        None => json!([]),
    };
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid, "labels": labels,
            "creationTimestamp": "2026-11-29T00:00:00Z", "ownerReferences": owners
        },
        "spec": {
            "nodeName": node, "serviceAccountName": format!("{name}-sa"),
            "containers": [{"name": "main", "image": "registry.example/etl:1"}]
        },
        "status": {"phase": "Running", "podIP": "10.244.0.5"}
    })
}

/// A pod's container cgroup at a kubelet path shape, in the host's cgroup v2 hierarchy; removed
/// (deepest first, with the ancestors it had to create) on drop.
pub struct PodCgroup {
    created: Vec<PathBuf>,
    pub leaf: PathBuf,
}

impl PodCgroup {
    /// The cgroup at `path` (from the hierarchy's root).
    pub fn at(path: &str) -> Self {
        let mut created = Vec::new();
        // The cgroup v2 hierarchy, wherever it is mounted (`/sys/fs/cgroup/unified` on hybrid hosts).
        let mut dir = cgroup_v2_root();
        for part in path.trim_start_matches('/').split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        Self { created, leaf: dir }
    }

    /// kubelet's systemd driver, containerd, a besteffort pod:
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
    pub fn systemd(pod_uid: &str, container_id: &str) -> Self {
        let uid = pod_uid.replace('-', "_");
        Self::at(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{container_id}.scope"
        ))
    }

    /// `argv` run in this cgroup and in network namespace `netns` (the pod's network).
    pub fn command(&self, netns: &str, argv: &[String]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.leaf.join("cgroup.procs"))
            .args(["ip", "netns", "exec", netns])
            .args(argv);
        c
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v2 mount with the shortest path (the hierarchy's root as this process sees it).
pub fn cgroup_v2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}
