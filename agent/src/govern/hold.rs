//! A statement judged `require_approval`: held while an approval request waits for a decision
//! (the registry in `approval`), then judged again with the decision in hand. Holding happens
//! through the hooks' `Verdict::Hold`: the protocol session relays nothing of the session after
//! the held message until the hold resolves, and cancels it if the client leaves.
//!
//! Under the extended protocol a statement is judged at Parse and at Bind. Parsing runs nothing
//! of a statement whose effects are all known, so such a Parse passes and the Bind is held: the
//! approver then sees the parameters it will run with. A Parse whose effects are not known (it
//! may run code while parsing) is itself held.

use std::sync::Arc;

use super::SessionGovern;
use crate::{
    approval::{Draft, HoldError, Outcome},
    policy::ApprovalTerms,
    session::{
        Decision, Judgement, QueryProtocol, SqlState,
        hooks::{StatementInfo, Verdict},
    },
    sql::Class,
};

/// Approvers see at most this much of a held text (and 64 parameters of 1 KiB each).
const MAX_HELD_TEXT: usize = 64 * 1024;

/// An approved Bind: the Execute that runs its portal, when it is judged again (a pipeline
/// executes a portal before the server confirmed the Bind), is covered by the same approval.
/// Kept only until the next message judged.
pub(super) struct ApprovedBind {
    sql: Arc<str>,
    why: Arc<str>,
}

/// The decision on a held message, kept until the message is judged again.
pub(super) struct Decided {
    sql: Arc<str>,
    protocol: QueryProtocol,
    id: String,
    outcome: Outcome,
}

impl Decided {
    /// Whether it was made for this message.
    pub(super) fn is_for(&self, info: &StatementInfo<'_>) -> bool {
        *self.sql == *info.sql && self.protocol == info.protocol
    }
}

/// The text a grant's fingerprint and an announcement show: each statement normalised
/// (literals as `?`); a statement whose reading is ambiguous by the hash of its text, so only
/// the very same text shares its fingerprint.
fn normalised_message(info: &StatementInfo<'_>, judgement: &Judgement) -> String {
    let parts: Vec<String> = judgement
        .parts
        .iter()
        .map(|p| {
            if p.ambiguous || p.described.normalised.is_empty() {
                let raw = info.sql.get(p.span.clone()).unwrap_or(info.sql);
                format!("<unreadable statement sha256:{}>", crate::approval::fingerprint(raw))
            } else {
                p.described.normalised.to_string()
            }
        })
        .collect();
    parts.join("; ")
}

