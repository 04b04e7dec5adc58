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
    ended_by: Mutex<Option<Ending>>,
    end: Notify,
}

/// Why a live session is ended by the agent rather than by its client or server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// An operator ended it from the admin API.
    Operator(Approver),
    /// The agent stops, with no successor to take its place.
    Stopping,
    /// The agent was replaced and its drain deadline passed.
    DrainDeadline { deadline_s: u64 },
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Operator(by) => write!(f, "ended by operator {by} from the admin API"),
            Self::Stopping => write!(f, "ended because the agent stopped"),
            Self::DrainDeadline { deadline_s } => {
                write!(f, "ended at the drain deadline ({deadline_s} s) of the agent that was replaced")
            }
        }
    }
}

impl Ending {
    /// What the client's FATAL says (SQLSTATE 57P01, as the server's own "administrator
    /// command").
    pub fn client_message(&self) -> String {
        match self {
            Self::Operator(by) => format!("warden: session terminated by operator {by}"),
            Self::Stopping => {
                "warden: terminating connection due to administrator command: the agent is stopping".into()
            }
            Self::DrainDeadline { deadline_s } => format!(
                "warden: terminating connection due to administrator command: the agent serving it was replaced \
                 and its drain deadline ({deadline_s} s) passed; reconnect"
            ),
        }
    }
}

impl LiveSession {
    /// A statement was forwarded (its text is kept by reference, normalised only when listed).
    pub fn forwarded(&self, sql: &Arc<str>, lexing: Lexing) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((sql.clone(), lexing, now_ms()));
    }

    fn end_with(&self, why: Ending) {
        self.ended_by.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
        self.end.notify_waiters();
    }

    pub fn set_user(&self, user: Option<&str>) {
        *self.db_user.lock().unwrap_or_else(|p| p.into_inner()) = user.map(str::to_string);
    }

    /// Resolves once the session is ended by the agent: why.
    pub async fn ended(&self) -> Ending {
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
                let options = lexing.options();
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
    pub fn terminate(&self, id: SessionId, why: Ending) -> bool {
        let Some(session) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned() else {
            return false;
        };
        session.end_with(why);
        true
    }

    /// Ends every live session; returns how many.
    pub fn terminate_all(&self, why: &Ending) -> usize {
        let sessions: Vec<Arc<LiveSession>> =
            self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for session in &sessions {
            session.end_with(why.clone());
        }
        sessions.len()
    }
}
