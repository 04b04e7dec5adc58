//! Protocol fidelity by difference: a corpus of client byte scripts (start-up variants, early
//! and repeated Terminate, half-closes, pipelined batches with errors, COPY both ways, cancel,
//! garbage and malformed messages at every phase, and each script again with its bytes sent
//! one at a time) runs once directly against PostgreSQL and once through the redirect, and what
//! the client receives is compared (`testkit::fidelity`): the messages, in order, with their
//! SQLSTATEs, and how the connection ends (EOF, reset, still open). Only what must differ is
//! masked: backend key data, process ids, and the wording of an error (its severity and
//! SQLSTATE are compared; Warden's own errors say "warden: ...").
//!
//! Where Warden differs on purpose, the difference is written next to the script and checked to
//! be that one (`differing`); docs/decisions.md lists them all.

use std::time::Duration;

use testkit::{
    Agent, Postgres,
    fidelity::{
        End, Step, compare, copy_data, flush, gss_request, login, run, ssl_request, startup_version, sync, terminate,
    },
    raw::{bind, execute, message, parse, query, startup_packet},
};

struct Script {
    name: String,
    steps: Vec<Step>,
    /// Why Warden answers differently on purpose, and a text its answer must contain.
    differs: Option<(&'static str, &'static str)>,
}

/// After start-up: log in, read the server's welcome, then `steps`.
fn after_login(steps: Vec<Step>) -> Vec<Step> {
    let mut all = vec![Step::Send(login()), Step::Read];
    all.extend(steps);
    all
}

/// After start-up, with an empty temporary table `t(a int)`: `steps`.
fn with_table(steps: Vec<Step>) -> Vec<Step> {
    let mut all = after_login(vec![Step::Send(query("create temp table t(a int)")), Step::Read]);
    all.extend(steps);
    all
}

/// With `t` as above, inside `copy t from stdin` (the server waits for data): `steps`.
fn in_copy(steps: Vec<Step>) -> Vec<Step> {
    let mut all = with_table(vec![Step::Send(query("copy t from stdin")), Step::Read]);
    all.extend(steps);
    all
}

fn script(name: &str, steps: Vec<Step>) -> Script {
    Script { name: name.to_string(), steps, differs: None }
}

/// A script whose answer through Warden differs on purpose.
fn differing(name: &str, steps: Vec<Step>, why: &'static str, warden_says: &'static str) -> Script {
    Script { name: name.to_string(), steps, differs: Some((why, warden_says)) }
}

/// A CancelRequest for process `pid` with secret `key`.
fn cancel_packet(pid: u32, key: &[u8]) -> Vec<u8> {
    [&(12 + key.len() as u32).to_be_bytes()[..], &80_877_102u32.to_be_bytes(), &pid.to_be_bytes(), key].concat()
}

