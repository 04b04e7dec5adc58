//! The differential fuzzer: generated client scripts run once directly against PostgreSQL and
//! once through Warden, and what the client receives is compared as the fidelity test compares
//! it (`testkit::fidelity`). A script whose answers differ is run again; if it differs again,
//! the first diverging byte is reported (message index and byte offset on each side, with the
//! bytes around it) and the script is written out for replay.
//!
//! Scripts come from the frontend fuzz target's corpus (`--corpus DIR`: each file is a client
//! byte stream, a start-up packet then messages, as libFuzzer found or mutated it) and from a
//! generator seeded by `--seed`: start-up variants, then batches of well-formed, malformed,
//! truncated, oversized and garbage messages, each batch in one write (or one byte per write),
//! with reads, half-closes and cancels between them. What Warden does differently on purpose
//! (GSSAPI encryption declined, replication refused) is not generated.
//!
//! ```text
//! differential [--seconds N] [--scripts N] [--seed S] [--corpus DIR] [--out DIR]
//! differential --replay FILE
//! ```
//! Needs root (it starts the agent) and `WARDEN_BIN`. Exits 1 when a divergence reproduced.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use testkit::{
    Agent, Postgres,
    fidelity::{self, End, Step, Transcript},
    raw::{bind, execute, message, parse, query, startup_packet},
};

struct Options {
    seconds: u64,
    scripts: Option<usize>,
    seed: u64,
    corpus: Option<PathBuf>,
    out: PathBuf,
    replay: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        seconds: 60,
        scripts: None,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs()),
        corpus: None,
        out: PathBuf::from("target/differential"),
        replay: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--scripts" => o.scripts = Some(value()?.parse().map_err(|e| format!("--scripts: {e}"))?),
            "--seed" => o.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--corpus" => o.corpus = Some(PathBuf::from(value()?)),
            "--out" => o.out = PathBuf::from(value()?),
            "--replay" => o.replay = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// A generated script: its steps, and whether its bytes go one per write.
struct Script {
    steps: Vec<Step>,
    split: bool,
}

/// xorshift64*: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SQL: &[&str] = &[
    "select 1",
    "select 1/0",
    "begin",
    "commit",
    "rollback",
    "select g from generate_series(1, 20) g",
    "select repeat('x', 70000)",
    "create temp table if not exists t(a int)",
    "copy t from stdin",
    "copy (select 1, 'a') to stdout",
    "show application_name",
    "set application_name = 'differential'",
    "do $$ begin raise notice 'n'; end $$",
    "select pg_sleep(0.05)",
    "selec 1",
    "",
    "-- nothing",
    "select 1; select 1/0; select 2",
    "savepoint s",
    "prepare p as select $1::int",
    "execute p(1)",
    "deallocate all",
    "declare c cursor with hold for select 1",
    "fetch c",
];

