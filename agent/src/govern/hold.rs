//! A statement judged `require_approval`: held while an approval request waits for a decision
//! (the registry in `approval`), then judged again with the decision in hand. Holding happens
//! through the hooks' `Verdict::Hold`: the protocol session relays nothing of the session after
//! the held message until the hold resolves, and cancels it if the client leaves.
//!
//! A decision applies to the message it was made for and to nothing else: it is kept with that
//! message's number (`StatementInfo::message`), which no other message shares.
//!
//! Under the extended protocol a statement is judged at Parse, at Bind and (when its portal's
//! judgement cannot be carried) at Execute. A Parse runs nothing of a statement whose effects
//! are all known, so such a Parse passes and the Bind is held: the approver then sees the
//! parameters it will run with. A Parse whose effects are not known (it may run code while
//! parsing) is itself held, and so is an Execute judged again that would be. An approved Bind
//! covers the Execute of the very portal it made, when that Execute is the next message judged
//! (a pipeline runs a portal before the server confirmed its Bind).

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::SessionGovern;
use crate::{
    approval::{Asked, Draft, Outcome, Params},
    policy::{ApprovalTerms, Grant},
    session::{
        Decision, Judgement, SqlState,
        hooks::{StatementInfo, Step, Verdict},
    },
    sql::Class,
};

/// Approvers see at most this much of a held text.
const MAX_HELD_TEXT: usize = 64 * 1024;
/// ... and at most this many parameters, each cut to `MAX_PARAM_BYTES` (the request says so).
const MAX_PARAMS: usize = 64;
const MAX_PARAM_BYTES: usize = 1024;

/// An approved Bind: the Execute of its portal, when judged next, is covered by the approval.
pub(super) struct ApprovedBind {
    portal: Vec<u8>,
    sql: Arc<str>,
    why: Arc<str>,
}

/// The decision on a held message, kept for that message (by its number) only.
pub(super) struct Decided {
    message: u64,
    id: String,
    outcome: Outcome,
}

impl Decided {
    /// Whether it was made for this message.
    pub(super) fn is_for(&self, info: &StatementInfo<'_>) -> bool {
        self.message == info.message
    }
}

/// A held message as a request shows it, and as its grant fingerprint hashes it.
struct HeldText {
    /// Normalised, every literal as `?`: what lists, records and webhooks show.
    shown: String,
    /// The analysis form (literals that decide what a statement does kept), with each part's
    /// class, effects, policy and rule.
    fingerprinted: String,
    /// Why an approval of it grants nothing beyond it, whatever the terms say.
    once_because: Option<String>,
}

