//! The kernel's governed-endpoint table has one owner: every source of endpoints (database host
//! names in DNS, Kubernetes Services) writes its part here, and the whole table is brought in
//! line under one lock, so two sources can never undo each other's update.
//!
//! What Service-named databases are reached at is also kept in `services.json` beside the
//! audit ring (persistent, root's): a restarted agent governs them there from its first moment,
//! before the API answers (a Service has no address in the configuration, so without it a
//! restart would leave them ungoverned until the watch lists). Each entry names the Service it
//! was for; one that no longer matches the database's address is ignored.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, DatabaseAddress},
    ebpf::{GovernedDiff, Kernel, KernelError, Lost, Reached, governed_table},
};

/// A Service-named database's endpoints, as kept in the state file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    /// The database's address when they were saved (`service NAMESPACE/NAME:PORT`).
    service: String,
    /// The Service port as last seen (its name, and number): backends are matched by it.
    port: Option<SavedPort>,
    addrs: Vec<SocketAddr>,
    any_address: Vec<u16>,
    backends: Vec<SocketAddr>,
}

/// A Service's port as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPort {
    pub name: Option<String>,
    pub port: i32,
}

/// The state file is read at most this large (it holds a few endpoints per database).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// The state file of Service endpoints: beside the audit ring (it survives a reboot, when the
/// API is likeliest to be unreachable as the node comes up).
pub fn state_file(config: &Config) -> PathBuf {
    config.audit.path.parent().unwrap_or(std::path::Path::new("/var/lib/warden")).join("services.json")
}

fn read_saved(config: &Config) -> BTreeMap<String, Saved> {
    let file = state_file(config);
    let text = match std::fs::metadata(&file) {
        Ok(m) if m.len() <= MAX_STATE_BYTES => std::fs::read_to_string(&file).unwrap_or_default(),
        Ok(_) => {
            tracing::warn!(file = %file.display(), "saved Service endpoints too large; ignored");
            return BTreeMap::new();
        }
        Err(_) => return BTreeMap::new(),
    };
    serde_json::from_str(&text).unwrap_or_else(|err| {
        tracing::warn!(file = %file.display(), error = %err, "saved Service endpoints unreadable; ignored");
        BTreeMap::new()
    })
}

/// Service-named databases: index, name, and address as written in the state file.
fn service_databases(config: &Config) -> impl Iterator<Item = (usize, &str, String)> {
    config
        .databases
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.address, DatabaseAddress::Service { .. }))
        .map(|(i, d)| (i, d.name.as_str(), d.address.to_string()))
}

/// What the last agent knew of the Service-named databases (the entries saved for the same
/// database name and Service), to govern them before the API answers; and their ports.
pub fn saved_services(config: &Config) -> (BTreeMap<usize, Reached>, BTreeMap<usize, SavedPort>) {
    let saved = read_saved(config);
    let (mut reached, mut ports) = (BTreeMap::new(), BTreeMap::new());
    for (i, name, service) in service_databases(config) {
        let Some(s) = saved.get(name).filter(|s| s.service == service) else { continue };
        reached.insert(
            i,
            Reached { addrs: s.addrs.clone(), any_address: s.any_address.clone(), backends: s.backends.clone() },
        );
        if let Some(port) = &s.port {
            ports.insert(i, port.clone());
        }
    }
    (reached, ports)
}

/// The governed endpoints, as the configuration and its followers say now.
pub struct Governed {
    config: Arc<Config>,
    kernel: Arc<Kernel>,
    /// Where host-named and Service-named databases are reached now, by database index.
    reached: std::sync::Mutex<BTreeMap<usize, Reached>>,
    /// Databases whose endpoints did not all fit in the table, as last reported.
    overflow: std::sync::Mutex<Lost>,
    /// Each Service's port as last seen (saved with its endpoints).
    ports: std::sync::Mutex<BTreeMap<usize, SavedPort>>,
}

impl Governed {
    /// The table of `config`'s databases, Service-named ones at `reached` with `ports` (the
    /// saved state) until their followers say otherwise.
    pub fn new(
        config: Arc<Config>,
        kernel: Arc<Kernel>,
        (reached, ports): (BTreeMap<usize, Reached>, BTreeMap<usize, SavedPort>),
    ) -> Self {
        Self {
            config,
            kernel,
            reached: std::sync::Mutex::new(reached),
            overflow: std::sync::Mutex::new(Vec::new()),
            ports: std::sync::Mutex::new(ports),
        }
    }

