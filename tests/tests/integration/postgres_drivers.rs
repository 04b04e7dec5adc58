//! Driver compatibility through the redirect and the PostgreSQL protocol proxy: every client
//! gives the same results through Warden as direct. "Through Warden" is 127.0.0.1:PORT (the
//! governed endpoint); "direct" is [::1]:PORT on the same server (not governed).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{Agent, Postgres, check, output, pgbench_bin, psql_bin};

const VIA_WARDEN: &str = "127.0.0.1";
const DIRECT: &str = "::1";

fn governed(pg: &Postgres) -> Agent {
    Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port))
}

/// psql running a script file, unaligned, stopping at the first error.
fn psql_script(host: &str, port: u16, script: &str) -> String {
    let tmp = testkit::temp_dir("warden-psql-");
    let dir = tmp.path().to_path_buf();
    let path = dir.join("script.sql");
    std::fs::write(&path, script.replace("@DIR@", &dir.display().to_string())).unwrap();
    let out = output(
        Command::new(psql_bin())
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h", host, "-p", &port.to_string(), "-f"])
            .arg(&path),
    );
    drop(tmp);
    assert!(out.status.success(), "psql via {host} failed: {}", String::from_utf8_lossy(&out.stderr));
    // Notifications name the sending backend's pid, which differs between runs.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .map(|l| match l.find("server process with PID") {
            Some(i) => format!("{}server process with PID <pid>.", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn psql_copy_and_listen_notify_match_direct() {
    let pg = Postgres::start();
    let agent = governed(&pg);
    let script = r"
create temp table t(id int, name text, data bytea, at timestamptz default '2024-01-02 03:04:05+00');
copy t (id, name, data) from stdin;
1	alpha	\\x0102ff
2	beta	\N
3	gamma with tab\there	\\x
\.
\copy t to '@DIR@/t.csv' csv
\copy t from '@DIR@/t.csv' csv
select id, name, encode(data, 'hex'), at from t order by id, name;
copy (select id, name from t order by id limit 2) to stdout with (format csv, header);
copy (select generate_series(1, 5000) as n, md5(generate_series(1, 5000)::text)) to stdout;
listen ch;
notify ch, 'hello from warden';
select 'after notify';
";
    let through = psql_script(VIA_WARDEN, pg.port, script);
    let direct = psql_script(DIRECT, pg.port, script);
    assert_eq!(through, direct);
    assert!(through.contains("Asynchronous notification \"ch\" with payload \"hello from warden\""), "{through}");
    assert!(through.lines().filter(|l| l.starts_with("3|gamma")).count() == 2, "{through}");
    assert!(through.contains("5000\t"), "COPY OUT of 5000 rows relayed");
    let close = agent.wait_record("close", |r| r["kind"] == "connection_close");
    assert!(close["statements"].as_u64().unwrap() >= 10, "{close}");
    assert!(close["error"].is_null(), "{close}");
}

#[test]
fn errors_keep_the_session_usable_and_match_direct() {
    let pg = Postgres::start();
    let _agent = governed(&pg);
    let run = |host: &str| {
        let out = output(
            Command::new(psql_bin())
                .args(["-X", "-At", "-U", "postgres", "-h", host, "-p", &pg.port.to_string()])
                .stdin(Stdio::piped())
                .args([
                    "-c",
                    "select 1/0",
                    "-c",
                    "begin",
                    "-c",
                    "select nope",
                    "-c",
                    "select 2",
                    "-c",
                    "rollback",
                    "-c",
                    "select 3",
                ]),
        );
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (through_out, through_err) = run(VIA_WARDEN);
    let (direct_out, direct_err) = run(DIRECT);
    assert_eq!(through_out, direct_out);
    assert_eq!(through_err, direct_err);
    assert!(
        through_err.contains("division by zero") && through_err.contains("current transaction is aborted"),
        "{through_err}"
    );
    assert!(through_out.contains('3'));
}

fn pgbench(host: &str, port: u16, args: &[&str]) -> String {
    check(
        Command::new(pgbench_bin())
            .args(["-U", "postgres", "-h", host, "-p", &port.to_string()])
            .args(args)
            .arg("postgres"),
    )
}

#[test]
fn pgbench_in_every_query_mode() {
    let pg = Postgres::start();
    let agent = governed(&pg);
    // Initialisation loads pgbench_accounts with COPY through the proxy.
    pgbench(VIA_WARDEN, pg.port, &["-i", "-q", "-s", "1"]);
    assert_eq!(pg.admin_sql("select count(*) from pgbench_accounts"), "100000");
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(VIA_WARDEN, pg.port, &["-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode]);
        assert!(out.contains("number of transactions actually processed: 800/800"), "{mode}: {out}");
        assert!(out.contains("number of failed transactions: 0"), "{mode}: {out}");
    }
    // TPC-B keeps balances consistent with the history it wrote.
    assert_eq!(
        pg.admin_sql("select sum(abalance) from pgbench_accounts"),
        pg.admin_sql("select sum(delta) from pgbench_history")
    );
    assert_eq!(pg.admin_sql("select count(*) from pgbench_history"), "2400");
    let opens = agent.records().into_iter().filter(|r| r["kind"] == "connection_open").count();
    assert!(opens >= 13, "every pgbench connection went through Warden ({opens})");
}

/// Waits until a backend with this application name is running a query; returns its pid.
fn wait_active(pg: &Postgres, app: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pid = pg.admin_sql(&format!(
            "select pid from pg_stat_activity where application_name = '{app}' and state = 'active' and query like '%pg_sleep%'"
        ));
        if !pid.is_empty() {
            return pid;
        }
        assert!(Instant::now() < deadline, "no active backend for {app}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleeping_psql(port: u16, app: &str) -> std::process::Child {
    Command::new(psql_bin())
        .args(["-X", "-U", "postgres", "-h", VIA_WARDEN, "-p", &port.to_string(), "-c", "select pg_sleep(60)"])
        .env("PGAPPNAME", app)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql")
}

#[test]
fn cancel_from_the_server_side_and_from_the_client() {
    let pg = Postgres::start();
    let agent = governed(&pg);

    // pg_cancel_backend from another session.
    let started = Instant::now();
    let child = sleeping_psql(pg.port, "warden_cancel_server");
    let pid = wait_active(&pg, "warden_cancel_server");
    assert_eq!(pg.admin_sql(&format!("select pg_cancel_backend({pid})")), "t");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("canceling statement due to user request"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // psql's own cancel (SIGINT): a CancelRequest on a new connection, which the redirect
    // captures and the agent routes to the session's backend.
    let started = Instant::now();
    let child = sleeping_psql(pg.port, "warden_cancel_client");
    wait_active(&pg, "warden_cancel_client");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("canceling statement due to user request"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let cancel =
        agent.wait_record("cancel connection", |r| r["kind"] == "connection_open" && r["cancel_request"] == true);
    assert_eq!(cancel["identity"]["comm"], "psql");
}

async fn tokio_postgres_workload(host: &str, port: u16) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    let conn = tokio::spawn(conn);
    let mut out = Vec::new();
    // Binary results of many types (tokio-postgres asks for binary format).
    let row = client
        .query_one(
            "select 42::int8, 'x\\001y'::bytea, 1.5::float8, array[1,2,3]::int4[], '{\"a\": [1, null]}'::jsonb, \
             'f47ac10b-58cc-4372-a567-0e02b2c3d479'::uuid::text, true, null::text",
            &[],
        )
        .await
        .unwrap();
    let bytes: Vec<u8> = row.get(1);
    let ints: Vec<i32> = row.get(3);
    out.push(format!(
        "{} {:?} {} {:?} {} {} {:?}",
        row.get::<_, i64>(0),
        bytes,
        row.get::<_, f64>(2),
        ints,
        row.get::<_, String>(5),
        row.get::<_, bool>(6),
        row.get::<_, Option<String>>(7)
    ));
    // Pipelining: many queries in flight on one connection.
    let stmt = client.prepare("select $1::int4 * 2, repeat('z', $1::int4)").await.unwrap();
    let futures = (0..50).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move { client.query_one(stmt, &[&i]).await.map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1).len())) }
    });
    for r in join_all(futures.map(Box::pin).collect()).await {
        let (doubled, len) = r.unwrap();
        out.push(format!("{doubled} {len}"));
    }
    // An error inside a pipeline does not break the ones around it.
    let (a, b, c) = tokio::join!(
        client.query_one("select 1", &[]),
        client.query_one("select 1/0", &[]),
        client.query_one("select 3", &[])
    );
    out.push(format!(
        "{} {} {}",
        a.unwrap().get::<_, i32>(0),
        b.unwrap_err().code().unwrap().code(),
        c.unwrap().get::<_, i32>(0)
    ));
    // A transaction with a savepoint.
    client.batch_execute("create temp table tp(x int); begin; insert into tp values (1); savepoint s; insert into tp values (2); rollback to s; commit").await.unwrap();
    out.push(format!(
        "{:?}",
        client.query("select x from tp", &[]).await.unwrap().iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    ));
    drop(client);
    conn.await.unwrap().unwrap();
    out
}

/// A minimal join_all (no extra dependency): polls every future until all are done.
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    results.into_iter().map(|r| r.expect("ready")).collect()
}

