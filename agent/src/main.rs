//! The `warden` command: the agent (`run`) and the operator's tools.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use warden::{
    cgroup,
    config::Config,
    ebpf, exec,
    net::netif,
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
    /// Replace the running agent without dropping a session: it starts a new agent from the
    /// path it was started from (install the new build there first) and with the same
    /// configuration file (edit it first to change the configuration), hands it the listening
    /// sockets, and serves its live sessions until they end or `upgrade.drain_deadline_s`.
    Upgrade {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How long to wait for the new agent to serve.
        #[arg(long, default_value_t = 90)]
        wait_s: u64,
    },
    /// Exit 0 when the agent serving on this host runs in this process's own cgroup (its
    /// container) and is ready: the Kubernetes probe, since during a surge update the agent
    /// being replaced answers on the shared metrics port too.
    Ready {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Detach the kernel programs and remove everything a stopped agent left behind.
    Detach {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the attached programs, the heartbeat, governed endpoints as resolved now, sessions,
    /// pending approvals, audit ring usage, kernel table fill levels and counters.
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it governs (host names resolved now).
    CheckConfig { config: PathBuf },
    /// Validate policy files, or explain how a statement is judged.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Statements held for approval: list, show, approve, deny, watch (the agent's admin API).
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCmd,
        #[command(flatten)]
        admin: AdminSource,
    },
    /// Live database sessions through this agent: list, or end one (both legs closed).
    Sessions {
        #[command(subcommand)]
        command: SessionsCmd,
        #[command(flatten)]
        admin: AdminSource,
    },
    /// Read the per-host audit ring (live, or a copied file with --ring).
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
        #[command(flatten)]
        source: RingSource,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate policy files and directories (their *.yaml and *.yml): prints "ok: N policies",
    /// or every mistake with its file, line and column and exits 1.
    Check {
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        paths: Vec<PathBuf>,
    },
    /// Show how a SQL text is judged for an identity: its analysis, the policies that select the
    /// identity, and the rule that decides each statement and why.
    Explain {
        /// Policy files or directories (repeatable; default: ./policies, else /etc/warden/policies).
        #[arg(long = "policies", value_name = "PATH")]
        policies: Vec<PathBuf>,
        /// A label of the identity, KEY=VALUE (repeatable), e.g. warden/kind=agent.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The database, as named in the agent's configuration.
        #[arg(long)]
        database: String,
        /// The role the session acts as (absent: unknown, so every `users` filter applies).
        #[arg(long)]
        user: Option<String>,
        /// Schemas unqualified names resolve in, e.g. app,public (default: public; functions are
        /// looked up in pg_catalog first unless it is listed).
        #[arg(long, value_name = "SCHEMA,...")]
        search_path: Option<String>,
        /// The SQL text (several statements are judged one by one).
        sql: String,
    },
    /// Judge the statements of the audit ring again with candidate policies: per identity and
    /// rule, how many would be denied, held or masked, with examples, and which workloads
    /// allowed now would break; and what the ring cannot tell.
    Simulate {
        /// The candidate policy files or directories (repeatable).
        #[arg(long = "policies", value_name = "PATH", required = true)]
        policies: Vec<PathBuf>,
        /// Statements since: 30s, 10m, 24h, 7d, or epoch milliseconds (default: the whole ring).
        #[arg(long)]
        since: Option<String>,
        /// Only this identity: its warden/identity label, command name or executable name.
        #[arg(long)]
        identity: Option<String>,
        /// Only identities with this label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Only this database (as named in the agent's configuration).
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        source: RingSource,
    },
    /// Measure what analysing and judging a statement costs (µs per statement, uncached and
    /// cached), with the given policies deciding for an identity with the given labels.
    Bench {
        #[arg(long = "policies", value_name = "PATH")]
        policies: Vec<PathBuf>,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[arg(long, default_value_t = 20_000)]
        rounds: u32,
    },
}

#[derive(clap::Args)]
struct AdminSource {
    /// The agent's configuration (for its admin socket; default /etc/warden/warden.yaml when it
    /// exists, else /run/warden/admin.sock).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The admin socket; overrides --config.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Output: table, or json (the API's objects, one per line).
    #[arg(short = 'o', long, global = true, default_value = "table")]
    output: String,
}

