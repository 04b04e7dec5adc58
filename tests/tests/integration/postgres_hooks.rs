//! The statement hooks of a PostgreSQL session, driven in-process against a real PostgreSQL
//! with a real driver: refusals come back as proper errors with a SQLSTATE and leave the
//! session (and the server's transaction state) exactly as a server-side error would; held
//! statements make the client wait. The kernel redirect is not involved here: the session is
//! served on a plain listener, with the database as its original destination.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use testkit::Postgres;
use tokio_postgres::NoTls;
use warden::{
    config::Config,
    flow::OrigDst,
    net::netns::Namespaces,
    proxy::Dial,
    proxy::postgres::{self, SessionContext, cancel::CancelRegistry},
    session::{
        Running, SqlState,
        hooks::{ResultColumns, SessionHooks, StatementInfo, Verdict},
    },
};

#[derive(Default)]
struct TestHooks {
    seen: Mutex<Vec<String>>,
    completed: Mutex<Vec<String>>,
    columns: Mutex<Vec<String>>,
}

impl SessionHooks for TestHooks {
    fn before_statement(&self, s: &StatementInfo<'_>) -> Verdict {
        self.seen.lock().unwrap().push(format!("{:?} {}", s.protocol, s.sql));
        let deny = || Verdict::Deny {
            sqlstate: SqlState::INSUFFICIENT_PRIVILEGE,
            message: "warden: refused by test policy".into(),
        };
        if s.sql.contains("hold_then_allow") {
            Verdict::Hold(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Verdict::Allow(None)
            }))
        } else if s.sql.contains("hold_then_deny") {
            Verdict::Hold(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Verdict::Deny { sqlstate: SqlState::INSUFFICIENT_PRIVILEGE, message: "warden: approval denied".into() }
            }))
        } else if s.sql.contains("forbidden") {
            deny()
        } else {
            Verdict::Allow(None)
        }
    }

    fn on_row_description(&self, _running: Option<&Running>, columns: &dyn ResultColumns) {
        let names =
            (0..columns.count()).filter_map(|i| columns.name(i)).map(|n| String::from_utf8_lossy(n).into_owned());
        self.columns.lock().unwrap().extend(names);
    }

    fn on_complete(&self, running: Option<&Running>, tag: &str) {
        // The state machine knows the statement and its bound parameters at every Execute.
        let params = running.and_then(|r| r.parameters()).map(|p| {
            p.values().into_iter().map(|(v, _)| v.map(|v| String::from_utf8_lossy(v).into_owned())).collect::<Vec<_>>()
        });
        let sql = running.map(|r| r.sql.to_string()).unwrap_or_default();
        self.completed.lock().unwrap().push(format!("{tag} | {sql} | {params:?}"));
    }
}

