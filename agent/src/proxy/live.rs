//! The agent's live sessions, for the admin API: who, which database, since when, the last
//! statement forwarded (normalised when listed: literals never leave as values), and a way for
//! an operator to end one (both legs closed, recorded by the session itself).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::Notify;

use crate::{
    approval::Approver,
    audit::{SessionId, now_ms},
    identity::Identity,
    session::Lexing,
};

/// At most this much of a last statement is listed.
const MAX_LISTED_TEXT: usize = 512;
/// A longer last statement is listed by its length only (not normalised at each listing).
const MAX_NORMALISED_TEXT: usize = 64 * 1024;

/// One live session.
pub struct LiveSession {
    pub id: SessionId,
    pub database: String,
    pub identity: Arc<Identity>,
    started_ms: u64,
    started: Instant,
    db_user: Mutex<Option<String>>,
    last: Mutex<Option<(Arc<str>, Lexing, u64)>>,
    ended_by: Mutex<Option<Approver>>,
    end: Notify,
}

impl LiveSession {
    /// A statement was forwarded (its text is kept by reference, normalised only when listed).
    pub fn forwarded(&self, sql: &Arc<str>, lexing: Lexing) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((sql.clone(), lexing, now_ms()));
    }

    pub fn set_user(&self, user: Option<&str>) {
        *self.db_user.lock().unwrap_or_else(|p| p.into_inner()) = user.map(str::to_string);
    }

    /// Resolves once an operator ended the session: who did.
    pub async fn ended(&self) -> Approver {
        loop {
            let notified = self.end.notified();
            if let Some(by) = self.ended_by.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return by;
            }
            notified.await;
        }
    }

    fn view(&self) -> SessionView {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        SessionView {
            session: self.id,
            database: self.database.clone(),
            db_user: self.db_user.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            identity: self.identity.clone(),
            started_ms: self.started_ms,
            age_s: self.started.elapsed().as_secs(),
            last_statement: last.as_ref().map(|(sql, lexing, _)| {
                if !lexing.ascii_safe {
                    return format!("(a statement of {} bytes in a client encoding not read here)", sql.len());
                }
                if sql.len() > MAX_NORMALISED_TEXT {
                    return format!("(a statement of {} bytes)", sql.len());
                }
                let options =
                    crate::sql::LexOptions { standard_conforming_strings: lexing.standard_conforming_strings };
                let mut text = crate::sql::normalise_with_options(sql, options);
                if text.len() > MAX_LISTED_TEXT {
                    let mut cut = MAX_LISTED_TEXT;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                text
            }),
            last_statement_ms: last.map(|(_, _, at)| at),
            held: None,
        }
    }
}

/// A session as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub session: SessionId,
    pub database: String,
    pub db_user: Option<String>,
    pub identity: Arc<Identity>,
    pub started_ms: u64,
    pub age_s: u64,
    /// Normalised (literals as `?`).
    pub last_statement: Option<String>,
    pub last_statement_ms: Option<u64>,
    /// The approval request its held statement waits on.
    pub held: Option<String>,
}

/// Every live proxied session of the agent.
#[derive(Default)]
pub struct LiveSessions {
    map: Mutex<HashMap<SessionId, Arc<LiveSession>>>,
}

/// Removes its session from the registry when dropped (however the session ends).
pub struct Registered {
    pub session: Arc<LiveSession>,
    registry: Arc<LiveSessions>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.session.id);
    }
}

impl LiveSessions {
    pub fn register(self: &Arc<Self>, id: SessionId, database: &str, identity: Arc<Identity>) -> Registered {
        let session = Arc::new(LiveSession {
            id,
            database: database.to_string(),
            identity,
            started_ms: now_ms(),
            started: Instant::now(),
            db_user: Mutex::new(None),
            last: Mutex::new(None),
            ended_by: Mutex::new(None),
            end: Notify::new(),
        });
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, session.clone());
        Registered { session, registry: self.clone() }
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let sessions: Vec<Arc<LiveSession>> =
            self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut views: Vec<SessionView> = sessions.iter().map(|s| s.view()).collect();
        views.sort_by_key(|v| (v.started_ms, v.session.0));
        views
    }

    pub fn count(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Ends a session: false when there is no such live session.
    pub fn terminate(&self, id: SessionId, by: Approver) -> bool {
        let Some(session) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned() else {
            return false;
        };
        *session.ended_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(by);
        session.end.notify_waiters();
        true
    }
}
