//! The admin API: HTTP/1.1 with JSON on a unix socket (hyper's server, no framework), for the
//! operator's CLI and tools. Who may use it is decided by the socket's peer credentials: root,
//! or a member of `admin.group` (the socket file is also only reachable by them). Approving is
//! refused to a process of a governed workload, so nobody approves their own request.
//!
//! | Method and path                     | Answer                                               |
//! |-------------------------------------|------------------------------------------------------|
//! | `GET /v1/status`                    | agent version, pid, uptime, counts, webhook counters |
//! | `GET /v1/approvals`                 | pending requests (normalised statement only)         |
//! | `GET /v1/approvals/watch`           | JSON lines: pending requests, then each new one and each decision |
//! | `GET /v1/approvals/ID`              | one request, with the text as sent and its parameters |
//! | `POST /v1/approvals/ID/approve`     | body `{"reason": "..."}` (optional): the outcome     |
//! | `POST /v1/approvals/ID/deny`        | likewise                                             |
//! | `GET /v1/sessions`                  | live sessions                                        |
//! | `POST /v1/sessions/ID/terminate`    | ends the session (both legs), recorded in the audit  |
//!
//! Errors are `{"error": "..."}` with 400, 403, 404 or 405.

pub mod client;
pub mod metrics;
mod peer;

use std::{convert::Infallible, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full, Limited, channel::Channel};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use crate::{
    approval::{Approvals, Notice},
    audit::{AuditLog, Event, SessionId},
    config::AdminConfig,
    govern::Governor,
    identity::Resolver,
    proxy::live::LiveSessions,
};
pub use peer::Peer;

/// A request body larger than this is refused (a reason is a sentence).
const MAX_BODY: usize = 64 * 1024;
/// A request's head, and then its body, must arrive within this.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the API serves from.
pub struct AdminState {
    pub approvals: Arc<Approvals>,
    pub live: Arc<LiveSessions>,
    pub audit: AuditLog,
    pub resolver: Arc<Resolver>,
    pub governor: Arc<Governor>,
    pub cgroup_root: std::path::PathBuf,
    pub started: Instant,
    /// Members may use the API besides root.
    pub group: Option<nix::unistd::Gid>,
}

type Body = Either<Full<Bytes>, Channel<Bytes, Infallible>>;

/// Binds the socket: a stale one is replaced, the file is made `0660 root:GROUP` (`0600`
/// without a group), so only those allowed can even connect.
pub fn bind(config: &AdminConfig) -> Result<(UnixListener, Option<nix::unistd::Gid>)> {
    let group = match &config.group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .with_context(|| format!("looking up admin.group {name:?}"))?
                .with_context(|| format!("admin.group {name:?} does not exist on this host"))?
                .gid,
        ),
        None => None,
    };
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    remove_stale(&config.socket)?;
    // Created owner-only (no window in which others may connect); opened to the group below.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&config.socket);
    nix::sys::stat::umask(umask);
    let listener = bound.with_context(|| format!("binding the admin socket {}", config.socket.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", config.socket.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(&config.socket, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", config.socket.display()))?;
    }
    Ok((listener, group))
}

/// A socket left by an earlier agent is removed; any other file there is not touched.
fn remove_stale(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket: not replacing it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<AdminState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: peer credentials unreadable; connection closed");
                    return;
                }
            };
            // /proc and the user database are read on the blocking pool.
            let root = state.cgroup_root.clone();
            let peer = match tokio::task::spawn_blocking(move || {
                Peer::from_credentials(cred.uid(), cred.gid(), cred.pid(), &root)
            })
            .await
            {
                Ok(peer) => peer,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: reading the peer failed; connection closed");
                    return;
                }
            };
            let allowed = peer.allowed(state.group);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(handle(&state, &peer, allowed, req).await) }
            });
            // A peer that does not finish its request head in time is dropped (hyper enforces it
            // with a timer).
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": message.into() }))
}

/// The optional `{"reason": "..."}` of a decision.
async fn reason_of(req: Request<Incoming>) -> Result<Option<String>, Response<Body>> {
    let body = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect())
        .await
        .map_err(|_| error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"))?
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
    match &value["reason"] {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= 1024 => Ok(Some(s.clone())),
        Value::String(_) => Err(error(StatusCode::BAD_REQUEST, "reason: at most 1024 bytes")),
        _ => Err(error(StatusCode::BAD_REQUEST, "reason: expected a string")),
    }
}

