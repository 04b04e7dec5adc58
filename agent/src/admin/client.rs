//! The CLI's side of the admin API: `warden approvals ...` and `warden sessions ...`, over the
//! agent's unix socket, printed as tables (or `-o json`: the API's JSON as it came).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A connection to the agent's admin socket.
pub struct AdminClient {
    socket: PathBuf,
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_path_buf() }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "connecting to the agent's admin socket {} (is the agent running, and may you use it?)",
                self.socket.display()
            )
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("admin socket: HTTP handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "warden")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building the request")?;
        sender.send_request(request).await.context("admin socket: request failed")
    }

    /// A JSON answer; an error status becomes an error with the API's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await.context("admin socket: reading the answer")?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("admin socket: the answer is not JSON ({status})"))?;
        if status != StatusCode::OK {
            bail!("{}", value["error"].as_str().unwrap_or("the agent refused the request"));
        }
        Ok(value)
    }

    /// Follows a JSON-lines stream, line by line.
    pub async fn follow(&self, path: &str, mut each: impl FnMut(Value) -> Result<()>) -> Result<()> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            bail!("{}", value["error"].as_str().unwrap_or("the agent refused the request"));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("admin socket: the stream broke")?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice::<Value>(&line) {
                    each(value)?;
                }
            }
        }
        bail!("the agent closed the stream (stopped?)")
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")
}

/// A list from the API: printed as JSON lines (then `None`), or made into table rows (`row`
/// is given each item and the time now).
fn listed(
    client: &AdminClient,
    path: &str,
    output: Output,
    row: impl Fn(&Value, u64) -> Vec<String>,
) -> Result<Option<Vec<Vec<String>>>> {
    let list = runtime()?.block_on(client.call(Method::GET, path, None))?;
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if output == Output::Json {
        for item in items {
            println!("{item}");
        }
        return Ok(None);
    }
    let now = crate::audit::now_ms();
    Ok(Some(items.iter().map(|item| row(item, now)).collect()))
}

/// `warden approvals list`.
pub fn approvals_list(client: &AdminClient, output: Output) -> Result<()> {
    let Some(rows) = listed(client, "/v1/approvals", output, |r, now| {
        vec![
            text(&r["id"]),
            ago(now, r["created_ms"].as_u64()),
            until(now, r["expires_ms"].as_u64()),
            who(&r["identity"]),
            text(&r["database"]),
            text(&r["class"]),
            rule(r),
            clip(&text(&r["statement"]), 60),
        ]
    })?
    else {
        return Ok(());
    };
    table(&["ID", "AGE", "EXPIRES", "IDENTITY", "DATABASE", "CLASS", "RULE", "STATEMENT"], &rows);
    if rows.is_empty() {
        println!("(no statement is held)");
    }
    Ok(())
}

/// `warden approvals show ID`.
pub fn approvals_show(client: &AdminClient, id: &str, output: Output) -> Result<()> {
    let r = runtime()?.block_on(client.call(Method::GET, &format!("/v1/approvals/{id}"), None))?;
    if output == Output::Json {
        println!("{r}");
        return Ok(());
    }
    let now = crate::audit::now_ms();
    let identity = &r["identity"];
    let labels = label_pairs(identity);
    let fields = [
        ("request", text(&r["id"])),
        ("session", r["session"].to_string()),
        ("held for", ago(now, r["created_ms"].as_u64())),
        ("expires in", until(now, r["expires_ms"].as_u64())),
        ("database", text(&r["database"])),
        ("role", text(&r["role"])),
        ("labels", if labels.is_empty() { "-".into() } else { labels.join(", ") }),
        (
            "process",
            format!(
                "pid {} {} (uid {}{}) exe {}",
                identity["pid"],
                text(&identity["comm"]),
                identity["uid"],
                identity["user"].as_str().map(|u| format!(" {u}")).unwrap_or_default(),
                text(&identity["exe"])
            ),
        ),
        ("cgroup", text(&identity["cgroup"])),
        (
            "class",
            format!(
                "{}{}",
                text(&r["class"]),
                r["class_reason"].as_str().map(|c| format!(" ({c})")).unwrap_or_default()
            ),
        ),
        (
            "relations",
            r["relations"].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
        ),
        ("asked by", rule(&r)),
        ("because", text(&r["reason"])),
        ("grants", text(&r["grant"])),
        ("fingerprint", text(&r["fingerprint"])),
        (
            "statement",
            match r["statement_sha256"].as_str() {
                Some(sha) => {
                    format!("{} (cut: {} bytes in all, sha256 {sha})", text(&r["statement"]), r["statement_bytes"])
                }
                None => text(&r["statement"]),
            },
        ),
        ("text", text(&r["text"])),
    ];
    for (k, v) in fields {
        println!("{:<12} {}", format!("{k}:"), crate::audit::cli::escape_controls(&v));
    }
    if let Some(oid) = r["function_oid"].as_u64() {
        println!("{:<12} fast-path call of function oid {oid}", "function:");
    }
    if r["params"]["cut"] == true {
        println!(
            "{:<12} {} parameters; NOT ALL SHOWN IN FULL (sha256 of all: {})",
            "parameters:",
            r["params"]["count"],
            text(&r["params"]["sha256"])
        );
    }
    if let Some(params) = r["params"]["shown"].as_array() {
        for (i, p) in params.iter().enumerate() {
            let shown = match p {
                Value::Null => "NULL".to_string(),
                v => text(v),
            };
            println!("{:<12} {}", format!("${}:", i + 1), crate::audit::cli::escape_controls(&shown));
        }
    }
    Ok(())
}

