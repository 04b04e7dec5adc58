//! Test harness for root-only integration tests (and `cargo xtask demo` / `bench`): a throwaway
//! PostgreSQL (and MariaDB, `mariadb`), the real `warden` agent with its real kernel programs, and
//! network namespaces standing in for pods. Everything it creates is removed on drop, also when a test panics.

pub mod fidelity;
pub mod kubeapi;
pub mod mariadb;
pub mod raw;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The proxy addresses tests use (not the production defaults, so a Warden running on the
/// machine is never disturbed).
pub const PROXY_V4: &str = "169.254.77.101:433";
pub const PROXY_V6: &str = "[fd77:7761:7264::65]:433";
pub const INTERFACE: &str = "wdn-it0";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process and call (paths, cgroups, namespaces).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The names test agents pin their programs and maps under, in /sys/fs/bpf: `<prefix><pid>x<n>`
/// (`unique`).
const PIN_PREFIXES: [&str; 2] = ["warden-it-", "warden-port-"];

/// Removes the pins of test processes (tests, the bench, the demo) that were killed before
/// their guards ran. Such programs stay attached host-wide and, with no agent serving, refuse
/// every later connection to the ports they governed (EPERM), whichever namespace dials them.
/// Once per process, before it picks a port or starts an agent; only pins whose process is gone.
pub fn sweep_stale_pins() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        for (path, outcome) in remove_pins_of_gone_processes(Path::new("/sys/fs/bpf")) {
            match outcome {
                Ok(()) => eprintln!("testkit: removed {}, left by a process that is gone", path.display()),
                Err(e) => {
                    eprintln!("testkit: could not remove {}, left by a process that is gone: {e}", path.display())
                }
            }
        }
    });
}

/// Under `root`, removes each test pin directory whose process no longer runs; says which.
fn remove_pins_of_gone_processes(root: &Path) -> Vec<(PathBuf, std::io::Result<()>)> {
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| {
            let rest = PIN_PREFIXES.iter().find_map(|p| n.strip_prefix(p))?;
            rest.split_once('x')?.0.parse::<u32>().ok()
        });
        let made = entry.metadata().and_then(|m| m.modified()).ok();
        if let Some(pid) = pid
            && !may_have_made(pid, made)
        {
            let path = entry.path();
            let outcome = fs::remove_dir_all(&path);
            removed.push((path, outcome));
        }
    }
    removed
}

/// Whether process `pid` runs and may be the one that made (last changed) a directory at
/// `made`: not a thread's id, not a zombie, and started before then (a pid is reused once its
/// process is gone, this process's own too). In doubt (unreadable), yes.
fn may_have_made(pid: u32, made: Option<std::time::SystemTime>) -> bool {
    let Ok(process) = procfs::process::Process::new(pid as i32) else { return false };
    let (Ok(stat), Ok(status)) = (process.stat(), process.status()) else { return true };
    if status.tgid != pid as i32 || matches!(stat.state, 'Z' | 'X') {
        return false;
    }
    let (Some(made), Ok(boot)) = (made, procfs::boot_time_secs()) else { return true };
    let started = boot + stat.starttime / procfs::ticks_per_second();
    let made = made.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Whole seconds on both sides, and the wall clock may have been stepped since: a margin.
    started <= made + 10
}

/// A fresh directory (mode 0755 whatever the umask, as `fs::create_dir_all` makes under 022) for a
/// test's scratch files, removed with everything in it when the guard drops, also on a panic.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
    // Set after it is made: a mode given to mkdir is cut by the umask.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("temp dir mode");
    dir
}

/// A fresh file holding `contents`, removed when the guard drops, also on a panic. Readable by
/// all (0644, as `fs::write` makes it): psql and drivers may read it as another user.
pub fn temp_file(prefix: &str, suffix: &str, contents: impl AsRef<[u8]>) -> tempfile::NamedTempFile {
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = tempfile::Builder::new().prefix(prefix).suffix(suffix).tempfile().expect("temp file");
    // Set after it is made: a mode given to open is cut by the umask.
    fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).expect("temp file mode");
    std::io::Write::write_all(&mut file, contents.as_ref()).expect("writing the temp file");
    file
}

