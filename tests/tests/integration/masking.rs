//! Dynamic masking through the real redirect against a real PostgreSQL holding sensitive
//! columns, a view, a partitioned table, an inherited table, a SQL function and triggers that
//! echo them. An attacker-minded corpus of statements runs through psql (simple protocol),
//! psycopg (text, binary, prepared, server-side cursors, COPY) and tokio-postgres (extended
//! protocol, binary results, COPY): no protected value, nor a trivial encoding of it, may reach
//! the client in rows, COPY data, errors, notices or notifications, nor the audit ring. An
//! exempt identity and unprotected columns get exact values, with row counts unchanged.

use std::{process::Command, time::Duration};

use futures_util::{StreamExt as _, pin_mut};
use serde_json::Value;
use testkit::{
    Agent, Postgres, check, output, psql_argv, psql_bin,
    raw::{self, message, query},
    workspace_root,
};

const POLICY: &str = "apiVersion: warden.dev/v1alpha1
kind: DatabasePolicy
metadata: {name: pii}
spec:
  selector: {}
  masking:
    classifications:
      pii.email: [\"*.*.email\", crm.events_2024.contact]
      pii.national_id: [crm.customers.ssn]
      secret: [crm.customers.api_key]
  rules:
    - {name: emails, match: {classifications: [pii.email]}, mask: token, exempt: {matchLabels: {warden/team: dpo}}}
    - {name: cards, match: {columns: [crm.customers.card, crm.people.badge]}, mask: {method: partial, keep: 4}, exempt: {matchLabels: {warden/team: dpo}}}
    - {name: ids, match: {classifications: [pii.national_id]}, mask: format_preserving, exempt: {matchLabels: {warden/team: dpo}}}
    - {name: keys, match: {classifications: [secret]}, mask: redact, exempt: {matchLabels: {warden/team: dpo}}}
";

/// Every protected value of the fixture.
const PROTECTED: &[&str] = &[
    "zqx.alice9281@kelpmail.test",
    "bob.quill7723@ferndale.test",
    "carol.dun5519@mistvale.test",
    "4539148803436467",
    "5425233430109903",
    "6011000990139424",
    "857-31-9042",
    "612-48-3317",
    "731-26-5580",
    "AKIAZ7QH4XWP2LMN8RTV",
    "AKIAQ2JD8KWZ5NBX3PLM",
    "AKIAT9RV6MXC4HQZ1WBN",
    "BADGE-7731-QX",
];

const FIXTURE: &str = "
create schema crm;
create table crm.customers(id int primary key, name text not null, email text unique, card text, ssn text, api_key text);
insert into crm.customers values
  (1, 'Alice Pemberton', 'zqx.alice9281@kelpmail.test', '4539148803436467', '857-31-9042', 'AKIAZ7QH4XWP2LMN8RTV'),
  (2, 'Bob Quillfeather', 'bob.quill7723@ferndale.test', '5425233430109903', '612-48-3317', 'AKIAQ2JD8KWZ5NBX3PLM'),
  (3, 'Carol Dunmore', 'carol.dun5519@mistvale.test', '6011000990139424', '731-26-5580', 'AKIAT9RV6MXC4HQZ1WBN');
create table crm.orders(id int, customer_id int, total int);
insert into crm.orders values (10, 1, 250), (11, 2, 75), (12, 1, 30);
create view crm.contacts as select c.id, c.email as contact, upper(c.name) as shout from crm.customers c;
create view crm.first_contact as select id, email from crm.customers where id = 1;
create table crm.events(id int, contact text) partition by range (id);
create table crm.events_2024 partition of crm.events for values from (0) to (1000);
insert into crm.events values (1, 'zqx.alice9281@kelpmail.test'), (2, 'carol.dun5519@mistvale.test');
create table crm.people(name text, badge text);
create table crm.staff(dept text) inherits (crm.people);
insert into crm.staff values ('Dana Whitlock', 'BADGE-7731-QX', 'ops');
create function crm.echo_email(i int) returns text language sql as $$ select email from crm.customers where id = i $$;
create function crm.shout() returns trigger language plpgsql as $$
  begin raise notice 'changed %', new.email; return new; end $$;
create trigger shout before update on crm.customers for each row execute function crm.shout();
create table crm.inbox(id int);
create function crm.ping() returns trigger language plpgsql as $$
  begin perform pg_notify('leaks', (select email || ' ' || ssn from crm.customers where id = 2)); return new; end $$;
create trigger ping after insert on crm.inbox for each row execute function crm.ping();
analyze crm.customers;
";

/// Statements that try to read a protected value: through the column, its aliases, views,
/// partitions and inheritance, expressions, encodings, conditions (probing), set operations,
/// CTEs, subqueries, functions, dynamic SQL, catalogs, errors, writes and cursors.
const ATTACKS: &[&str] = &[
    // The column, as it is and under other names.
    "select email from crm.customers",
    "select * from crm.customers",
    "table crm.customers",
    "select c.* from crm.customers c",
    // The whole row inside an expression.
    "select (c.*)::text from crm.customers c",
    "select upper((c.*)::text), array[c.*]::text from crm.customers c",
    "select e from (select email as e from crm.customers) s",
    "select \"email\" as name from crm.customers",
    "select x.y from (select email from crm.customers) as x(y)",
    "select email, card, ssn, api_key from crm.customers order by id",
    "set search_path = crm, public; select email from customers",
    "select email from CRM.Customers",
    "select customers.email from crm.customers",
    "select crm.customers.email from crm.customers",
    // Views, partitions, inheritance.
    "select * from crm.contacts",
    "select contact from crm.contacts",
    "select * from crm.events",
    "select contact from crm.events_2024",
    "select * from crm.people",
    "select badge from crm.staff",
    "select * from only crm.people",
    // Computed: functions, casts, concatenation, CASE, encodings.
    "select upper(email), lower(email), reverse(email) from crm.customers",
    "select email || '' from crm.customers",
    "select email::varchar(100) from crm.customers",
    "select email::bytea from crm.customers",
    "select encode(email::bytea, 'base64') from crm.customers",
    "select encode(convert_to(card, 'UTF8'), 'hex') from crm.customers",
    "select md5(email), length(email) from crm.customers",
    "select substr(card, 1, 8), substr(card, 9) from crm.customers",
    "select left(email, 10), right(email, 10) from crm.customers",
    "select replace(ssn, '-', '') from crm.customers",
    "select translate(api_key, 'A', 'a') from crm.customers",
    "select split_part(email, '@', 1), split_part(email, '@', 2) from crm.customers",
    "select case when id = 1 then email else card end from crm.customers",
    "select coalesce(null, email) from crm.customers",
    "select nullif(email, 'x') from crm.customers",
    "select format('%s', ssn) from crm.customers",
    "select concat_ws(',', email, card) from crm.customers",
    "select regexp_replace(email, '@', ' at ') from crm.customers",
    "select string_to_array(email, '.') from crm.customers",
    "select unnest(string_to_array(card, '')) from crm.customers",
    "select overlay(card placing 'x' from 1 for 1) from crm.customers",
    // Aggregates, windows, row/JSON/XML/array constructors.
    "select string_agg(email, ',') from crm.customers",
    "select array_agg(card) from crm.customers",
    "select json_agg(c) from crm.customers c",
    "select row_to_json(c) from crm.customers c",
    "select to_jsonb(c) from crm.customers c",
    "select c from crm.customers c",
    "select row(email, ssn) from crm.customers",
    "select array[email, api_key] from crm.customers",
    "select json_build_object('e', email) from crm.customers",
    "select xmlelement(name e, email) from crm.customers",
    "select xmlforest(email, card) from crm.customers",
    "select max(email), min(card) from crm.customers",
    "select first_value(email) over (order by id) from crm.customers",
    "select lag(ssn) over (), id from crm.customers",
    "select jsonb_agg(to_jsonb(x)) from (select * from crm.customers) x",
    // Subqueries, CTEs, set operations, LATERAL.
    "select (select email from crm.customers where id = 1)",
    "select id, (select max(api_key) from crm.customers) from crm.orders",
    "with e as (select email from crm.customers) select * from e",
    "with recursive r(v, n) as (select email, 1 from crm.customers union all select v, n + 1 from r where n < 2) select v from r",
    "select name from crm.customers union all select email from crm.customers",
    "select email from crm.customers intersect select email from crm.customers",
    "select id::text from crm.orders union select ssn from crm.customers",
    "select o.id, c.e from crm.orders o, lateral (select email as e from crm.customers where id = o.customer_id) c",
    "select * from crm.customers c join crm.orders o on o.customer_id = c.id",
    "select * from (values (1)) v(x), crm.customers",
    "values ((select card from crm.customers limit 1))",
    "select * from unnest((select array_agg(email) from crm.customers))",
    // Probing through conditions (refused by default: inference).
    "select id from crm.customers where email like 'z%'",
    "select count(*) from crm.customers where ssn > '5'",
    "select id from crm.customers order by email",
    "select card, count(*) from crm.customers group by card",
    "select id from crm.customers where substr(api_key, 5, 1) = 'Z'",
    "select distinct on (email) id from crm.customers",
    "select o.id from crm.orders o join crm.customers c on c.id = o.customer_id and c.email ilike '%kelp%'",
    "select exists (select 1 from crm.customers where email = 'nobody@example.com')",
    "select id from crm.contacts where contact like 'b%'",
    "explain analyze select * from crm.customers where ssn like '8%'",
    // Functions and SQL run from text.
    "select crm.echo_email(1)",
    "select * from crm.echo_email(2)",
    "select query_to_xml('select email from crm.customers', true, false, '')",
    "select table_to_xml('crm.customers', true, false, '')",
    "select ts_stat('select to_tsvector(email) from crm.customers')",
    "select most_common_vals::text from pg_stats where tablename = 'customers'",
    "select histogram_bounds::text from pg_stats where attname = 'ssn'",
    "select query from pg_stat_activity",
    // Errors that quote values.
    "select email::int from crm.customers",
    "select ssn::date from crm.customers",
    "select 1 / (length(email) - length(email)) from crm.customers",
    "update crm.customers set name = null where id = 1",
    "update crm.customers set name = name where id = 1",
    "insert into crm.customers select 9, name, email, card, ssn, api_key from crm.customers where id = 1",
    "insert into crm.customers (id, name, email) values (1, 'dup', 'dup@example.com')",
    // Writes that would carry a value elsewhere.
    "create table crm.stolen as select email from crm.customers",
    "select email into crm.stolen2 from crm.customers",
    "update crm.orders set total = length(ssn) from crm.customers where crm.customers.id = crm.orders.customer_id",
    "select set_config('application_name', email, false) from crm.customers",
    "select pg_notify('leaks', email) from crm.customers",
    "update crm.customers set name = name where id = 2 returning email, ssn",
    "delete from crm.orders where id = 999 returning (select email from crm.customers limit 1)",
    // Cursors and prepared statements.
    "begin; declare c cursor for select email, card from crm.customers; fetch all from c; commit",
    "prepare p as select email from crm.customers; execute p; deallocate p",
    // COPY in its three formats.
    "copy crm.customers to stdout",
    "copy crm.customers to stdout with (format csv, header true)",
    "copy (select email, ssn from crm.customers) to stdout",
    "copy crm.customers (email, card) to stdout (format csv)",
    "copy crm.customers to stdout with (format csv, delimiter '|')",
];

/// Every trivial encoding of every protected value: as it is, case-changed, reversed, base64
/// (standard and URL-safe), hex, without separators, and halves of 6 characters or more.
fn leaks() -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for v in PROTECTED {
        let mut variants = vec![v.to_string(), v.to_lowercase(), v.to_uppercase(), v.chars().rev().collect()];
        let b64 = base64(v.as_bytes());
        variants.push(b64.trim_end_matches('=').to_string());
        variants.push(b64.replace('+', "-").replace('/', "_").trim_end_matches('=').to_string());
        let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
        variants.push(hex.clone());
        variants.push(hex.to_uppercase());
        let bare: String = v.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        variants.push(bare.clone());
        for s in [v.to_string(), bare] {
            let chars: Vec<char> = s.chars().collect();
            let half = chars.len().div_ceil(2);
            if chars.len() - half >= 6 {
                variants.push(chars[..half].iter().collect());
                variants.push(chars[half..].iter().collect());
            }
        }
        for variant in variants {
            if variant.len() >= 6 && !out.iter().any(|(x, _)| *x == variant) {
                out.push((variant, *v));
            }
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The first protected value (and its encoding and surroundings) found in `text`.
fn find_leak(text: &str) -> Option<String> {
    let folded = text.to_lowercase();
    for (variant, value) in leaks() {
        if text.contains(&variant) || (variant.len() >= 10 && folded.contains(&variant.to_lowercase())) {
            let at = folded.find(&variant.to_lowercase()).unwrap_or(0);
            let from = at.saturating_sub(200);
            return Some(format!(
                "protected value {value:?} as {variant:?}:\n...{}...",
                &text[text.floor_char_boundary(from)..text.ceil_char_boundary((at + 200).min(text.len()))]
            ));
        }
    }
    None
}

/// Panics naming the protected value, the encoding found and where, if `text` holds any.
#[track_caller]
pub(super) fn assert_no_leak(what: &str, text: &str) {
    if let Some(leak) = find_leak(text) {
        panic!("{what}: {leak}");
    }
}

fn start() -> (Postgres, Agent) {
    let pg = Postgres::start();
    pg.admin_sql(FIXTURE);
    let agent = Agent::start_with_policies(
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("pii.yaml", POLICY)],
    );
    (pg, agent)
}

/// psql (simple protocol) running `statements` one by one, continuing after errors, as the
/// identity `labels` (none: the test's own); stdout and stderr together.
fn psql_script(agent: &Agent, labels: &[&str], port: u16, statements: &[&str]) -> String {
    let mut script = String::from("\\set VERBOSITY verbose\n\\set SHOW_CONTEXT always\n");
    for (i, s) in statements.iter().enumerate() {
        script.push_str(&format!("\\echo @@{i}\n{s};\n"));
    }
    let file = testkit::temp_file("masking-", ".sql", script);
    let psql = psql_bin().display().to_string();
    let port = port.to_string();
    let file_arg = file.path().display().to_string();
    let argv = [&psql as &str, "-X", "-A", "-U", "postgres", "-h", "127.0.0.1", "-p", &port, "-f", &file_arg];
    let out = if labels.is_empty() {
        output(Command::new(argv[0]).args(&argv[1..]))
    } else {
        output(&mut agent.exec(labels, &argv))
    };
    drop(file);
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn psycopg(port: u16, mode: &str, statements: &[&str]) -> Value {
    let file = testkit::temp_file("masking-py-", ".json", serde_json::to_string(statements).unwrap());
    let out = check(
        Command::new("python3")
            .arg(workspace_root().join("tests/drivers/masking_attacks.py"))
            .args(["127.0.0.1", &port.to_string(), mode])
            .arg(file.path()),
    );
    drop(file);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("psycopg {mode}: {e}: {out}"))
}

/// Raw bytes of any value (tokio-postgres decodes nothing we do not ask it to).
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// tokio-postgres (extended protocol, binary results; COPY through copy_out): everything it
/// received, as text.
fn tokio_postgres_run(port: u16, statements: &[&str]) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect through warden");
        let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut conn = conn;
            let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            pin_mut!(stream);
            while let Some(Ok(m)) = stream.next().await {
                let _ = notices_tx.send(format!("{m:?}"));
            }
        });
        let mut seen = String::new();
        for sql in statements {
            if sql.contains(';') {
                // Several statements: the simple protocol.
                match client.simple_query(sql).await {
                    Ok(msgs) => seen.push_str(&format!("{msgs:?}\n")),
                    Err(e) => seen.push_str(&format!("{sql}: {e:?}\n")),
                }
                continue;
            }
            if sql.starts_with("copy ") && !sql.contains("delimiter") {
                match client.copy_out(*sql).await {
                    Ok(stream) => {
                        pin_mut!(stream);
                        while let Some(chunk) = stream.next().await {
                            match chunk {
                                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                                Err(e) => seen.push_str(&format!("{e:?}")),
                            }
                        }
                    }
                    Err(e) => seen.push_str(&format!("{sql}: {e:?}\n")),
                }
                continue;
            }
            match client.query(*sql, &[]).await {
                Ok(rows) => {
                    for row in rows {
                        for i in 0..row.len() {
                            if let Ok(Some(Raw(v))) = row.try_get::<_, Option<Raw>>(i) {
                                seen.push_str(&String::from_utf8_lossy(&v));
                                seen.push('\t');
                            }
                        }
                        seen.push('\n');
                    }
                }
                Err(e) => seen.push_str(&format!("{sql}: {e:?}\n")),
            }
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(n) = notices.try_recv() {
            seen.push_str(&n);
        }
        seen
    })
}