#[test]
fn tokio_postgres_pipelining_binary_results_and_cancel_match_direct() {
    let pg = Postgres::start();
    let agent = governed(&pg);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let through = rt.block_on(tokio_postgres_workload(VIA_WARDEN, pg.port));
    let direct = rt.block_on(tokio_postgres_workload(DIRECT, pg.port));
    assert_eq!(through, direct);
    assert_eq!(through[51], "1 22012 3");

    // The driver's cancel token dials the same address: redirected and routed by key.
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &format!("host={VIA_WARDEN} port={} user=postgres", pg.port),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel sent");
        let err = tokio::time::timeout(Duration::from_secs(20), sleeper)
            .await
            .expect("cancelled in time")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    });
    agent.wait_record("cancel connection", |r| r["kind"] == "connection_open" && r["cancel_request"] == true);
}

fn drivers_dir() -> std::path::PathBuf {
    testkit::workspace_root().join("tests/drivers")
}

#[test]
fn psycopg3_cursors_pipeline_copy_and_binary_match_direct() {
    let pg = Postgres::start();
    let agent = governed(&pg);
    let run = |host: &str| {
        check(Command::new("python3").arg(drivers_dir().join("psycopg_check.py")).args([host, &pg.port.to_string()]))
    };
    let through = run(VIA_WARDEN);
    let direct = run(DIRECT);
    assert_eq!(through, direct);
    let results: serde_json::Value = serde_json::from_str(&through).unwrap();
    assert_eq!(results["server_side_cursor"], serde_json::json!([500500, 8]));
    assert_eq!(results["pipeline"], serde_json::json!([20, 190]));
    assert_eq!(results["pipeline_error"], "23505");
    assert_eq!(results["copy"].as_array().unwrap().len(), 5);
    assert_eq!(results["binary"], serde_json::json!([42, 1.25, "616263", [1, 2], "2024-01-02", true]));
    agent.wait_record("psycopg session", |r| r["kind"] == "connection_open" && r["identity"]["comm"] == "python3");
}

