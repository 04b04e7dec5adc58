//! Warden's agent: kernel-program loader, identity resolution (processes, cgroups, Kubernetes
//! pods), the proxy and the audit trail.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod cgroup;
pub mod config;
pub mod ebpf;
pub mod exec;
pub mod flow;
pub mod govern;
pub mod handover;
pub mod identity;
pub mod keeper;
pub mod kubernetes;
pub mod mask;
pub mod net;
pub mod pg;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod session;
pub mod sql;
