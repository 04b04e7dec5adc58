//! A throwaway MariaDB (Debian's packages, `cargo xtask setup`) for the MySQL-protocol tests,
//! and the `mariadb` command-line client and Python drivers pointed at it.
//!
//! The server gets a fresh data directory from `mariadb-install-db`, runs as the `mysql` user
//! (root starts it, it drops to `--user=mysql` itself), listens on one address and a free port
//! plus a Unix socket in its directory (connections there are never redirected: the admin path),
//! and is killed and its directory removed on drop, also when a test panics.

use std::{
    fs,
    io::Read as _,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{Netns, check, free_port, output, unique, workspace_root};

/// The database every server is created with (users get all privileges on everything).
pub const MARIADB_DB: &str = "test";

/// How a user authenticates (server-side plugins of MariaDB 10.11; `caching_sha2_password`
/// has no server side in MariaDB, only in its client library).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MariaAuth {
    /// `mysql_native_password` (SHA-1 challenge-response; MariaDB's default).
    NativePassword,
    /// MariaDB's `ed25519` plugin (`auth_ed25519`, installed on first use).
    Ed25519,
}

/// TLS for the `mariadb` client.
#[derive(Clone, Debug, Default)]
pub enum MariaSsl {
    /// `--skip-ssl`: plain TCP.
    #[default]
    Off,
    /// `--ssl`: TLS without verifying the server's certificate.
    On,
    /// `--ssl --ssl-ca=CA --ssl-verify-server-cert`.
    Verify(PathBuf),
}

/// Extra configuration for a test MariaDB.
#[derive(Default)]
pub struct MariaDbOptions<'a> {
    /// Server certificate and key (e.g. from `TestPki::server_cert`): TLS is offered. They are
    /// copied into the server's directory, readable by `mysql` only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A CA the server checks client certificates against (`--ssl-ca`), with `tls`.
    pub client_ca: Option<PathBuf>,
    /// `--require-secure-transport`: plain TCP logins are refused (the Unix socket still works).
    pub require_tls: bool,
    /// The address it listens on (default 127.0.0.1; e.g. "::1", "0.0.0.0", or a test
    /// interface's address).
    pub bind: Option<&'a str>,
    /// The port (default: a free one).
    pub port: Option<u16>,
    /// Run the server inside this network namespace (a "pod").
    pub netns: Option<&'a Netns>,
    /// More server arguments, e.g. "--max-connections=500".
    pub args: Vec<&'a str>,
}

/// A throwaway MariaDB server.
pub struct MariaDb {
    /// The address it listens on.
    pub host: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A MariaDB program from Debian's packages (mariadbd lives in /usr/sbin, off a user's PATH).
pub fn mariadb_bin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} not found: MariaDB is installed by cargo xtask setup (mariadb-server, mariadb-client)");
}

impl MariaDb {
    pub fn start() -> Self {
        Self::start_with(MariaDbOptions::default())
    }

    pub fn start_with(options: MariaDbOptions<'_>) -> Self {
        let dir = std::env::temp_dir().join(unique("warden-mariadb-"));
        fs::create_dir_all(&dir).expect("mariadb dir");
        // Built before anything can fail, so that drop cleans up after a panic below.
        let mut db = MariaDb {
            host: options.bind.unwrap_or("127.0.0.1").to_string(),
            port: options.port.unwrap_or_else(free_port),
            dir,
            child: None,
        };
        check(Command::new("chown").arg("mysql:mysql").arg(&db.dir));
        // Small InnoDB files and buffers: a data directory in about half a second.
        let small = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M", "--innodb-log-buffer-size=1M"];
        let install = output(
            Command::new(mariadb_bin("mariadb-install-db"))
                .arg("--no-defaults")
                .arg(format!("--datadir={}", db.data().display()))
                .args(["--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(["--skip-name-resolve", "--skip-log-bin"])
                .args(small),
        );
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            "--user=mysql".into(),
            format!("--datadir={}", db.data().display()),
            format!("--socket={}", db.socket().display()),
            format!("--pid-file={}", db.dir.join("mariadbd.pid").display()),
            format!("--log-error={}", db.log_path().display()),
            format!("--bind-address={}", db.host),
            format!("--port={}", db.port),
            "--skip-name-resolve".into(),
            "--skip-log-bin".into(),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--innodb-doublewrite=0".into(),
            // Big enough for the drivers' over-16-MiB packets (a payload split over packets).
            "--max-allowed-packet=64M".into(),
            "--max-connections=500".into(),
            "--local-infile=1".into(),
        ];
        args.extend(small.iter().map(|s| s.to_string()));
        if let Some((cert, key)) = &options.tls {
            args.push(format!("--ssl-cert={}", db.private_copy(cert, "server.crt").display()));
            args.push(format!("--ssl-key={}", db.private_copy(key, "server.key").display()));
            if let Some(ca) = &options.client_ca {
                args.push(format!("--ssl-ca={}", db.private_copy(ca, "client-ca.crt").display()));
            }
        }
        if options.require_tls {
            args.push("--require-secure-transport=ON".into());
        }
        args.extend(options.args.iter().map(|s| s.to_string()));
        let mut command = match options.netns {
            Some(ns) => {
                // `ip netns exec` execs the server (no fork): the child is mariadbd itself.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(mariadb_bin("mariadbd"));
                c
            }
            None => Command::new(mariadb_bin("mariadbd")),
        };
        let log = fs::File::create(db.dir.join("stdout.log")).expect("stdout log");
        db.child = Some(
            command
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting mariadbd: {e}")),
        );
        db.wait_ready();
        db.sql(&format!("CREATE DATABASE {MARIADB_DB}"));
        db
    }

    /// Waits (up to 30 s) until the server accepts connections on its Unix socket (it opens the
    /// socket after the TCP listener, once recovery is done) and sends its greeting.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("mariadbd exited with {status} before serving:\n{}", self.log());
            }
            if let Ok(mut stream) = UnixStream::connect(self.socket()) {
                stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                let mut header = [0u8; 5];
                // A packet header and the protocol version (10) of the initial handshake.
                if stream.read_exact(&mut header).is_ok() && header[4] == 10 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "mariadbd not ready after 30 s:\n{}", self.log());
            sleep(Duration::from_millis(20));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// A file copied into the server's directory, owned by mysql, mode 0600.
    fn private_copy(&self, source: &Path, name: &str) -> PathBuf {
        let target = self.dir.join(name);
        fs::copy(source, &target).unwrap_or_else(|e| panic!("copying {}: {e}", source.display()));
        check(Command::new("chown").arg("mysql:mysql").arg(&target));
        check(Command::new("chmod").arg("600").arg(&target));
        target
    }

