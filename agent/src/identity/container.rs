//! Which container (and Kubernetes pod) a cgroup belongs to, read from its path — but only where
//! a container runtime itself creates cgroups.
//!
//! Anyone who may create cgroups (a user with a systemd-delegated subtree under
//! `user@UID.service`, a container with a writable cgroupfs) can name one
//! `cri-containerd-<id>.scope` inside a `kubepods-pod<uid>.slice`. So a container id is taken
//! only from a path that starts at the top of the hierarchy with one of the runtimes' own roots
//! (top-level cgroups are root's to create) and whose every segment from there down to the
//! container has exactly the shape that runtime gives it: nothing can be inserted or renamed.
//! Cgroups *below* a container's own (crun's `container` subgroup, cgroups a container made for
//! itself) still belong to that container, since only it can create them.
//!
//! The roots are a table ([`RuntimeRoots`]): an anchor path plus the [`Layout`] the runtime uses
//! below it. The built-in table covers kubelet (systemd and cgroupfs drivers), Docker, Podman and
//! kind; an operator can push more.

use std::sync::LazyLock;

/// The length of a container id (a SHA-256 in hex) for every runtime here.
pub const CONTAINER_ID_LEN: usize = 64;

/// A container found in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime that made the container: `containerd`, `cri-o`, `docker`, `podman`, or `cri`
    /// when the path does not say (kubelet's cgroupfs driver names containerd's and
    /// cri-dockerd's containers by bare id).
    pub runtime: String,
    /// The full 64-hex container id.
    pub id: String,
    /// The Kubernetes pod UID (with dashes) when the container is a pod's.
    pub pod_uid: Option<String>,
    /// The name of the [`RuntimeRoot`] the path matched, e.g. `kind-docker-systemd`: says how far
    /// the attribution can be trusted (a kind pod sits inside a Docker container's subtree).
    pub root: String,
}

/// Why a [`RuntimeRoot`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("runtime root {name:?}: anchor {anchor:?} must be an absolute path without empty, `.` or `..` segments")]
    Anchor { name: String, anchor: String },
    #[error("runtime root {name:?}: segment {segment:?} may hold `{{id}}` once, and no other braces")]
    Placeholder { name: String, segment: String },
    #[error("runtime root {name:?}: the kubelet systemd layout needs an anchor ending in a plain `<prefix>.slice`")]
    SystemdAnchor { name: String },
    #[error("runtime root {name:?}: a scope layout needs a runtime name, and affixes without `/`")]
    Scope { name: String },
}

/// One segment of an anchor: literal, or a container id between a fixed prefix and suffix
/// (written `{id}` in the anchor, e.g. kind's node container `docker-{id}.scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Exact(String),
    Id { prefix: String, suffix: String },
}

impl Segment {
    fn matches(&self, s: &str) -> bool {
        match self {
            Segment::Exact(e) => e == s,
            Segment::Id { prefix, suffix } => s
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(suffix.as_str()))
                .is_some_and(is_container_id),
        }
    }
}

/// How a runtime lays out its containers' cgroups below its anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One cgroup per container directly below the anchor, named `<prefix><id><suffix>`:
    /// Docker's `docker-<id>.scope` (systemd driver) or `<id>` (cgroupfs), Podman's
    /// `libpod-<id>.scope`.
    Scope { runtime: String, prefix: String, suffix: String },
    /// kubelet's systemd driver, the anchor being its top slice `<P>.slice` (`kubepods.slice`;
    /// `kubelet-kubepods.slice` under kind's `cgroupRoot: /kubelet`):
    /// `<P>-<qos>.slice/<P>-<qos>-pod<uid>.slice/<container>` for the besteffort and burstable
    /// classes, `<P>-pod<uid>.slice/<container>` for guaranteed pods. The UID has `_` for `-`
    /// (systemd reserves `-` for nesting); the container is `cri-containerd-<id>.scope`,
    /// `crio-<id>.scope` or `docker-<id>.scope` (cri-dockerd).
    KubeletSystemd,
    /// kubelet's cgroupfs driver, the anchor being its `kubepods`:
    /// `<qos>/pod<uid>/<container>` or `pod<uid>/<container>` (guaranteed), the container
    /// being `<id>` (containerd, cri-dockerd) or `crio-<id>` (CRI-O).
    KubeletCgroupfs,
}

