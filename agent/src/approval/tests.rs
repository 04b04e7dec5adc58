use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::*;
use crate::{cgroup::CgroupId, config::AuditConfig};

/// A registry whose audit ring is in a fresh directory, removed when the guard drops.
fn approvals() -> (tempfile::TempDir, Arc<Approvals>) {
    let dir = crate::test_dir("warden-approvals-");
    let config = AuditConfig { path: dir.path().join("audit.ring"), ring_bytes: 1 << 20, ..AuditConfig::default() };
    let (audit, _writer) = AuditLog::open(&config).unwrap();
    (dir, Approvals::new(audit, Webhooks::disabled()))
}

fn identity(labels: &[(&str, &str)]) -> Arc<Identity> {
    let mut id = Identity::from_facts(&crate::flow::KernelFacts {
        pid: 42,
        tid: 42,
        uid: 1000,
        gid: 1000,
        comm: "psql".into(),
        cgroup_id: CgroupId(7),
        netns_cookie: 1,
    });
    id.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    Arc::new(id)
}

fn draft(statement: &str, terms: ApprovalTerms) -> Draft {
    Draft {
        session: SessionId(1),
        identity: identity(&[("warden/identity", "bot")]),
        database: Arc::from("main"),
        role: Some(Arc::from("app")),
        statement: statement.into(),
        fingerprinted: statement.into(),
        text: statement.replace('?', "1"),
        params: None,
        function_oid: None,
        protocol: "simple",
        asked: Asked {
            class: "write".into(),
            class_reason: None,
            relations: vec!["public.t".into()],
            policy: Some("p".into()),
            rule: Some("r".into()),
            reason: "because".into(),
        },
        terms: Arc::new(terms),
        once_because: None,
    }
}

fn root() -> Approver {
    Approver { uid: 0, user: Some("root".into()), pid: Some(1), exe: None }
}

#[tokio::test]
async fn an_approval_reaches_the_held_session_once() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t where id = ?", ApprovalTerms::standard())).unwrap();
    let id = held.request.id.clone();
    assert_eq!(a.pending().len(), 1);
    let outcome = a.decide(&id, root(), true, Some("ok".into())).unwrap();
    assert!(matches!(outcome, Outcome::Approved { grant_until_ms: None, .. }));
    assert!(matches!(held.decision().await, Outcome::Approved { .. }));
    // Decided once: a second decision finds nothing.
    assert_eq!(a.decide(&id, root(), false, None), Err(DecideError::NotPending(id)));
    assert!(a.pending().is_empty());
}

#[tokio::test]
async fn a_denial_names_the_approver_and_the_reason() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t", ApprovalTerms::standard())).unwrap();
    let id = held.request.id.clone();
    a.decide(&id, root(), false, Some("not now".into())).unwrap();
    let outcome = held.decision().await;
    let message = outcome.refusal(&id).unwrap();
    assert!(message.contains("denied by approver root (uid 0): not now"), "{message}");
    assert!(message.contains(&id));
}

#[tokio::test]
async fn nobody_deciding_times_out_and_a_late_decision_finds_nothing() {
    let (_dir, a) = approvals();
    let terms = ApprovalTerms { timeout: Duration::from_secs(1), ..ApprovalTerms::standard() };
    let held = a.hold(draft("delete from t", terms)).unwrap();
    let id = held.request.id.clone();
    let outcome = held.decision().await;
    assert_eq!(outcome, Outcome::TimedOut { after_s: 1 });
    assert!(outcome.refusal(&id).unwrap().contains("no approver decided within 1s"));
    assert!(a.decide(&id, root(), true, None).is_err());
}

#[tokio::test]
async fn dropping_a_hold_cancels_its_request() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t", ApprovalTerms::standard())).unwrap();
    let id = held.request.id.clone();
    let mut notices = a.subscribe();
    drop(held);
    assert!(a.pending().is_empty());
    match notices.recv().await.unwrap() {
        Notice::Decided { id: got, outcome: Outcome::Cancelled { .. }, .. } => assert_eq!(got, id),
        other => panic!("{other:?}"),
    }
    assert!(a.decide(&id, root(), true, None).is_err(), "a cancelled request cannot be approved");
}

#[tokio::test]
async fn a_timed_grant_covers_the_same_fingerprint_identity_and_role_only() {
    let (_dir, a) = approvals();
    let terms = ApprovalTerms { grant: Grant::For(Duration::from_secs(600)), ..ApprovalTerms::standard() };
    let held = a.hold(draft("delete from t where id = ?", terms)).unwrap();
    let id = held.request.id.clone();
    let bot = identity(&[("warden/identity", "bot")]);
    assert_eq!(a.granted(&bot, "main", Some("app"), "delete from t where id = ?"), None, "not before approval");
    a.decide(&id, root(), true, None).unwrap();
    assert!(matches!(held.decision().await, Outcome::Approved { grant_until_ms: Some(_), .. }));
    assert_eq!(a.granted(&bot, "main", Some("app"), "delete from t where id = ?"), Some(id));
    assert_eq!(a.granted(&bot, "main", Some("app"), "delete from t"), None, "another statement");
    assert_eq!(a.granted(&bot, "main", Some("admin"), "delete from t where id = ?"), None, "another role");
    assert_eq!(a.granted(&bot, "other", Some("app"), "delete from t where id = ?"), None, "another database");
    let other = identity(&[("warden/identity", "other")]);
    assert_eq!(a.granted(&other, "main", Some("app"), "delete from t where id = ?"), None, "another identity");
}

