//! `cargo xtask setup`: everything a fresh machine of this kind needs, installed idempotently.
//!
//! Each step checks first and only acts when something is missing, so running it twice is
//! cheap (well under a second when everything is present).

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
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
/// The MySQL-protocol Python drivers for the MariaDB driver tests (tests/drivers/mysql_check.py),
/// as (import name, version it reports, pip requirement). PyMySQL's `ed25519` extra brings PyNaCl
/// for MariaDB's ed25519 authentication; mysqlclient is built against Debian's libmariadb-dev.
const MYSQL_PY_DRIVERS: [(&str, &str, &str); 3] = [
    ("pymysql", "pymysql.VERSION_STRING", "PyMySQL[ed25519]==1.1.1"),
    ("MySQLdb", "MySQLdb.release.__version__", "mysqlclient==2.2.7"),
    ("mysql.connector", "mysql.connector.__version__", "mysql-connector-python==9.1.0"),
];
/// Where Debian's MariaDB server package puts the server (not on a non-root PATH).
const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Debian's policy hook for service starts from maintainer scripts (exit 101: deny).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

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
    // MariaDB 10.11 for the MySQL-protocol tests: the harness starts its own throwaway servers,
    // so the package's own service must not be started (see `install`).
    let mariadb_server = !Path::new(MARIADBD).exists() || !on_path("mariadb-install-db");
    if mariadb_server {
        missing.push("mariadb-server");
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
        ("mariadb", "mariadb-client"),
        // For the MySQL-protocol bench.
        ("sysbench", "sysbench"),
        // mysqlclient (MySQLdb) is built from source by pip, against libmariadb.
        ("mariadb_config", "libmariadb-dev"),
        ("pkg-config", "pkg-config"),
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
    if mariadb_server { without_service_starts(install, &missing) } else { install(&missing) }
}

fn install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs with the packages' services kept from starting: a policy-rc.d that denies every
/// start for the duration (when the machine has none of its own), and under systemd the
/// package's MariaDB service stopped and disabled afterwards (tests start their own servers, and
/// one listening on 3306 would be a governed endpoint nobody asked for).
fn without_service_starts(install: fn(&[&str]) -> Result<()>, packages: &[&str]) -> Result<()> {
    let policy = Path::new(POLICY_RC_D);
    let ours = !policy.exists();
    if ours {
        fs::write(policy, "#!/bin/sh\n# cargo xtask setup: no service starts while installing.\nexit 101\n")?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
    }
    let installed = install(packages);
    if ours {
        fs::remove_file(policy).with_context(|| format!("removing {POLICY_RC_D}"))?;
    }
    installed?;
    if Path::new("/run/systemd/system").exists() {
        eprintln!("setup: stopping and disabling the mariadb service the package installed");
        run(Command::new("systemctl").args(["disable", "--now", "--quiet", "mariadb.service"]))?;
    }
    Ok(())
}

fn python_drivers() -> Result<()> {
    let mut missing = Vec::new();
    if !python_has("psycopg", "psycopg.__version__", "3.3.9") {
        missing.push(PSYCOPG);
    }
    for (module, version_expr, requirement) in MYSQL_PY_DRIVERS {
        let version = requirement.rsplit_once("==").map_or("", |(_, v)| v);
        if !python_has(module, version_expr, version) {
            missing.push(requirement);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {} from PyPI", missing.join(" "));
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing))
}

/// Whether `python3` imports `module` and `version_expr` evaluates to `version`.
fn python_has(module: &str, version_expr: &str, version: &str) -> bool {
    let check = format!("import sys, {module}; sys.exit(0 if str({version_expr}) == {version:?} else 1)");
    Command::new("python3").args(["-c", &check]).output().is_ok_and(|o| o.status.success())
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