impl AdminSource {
    fn client(&self) -> Result<(warden::admin::client::AdminClient, warden::admin::client::Output)> {
        use warden::admin::client::{AdminClient, Output};
        let output = match self.output.as_str() {
            "table" => Output::Table,
            "json" => Output::Json,
            other => anyhow::bail!("-o {other}: expected table or json"),
        };
        let socket = match (&self.socket, &self.config) {
            (Some(socket), _) => socket.clone(),
            (None, Some(config)) => Config::load(config)?.admin.socket,
            (None, None) if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                Config::load(std::path::Path::new(DEFAULT_CONFIG))?.admin.socket
            }
            (None, None) => PathBuf::from("/run/warden/admin.sock"),
        };
        Ok((AdminClient::new(&socket), output))
    }
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// The statements held now.
    List,
    /// One request in full: identity, analysis, the rule that asked, the text and parameters.
    Show { id: String },
    /// Run the held statement (and, per the policy's `grant`, let the same one through a while).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse the held statement (the client gets 42501 with the reason).
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Follow new requests and decisions as they happen.
    Watch,
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// Live sessions: identity, database, age, last statement (normalised), what is held.
    List,
    /// End a session: the client gets FATAL 57P01, the server connection is closed.
    Kill { id: u64 },
}

#[derive(clap::Args)]
struct RingSource {
    /// The agent's configuration (for the ring path and sealing key).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// A ring file (e.g. a copy taken off the host); overrides --config.
    #[arg(long, global = true)]
    ring: Option<PathBuf>,
    /// Output: table (aligned, colour on a terminal) or json (one object per line).
    #[arg(short = 'o', long, global = true, default_value = "table")]
    output: String,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The newest records; with -f, keep printing new ones.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Records matching every filter given.
    Query {
        /// The warden/identity label, command name or executable name.
        #[arg(long)]
        identity: Option<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        database: Option<String>,
        /// allow, deny or hold.
        #[arg(long)]
        verdict: Option<String>,
        /// Statements whose dry-run verdict differs from the real one in this way: deny, hold,
        /// allow (what enforcing the dry-run policies and rules would change) or mask.
        #[arg(long, value_name = "CHANGE", value_parser = ["deny", "hold", "allow", "mask"])]
        would: Option<String>,
        /// Statements that enforcing the dry-run policies and rules would refuse (--would deny).
        #[arg(long, conflicts_with = "would")]
        would_deny: bool,
        /// Record kind (statement, connection_open, ...).
        #[arg(long)]
        kind: Option<String>,
        /// 30s, 10m, 2h, 7d, or epoch milliseconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        session: Option<u64>,
    },
    /// Every record of one session.
    Show { session: u64 },
    /// A session's statements in order with timings and results.
    Replay { session: u64 },
    /// All records, one JSON object per line (see docs/audit.md for the fields).
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// The records as written (a statement's outcome as its own `statement_end` record, or in
        /// the statement's record when it ended before the writer wrote it).
        #[arg(long)]
        raw: bool,
    },
    /// Check checksums, the hash chain and the seals; exits 1 if anything is wrong.
    Verify {
        /// The sealing key (default: from the configuration, or RING.key).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Record counts, sizes, overwritten records.
    Stats,
    /// Measure how fast the ring alone appends statement records (writes a new ring at --ring).
    Bench {
        #[arg(long, default_value_t = 200_000)]
        records: u64,
    },
}

