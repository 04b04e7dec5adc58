//! The workloads file (`workloads:` in the configuration): labels for host workloads that no
//! `warden exec` started and no pod runs, by what the agent can tell of them — their cgroup
//! path, systemd system unit, user and executable.
//!
//! Each entry's selectors must all match (globs with `*` and `?`); every matching entry adds
//! its labels, an earlier entry winning a key over a later one, and a label `warden exec` gave
//! the workload winning over both. How far each selector can be trusted differs, and the
//! operator should combine them accordingly (docs/decisions.md, "The workloads file"):
//! - `user` is the kernel's uid at connect time: unforgeable by an unprivileged process;
//! - `unit` is a systemd *system* unit (a cgroup directly under `/system.slice`, which only
//!   root creates): trustworthy;
//! - `cgroup` is any cgroup path: a user with a delegated subtree names cgroups below it at will;
//! - `executable` is `/proc/PID/exe`: evidence, not proof (anyone may copy an interpreter).
//!
//! In a container (a Docker or Podman one on a plain host), root may take any uid and run any
//! executable: entries that select by `user` or `executable` do not apply there; `unit` and
//! `cgroup` (the runtime's own cgroups) still do.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Identity;
use crate::policy::pattern::Glob;

/// One entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEntry {
    #[serde(rename = "match")]
    pub selector: WorkloadMatch,
    pub labels: BTreeMap<String, String>,
}

/// What an entry selects; at least one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMatch {
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
    pub executable: Option<String>,
}

/// A compiled entry.
#[derive(Debug, Clone)]
struct Compiled {
    cgroup: Option<Glob>,
    unit: Option<Glob>,
    user: Option<Glob>,
    executable: Option<Glob>,
    labels: BTreeMap<String, String>,
}

/// The workloads file, compiled.
#[derive(Debug, Clone, Default)]
pub struct Workloads(Vec<Compiled>);

/// The systemd system unit a cgroup path belongs to (`/system.slice/NAME[/...]`).
pub fn system_unit(cgroup: &str) -> Option<&str> {
    let rest = cgroup.strip_prefix("/system.slice/")?;
    let unit = rest.split('/').next()?;
    (unit.ends_with(".service") || unit.ends_with(".scope")).then_some(unit)
}

impl Workloads {
    /// Compiles `entries`; the error names the entry at fault.
    pub fn compile(entries: &[WorkloadEntry]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let m = &entry.selector;
            if m.cgroup.is_none() && m.unit.is_none() && m.user.is_none() && m.executable.is_none() {
                return Err(format!("workloads[{i}].match: expected at least one of cgroup, unit, user, executable"));
            }
            if entry.labels.is_empty() {
                return Err(format!("workloads[{i}].labels: expected at least one label"));
            }
            for (k, v) in &entry.labels {
                super::validate_label(k, v).map_err(|e| format!("workloads[{i}].labels: {e}"))?;
            }
            out.push(Compiled {
                cgroup: m.cgroup.as_deref().map(Glob::new),
                unit: m.unit.as_deref().map(Glob::new),
                user: m.user.as_deref().map(Glob::new),
                executable: m.executable.as_deref().map(Glob::new),
                labels: entry.labels.clone(),
            });
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the labels of every entry that selects `identity` (labels it has win).
    pub fn label(&self, identity: &mut Identity) {
        let container = identity.container_id.is_some();
        for entry in &self.0 {
            if container && (entry.user.is_some() || entry.executable.is_some()) {
                continue;
            }
            let selected = |glob: &Option<Glob>, value: Option<&str>| {
                glob.as_ref().is_none_or(|g| value.is_some_and(|v| g.matches(v)))
            };
            let uid = identity.uid.to_string();
            let cgroup = identity.cgroup.as_deref();
            if selected(&entry.cgroup, cgroup)
                && selected(&entry.unit, cgroup.and_then(system_unit))
                && (selected(&entry.user, identity.user.as_deref()) || selected(&entry.user, Some(&uid)))
                && selected(&entry.executable, identity.exe.as_deref())
            {
                for (k, v) in &entry.labels {
                    identity.labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::CgroupId, flow::KernelFacts};

    fn workload(cgroup: &str, user: &str, uid: u32, exe: &str) -> Identity {
        let mut identity = Identity::from_facts(&KernelFacts {
            pid: 1,
            tid: 1,
            uid,
            gid: 0,
            comm: "python3".into(),
            cgroup_id: CgroupId(9),
            netns_cookie: 1,
        });
        identity.cgroup = Some(cgroup.into());
        identity.user = Some(user.into());
        identity.exe = Some(exe.into());
        identity
    }

    fn compile(yaml: &str) -> Result<Workloads, String> {
        let entries: Vec<WorkloadEntry> = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Workloads::compile(&entries)
    }

    #[test]
    fn every_selector_of_an_entry_must_match_and_earlier_entries_win() {
        let w = compile(
            "- match: {unit: 'etl-*.service', user: etl}\n  labels: {warden/identity: nightly-etl, warden/kind: job}\n\
             - match: {user: '10??'}\n  labels: {warden/kind: human, team: data}\n",
        )
        .expect("valid");
        let mut etl = workload("/system.slice/etl-nightly.service", "etl", 1001, "/usr/bin/python3");
        w.label(&mut etl);
        assert_eq!(etl.labels["warden/identity"], "nightly-etl");
        assert_eq!(etl.labels["warden/kind"], "job", "the first entry wins the key");
        assert_eq!(etl.labels["team"], "data", "the uid matches the second entry");

        // The same unit name under a user's own subtree is not a system unit.
        let mut spoof = workload(
            "/user.slice/user-1001.slice/user@1001.service/app.slice/etl-nightly.service",
            "etl",
            1001,
            "/usr/bin/python3",
        );
        w.label(&mut spoof);
        assert!(!spoof.labels.contains_key("warden/identity"), "{:?}", spoof.labels);

        // A container's root may be any uid: entries by user do not apply there.
        let mut container = workload("/system.slice/docker-abc.scope", "etl", 1001, "/usr/bin/python3");
        container.container_id = Some("a".repeat(64));
        w.label(&mut container);
        assert!(container.labels.is_empty(), "{:?}", container.labels);

        // A label the workload already has (from warden exec) stays.
        let mut labelled = workload("/system.slice/etl-nightly.service", "etl", 1001, "/usr/bin/python3");
        labelled.labels.insert("warden/kind".into(), "agent".into());
        w.label(&mut labelled);
        assert_eq!(labelled.labels["warden/kind"], "agent");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(compile("- match: {}\n  labels: {a: b}\n").expect_err("no selector").contains("workloads[0].match"));
        assert!(compile("- match: {user: x}\n  labels: {}\n").expect_err("no label").contains("workloads[0].labels"));
        assert!(
            compile("- match: {user: x}\n  labels: {'bad key!': b}\n").expect_err("bad label").contains("workloads[0]")
        );
        assert!(compile("- match: {usr: x}\n  labels: {a: b}\n").is_err(), "unknown field");
        assert_eq!(system_unit("/system.slice/postgresql@15-main.service"), Some("postgresql@15-main.service"));
        assert_eq!(system_unit("/system.slice/docker-abc.scope/init"), Some("docker-abc.scope"));
        assert_eq!(system_unit("/user.slice/x.service"), None);
    }
}