/// Where a container runtime creates its containers' cgroups: a path from the top of the
/// hierarchy, and the layout below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRoot {
    name: String,
    anchor: Vec<Segment>,
    layout: Layout,
    /// `<P>` of a [`Layout::KubeletSystemd`] root, from its anchor.
    slice_prefix: String,
}

impl RuntimeRoot {
    /// A root named `name` (for logs and [`ContainerRef::root`]) at `anchor`, an absolute cgroup
    /// path in which a segment may hold `{id}` for a 64-hex container id (e.g.
    /// `/system.slice/docker-{id}.scope/kubelet.slice/kubelet-kubepods.slice`).
    pub fn new(name: &str, anchor: &str, layout: Layout) -> Result<Self, RootError> {
        let bad_anchor = || RootError::Anchor { name: name.to_string(), anchor: anchor.to_string() };
        let inner = anchor.strip_prefix('/').ok_or_else(bad_anchor)?;
        let mut segments = Vec::new();
        for seg in inner.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad_anchor());
            }
            let bad_placeholder = || RootError::Placeholder { name: name.to_string(), segment: seg.to_string() };
            segments.push(match seg.split_once("{id}") {
                Some((prefix, suffix)) => {
                    if [prefix, suffix].iter().any(|p| p.contains(['{', '}'])) {
                        return Err(bad_placeholder());
                    }
                    Segment::Id { prefix: prefix.to_string(), suffix: suffix.to_string() }
                }
                None if seg.contains(['{', '}']) => return Err(bad_placeholder()),
                None => Segment::Exact(seg.to_string()),
            });
        }
        let slice_prefix = match (&layout, segments.last()) {
            (Layout::KubeletSystemd, Some(Segment::Exact(last))) => last
                .strip_suffix(".slice")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| RootError::SystemdAnchor { name: name.to_string() })?
                .to_string(),
            (Layout::KubeletSystemd, _) => return Err(RootError::SystemdAnchor { name: name.to_string() }),
            (Layout::Scope { runtime, prefix, suffix }, _) => {
                // Affixes may be empty (Docker's cgroupfs driver names a container by bare id):
                // the id itself must still be exactly 64 hex digits. They may not hold the
                // path separator, which no segment contains.
                if runtime.is_empty() || prefix.contains('/') || suffix.contains('/') {
                    return Err(RootError::Scope { name: name.to_string() });
                }
                String::new()
            }
            (Layout::KubeletCgroupfs, _) => String::new(),
        };
        Ok(Self { name: name.to_string(), anchor: segments, layout, slice_prefix })
    }

    /// This root's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container in `segments` (a path split at `/`, the first being a child of the
    /// hierarchy's root) and the index of its segment, when the path lies under this root.
    fn match_segments(&self, segments: &[&str]) -> Option<(usize, ContainerRef)> {
        if segments.len() <= self.anchor.len() || !self.anchor.iter().zip(segments).all(|(a, s)| a.matches(s)) {
            return None;
        }
        let base = self.anchor.len();
        let rest = &segments[base..];
        let (offset, runtime, id, pod_uid) = match &self.layout {
            Layout::Scope { runtime, prefix, suffix } => {
                let id = rest[0].strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                (0, runtime.as_str(), id, None)
            }
            Layout::KubeletSystemd => {
                let p = self.slice_prefix.as_str();
                let (pod_at, uid) = match systemd_pod(p, rest[0]) {
                    Some(uid) => (0, uid),
                    None => {
                        let qos = rest[0].strip_prefix(p)?.strip_prefix('-')?.strip_suffix(".slice")?;
                        if !QOS_CLASSES.contains(&qos) {
                            return None;
                        }
                        (1, systemd_pod(&format!("{p}-{qos}"), rest.get(1)?)?)
                    }
                };
                let (runtime, id) = systemd_container(rest.get(pod_at + 1)?)?;
                (pod_at + 1, runtime, id, Some(uid))
            }
            Layout::KubeletCgroupfs => {
                let pod_at = usize::from(QOS_CLASSES.contains(&rest[0]));
                let uid = pod_uid(rest.get(pod_at)?.strip_prefix("pod")?, '-')?;
                let leaf = rest.get(pod_at + 1)?;
                let (runtime, id) = match leaf.strip_prefix("crio-") {
                    Some(id) => ("cri-o", id),
                    None => ("cri", *leaf),
                };
                (pod_at + 1, runtime, id, Some(uid))
            }
        };
        is_container_id(id).then(|| {
            let found =
                ContainerRef { runtime: runtime.to_string(), id: id.to_string(), pod_uid, root: self.name.clone() };
            (base + offset, found)
        })
    }
}

