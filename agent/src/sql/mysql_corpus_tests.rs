//! An attack corpus for the MySQL dialect: statements written by a workload that has read this
//! code, each with the class the analyser must give it (through the description cache, as
//! govern asks: normalised, then analysed under the session's modes), and how many statements
//! the server runs. Then the lexer's own traps and its bounded work.

use super::{
    Class, DescriptionCache, LexOptions, Lexer, PreparedCommand, TokenKind, lexer, normalise_with_options,
    prepared_statement_command, split_statements_with,
};

const DEFAULT: LexOptions = LexOptions::mysql(false, false);
const ANSI: LexOptions = LexOptions::mysql(true, false);
const NO_BACKSLASH: LexOptions = LexOptions::mysql(false, true);

use Class::*;

/// (text, modes, expected class, statements the server sees).
const CORPUS: &[(&str, LexOptions, Class, usize)] = &[
    // Plain shapes.
    ("SELECT * FROM orders WHERE id = 1", DEFAULT, Read, 1),
    ("select `o`.`id` from `shop`.`orders` `o`", DEFAULT, Read, 1),
    ("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + 1", DEFAULT, Write, 1),
    ("REPLACE INTO t (a) VALUES (1)", DEFAULT, Write, 1),
    ("UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.a WHERE t2.b = 1", DEFAULT, Write, 1),
    ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 1", DEFAULT, Write, 1),
    ("DELETE FROM t LIMIT 10", DEFAULT, Write, 1),
    ("TRUNCATE TABLE t", DEFAULT, Ddl, 1),
    ("RENAME TABLE a TO b, c TO d", DEFAULT, Ddl, 1),
    ("ALTER TABLE t ADD COLUMN c INT", DEFAULT, Ddl, 1),
    ("DROP TABLE IF EXISTS t", DEFAULT, Ddl, 1),
    ("CREATE TABLE t2 AS SELECT * FROM t1", DEFAULT, Ddl, 1),
    // Files.
    ("SELECT * FROM users INTO OUTFILE '/var/lib/mysql-files/u.csv'", DEFAULT, Unknown, 1),
    ("SELECT '<?php system($_GET[1]); ?>' INTO DUMPFILE '/var/www/x.php'", DEFAULT, Unknown, 1),
    ("SELECT LOAD_FILE('/etc/passwd')", DEFAULT, Unknown, 1),
    ("SELECT HEX(LoAd_FiLe(0x2f6574632f706173737764))", DEFAULT, Unknown, 1),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", DEFAULT, Unknown, 1),
    ("LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t FIELDS TERMINATED BY ','", DEFAULT, Write, 1),
    ("SELECT * FROM (SELECT LOAD_FILE('/etc/shadow') AS x) d", DEFAULT, Unknown, 1),
    // Comments hiding statements, and executable comments that do not hide them.
    ("SELECT 1 /* ; DROP TABLE t */", DEFAULT, Read, 1),
    ("SELECT 1 # ; DROP TABLE t", DEFAULT, Read, 1),
    ("SELECT 1 -- ; DROP TABLE t", DEFAULT, Read, 1),
    ("SELECT 1 --1; DROP TABLE t", DEFAULT, Ddl, 2),
    ("SELECT 1 #\r; DROP TABLE t", DEFAULT, Read, 1),
    ("SELECT 1 /*! ; DROP TABLE t */", DEFAULT, Ddl, 2),
    ("SELECT 1 /*!40101 , LOAD_FILE('/etc/passwd') */", DEFAULT, Unknown, 1),
    ("/*!40101 DELETE FROM t */", DEFAULT, Write, 1),
    ("SELECT 1 /*!99999 , LOAD_FILE('/etc/passwd') */", DEFAULT, Unknown, 1),
    ("SELECT 1 /*M!100500 , SLEEP(1) */", DEFAULT, Unknown, 1),
    ("SELECT 1 /*!50700 UNION SELECT password FROM mysql.user */", DEFAULT, Unknown, 1),
    ("SELECT 1 /* /* */ ; DROP TABLE t; -- */", DEFAULT, Ddl, 2),
    ("SELECT /*+ MAX_EXECUTION_TIME(1000) */ * FROM t", DEFAULT, Read, 1),
    ("SELECT 1 /*! unterminated", DEFAULT, Unknown, 1),
    // Quotes and modes.
    ("SELECT 'a\\'; DROP TABLE t; -- '", DEFAULT, Read, 1),
    ("SELECT 'a\\'; DROP TABLE t; -- '", NO_BACKSLASH, Ddl, 2),
    ("SELECT \"a\\\"; DROP TABLE t; -- \"", DEFAULT, Read, 1),
    ("SELECT \"a;b\" FROM t", DEFAULT, Read, 1),
    ("SELECT \"a;b\" FROM t", ANSI, Read, 1),
    ("SELECT \"col\\\"; DROP TABLE t; -- \" FROM t", ANSI, Ddl, 2),
    ("SELECT `a``; DROP TABLE t; --` FROM t", DEFAULT, Read, 1),
    ("SELECT 'it''s; DROP TABLE t'", DEFAULT, Read, 1),
    ("SELECT 'a' 'b; DROP TABLE t'", DEFAULT, Read, 1),
    ("SELECT _utf8mb4'x; DROP TABLE t' COLLATE utf8mb4_bin", DEFAULT, Read, 1),
    ("SELECT N'x', X'4142', 0x4142, b'01', 0b01", DEFAULT, Read, 1),
    ("SELECT x'41; DROP TABLE t", DEFAULT, Unknown, 1),
    ("SELECT 'unterminated; DROP TABLE t", DEFAULT, Unknown, 1),
    // Stacked statements.
    ("SELECT 1; DELETE FROM t", DEFAULT, Write, 2),
    ("SELECT 1;\nGRANT ALL ON *.* TO 'x'@'%'", DEFAULT, Dcl, 2),
    ("CREATE PROCEDURE p() BEGIN SELECT 1; DELETE FROM t; END", DEFAULT, Ddl, 1),
    ("CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; END; DROP TABLE t", DEFAULT, Ddl, 2),
    ("BEGIN NOT ATOMIC DELETE FROM t; END", DEFAULT, Unknown, 1),
    // Functions.
    ("SELECT SLEEP(5)", DEFAULT, Read, 1),
    ("SELECT BENCHMARK(100000000, MD5('x'))", DEFAULT, Admin, 1),
    ("SELECT GET_LOCK('x', 10)", DEFAULT, Admin, 1),
    ("SELECT my_udf(1)", DEFAULT, Unknown, 1),
    ("SELECT shop.discount(price) FROM items", DEFAULT, Unknown, 1),
    ("SELECT UPPER(CONCAT(LOWER(a), IFNULL(b, ''))) FROM t", DEFAULT, Read, 1),
    ("WITH d AS (SELECT id FROM t) SELECT * FROM d", DEFAULT, Read, 1),
    ("SELECT CAST(a AS CHAR), CONVERT(b, SIGNED) FROM t", DEFAULT, Read, 1),
    ("DO SLEEP(1)", DEFAULT, Read, 1),
    ("DO LOAD_FILE('/etc/passwd')", DEFAULT, Unknown, 1),
    ("CALL p()", DEFAULT, Unknown, 1),
    // Session, administration and privileges.
    ("SET GLOBAL max_connections = 1", DEFAULT, Admin, 1),
    ("SET @@global.general_log = 0", DEFAULT, Admin, 1),
    ("SET PERSIST sql_mode = ''", DEFAULT, Admin, 1),
    ("SET SESSION sql_mode = 'ANSI_QUOTES'", DEFAULT, Session, 1),
    ("SET sql_log_bin = 0", DEFAULT, Admin, 1),
    ("SET @x = (SELECT LOAD_FILE('/etc/passwd'))", DEFAULT, Unknown, 1),
    ("SET NAMES utf8mb4", DEFAULT, Session, 1),
    ("CREATE USER 'x'@'%' IDENTIFIED BY 'pw'", DEFAULT, Dcl, 1),
    ("GRANT SELECT ON shop.* TO 'x'@'%'", DEFAULT, Dcl, 1),
    ("REVOKE ALL ON *.* FROM 'x'@'%'", DEFAULT, Dcl, 1),
    ("SET PASSWORD FOR 'root'@'localhost' = 'x'", DEFAULT, Dcl, 1),
    ("UPDATE mysql.user SET authentication_string = '' WHERE user = 'root'", DEFAULT, Dcl, 1),
    ("INSTALL PLUGIN p SONAME 'evil.so'", DEFAULT, Unknown, 1),
    ("CREATE FUNCTION sys_exec RETURNS INT SONAME 'lib_mysqludf_sys.so'", DEFAULT, Ddl, 1),
    ("KILL 42", DEFAULT, Admin, 1),
    ("BEGIN", DEFAULT, Transaction, 1),
    ("BEGIN WORK", DEFAULT, Transaction, 1),
    ("BEGIN DELETE FROM t; END", DEFAULT, Unknown, 2),
    ("DECLARE x INT; BEGIN DELETE FROM t; END", DEFAULT, Unknown, 3),
    ("START ALL SLAVES", DEFAULT, Admin, 1),
    ("STOP ALL REPLICAS", DEFAULT, Admin, 1),
    ("RESET QUERY CACHE, MASTER", DEFAULT, Admin, 1),
    ("RESET QUERY CACHE", DEFAULT, Admin, 1),
    ("SELECT 'a' || 'b' FROM t", DEFAULT, Read, 1),
    ("SET sql_lög_bin = 0", DEFAULT, Unknown, 1),
    ("SET @@sëssion.sql_mode = 'ANSI_QUOTES'", DEFAULT, Unknown, 1),
    ("KILL CONNECTION 42", DEFAULT, Admin, 1),
    ("KILL QUERY 42", DEFAULT, Utility, 1),
    ("kill hard query id 42", DEFAULT, Utility, 1),
    ("KILL QUERY 42; DROP TABLE t", DEFAULT, Ddl, 2),
    ("KILL USER app", DEFAULT, Admin, 1),
    ("FLUSH PRIVILEGES", DEFAULT, Admin, 1),
    ("SHUTDOWN", DEFAULT, Admin, 1),
    ("SHOW GRANTS", DEFAULT, Read, 1),
    ("SHOW TABLES", DEFAULT, Read, 1),
    ("DESCRIBE orders", DEFAULT, Read, 1),
    ("USE shop", DEFAULT, Session, 1),
    ("HANDLER t OPEN", DEFAULT, Read, 1),
    ("LOCK TABLES t WRITE", DEFAULT, Admin, 1),
    ("START TRANSACTION", DEFAULT, Transaction, 1),
    ("SELECT * FROM t FOR UPDATE", DEFAULT, Write, 1),
    ("SELECT * FROM t LOCK IN SHARE MODE", DEFAULT, Write, 1),
    // SQL-level prepared statements.
    ("PREPARE s FROM 'DELETE FROM t'", DEFAULT, Write, 1),
    ("PREPARE s FROM 'SELECT 1'", DEFAULT, Read, 1),
    ("PREPARE s FROM @q", DEFAULT, Unknown, 1),
    ("EXECUTE s", DEFAULT, Unknown, 1),
    ("DEALLOCATE PREPARE s", DEFAULT, Utility, 1),
    // Case and unicode.
    ("sElEcT * fRoM T", DEFAULT, Read, 1),
    ("SELECT * FROM `ünïcode` WHERE `ключ` = 'значение'", DEFAULT, Read, 1),
    ("SELECT 1abc FROM t1", DEFAULT, Read, 1),
];

