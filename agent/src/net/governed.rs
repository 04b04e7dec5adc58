//! The kernel's governed-endpoint table has one owner: every source of endpoints (database host
//! names in DNS, Kubernetes Services) writes its part here, and the whole table is brought in
//! line under one lock, so two sources can never undo each other's update.
//!
//! What Service-named databases are reached at is also kept in `STATE_DIR/services.json`: a
//! restarted agent governs them there from its first moment, before the API answers (a Service
//! has no address in the configuration, so without it a restart would leave them ungoverned
//! until the watch lists).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, DatabaseAddress},
    ebpf::{GovernedDiff, Kernel, KernelError, Reached, fit_governed, governed_entries_with},
};

/// A Service-named database's endpoints, as kept in the state file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    addrs: Vec<SocketAddr>,
    any_address: Vec<u16>,
}

/// The state file of Service endpoints.
pub fn state_file(config: &Config) -> PathBuf {
    config.state_dir.join("services.json")
}

/// What the last agent knew of the Service-named databases (by name: the configuration may
/// have changed since), to govern them before the API answers.
pub fn saved_services(config: &Config) -> BTreeMap<usize, Reached> {
    let Ok(text) = std::fs::read_to_string(state_file(config)) else { return BTreeMap::new() };
    let saved: BTreeMap<String, Saved> = match serde_json::from_str(&text) {
        Ok(saved) => saved,
        Err(err) => {
            tracing::warn!(file = %state_file(config).display(), error = %err, "saved Service endpoints unreadable; ignored");
            return BTreeMap::new();
        }
    };
    config
        .databases
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.address, DatabaseAddress::Service { .. }))
        .filter_map(|(i, d)| {
            let s = saved.get(&d.name)?;
            Some((i, Reached { addrs: s.addrs.clone(), any_address: s.any_address.clone() }))
        })
        .collect()
}

/// The governed endpoints, as the configuration and its followers say now.
pub struct Governed {
    config: Arc<Config>,
    kernel: Arc<Kernel>,
    /// Where host-named and Service-named databases are reached now, by database index.
    reached: std::sync::Mutex<BTreeMap<usize, Reached>>,
    /// Databases whose endpoints did not all fit in the table, as last reported.
    overflow: std::sync::Mutex<Vec<(String, usize)>>,
}

impl Governed {
    /// The table of `config`'s databases, Service-named ones at `reached` (the saved state)
    /// until their followers say otherwise.
    pub fn new(config: Arc<Config>, kernel: Arc<Kernel>, reached: BTreeMap<usize, Reached>) -> Self {
        Self { config, kernel, reached: std::sync::Mutex::new(reached), overflow: std::sync::Mutex::new(Vec::new()) }
    }

    /// Changes what some databases are reached at, then makes the kernel's table match. On an
    /// error the change is kept: the next update (or [`Governed::retry`]) applies it.
    pub fn update(&self, change: impl FnOnce(&mut BTreeMap<usize, Reached>)) -> Result<GovernedDiff, KernelError> {
        let mut reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut reached);
        let (wanted, lost) = fit_governed(&self.config, governed_entries_with(&self.config, &reached));
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
        self.save(&reached);
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

    /// Writes the Service-named databases' endpoints to the state file (atomically).
    fn save(&self, reached: &BTreeMap<usize, Reached>) {
        let saved: BTreeMap<&str, Saved> = self
            .config
            .databases
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.address, DatabaseAddress::Service { .. }))
            .filter_map(|(i, d)| {
                let r = reached.get(&i)?;
                Some((d.name.as_str(), Saved { addrs: r.addrs.clone(), any_address: r.any_address.clone() }))
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
