//! Masking (in progress, issue 10): what a protected value becomes (`method`), the keys behind
//! deterministic tokens and format-preserving values (`keys`), and the value detectors that are
//! the safety net where a value's lineage is unknown (`detect`). Not wired into sessions yet:
//! policies cannot name masking rules, and no result is masked.

pub mod detect;
pub mod keys;
pub mod method;
pub mod plan;