/// The corpus. Each script also runs split one byte per write (`name/split`).
fn corpus() -> Vec<Script> {
    use Step::{Cancel, HalfClose, Read, Send};
    let q = |sql: &str| Send(query(sql));
    let mut scripts = vec![
        // Start-up.
        script("terminate before start-up", vec![Send(terminate()), Read]),
        script("terminate twice before start-up", vec![Send([terminate(), terminate()].concat()), Read]),
        script("garbage before start-up", vec![Send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()), Read]),
        script("length below minimum", vec![Send(vec![0, 0, 0, 4]), Read]),
        script("length far too large", vec![Send(vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]), Read]),
        script("protocol 2.0", vec![Send(startup_version(2, 0, &[("user", "postgres")])), Read]),
        script("protocol 4.0", vec![Send(startup_version(4, 0, &[("user", "postgres")])), Read]),
        script("protocol 1.0", vec![Send(startup_version(1, 0, &[("user", "postgres")])), Read]),
        script("cancel request with an unknown key", vec![Send(cancel_packet(12_345, &[1, 2, 3, 4])), Read]),
        script("cancel request without a key", vec![Send(cancel_packet(12_345, &[])), Read]),
        script("cancel request with a 256-byte key", vec![Send(cancel_packet(12_345, &[7; 256])), Read]),
        script(
            "protocol 3.9 and an unknown _pq_ option",
            vec![
                Send(startup_version(3, 9, &[("user", "postgres"), ("database", "postgres"), ("_pq_.nothing", "1")])),
                Read,
            ],
        ),
        script("no user", vec![Send(startup_packet(&[("database", "postgres")])), Read]),
        script("unknown database", vec![Send(startup_packet(&[("user", "postgres"), ("database", "nowhere")])), Read]),
        script("unknown role", vec![Send(startup_packet(&[("user", "nobody_at_all")])), Read]),
        script("start-up and a query in one write", vec![Send([login(), query("select 1")].concat()), Read]),
        script("start-up and terminate in one write", vec![Send([login(), terminate()].concat()), Read]),
        script(
            "start-up, a pipeline and terminate in one write",
            vec![
                Send([login(), parse("", "select 1"), bind("", "", &[]), execute(""), sync(), terminate()].concat()),
                Read,
            ],
        ),
        script("start-up and garbage in one write", vec![Send([login(), message(b'Y', b"x")].concat()), Read]),
        script("SSLRequest declined, then start-up", vec![Send(ssl_request()), Read, Send(login()), Read]),
        differing(
            "GSSENCRequest declined, then start-up",
            vec![Send(gss_request()), Read, Send(login()), Read],
            "Warden cannot end a GSSAPI-encrypted session: it declines ('N') where a PostgreSQL built with GSSAPI accepts ('G'); clients fall back",
            "answer N",
        ),
        differing(
            "GSSENCRequest then SSLRequest then start-up",
            vec![Send(gss_request()), Read, Send(ssl_request()), Read, Send(login()), Read],
            "GSSAPI encryption declined, as above",
            "answer N",
        ),
        script("SSLRequest then terminate", vec![Send(ssl_request()), Read, Send(terminate()), Read]),
        script("SSLRequest then end of stream", vec![Send(ssl_request()), Read, HalfClose, Read]),
        script("half-close before start-up", vec![HalfClose, Read]),
        script("half of a start-up packet, then end of stream", vec![Send(login()[..6].to_vec()), HalfClose, Read]),
        script("start-up then half-close", vec![Send(login()), Read, HalfClose, Read]),
        script(
            "start-up with an option",
            vec![Send(startup_packet(&[("user", "postgres"), ("options", "-c search_path=pg_catalog")])), Read],
        ),
        script(
            "start-up with application_name",
            vec![Send(startup_packet(&[("user", "postgres"), ("application_name", "fidelity")])), Read],
        ),
        differing(
            "replication start-up",
            vec![Send(startup_packet(&[("user", "postgres"), ("replication", "database")])), Read],
            "replication connections are refused unless the database allows them (allow_replication)",
            "E SFATAL | C42501",
        ),
        // Terminate, in every position.
        script("terminate", after_login(vec![Send(terminate()), Read])),
        script(
            "terminate then a query in the same write",
            after_login(vec![Send([terminate(), query("select 1")].concat()), Read]),
        ),
        script(
            "terminate then garbage in the same write",
            after_login(vec![Send([terminate(), b"\xff\xff\xff".to_vec()].concat()), Read]),
        ),
        script("terminate twice", after_login(vec![Send([terminate(), terminate()].concat()), Read])),
        script(
            "a query then terminate in the same write",
            after_login(vec![Send([query("select 1"), terminate()].concat()), Read]),
        ),
        script(
            "a pipeline then terminate without Sync",
            after_login(vec![
                Send([parse("", "select 1"), bind("", "", &[]), execute(""), terminate()].concat()),
                Read,
            ]),
        ),
        script("terminate in a transaction", after_login(vec![q("begin"), Read, Send(terminate()), Read])),
        script(
            "terminate after an error in a transaction",
            after_login(vec![q("begin; select 1/0"), Read, Send(terminate()), Read]),
        ),
        script("half-close after start-up", after_login(vec![HalfClose, Read])),
        script("half-close after a query", after_login(vec![q("select 1"), HalfClose, Read])),
        script("half-close in a transaction", after_login(vec![q("begin"), Read, HalfClose, Read])),
        // Simple queries.
        script("select 1", after_login(vec![q("select 1"), Read])),
        script("empty query", after_login(vec![q(""), Read])),
        script("a comment only", after_login(vec![q("-- nothing"), Read])),
        script("syntax error", after_login(vec![q("selec 1"), Read])),
        script("division by zero", after_login(vec![q("select 1/0"), Read])),
        script(
            "several statements, an error in the middle",
            after_login(vec![q("select 1; select 1/0; select 2"), Read]),
        ),
        script(
            "transaction with an error then rollback",
            after_login(vec![q("begin"), Read, q("select 1/0"), Read, q("select 1"), Read, q("rollback"), Read]),
        ),
        script(
            "set and show",
            after_login(vec![q("set application_name = 'fidelity'"), Read, q("show application_name"), Read]),
        ),
        script("notice", after_login(vec![q("do $$ begin raise notice 'hello %', 1; end $$"), Read])),
        script(
            "warning and a result",
            after_login(vec![q("do $$ begin raise warning 'careful'; end $$; select 2"), Read]),
        ),
        script(
            "listen and notify myself",
            after_login(vec![q("listen fidelity_channel"), Read, q("notify fidelity_channel, 'payload'"), Read]),
        ),
        script("many rows", after_login(vec![q("select g, repeat('x', 50) from generate_series(1, 2000) g"), Read])),
        script("a wide row", after_login(vec![q("select repeat('y', 200000)"), Read])),
        script(
            "two queries in one write",
            after_login(vec![Send([query("select 1"), query("select 2")].concat()), Read]),
        ),
        script(
            "an error then a query in one write",
            after_login(vec![Send([query("select 1/0"), query("select 2")].concat()), Read]),
        ),
        // The extended protocol.
        script(
            "parse bind execute sync",
            after_login(vec![Send([parse("", "select 1"), bind("", "", &[]), execute(""), sync()].concat()), Read]),
        ),
        script(
            "parameters",
            after_login(vec![
                Send([parse("s1", "select $1::int + 1"), bind("", "s1", &["41"]), execute(""), sync()].concat()),
                Read,
            ]),
        ),
        script(
            "an error mid-pipeline skips to Sync",
            after_login(vec![
                Send(
                    [
                        parse("", "select 1/0"),
                        bind("", "", &[]),
                        execute(""),
                        parse("", "select 2"),
                        bind("", "", &[]),
                        execute(""),
                        sync(),
                        parse("", "select 3"),
                        bind("", "", &[]),
                        execute(""),
                        sync(),
                    ]
                    .concat(),
                ),
                Read,
            ]),
        ),
        script("a parse error", after_login(vec![Send([parse("", "selec"), sync()].concat()), Read])),
        script(
            "bind of a missing statement",
            after_login(vec![Send([bind("", "missing", &[]), sync()].concat()), Read]),
        ),
        script("execute of a missing portal", after_login(vec![Send([execute("missing"), sync()].concat()), Read])),
        script(
            "flush without sync",
            after_login(vec![
                Send([parse("", "select 1"), bind("", "", &[]), execute(""), flush()].concat()),
                Read,
                Send(sync()),
                Read,
            ]),
        ),
        script("sync alone", after_login(vec![Send(sync()), Read])),
        script("flush alone", after_login(vec![Send(flush()), Read])),
        script(
            "describe statement and portal",
            after_login(vec![
                Send(
                    [
                        parse("d1", "select 1 as a, 'x'::text as b"),
                        message(b'D', b"Sd1\0"),
                        bind("p1", "d1", &[]),
                        message(b'D', b"Pp1\0"),
                        execute("p1"),
                        sync(),
                    ]
                    .concat(),
                ),
                Read,
            ]),
        ),
        script(
            "close statement and portal",
            after_login(vec![
                Send(
                    [
                        parse("c1", "select 1"),
                        bind("cp", "c1", &[]),
                        message(b'C', b"Pcp\0"),
                        message(b'C', b"Sc1\0"),
                        sync(),
                    ]
                    .concat(),
                ),
                Read,
            ]),
        ),
        script(
            "execute with a row limit",
            after_login(vec![
                Send(
                    [
                        parse("", "select g from generate_series(1, 5) g"),
                        bind("lim", "", &[]),
                        message(b'E', b"lim\0\0\0\0\x02"),
                        message(b'E', b"lim\0\0\0\0\x02"),
                        sync(),
                    ]
                    .concat(),
                ),
                Read,
            ]),
        ),
        script(
            "the same statement name twice",
            after_login(vec![Send([parse("dup", "select 1"), parse("dup", "select 2"), sync()].concat()), Read]),
        ),
        // COPY.
        script("copy out", after_login(vec![q("copy (select g from generate_series(1, 100) g) to stdout"), Read])),
        script(
            "copy out csv with header",
            after_login(vec![q("copy (select 1 as a, 'x' as b) to stdout with (format csv, header)"), Read]),
        ),
        script(
            "copy in",
            after_login(vec![
                q("create temp table t(a int, b text)"),
                Read,
                q("copy t from stdin"),
                Read,
                Send([copy_data(b"1\tone\n2\ttwo\n"), message(b'c', &[])].concat()),
                Read,
                q("select count(*) from t"),
                Read,
            ]),
        ),
        script(
            "copy in failed by the client",
            in_copy(vec![Send([copy_data(b"1\n"), message(b'f', b"changed my mind\0")].concat()), Read]),
        ),
        script("copy in with a bad row", in_copy(vec![Send([copy_data(b"x\n"), message(b'c', &[])].concat()), Read])),
        script(
            "copy in, then terminate mid-copy",
            in_copy(vec![Send([copy_data(b"1\n"), terminate()].concat()), Read]),
        ),
        script("copy in, then a query instead of data", in_copy(vec![q("select 1"), Read])),
        script("copy in, then garbage instead of data", in_copy(vec![Send(message(b'Y', b"x")), Read])),
        script(
            "copy in with a sync and a flush among the data, bodies and all",
            in_copy(vec![
                Send(
                    [
                        copy_data(b"1\n"),
                        message(b'S', b"x"),
                        message(b'H', b"y"),
                        copy_data(b"2\n"),
                        message(b'c', b"z"),
                    ]
                    .concat(),
                ),
                Read,
                q("select count(*) from t"),
                Read,
            ]),
        ),
        script(
            "copy in failed without a terminated reason",
            in_copy(vec![Send(message(b'f', b"no terminator")), Read]),
        ),
        differing(
            "copy in, a bad row, then a sync, copy done and queries in one write",
            in_copy(vec![
                Send([copy_data(b"x\n"), sync(), message(b'c', &[]), query("select 41"), query("select 42")].concat()),
                Read,
            ]),
            "a Sync sent during COPY FROM STDIN is ignored while the COPY runs but answered once a bad row failed it, which the proxy cannot know when it relays it: it sends a Flush instead, answered neither way (else every later answer would be taken for the next statement's, masking included); PostgreSQL answers this Sync with one more ReadyForQuery",
            "E SERROR | C22P02\nZ I\nT ",
        ),
        script(
            "an extended copy in with data, copy done and sync pipelined in one write",
            with_table(vec![
                Send(
                    [
                        parse("", "copy t from stdin"),
                        bind("", "", &[]),
                        execute(""),
                        copy_data(b"1\n"),
                        message(b'c', &[]),
                        sync(),
                    ]
                    .concat(),
                ),
                Read,
                q("select count(*) from t"),
                Read,
            ]),
        ),
        script(
            "an extended copy in with its sync, as libpq sends it, then the data",
            with_table(vec![
                Send([parse("", "copy t from stdin"), bind("", "", &[]), execute(""), sync()].concat()),
                Read,
                Send([copy_data(b"1\n"), message(b'c', &[]), sync()].concat()),
                Read,
            ]),
        ),
        differing(
            "an extended copy into a view, sync pipelined",
            after_login(vec![
                q("create temp view v as select 1 as a"),
                Read,
                Send(
                    [parse("", "copy v from stdin"), bind("", "", &[]), execute(""), sync(), query("select 1")]
                        .concat(),
                ),
                Read,
            ]),
            "what follows a statement that may begin a COPY FROM STDIN waits for the server's answer; once the COPY has begun (CopyInResponse) a Sync goes as a Flush and any other message ends the COPY and the session, even when the COPY fails right after it begins, which PostgreSQL shows only afterwards",
            "G \0\0\u{1}\0\0\nE SERROR | C42809",
        ),
        differing(
            "a slow statement, a copy in, a bad row, much data and a sync, pipelined",
            with_table(vec![
                Send(
                    [
                        parse("", "select pg_sleep(0.2)"),
                        bind("", "", &[]),
                        execute(""),
                        parse("", "copy t from stdin"),
                        bind("", "", &[]),
                        execute(""),
                        copy_data(b"bad\n"),
                        copy_data(&[b'1'; 100_000]),
                        sync(),
                        query("select 'after'"),
                    ]
                    .concat(),
                ),
                Read,
            ]),
            "a Sync among COPY data goes as a Flush and a query pipelined behind COPY data ends the COPY and the session: whether the server has left the COPY (after a bad row) when it reads them cannot be known as they are relayed, and taking it the wrong way let statements run unjudged or rows be credited to the wrong statement",
            "E SERROR | C22P02\nend Eof",
        ),
        script(
            "a text that says copy but is none, then a pipeline",
            after_login(vec![
                Send([parse("", "select 'copy'"), bind("", "", &[]), execute(""), sync(), query("select 2")].concat()),
                Read,
            ]),
        ),
        script("copy data outside copy", after_login(vec![Send(copy_data(b"stray\n")), Read, q("select 1"), Read])),
        script("copy done outside copy", after_login(vec![Send(message(b'c', &[])), Read, q("select 1"), Read])),
        // Garbage after start-up.
        script("an unknown message type", after_login(vec![Send(message(b'Y', b"abc")), Read])),
        script("a zero tag", after_login(vec![Send(message(0, b"")), Read])),
        script("a length below four", after_login(vec![Send(vec![b'Q', 0, 0, 0, 2]), Read])),
        script("a query without its terminator", after_login(vec![Send(message(b'Q', b"select 1")), Read])),
        script("an authentication message after start-up", after_login(vec![Send(message(b'p', b"secret\0")), Read])),
        script("a start-up packet after start-up", after_login(vec![Send(login()), Read])),
        script(
            "a query then garbage in one write",
            after_login(vec![Send([query("select 1"), message(b'Y', b"x")].concat()), Read]),
        ),
        script(
            "a query then an authentication message in one write",
            after_login(vec![Send([query("select 1"), message(b'p', b"secret\0")].concat()), Read]),
        ),
        script(
            "a pipeline then garbage in one write",
            after_login(vec![
                Send([parse("", "select 1"), bind("", "", &[]), execute(""), message(b'Y', b"x")].concat()),
                Read,
            ]),
        ),
        script(
            "a query then a length below four in one write",
            after_login(vec![Send([query("select 1"), vec![b'Q', 0, 0, 0, 2]].concat()), Read]),
        ),
        differing(
            "a sync longer than the server reads",
            after_login(vec![Send(message(b'S', &[0; 10_001])), Read]),
            "both close without a word; PostgreSQL leaves the rest of the message unread, so its close may reach the client as a reset, while Warden has read it and closes with an end of stream",
            "Z I\nend Eof",
        ),
        // Malformed messages: the server answers ERROR 08P01 and goes on.
        script("a malformed sync", after_login(vec![Send(message(b'S', b"x")), Read, q("select 1"), Read])),
        script("a malformed flush", after_login(vec![Send([message(b'H', b"x"), sync()].concat()), Read])),
        script(
            "a query with bytes after its terminator",
            after_login(vec![Send(message(b'Q', b"select 1\0junk")), Read]),
        ),
        script(
            "a malformed query in a transaction",
            after_login(vec![
                q("begin"),
                Read,
                Send(message(b'Q', b"select 1")),
                Read,
                q("select 1"),
                Read,
                q("rollback"),
                Read,
            ]),
        ),
        script(
            "a malformed bind mid-pipeline",
            after_login(vec![
                Send(
                    [parse("", "select 1"), message(b'B', b"\0\0\0\x01"), execute(""), sync(), query("select 2")]
                        .concat(),
                ),
                Read,
            ]),
        ),
        script(
            "a malformed parse",
            after_login(vec![Send([message(b'P', b"s\0select 1"), sync()].concat()), Read, q("select 2"), Read]),
        ),
        script("a malformed execute", after_login(vec![Send([message(b'E', b"p\0"), sync()].concat()), Read])),
        script(
            "a describe of an unknown kind",
            after_login(vec![Send([message(b'D', b"Xname\0"), sync()].concat()), Read]),
        ),
        script("a malformed close", after_login(vec![Send([message(b'C', b"S"), sync()].concat()), Read])),
        script("a malformed function call", after_login(vec![Send(message(b'F', b"\0\0")), Read, q("select 1"), Read])),
        script(
            "a malformed message while skipping to sync",
            after_login(vec![
                Send([parse("", "selec"), message(b'Q', b"x"), message(b'B', b"\0"), sync()].concat()),
                Read,
            ]),
        ),
        script("terminate with a body", after_login(vec![Send(message(b'X', b"bye")), Read])),
        // Cancel.
        script(
            "cancel a running query",
            after_login(vec![q("select pg_sleep(20)"), Cancel, Read, q("select 1"), Read]),
        ),
        script("cancel while idle", after_login(vec![Cancel, q("select 1"), Read])),
        script(
            "half a message, then end of stream",
            after_login(vec![Send(query("select 1")[..4].to_vec()), HalfClose, Read]),
        ),
        script(
            "a bind with a bad parameter count",
            after_login(vec![
                Send([parse("", "select $1::int"), bind("", "", &[]), execute(""), sync()].concat()),
                Read,
            ]),
        ),
        // A function call through the fast path (oid 89: version()).
        script("function call", after_login(vec![Send(message(b'F', &[0, 0, 0, 89, 0, 0, 0, 0, 0, 0])), Read])),
    ];
    let unsplit = scripts.len();
    for i in 0..unsplit {
        // Intended differences are checked whole, and long scripts are not sent a byte at a time.
        let bytes: usize = scripts[i].steps.iter().map(|s| if let Step::Send(b) = s { b.len() } else { 0 }).sum();
        if scripts[i].differs.is_some() || bytes > 4096 {
            continue;
        }
        let name = format!("{}/split", scripts[i].name);
        let steps = scripts[i].steps.clone();
        scripts.push(Script { name, steps, differs: None });
    }
    scripts
}