/// kubelet's QoS classes that get a cgroup level of their own (guaranteed pods sit directly in
/// the top slice).
const QOS_CLASSES: [&str; 2] = ["besteffort", "burstable"];

/// The pod UID of `<parent>-pod<uid>.slice`.
fn systemd_pod(parent: &str, segment: &str) -> Option<String> {
    pod_uid(segment.strip_prefix(parent)?.strip_prefix("-pod")?.strip_suffix(".slice")?, '_')
}

/// The runtime and id of a container scope under a kubelet systemd pod slice.
fn systemd_container(segment: &str) -> Option<(&'static str, &str)> {
    let id = segment.strip_suffix(".scope")?;
    [("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker")]
        .into_iter()
        .find_map(|(prefix, runtime)| id.strip_prefix(prefix).map(|id| (runtime, id)))
}

/// A pod UID as kubelet writes it in a cgroup name: a UUID (8-4-4-4-12 lowercase hex groups
/// joined by `sep`), or the 32-hex config hash kubelet gives static pods. Returned with dashes.
fn pod_uid(s: &str, sep: char) -> Option<String> {
    let hex = |g: &str| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if s.len() == 32 && hex(s) {
        return Some(s.to_string());
    }
    let groups: Vec<&str> = s.split(sep).collect();
    let lengths_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    (lengths_ok && groups.iter().all(|g| hex(g))).then(|| groups.join("-"))
}

/// 64 lowercase hex digits, as every runtime here prints a container id.
fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The table of runtime roots a cgroup path is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRoots(Vec<RuntimeRoot>);

/// The built-in roots: (name, anchor, layout). Anchors are from the top of the cgroup v2
/// hierarchy as the agent sees it.
fn builtin_table() -> Vec<(&'static str, &'static str, Layout)> {
    let scope = |runtime: &str, prefix: &str, suffix: &str| Layout::Scope {
        runtime: runtime.to_string(),
        prefix: prefix.to_string(),
        suffix: suffix.to_string(),
    };
    vec![
        // kubelet on the host (kubeadm's default is the systemd driver; k3s uses cgroupfs).
        ("kubelet-systemd", "/kubepods.slice", Layout::KubeletSystemd),
        ("kubelet-cgroupfs", "/kubepods", Layout::KubeletCgroupfs),
        // Docker: systemd driver (scopes in system.slice) and cgroupfs driver.
        ("docker-systemd", "/system.slice", scope("docker", "docker-", ".scope")),
        ("docker-cgroupfs", "/docker", scope("docker", "", "")),
        // Podman run by root with the systemd driver (rootless Podman lives in the user's own
        // subtree, where the user names the cgroups: not attributed).
        ("podman-systemd", "/machine.slice", scope("podman", "libpod-", ".scope")),
        // kind: kubelet runs with `cgroupRoot: /kubelet` inside a Docker container (the node).
        // Seen from inside the node's cgroup namespace ...
        ("kind-node-systemd", "/kubelet.slice/kubelet-kubepods.slice", Layout::KubeletSystemd),
        ("kind-node-cgroupfs", "/kubelet/kubepods", Layout::KubeletCgroupfs),
        // ... and from the host, below the node container's cgroup.
        (
            "kind-docker-systemd",
            "/system.slice/docker-{id}.scope/kubelet.slice/kubelet-kubepods.slice",
            Layout::KubeletSystemd,
        ),
        ("kind-docker-cgroupfs", "/docker/{id}/kubelet.slice/kubelet-kubepods.slice", Layout::KubeletSystemd),
        ("kind-docker-cgroupfs-kubepods", "/docker/{id}/kubepods", Layout::KubeletCgroupfs),
        ("kind-docker-cgroupfs-kubelet", "/docker/{id}/kubelet/kubepods", Layout::KubeletCgroupfs),
    ]
}