/// Serves sessions with `hooks` on a loopback listener; returns its address.
async fn serve(pg_port: u16, hooks: Arc<TestHooks>) -> SocketAddr {
    let yaml = format!("databases:\n  - {{name: main, address: '127.0.0.1:{pg_port}', tls: {{mode: disable}}}}\n");
    let config = Config::parse(Path::new("test.yaml"), &yaml).expect("config");
    let namespaces = Arc::new(Namespaces::new().expect("the test's own network namespace"));
    let ctx = Arc::new(SessionContext {
        database: Arc::new(config.databases[0].clone()),
        database_index: 0,
        orig_dst: OrigDst(format!("127.0.0.1:{pg_port}").parse().unwrap()),
        dial: Dial { netns: Ok(namespaces.agent_own()), namespaces, mark: 0 },
        client_tls: None,
        max_message: config.proxy.max_message_bytes,
        hooks,
        cancels: Arc::new(CancelRegistry::default()),
        live: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ctx = ctx.clone();
            tokio::spawn(async move { postgres::run(&ctx, stream, |_| {}).await });
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("host={} port={} user=postgres", addr.ip(), addr.port()), NoTls)
            .await
            .expect("connect through the session");
    tokio::spawn(conn);
    client
}

fn rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> usize {
    messages.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[test]
fn refused_statements_get_a_sqlstate_and_the_session_stays_usable() {
    let pg = Postgres::start();
    let hooks = Arc::new(TestHooks::default());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr = serve(pg.port, hooks.clone()).await;
        let client = connect(addr).await;

        // Simple protocol.
        let err = client.simple_query("select 'forbidden'").await.unwrap_err();
        assert_eq!(code(&err), "42501");
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.message(), "warden: refused by test policy");
        assert_eq!(rows(&client.simple_query("select 1").await.unwrap()), 1);

        // Extended protocol, refused at Bind.
        let err = client.query("select $1::text as forbidden", &[&"x"]).await.unwrap_err();
        assert_eq!(code(&err), "42501");
        let rows = client.query("select $1::text as fine", &[&"y"]).await.unwrap();
        assert_eq!(rows[0].get::<_, &str>(0), "y");

        // Pipelined: the refusal lands between the results of its neighbours.
        let (a, b, c) = tokio::join!(
            client.query_one("select 1::int4", &[]),
            client.query_one("select 2::int4 as forbidden", &[]),
            client.query_one("select 3::int4", &[])
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 1);
        assert_eq!(code(&b.unwrap_err()), "42501");
        assert_eq!(c.unwrap().get::<_, i32>(0), 3);

        // Inside a transaction block the refusal aborts the transaction, as a server error would.
        client.batch_execute("begin").await.unwrap();
        client.batch_execute("create temp table kept(x int)").await.unwrap();
        assert_eq!(code(&client.simple_query("select 'forbidden'").await.unwrap_err()), "42501");
        assert_eq!(code(&client.simple_query("select 1").await.unwrap_err()), "25P02");
        client.batch_execute("rollback").await.unwrap();
        assert_eq!(code(&client.simple_query("select * from kept").await.unwrap_err()), "42P01", "rolled back");

        // A multi-statement string with a refused statement runs none of it.
        client.batch_execute("create table keep_me(x int)").await.unwrap();
        let err = client.batch_execute("insert into keep_me values (1); select 'forbidden'").await.unwrap_err();
        assert_eq!(code(&err), "42501");
        let n: i64 = client.query_one("select count(*) from keep_me", &[]).await.unwrap().get(0);
        assert_eq!(n, 0);
    });
    let completed = hooks.completed.lock().unwrap().clone();
    assert!(completed.iter().any(|t| t == "SELECT 1 | select 1 | None"), "{completed:?}");
    assert!(completed.iter().any(|t| t == "SELECT 1 | select $1::text as fine | Some([Some(\"y\")])"), "{completed:?}");
    assert!(hooks.columns.lock().unwrap().iter().any(|c| c == "fine"));
    assert!(hooks.seen.lock().unwrap().iter().any(|s| s.starts_with("Extended select $1::text as forbidden")));
}

#[test]
fn held_statements_wait_for_the_decision() {
    let pg = Postgres::start();
    let hooks = Arc::new(TestHooks::default());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr = serve(pg.port, hooks.clone()).await;
        let client = connect(addr).await;
        let started = Instant::now();
        let rows = client.simple_query("select 'hold_then_allow'").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400), "held for {:?}", started.elapsed());
        assert_eq!(self::rows(&rows), 1);
        let started = Instant::now();
        let v: i32 = client.query_one("select 7::int4 as hold_then_allow", &[]).await.unwrap().get(0);
        assert_eq!(v, 7);
        assert!(started.elapsed() >= Duration::from_millis(400));
        let err = client.simple_query("select 'hold_then_deny'").await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().message(), "warden: approval denied");
        // Another session is not blocked by a held one.
        let other = connect(addr).await;
        let (held, free) = tokio::join!(client.simple_query("select 'hold_then_allow'"), async {
            let t = Instant::now();
            other.simple_query("select 1").await.unwrap();
            t.elapsed()
        });
        held.unwrap();
        assert!(free < Duration::from_millis(400), "the other session waited {free:?}");
    });
}
