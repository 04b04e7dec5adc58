//! The `warden` command: the agent (`run`) and the operator's tools.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use warden::{
    cgroup,
    config::Config,
    ebpf, exec, netif,
    run::{self, AGENT_CGROUP},
};

const DEFAULT_CONFIG: &str = "/etc/warden/warden.yaml";

#[derive(Parser)]
#[command(name = "warden", version, about = "Governs every database connection made on this host")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: attach the kernel programs, serve the proxy, record what happens.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run a command in a cgroup labelled with the given labels.
    Exec {
        /// A label KEY=VALUE (repeatable), e.g. warden/identity=recsys-agent.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The agent's configuration (for its state directory and cgroup root).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Detach the kernel programs and remove everything a stopped agent left behind.
    Detach {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show whether programs are attached, the agent's heartbeat and the kernel counters.
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it governs.
    CheckConfig { config: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("warden: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Run { config } => {
            run::run(Config::load(&config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { labels, config, command } => {
            let (root, state) = match config {
                Some(path) => {
                    let c = Config::load(&path)?;
                    (c.cgroup_root, c.state_dir)
                }
                None => (cgroup::default_root(), PathBuf::from("/run/warden")),
            };
            let labels = exec::parse_labels(&labels)?;
            let code = exec::exec(&root, &state, labels, &command)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Detach { config } => {
            let config = Config::load(&config)?;
            ebpf::detach_pinned(&config.bpffs_dir)?;
            if let Some(name) = &config.proxy.interface {
                netif::remove(name)?;
            }
            // Empty cgroups only: a live agent or workload keeps its own.
            for rel in [AGENT_CGROUP, exec::WORKLOADS_CGROUP] {
                let _ = std::fs::remove_dir(config.cgroup_root.join(rel));
            }
            println!("detached: no Warden programs remain attached from {}", config.bpffs_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { config } => status(&Config::load(&config)?),
        Cmd::CheckConfig { config } => {
            let config = Config::load(&config)?;
            for db in &config.databases {
                println!(
                    "{:<20} {:<28} {:?} {:?} fail={:?}",
                    db.name,
                    db.address.to_string(),
                    db.protocol,
                    db.mode,
                    db.fail
                );
            }
            println!("ok: {} database(s), proxy {}", config.databases.len(), config.proxy.listen_v4);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status(config: &Config) -> Result<ExitCode> {
    if !ebpf::is_attached(&config.bpffs_dir) {
        println!("attached: no");
        return Ok(ExitCode::from(3));
    }
    let state = ebpf::pinned_state(&config.bpffs_dir).context("reading the pinned agent state")?;
    let age_ms = ebpf::monotonic_ns().saturating_sub(state.heartbeat_ns) / 1_000_000;
    let serving = state.serving == 1 && age_ms * 1_000_000 < agent_common::HEARTBEAT_STALE_NS;
    println!("attached: yes");
    println!("serving: {} (heartbeat {age_ms} ms ago)", if serving { "yes" } else { "no" });
    let stats = ebpf::Stats::from_pin(&config.bpffs_dir)?.read();
    let names = ["redirected", "exempted", "ungoverned", "refused", "observed", "events_lost", "flows_recorded"];
    for (name, value) in names.iter().zip(stats) {
        println!("{name}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}
