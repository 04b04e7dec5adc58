//! Cancel requests. A client cancels by opening a new connection (which the redirect also
//! captures) and sending its session's backend process id and secret key; the agent maps that
//! key to the session's upstream and forwards the request there.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{config::Database, flow::OrigDst};

/// Where a session's cancel requests must go.
#[derive(Clone)]
pub struct CancelTarget {
    pub orig_dst: OrigDst,
    /// The session's database (its TLS settings apply to the cancel connection too).
    pub database: Arc<Database>,
    pub database_index: usize,
    /// The session's own way upstream (its client's network namespace).
    pub dial: crate::proxy::Dial,
}

/// Live sessions by backend key.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>,
}

impl CancelRegistry {
    pub fn register(&self, pid: i32, key: &[u8], target: CancelTarget) {
        self.lock().insert((pid, key.to_vec()), target);
    }

    pub fn unregister(&self, pid: i32, key: &[u8]) {
        self.lock().remove(&(pid, key.to_vec()));
    }

    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        self.lock().get(&(pid, key.to_vec())).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, Vec<u8>), CancelTarget>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
