//! The judgement of one client message that runs statements: for each statement of it, the
//! class it was judged as and the policy decision. Computed once, before the message is
//! forwarded (or refused), and carried to the statement's records.

use std::{ops::Range, sync::Arc};

use crate::sql::{Class, ClassSet, Described};

/// What policy decided about a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Held for approval: it runs once approved (its reason then says by whom), and is
    /// refused when denied, timed out or cancelled.
    Hold,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Hold => "hold",
        }
    }
}

/// One statement's judgement.
#[derive(Debug, Clone)]
pub struct PartJudgement {
    /// Where the statement is in the message's text.
    pub span: Range<usize>,
    /// Its text normalised, and analysed.
    pub described: Described,
    /// Its reading is ambiguous (`described` holds no text): recorded by length and hash only.
    pub ambiguous: bool,
    /// The class it was judged as: the analysis of its text, or, for a statement that runs
    /// another (SQL EXECUTE, FETCH), of what it runs.
    pub class: Class,
    /// Every effect it was judged to have (likewise).
    pub effects: ClassSet,
    pub class_reason: Option<Arc<str>>,
    pub decision: Decision,
    /// The policy and rule that decided (none: no policy selects the identity, or a policy's
    /// default decided: then `rule` is none and `policy` names it).
    pub policy: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
    pub reason: Arc<str>,
    /// How a hold is decided (a `require_approval` decision).
    pub approval: Option<Arc<crate::policy::ApprovalTerms>>,
    /// What masking does to its results (none: nothing is masked for this identity).
    pub mask: Option<Arc<crate::mask::plan::PartMask>>,
}

/// A message's judgement: one part per statement (a simple-query string may hold many).
#[derive(Debug, Clone)]
pub struct Judgement {
    pub parts: Vec<PartJudgement>,
    /// The role the session acted as when it was judged, as the server last said (`None`: not
    /// known, so every `users` filter applied).
    pub role: Option<Arc<str>>,
    /// What it was judged under, as its maker numbers it (the policy set's generation and the
    /// session's facts): a judgement carried to later executions (a bound portal) is judged
    /// again once its maker says the basis moved (`SessionHooks::judgement_current`).
    pub basis: (u64, u64),
}

impl Judgement {
    /// The message's decision: it runs only if every statement of it may (a string with one
    /// refused statement is refused whole: none of it runs).
    pub fn decision(&self) -> Decision {
        let mut decision = Decision::Allow;
        for p in &self.parts {
            match p.decision {
                Decision::Deny => return Decision::Deny,
                Decision::Hold => decision = Decision::Hold,
                Decision::Allow => {}
            }
        }
        decision
    }

    /// Whether running it may change how the session lexes later text or what names mean: a
    /// session setting, transaction control (a ROLLBACK undoes a SET), a role change, or code
    /// whose effects are not known.
    pub fn may_change_settings(&self) -> bool {
        let changing = ClassSet::of(&[Class::Session, Class::Transaction, Class::Dcl, Class::Unknown]);
        self.parts.iter().any(|p| {
            let a = &p.described.analysis;
            a.effects.with(a.class).with(p.class).intersects(changing)
        })
    }

    /// Whether a statement of it runs what the session holds under a name (SQL EXECUTE of a
    /// prepared statement, FETCH from a cursor), looked up when it runs.
    pub fn session_dependent(&self) -> bool {
        self.parts.iter().any(|p| p.described.analysis.executes.is_some() || p.described.analysis.fetches.is_some())
    }

    /// The part that refused the message, if one did (a deny before a hold).
    pub fn refusing_part(&self) -> Option<(usize, &PartJudgement)> {
        let find = |d| self.parts.iter().enumerate().find(|(_, p)| p.decision == d);
        find(Decision::Deny).or_else(|| find(Decision::Hold))
    }
}
