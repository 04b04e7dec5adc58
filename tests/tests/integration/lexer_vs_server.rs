//! The statement splitter asked against PostgreSQL itself: each tricky text is sent as one
//! simple query to a real server, which answers one CommandComplete (or EmptyQueryResponse)
//! per statement it ran and one row per SELECT; the splitter must cut the text into exactly as
//! many statements, and where the text returns strings, the server's strings tell where its
//! literals ended. No agent: this checks the lexer, not the redirect.

use tokio_postgres::{NoTls, SimpleQueryMessage};
use warden::sql::{LexOptions, split_statements_with};

/// (standard_conforming_strings, text, what the server returns: one entry per statement, the
/// first column of its first row or "" for a statement without rows).
const CASES: &[(bool, &str, &[&str])] = &[
    (true, "select 1; select 2", &["1", "2"]),
    (true, "select ';' ; select 2", &[";", "2"]),
    (true, "select 1 /* ; /* nested ; */ still ; */ ; select 2", &["1", "2"]),
    (true, "select 1 -- ; comment\n; select 2", &["1", "2"]),
    (true, "select 1 -- a carriage return ends a comment too\r; select 2", &["1", "2"]),
    (true, "select $$;$$; select 2", &[";", "2"]),
    (true, "select $a$ $$ ; $a$; select 2", &[" $$ ; ", "2"]),
    (true, "select $é$;$é$; select 2", &[";", "2"]),
    (true, "select 1 as m$q$; select 2", &["1", "2"]),
    (true, "select 'a\\'; select 2 --'", &["a\\", "2"]),
    (true, "select E'a\\'; select 2 --'", &["a'; select 2 --"]),
    (true, "select e'a\\';'", &["a';"]),
    (true, "select 'a' -- c\n'; select 2; --'", &["a; select 2; --"]),
    (true, "select 'a'\n'b'; select 2", &["ab", "2"]),
    (true, "select 'a' 'b'", &[]),
    (true, "select U&'\\0041;' ; select 2", &["A;", "2"]),
    (true, "select 1 as \"a;b\"; select 2", &["1", "2"]),
    (true, "select 1 as \"a\"\";b\"; select 2", &["1", "2"]),
    (true, ";;select 1;;", &["1"]),
    (true, "select 1; /* only a comment */", &["1"]),
    (true, "select 1e1; select .5; select 1.", &["10", "0.5", "1"]),
    (false, "select 'a\\'; select 2 --'", &["a'; select 2 --"]),
    (false, "select 'a\\\\'; select 2", &["a\\", "2"]),
    (false, "select E'a\\'b'; select 2", &["a'b", "2"]),
    (false, "select $$\\$$; select 2", &["\\", "2"]),
];

#[tokio::test(flavor = "current_thread")]
async fn the_splitter_cuts_where_postgresql_does() {
    let pg = testkit::Postgres::start();
    let (client, conn) = tokio_postgres::connect(
        &format!("host={} port={} user=postgres dbname=postgres", pg.socket_dir().display(), pg.port),
        NoTls,
    )
    .await
    .expect("connect over the unix socket");
    tokio::spawn(conn);
    let mut wrong = Vec::new();
    for (scs, text, expected) in CASES {
        client
            .batch_execute(if *scs {
                "set standard_conforming_strings = on"
            } else {
                "set standard_conforming_strings = off; set escape_string_warning = off"
            })
            .await
            .unwrap();
        let split = split_statements_with(text, LexOptions::postgres(*scs)).len();
        match client.simple_query(text).await {
            Ok(messages) => {
                // One entry per statement: its first row's first column, or "".
                let mut got: Vec<String> = Vec::new();
                let mut first: Option<String> = None;
                for m in messages {
                    match m {
                        SimpleQueryMessage::Row(row) if first.is_none() => {
                            first = Some(row.get(0).unwrap_or("NULL").to_string());
                        }
                        SimpleQueryMessage::CommandComplete(_) => got.push(first.take().unwrap_or_default()),
                        _ => {}
                    }
                }
                if got != *expected || split != expected.len() {
                    wrong.push(format!("{text:?} (scs {scs}): server {got:?}, splitter {split} statements"));
                }
            }
            Err(e) if expected.is_empty() => {
                // The server refuses the whole text (a syntax error): nothing runs, whatever
                // the splitter says; it must still not see more than one statement.
                if split > 1 {
                    wrong.push(format!("{text:?}: the server refused it ({e}), the splitter saw {split} statements"));
                }
            }
            Err(e) => wrong.push(format!("{text:?} (scs {scs}): server error {e}")),
        }
    }
    assert!(wrong.is_empty(), "the splitter disagrees with PostgreSQL:\n{}", wrong.join("\n"));
}