/// The `warden` binary under test (`WARDEN_BIN`, set by `cargo xtask test`, or target/debug).
pub fn warden_bin() -> PathBuf {
    let bin = std::env::var_os("WARDEN_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/debug/warden"));
    if bin.is_absolute() { bin } else { workspace_root().join(bin) }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Runs a command to completion, panicking if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs a command and panics (with its stderr) unless it succeeds; returns stdout.
/// A command's program and arguments, then `extra`: the argv to run it another way (e.g. as a
/// labelled workload with `Agent::exec`).
pub fn argv_of(cmd: &Command, extra: &[&str]) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .chain(extra.iter().map(|e| e.to_string()))
        .collect()
}

pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server installed (cargo xtask setup)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bin/postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").join("bin").join(name)
}

/// A free TCP port below the kernel's ephemeral range, so that no outgoing connection can be
/// holding it when a server binds it a moment later (a port handed out by binding port 0 can
/// be).
pub fn free_port() -> u16 {
    sweep_stale_pins();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut candidate =
        20_000 + ((seed ^ (std::process::id() << 8) ^ SEQ.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
    for _ in 0..12_000 {
        // A dual-stack [::] bind succeeds only if the port is free on IPv4 and IPv6 alike.
        if TcpListener::bind(("::", candidate)).is_ok() {
            return candidate;
        }
        candidate = if candidate >= 31_999 { 20_000 } else { candidate + 1 };
    }
    panic!("no free port in 20000..32000");
}

/// A throwaway PostgreSQL cluster, owned by the `postgres` user, listening on all addresses of
/// its own port (pg_hba admits loopback and the test namespaces' range only).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    /// The network namespace it runs in (None: the host's).
    netns: Option<String>,
}

/// Extra configuration for a test PostgreSQL.
#[derive(Default)]
pub struct PgOptions<'a> {
    /// pg_hba.conf lines placed before the default trust lines (first match wins).
    pub hba: &'a str,
    /// postgresql.conf settings, e.g. "ssl = on".
    pub conf: &'a str,
    /// Files copied into the data directory (owned by postgres, mode 0600), e.g. server.key.
    pub files: Vec<(&'a str, PathBuf)>,
    /// Run the server inside this network namespace (a "pod"), on `port`.
    pub netns: Option<&'a Netns>,
    /// The port (default: a free one).
    pub port: Option<u16>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    /// The postmaster's PID (the first line of `postmaster.pid`), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    pub fn start_with(options: PgOptions<'_>) -> Self {
        let dir = std::env::temp_dir().join(unique("warden-pg-"));
        fs::create_dir_all(&dir).expect("pg dir");
        let data = dir.join("data");
        // Built before anything can fail, so that drop cleans up after a panic below.
        let mut pg = Postgres {
            port: options.port.unwrap_or_else(free_port),
            dir,
            netns: options.netns.map(|n| n.name.clone()),
        };
        check(Command::new("chown").arg("postgres:postgres").arg(&pg.dir));
        check(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n{}\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nhost all all 10.77.0.0/16 trust\n",
                options.hba
            ),
        )
        .expect("pg_hba");
        if !options.conf.is_empty() {
            let mut conf = fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
            conf.push_str(options.conf);
            conf.push('\n');
            fs::write(data.join("postgresql.conf"), conf).expect("postgresql.conf");
        }
        for (name, source) in &options.files {
            let target = data.join(name);
            fs::copy(source, &target).expect("copy file into data directory");
            check(Command::new("chown").arg("postgres:postgres").arg(&target));
            check(Command::new("chmod").arg("600").arg(&target));
        }
        // 200 connections unless the caller's postgresql.conf says otherwise (the command line
        // would override it).
        let max_connections = if options.conf.contains("max_connections") { "" } else { " -c max_connections=200" };
        let options =
            format!("-p {} -c listen_addresses='*' -k {} -c fsync=off{max_connections}", pg.port, pg.dir.display());
        let mut start = match &pg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser"]);
                c
            }
            None => Command::new("runuser"),
        };
        let started = output(
            start
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .args(["-w", "-t", "30", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(pg.dir.join("log"))
                .args(["-o", &options, "start"]),
        );
        if !started.status.success() {
            let log = fs::read_to_string(pg.dir.join("log")).unwrap_or_default();
            pg.port = 0;
            panic!("PostgreSQL did not start: {}\n{log}", String::from_utf8_lossy(&started.stderr));
        }
        pg
    }

    /// The directory holding the server's Unix socket (connections there are never redirected).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Loads pgbench's tables at `scale` over the Unix socket (never through the redirect).
    pub fn pgbench_init(&self, scale: u32) {
        check(
            Command::new(pgbench_bin())
                .args(["-i", "-q", "-s", &scale.to_string(), "-U", "postgres", "-h"])
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "postgres"]),
        );
    }

    /// Runs SQL over the Unix socket (never through the redirect) and returns the output.
    pub fn admin_sql(&self, sql: &str) -> String {
        check(Command::new(pg_bin("psql")).args(["-X", "-tA", "-U", "postgres", "-h"]).arg(&self.dir).args([
            "-p",
            &self.port.to_string(),
            "-c",
            sql,
        ]))
        .trim()
        .to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway certificate authority and certificates made with the openssl CLI.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    /// A CA named `name` in a new directory.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("warden-pki-"));
        fs::create_dir_all(&dir).expect("pki dir");
        let pki = TestPki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki
    }

    fn openssl(&self, args: &[&str]) {
        check(Command::new("openssl").args(args).current_dir(&self.dir));
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a server certificate `NAME.crt` / `NAME.key` for the given subjectAltName
    /// (e.g. "DNS:localhost,IP:127.0.0.1").
    pub fn server_cert(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        self.issue(name, &format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"))
    }

    /// Issues a client certificate `NAME.crt` / `NAME.key` (extendedKeyUsage clientAuth).
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue(name, "extendedKeyUsage=clientAuth\n")
    }

    /// A key and a certificate signed by the CA, with these X.509 extensions.
    fn issue(&self, name: &str, extensions: &str) -> (PathBuf, PathBuf) {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        fs::write(self.dir.join(&ext), extensions).expect("ext");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ]);
        (self.dir.join(crt), self.dir.join(key))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The audit settings tests use unless they say otherwise: a small ring, frequent seals.
