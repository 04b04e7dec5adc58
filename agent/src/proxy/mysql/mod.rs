//! A MySQL or MariaDB session through the proxy (`protocol: mysql`): the connection phase with
//! TLS on both legs and authentication relayed (`handshake`), then the command phase
//! (`session`), which judges every statement through the same protocol-neutral session hooks
//! as PostgreSQL's and reads every server packet against one queue of what the server owes
//! (`state`). Packet types come from `mysql_common`; framing is `packet`'s.

mod catalog;
mod handshake;
mod packet;
mod params;
mod refusal;
mod rows;
mod session;
mod state;

use tokio::net::TcpStream;

use crate::{
    proxy::postgres::{SessionContext, SessionReport},
    session::hooks::SessionStart,
};

/// What a MySQL client is sent in place of the server's greeting when the proxy refuses its
/// connection (a connection limit, a pod not known): an ERR, as a server that cannot take it.
pub fn refusal_greeting(sqlstate: &str, message: &str) -> Vec<u8> {
    let (code, state) = match sqlstate {
        crate::pg::error::sqlstate::TOO_MANY_CONNECTIONS => (refusal::TOO_MANY_CONNECTIONS, *b"08004"),
        _ => (refusal::CONNECTION_DENIED, *b"08004"),
    };
    refusal::err_packet(0, code, state, message)
}

/// Runs a session on an accepted, attributed client connection. `on_open` is called once the
/// upstream connection exists (the audit trail's connection record).
pub async fn run(ctx: &SessionContext, client: TcpStream, on_open: impl FnOnce(&SessionReport)) -> SessionReport {
    let mut report = SessionReport::default();
    let established = match handshake::establish(ctx, client, &mut report, on_open).await {
        Ok(e) => e,
        Err(err) => {
            report.error = Some(err.to_string());
            return report;
        }
    };
    if let Some(live) = &ctx.live {
        live.set_user(Some(&established.user));
    }
    ctx.hooks.on_session_start(&SessionStart {
        user: Some(&established.user),
        database: established.database.as_deref(),
        role: None,
        search_path: None,
    });
    if let Err(err) = session::relay(ctx, established, &mut report).await {
        report.error = Some(err.to_string());
    }
    report
}
