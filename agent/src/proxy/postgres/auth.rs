//! Authentication passthrough: the exchange is relayed as it comes, except for what the proxy
//! must change in it (SCRAM channel binding) and the bound on unauthenticated messages.

use super::{SessionContext, SessionError, startup::SessionStart, state::ProtocolError, upstream::Upstream};
use crate::pg::{
    backend::{AUTH_SASL, sasl_mechanisms},
    frame::put_message,
};

/// Before authentication completes, a client message is an authentication response, which
/// PostgreSQL bounds at 64 KiB (`PG_MAX_AUTH_TOKEN_LENGTH`): an unauthenticated client cannot
/// make the proxy hold more.
pub(super) const MAX_AUTH_MESSAGE: usize = 65_535 + 5;

/// Whether SCRAM -PLUS mechanisms may be offered to the client.
pub(super) fn channel_binding_holds(ctx: &SessionContext, start: &SessionStart, upstream: &Upstream) -> bool {
    // SCRAM channel binding (tls-server-end-point) binds the client to the certificate it saw.
    // Through the proxy that holds only when the client is on TLS and the proxy presents the
    // server's own certificate; otherwise the -PLUS mechanisms are not offered.
    start.stream.is_tls()
        && matches!((&ctx.client_tls, &upstream.server_certificate), (Some(ours), Some(theirs)) if *ours.leaf_certificate == theirs[..])
}

/// The server's AuthenticationSASL offer (`data`, its mechanisms): returns the message to send
/// the client in its place, if any.
pub(super) fn sasl_offer(data: &[u8], channel_binding_holds: bool) -> Result<Option<Vec<u8>>, SessionError> {
    // Channel binding would bind the client to the proxy's certificate, not the
    // server's: not offered unless the proxy presents the server's certificate.
    let mechanisms = sasl_mechanisms(data).map_err(ProtocolError::server_decode)?;
    if !channel_binding_holds && mechanisms.iter().any(|m| m.ends_with(b"-PLUS")) {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        for m in mechanisms.iter().filter(|m| !m.ends_with(b"-PLUS")) {
            body.extend_from_slice(m);
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::with_capacity(body.len() + 5);
        put_message(&mut out, b'R', &body);
        return Ok(Some(out));
    }
    Ok(None)
}