pub const DEFAULT_AUDIT: &str = "  ring_bytes: 16777216\n  seal_every: 100";

/// A running `warden run` with its own config, state, audit file and bpffs directory.
pub struct Agent {
    bin: PathBuf,
    pub config: PathBuf,
    pub dir: PathBuf,
    pub audit: PathBuf,
    pub state: PathBuf,
    pub bpffs: PathBuf,
    databases_yaml: String,
    proxy_yaml: String,
    audit_yaml: String,
    /// Top-level YAML after everything else (e.g. a `dns:` block).
    top_level_yaml: String,
    child: Option<Child>,
    /// The serving agent when it is not this harness's child (started by the agent it
    /// replaced: SIGUSR2, `warden upgrade`).
    adopted: Option<u32>,
    /// Agents replaced by a successor, draining until they exit.
    replaced: Vec<Child>,
    /// Replaced agents that are not this harness's children.
    replaced_adopted: Vec<u32>,
}

impl Agent {
    /// Starts an agent governing `databases_yaml` (the YAML list under `databases:`).
    pub fn start(databases_yaml: &str) -> Self {
        Self::start_with(&warden_bin(), databases_yaml)
    }

    /// Like `start`, with a given `warden` binary (the bench uses the release build).
    pub fn start_with(bin: &Path, databases_yaml: &str) -> Self {
        Self::start_full(bin, databases_yaml, "", DEFAULT_AUDIT)
    }