#[test]
fn the_attack_corpus_is_judged_as_the_server_runs_it() {
    assert!(CORPUS.len() >= 60, "{} cases", CORPUS.len());
    let cache = DescriptionCache::new(1024);
    let mut failures = Vec::new();
    for (text, options, class, statements) in CORPUS {
        let parts = split_statements_with(text, *options);
        if parts.len() != *statements {
            failures
                .push(format!("{text:?} ({options:?}): {} statements, expected {statements}: {parts:?}", parts.len()));
        }
        let described = cache.describe_with(text, *options);
        if described.analysis.class != *class {
            failures.push(format!(
                "{text:?} ({options:?}): {:?} ({:?}), expected {class:?}; parsed {:?}",
                described.analysis.class, described.analysis.class_reason, described.parsable
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}

#[test]
fn the_same_text_is_cached_apart_per_mode() {
    let cache = DescriptionCache::new(16);
    let text = "SELECT 'a\\'; DROP TABLE t; -- '";
    assert_eq!(cache.describe_with(text, DEFAULT).analysis.class, Read);
    assert_eq!(cache.describe_with(text, NO_BACKSLASH).analysis.class, Ddl);
    // PostgreSQL with standard_conforming_strings on ends the string at `\'`.
    assert_eq!(cache.describe_with(text, LexOptions::default()).analysis.class, Ddl);
}

#[test]
fn relations_keep_their_case_and_use_names_the_database() {
    let cache = DescriptionCache::new(16);
    let a = cache.describe_with("SELECT * FROM Shop.Orders JOIN `x``y` ON 1", DEFAULT).analysis;
    let names: Vec<(Option<&str>, &str)> = a.relations.iter().map(|r| (r.schema.as_deref(), r.name.as_str())).collect();
    assert_eq!(names, [(Some("Shop"), "Orders"), (None, "x`y")], "{a:?}");
    assert_eq!(cache.describe_with("USE `Shop`", DEFAULT).analysis.use_database.as_deref(), Some("Shop"));
    let a = cache.describe_with("DELETE FROM t", DEFAULT).analysis;
    assert!(a.unscoped, "{a:?}");
    let a = cache.describe_with("DELETE FROM t WHERE id = 3 LIMIT 1", DEFAULT).analysis;
    assert!(!a.unscoped, "{a:?}");
    let a = cache.describe_with("PREPARE Stmt FROM 'SELECT 1'", DEFAULT).analysis;
    assert_eq!(a.prepares.as_deref(), Some("stmt"));
    let a = cache.describe_with("EXECUTE Stmt USING @a", DEFAULT).analysis;
    assert_eq!(a.executes.as_deref(), Some("stmt"));
}

#[test]
fn prepared_statement_commands_read_mysql_forms() {
    assert_eq!(
        prepared_statement_command("PREPARE S1 FROM 'SELECT \\'a\\''", DEFAULT),
        Some(PreparedCommand::Prepare { name: "s1".into(), body: "SELECT 'a'".into() })
    );
    assert_eq!(prepared_statement_command("PREPARE s FROM @q", DEFAULT), None);
    assert_eq!(
        prepared_statement_command("DROP PREPARE `S`", DEFAULT),
        Some(PreparedCommand::Deallocate { name: "s".into() })
    );
}

/// The significant tokens of `text`, as (kind, text).
fn tokens(text: &str, options: LexOptions) -> Vec<(TokenKind, &str)> {
    Lexer::new(text, options).filter(|t| t.kind != TokenKind::Whitespace).map(|t| (t.kind, &text[t.range()])).collect()
}

#[test]
fn lexer_traps() {
    use super::StringKind as S;
    use TokenKind as K;
    assert_eq!(tokens("--1", DEFAULT), vec![(K::Operator, "-"), (K::Operator, "-"), (K::Number, "1")]);
    assert_eq!(tokens("a --", DEFAULT), vec![(K::Identifier, "a"), (K::LineComment, "--")]);
    assert_eq!(tokens("# x\r\ny", DEFAULT), vec![(K::LineComment, "# x\r"), (K::Identifier, "y")]);
    assert_eq!(
        tokens("/*!50001 x */", DEFAULT),
        vec![(K::ExecutableMarker, "/*!50001"), (K::Identifier, "x"), (K::ExecutableMarker, "*/")]
    );
    assert_eq!(
        tokens("a */ b", DEFAULT),
        vec![(K::Identifier, "a"), (K::Operator, "*"), (K::Operator, "/"), (K::Identifier, "b")]
    );
    assert_eq!(tokens("/* /* */ x", DEFAULT), vec![(K::BlockComment, "/* /* */"), (K::Identifier, "x")]);
    assert_eq!(
        tokens("0x1g 0X1F 0x1F 1e5 1abc 1e", DEFAULT).iter().map(|t| t.0).collect::<Vec<_>>(),
        [K::Identifier, K::Identifier, K::Number, K::Number, K::Identifier, K::Identifier]
    );
    assert_eq!(tokens("t.1e5", DEFAULT), vec![(K::Identifier, "t"), (K::Punctuation, "."), (K::Identifier, "1e5")]);
    assert_eq!(
        tokens("@a @@global.x @'q r' ?", DEFAULT),
        vec![
            (K::Variable, "@a"),
            (K::Variable, "@@global"),
            (K::Punctuation, "."),
            (K::Identifier, "x"),
            (K::Variable, "@'q r'"),
            (K::Parameter, "?"),
        ]
    );
    assert_eq!(tokens("\"a\"", ANSI), vec![(K::QuotedIdentifier { unicode: false }, "\"a\"")]);
    assert_eq!(tokens("\"a\"", DEFAULT), vec![(K::StringLiteral(S::Plain), "\"a\"")]);
    assert_eq!(
        tokens("'a\\'b'", NO_BACKSLASH),
        vec![(K::StringLiteral(S::Plain), "'a\\'"), (K::StringLiteral(S::Bit), "b'")]
    );
    // A skipped version comment allows one nested comment.
    let skip = LexOptions { skip_versioned: true, ..DEFAULT };
    assert_eq!(
        tokens("/*!99999 /* */ x */ y", skip),
        vec![(K::BlockComment, "/*!99999 /* */ x */"), (K::Identifier, "y")]
    );
    // Literals inside executable comments are normalised like any.
    assert_eq!(normalise_with_options("SELECT 1 /*!, 'secret' */", DEFAULT), "SELECT ? /*!, ? */");
}

#[test]
fn version_dependent_comments_that_change_the_split_are_found() {
    // Skipped by a server older than 9.99.99, the comment ends at its first `*/`.
    let text = "SELECT 1 /*!99999 ' */ ; DROP TABLE t; -- ' */";
    assert!(super::mysql_version_dependent(text, DEFAULT));
    assert!(!super::mysql_version_dependent("SELECT 1 /*!40101 , 2 */", DEFAULT));
}

/// Inputs built to make a naive lexer rescan.
fn adversarial_inputs() -> Vec<(&'static str, String)> {
    const MB: usize = 1024 * 1024;
    fn repeat_to(unit: &str, len: usize) -> String {
        unit.repeat(len / unit.len())
    }
    vec![
        ("comment openers", repeat_to("/*", MB)),
        ("executable openers", repeat_to("/*!", MB)),
        ("executable comments", repeat_to("/*!12345 */", MB)),
        ("quotes, odd count", "'".repeat(MB + 1)),
        ("backslashes in a string", format!("'{}", "\\".repeat(MB))),
        ("backticks, odd count", "`".repeat(MB + 1)),
        ("line comment openers", repeat_to("-- ", MB)),
        ("minus runs", repeat_to("--", MB)),
        ("hash comments", repeat_to("#\n", MB)),
        ("hex openers", repeat_to("0x", MB)),
        ("variables", repeat_to("@@a.", MB)),
        ("exponent openers", repeat_to("1e+", MB)),
        ("identifier dots", repeat_to("a.1", MB)),
        ("semicolons", repeat_to(";", MB)),
        ("begin blocks", repeat_to("create procedure begin ", MB)),
    ]
}

#[test]
fn lexing_is_linear_in_the_input() {
    const READS_PER_BYTE: usize = 4;
    let reads = |f: &dyn Fn()| {
        lexer::VISITS.with(|v| v.set(0));
        f();
        lexer::VISITS.with(|v| v.get())
    };
    for (name, text) in adversarial_inputs() {
        let bound = READS_PER_BYTE * text.len() + 16;
        for options in [DEFAULT, ANSI, NO_BACKSLASH, LexOptions { skip_versioned: true, ..DEFAULT }] {
            let n = reads(&|| Lexer::new(&text, options).for_each(drop));
            assert!(n <= bound, "{name} ({options:?}): {n} reads for {} bytes", text.len());
            let n = reads(&|| {
                split_statements_with(&text, options);
            });
            assert!(n <= bound, "{name}: splitting read {n} bytes for {}", text.len());
            let n = reads(&|| {
                normalise_with_options(&text, options);
            });
            assert!(n <= bound, "{name}: normalising read {n} bytes for {}", text.len());
        }
    }
}

/// (text, expected class, expected unscoped), each under the default modes.
fn judged(cases: &[(&str, Class, bool)]) {
    let cache = DescriptionCache::new(64);
    let mut failures = Vec::new();
    for (text, class, unscoped) in cases {
        let a = cache.describe_with(text, DEFAULT).analysis;
        if a.class != *class || a.unscoped != *unscoped {
            failures.push(format!(
                "{text:?}: {:?} unscoped={} ({:?}), expected {class:?} unscoped={unscoped}",
                a.class, a.unscoped, a.class_reason
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn multi_table_delete_judges_every_target() {
    // An outer join's ON condition is not taken as narrowing (fails closed).
    judged(&[
        ("DELETE a, p FROM accounts a JOIN mysql.global_priv p ON p.User = 'x' WHERE a.id = 1", Dcl, false),
        ("DELETE p, a FROM accounts a JOIN mysql.global_priv p ON p.User = 'x' WHERE a.id = 1", Dcl, false),
        ("DELETE a, mysql.global_priv FROM accounts a JOIN mysql.global_priv WHERE a.id = 1", Dcl, true),
        ("DELETE FROM a, p USING accounts a JOIN mysql.global_priv p ON p.User = 'x' WHERE a.id = 1", Dcl, false),
        ("DELETE a, l FROM accounts a JOIN ledger l WHERE a.id = 1", Write, true),
        ("DELETE l, a FROM accounts a JOIN ledger l WHERE a.id = 1", Write, true),
        ("DELETE a, l FROM accounts a JOIN ledger l ON l.account = a.id WHERE a.id = 1", Write, false),
        ("DELETE a, l FROM accounts a LEFT JOIN ledger l ON l.account = a.id WHERE a.id = 1", Write, true),
        ("DELETE a FROM accounts a LEFT JOIN ledger l ON l.account = a.id WHERE l.id = 1", Write, true),
        ("DELETE a FROM accounts a LEFT JOIN ledger l ON l.account = a.id", Write, true),
        ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 1", Write, false),
        ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", Write, false),
        ("DELETE t1 FROM t1 JOIN t2 WHERE t2.x = 1", Write, true),
        ("DELETE l FROM ledger l JOIN ledger l2 ON l.id = l2.id", Write, true),
        // A derived table over the target's own table: its columns may be the target's.
        ("DELETE l FROM ledger l JOIN (SELECT id FROM ledger) d ON l.id = d.id", Write, true),
        ("DELETE l FROM ledger l JOIN (SELECT id AS k FROM shop.Ledger) d ON d.k = l.id", Write, true),
        ("UPDATE ledger l JOIN (SELECT id FROM ledger) d ON l.id = d.id SET l.x = 1", Write, true),
        ("DELETE l FROM ledger l JOIN (SELECT account FROM accounts) d ON l.account = d.account", Write, false),
        ("WITH d AS (SELECT id FROM ledger) DELETE l FROM ledger l JOIN d ON l.id = d.id", Write, true),
        ("DELETE a FROM accounts a, ledger l", Write, true),
        ("DELETE FROM accounts USING accounts", Write, true),
        ("DELETE x FROM accounts a WHERE a.id = 1", Unknown, false),
        ("DELETE LOW_PRIORITY QUICK IGNORE FROM t WHERE id = 1", Write, false),
        ("DELETE LOW_PRIORITY FROM t", Write, true),
    ]);
}

#[test]
fn multi_table_update_judges_every_assigned_table() {
    judged(&[
        (
            "UPDATE accounts a JOIN mysql.global_priv p ON p.User = 'x' SET a.balance = a.balance + 1, p.priv = '{}' WHERE a.id = 1",
            Dcl,
            false,
        ),
        ("UPDATE accounts a JOIN mysql.global_priv p ON p.User = 'x' SET priv = '{}' WHERE a.id = 1", Dcl, false),
        (
            "UPDATE accounts a JOIN ledger l ON l.account = a.id SET a.balance = a.balance + 1 WHERE l.id = 3",
            Write,
            false,
        ),
        ("UPDATE ledger l JOIN accounts a ON l.account = a.id SET l.amount = 0 WHERE l.id = 3", Write, false),
        ("UPDATE accounts a JOIN ledger l SET a.balance = 0, l.amount = 0 WHERE a.id = 1", Write, true),
        ("UPDATE accounts a JOIN ledger l SET a.balance = 0 WHERE a.id = 1", Write, false),
        ("UPDATE accounts a JOIN ledger l ON 1 SET a.balance = 0", Write, true),
        ("UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.a WHERE t2.b = 1", Write, false),
        ("UPDATE accounts a, ledger l SET l.amount = 0 WHERE a.id = 1", Write, true),
        ("UPDATE accounts a, ledger l SET a.balance = 0 WHERE a.id = 1", Write, false),
        ("UPDATE accounts a, mysql.global_priv p SET p.priv = '{}' WHERE a.id = 1 AND p.User = 'x'", Dcl, false),
        ("UPDATE accounts a JOIN ledger l ON 1 SET x.balance = 0 WHERE a.id = 1", Unknown, false),
        ("UPDATE (SELECT * FROM accounts) d SET balance = 0 WHERE id = 1", Unknown, false),
        ("UPDATE accounts a JOIN (SELECT 1 AS id) d ON 1 SET d.id = 0 WHERE a.id = 1", Unknown, true),
        ("UPDATE LOW_PRIORITY IGNORE accounts SET balance = 0", Write, true),
        ("UPDATE LOW_PRIORITY IGNORE accounts SET balance = 0 WHERE id = 1", Write, false),
        ("UPDATE IGNORE accounts SET balance = 0 WHERE id = 1", Write, false),
    ]);
}

#[test]
fn null_safe_self_comparison_is_a_tautology() {
    judged(&[
        ("UPDATE accounts SET balance = 0 WHERE id <=> id", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE accounts.id <=> (id)", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE id <=> 1", Write, false),
        ("UPDATE accounts SET balance = 0 WHERE 1", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE TRUE", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE id IS NOT NULL OR TRUE", Write, true),
        ("DELETE FROM accounts WHERE id = 1 OR id <=> id", Write, true),
    ]);
}

#[test]
fn pipes_are_or_and_xor_does_not_narrow() {
    // Without PIPES_AS_CONCAT `||` is OR: `id = 1 || 1` is every row, not `id = '11'`.
    judged(&[
        ("DELETE FROM accounts WHERE id = 1 || 1", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE id = 5 || true", Write, true),
        ("UPDATE accounts SET balance = 0 WHERE id = 5 && owner = 'x'", Write, false),
        ("DELETE FROM accounts WHERE id = 1 XOR id <> 1", Unknown, false),
        ("DELETE FROM accounts WHERE id = 1", Write, false),
    ]);
}

#[test]
fn upserts_and_replaces_of_every_row_are_unscoped() {
    judged(&[
        ("INSERT INTO accounts SELECT id, owner, 0 FROM accounts ON DUPLICATE KEY UPDATE balance = 0", Write, true),
        ("INSERT INTO accounts SELECT * FROM accounts WHERE id = id ON DUPLICATE KEY UPDATE balance = 0", Write, true),
        ("INSERT INTO accounts SELECT * FROM accounts WHERE id = 1 ON DUPLICATE KEY UPDATE balance = 0", Write, false),
        ("REPLACE INTO accounts SELECT id, owner, 0 FROM accounts", Write, true),
        ("REPLACE INTO accounts SELECT a.* FROM accounts a JOIN ledger l ON 1", Write, true),
        ("REPLACE INTO accounts SELECT * FROM (SELECT * FROM accounts) d", Write, true),
        ("REPLACE INTO accounts SELECT * FROM other UNION SELECT * FROM accounts", Write, true),
        ("REPLACE INTO accounts TABLE accounts", Write, true),
        ("REPLACE INTO accounts SELECT * FROM accounts WHERE id = 2", Write, false),
        ("REPLACE INTO accounts SELECT * FROM accounts WHERE id <=> id", Write, true),
        ("INSERT INTO accounts VALUES (1, 'ann', 0) ON DUPLICATE KEY UPDATE balance = balance + 1", Write, false),
        ("REPLACE INTO notes (id, body) VALUES (2, 'replaced')", Write, false),
        ("INSERT INTO archive SELECT * FROM accounts", Write, false),
        ("INSERT INTO accounts SELECT * FROM accounts", Write, false),
    ]);
}

#[test]
fn execute_immediate_is_judged_as_its_text() {
    judged(&[
        ("EXECUTE IMMEDIATE 'DELETE FROM accounts'", Write, true),
        ("EXECUTE IMMEDIATE 'SELECT owner FROM accounts WHERE id = 1'", Read, false),
        ("execute immediate 'GRANT ALL ON *.* TO x'", Dcl, false),
        ("EXECUTE IMMEDIATE 'SELECT 1; DROP TABLE t'", Ddl, false),
        ("EXECUTE IMMEDIATE @q", Unknown, false),
        ("EXECUTE IMMEDIATE CONCAT('DROP TABLE ', 'accounts')", Unknown, false),
        ("EXECUTE IMMEDIATE 'SELECT ?' USING 1", Unknown, false),
    ]);
    let cache = DescriptionCache::new(4);
    assert_eq!(cache.describe_with("EXECUTE IMMEDIATE 'SELECT 1'", DEFAULT).analysis.executes, None);
}

#[test]
fn analyze_of_a_statement_runs_it() {
    judged(&[
        ("ANALYZE DELETE FROM accounts", Write, true),
        ("ANALYZE UPDATE accounts SET balance = 0 WHERE id = 1", Write, false),
        ("ANALYZE SELECT * FROM accounts", Read, false),
        ("ANALYZE FORMAT=JSON DELETE FROM mysql.global_priv WHERE User = 'x'", Dcl, false),
        ("ANALYZE SELECT LOAD_FILE('/etc/passwd')", Unknown, false),
        ("ANALYZE TABLE accounts", Admin, false),
        ("ANALYZE NO_WRITE_TO_BINLOG TABLE accounts", Admin, false),
    ]);
}

#[test]
fn set_statement_for_is_the_statement_and_its_settings() {
    judged(&[
        ("SET STATEMENT max_statement_time = 100 FOR DELETE FROM accounts", Write, true),
        ("SET STATEMENT max_statement_time = 100 FOR SELECT * FROM accounts WHERE id = 1", Read, false),
        ("SET STATEMENT max_statement_time = 100, sql_mode = '' FOR UPDATE t SET a = 1 WHERE id = 1", Write, false),
        ("SET STATEMENT sql_log_bin = 0 FOR SELECT 1", Admin, false),
        ("SET STATEMENT sql_lög_bin = 0 FOR SELECT 1", Unknown, false),
        ("SET STATEMENT x = LOAD_FILE('/etc/passwd') FOR SELECT 1", Unknown, false),
        ("SET STATEMENT max_statement_time = 1 FOR SET STATEMENT sql_log_bin = 0 FOR SELECT 1", Unknown, false),
        ("SET STATEMENT max_statement_time = 1", Unknown, false),
    ]);
}

#[test]
fn renames_name_both_tables() {
    let cache = DescriptionCache::new(64);
    for (text, expected) in [
        ("ALTER TABLE t RENAME TO mysql.y", &["t", "mysql.y"][..]),
        ("ALTER TABLE t RENAME AS mysql.y", &["t", "mysql.y"]),
        ("RENAME TABLE a TO mysql.b, c TO d", &["a", "mysql.b", "c", "d"]),
        ("ALTER TABLE shop.t ADD COLUMN c INT, RENAME TO mysql.y", &["shop.t", "mysql.y"]),
    ] {
        let a = cache.describe_with(text, DEFAULT).analysis;
        let mut names: Vec<String> = a.relations.iter().map(|r| r.to_string()).collect();
        let mut expected: Vec<&str> = expected.to_vec();
        names.sort();
        expected.sort();
        assert_eq!(names, expected, "{text}: {:?}", a.class_reason);
    }
}
