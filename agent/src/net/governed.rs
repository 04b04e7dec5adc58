//! The kernel's governed-endpoint table has one owner: every source of endpoints (database host
//! names in DNS, Kubernetes Services) writes its part here, and the whole table is brought in
//! line under one lock, so two sources can never undo each other's update.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    config::Config,
    ebpf::{GovernedDiff, Kernel, KernelError, Reached, governed_entries_with},
};

/// The governed endpoints, as the configuration and its followers say now.
pub struct Governed {
    config: Arc<Config>,
    kernel: Arc<Kernel>,
    /// Where host-named and Service-named databases are reached now, by database index.
    reached: std::sync::Mutex<BTreeMap<usize, Reached>>,
}

impl Governed {
    /// The table of `config`'s databases (host names at their start-up addresses until a
    /// follower says otherwise).
    pub fn new(config: Arc<Config>, kernel: Arc<Kernel>) -> Self {
        Self { config, kernel, reached: std::sync::Mutex::new(BTreeMap::new()) }
    }

    /// Changes what some databases are reached at, then makes the kernel's table match (new
    /// endpoints first, then those no database uses any more). On an error the change is kept:
    /// the next update (or [`Governed::retry`]) applies it.
    pub fn update(&self, change: impl FnOnce(&mut BTreeMap<usize, Reached>)) -> Result<GovernedDiff, KernelError> {
        let mut reached = self.reached.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut reached);
        self.kernel.replace_governed(&governed_entries_with(&self.config, &reached))
    }

    /// Applies what is known again (after a failed update).
    pub fn retry(&self) -> Result<GovernedDiff, KernelError> {
        self.update(|_| {})
    }

    /// Where database `index` is reached now, when a follower has said.
    pub fn reached(&self, index: usize) -> Option<Reached> {
        self.reached.lock().unwrap_or_else(|p| p.into_inner()).get(&index).cloned()
    }
}
