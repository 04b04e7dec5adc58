//! Cancel requests. A client cancels by opening a new connection (which the redirect also
//! captures) and sending its session's backend process id and secret key; the agent maps that
//! key to the session's upstream and forwards the request there.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{SessionContext, SessionError, upstream};
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
    /// The session's hooks, told of the cancel (a statement held for approval is cancelled).
    pub hooks: Option<Arc<dyn crate::session::hooks::SessionHooks>>,
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

/// Forwards a CancelRequest to the upstream of the session that owns the key (or, for a key
/// this agent never saw, to the destination the client dialled: PostgreSQL checks the key).
pub(super) async fn forward_cancel(
    ctx: &SessionContext,
    packet: &[u8],
    pid: i32,
    key: &[u8],
    from_client: bool,
) -> Result<(), SessionError> {
    let target = ctx.cancels.lookup(pid, key).unwrap_or_else(|| CancelTarget {
        orig_dst: ctx.orig_dst,
        database: ctx.database.clone(),
        database_index: ctx.database_index,
        dial: ctx.dial.clone(),
        hooks: None,
    });
    if let Some(hooks) = target.hooks.as_ref().filter(|_| from_client) {
        // What the client cancels may be waiting for an approver: it is not run later.
        hooks.on_cancel_request();
    }
    // The cancel goes where the session's own upstream went: from that session's namespace.
    let cancel_ctx = SessionContext {
        database: target.database,
        database_index: target.database_index,
        orig_dst: target.orig_dst,
        dial: target.dial,
        client_tls: None,
        max_message: ctx.max_message,
        hooks: ctx.hooks.clone(),
        cancels: ctx.cancels.clone(),
        live: None,
    };
    let mut upstream = upstream::connect(&cancel_ctx).await?.stream;
    upstream.write_all(packet).await.map_err(SessionError::UpstreamIo)?;
    // The server closes the connection without answering.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut sink)).await;
    Ok(())
}

/// A CancelRequest packet for the backend `pid` with `key`.
pub(super) fn cancel_packet(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + key.len());
    packet.extend_from_slice(&(12 + key.len() as u32).to_be_bytes());
    packet.extend_from_slice(&(crate::pg::frame::CANCEL_REQUEST as u32).to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(key);
    packet
}

/// Cancels what the session's backend (`pid`, `key`) runs, from a task of its own: the
/// receivers see `true` once the server has taken the request (it closed the connection), or
/// sending it failed (logged).
pub(super) fn cancel_in_background(ctx: &SessionContext, pid: i32, key: &[u8]) -> tokio::sync::watch::Receiver<bool> {
    let (done, heard) = tokio::sync::watch::channel(false);
    let packet = cancel_packet(pid, key);
    let key = key.to_vec();
    let ctx = SessionContext {
        database: ctx.database.clone(),
        database_index: ctx.database_index,
        orig_dst: ctx.orig_dst,
        dial: ctx.dial.clone(),
        client_tls: None,
        max_message: ctx.max_message,
        hooks: ctx.hooks.clone(),
        cancels: ctx.cancels.clone(),
        live: None,
    };
    tokio::spawn(async move {
        if let Err(e) = forward_cancel(&ctx, &packet, pid, &key, false).await {
            tracing::warn!(database = %ctx.database.name, error = %e, "cancelling a statement stopped at a volume limit failed");
        }
        let _ = done.send(true);
    });
    heard
}
