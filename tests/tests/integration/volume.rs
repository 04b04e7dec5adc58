//! Volume limits through the real redirect against a real PostgreSQL: a 1,000,000-row result
//! against a 10,000-row cap stops at the cap in text and binary formats, with COPY TO STDOUT,
//! through a cursor's FETCHes and in a pipeline; the server's work is cancelled, the session
//! stays usable, the agent's memory stays bounded; a per-window limit refuses further reads
//! until its window passes; the audit records every cut with its count.

use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, pin_mut};
use testkit::{Agent, Postgres, db_code, db_message, pg_connect};

const POLICY: &str = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: volume}\nspec:\n  selector: {}\n  rules:\n    - {name: big-results, match: {relations: ['*.big']}, limit: {rows: 10000}}\n    - {name: any-read, match: {class: [read]}, limit: {rows: 20000, bytes: 64MiB}}\n    - {name: crm-budget, match: {relations: ['crm.*']}, limit: {rows: 300, per: 1m}}\n";

/// Rows a simple query returned before it ended, and how it ended.
async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> (usize, Result<(), tokio_postgres::Error>) {
    let stream = match client.simple_query_raw(sql).await {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    pin_mut!(stream);
    let mut rows = 0;
    while let Some(message) = stream.next().await {
        match message {
            Ok(tokio_postgres::SimpleQueryMessage::Row(_)) => rows += 1,
            Ok(_) => {}
            Err(e) => return (rows, Err(e)),
        }
    }
    (rows, Ok(()))
}

/// The agent's peak resident memory (KiB).
fn peak_kib(agent: &Agent) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid().expect("agent running"))).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn assert_stopped(what: &str, rows: usize, ended: Result<(), tokio_postgres::Error>, rule: &str, cap: usize) {
    let e = ended.expect_err(&format!("{what}: stopped with an error"));
    assert_eq!(db_code(&e), "54000", "{what}: {e}");
    assert!(db_message(&e).contains(&format!("rule \"{rule}\"")), "{what}: {}", db_message(&e));
    assert_eq!(rows, cap, "{what}: the rows up to the cap reach the client, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_stopped_at_their_volume_limit_by_every_path_and_the_server_work_is_cancelled() {
    let pg = Postgres::start();
    pg.admin_sql(
        "create table big as select g as id, md5(g::text) as payload from generate_series(1, 1000000) g; \
         create schema crm; create table crm.accounts as select g as id from generate_series(1, 1000) g",
    );
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("volume.yaml", POLICY)],
    );
    let client = pg_connect(pg.port).await;
    let peak_before = peak_kib(&agent);

    // Text rows (simple protocol).
    let (rows, ended) = simple_rows(&client, "select * from big").await;
    assert_stopped("simple query", rows, ended, "big-results", 10_000);

    // Binary rows (extended protocol, prepared).
    let statement = client.prepare("select * from big").await.expect("prepare");
    let stream = client.query_raw(&statement, std::iter::empty::<i32>()).await.expect("bind and execute");
    pin_mut!(stream);
    let (mut rows, mut ended) = (0, Ok(()));
    while let Some(row) = stream.next().await {
        match row {
            Ok(_) => rows += 1,
            Err(e) => {
                ended = Err(e);
                break;
            }
        }
    }
    assert_stopped("binary rows", rows, ended, "big-results", 10_000);

    // COPY TO STDOUT: one CopyData per row.
    let copy = client.copy_out("copy big to stdout").await.expect("copy out begins");
    pin_mut!(copy);
    let (mut lines, mut ended) = (0, Ok(()));
    while let Some(chunk) = copy.next().await {
        match chunk {
            Ok(bytes) => lines += bytes.iter().filter(|b| **b == b'\n').count(),
            Err(e) => {
                ended = Err(e);
                break;
            }
        }
    }
    assert_stopped("COPY TO STDOUT", lines, ended, "big-results", 10_000);

    // A cursor: its FETCHes count together.
    client.batch_execute("begin; declare c cursor for select * from big").await.expect("declare");
    let mut fetched = 0;
    let mut ended = Ok(());
    for _ in 0..30 {
        let (rows, end) = simple_rows(&client, "fetch 1000 from c").await;
        fetched += rows;
        if end.is_err() {
            ended = end;
            break;
        }
    }
    assert_stopped("cursor FETCHes", fetched, ended, "big-results", 10_000);
    client.batch_execute("rollback").await.expect("rollback");

    // A DECLARE the server refuses leaves the cursor it names as it was, limits included.
    client.batch_execute("declare h cursor with hold for select * from big").await.expect("declare with hold");
    let refused = client.batch_execute("declare h cursor for select 1").await;
    assert!(refused.is_err(), "outside a transaction block the server refuses it");
    let (rows, ended) = simple_rows(&client, "fetch all from h").await;
    assert_stopped("the held cursor", rows, ended, "big-results", 10_000);
    client.batch_execute("close h").await.expect("close");

    // A rollback to a savepoint (in capitals) leaves the transaction and its cursor open: the
    // cursor keeps its limits through a refused DECLARE of its name.
    for sql in
        ["BEGIN", "DECLARE s CURSOR FOR SELECT * FROM big", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "SAVEPOINT b"]
    {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(client.batch_execute("DECLARE s CURSOR FOR SELECT 1").await.is_err(), "the name is taken");
    client.batch_execute("ROLLBACK TO SAVEPOINT b").await.expect("back to b");
    let (rows, ended) = simple_rows(&client, "FETCH ALL FROM s").await;
    assert_stopped("the cursor after a savepoint rollback", rows, ended, "big-results", 10_000);
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // A portal and a cursor share one namespace. Binding a limited cursor's name (the server
    // refuses: the cursor holds it), then a DECLARE of it the server refuses too, leaves the
    // cursor's limits: its FETCH stops at the cap of the statement it was declared with.
    let addr = format!("127.0.0.1:{}", pg.port);
    let by_name = tokio::task::spawn_blocking(move || {
        use testkit::raw::{Raw, bind, errors, message, parse, query};
        let mut raw = Raw::login(&addr);
        raw.send(&query("declare k cursor with hold for select * from big"));
        assert!(errors(&raw.until_ready()).is_empty());
        raw.send(&[parse("", "select 1"), bind("k", "", &[]), message(b'S', b"")].concat());
        assert_eq!(errors(&raw.until_ready()), ["42P03"], "the cursor holds the name");
        raw.send(&query("declare k cursor for select 1"));
        assert_eq!(errors(&raw.until_ready()), ["25P01"], "outside a transaction block");
        raw.send(&query("fetch all from k"));
        let answer = raw.until_ready();
        (answer.iter().filter(|m| m.0 == b'D').count(), errors(&answer))
    })
    .await
    .expect("raw session");
    assert_eq!(by_name, (10_000, vec!["54000".to_string()]), "the declared statement's cap");

    // A pipeline: the stopped statement's batch ends with its error; the next batch runs.
    let big = async {
        let stream = client.query_raw(&statement, std::iter::empty::<i32>()).await?;
        pin_mut!(stream);
        let mut rows = 0;
        while let Some(row) = stream.next().await {
            row?;
            rows += 1;
        }
        Ok::<usize, tokio_postgres::Error>(rows)
    };
    let after = client.query_one("select 42::int4", &[]);
    let (big, after) = tokio::join!(big, after);
    let e = big.expect_err("the pipelined big result is stopped");
    assert_eq!(db_code(&e), "54000", "{e}");
    assert_eq!(after.expect("the statement pipelined after it runs").get::<_, i32>(0), 42);

    // The session is usable afterwards.
    let count: i64 = client.query_one("select count(*) from big", &[]).await.expect("usable").get(0);
    assert_eq!(count, 1_000_000);

    // The server's work is cancelled: a result that would stream for minutes ends at once.
    let started = Instant::now();
    let (rows, ended) = simple_rows(&client, "select generate_series(1, 500000000) as endless").await;
    assert_stopped("an endless result", rows, ended, "any-read", 20_000);
    assert!(started.elapsed() < Duration::from_secs(20), "stopped after {:?}", started.elapsed());
    let active = pg.admin_sql(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%500000000%' \
         and pid <> pg_backend_pid()",
    );
    assert_eq!(active, "0", "the server is no longer running it");
    let (rows, ended) = simple_rows(&client, "select 1").await;
    assert!(ended.is_ok() && rows == 1, "the next statement is not hit by the cancel: {ended:?}");

    // A window: 300 rows of crm.* per minute for this identity.
    let (rows, ended) = simple_rows(&client, "select * from crm.accounts limit 200").await;
    assert!(ended.is_ok() && rows == 200, "{ended:?}");
    let (rows, ended) = simple_rows(&client, "select * from crm.accounts limit 200").await;
    assert_stopped("the window's rest", rows, ended, "crm-budget", 100);
    let (rows, ended) = simple_rows(&client, "select id from crm.accounts where id = 1").await;
    let e = ended.expect_err("refused until the window passes");
    assert_eq!((db_code(&e), rows), ("54000".to_string(), 0));
    assert!(db_message(&e).contains("refused until"), "{}", db_message(&e));
    // Another session of the same identity shares the window.
    let other = pg_connect(pg.port).await;
    let e = other.simple_query("select count(*) from crm.accounts").await.expect_err("shared window");
    assert_eq!(db_code(&e), "54000", "{e}");

    // A row larger than the bytes limit is stopped from its header, never held whole.
    let (rows, ended) = simple_rows(&client, "select repeat('x', 200000000) as huge").await;
    assert_stopped("a 200 MB row", rows, ended, "any-read", 0);

    // The agent did not hold the rows it dropped.
    let grew = peak_kib(&agent).saturating_sub(peak_before);
    assert!(grew < 128 * 1024, "the agent's peak memory grew by {grew} KiB");

    // The audit records each cut with its count, and the limits of every statement.
    let stopped = agent.wait_record("a stopped statement", |r| {
        r["kind"] == "statement" && r["outcome"] == "stopped" && r["stopped"]["rule"] == "big-results"
    });
    assert_eq!(stopped["rows"], 10_000, "{stopped}");
    assert_eq!(stopped["error"], "54000", "{stopped}");
    let limits: Vec<&str> =
        stopped["limits"].as_array().expect("limits").iter().filter_map(|l| l["rule"].as_str()).collect();
    assert_eq!(limits, ["big-results", "any-read"], "{stopped}");
    let refused = agent.wait_record("the refusal by the window", |r| {
        r["kind"] == "statement" && r["verdict"]["decision"] == "deny" && r["verdict"]["rule"] == "crm-budget"
    });
    assert!(refused["verdict"]["reason"].as_str().is_some_and(|r| r.contains("refused until")), "{refused}");
}

