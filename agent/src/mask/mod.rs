//! Masking: what a protected value becomes (`method`), the keys behind deterministic tokens and
//! format-preserving values (`keys`), the value detectors that are the safety net where a
//! value's lineage is unknown (`detect`), and each session's plan of which result columns are
//! masked and which statements are refused, with the filter values pass through (`plan`).

pub mod detect;
pub mod keys;
pub mod method;
pub mod plan;