/// Sessions allocate and free small objects on the proxy threads and the audit writer frees
/// records made on them: mimalloc's per-thread free lists take both with less work than glibc's
/// arenas (measured in docs/decisions.md, "Performance: governance against the bare hop").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Cmd::Run { config: path } => {
            let config = Config::load(&path)?;
            if config.upgrade.keeper && std::env::var_os(warden::keeper::FD_ENV).is_none() {
                let exe = run::started_from().context("the agent's executable is not known")?;
                return warden::keeper::keep(&exe, &path);
            }
            run::run(config)?;
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
        Cmd::Upgrade { config, wait_s } => upgrade(&Config::load(&config)?, std::time::Duration::from_secs(wait_s)),
        Cmd::Ready { config } => ready(&Config::load(&config)?),
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
        Cmd::Audit { command, source } => audit(command, source),
        Cmd::Approvals { command, admin } => {
            use warden::admin::client;
            let (c, output) = admin.client()?;
            match command {
                ApprovalsCmd::List => client::approvals_list(&c, output)?,
                ApprovalsCmd::Show { id } => client::approvals_show(&c, &id, output)?,
                ApprovalsCmd::Approve { id, reason } => client::approvals_decide(&c, &id, true, reason, output)?,
                ApprovalsCmd::Deny { id, reason } => client::approvals_decide(&c, &id, false, reason, output)?,
                ApprovalsCmd::Watch => client::approvals_watch(&c, output)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sessions { command, admin } => {
            use warden::admin::client;
            let (c, output) = admin.client()?;
            match command {
                SessionsCmd::List => client::sessions_list(&c, output)?,
                SessionsCmd::Kill { id } => client::sessions_kill(&c, id, output)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy { command } => policy(command),
        Cmd::CheckConfig { config } => {
            let mut config = Config::load(&config)?;
            // Host names are resolved as `run` resolves them at start-up (same `dns:` settings):
            // the addresses are shown, and a name that resolves to nothing fails here too.
            warden::net::dns::resolve_blocking(&mut config)?;
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
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            println!("ok: {} database(s), proxy {}", config.databases.len(), config.proxy.listen_v4);
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl RingSource {
    /// The ring file: --ring, else the configuration's.
    fn ring(&self) -> Result<PathBuf> {
        let config = self.config.as_deref().map(Config::load).transpose()?;
        Ok(match (&self.ring, &config) {
            (Some(ring), _) => ring.clone(),
            (None, Some(c)) => c.audit.path.clone(),
            (None, None) => Config::load(std::path::Path::new(DEFAULT_CONFIG))
                .map(|c| c.audit.path)
                .context("no --ring or --config given, and the default configuration could not be read")?,
        })
    }
}

/// Labels as KEY=VALUE pairs.
type Labels = Vec<(String, String)>;

/// `--label KEY=VALUE` pairs and `--since` as milliseconds since the epoch.
fn filters(labels: &[String], since: Option<&str>) -> Result<(Labels, Option<u64>)> {
    let labels = labels
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Option<Vec<_>>>()
        .context("--label: expected KEY=VALUE")?;
    let since_ms = since.map(|s| warden::audit::cli::parse_since(s, warden::audit::now_ms())).transpose()?;
    Ok((labels, since_ms))
}

fn audit(command: AuditCmd, source: RingSource) -> Result<ExitCode> {
    // What every command but `export --raw` shows: statements with their outcomes merged in.
    use warden::audit::cli::{self, Filter, Output};
    let config = source.config.as_deref().map(Config::load).transpose()?;
    let ring = source.ring()?;
    let output = match source.output.as_str() {
        "table" => Output::Table,
        "json" => Output::Json,
        other => anyhow::bail!("-o {other:?}: expected table or json"),
    };
    match command {
        AuditCmd::Tail { lines, follow } => {
            let (entries, newest) = cli::tail(&ring, lines)?;
            cli::print(&entries, output)?;
            if follow {
                cli::follow(&ring, newest.map_or(0, |seq| seq + 1), output)?;
            }
        }
        AuditCmd::Query { identity, labels, database, verdict, would, would_deny, kind, since, session } => {
            let (labels, since_ms) = filters(&labels, since.as_deref())?;
            let would = if would_deny { Some("deny".to_string()) } else { would };
            let filter = Filter { identity, labels, database, verdict, would, kind, session, since_ms };
            cli::print(&cli::select(&ring, &filter)?, output)?;
        }
        AuditCmd::Show { session } => {
            let filter = Filter { session: Some(session), ..Filter::default() };
            let entries = cli::select(&ring, &filter)?;
            if entries.is_empty() {
                anyhow::bail!("no records for session {session} in {}", ring.display());
            }
            cli::print(&entries, output)?;
        }
        AuditCmd::Replay { session } => {
            cli::replay(&cli::select(&ring, &Filter { session: Some(session), ..Filter::default() })?, session, output)?
        }
        AuditCmd::Export { format, raw } => {
            if format != "jsonl" {
                anyhow::bail!("--format {format:?}: only jsonl is supported");
            }
            if raw {
                cli::export_raw(&ring)?;
            } else {
                cli::export(&ring)?;
            }
        }
        AuditCmd::Verify { key } => {
            let key = key.or_else(|| config.as_ref().map(|c| c.audit.key_path())).or_else(|| {
                let mut p = ring.clone().into_os_string();
                p.push(".key");
                Some(PathBuf::from(p)).filter(|p| p.exists())
            });
            let every = config.as_ref().map(|c| c.audit.seal_every);
            let v = cli::verify_with(&ring, key.as_deref(), every)?;
            cli::print_verification(&v, output)?;
            return Ok(if v.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        AuditCmd::Bench { records } => {
            if ring.exists() {
                anyhow::bail!("{} exists; the bench writes a new ring", ring.display());
            }
            let rate = warden::audit::bench_append(&ring, records)?;
            let _ = std::fs::remove_file(&ring);
            println!("{records} statement records appended at {rate:.0} records/s");
        }
        AuditCmd::Stats => {
            let stats = cli::stats(&ring)?;
            if output == Output::Json {
                println!("{stats}");
            } else if let serde_json::Value::Object(map) = stats {
                for (k, v) in map {
                    // Values come from the ring (identities, floods): escaped like every table.
                    println!("{k:<16} {}", cli::escape_controls(&v.to_string()));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy(command: PolicyCmd) -> Result<ExitCode> {
    use warden::policy::{
        PolicySet, Subject,
        explain::{SearchPath, explain},
    };
    match command {
        PolicyCmd::Check { paths } => match PolicySet::load(&paths) {
            Ok(set) => {
                println!("ok: {} {}", set.len(), if set.len() == 1 { "policy" } else { "policies" });
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} mistake(s)", errors.len());
                Ok(ExitCode::FAILURE)
            }
        },
        PolicyCmd::Explain { policies, labels, database, user, search_path, sql } => {
            let paths = if policies.is_empty() {
                let found = ["policies", "/etc/warden/policies"].into_iter().map(PathBuf::from).find(|p| p.is_dir());
                vec![found.context("no --policies given, and neither ./policies nor /etc/warden/policies exists")?]
            } else {
                policies
            };
            let set =
                PolicySet::load(&paths).map_err(|errors| anyhow::anyhow!("the policies do not load:\n{errors}"))?;
            let labels = exec::parse_labels(&labels)?;
            let path = match search_path {
                Some(text) => SearchPath::parse(&text).map_err(anyhow::Error::msg)?,
                None => SearchPath::default(),
            };
            let subject = Subject { labels: &labels, database: &database, user: user.as_deref() };
            print!("{}", explain(&set, &subject, &sql, &path));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Simulate { policies, since, identity, labels, database, source } => {
            use warden::audit::cli;
            let set = PolicySet::load(&policies)
                .map_err(|errors| anyhow::anyhow!("the candidate policies do not load:\n{errors}"))?;
            let json = match source.output.as_str() {
                "table" => false,
                "json" => true,
                other => anyhow::bail!("-o {other:?}: expected table or json"),
            };
            let (labels, since_ms) = filters(&labels, since.as_deref())?;
            let ring = source.ring()?;
            let entries = cli::load(&ring, 0).with_context(|| format!("reading the audit ring {}", ring.display()))?;
            let filter = warden::govern::simulate::Filter { identity, labels, database, since_ms };
            let report = warden::govern::simulate::simulate(&set, entries.iter().map(|e| &e.value), &filter);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Bench { policies, labels, rounds } => {
            let set =
                PolicySet::load(&policies).map_err(|errors| anyhow::anyhow!("the policies do not load:\n{errors}"))?;
            let labels = exec::parse_labels(&labels)?;
            let cost = warden::govern::bench::measure(&set, &labels, rounds);
            println!(
                "analysis per statement: {:.2} µs uncached (normalise, parse, classify), {:.3} µs cached; \
                 judged (cached analysis + {} policies): {:.3} µs",
                cost.uncached_us,
                cost.cached_us,
                set.len(),
                cost.judged_us
            );
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
    println!("programs: {}", ebpf::pinned_programs(&config.bpffs_dir).join(", "));
    println!("serving: {} (heartbeat {age_ms} ms ago)", if serving { "yes" } else { "no" });
    // What the kernel governs now (host names and Services as last resolved), by database.
    println!("governed endpoints:");
    match ebpf::pinned_governed(&config.bpffs_dir) {
        Ok(endpoints) => {
            for (index, db) in config.databases.iter().enumerate() {
                let here: Vec<String> =
                    endpoints.iter().filter(|(_, id)| *id as usize == index).map(|(a, _)| a.to_string()).collect();
                let shown = if here.is_empty() { "(none)".to_string() } else { here.join(", ") };
                let named = match &db.address {
                    warden::config::DatabaseAddress::Host { host, port, .. } => format!("{host}:{port}"),
                    other => other.to_string(),
                };
                println!("  {} [{named}]: {shown}", db.name);
            }
        }
        Err(err) => println!("  (unreadable: {err})"),
    }
    // Sessions and approvals from the agent itself; the ring from its file.
    let client = warden::admin::client::AdminClient::new(&config.admin.socket);
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(client.call(hyper::Method::GET, "/v1/status", None));
    match answer {
        Ok(v) => {
            println!("sessions: {}", v["sessions"]);
            println!("pending approvals: {}", v["held"]);
        }
        Err(err) => println!("sessions: unknown ({err:#})"),
    }
    match warden::audit::ring::RingFile::open(&config.audit.path) {
        Ok(ring) => println!(
            "audit ring: {} of {} bytes used ({}%), {} overwritten, {} lost",
            ring.used(),
            ring.capacity(),
            ring.used() * 100 / ring.capacity().max(1),
            ring.overwritten(),
            ring.lost()
        ),
        Err(err) => println!("audit ring: unreadable ({err})"),
    }
    let fill: Vec<String> = ebpf::map_fill(&config.bpffs_dir)
        .iter()
        .map(|m| format!("{} {}/{}", m.name, m.entries, m.max_entries))
        .collect();
    println!("kernel tables: {}", fill.join(", "));
    let stats = ebpf::Stats::from_pin(&config.bpffs_dir)?.read();
    let names = [
        "redirected",
        "exempted",
        "ungoverned",
        "refused",
        "observed",
        "events_lost",
        "flows_recorded",
        "flows_accepted",
        "flows_abandoned",
    ];
    for (name, value) in names.iter().zip(stats) {
        println!("{name}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden upgrade`: SIGUSR2 to the serving agent, then waits for its successor to serve.
fn upgrade(config: &Config, wait: std::time::Duration) -> Result<ExitCode> {
    let ready = run::ready_file(&config.state_dir);
    let serving = || std::fs::read_to_string(&ready).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let old = serving().with_context(|| format!("no agent serves ({} is missing)", ready.display()))?;
    // The file outlives an agent that crashed: its pid may be another process's now.
    let cmdline = std::fs::read(format!("/proc/{old}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let is_agent = args.first().is_some_and(|a| a.ends_with(b"warden") || a.windows(6).any(|w| w == b"warden"))
        && args.get(1) == Some(&&b"run"[..]);
    if !is_agent {
        anyhow::bail!("pid {old} (from {}) is not a running agent: no agent serves", ready.display());
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGUSR2)
        .with_context(|| format!("signalling the agent (pid {old}); upgrading needs root"))?;
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        if let Some(new) = serving().filter(|&p| p != old) {
            println!(
                "upgraded: pid {new} serves; pid {old} drains its live sessions (at most {} s) and exits",
                config.upgrade.drain_deadline_s
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!(
        "no new agent served within {} s; pid {old} serves on (the new agent's reasons are in the agent's log)",
        wait.as_secs()
    )
}

/// `warden ready`: the serving agent is this container's, and says it is ready.
fn ready(config: &Config) -> Result<ExitCode> {
    let file = run::ready_file(&config.state_dir);
    let pid: u32 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no agent serves ({} is missing)", file.display()))?;
    // The unified hierarchy's line ("0::PATH"), as this process's cgroup namespace shows it.
    let cgroup_of = |pid: &str| -> Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        Ok(text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_default().to_string())
    };
    let (serving, own) = (cgroup_of(&pid.to_string())?, cgroup_of("self")?);
    if serving != own {
        anyhow::bail!("the serving agent (pid {pid}) is not this container's: another agent serves this host");
    }
    if let Some(metrics) = &config.metrics {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect_timeout(&metrics.listen, std::time::Duration::from_secs(2))
            .with_context(|| format!("connecting to {}", metrics.listen))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.lines().next().unwrap_or_default();
        if !status.contains(" 200 ") {
            anyhow::bail!("/readyz says {status:?}");
        }
    }
    println!("ready: pid {pid} serves");
    Ok(ExitCode::SUCCESS)
}