    /// Like `start`, with extra YAML under `proxy:` (e.g. "  tls: {cert: ..., key: ...}").
    pub fn start_with_proxy(databases_yaml: &str, proxy_yaml: &str) -> Self {
        Self::start_full(&warden_bin(), databases_yaml, proxy_yaml, DEFAULT_AUDIT)
    }

    /// Like `start`, with the YAML under `audit:` (besides `path`) replaced.
    pub fn start_with_audit(bin: &Path, databases_yaml: &str, audit_yaml: &str) -> Self {
        Self::start_full(bin, databases_yaml, "", audit_yaml)
    }

    /// Like `start`, with extra YAML under `proxy:` and the YAML under `audit:` replaced.
    pub fn start_custom(databases_yaml: &str, proxy_yaml: &str, audit_yaml: &str) -> Self {
        Self::start_full(&warden_bin(), databases_yaml, proxy_yaml, audit_yaml)
    }

    /// Like `start_custom`, with top-level YAML added after the rest (e.g.
    /// "dns:\n  nameservers: ['127.0.0.1:5353']").
    pub fn start_with_top_level(
        databases_yaml: &str,
        proxy_yaml: &str,
        audit_yaml: &str,
        top_level_yaml: &str,
    ) -> Self {
        Self::start_full_with(&warden_bin(), databases_yaml, proxy_yaml, audit_yaml, top_level_yaml)
    }

    /// Like `start_with_top_level`, with a given `warden` binary (or a wrapper that execs it).
    pub fn start_with_bin_top_level(bin: &Path, databases_yaml: &str, top_level_yaml: &str) -> Self {
        Self::start_full_with(bin, databases_yaml, "", DEFAULT_AUDIT, top_level_yaml)
    }

    /// Like `start`, with these policy files (name, YAML) in its policy directory from the start.
    pub fn start_with_policies(databases_yaml: &str, policies: &[(&str, &str)]) -> Self {
        Self::start_with_bin_policies(&warden_bin(), databases_yaml, policies)
    }

    /// Like `start_with_policies`, with a given `warden` binary.
    pub fn start_with_bin_policies(bin: &Path, databases_yaml: &str, policies: &[(&str, &str)]) -> Self {
        Self::start_with_bin_policies_top_level(bin, databases_yaml, policies, "")
    }

    /// Like `start_with_bin_policies`, with top-level YAML added after the rest.
    pub fn start_with_bin_policies_top_level(
        bin: &Path,
        databases_yaml: &str,
        policies: &[(&str, &str)],
        top_level_yaml: &str,
    ) -> Self {
        Self::start_with_bin_policies_audit(bin, databases_yaml, policies, DEFAULT_AUDIT, top_level_yaml)
    }

    /// Like `start_with_bin_policies_top_level`, with the YAML under `audit:` replaced too.
    pub fn start_with_bin_policies_audit(
        bin: &Path,
        databases_yaml: &str,
        policies: &[(&str, &str)],
        audit_yaml: &str,
        top_level_yaml: &str,
    ) -> Self {
        Self::start_with_bin_policies_proxy_audit(bin, databases_yaml, policies, "", audit_yaml, top_level_yaml)
    }

    /// Like `start_with_bin_policies_audit`, with extra YAML under `proxy:` too.
    pub fn start_with_bin_policies_proxy_audit(
        bin: &Path,
        databases_yaml: &str,
        policies: &[(&str, &str)],
        proxy_yaml: &str,
        audit_yaml: &str,
        top_level_yaml: &str,
    ) -> Self {
        let mut agent = Self::prepare(bin, databases_yaml, proxy_yaml, audit_yaml, top_level_yaml);
        for (file, yaml) in policies {
            agent.write_policy(file, yaml);
        }
        agent.spawn();
        agent
    }