impl RuntimeRoots {
    /// The built-in table (kubelet, Docker, Podman, kind).
    pub fn builtin() -> Self {
        Self(
            builtin_table()
                .into_iter()
                .map(|(name, anchor, layout)| {
                    RuntimeRoot::new(name, anchor, layout).expect("built-in runtime roots are valid")
                })
                .collect(),
        )
    }

    /// No roots at all: no path names a container.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Adds a root (an operator's runtime, or a non-default parent such as Docker's
    /// `--cgroup-parent`).
    pub fn push(&mut self, root: RuntimeRoot) {
        self.0.push(root);
    }

    /// The roots, in table order.
    pub fn roots(&self) -> &[RuntimeRoot] {
        &self.0
    }

    /// The container a cgroup path (as the kernel prints it: absolute within the hierarchy)
    /// belongs to, if the path lies under one of the roots. When several roots match (a kind
    /// pod is also below its node's Docker scope) the deepest container wins.
    pub fn parse(&self, path: &str) -> Option<ContainerRef> {
        let inner = path.strip_prefix('/')?;
        let segments: Vec<&str> = inner.split('/').collect();
        // Not a path the kernel prints; refuse rather than guess where it is anchored.
        if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            return None;
        }
        let mut best: Option<(usize, ContainerRef)> = None;
        for root in &self.0 {
            if let Some((depth, found)) = root.match_segments(&segments)
                && best.as_ref().is_none_or(|(d, _)| depth > *d)
            {
                best = Some((depth, found));
            }
        }
        best.map(|(_, found)| found)
    }
}

impl Default for RuntimeRoots {
    fn default() -> Self {
        Self::builtin()
    }
}