#[test]
fn pgjdbc_prepared_statements_and_batches_match_direct() {
    let pg = Postgres::start();
    let agent = governed(&pg);
    let run = |host: &str| {
        check(
            Command::new("java")
                .args(["-cp", "/usr/share/java/postgresql.jar"])
                .arg(drivers_dir().join("JdbcCheck.java"))
                .args([host, &pg.port.to_string()]),
        )
    };
    let through = run(VIA_WARDEN);
    let direct = run(DIRECT);
    assert_eq!(through, direct);
    assert!(
        through.contains("batch 250") && through.contains("totals 250 311.25") && through.contains("error 22012"),
        "{through}"
    );
    assert!(through.contains("still usable"), "{through}");
    // Java dials dual-stack sockets (AF_INET6 to ::ffff:127.0.0.1): still attributed.
    agent.wait_record("jdbc session", |r| r["kind"] == "connection_open" && r["identity"]["comm"] == "java");
}

async fn sqlx_workload(host: &str, port: u16) -> Vec<String> {
    use sqlx::{Connection as _, Executor as _, Row as _};
    let url = format!(
        "postgres://postgres@{}:{port}/postgres",
        if host.contains(':') { format!("[{host}]") } else { host.to_string() }
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("sqlx connect");
    let mut out = Vec::new();
    // Prepared (cached) statements with binary parameters and results.
    for i in 0..5i64 {
        let row = sqlx::query("select $1::int8 * 3 as n, $2::text || '!' as s, $3::bytea as b")
            .bind(i)
            .bind(format!("v{i}"))
            .bind(vec![i as u8, 0xff])
            .fetch_one(&mut conn)
            .await
            .unwrap();
        out.push(format!("{} {} {:?}", row.get::<i64, _>("n"), row.get::<String, _>("s"), row.get::<Vec<u8>, _>("b")));
    }
    // A multi-row stream.
    let rows =
        sqlx::query("select g, md5(g::text) from generate_series(1, 2000) g").fetch_all(&mut conn).await.unwrap();
    out.push(format!("{} {}", rows.len(), rows.iter().map(|r| r.get::<i32, _>(0) as i64).sum::<i64>()));
    // Simple-protocol batch and an error that leaves the connection usable.
    conn.execute("create temp table s(x int); insert into s values (1), (2)").await.unwrap();
    let err = sqlx::query("select 1/0").fetch_one(&mut conn).await.unwrap_err();
    out.push(err.as_database_error().and_then(|e| e.code()).unwrap_or_default().to_string());
    let n: i64 = sqlx::query_scalar("select count(*) from s").fetch_one(&mut conn).await.unwrap();
    out.push(n.to_string());
    conn.close().await.unwrap();
    out
}

#[test]
fn sqlx_prepared_binary_and_streams_match_direct() {
    let pg = Postgres::start();
    let _agent = governed(&pg);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let through = rt.block_on(sqlx_workload(VIA_WARDEN, pg.port));
    let direct = rt.block_on(sqlx_workload(DIRECT, pg.port));
    assert_eq!(through, direct);
    assert_eq!(through[5], "2000 2001000");
    assert_eq!(through[6], "22012");
}