    fn start_full(bin: &Path, databases_yaml: &str, proxy_yaml: &str, audit_yaml: &str) -> Self {
        Self::start_full_with(bin, databases_yaml, proxy_yaml, audit_yaml, "")
    }

    fn start_full_with(
        bin: &Path,
        databases_yaml: &str,
        proxy_yaml: &str,
        audit_yaml: &str,
        top_level_yaml: &str,
    ) -> Self {
        let mut agent = Self::prepare(bin, databases_yaml, proxy_yaml, audit_yaml, top_level_yaml);
        agent.spawn();
        agent
    }

    /// An agent's directory and configuration, not yet started.
    fn prepare(bin: &Path, databases_yaml: &str, proxy_yaml: &str, audit_yaml: &str, top_level_yaml: &str) -> Self {
        sweep_stale_pins();
        let dir = std::env::temp_dir().join(unique("warden-agent-"));
        fs::create_dir_all(&dir).expect("agent dir");
        // It holds the ring and its key, whose directory must not be writable by others:
        // 0755 whatever the umask.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("agent dir mode");
        let bpffs = PathBuf::from("/sys/fs/bpf").join(unique("warden-it-"));
        let agent = Agent {
            bin: bin.to_path_buf(),
            config: dir.join("warden.yaml"),
            audit: dir.join("audit.ring"),
            state: dir.join("state"),
            bpffs,
            dir,
            databases_yaml: databases_yaml.to_string(),
            proxy_yaml: proxy_yaml.to_string(),
            audit_yaml: audit_yaml.to_string(),
            top_level_yaml: top_level_yaml.to_string(),
            child: None,
            adopted: None,
            replaced: Vec::new(),
            replaced_adopted: Vec::new(),
        };
        agent.write_config();
        agent
    }

    fn write_config(&self) {
        // The agent's own policy directory: never the host's /etc/warden/policies.
        let policies = if self.top_level_yaml.contains("policies:") {
            String::new()
        } else {
            format!("policies: [{}]\n", self.policies_dir().display())
        };
        let yaml = format!(
            "databases:\n{}\nproxy:\n  listen_v4: \"{PROXY_V4}\"\n  listen_v6: \"{PROXY_V6}\"\n  interface: {INTERFACE}\n{}\naudit:\n  path: {}\n{}\nstate_dir: {}\nbpffs_dir: {}\n{policies}{}",
            self.databases_yaml,
            self.proxy_yaml,
            self.audit.display(),
            self.audit_yaml,
            self.state.display(),
            self.bpffs.display(),
            self.top_level_yaml
        );
        fs::write(&self.config, yaml).expect("write config");
    }

