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
    /// The decision a policy action makes.
    pub fn of(action: crate::policy::Action) -> Decision {
        match action {
            crate::policy::Action::Allow => Decision::Allow,
            crate::policy::Action::Deny => Decision::Deny,
            crate::policy::Action::RequireApproval => Decision::Hold,
        }
    }

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
    /// What dry-run policies and rules would have decided (none: none selects the identity).
    pub would: Option<Arc<WouldBe>>,
    /// The names policy judged it by (none: it was not judged by policy).
    pub names: Option<Arc<JudgedNames>>,
    /// The volume limits its results are measured against (none: no limit applies).
    pub limit: Option<Arc<crate::govern::volume::PartLimit>>,
    /// What judging read of the statement's raw text, kept for forwarding it (none: not
    /// judged from its text; forwarding reads it then).
    pub raw_reads: Option<crate::govern::search_path::RawReads>,
}

/// The would-be verdict of a statement: what the policies selecting its identity decide with
/// every dry-run policy and rule enforced. Recorded beside the real verdict; never enforced.
#[derive(Debug, Clone)]
pub struct WouldBe {
    pub decision: Decision,
    pub policy: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
    pub reason: Arc<str>,
    /// The mask plan with dry-run masking rules enforced (none: the identity would have no
    /// masking).
    pub mask: Option<Arc<crate::mask::plan::PartMask>>,
}

/// The relations and functions policy judged a statement by, each with the places it may
/// resolve to (`schema: None`: any schema), as they were at the time: what `warden policy
/// simulate` judges the statement by again.
#[derive(Debug, Clone, Default)]
pub struct JudgedNames {
    pub relations: Vec<Vec<crate::sql::ObjectName>>,
    pub functions: Vec<Vec<crate::sql::ObjectName>>,
    pub unscoped: bool,
    /// Judged with the session's catalog (otherwise names resolved to any schema, and user
    /// functions were unknown).
    pub catalog: bool,
}

impl PartJudgement {
    /// How the would-be verdict differs from the real one, if it does: `deny`, `hold` or
    /// `allow` (a different decision), or `mask` (the same decision, with columns masked that
    /// are not masked now).
    pub fn would_change(&self) -> Option<&'static str> {
        let would = self.would.as_ref()?;
        if would.decision != self.decision {
            return Some(would.decision.as_str());
        }
        let masked_now = |c: &crate::audit::MaskedColumn| {
            self.mask.as_ref().is_some_and(|m| m.masked.iter().any(|n| n.column == c.column && n.method == c.method))
        };
        let more = would.mask.as_ref().is_some_and(|m| m.masked.iter().any(|c| c.method != "exempt" && !masked_now(c)));
        more.then_some("mask")
    }
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
