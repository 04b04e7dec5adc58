//! Authentication passthrough (trust, cleartext, MD5, SCRAM-SHA-256), TLS toward the client and
//! toward the database in every mode, and replication start-up, through the redirect.

use std::process::{Command, Output};

use testkit::{
    Agent, PgOptions, Postgres, TestPki, output, psql_bin,
    raw::{Raw, message, query, startup_packet},
};

/// psql with a libpq connection string, returning its output.
fn psql_conn(conninfo: &str, sql: &str, password: Option<&str>) -> Output {
    let mut cmd = Command::new(psql_bin());
    cmd.args(["-X", "-At", "-d", conninfo, "-c", sql]);
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    output(&mut cmd)
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "psql unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const AUTH_HBA: &str = "host all u_password 127.0.0.1/32 password\nhost all u_md5 127.0.0.1/32 md5\nhost all u_scram 127.0.0.1/32 scram-sha-256\nhost all u_scram ::1/128 scram-sha-256";

fn auth_users(pg: &Postgres) {
    pg.admin_sql("create user u_password password 'pw-cleartext-1'");
    pg.admin_sql("set password_encryption = 'md5'; create user u_md5 password 'pw-md5-2'");
    pg.admin_sql("create user u_scram password 'pw-scram-3'");
}

#[test]
fn every_password_method_passes_through_and_no_secret_is_recorded() {
    let pg = Postgres::start_with(PgOptions { hba: AUTH_HBA, ..PgOptions::default() });
    auth_users(&pg);
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let conn = |user: &str| format!("host=127.0.0.1 port={} user={user} dbname=postgres", pg.port);
    assert_eq!(ok(&psql_conn(&conn("postgres"), "select current_user", None)), "postgres");
    for (user, password) in [("u_password", "pw-cleartext-1"), ("u_md5", "pw-md5-2"), ("u_scram", "pw-scram-3")] {
        assert_eq!(ok(&psql_conn(&conn(user), "select current_user", Some(password))), user);
        let e = err(&psql_conn(&conn(user), "select 1", Some("wrong")));
        assert!(e.contains(&format!("password authentication failed for user \"{user}\"")), "{e}");
    }
    // A query pipelined behind the password, in the same write: answered once the session is
    // ready, as the server answers it directly.
    let mut raw = Raw::connect(&format!("127.0.0.1:{}", pg.port));
    raw.send(&startup_packet(&[("user", "u_password"), ("database", "postgres")]));
    assert_eq!(raw.message(), (b'R', 3u32.to_be_bytes().to_vec()), "a cleartext password is asked for");
    raw.send(&[message(b'p', b"pw-cleartext-1\0"), query("select current_user")].concat());
    let mut answers = raw.until_ready();
    answers.extend(raw.until_ready());
    assert!(answers.iter().all(|(tag, _)| *tag != b'E'), "no error: {answers:?}");
    assert!(answers.iter().any(|(tag, body)| *tag == b'D' && body.ends_with(b"u_password")), "{answers:?}");
    let opens: Vec<_> = agent.records().into_iter().filter(|r| r["kind"] == "connection_open").collect();
    assert!(opens.iter().any(|r| r["db_user"] == "u_scram" && r["db_name"] == "postgres"));
    let ring = std::fs::read(&agent.audit).unwrap();
    for secret in ["pw-cleartext-1", "pw-md5-2", "pw-scram-3", "wrong"] {
        assert!(!ring.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked into the audit ring");
    }
    assert!(!agent.log().contains("pw-"), "a password leaked into the agent log");
}

/// A PostgreSQL with TLS on, its certificate issued by `pki` for 127.0.0.1 / localhost.
fn tls_postgres(pki: &TestPki, hba: &str) -> Postgres {
    let (crt, key) = pki.server_cert("server", "DNS:localhost,IP:127.0.0.1");
    Postgres::start_with(PgOptions {
        hba,
        conf: "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'",
        files: vec![("server.crt", crt), ("server.key", key)],
        ..PgOptions::default()
    })
}

fn upstream_ssl(pg_port: u16, tls_yaml: &str, extra_proxy: &str) -> (Agent, String) {
    let agent = Agent::start_with_proxy(
        &format!("  - {{name: main, address: '127.0.0.1:{pg_port}', tls: {tls_yaml}}}"),
        extra_proxy,
    );
    let conn = format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres sslmode=disable");
    (agent, conn)
}

const SSL_OF_MY_BACKEND: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[test]
fn upstream_tls_in_every_mode_and_never_a_silent_downgrade() {
    let pki = TestPki::new("warden-test-ca");
    let other_ca = TestPki::new("some-other-ca");
    let pg = tls_postgres(&pki, "");
    let plain_pg = Postgres::start();
    let ca = pki.ca().display().to_string();

    for (mode, expect_ssl) in [("disable", "f"), ("prefer", "t"), ("require", "t")] {
        let (_agent, conn) = upstream_ssl(pg.port, &format!("{{mode: {mode}}}"), "");
        assert_eq!(ok(&psql_conn(&conn, SSL_OF_MY_BACKEND, None)), expect_ssl, "mode {mode}");
    }
    // verify-full: the certificate names 127.0.0.1 (the address dialled) and chains to the CA.
    let (_agent, conn) = upstream_ssl(pg.port, &format!("{{mode: verify-full, ca: '{ca}'}}"), "");
    assert_eq!(ok(&psql_conn(&conn, SSL_OF_MY_BACKEND, None)), "t");
    drop(_agent);
    // verify-full with a name the certificate does not carry: refused; verify-ca accepts it.
    let (_agent, conn) =
        upstream_ssl(pg.port, &format!("{{mode: verify-full, ca: '{ca}', server_name: db.example}}"), "");
    let e = err(&psql_conn(&conn, "select 1", None));
    assert!(e.contains("warden: database \"main\"") && e.contains("TLS handshake failed"), "{e}");
    drop(_agent);
    let (_agent, conn) =
        upstream_ssl(pg.port, &format!("{{mode: verify-ca, ca: '{ca}', server_name: db.example}}"), "");
    assert_eq!(ok(&psql_conn(&conn, SSL_OF_MY_BACKEND, None)), "t");
    drop(_agent);
    // A certificate from another CA: refused by verify-ca.
    let wrong = other_ca.ca().display().to_string();
    let (_agent, conn) = upstream_ssl(pg.port, &format!("{{mode: verify-ca, ca: '{wrong}'}}"), "");
    let e = err(&psql_conn(&conn, "select 1", None));
    assert!(e.contains("TLS handshake failed"), "{e}");
    drop(_agent);
    // A server without TLS: require refuses (no downgrade), prefer goes plain.
    let (_agent, conn) = upstream_ssl(plain_pg.port, "{mode: require}", "");
    let e = err(&psql_conn(&conn, "select 1", None));
    assert!(e.contains("refused TLS"), "{e}");
    drop(_agent);
    let (_agent, conn) = upstream_ssl(plain_pg.port, "{mode: prefer}", "");
    assert_eq!(ok(&psql_conn(&conn, "select 1", None)), "1");
}

#[test]
fn client_tls_is_terminated_with_the_configured_certificate() {
    let pki = TestPki::new("warden-test-ca");
    let (cert, key) = pki.server_cert("agent", "DNS:localhost,IP:127.0.0.1");
    let pg = Postgres::start_with(PgOptions { hba: AUTH_HBA, ..PgOptions::default() });
    auth_users(&pg);
    let tls = format!("  tls: {{cert: '{}', key: '{}'}}", cert.display(), key.display());
    let agent = Agent::start_with_proxy(
        &format!("  - {{name: main, address: '127.0.0.1:{}', tls: {{mode: disable}}}}", pg.port),
        &tls,
    );
    let ca = pki.ca().display().to_string();
    let conn = |extra: &str| format!("host=127.0.0.1 port={} user=postgres dbname=postgres {extra}", pg.port);
    // The client verifies the agent's certificate for the address it dialled.
    assert_eq!(ok(&psql_conn(&conn(&format!("sslmode=verify-full sslrootcert={ca}")), "select 1", None)), "1");
    assert_eq!(ok(&psql_conn(&conn("sslmode=require"), "select 1", None)), "1");
    assert_eq!(ok(&psql_conn(&conn("sslmode=disable"), "select 1", None)), "1");
    let open = agent.wait_record("tls session", |r| r["kind"] == "connection_open" && r["client_tls"] == true);
    assert_eq!(open["upstream_tls"], false);
    // SCRAM over the terminated TLS (the server is not on TLS, so it offers no channel binding).
    let scram = format!("host=127.0.0.1 port={} user=u_scram dbname=postgres sslmode=require", pg.port);
    assert_eq!(ok(&psql_conn(&scram, "select current_user", Some("pw-scram-3"))), "u_scram");
}

#[test]
fn scram_channel_binding_is_not_offered_through_the_proxy() {
    let pki = TestPki::new("warden-test-ca");
    let pg = tls_postgres(&pki, AUTH_HBA);
    auth_users(&pg);
    let (_agent, _) = upstream_ssl(pg.port, "{mode: require}", "");
    // Client plain, upstream TLS: the server offers SCRAM-SHA-256-PLUS, which would bind to a
    // channel the client is not on; the proxy removes it and SCRAM-SHA-256 is used.
    let conn = format!("host=127.0.0.1 port={} user=u_scram dbname=postgres sslmode=disable", pg.port);
    assert_eq!(ok(&psql_conn(&conn, "select current_user", Some("pw-scram-3"))), "u_scram");
    // A client that insists on channel binding is refused by its own driver, not fooled.
    let e = err(&psql_conn(&format!("{conn} channel_binding=require"), "select 1", Some("pw-scram-3")));
    assert!(e.contains("channel binding"), "{e}");
    // Direct, the server does offer it (the proxy is what removed it).
    let direct =
        format!("host=::1 port={} user=u_scram dbname=postgres sslmode=require channel_binding=require", pg.port);
    assert_eq!(ok(&psql_conn(&direct, "select current_user", Some("pw-scram-3"))), "u_scram");
}

#[test]
fn replication_start_up_is_refused_unless_allowed() {
    let pg = Postgres::start_with(PgOptions { hba: "host replication all 127.0.0.1/32 trust", ..PgOptions::default() });
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres replication=database", pg.port);
    let agent = Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}'}}", pg.port));
    let e = err(&psql_conn(&conn, "IDENTIFY_SYSTEM", None));
    assert!(e.contains("replication connections to database \"main\" are not allowed"), "{e}");
    let close = agent.wait_record("refused", |r| r["kind"] == "connection_close" && !r["error"].is_null());
    assert!(close["error"].as_str().unwrap().contains("replication"), "{close}");
    drop(agent);
    let _agent =
        Agent::start(&format!("  - {{name: main, address: '127.0.0.1:{}', allow_replication: true}}", pg.port));
    let system = ok(&psql_conn(&conn, "IDENTIFY_SYSTEM", None));
    assert!(system.split('|').count() == 4, "{system}");
}

/// TLS on both legs with SCRAM. A client on TLS that sees no -PLUS mechanism tells the server
/// "I support channel binding but you don't" (gs2 flag 'y'), which a server on TLS rejects; and
/// -PLUS itself would bind to the proxy's certificate. So: with a proxy certificate of its
/// own, clients need channel_binding=disable; an agent that presents the database server's
/// own certificate keeps channel binding working end to end.
#[test]
fn scram_with_tls_on_both_legs() {
    let pki = TestPki::new("warden-test-ca");
    let pg = tls_postgres(&pki, AUTH_HBA);
    auth_users(&pg);
    let conn = format!("host=127.0.0.1 port={} user=u_scram dbname=postgres sslmode=require", pg.port);
    let db = format!("  - {{name: main, address: '127.0.0.1:{}', tls: {{mode: require}}}}", pg.port);

    let (cert, key) = pki.server_cert("agent", "DNS:localhost,IP:127.0.0.1");
    let agent =
        Agent::start_with_proxy(&db, &format!("  tls: {{cert: '{}', key: '{}'}}", cert.display(), key.display()));
    let e = err(&psql_conn(&conn, "select 1", Some("pw-scram-3")));
    assert!(e.contains("SCRAM channel binding negotiation error"), "{e}");
    let ok_user = ok(&psql_conn(&format!("{conn} channel_binding=disable"), "select current_user", Some("pw-scram-3")));
    assert_eq!(ok_user, "u_scram");
    drop(agent);

    // The agent presents the server's certificate: channel binding holds through the proxy.
    let (crt, key) = (pki.dir.join("server.crt"), pki.dir.join("server.key"));
    let _agent =
        Agent::start_with_proxy(&db, &format!("  tls: {{cert: '{}', key: '{}'}}", crt.display(), key.display()));
    let bound = ok(&psql_conn(&format!("{conn} channel_binding=require"), "select current_user", Some("pw-scram-3")));
    assert_eq!(bound, "u_scram");
}