impl SessionGovern {
    /// A message that needs approval (`decided`: the decision on it, when asked again).
    pub(super) fn hold(
        &self,
        info: &StatementInfo<'_>,
        mut judgement: Judgement,
        decided: Option<Decided>,
        bind: Option<ApprovedBind>,
    ) -> Verdict {
        if let Some(decided) = decided {
            return match &decided.outcome {
                Outcome::Approved { by, reason, .. } => {
                    let because = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    let why = format!("approved by {by}{because} (approval request {})", decided.id);
                    approve(&mut judgement, &why);
                    if info.protocol == QueryProtocol::Extended && info.parameters.is_some() {
                        *self.approved_bind.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(ApprovedBind { sql: Arc::from(info.sql), why: Arc::from(why) });
                    }
                    self.pass(info, judgement)
                }
                other => {
                    let message = other.refusal(&decided.id).unwrap_or_else(|| "warden: statement refused".into());
                    self.refuse_held(info, judgement, message)
                }
            };
        }
        // The Execute of the portal an approved Bind just made (judged again because the server
        // had not confirmed the Bind yet): the approval covers it. Only an Execute is judged
        // without parameters and with the text known besides a Parse, and a Parse runs nothing.
        if let Some(bind) = bind
            && info.protocol == QueryProtocol::Extended
            && info.parameters.is_none()
            && info.text_known
            && *bind.sql == *info.sql
        {
            approve(&mut judgement, &bind.why);
            return self.pass(info, judgement);
        }
        let parse_runs_nothing = info.protocol == QueryProtocol::Extended
            && info.parameters.is_none()
            && info.text_known
            && judgement.parts.iter().all(|p| !p.ambiguous && !p.effects.with(p.class).contains(Class::Unknown));
        if parse_runs_nothing {
            return self.pass(info, judgement);
        }
        let (Some(approvals), Some(origin)) = (&self.governor.approvals, &self.origin) else {
            return self.refuse(info, judgement);
        };
        // The audit trail may refuse it (audit.required with the ring unavailable): before anyone
        // is asked.
        if let deny @ Verdict::Deny { .. } = self.next.before_statement(info) {
            return deny;
        }
        let normalised = normalised_message(info, &judgement);
        if let Some(id) = approvals.granted(&origin.identity, &self.database, judgement.role.as_deref(), &normalised) {
            approve(&mut judgement, &format!("approved by the grant of approval request {id}"));
            return Verdict::Allow(Some(Arc::new(judgement)));
        }
        let Some((_, part)) = judgement.refusing_part() else {
            return self.refuse(info, judgement);
        };
        let terms = part.approval.clone().unwrap_or_else(|| Arc::new(ApprovalTerms::standard()));
        let mut text = info.sql.to_string();
        if text.len() > MAX_HELD_TEXT {
            let mut cut = MAX_HELD_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let more = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!("… ({more} more bytes)"));
        }
        let draft = Draft {
            session: origin.session,
            identity: origin.identity.clone(),
            database: self.database.clone(),
            role: judgement.role.clone(),
            statement: normalised,
            text,
            params: info.parameters.map(|p| p.rendered(64, 1024)),
            protocol: info.protocol.as_str(),
            class: part.class.as_str().to_string(),
            class_reason: part.class_reason.as_deref().map(str::to_string),
            relations: part.described.analysis.relations.iter().map(ToString::to_string).collect(),
            policy: part.policy.as_deref().map(str::to_string),
            rule: part.rule.as_deref().map(str::to_string),
            reason: part.reason.to_string(),
            terms,
        };
        let held = match approvals.hold(draft) {
            Ok(held) => held,
            Err(e @ (HoldError::Stopping | HoldError::Full)) => {
                let message = format!("warden: statement requires approval, and it cannot be held: {e}");
                return self.refuse_held(info, judgement, message);
            }
        };
        tracing::info!(
            request = %held.request.id,
            database = %self.database,
            statement = %held.request.statement,
            protocol = info.protocol.as_str(),
            parameters = info.parameters.is_some(),
            "statement held for approval"
        );
        let slot = self.decided.clone();
        let sql: Arc<str> = Arc::from(info.sql);
        let protocol = info.protocol;
        Verdict::Hold(Box::pin(async move {
            let id = held.request.id.clone();
            let outcome = held.decision().await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Decided { sql, protocol, id, outcome });
            Verdict::AskAgain
        }))
    }

    /// Forwarded, if the audit trail can record it.
    fn pass(&self, info: &StatementInfo<'_>, judgement: Judgement) -> Verdict {
        match self.next.before_statement(info) {
            Verdict::Allow(_) => Verdict::Allow(Some(Arc::new(judgement))),
            other => other,
        }
    }

    /// Refused after (or instead of) a hold: the held parts say why.
    fn refuse_held(&self, info: &StatementInfo<'_>, mut judgement: Judgement, message: String) -> Verdict {
        let why: Arc<str> = Arc::from(message.trim_start_matches("warden: "));
        for part in judgement.parts.iter_mut().filter(|p| p.decision == Decision::Hold) {
            part.reason = why.clone();
        }
        self.next.on_refused(info, &judgement);
        Verdict::Deny { sqlstate: SqlState::INSUFFICIENT_PRIVILEGE, message }
    }
}

/// The held parts run: their reason says who approved.
fn approve(judgement: &mut Judgement, why: &str) {
    let why: Arc<str> = Arc::from(why);
    for part in judgement.parts.iter_mut().filter(|p| p.decision == Decision::Hold) {
        part.decision = Decision::Allow;
        part.reason = why.clone();
    }
}
