//! `cargo xtask setup`: everything a fresh machine of this kind needs, installed idempotently.
//!
//! Each step checks first and only acts when something is missing, so running it twice is
//! cheap (well under a second when everything is present).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd_output, run};

/// The bpf-linker release known to build against the nightly toolchain's own libLLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// psycopg 3 (with its binary wheel) for the driver compatibility tests.
const PSYCOPG: &str = "psycopg[binary]==3.3.9";
/// Where Debian's pgjdbc package puts the driver.
pub const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// What building the agent needs: the nightly toolchain's rust-src and bpf-linker.
pub fn build_tools() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

/// Runs every setup step.
pub fn setup() -> Result<()> {
    build_tools()?;
    debian_packages()?;
    python_drivers()?;
    kernel_filesystems()?;
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed =
        cmd_output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("listing nightly components (is the nightly toolchain installed?)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// LLVM major version and the path of libLLVM inside the nightly toolchain.
fn nightly_llvm() -> Result<(String, PathBuf, PathBuf)> {
    let vv = cmd_output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot = PathBuf::from(cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let libdir = sysroot.join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so")))
        .with_context(|| format!("no libLLVM*.so in {}", libdir.display()))?;
    Ok((major, libdir, lib))
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin")
}

fn bpf_linker() -> Result<()> {
    let (major, libdir, lib) = nightly_llvm()?;
    let stamp_dir = crate::workspace_root().join("target/xtask");
    let stamp = stamp_dir.join("bpf-linker.llvm");
    let binary = cargo_bin_dir().join("bpf-linker");
    let works = Command::new(&binary).arg("--version").output().is_ok_and(|o| o.status.success());
    let built_for = fs::read_to_string(&stamp).unwrap_or_default();
    // Without a stamp we cannot tell which LLVM an existing binary was linked against; a binary
    // that runs is trusted on the first run and the stamp records the current major.
    if works && (built_for.trim() == major || built_for.is_empty()) {
        fs::create_dir_all(&stamp_dir)?;
        fs::write(&stamp, &major)?;
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM {major}");
    let prefix = stamp_dir.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    run(Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", libdir.display())))?;
    fs::write(&stamp, &major)?;
    Ok(())
}

fn have_postgres_server() -> bool {
    fs::read_dir("/usr/lib/postgresql").is_ok_and(|dir| {
        dir.filter_map(|e| e.ok())
            .any(|e| e.path().join("bin/postgres").exists() && e.path().join("bin/initdb").exists())
    })
}

fn debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    if !have_postgres_server() {
        missing.extend(["postgresql", "postgresql-contrib"]);
    }
    for (binary, package) in [
        ("psql", "postgresql-client"),
        ("pgbench", "postgresql-contrib"),
        ("ip", "iproute2"),
        ("pgbouncer", "pgbouncer"),
        ("java", "default-jre-headless"),
        ("openssl", "openssl"),
        // The Kubernetes tests stand in for kube-proxy's DNAT with an nftables table.
        ("nft", "nftables"),
    ] {
        if !on_path(binary) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    if !Path::new(PGJDBC_JAR).exists() {
        missing.push("libpostgresql-jdbc-java");
    }
    // The system interpreter at a fixed path: tests run socket scripts as other users and inside
    // network namespaces, where a per-user Python on PATH may not be found.
    if !Path::new("/usr/bin/python3").exists() {
        missing.push("python3");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("setup needs root to install Debian packages: {}", missing.join(" "));
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn python_drivers() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import psycopg, sys; sys.exit(0 if psycopg.__version__ == '3.3.9' else 1)"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("setup: installing {PSYCOPG} from PyPI");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", PSYCOPG]))
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(binary).is_file()))
}

fn is_mounted(path: &Path, fstype: &str) -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next();
            f.next() == Some(path.to_str().unwrap_or_default()) && f.next() == Some(fstype)
        })
    })
}

fn kernel_filesystems() -> Result<()> {
    if !crate::is_root() {
        // Building and unit tests work without these; running the agent needs root anyway.
        return Ok(());
    }
    for (path, fstype) in [("/sys/kernel/tracing", "tracefs"), ("/sys/fs/bpf", "bpf")] {
        let path = Path::new(path);
        if !is_mounted(path, fstype) {
            eprintln!("setup: mounting {fstype} at {}", path.display());
            fs::create_dir_all(path).ok();
            run(Command::new("mount").args(["-t", fstype, fstype]).arg(path))?;
        }
    }
    Ok(())
}
