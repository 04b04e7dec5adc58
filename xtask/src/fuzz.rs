//! `cargo xtask fuzz`: runs each cargo-fuzz target of the protocol decoders for a bounded time,
//! starting from a seed corpus of well-formed messages written here (no binary files in git).
//! `cargo xtask fuzz --differential`: client byte streams (the frontend target's corpus, then
//! generated scripts) run directly against PostgreSQL and through Warden, compared
//! (tests/src/bin/differential.rs).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{cargo, run, warden_binary, workspace_root};

const TARGETS: &[&str] = &["frontend", "backend"];

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frontend" => {
            let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
            startup.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
            let len = startup.len() as u32;
            startup[..4].copy_from_slice(&len.to_be_bytes());
            let mut extended = startup.clone();
            extended.extend(message(b'P', b"s1\0select $1::int4\0\0\x01\0\0\0\x17"));
            extended.extend(message(b'B', b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x2a\0\x01\0\x01"));
            extended.extend(message(b'D', b"P\0"));
            extended.extend(message(b'E', b"\0\0\0\0\0"));
            extended.extend(message(b'S', b""));
            let mut simple = startup.clone();
            simple.extend(message(b'Q', b"select 1; copy t from stdin\0"));
            simple.extend(message(b'd', b"1\talpha\n"));
            simple.extend(message(b'c', b""));
            simple.extend(message(b'X', b""));
            vec![startup, extended, simple, vec![0, 0, 0, 8, 4, 210, 22, 47]]
        }
        _ => {
            let mut ready = message(b'R', &0i32.to_be_bytes());
            ready.extend(message(b'S', b"server_version\x0015.0\0"));
            ready.extend(message(b'K', b"\0\0\0\x07abcd"));
            ready.extend(message(b'Z', b"I"));
            let mut results = ready.clone();
            results.extend(message(b'1', b""));
            results.extend(message(b't', b"\0\0"));
            results.extend(message(b'T', b"\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"));
            results.extend(message(b'D', b"\0\x01\0\0\0\x011"));
            results.extend(message(b'C', b"SELECT 1\0"));
            results.extend(message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
            results.extend(message(b'Z', b"I"));
            let mut sasl = message(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
            sasl.extend(message(b'A', b"\0\0\0\x01ch\0payload\0"));
            vec![ready, results, sasl]
        }
    }
}

fn ensure_cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("fuzz: installing cargo-fuzz from crates.io");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

pub fn fuzz(seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let agent = workspace_root().join("agent");
    for target in TARGETS {
        let corpus = agent.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        for (i, seed) in seeds(target).into_iter().enumerate() {
            write_seed(&corpus, i, &seed)?;
        }
        eprintln!("fuzz: {target} for {seconds} s");
        run(crate::without_run_env(&mut Command::new("cargo"))
            .current_dir(&agent)
            .args(["+nightly", "fuzz", "run", target])
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096"))?;
    }
    Ok(())
}

/// The differential run: the frontend corpus (seeded here, grown by `cargo xtask fuzz`) and
/// generated scripts for `seconds`, through a real agent and a throwaway PostgreSQL.
pub fn differential(seconds: u64, seed: Option<u64>) -> Result<()> {
    let root = workspace_root();
    let corpus = root.join("agent/fuzz/corpus/frontend");
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    for (i, seed) in seeds("frontend").into_iter().enumerate() {
        write_seed(&corpus, i, &seed)?;
    }
    let mut cmd = cargo();
    cmd.args(["run", "--package", "warden-integration", "--bin", "differential", "--"]);
    cmd.arg("--seconds").arg(seconds.to_string()).arg("--corpus").arg(&corpus);
    cmd.arg("--out").arg(root.join("target/differential"));
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    cmd.env("WARDEN_BIN", warden_binary(false));
    run(&mut cmd)
}

fn write_seed(corpus: &Path, i: usize, seed: &[u8]) -> Result<()> {
    let path = corpus.join(format!("seed-{i}"));
    fs::write(&path, seed).with_context(|| format!("writing {}", path.display()))
}