#[tokio::test]
async fn a_once_approval_grants_nothing_after_it() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t where id = ?", ApprovalTerms::standard())).unwrap();
    let id = held.request.id.clone();
    a.decide(&id, root(), true, None).unwrap();
    held.decision().await;
    let bot = identity(&[("warden/identity", "bot")]);
    assert_eq!(a.granted(&bot, "main", Some("app"), "delete from t where id = ?"), None);
}

#[tokio::test]
async fn a_stopping_registry_refuses_what_is_held_and_holds_nothing_new() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t", ApprovalTerms::standard())).unwrap();
    assert_eq!(a.refuse_all("the agent is stopping"), 1);
    assert!(matches!(held.decision().await, Outcome::Refused { .. }));
    assert!(matches!(a.hold(draft("delete from t", ApprovalTerms::standard())), Err(HoldError::Stopping)));
    a.settled(Duration::from_millis(100)).await;
}

#[test]
fn the_listed_request_carries_no_text_and_the_detail_does() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (_dir, a) = approvals();
        let held = a.hold(draft("delete from t where id = ?", ApprovalTerms::standard())).unwrap();
        let listed = serde_json::to_value(&*held.request).unwrap();
        assert!(listed.get("text").is_none() && listed.get("params").is_none(), "{listed}");
        assert_eq!(listed["statement"], "delete from t where id = ?");
        assert_eq!(held.request.detail()["text"], "delete from t where id = 1");
        let body: serde_json::Value = serde_json::from_slice(&announcement(&held.request)).unwrap();
        assert!(!body.to_string().contains("id = 1"), "no literal in the announcement: {body}");
        assert!(body["text"].as_str().unwrap().contains(&held.request.id));
    });
}

#[tokio::test]
async fn a_statement_that_cannot_be_granted_is_approved_once_whatever_the_terms() {
    let (_dir, a) = approvals();
    let terms = ApprovalTerms { grant: Grant::For(Duration::from_secs(600)), ..ApprovalTerms::standard() };
    let mut d = draft("do ?", terms);
    d.once_because = Some("what it runs is not known".into());
    let held = a.hold(d).unwrap();
    assert_eq!(held.request.grant, "once (what it runs is not known)");
    let id = held.request.id.clone();
    a.decide(&id, root(), true, None).unwrap();
    assert!(matches!(held.decision().await, Outcome::Approved { grant_until_ms: None, .. }));
    let bot = identity(&[("warden/identity", "bot")]);
    assert_eq!(a.granted(&bot, "main", Some("app"), "do ?"), None);
}

#[tokio::test]
async fn one_identity_cannot_take_every_place() {
    let (_dir, a) = approvals();
    let mut held = Vec::new();
    for _ in 0..MAX_PENDING_PER_IDENTITY {
        held.push(a.hold(draft("delete from t", ApprovalTerms::standard())).unwrap());
    }
    assert!(matches!(a.hold(draft("delete from t", ApprovalTerms::standard())), Err(HoldError::IdentityFull)));
    let mut other = draft("delete from t", ApprovalTerms::standard());
    other.identity = identity(&[("warden/identity", "other")]);
    assert!(a.hold(other).is_ok(), "another identity is still held");
}

#[tokio::test]
async fn a_long_statement_is_shown_cut_with_its_length_and_hash() {
    let (_dir, a) = approvals();
    let long = format!("delete from t where {}", "a = ? and ".repeat(1000));
    let held = a.hold(draft(&long, ApprovalTerms::standard())).unwrap();
    assert!(held.request.statement.len() <= MAX_STATEMENT_SHOWN + 3);
    assert_eq!(held.request.statement_bytes, long.len());
    assert!(held.request.statement_sha256.is_some());
    assert_eq!(held.request.fingerprint, fingerprint(&long), "the fingerprint is of the whole");
}

#[tokio::test]
async fn a_client_cancel_cancels_its_sessions_hold() {
    let (_dir, a) = approvals();
    let held = a.hold(draft("delete from t", ApprovalTerms::standard())).unwrap();
    assert!(!a.cancel_session(SessionId(2)), "another session's cancel touches nothing");
    assert!(a.cancel_session(SessionId(1)));
    assert!(matches!(held.decision().await, Outcome::Cancelled { .. }));
}