/// [`RuntimeRoots::parse`] with the built-in table.
pub fn parse_container(path: &str) -> Option<ContainerRef> {
    static BUILTIN: LazyLock<RuntimeRoots> = LazyLock::new(RuntimeRoots::builtin);
    BUILTIN.parse(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";
    const NODE: &str = "0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c";
    const UID: &str = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6";

    /// Real path shapes: (path, runtime, pod UID, root).
    fn fixtures() -> Vec<(String, &'static str, Option<&'static str>, &'static str)> {
        vec![
            // containerd, kubelet systemd driver (kubeadm default), each QoS class
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kubelet-systemd",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kubelet-systemd",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                "containerd",
                Some(UID),
                "kubelet-systemd",
            ),
            // CRI-O, systemd driver (OpenShift), guaranteed and burstable
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                "cri-o",
                Some(UID),
                "kubelet-systemd",
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"),
                "cri-o",
                Some(UID),
                "kubelet-systemd",
            ),
            // cri-dockerd, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
                ),
                "docker",
                Some(UID),
                "kubelet-systemd",
            ),
            // containerd (k3s), cgroupfs driver, each QoS class
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), "cri", Some(UID), "kubelet-cgroupfs"),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), "cri", Some(UID), "kubelet-cgroupfs"),
            (format!("/kubepods/pod{UID}/{ID}"), "cri", Some(UID), "kubelet-cgroupfs"),
            // CRI-O, cgroupfs driver
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), "cri-o", Some(UID), "kubelet-cgroupfs"),
            // static pod: the UID is kubelet's 32-hex config hash
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b3f7c1e2d4a5b6c7d8e9f0a1b2c3d4e.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some("6b3f7c1e2d4a5b6c7d8e9f0a1b2c3d4e"),
                "kubelet-systemd",
            ),
            // Docker, systemd and cgroupfs drivers
            (format!("/system.slice/docker-{ID}.scope"), "docker", None, "docker-systemd"),
            (format!("/docker/{ID}"), "docker", None, "docker-cgroupfs"),
            // Podman (crun puts the processes in a `container` subgroup of the scope)
            (format!("/machine.slice/libpod-{ID}.scope"), "podman", None, "podman-systemd"),
            (format!("/machine.slice/libpod-{ID}.scope/container"), "podman", None, "podman-systemd"),
            // kind, seen from the host: Docker systemd driver, kubelet systemd driver
            (
                format!(
                    "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kind-docker-systemd",
            ),
            (
                format!(
                    "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kind-docker-systemd",
            ),
            // kind under Docker's cgroupfs driver
            (
                format!(
                    "/docker/{NODE}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kind-docker-cgroupfs",
            ),
            (
                format!("/docker/{NODE}/kubepods/besteffort/pod{UID}/{ID}"),
                "cri",
                Some(UID),
                "kind-docker-cgroupfs-kubepods",
            ),
            (
                format!("/docker/{NODE}/kubelet/kubepods/burstable/pod{UID}/{ID}"),
                "cri",
                Some(UID),
                "kind-docker-cgroupfs-kubelet",
            ),
            // kind, seen from inside the node's cgroup namespace
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
                Some(UID),
                "kind-node-systemd",
            ),
            (format!("/kubelet/kubepods/pod{UID}/{ID}"), "cri", Some(UID), "kind-node-cgroupfs"),
        ]
    }

    #[test]
    fn real_path_shapes_name_their_container() {
        for (path, runtime, pod, root) in fixtures() {
            let c = parse_container(&path).unwrap_or_else(|| panic!("no container in {path}"));
            assert_eq!(
                (c.runtime.as_str(), c.id.as_str(), c.pod_uid.as_deref(), c.root.as_str()),
                (runtime, ID, pod, root),
                "{path}"
            );
        }
    }

    #[test]
    fn cgroups_below_a_container_are_that_containers() {
        for (path, runtime, pod, _) in fixtures() {
            let nested = format!("{path}/app/worker");
            let c = parse_container(&nested).unwrap_or_else(|| panic!("no container in {nested}"));
            assert_eq!((c.runtime.as_str(), c.id.as_str(), c.pod_uid.as_deref()), (runtime, ID, pod), "{nested}");
        }
        // The kind node's own services belong to the node container.
        let c = parse_container(&format!("/system.slice/docker-{NODE}.scope/system.slice/containerd.service")).unwrap();
        assert_eq!((c.id.as_str(), c.pod_uid), (NODE, None));
    }

    #[test]
    fn runtime_shapes_elsewhere_are_not_containers() {
        let user = "/user.slice/user-1000.slice/user@1000.service/app.slice";
        for (path, ..) in fixtures() {
            for moved in [
                format!("{user}{path}"),
                format!("/warden.workloads{path}"),
                format!("/system.slice/evil.service{path}"),
            ] {
                assert_eq!(parse_container(&moved), None, "{moved}");
            }
        }
    }

    #[test]
    fn inserted_segments_are_refused() {
        let cases = [
            format!("/kubepods.slice/extra/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/extra/cri-containerd-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/extra/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/extra/pod{UID}/{ID}"),
            format!("/kubepods/besteffort/pod{UID}/extra/{ID}"),
            format!("/kubepods/extra/besteffort/pod{UID}/{ID}"),
            format!("/system.slice/extra/docker-{ID}.scope"),
            format!("/docker/extra/{ID}"),
            format!("/machine.slice/extra/libpod-{ID}.scope"),
            format!(
                "/kubelet.slice/extra/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            // QoS slice from another parent, or a made-up class
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-gold.slice/kubepods-gold-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/gold/pod{UID}/{ID}"),
            // the kind prefix in a plain kubelet root
            format!("/kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            // conmon, CRI-O's and Podman's monitor, is not the container
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            // a runtime's prefix under the wrong root
            format!("/system.slice/libpod-{ID}.scope"),
            format!("/machine.slice/docker-{ID}.scope"),
        ];
        for path in cases {
            assert_eq!(parse_container(&path), None, "{path}");
        }
        // Inside a kind node, an inserted segment falls back to the node container (whose
        // subtree it is), never to the pod's container.
        let kind = format!(
            "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/extra/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let c = parse_container(&kind).expect("the node container");
        assert_eq!((c.id.as_str(), c.pod_uid, c.root.as_str()), (NODE, None, "docker-systemd"));
    }

    #[test]
    fn ids_and_uids_must_have_their_exact_shape() {
        let short = &ID[..63];
        let long = format!("{ID}0");
        let upper = ID.to_uppercase();
        let not_hex = format!("{}g", &ID[..63]);
        for id in [short, long.as_str(), upper.as_str(), not_hex.as_str(), ""] {
            for path in [
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{id}.scope"),
                format!("/kubepods/pod{UID}/{id}"),
                format!("/kubepods/pod{UID}/crio-{id}"),
                format!("/system.slice/docker-{id}.scope"),
                format!("/docker/{id}"),
                format!("/machine.slice/libpod-{id}.scope"),
            ] {
                assert_eq!(parse_container(&path), None, "{path}");
            }
            // A malformed node id is no kind root (and no Docker container either).
            let path = format!(
                "/system.slice/docker-{id}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
            );
            assert_eq!(parse_container(&path), None, "{path}");
        }
        for uid in [
            "not-a-uuid",
            "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f",   // one digit short
            "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f67", // one digit long
            "0d1e2f3a4_b5c_6d7e_8f90_a1b2c3d4e5f6",  // groups misplaced
            "0D1E2F3A_4B5C_6D7E_8F90_A1B2C3D4E5F6",  // upper case
            "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6",  // dashes inside a systemd slice name
            "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5gz",  // not hex
            "6b3f7c1e2d4a5b6c7d8e9f0a1b2c3d4",       // 31-hex hash
        ] {
            let path = format!("/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope");
            assert_eq!(parse_container(&path), None, "{path}");
        }
        for uid in ["not-a-uuid", "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6", "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f"] {
            let path = format!("/kubepods/besteffort/pod{uid}/{ID}");
            assert_eq!(parse_container(&path), None, "{path}");
        }
    }

    #[test]
    fn host_paths_have_no_container() {
        for path in [
            "/",
            "",
            "relative/path",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/sshd.service",
            "/warden.workloads/etl-1234",
            "/kubepods.slice",
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
            &format!("/kubepods/besteffort/pod{UID}"),
            &format!("/system.slice//docker-{ID}.scope"),
            &format!("/../system.slice/docker-{ID}.scope"),
        ] {
            assert_eq!(parse_container(path), None, "{path}");
        }
    }

    #[test]
    fn operators_can_add_roots_and_bad_ones_are_refused() {
        let mut roots = RuntimeRoots::builtin();
        let path = format!("/custom.slice/containerd-{ID}.scope");
        assert_eq!(roots.parse(&path), None);
        let layout =
            Layout::Scope { runtime: "containerd".into(), prefix: "containerd-".into(), suffix: ".scope".into() };
        roots.push(RuntimeRoot::new("nerdctl", "/custom.slice", layout.clone()).expect("valid root"));
        let c = roots.parse(&path).expect("the new root applies");
        assert_eq!((c.runtime.as_str(), c.id.as_str(), c.root.as_str()), ("containerd", ID, "nerdctl"));
        assert_eq!(RuntimeRoots::empty().parse(&format!("/docker/{ID}")), None);

        for anchor in ["relative", "/a//b", "/a/../b", "/a/{id}{id}", "/a/{x}", "/"] {
            assert!(RuntimeRoot::new("bad", anchor, layout.clone()).is_err(), "{anchor}");
        }
        assert!(matches!(
            RuntimeRoot::new("bad", "/kubepods", Layout::KubeletSystemd),
            Err(RootError::SystemdAnchor { .. })
        ));
        let no_runtime = Layout::Scope { runtime: String::new(), prefix: "x-".into(), suffix: String::new() };
        assert!(matches!(RuntimeRoot::new("bad", "/x.slice", no_runtime), Err(RootError::Scope { .. })));
    }
}
