//! Developer and CI entry points: `cargo xtask setup | build | run | demo | test | bench`.

mod bench;
mod demo;
mod fuzz;
mod setup;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Warden's build, setup, demo, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running need (idempotent).
    Setup,
    /// Build the agent (userspace and the embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `warden run --config FILE` (needs root).
    Run {
        #[arg(long, default_value = "deploy/warden.yaml")]
        config: PathBuf,
        #[arg(long)]
        release: bool,
    },
    /// Start a throwaway PostgreSQL and the agent, and show governance happening.
    Demo,
    /// Unit tests, then the root-only integration tests on the real kernel.
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Benchmarks printed as ratios to a baseline measured in the same run.
    Bench,
    /// The bench's zero-work relay (started by `bench`, not by hand).
    #[command(hide = true)]
    BenchRelay { listen: std::net::SocketAddr, target: std::net::SocketAddr },
    /// Fuzz the protocol decoders and the session state machine for a bounded time.
    Fuzz {
        /// Seconds per fuzz target (or for the differential run).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Differential mode (needs root): generated client scripts, and the frontend target's
        /// corpus, run directly against PostgreSQL and through Warden; the first diverging byte
        /// of each script whose answers differ is reported.
        #[arg(long)]
        differential: bool,
        /// The differential generator's seed (default: the time).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup(),
        // Building needs the toolchain parts only (no PostgreSQL): what the container build runs.
        Task::Build { release } => setup::build_tools().and_then(|()| build(release)),
        Task::Run { config, release } => setup::setup()
            .and_then(|()| build(release))
            .and_then(|()| run(Command::new(warden_binary(release)).arg("run").arg("--config").arg(config))),
        Task::Demo => setup::setup()
            .and_then(|()| require_root("demo"))
            .and_then(|()| build(false))
            .and_then(|()| demo::demo(&warden_binary(false))),
        Task::Test { filter } => setup::setup().and_then(|()| test(filter)),
        Task::BenchRelay { listen, target } => bench::relay::serve(listen, target),
        Task::Bench => setup::setup()
            .and_then(|()| require_root("bench"))
            .and_then(|()| build(true))
            .and_then(|()| bench::bench(&warden_binary(true))),
        Task::Fuzz { seconds, differential: false, .. } => setup::setup().and_then(|()| fuzz::fuzz(seconds)),
        Task::Fuzz { seconds, differential: true, seed } => setup::setup()
            .and_then(|()| require_root("fuzz --differential"))
            .and_then(|()| build(false))
            .and_then(|()| fuzz::differential(seconds, seed)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

pub fn warden_binary(release: bool) -> PathBuf {
    workspace_root().join("target").join(if release { "release" } else { "debug" }).join("warden")
}

pub fn is_root() -> bool {
    // The effective uid from procfs: no libc dependency needed in xtask.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1)) == Some("0")
    })
}

fn require_root(task: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {task}` attaches eBPF programs and must run as root");
    }
    Ok(())
}

/// Runs a command, inheriting stdio, and fails if it does.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A cargo command in the workspace, without the variables cargo set for running xtask itself:
/// build scripts that read one (ring's reads `CARGO_MANIFEST_DIR`) would otherwise see it
/// change between a direct `cargo build` and one from xtask, and rebuild everything above them
/// (a 6-minute relink of the release agent).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    without_run_env(&mut cmd);
    cmd
}

/// Removes from `cmd`'s environment the variables cargo set for running xtask (see `cargo`).
pub fn without_run_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

pub fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "warden-agent", "--bin", "warden"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(filter: Option<String>) -> Result<()> {
    // Unit tests of every userspace crate (no root needed).
    run(cargo().args(["test", "--workspace", "--exclude", "agent-ebpf", "--exclude", "warden-integration"]))?;
    require_root("test")?;
    build(false)?;
    // Integration tests attach host-wide programs: one at a time, each cleaning up after itself.
    let mut cmd = cargo();
    // `--tests`: no doctest pass after the integration tests, so the run closes on their summary.
    cmd.args(["test", "--package", "warden-integration", "--tests", "--", "--test-threads=1"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    cmd.env("WARDEN_BIN", warden_binary(false));
    run(&mut cmd)
}