/// Text cut to at most `max` bytes on a character boundary, saying how much was left out.
fn capped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} more bytes)", &text[..cut], text.len() - cut)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl SessionGovern {
    /// What a request shows of a held message, and what its grant fingerprint hashes (see
    /// `HeldText`).
    fn held_text(&self, info: &StatementInfo<'_>, judgement: &Judgement) -> HeldText {
        let mut once_because = None;
        if !info.text_known || info.sql.is_empty() {
            once_because = Some("the text that runs is not known".to_string());
        }
        let options = info.lexing.options();
        // A PREPARE earlier in the same message is what a later EXECUTE of it runs (as judged).
        let mut prepared_here: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut shown_parts = Vec::with_capacity(judgement.parts.len());
        let mut fingerprinted = String::new();
        for p in &judgement.parts {
            let raw = info.sql.get(p.span.clone()).unwrap_or(info.sql);
            if p.described.analysis.prepares.is_some()
                && !p.ambiguous
                && let Some(crate::sql::PreparedCommand::Prepare { name, body }) =
                    crate::sql::prepared_statement_command(raw, options)
            {
                prepared_here.insert(name, body.to_string());
            }
            let effects = p.effects.with(p.class);
            if effects.contains(Class::Unknown) {
                // What unknown code does is in its literals (a DO body, a function's source):
                // the same shape is not the same statement.
                once_because.get_or_insert_with(|| "what it runs is not known".to_string());
            }
            if effects.contains(Class::Dcl) {
                // Which role or privilege is in a literal (SET ROLE 'x', set_config('role',..)).
                once_because.get_or_insert_with(|| "it changes roles or privileges".to_string());
            }
            if p.described.analysis.fetches.is_some() {
                once_because.get_or_insert_with(|| "a FETCH runs what its cursor holds".to_string());
            }
            if p.ambiguous || p.described.normalised.is_empty() {
                once_because.get_or_insert_with(|| "its text cannot be read unambiguously".to_string());
                let unreadable = format!("<unreadable statement sha256:{}>", hex_sha256(raw.as_bytes()));
                fingerprinted.push_str(&unreadable);
                shown_parts.push(unreadable);
                continue;
            }
            let mut shown = p.described.normalised.to_string();
            // The form analysis reads: literals that decide what a statement does (the setting
            // set_config names, EXPLAIN's ANALYZE option) are kept.
            fingerprinted.push_str(&crate::sql::normalise_for_analysis_with_options(raw, options));
            if let Some(name) = &p.described.analysis.executes {
                let body = prepared_here.get(name).map(|body| (body.clone(), options)).or_else(|| {
                    (info.prepared)(name).map(|(body, lexing)| {
                        let options = lexing.options();
                        (body.to_string(), options)
                    })
                });
                match body {
                    Some((body, options)) => {
                        shown.push_str(&format!(" -- runs: {}", crate::sql::normalise_with_options(&body, options)));
                        fingerprinted.push_str(" -- runs: ");
                        fingerprinted.push_str(&crate::sql::normalise_for_analysis_with_options(&body, options));
                    }
                    None => {
                        shown.push_str(" -- runs: (a prepared statement the proxy did not see)");
                        once_because.get_or_insert_with(|| "what it runs is not known".to_string());
                    }
                }
            }
            // And how it was judged: a grant covers the same effects asked about by the same
            // rule, nothing that judges differently.
            let classes: Vec<&str> = effects.iter().map(Class::as_str).collect();
            fingerprinted.push_str(&format!(
                "\n-- {} [{}] {}/{}\n",
                p.class.as_str(),
                classes.join(","),
                p.policy.as_deref().unwrap_or("-"),
                p.rule.as_deref().unwrap_or("-")
            ));
            shown_parts.push(shown);
        }
        HeldText { shown: shown_parts.join("; "), fingerprinted, once_because }
    }

    /// The terms of a message with several held statements: the strictest of each (the
    /// shortest timeout; a grant only if every rule grants, for the shortest of them).
    fn held_terms(judgement: &Judgement) -> Arc<ApprovalTerms> {
        let held: Vec<Arc<ApprovalTerms>> = judgement
            .parts
            .iter()
            .filter(|p| p.decision == Decision::Hold)
            .map(|p| p.approval.clone().unwrap_or_else(|| Arc::new(ApprovalTerms::standard())))
            .collect();
        let Some(first) = held.first() else {
            return Arc::new(ApprovalTerms::standard());
        };
        if held.len() == 1 {
            return first.clone();
        }
        let timeout = held.iter().map(|t| t.timeout).min().unwrap_or(ApprovalTerms::DEFAULT_TIMEOUT);
        let grant = held.iter().try_fold(None, |shortest: Option<std::time::Duration>, t| match t.grant {
            Grant::Once => Err(()),
            Grant::For(d) => Ok(Some(shortest.map_or(d, |s| s.min(d)))),
        });
        let grant = match grant {
            Ok(Some(d)) => Grant::For(d),
            _ => Grant::Once,
        };
        let webhook = held.iter().find_map(|t| t.webhook.clone());
        Arc::new(ApprovalTerms { timeout, grant, webhook })
    }

    /// A message that needs approval (`decided`: the decision on it, when asked again; `bind`:
    /// the Bind approved just before, if the previous judged message was one).
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
                    let verdict = self.pass(info, judgement);
                    // Only a Bind that is forwarded covers its Execute.
                    if info.step == Step::Bind && matches!(verdict, Verdict::Allow(_)) {
                        *self.approved_bind.lock().unwrap_or_else(|p| p.into_inner()) = Some(ApprovedBind {
                            portal: info.portal.to_vec(),
                            sql: Arc::from(info.sql),
                            why: Arc::from(why),
                        });
                    }
                    verdict
                }
                other => {
                    let message = other.refusal(&decided.id).unwrap_or_else(|| "warden: statement refused".into());
                    self.refuse_held(info, judgement, message)
                }
            };
        }
        // The Execute of the portal the Bind approved just before made (judged again because the
        // server had not confirmed that Bind yet): the same approval.
        if let Some(bind) = bind
            && info.step == Step::Execute
            && info.text_known
            && info.portal == bind.portal.as_slice()
            && *bind.sql == *info.sql
        {
            approve(&mut judgement, &bind.why);
            return self.pass(info, judgement);
        }
        let parse_runs_nothing = info.step == Step::Prepare
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
        let text = self.held_text(info, &judgement);
        let terms = Self::held_terms(&judgement);
        // Only where the rules in force still grant (a reload to `grant: once` ends grants).
        if text.once_because.is_none()
            && matches!(terms.grant, Grant::For(_))
            && let Some(id) =
                approvals.granted(&origin.identity, &self.database, judgement.role.as_deref(), &text.fingerprinted)
        {
            approve(&mut judgement, &format!("approved by the grant of approval request {id}"));
            return Verdict::Allow(Some(Arc::new(judgement)));
        }
        let held: Vec<_> = judgement.parts.iter().filter(|p| p.decision == Decision::Hold).collect();
        let Some(part) = held.first() else {
            return self.refuse(info, judgement);
        };
        let mut relations: Vec<String> = Vec::new();
        let mut rules: Vec<String> = Vec::new();
        let mut policies: Vec<String> = Vec::new();
        for p in &judgement.parts {
            for r in p.described.analysis.relations.iter() {
                let r = r.to_string();
                if !relations.contains(&r) {
                    relations.push(r);
                }
            }
        }
        for p in &held {
            if let Some(r) = p.rule.as_deref().map(str::to_string).filter(|r| !rules.contains(r)) {
                rules.push(r);
            }
            if let Some(x) = p.policy.as_deref().map(str::to_string).filter(|x| !policies.contains(x)) {
                policies.push(x);
            }
        }
        let params = info.parameters.map(|p| {
            let values = p.values();
            let count = values.len();
            let cut = count > MAX_PARAMS || values.iter().any(|(v, _)| v.is_some_and(|v| v.len() > MAX_PARAM_BYTES));
            Params { shown: p.rendered(MAX_PARAMS, MAX_PARAM_BYTES), count, cut, sha256: hex_sha256(p.message) }
        });
        let draft = Draft {
            session: origin.session,
            identity: origin.identity.clone(),
            database: self.database.clone(),
            role: judgement.role.clone(),
            statement: text.shown,
            fingerprinted: text.fingerprinted,
            text: capped(info.sql, MAX_HELD_TEXT),
            params,
            function_oid: info.function_oid,
            protocol: info.protocol.as_str(),
            asked: Asked {
                class: part.class.as_str().to_string(),
                class_reason: part.class_reason.as_deref().map(str::to_string),
                relations,
                policy: (!policies.is_empty()).then(|| policies.join(", ")),
                rule: (!rules.is_empty()).then(|| rules.join(", ")),
                reason: held.iter().map(|p| p.reason.to_string()).collect::<Vec<_>>().join("; "),
            },
            terms,
            once_because: text.once_because,
        };
        let held = match approvals.hold(draft) {
            Ok(held) => held,
            Err(e) => {
                let message = format!("warden: statement requires approval, and it cannot be held: {e}");
                return self.refuse_held(info, judgement, message);
            }
        };
        tracing::info!(
            request = %held.request.id,
            database = %self.database,
            rule = held.request.asked.rule.as_deref().unwrap_or("-"),
            "statement held for approval"
        );
        // A text long enough to have been described on the blocking pool is judged again from
        // the same description after the decision (not described again, not held again).
        if info.sql.len() > super::DESCRIBE_INLINE_MAX {
            let parts: Arc<[super::describe::DescribedPart]> = judgement
                .parts
                .iter()
                .map(|p| super::describe::DescribedPart {
                    span: p.span.clone(),
                    described: p.described.clone(),
                    ambiguous: p.ambiguous,
                })
                .collect();
            let simple = info.protocol == crate::session::QueryProtocol::Simple;
            *self.described.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Arc::from(info.sql), info.lexing, simple, parts));
        }
        let slot = self.decided.clone();
        let message = info.message;
        Verdict::Hold(Box::pin(async move {
            let id = held.request.id.clone();
            let outcome = held.decision().await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Decided { message, id, outcome });
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
        self.count(&judgement, Decision::Deny);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary_saying_how_much_is_left_out() {
        assert_eq!(capped("abc", 10), "abc");
        assert_eq!(capped("aé€b", 2), "a… (6 more bytes)");
    }
}
