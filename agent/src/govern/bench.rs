//! `warden policy bench`: what analysing and judging a statement costs, uncached (parsed and
//! classified from its text) and cached (a statement text seen before), measured in-process on
//! representative statements. Numbers to read, not a threshold.

use std::{collections::BTreeMap, time::Instant};

use crate::{
    policy::{PolicySet, StatementFacts, Subject},
    sql::{DescriptionCache, LexOptions, ObjectName, analyse, normalise_for_analysis},
};

/// Statements of the shapes applications send (pgbench's among them).
const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
    "UPDATE pgbench_accounts SET abalance = abalance + -1420 WHERE aid = 9123",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 71234, 2211, CURRENT_TIMESTAMP)",
    "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > now() - interval '1 day' ORDER BY o.total DESC LIMIT 50",
    "WITH recent AS (SELECT customer_id, sum(total) AS spent FROM orders WHERE created_at > '2026-01-01' GROUP BY customer_id) SELECT c.name, r.spent FROM recent r JOIN customers c USING (customer_id) WHERE r.spent > 1000",
    "DELETE FROM sessions WHERE expires_at < now() AND user_id = $1",
];

/// Microseconds per statement.
pub struct AnalysisCost {
    /// Normalised, parsed and classified, no cache.
    pub uncached_us: f64,
    /// Described through the description cache (a text seen before: one lookup).
    pub cached_us: f64,
    /// Described (cached) and decided by the policy set.
    pub judged_us: f64,
}

/// Measures `rounds` passes over the statements, deciding with `set` for an identity it selects.
pub fn measure(set: &PolicySet, labels: &BTreeMap<String, String>, rounds: u32) -> AnalysisCost {
    let n = f64::from(rounds.max(1)) * STATEMENTS.len() as f64;
    let started = Instant::now();
    for _ in 0..rounds.max(1) {
        for s in STATEMENTS {
            std::hint::black_box(analyse(&normalise_for_analysis(s)));
        }
    }
    let uncached_us = started.elapsed().as_secs_f64() * 1e6 / n;
    let cache = DescriptionCache::new(64);
    let options = LexOptions::default();
    for s in STATEMENTS {
        cache.describe_with(s, options);
    }
    let started = Instant::now();
    for _ in 0..rounds.max(1) {
        for s in STATEMENTS {
            std::hint::black_box(cache.describe_with(s, options));
        }
    }
    let cached_us = started.elapsed().as_secs_f64() * 1e6 / n;
    let selection = set.select(&Subject { labels, database: "bench", user: None });
    let started = Instant::now();
    for _ in 0..rounds.max(1) {
        for s in STATEMENTS {
            let d = cache.describe_with(s, options);
            let a = &d.analysis;
            let names = |list: &[ObjectName]| list.iter().map(|n| vec![n.clone()]).collect::<Vec<_>>();
            let (relations, functions) = (names(&a.relations), names(&a.functions));
            let facts = StatementFacts {
                class: a.class,
                effects: a.effects,
                relations: &relations,
                functions: &functions,
                unscoped: a.unscoped,
                tags: &d.tags,
                reason: a.class_reason.as_deref(),
            };
            std::hint::black_box(selection.decide(set, &facts));
        }
    }
    let judged_us = started.elapsed().as_secs_f64() * 1e6 / n;
    AnalysisCost { uncached_us, cached_us, judged_us }
}