    /// The directory the agent reads its policies from (created on first use).
    pub fn policies_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// Writes (or replaces) a policy file in the agent's policy directory, atomically (the
    /// agent may be polling it).
    pub fn write_policy(&self, file: &str, yaml: &str) {
        let dir = self.policies_dir();
        fs::create_dir_all(&dir).expect("policy dir");
        let tmp = dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml).expect("write policy");
        fs::rename(&tmp, dir.join(file)).expect("install policy");
    }

    /// Starts (or restarts) the agent process and waits until it serves.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("{log}");
        }
    }

    /// Starts (or restarts) the agent process; returns why (with its log) if it exits before
    /// serving.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "agent already running");
        let ready = self.state.join("agent.ready");
        let _ = fs::remove_file(&ready);
        self.child = Some(self.run_agent(&self.bin));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("warden run exited with {status} before serving:\n{}", self.log()));
            }
            assert!(Instant::now() < deadline, "warden run not ready after 30 s:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `BIN run --config CONFIG`, its output appended to the agent's log.
    fn run_agent(&self, bin: &Path) -> Child {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).expect("log");
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn warden run")
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.adopted)
    }

    /// The pid the ready file names (the agent serving now).
    pub fn serving_pid(&self) -> Option<u32> {
        fs::read_to_string(self.state.join("agent.ready")).ok().and_then(|s| s.trim().parse().ok())
    }

    /// Replaces the top-level YAML added after the rest of the configuration (a configuration
    /// change: the next agent started reads it).
    pub fn set_top_level_yaml(&mut self, yaml: &str) {
        self.top_level_yaml = yaml.to_string();
        self.write_config();
    }

    /// Starts a second agent beside this one from `bin`, as a surge update does: it takes the
    /// listening sockets over and the one serving now drains. Returns once the new one serves.
    pub fn take_over_with(&mut self, bin: &Path) {
        let old = self.pid().expect("an agent serves");
        let before = self.handovers();
        let child = self.run_agent(bin);
        let new = child.id();
        self.wait_serving(new, old, before);
        match self.child.take() {
            Some(previous) => self.replaced.push(previous),
            None => self.replaced_adopted.extend(self.adopted.take()),
        }
        self.child = Some(child);
    }

    /// `warden upgrade`: the serving agent starts its successor itself (from the path it was
    /// started from). Returns once the successor serves.
    pub fn upgrade(&mut self) -> String {
        let old = self.pid().expect("an agent serves");
        let before = self.handovers();
        let out = check(Command::new(&self.bin).args(["upgrade", "--config"]).arg(&self.config));
        let new = self.serving_pid().expect("a ready file");
        assert_ne!(new, old, "{out}");
        self.wait_serving(new, old, before);
        match self.child.take() {
            Some(previous) => self.replaced.push(previous),
            None => self.replaced_adopted.extend(self.adopted.take()),
        }
        // The new one is not this harness's child.
        self.adopted = Some(new);
        out
    }

    /// How many hand-overs the log shows completed.
    fn handovers(&self) -> usize {
        self.log().matches("took over from the agent being replaced").count()
    }

    fn wait_serving(&self, new: u32, old: u32, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.serving_pid() == Some(new) && self.handovers() > before {
                return;
            }
            assert!(Instant::now() < deadline, "agent {new} did not take over from {old} within 60 s:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every replaced agent has exited; returns their exit codes.
    pub fn wait_replaced(&mut self, limit: Duration) -> Vec<Option<i32>> {
        let deadline = Instant::now() + limit;
        let mut codes = Vec::new();
        for pid in std::mem::take(&mut self.replaced_adopted) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(wait_gone(pid, left), "a replaced agent (pid {pid}) still runs after {limit:?}:\n{}", self.log());
        }
        for mut child in std::mem::take(&mut self.replaced) {
            loop {
                if let Some(status) = child.try_wait().ok().flatten() {
                    codes.push(status.code());
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("a replaced agent (pid {}) still runs after {limit:?}:\n{}", child.id(), self.log());
                }
                sleep(Duration::from_millis(20));
            }
        }
        codes
    }

    /// CPU time (user + system) the agent process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised comm: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(pid) = self.adopted.take() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            assert!(wait_gone(pid, Duration::from_secs(10)), "warden run ignored SIGTERM for 10 s:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("warden run ignored SIGTERM for 10 s:\n{}", self.log());
                }
                sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the agent with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(pid) = self.adopted.take() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(10));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every audit record written so far, as `warden audit export` gives them.
    pub fn records(&self) -> Vec<Value> {
        if !self.audit.exists() {
            return Vec::new();
        }
        let out = self.audit_cli(&["export"]);
        assert!(out.status.success(), "warden audit export failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export line is not JSON ({e}): {l}")))
            .collect()
    }

    /// Runs `warden audit ARGS --ring RING` and returns its output.
    pub fn audit_cli(&self, args: &[&str]) -> Output {
        output(Command::new(&self.bin).arg("audit").args(args).arg("--ring").arg(&self.audit))
    }

    /// Waits (up to 10 s) for a record matching `pred`.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what} within 10 s; records:\n{:#?}\nagent log:\n{}",
                self.records(),
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// The binary to run the CLI with: the agent's own (the bench's release build, where no
    /// target/debug/warden may exist), or the build under test once a test removed that copy.
    fn cli(&self) -> PathBuf {
        if self.bin.exists() { self.bin.clone() } else { warden_bin() }
    }

    /// `warden status` output.
    pub fn status(&self) -> String {
        String::from_utf8_lossy(&output(Command::new(self.cli()).args(["status", "--config"]).arg(&self.config)).stdout)
            .into_owned()
    }

    /// A counter from `warden status`.
    pub fn stat(&self, name: &str) -> u64 {
        let status = self.status();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
    }

    /// `warden exec --label ... -- psql ...` running one statement against `host:port`.
    pub fn exec_psql(&self, labels: &[&str], host: &str, port: u16, sql: &str) -> Command {
        let argv = psql_argv(host, port, sql);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.exec(labels, &argv)
    }

    /// `warden exec --label ... -- cmd...` as a Command (caller adds nothing after).
    pub fn exec(&self, labels: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["exec", "--config"]).arg(&self.config);
        for l in labels {
            c.args(["--label", l]);
        }
        c.arg("--").args(cmd);
        c
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_quietly();
        // Never panic while unwinding (that aborts the whole test binary before other
        // destructors clean up); report instead.
        let detached = Command::new(self.cli()).args(["detach", "--config"]).arg(&self.config).output();
        let leftover = self.bpffs.exists();
        let _ = fs::remove_dir_all(&self.dir);
        let failure = match detached {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!("warden detach failed: {}", String::from_utf8_lossy(&out.stderr))),
            Err(e) => Some(format!("warden detach could not start: {e}")),
        };
        if leftover {
            // Pins left attached would refuse later connections to this test's ports: removing
            // them detaches the programs all the same.
            let _ = fs::remove_dir_all(&self.bpffs);
        }
        if std::thread::panicking() {
            if let Some(f) = failure {
                eprintln!("cleanup: {f}");
            }
        } else {
            assert!(failure.is_none(), "{failure:?}");
            assert!(!leftover, "pins left in {}", self.bpffs.display());
        }
    }
}