/// One client message, well-formed or not.
fn message_atom(rng: &mut Rng) -> Vec<u8> {
    let sql = *rng.pick(SQL);
    let name = *rng.pick(&["", "s1", "p1"]);
    let mut m = match rng.below(16) {
        0..=3 => query(sql),
        4 => parse(name, sql),
        5 => bind(name, name, &[]),
        6 => bind(name, name, &["1"]),
        7 => execute(name),
        8 => message(b'D', &[&[*rng.pick(b"SPX")][..], name.as_bytes(), b"\0"].concat()),
        9 => message(b'C', &[&[*rng.pick(b"SP")][..], name.as_bytes(), b"\0"].concat()),
        10 => message(b'S', b""),
        11 => message(b'H', b""),
        12 => message(b'd', b"1\n"),
        13 => message(*rng.pick(b"cf"), b"done\0"),
        14 => message(b'F', &[0, 0, 0, 89, 0, 0, 0, 0, 0, 0]),
        _ => message(b'X', b""),
    };
    // Damage it, now and then. (Not a Bind or a function call: for those the server may meet
    // another error first, in what they refer to, where Warden refuses the malformed message
    // before it reaches the server: a difference on purpose.)
    if matches!(m[0], b'B' | b'F') {
        return m;
    }
    match rng.below(12) {
        0 if m.len() > 5 => {
            // Without its last byte (a string without its terminator), length adjusted.
            m.pop();
            let len = (m.len() - 1) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        1 => {
            // Junk after the body, length adjusted.
            m.extend_from_slice(b"junk");
            let len = (m.len() - 1) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        2 => m[0] = *rng.pick(b"YZ\0\xffpAk"),
        3 => m[1..5].copy_from_slice(&(rng.below(4) as u32).to_be_bytes()),
        4 => m.truncate(rng.below(m.len()).max(1)),
        _ => {}
    }
    m
}

fn startup_atom(rng: &mut Rng) -> Vec<u8> {
    let login = || startup_packet(&[("user", "postgres"), ("database", "postgres")]);
    match rng.below(20) {
        0 => fidelity::ssl_request(),
        1 => message(b'X', b""),
        2 => fidelity::startup_version(rng.below(6) as u16, rng.below(4) as u16, &[("user", "postgres")]),
        3 => startup_packet(&[("user", "nobody_here")]),
        4 => startup_packet(&[("user", "postgres"), ("database", "nowhere")]),
        5 => [12u32.to_be_bytes(), 80_877_102u32.to_be_bytes(), 7u32.to_be_bytes(), 9u32.to_be_bytes()].concat(),
        6 => {
            let mut p = login();
            p.truncate(rng.below(p.len()).max(1));
            p
        }
        7 => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        _ => login(),
    }
}

fn generate(rng: &mut Rng) -> Script {
    let mut steps = Vec::new();
    let first = startup_atom(rng);
    let ssl = first == fidelity::ssl_request();
    steps.push(Step::Send(first));
    steps.push(Step::Read);
    if ssl {
        steps.push(Step::Send(startup_packet(&[("user", "postgres"), ("database", "postgres")])));
        steps.push(Step::Read);
    }
    for _ in 0..1 + rng.below(6) {
        let batch: Vec<u8> = (0..1 + rng.below(4)).flat_map(|_| message_atom(rng)).collect();
        steps.push(Step::Send(batch));
        match rng.below(20) {
            0 => steps.push(Step::HalfClose),
            1 => steps.push(Step::Cancel),
            2 => {}
            _ => steps.push(Step::Read),
        }
    }
    steps.push(Step::Read);
    Script { steps, split: rng.chance(10) }
}

/// A fuzz corpus file (a client byte stream) as a script: its start-up packet, then its
/// messages in batches of a few, a read after each.
fn from_corpus(bytes: &[u8]) -> Script {
    let mut steps = Vec::new();
    let first = match bytes.get(..4) {
        Some(len) => (u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize).clamp(4, bytes.len()),
        None => bytes.len(),
    };
    steps.push(Step::Send(bytes[..first].to_vec()));
    steps.push(Step::Read);
    let mut pos = first;
    let mut in_batch = 0;
    let mut batch = Vec::new();
    while pos < bytes.len() {
        let end = match bytes.get(pos + 1..pos + 5) {
            Some(len) => pos.saturating_add(1 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize),
            None => bytes.len(),
        }
        .clamp(pos + 1, bytes.len());
        batch.extend_from_slice(&bytes[pos..end]);
        pos = end;
        in_batch += 1;
        if in_batch == 3 {
            steps.push(Step::Send(std::mem::take(&mut batch)));
            steps.push(Step::Read);
            in_batch = 0;
        }
    }
    if !batch.is_empty() {
        steps.push(Step::Send(batch));
        steps.push(Step::Read);
    }
    Script { steps, split: false }
}

/// The script as text, one step a line (the replay format).
fn write_script(script: &Script) -> String {
    let mut out = String::new();
    if script.split {
        out.push_str("split\n");
    }
    for step in &script.steps {
        match step {
            Step::Send(bytes) => {
                out.push_str("send ");
                for b in bytes {
                    let _ = write!(out, "{b:02x}");
                }
                out.push('\n');
            }
            Step::Read => out.push_str("read\n"),
            Step::HalfClose => out.push_str("halfclose\n"),
            Step::Cancel => out.push_str("cancel\n"),
        }
    }
    out
}

fn read_script(text: &str) -> Result<Script, String> {
    let mut script = Script { steps: Vec::new(), split: false };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        match line.split_once(' ').unwrap_or((line, "")) {
            ("", _) => {}
            ("split", _) => script.split = true,
            ("read", _) => script.steps.push(Step::Read),
            ("halfclose", _) => script.steps.push(Step::HalfClose),
            ("cancel", _) => script.steps.push(Step::Cancel),
            ("send", hex) => {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| format!("line {}: bad hex", n + 1))?;
                script.steps.push(Step::Send(bytes));
            }
            (other, _) => return Err(format!("line {}: unknown step {other:?}", n + 1)),
        }
    }
    Ok(script)
}

