//! Root-only integration tests, one binary: real kernel programs, a real PostgreSQL started by
//! the harness, real drivers. One binary links once (the agent with every test module), where a
//! binary per file linked thirteen times over and filled small CI disks.

mod approvals;
mod audit;
mod audit_hardening;
mod audit_share;
mod dns;
mod fidelity;
mod governance;
mod hardening;
mod kubernetes;
mod lexer_vs_server;
mod masking;
mod mysql;
mod mysql_corpus;
mod mysql_harness;
mod mysql_masking;
mod mysql_sha2;
mod policy;
mod policy_corpus;
mod postgres_drivers;
mod postgres_hooks;
mod postgres_robustness;
mod postgres_tls_auth;
mod rollout;
mod upgrade;
mod volume;
