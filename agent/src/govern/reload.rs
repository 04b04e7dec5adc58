//! Hot reload of the policy set: on SIGHUP and when a policy file changes (polled: the files
//! are few and small, and polling sees edits through symlink swaps and ConfigMap volume
//! updates that inotify on the directory misses). A set that fails validation is rejected with
//! its errors logged, and the set in force stays.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::Governor;
use crate::policy::PolicySet;

/// How often the policy files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the policy files looked like: each file's path, length and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// The policy files under `paths` (files, and `*.yaml`/`*.yml` in directories) as they are now.
    pub fn of(paths: &[PathBuf]) -> Fingerprint {
        let mut files = Vec::new();
        for path in paths {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                            files.push(stamp(&p));
                        }
                    }
                }
                Err(_) => files.push(stamp(path)),
            }
        }
        files.sort();
        Fingerprint(files)
    }
}

fn stamp(path: &Path) -> (PathBuf, u64, Option<SystemTime>) {
    let meta = std::fs::metadata(path).ok();
    (path.to_path_buf(), meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()))
}

/// Loads the policy files under `paths`; absent paths hold no policies (a fresh install).
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, String> {
    let present: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
    PolicySet::load(&present).map_err(|errors| errors.to_string())
}

/// Reloads the set in force from `paths`, logging the outcome. Returns whether it changed.
pub fn reload(governor: &Governor, paths: &[PathBuf], why: &str) -> bool {
    if why == "SIGHUP" {
        // Mask keys rotate on SIGHUP (a new policy generation rebuilds sessions' masking).
        governor.reload_mask_key();
    }
    match load(paths) {
        Ok(set) => {
            let count = set.len();
            let generation = governor.replace(set);
            tracing::info!(policies = count, generation, trigger = why, "policy set reloaded");
            true
        }
        Err(errors) => {
            for line in errors.lines() {
                tracing::error!(trigger = why, "policy set rejected, the previous one stays in force: {line}");
            }
            false
        }
    }
}

/// Watches `paths` and reloads on change or SIGHUP, until the task is dropped.
pub async fn watch(governor: Arc<Governor>, paths: Vec<PathBuf>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: policies reload on file change only");
            None
        }
    };
    let mut seen = Fingerprint::of(&paths);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = tick.tick() => "file change",
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        let now = Fingerprint::of(&paths);
        if why == "file change" && now == seen {
            continue;
        }
        seen = now;
        let (governor, paths) = (governor.clone(), paths.clone());
        // Parsing and compiling read files: off the proxy workers.
        let _ = tokio::task::spawn_blocking(move || reload(&governor, &paths, why)).await;
    }
}