#[test]
fn no_protected_value_reaches_a_masked_client_by_any_statement_driver_or_channel() {
    let (pg, agent) = start();
    assert!(ATTACKS.len() >= 80, "the corpus holds {} statements", ATTACKS.len());

    // psql: the simple protocol, errors and notices in full (VERBOSITY verbose).
    let text = psql_script(&agent, &[], pg.port, ATTACKS);
    if let Ok(path) = std::env::var("WARDEN_MASKING_DUMP") {
        std::fs::write(path, &text).expect("dump");
    }
    assert_no_leak("psql", &text);
    // The check can fail: the same corpus run by an exempt identity shows the values.
    let exempt = psql_script(&agent, &["warden/team=dpo"], pg.port, ATTACKS);
    assert!(find_leak(&exempt).is_some(), "the exempt identity sees clear values, and the check finds them");
    // It is masked, not merely refused: the emails come back as tokens, cards keep 4 digits.
    let first = text.split("@@0\n").nth(1).and_then(|t| t.split("@@1").next()).unwrap_or_default();
    assert_eq!(first.lines().filter(|l| l.starts_with("tok1_")).count(), 3, "three tokens:\n{first}");
    assert!(text.contains("************6467"), "a card keeps its last four digits:\n{text}");
    assert!(text.contains("message withheld by warden"), "an error quoting a value is withheld");
    assert!(text.contains("refused by rule \"masking\""), "probing is refused");

    // psycopg: text, binary, prepared statements, server-side cursors, COPY.
    let queries: Vec<&str> = ATTACKS.iter().copied().filter(|q| !q.contains(';') && !q.starts_with("copy")).collect();
    for mode in ["text", "binary", "prepared", "cursor"] {
        let result = psycopg(pg.port, mode, &queries);
        assert_no_leak(&format!("psycopg {mode}"), &result.to_string());
        let masked = &result["results"][0]["rows"];
        assert_eq!(masked.as_array().map(Vec::len), Some(3), "psycopg {mode}: three rows: {masked}");
    }
    let copies: Vec<&str> = ATTACKS.iter().copied().filter(|q| q.starts_with("copy")).collect();
    let result = psycopg(pg.port, "copy", &copies);
    assert_no_leak("psycopg copy", &result.to_string());
    let rows =
        result["results"][0]["copy"].as_array().map(|c| c.iter().map(|x| x.as_str().unwrap()).collect::<String>());
    assert_eq!(rows.as_deref().map(|r| r.lines().count()), Some(3), "COPY keeps its rows: {result}");

    // tokio-postgres: the extended protocol with binary results, COPY, notices.
    let seen = tokio_postgres_run(pg.port, ATTACKS);
    assert_no_leak("tokio-postgres", &seen);

    // Notifications: payloads sent by another session (a trigger quoting a row).
    let listener = {
        let port = pg.port;
        let config = agent.config.clone();
        std::thread::spawn(move || {
            let _ = config;
            let file =
                testkit::temp_file("masking-listen-", ".sql", "listen leaks;\nselect pg_sleep(3);\nselect 'woke';\n");
            let out = output(
                Command::new(psql_bin())
                    .args(["-X", "-A", "-U", "postgres", "-h", "127.0.0.1", "-p", &port.to_string(), "-f"])
                    .arg(file.path()),
            );
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    pg.admin_sql(
        "insert into crm.inbox values (1); notify leaks, 'AKIAQ2JD8KWZ5NBX3PLM for bob.quill7723@ferndale.test'",
    );
    let out = listener.join().expect("listener");
    assert!(out.contains("Asynchronous notification \"leaks\""), "notifications arrive: {out}");
    assert_no_leak("notifications", &out);

    // A Sync among COPY data after a bad row: the server answers it once the row failed the
    // COPY. Were it taken as ignored, every later answer would be credited to the statement
    // after its own: the protected column's rows to one with nothing to mask.
    let mut raw = raw::Raw::login(&format!("127.0.0.1:{}", pg.port));
    raw.send(&query("create temp table sink(a int)"));
    raw.until_ready();
    raw.send(&query("copy sink from stdin"));
    assert_eq!(raw.message().0, b'G', "COPY FROM STDIN starts");
    raw.send(
        &[
            message(b'd', b"x\n"),
            message(b'S', b""),
            message(b'c', b""),
            query("select ssn || '' from crm.customers"),
            query("select 'nothing to mask'"),
        ]
        .concat(),
    );
    raw.0.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut answers = Vec::new();
    loop {
        let (tag, body) = raw.message();
        if tag == 0 {
            break;
        }
        answers.push(tag);
        assert_no_leak("a Sync among failed COPY data", &String::from_utf8_lossy(&body));
    }
    assert!(answers.contains(&b'D'), "the statements after the COPY ran: {answers:?}");

    // A named portal bound to something harmless, then SQL in the same pipeline closes it and
    // declares a cursor of its name over the protected column, then an Execute of the name:
    // the server runs the cursor, which the Bind's judgement (and its plan: nothing to mask)
    // knows nothing of.
    let mut raw = raw::Raw::login(&format!("127.0.0.1:{}", pg.port));
    raw.send(&query("begin"));
    raw.until_ready();
    raw.send(
        &[
            raw::parse("s", "select 'harmless'::text"),
            raw::bind("p", "s", &[]),
            raw::parse("", "close p"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::parse("", "declare p cursor for select ssn from crm.customers"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::execute("p"),
            message(b'S', b""),
        ]
        .concat(),
    );
    let answers = raw.until_ready();
    for (_, body) in &answers {
        assert_no_leak("a named portal replaced by SQL in its pipeline", &String::from_utf8_lossy(body));
    }
    // What p runs is not known there: refused (masking cannot plan it), no row sent.
    let tags: Vec<u8> = answers.iter().map(|a| a.0).collect();
    assert!(!tags.contains(&b'D') && raw::errors(&answers).len() == 1, "the Execute of p is refused: {tags:?}");
    raw.send(&query("rollback"));
    raw.until_ready();

    // The audit ring says what was masked, by which rule and method, never a clear value.
    let records = agent.records();
    let all = serde_json::to_string(&records).unwrap();
    assert_no_leak("audit ring", &all);
    let masked = records
        .iter()
        .find(|r| r["kind"] == "statement" && r["text"] == "select email from crm.customers")
        .unwrap_or_else(|| panic!("no record of the first attack"));
    assert_eq!(masked["masked"][0]["column"], "crm.customers.email", "{masked}");
    assert_eq!(masked["masked"][0]["rule"], "emails");
    assert_eq!(masked["masked"][0]["method"], "token");
    let refused = records
        .iter()
        .find(|r| r["kind"] == "statement" && r["verdict"]["rule"] == "masking")
        .unwrap_or_else(|| panic!("no refusal by masking recorded"));
    assert_eq!(refused["verdict"]["decision"], "deny");
}

#[test]
fn exempt_identities_and_unprotected_columns_get_exact_values_and_row_counts() {
    let (pg, agent) = start();
    let direct = |sql: &str| pg.admin_sql(sql);
    let through = |labels: &[&str], sql: &str| {
        let argv = psql_argv("127.0.0.1", pg.port, sql);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        if labels.is_empty() {
            check(Command::new(argv[0]).args(&argv[1..])).trim().to_string()
        } else {
            check(&mut agent.exec(labels, &argv)).trim().to_string()
        }
    };
    // Unprotected columns: exact, for the masked identity too, with the same rows.
    for sql in [
        "select id, name from crm.customers order by id",
        "select * from crm.orders order by id",
        "select id, shout from crm.contacts order by id",
        "select id from crm.events order by id",
        "select name, dept from crm.staff",
        "select count(*) from crm.customers",
        "select id, name from crm.customers where name like 'B%'",
    ] {
        assert_eq!(through(&[], sql), direct(sql), "{sql}");
    }
    // Pipelined through the unnamed portal (psycopg's pipeline: Parse, Bind, Describe, Execute
    // each), each statement's rows are read with its own columns, not the first one's.
    let pipelined = psycopg(
        pg.port,
        "pipeline",
        &["select card, id from crm.customers where id = 1", "select name, id from crm.customers where id = 1"],
    );
    let results = pipelined["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{pipelined}");
    assert_ne!(results[0]["rows"][0][0], "'4539148803436467'", "{pipelined}");
    assert_eq!(results[1]["rows"], serde_json::json!([["'Alice Pemberton'", "1"]]), "{pipelined}");
    // Protected columns: same number of rows, every value masked.
    let masked = through(&[], "select email from crm.customers order by id");
    assert_eq!(masked.lines().count(), 3);
    for line in masked.lines() {
        assert!(line.starts_with("tok1_") && !line.contains('@'), "{line}");
    }
    // Tokens are deterministic: equal values, equal tokens (joins and GROUP BY still work),
    // through the table and through the view alike.
    let table = through(&[], "select email from crm.customers where id = 1");
    let view = through(&[], "select contact from crm.contacts where id = 1");
    assert!(table.starts_with("tok1_"), "{table}");
    assert_eq!(table, view, "the same email gives the same token through the table and the view");
    // A view's own WHERE (on an unprotected column) leaves its columns what they are.
    let filtered = through(&[], "select id, email from crm.first_contact");
    assert_eq!(filtered, format!("1|{table}"), "a filtering view passes the column through");
    // A computed value is redacted, not tokenised (a token of a chosen value mixed in would be
    // a dictionary for the real ones).
    let mixed = through(&[], "select email from crm.customers where id = 1 union all select 'guess@example.com'");
    assert!(mixed.lines().all(|l| l == "****"), "{mixed}");
    // Format-preserving national ids keep their shape.
    let ssn = through(&[], "select ssn from crm.customers where id = 1");
    assert!(ssn.len() == 11 && ssn.as_bytes()[3] == b'-' && ssn.as_bytes()[6] == b'-' && ssn != "857-31-9042", "{ssn}");
    // The exempt identity sees every value exactly (and the audit says it was exempt).
    let dpo = ["warden/team=dpo"];
    for sql in [
        "select * from crm.customers order by id",
        "select * from crm.contacts order by id",
        "select * from crm.events order by id",
        "select * from crm.people",
        "select email from crm.customers where email like 'z%'",
    ] {
        assert_eq!(through(&dpo, sql), direct(sql), "exempt: {sql}");
    }
    let exempt = agent.wait_record("an exempt statement", |r| {
        r["kind"] == "statement" && r["masked"].as_array().is_some_and(|m| m.iter().any(|c| c["method"] == "exempt"))
    });
    let open = agent
        .wait_record("the exempt session", |r| r["kind"] == "connection_open" && r["session"] == exempt["session"]);
    assert_eq!(open["identity"]["labels"]["warden/team"], "dpo", "{open}");
}

/// A prepared statement bound again and again is given its judgement again only while nothing
/// it was made from changed. Here the session puts another schema first in its search_path:
/// the same text now reads a table with a protected column of the same name and type (the
/// server parses it again and returns that column), and from the next execution on it is
/// masked (as the stricter of the two tables the name now reaches).
#[test]
fn a_prepared_statement_bound_again_is_masked_as_what_it_reads_is_now() {
    let pg = Postgres::start();
    pg.admin_sql(FIXTURE);
    pg.admin_sql(
        "create table public.customers(id int, card text); insert into public.customers values (1, 'no card here')",
    );
    let metrics = format!("127.0.0.1:{}", testkit::free_port());
    let _agent = Agent::start_with_bin_policies_top_level(
        &testkit::warden_bin(),
        &format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port),
        &[("pii.yaml", POLICY)],
        &format!("metrics:\n  listen: '{metrics}'\n"),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let seen: Vec<String> = rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(pg.port).user("postgres").dbname("postgres");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect through warden");
        tokio::spawn(conn);
        let statement = client.prepare("select card from customers where id = $1").await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(client.query_one(&statement, &[&1i32]).await.unwrap().get::<_, String>(0));
        }
        client.batch_execute("set search_path = crm, public").await.unwrap();
        for _ in 0..3 {
            seen.push(client.query_one(&statement, &[&1i32]).await.unwrap().get::<_, String>(0));
        }
        seen
    });
    assert!(seen[..5].iter().all(|v| v == "no card here"), "{seen:?}");
    // Masked, and more strictly than the rule's partial mask of crm's card: the name now
    // reaches crm's and public's table alike, and a value of either is masked as the stricter.
    let masked = |v: &String| !PROTECTED.contains(&v.as_str()) && v != "no card here" && !v.contains("6467");
    assert!(seen[5..].iter().all(masked), "{seen:?}");
    let (_, text) = testkit::scrape(&metrics, "/metrics");
    let reused = testkit::sample(&text, "warden_judgements_reused_total", &[]);
    assert!(reused >= 2.0, "the Binds before the search_path changed were given their judgement again: {reused}");
    // The simple protocol: each statement with its literals in its text. One of a kept one's
    // shape is given its judgement, until the search_path changes what it reads.
    let cards = |client: &tokio_postgres::Client, i: usize| {
        let sql = format!("select card from customers where id = {i} - {i} + 1");
        let rows = rt.block_on(client.simple_query(&sql)).unwrap();
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect::<Vec<String>>()
    };
    let client = rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(pg.port).user("postgres").dbname("postgres");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect through warden");
        tokio::spawn(conn);
        client
    });
    let before: Vec<String> = (1..=6).flat_map(|i| cards(&client, i)).collect();
    assert_eq!(before, vec!["no card here"; 6]);
    let (_, text) = testkit::scrape(&metrics, "/metrics");
    let by_shape = testkit::sample(&text, "warden_judgements_reused_total", &[]) - reused;
    assert!(by_shape >= 4.0, "statements of a kept one's shape were given its judgement: {by_shape}");
    rt.block_on(client.batch_execute("set search_path = crm, public")).unwrap();
    let after: Vec<String> = (7..=10).flat_map(|i| cards(&client, i)).collect();
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.iter().all(masked), "{after:?}");
}