/// A statement stopped at its limit is cancelled when what was read does not hold its end, yet
/// the server may have finished it already (its last rows and its end still on the way): the
/// cancel then lands after it. The client learns of the stop at once and may send its next
/// statement before ReadyForQuery (tokio-postgres does): that statement waits until the server
/// has taken the cancel, which therefore never hits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_sent_right_after_a_stop_is_not_hit_by_the_stopped_statements_cancel() {
    let pg = Postgres::start();
    let policy = "apiVersion: warden.dev/v1alpha1\nkind: DatabasePolicy\nmetadata: {name: ten}\nspec:\n  \
                  selector: {}\n  rules:\n    - {name: ten-rows, match: {class: [read]}, limit: {rows: 10}}\n";
    let _agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("ten.yaml", policy)],
    );
    let client = pg_connect(pg.port).await;
    // Rows of varied sizes: the eleventh (the one stopped) falls at various places in the
    // proxy's reads, and the whole result fits in the sockets' buffers (the server is done).
    for round in 0..24 {
        let size = 9_000 + round * 1_700;
        let (rows, ended) =
            simple_rows(&client, &format!("select repeat('x', {size}) from generate_series(1, 11)")).await;
        assert_stopped(&format!("round {round}"), rows, ended, "ten-rows", 10);
        let next = client.simple_query("select pg_sleep(0.05)").await;
        assert!(next.is_ok(), "round {round}: the next statement was hit: {next:?}");
    }

    // The extended protocol with the Sync held back until the Execute's end is seen (as a client
    // may): the Sync goes once the cancel is taken, not after a ReadyForQuery only it can bring.
    let addr = format!("127.0.0.1:{}", pg.port);
    let answers = tokio::task::spawn_blocking(move || {
        use testkit::raw::{Raw, bind, errors, execute, message, parse, query};
        let mut raw = Raw::login(&addr);
        (0..8)
            .map(|round| {
                let sql = format!("select repeat('x', {}) from generate_series(1, 11)", 9_000 + round * 5_100);
                let started = Instant::now();
                raw.send(&[parse("", &sql), bind("", "", &[]), execute(""), message(b'H', b"")].concat());
                let mut seen = Vec::new();
                while !matches!(seen.last(), Some((b'E' | 0, _))) {
                    seen.push(raw.message());
                }
                raw.send(&message(b'S', b""));
                seen.extend(raw.until_ready());
                raw.send(&query("select pg_sleep(0.05)"));
                let next = errors(&raw.until_ready());
                (seen.iter().filter(|m| m.0 == b'D').count(), errors(&seen), next, started.elapsed())
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("raw session");
    for (round, (rows, stopped, next, took)) in answers.into_iter().enumerate() {
        assert_eq!((rows, stopped, next), (10, vec!["54000".to_string()], vec![]), "round {round}");
        assert!(took < Duration::from_secs(3), "round {round}: the held Sync waited {took:?}");
    }
}