    /// The server's Unix socket (connections there are never redirected).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }

    /// The server's error log.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.log_path()).unwrap_or_default();
        log.push_str(&fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default());
        log
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The `mariadb` client as root over the Unix socket, batch mode without column names
    /// (`-N -B`), in the test database; the caller adds `-e SQL` or standard input.
    pub fn admin_cli(&self) -> Command {
        let mut c = Command::new(mariadb_bin("mariadb"));
        c.arg("--no-defaults").arg(format!("--socket={}", self.socket().display())).args(["-uroot", "-N", "-B"]);
        c
    }

    /// Runs SQL as root over the Unix socket (never through the redirect); returns its output
    /// (tab-separated, no column names), trimmed. Panics with the client's error if it fails.
    pub fn sql(&self, sql: &str) -> String {
        let out = output(self.admin_cli().args(["-e", sql]));
        assert!(out.status.success(), "mariadb -e {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates `user`@`%` with `password` authenticating with `auth`, with every privilege.
    /// (An ed25519 user needs a password: MariaDB stores an empty one as an empty key nothing
    /// logs in with.)
    pub fn create_user(&self, user: &str, password: &str, auth: MariaAuth) {
        let plugin = match auth {
            MariaAuth::NativePassword => "mysql_native_password",
            MariaAuth::Ed25519 => {
                assert!(!password.is_empty(), "MariaDB's ed25519 users with an empty password cannot log in");
                self.install_plugin("ed25519", "auth_ed25519");
                "ed25519"
            }
        };
        self.sql(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED VIA {plugin} USING PASSWORD('{}'); \
             GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'",
            password.replace('\'', "''")
        ));
    }

    /// `INSTALL SONAME` unless the plugin is active already.
    pub fn install_plugin(&self, plugin: &str, library: &str) {
        let status =
            self.sql(&format!("SELECT plugin_status FROM information_schema.plugins WHERE plugin_name = '{plugin}'"));
        if status != "ACTIVE" {
            self.sql(&format!("INSTALL SONAME '{library}'"));
        }
    }

    /// The `mariadb` client over TCP to this server (its address and port) as `user`.
    pub fn cli(&self, user: &str, password: &str, ssl: MariaSsl) -> Command {
        mariadb_cli(&self.host, self.port, user, password, ssl)
    }
}

/// The `mariadb` client over TCP to `host:port` as `user`, in the test database, batch mode
/// without column names (`-N -B`); the caller adds `-e SQL` (or standard input). Reads no
/// option files.
pub fn mariadb_cli(host: &str, port: u16, user: &str, password: &str, ssl: MariaSsl) -> Command {
    let mut c = Command::new(mariadb_bin("mariadb"));
    c.arg("--no-defaults")
        .args(["--protocol=TCP", "-h", host, "-P", &port.to_string(), "-u", user])
        .arg(format!("--password={password}"))
        .args(["-N", "-B", "--database", MARIADB_DB]);
    match ssl {
        MariaSsl::Off => c.arg("--skip-ssl"),
        MariaSsl::On => c.arg("--ssl"),
        MariaSsl::Verify(ca) => {
            c.arg("--ssl").arg(format!("--ssl-ca={}", ca.display())).arg("--ssl-verify-server-cert")
        }
    };
    c
}

/// The driver script run by every Python MySQL driver (tests/drivers/mysql_check.py).
pub fn mysql_check_script() -> PathBuf {
    workspace_root().join("tests/drivers/mysql_check.py")
}

/// The Python drivers `mysql_check.py` takes (`cargo xtask setup` installs them): PyMySQL,
/// mysqlclient (MySQLdb, on libmariadb), mysql-connector-python with its C extension and with its
/// pure-Python protocol.
pub const PY_MYSQL_DRIVERS: [&str; 4] = ["pymysql", "mysqldb", "connector", "connector_pure"];

/// `python3 mysql_check.py DRIVER HOST PORT USER PASSWORD DATABASE`: prints a transcript that is
/// the same through a proxy as direct (no timings, no connection ids, no server version).
pub fn mysql_check(driver: &str, host: &str, port: u16, user: &str, password: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(mysql_check_script()).args([driver, host, &port.to_string(), user, password, MARIADB_DB]);
    c
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The data directory goes away with it: no clean shutdown needed.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