/// Another session's temporary table is never taken for this session's own: a masked session
/// with a temporary schema of its own reads `customers` (crm's, with protected cards) while
/// another session holds a temporary `customers` without any; the card is masked.
#[test]
fn another_sessions_temporary_table_never_stands_for_the_one_read() {
    let (pg, _agent) = start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cards: Vec<String> = rt.block_on(async {
        let connect = || async {
            let mut config = tokio_postgres::Config::new();
            config.host("127.0.0.1").port(pg.port).user("postgres").dbname("postgres");
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect through warden");
            tokio::spawn(conn);
            client
        };
        // Another session, over the Unix socket (never through the redirect).
        let mut config = tokio_postgres::Config::new();
        config.host_path(pg.socket_dir()).port(pg.port).user("postgres").dbname("postgres");
        let (other, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect over the socket");
        tokio::spawn(conn);
        other
            .batch_execute("create temp table customers(id int, card text); insert into customers values (1, 'clean')")
            .await
            .unwrap();
        let session = connect().await;
        session.batch_execute("set search_path = crm").await.unwrap();
        session.batch_execute("create temp table scratch(x int)").await.unwrap();
        // An idle point: the session's facts are read again, its temporary schema first.
        session.simple_query("select 1").await.unwrap();
        let mut cards = Vec::new();
        for sql in ["select upper(card) from customers where id = 1", "select card || '' from customers where id = 1"] {
            for m in session.simple_query(sql).await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    cards.push(r.get(0).unwrap_or_default().to_string());
                }
            }
        }
        drop(other);
        cards
    });
    assert_eq!(cards.len(), 2, "{cards:?}");
    assert!(cards.iter().all(|c| !PROTECTED.iter().any(|p| c.contains(p))), "{cards:?}");
}