async fn handle(state: &AdminState, peer: &Peer, allowed: bool, req: Request<Incoming>) -> Response<Body> {
    if !allowed {
        return error(
            StatusCode::FORBIDDEN,
            format!("uid {} may not use the admin API (root or the configured admin.group only)", peer.uid),
        );
    }
    let path: Vec<String> = req.uri().path().trim_matches('/').split('/').map(str::to_string).collect();
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, path.as_slice()) {
        (&Method::GET, ["v1", "status"]) => json_response(StatusCode::OK, &status(state)),
        (&Method::GET, ["v1", "approvals"]) => {
            json_response(StatusCode::OK, &serde_json::to_value(state.approvals.pending()).unwrap_or_default())
        }
        (&Method::GET, ["v1", "approvals", "watch"]) => watch(state),
        (&Method::GET, ["v1", "approvals", id]) => match state.approvals.get(id) {
            Some(request) => json_response(StatusCode::OK, &request.detail()),
            None => error(StatusCode::NOT_FOUND, format!("no pending approval request {id}")),
        },
        (&Method::POST, ["v1", "approvals", id, verb @ ("approve" | "deny")]) => {
            let approve = *verb == "approve";
            let id = id.to_string();
            let reason = match reason_of(req).await {
                Ok(r) => r,
                Err(response) => return response,
            };
            if approve
                && let Some(request) = state.approvals.get(&id)
                && let Err(why) = peer.may_approve(&request.identity, state).await
            {
                tracing::warn!(request = %id, uid = peer.uid, pid = ?peer.pid, %why, "self-approval refused");
                return error(StatusCode::FORBIDDEN, format!("approval refused: {why}"));
            }
            match state.approvals.decide(&id, peer.approver(), approve, reason) {
                Ok(outcome) => json_response(StatusCode::OK, &json!({ "request": id, "decision": outcome })),
                Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
            }
        }
        (&Method::GET, ["v1", "sessions"]) => {
            let held: std::collections::HashMap<SessionId, String> =
                state.approvals.pending().iter().map(|r| (r.session, r.id.clone())).collect();
            let mut sessions = state.live.list();
            for s in &mut sessions {
                s.held = held.get(&s.session).cloned();
            }
            json_response(StatusCode::OK, &serde_json::to_value(sessions).unwrap_or_default())
        }
        (&Method::POST, ["v1", "sessions", id, "terminate"]) => {
            let Ok(session) = id.parse::<u64>().map(SessionId) else {
                return error(StatusCode::BAD_REQUEST, format!("session id {id:?}: expected a number"));
            };
            let database = state.live.list().into_iter().find(|s| s.session == session).map(|s| s.database);
            let by = peer.approver();
            match database {
                Some(database) if state.live.terminate(session, crate::proxy::live::Ending::Operator(by.clone())) => {
                    state.audit.record(Event::SessionTerminated { session, database, by });
                    json_response(StatusCode::OK, &json!({ "session": session, "terminated": true }))
                }
                _ => error(StatusCode::NOT_FOUND, format!("no live session {id}")),
            }
        }
        (_, ["v1", "status" | "approvals" | "sessions", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} {} is not served", req.uri().path()))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {}", req.uri().path())),
    }
}

fn status(state: &AdminState) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": state.started.elapsed().as_secs(),
        "sessions": state.live.count(),
        "held": state.approvals.pending().len(),
        "policy_generation": state.governor.generation(),
        "policies": state.governor.snapshot().set.len(),
        "webhooks": state.approvals.webhook_stats(),
    })
}

/// JSON lines: the pending requests, then every new request and decision as they happen.
fn watch(state: &AdminState) -> Response<Body> {
    let mut notices = state.approvals.subscribe();
    let pending = state.approvals.pending();
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(16);
    tokio::spawn(async move {
        let line = |v: &Notice| {
            let mut bytes = serde_json::to_vec(v).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        };
        for request in pending {
            if tx.send_data(line(&Notice::Requested { request })).await.is_err() {
                return;
            }
        }
        // A blank line every 30 s when nothing happens: a follower that left is noticed.
        let mut keepalive = tokio::time::interval(std::time::Duration::from_secs(30));
        keepalive.tick().await;
        loop {
            let notice = tokio::select! {
                notice = notices.recv() => notice,
                _ = keepalive.tick() => {
                    if tx.send_data(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match notice {
                Ok(notice) => {
                    if tx.send_data(line(&notice)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("{{\"event\":\"lagged\",\"missed\":{n}}}\n");
                    if tx.send_data(Bytes::from(note)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    response
}
