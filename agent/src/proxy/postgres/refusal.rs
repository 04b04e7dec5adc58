//! Refusals: a FATAL ErrorResponse sent to a client before or instead of a session (a bad
//! start-up, a replication connection that is not allowed, an unreachable upstream), then the
//! close.

use tokio::io::AsyncWriteExt as _;

use super::{SessionContext, SessionError, stream::MaybeTls};
use crate::pg::error::{Severity, put_error, sqlstate};

/// Sends a FATAL ErrorResponse and closes (best effort: the client may already be gone).
pub(super) async fn refuse(stream: &mut MaybeTls, sqlstate: &str, message: &str) {
    let mut out = Vec::new();
    put_error(&mut out, Severity::Fatal, sqlstate, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Refuses a replication connection to a database whose `allow_replication` is off.
pub(super) async fn refuse_replication(ctx: &SessionContext, stream: &mut MaybeTls) {
    let message = format!(
        "warden: replication connections to database \"{}\" are not allowed (allow_replication is off)",
        ctx.database.name
    );
    refuse(stream, sqlstate::INSUFFICIENT_PRIVILEGE, &message).await;
}

/// Refuses a session whose upstream connection could not be opened (`err`: why).
pub(super) async fn refuse_unreachable(ctx: &SessionContext, stream: &mut MaybeTls, err: &SessionError) {
    // What a direct connection would have met, without repeating the address.
    let why = match err {
        SessionError::UpstreamUnreachable { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let message = format!("warden: database \"{}\" at {} is unreachable: {why}", ctx.database.name, ctx.orig_dst);
    refuse(stream, sqlstate::UNABLE_TO_CONNECT, &message).await;
}