impl Agent {
    fn stop_quietly(&mut self) {
        if let Some(pid) = self.adopted.take() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if !wait_gone(pid, Duration::from_secs(10)) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        for pid in std::mem::take(&mut self.replaced_adopted) {
            for _ in 0..2 {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                sleep(Duration::from_millis(50));
            }
            if !wait_gone(pid, Duration::from_secs(10)) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        for mut child in std::mem::take(&mut self.replaced) {
            // A draining agent ends its drain at a second signal.
            for _ in 0..2 {
                // SAFETY: plain kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                sleep(Duration::from_millis(50));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until process `pid` (not necessarily our child) is gone or a zombie; false after
/// `limit`.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// A network namespace with a veth pair to the host, standing in for a pod.
pub struct Netns {
    pub name: String,
    /// The host's end of the veth pair.
    pub host_if: String,
    /// The host's address on the veth (what the pod dials to reach the host's PostgreSQL).
    pub host_ip: String,
    pub pod_ip: String,
}

impl Netns {
    /// `index` picks the /30 subnet 10.77.INDEX.0 (tests own 10.77.0.0/16).
    pub fn create(index: u8) -> Self {
        let name = unique("wdnpod");
        let host_if = format!("wdnh{index}");
        let pod_if = format!("wdnp{index}");
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: format!("10.77.{index}.1"),
            pod_ip: format!("10.77.{index}.2"),
        };
        let _ = output(Command::new("ip").args(["link", "del", &host_if]));
        check(Command::new("ip").args(["netns", "add", &name]));
        check(Command::new("ip").args(["link", "add", &host_if, "type", "veth", "peer", "name", &pod_if]));
        check(Command::new("ip").args(["link", "set", &pod_if, "netns", &name]));
        check(Command::new("ip").args(["addr", "add", &format!("{}/30", ns.host_ip), "dev", &host_if]));
        check(Command::new("ip").args(["link", "set", &host_if, "up"]));
        let in_ns = |args: &[&str]| check(Command::new("ip").args(["netns", "exec", &name]).args(args));
        in_ns(&["ip", "addr", "add", &format!("{}/30", ns.pod_ip), "dev", &pod_if]);
        in_ns(&["ip", "link", "set", &pod_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "route", "add", "default", "via", &ns.host_ip]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(Command::new("ip").args(["netns", "del", &self.name]));
        let _ = output(Command::new("ip").args(["link", "del", &self.host_if]));
    }
}

/// The psql binary of the installed PostgreSQL.
pub fn psql_bin() -> PathBuf {
    pg_bin("psql")
}

/// psql's arguments for one statement, quiet and unaligned (`-X -tA`), as user postgres.
pub fn psql_argv(host: &str, port: u16, sql: &str) -> Vec<String> {
    let psql = psql_bin().display().to_string();
    [psql.as_str(), "-X", "-tA", "-U", "postgres", "-h", host, "-p", &port.to_string(), "-c", sql]
        .iter()
        .map(|a| a.to_string())
        .collect()
}

/// psql running one statement against `host:port` (through the redirect if governed).
pub fn psql(host: &str, port: u16, sql: &str) -> Command {
    let argv = psql_argv(host, port, sql);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// The pgbench binary of the installed PostgreSQL.
pub fn pgbench_bin() -> PathBuf {
    pg_bin("pgbench")
}

/// One scrape of the agent's metrics port (plain HTTP/1.0, read to the end).
pub fn scrape(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: warden\r\n\r\n").expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The sum of a metric's samples whose line contains every one of `having`.
pub fn sample(metrics: &str, name: &str, having: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| having.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// tokio-postgres connected to 127.0.0.1:`port` as postgres (through the redirect when that
/// port is governed), its connection driven by a task of the current runtime.
pub async fn pg_connect(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect through the proxy");
    tokio::spawn(conn);
    client
}

/// The server's message of a tokio-postgres error (or the error itself).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// The SQLSTATE of a tokio-postgres error.
pub fn db_code(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| format!("not a server error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pins_of_processes_that_are_gone_are_removed() {
        let root = temp_dir("warden-pins-");
        // Above the kernel's largest pid (2^22): no such process.
        let gone = root.path().join("warden-it-4194305x7");
        let port = root.path().join("warden-port-4194306x0");
        let ours = root.path().join(unique("warden-it-"));
        let other = root.path().join("warden-4194305x7");
        // Made under this process's pid before this process started: a process gone since.
        let before = root.path().join(format!("warden-it-{}x999", std::process::id()));
        for dir in [&gone, &port, &ours, &other, &before] {
            fs::create_dir_all(dir.join("links")).unwrap();
            fs::write(dir.join("links").join("warden_connect4"), "").unwrap();
        }
        let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(946_684_800);
        fs::File::open(&before).unwrap().set_modified(long_ago).unwrap();
        let mut removed: Vec<PathBuf> = remove_pins_of_gone_processes(root.path())
            .into_iter()
            .map(|(path, outcome)| {
                outcome.unwrap();
                path
            })
            .collect();
        removed.sort();
        let mut expected = vec![gone.clone(), port.clone(), before.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(!gone.exists() && !port.exists() && !before.exists());
        assert!(ours.join("links").join("warden_connect4").exists() && other.exists());
    }
}