/// Runs a script both ways; the divergence, if any, with both transcripts.
fn difference(direct: &str, governed: &str, script: &Script) -> Option<(fidelity::Divergence, Transcript, Transcript)> {
    let mut expected = fidelity::run(direct, &script.steps, script.split, Duration::from_millis(300));
    let patience = if expected.end == End::Open { 300 } else { 5_000 };
    let mut through = fidelity::run(governed, &script.steps, script.split, Duration::from_millis(patience));
    fidelity::compare(&mut expected, &mut through, script.split).map(|d| (d, expected, through))
}

fn hex_around(raw: &[u8], at: usize) -> String {
    let from = at.saturating_sub(8);
    let to = (at + 24).min(raw.len());
    let mut out = String::new();
    for (i, b) in raw[from..to].iter().enumerate() {
        let _ = write!(out, "{}{b:02x}", if from + i == at { " [" } else { " " });
    }
    if at >= raw.len() {
        out.push_str(" [end");
    }
    out
}

fn report(name: &str, d: &fidelity::Divergence, expected: &Transcript, through: &Transcript) -> String {
    let side = |t: &Transcript, at: usize| {
        format!(
            "message {}: {:?}; end {:?}\n    bytes from {}:{}",
            d.message,
            t.messages.get(d.message).map_or("(none)", String::as_str),
            t.end,
            at,
            hex_around(&t.raw, at)
        )
    };
    format!(
        "DIVERGES {name}: first diverging byte at {} directly, {} through Warden\n  direct: {}\n  warden: {}",
        d.byte.0,
        d.byte.1,
        side(expected, d.byte.0),
        side(through, d.byte.1)
    )
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("differential: {e}");
            return ExitCode::from(2);
        }
    };
    let pg = Postgres::start();
    // Governed at 127.0.0.1 only: 127.0.0.2 reaches the same server directly.
    let _agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let (direct, governed) = (format!("127.0.0.2:{}", pg.port), format!("127.0.0.1:{}", pg.port));

    if let Some(path) = &o.replay {
        let script = match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| read_script(&t)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("differential: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        return match difference(&direct, &governed, &script) {
            Some((d, expected, through)) => {
                println!("{}", report(&path.display().to_string(), &d, &expected, &through));
                ExitCode::FAILURE
            }
            None => {
                println!("same {}", path.display());
                ExitCode::SUCCESS
            }
        };
    }

    let mut scripts: Vec<(String, Script)> = Vec::new();
    if let Some(dir) = &o.corpus {
        for file in corpus_files(dir) {
            if let Ok(bytes) = std::fs::read(&file)
                && !bytes.is_empty()
                && bytes.len() <= 1 << 16
            {
                scripts.push((format!("corpus {}", file.display()), from_corpus(&bytes)));
            }
        }
    }
    let mut rng = Rng(o.seed.max(1));
    let started = Instant::now();
    let deadline = Duration::from_secs(o.seconds);
    let (mut ran, mut diverged) = (0usize, 0usize);
    let mut corpus = scripts.into_iter();
    println!("differential: seed {}", o.seed);
    loop {
        if o.scripts.is_some_and(|n| ran >= n) || (o.scripts.is_none() && started.elapsed() > deadline) {
            break;
        }
        let (name, script) = corpus.next().unwrap_or_else(|| (format!("generated #{ran}"), generate(&mut rng)));
        ran += 1;
        // Timing alone may part two runs: a difference counts when it comes back.
        if difference(&direct, &governed, &script).is_none() {
            continue;
        }
        let Some((d, expected, through)) = difference(&direct, &governed, &script) else { continue };
        diverged += 1;
        println!("{}", report(&name, &d, &expected, &through));
        let _ = std::fs::create_dir_all(&o.out);
        let file = o.out.join(format!("diverging-{}-{ran}.script", o.seed));
        match std::fs::write(&file, write_script(&script)) {
            Ok(()) => println!("  replay: differential --replay {}", file.display()),
            Err(e) => println!("  (could not write {}: {e})", file.display()),
        }
    }
    println!("differential: {ran} scripts, {diverged} diverged, {:.0} s", started.elapsed().as_secs_f64());
    if diverged > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