/// `warden approvals approve|deny ID [--reason TEXT]`.
pub fn approvals_decide(
    client: &AdminClient,
    id: &str,
    approve: bool,
    reason: Option<String>,
    output: Output,
) -> Result<()> {
    let verb = if approve { "approve" } else { "deny" };
    let answer = runtime()?.block_on(client.call(
        Method::POST,
        &format!("/v1/approvals/{id}/{verb}"),
        Some(json!({ "reason": reason })),
    ))?;
    if output == Output::Json {
        println!("{answer}");
        return Ok(());
    }
    let decision = &answer["decision"];
    match decision["outcome"].as_str() {
        Some("approved") => {
            let grant = decision["grant_until_ms"]
                .as_u64()
                .map(|until| {
                    format!("; the same statement is let through for {}", until_text(crate::audit::now_ms(), until))
                })
                .unwrap_or_default();
            println!("approved {id}: the statement runs now{grant}");
        }
        _ => println!("denied {id}: the statement is refused"),
    }
    Ok(())
}

/// `warden approvals watch`: pending requests, then each new one and each decision.
pub fn approvals_watch(client: &AdminClient, output: Output) -> Result<()> {
    runtime()?.block_on(client.follow("/v1/approvals/watch", |v| {
        if output == Output::Json {
            println!("{v}");
            return Ok(());
        }
        let line = match v["event"].as_str() {
            Some("requested") => {
                let r = &v["request"];
                format!(
                    "held      {}  {} on {}: {}  ({}; expires in {})",
                    text(&r["id"]),
                    who(&r["identity"]),
                    text(&r["database"]),
                    clip(&text(&r["statement"]), 80),
                    rule(r),
                    until(crate::audit::now_ms(), r["expires_ms"].as_u64()),
                )
            }
            Some("decided") => format!(
                "{:<9} {}{}{}",
                text(&v["outcome"]),
                text(&v["id"]),
                v["by"]["user"].as_str().map(|u| format!("  by {u} (uid {})", v["by"]["uid"])).unwrap_or_default(),
                v["reason"].as_str().or(v["why"].as_str()).map(|r| format!(": {r}")).unwrap_or_default()
            ),
            _ => v.to_string(),
        };
        println!("{}", crate::audit::cli::escape_controls(&line));
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        Ok(())
    }))
}

/// `warden sessions list`.
pub fn sessions_list(client: &AdminClient, output: Output) -> Result<()> {
    let Some(rows) = listed(client, "/v1/sessions", output, |s, now| {
        vec![
            s["session"].to_string(),
            ago(now, s["started_ms"].as_u64()),
            who(&s["identity"]),
            text(&s["database"]),
            text(&s["db_user"]),
            text(&s["held"]),
            clip(&text(&s["last_statement"]), 60),
        ]
    })?
    else {
        return Ok(());
    };
    table(&["SESSION", "AGE", "IDENTITY", "DATABASE", "USER", "HELD", "LAST STATEMENT"], &rows);
    if rows.is_empty() {
        println!("(no live session)");
    }
    Ok(())
}

/// `warden sessions kill ID`.
pub fn sessions_kill(client: &AdminClient, id: u64, output: Output) -> Result<()> {
    let answer = runtime()?.block_on(client.call(Method::POST, &format!("/v1/sessions/{id}/terminate"), None))?;
    if output == Output::Json {
        println!("{answer}");
    } else {
        println!("session {id} terminated: both connections closed");
    }
    Ok(())
}

/// An identity's labels as `key=value`.
fn label_pairs(identity: &Value) -> Vec<String> {
    identity["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect()
}

/// The identity in a few words: its `warden/identity` label, else its labels, else its process.
fn who(identity: &Value) -> String {
    if let Some(name) = identity["labels"]["warden/identity"].as_str() {
        return name.to_string();
    }
    let labels = label_pairs(identity);
    if !labels.is_empty() {
        return labels.join(",");
    }
    format!("{}(uid {})", text(&identity["comm"]), identity["uid"])
}

fn rule(r: &Value) -> String {
    match (r["policy"].as_str(), r["rule"].as_str()) {
        (Some(p), Some(rule)) => format!("{p}/{rule}"),
        (Some(p), None) => format!("{p} (default)"),
        _ => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s / 60 % 60),
    }
}

fn ago(now: u64, at: Option<u64>) -> String {
    at.map_or_else(|| "-".into(), |at| span(now.saturating_sub(at)))
}

fn until(now: u64, at: Option<u64>) -> String {
    at.map_or_else(|| "-".into(), |at| until_text(now, at))
}

fn until_text(now: u64, at: u64) -> String {
    span(at.saturating_sub(now))
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", crate::audit::cli::escape_controls(out.trim_end()));
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