    /// Changes what some databases are reached at, then makes the kernel's table match. On an
    /// error the change is kept: the next update (or [`Governed::retry`]) applies it.
    pub fn update(&self, change: impl FnOnce(&mut BTreeMap<usize, Reached>)) -> Result<GovernedDiff, KernelError> {
        let mut reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut reached);
        let (wanted, lost) = governed_table(&self.config, &reached);
        {
            let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            if *overflow != lost {
                for (database, n) in &lost {
                    tracing::error!(
                        database,
                        endpoints = n,
                        capacity = agent_common::GOVERNED_MAX_ENTRIES,
                        "the governed-endpoint table is full: endpoints of this Service left ungoverned"
                    );
                }
                *overflow = lost;
            }
        }
        let diff = self.kernel.replace_governed(&wanted)?;
        // The saved table is the owner's (a replaced agent's followers may still run a moment).
        if self.kernel.owns() {
            self.save(&reached);
        }
        Ok(diff)
    }

    /// Applies what is known again (after a failed update).
    pub fn retry(&self) -> Result<GovernedDiff, KernelError> {
        self.update(|_| {})
    }

    /// Where database `index` is reached now, when a follower has said.
    pub fn reached(&self, index: usize) -> Option<Reached> {
        self.reached.lock().unwrap_or_else(|p| p.into_inner()).get(&index).cloned()
    }

    /// The Service port database `index` was last seen with (by this agent or the last).
    pub fn service_port(&self, index: usize) -> Option<SavedPort> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).get(&index).cloned()
    }

    /// Remembers the Service port of database `index` (saved with its next update).
    pub fn set_service_port(&self, index: usize, port: SavedPort) {
        self.ports.lock().unwrap_or_else(|p| p.into_inner()).insert(index, port);
    }

    /// Databases whose endpoints do not all fit in the kernel's table, with how many are left
    /// ungoverned.
    pub fn overflow(&self) -> Lost {
        self.overflow.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the Service-named databases' endpoints to the state file (atomically).
    fn save(&self, reached: &BTreeMap<usize, Reached>) {
        let ports = self.ports.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let saved: BTreeMap<&str, Saved> = service_databases(&self.config)
            .filter_map(|(i, name, service)| {
                let r = reached.get(&i)?;
                let saved = Saved {
                    service,
                    port: ports.get(&i).cloned(),
                    addrs: r.addrs.clone(),
                    any_address: r.any_address.clone(),
                    backends: r.backends.clone(),
                };
                Some((name, saved))
            })
            .collect();
        if saved.is_empty() {
            return;
        }
        let file = state_file(&self.config);
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(err) = written {
            tracing::warn!(file = %file.display(), error = %err, "cannot save the Service endpoints");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, address: &str) -> Config {
        Config::parse(
            &dir.join("warden.yaml"),
            &format!(
                "databases:\n  - {{name: orders, address: '{address}'}}\naudit: {{path: {}}}\nkubernetes: {{node_name: n1}}\n",
                dir.join("audit.ring").display()
            ),
        )
        .expect("config")
    }

    #[test]
    fn saved_endpoints_seed_only_the_same_database_and_service() {
        let tmp = crate::test_dir("warden-governed-");
        let dir = tmp.path();
        let saved = serde_json::json!({"orders": {
            "service": "service shop/orders:5432",
            "port": {"name": "pg", "port": 5432},
            "addrs": ["10.96.0.7:5432"], "any_address": [30007], "backends": ["10.244.0.9:15432"]
        }});
        std::fs::write(dir.join("services.json"), saved.to_string()).expect("write");
        let (reached, ports) = saved_services(&config(dir, "shop/orders:5432"));
        assert_eq!(reached[&0].addrs, vec!["10.96.0.7:5432".parse::<SocketAddr>().unwrap()]);
        assert_eq!(reached[&0].backends, vec!["10.244.0.9:15432".parse::<SocketAddr>().unwrap()]);
        assert_eq!(ports[&0], SavedPort { name: Some("pg".into()), port: 5432 });
        // The database now names another Service: what was saved is not its.
        let (reached, ports) = saved_services(&config(dir, "shop/orders-v2:5432"));
        assert!(reached.is_empty() && ports.is_empty());
        // A damaged file is ignored.
        std::fs::write(dir.join("services.json"), "{not json").expect("write");
        assert!(saved_services(&config(dir, "shop/orders:5432")).0.is_empty());
    }
}