#[test]
fn client_scripts_get_the_same_answers_directly_and_through_warden() {
    let pg = Postgres::start();
    // Governed at 127.0.0.1 only: 127.0.0.2 reaches the same server directly.
    let _agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let (direct, governed) = (format!("127.0.0.2:{}", pg.port), format!("127.0.0.1:{}", pg.port));
    let scripts = corpus();
    assert!(scripts.len() >= 100, "{} scripts", scripts.len());
    let mut failures = Vec::new();
    for s in &scripts {
        let split = s.name.ends_with("/split");
        let mut expected = run(&direct, &s.steps, split, Duration::from_millis(300));
        // Where PostgreSQL closed, Warden is given time to close too (it reads what the client
        // still sends before it does, and a loaded machine is slow).
        let patience = if expected.end == End::Open { 300 } else { 5_000 };
        let mut through = run(&governed, &s.steps, split, Duration::from_millis(patience));
        let differs = compare(&mut expected, &mut through, split).is_some();
        match s.differs {
            Some((why, must_contain)) => {
                let said = format!("{}\nend {:?}", through.messages.join("\n"), through.end);
                if !said.contains(must_contain) {
                    failures.push(format!("{} (differs on purpose: {why}) but Warden said: {said}", s.name));
                }
            }
            None if differs => failures.push(format!(
                "{}:\n  direct:  {:?} {:?}\n  warden:  {:?} {:?}",
                s.name, expected.messages, expected.end, through.messages, through.end
            )),
            _ => {}
        }
    }
    if let Ok(path) = std::env::var("WARDEN_FIDELITY_DUMP") {
        std::fs::write(path, failures.join("\n")).expect("dump");
    }
    let names: Vec<&str> = failures.iter().map(|f| f.split(":\n").next().unwrap_or_default()).collect();
    assert!(failures.is_empty(), "{} of {} scripts differ:\n{}", failures.len(), scripts.len(), names.join("\n"));
}

/// The differential fuzzer (`cargo xtask fuzz --differential`) on a fixed sample of generated
/// scripts: none may differ (a difference counts when it comes back on a second run).
#[test]
fn generated_client_scripts_get_the_same_answers_directly_and_through_warden() {
    let tmp = testkit::temp_dir("differential-");
    let out_dir = tmp.path().to_path_buf();
    let out = testkit::output(
        std::process::Command::new(env!("CARGO_BIN_EXE_differential"))
            .args(["--scripts", "40", "--seed", "20261129", "--out"])
            .arg(&out_dir),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find(|l| l.starts_with("differential:")).unwrap_or("no summary");
    println!("{summary}");
    if !(out.status.success() && summary.contains(" 40 scripts, 0 diverged")) {
        // The diverging scripts the output names stay, for `--replay`.
        let kept = tmp.keep();
        panic!("{stdout}\n{}\n(scripts kept in {})", String::from_utf8_lossy(&out.stderr), kept.display());
    }
}
