"""MySQL-protocol driver workload: prints a deterministic transcript, one `step: JSON` line each.

Usage: python3 mysql_check.py DRIVER HOST PORT USER PASSWORD DATABASE
DRIVER: pymysql | mysqldb (mysqlclient, on libmariadb) | connector (mysql-connector-python, its
C extension) | connector_pure (mysql-connector-python's pure-Python protocol).

The transcript holds results only (no timings, connection ids, server versions or TLS state), so
a run through a proxy can be compared verbatim with a direct run. Tables are re-created on every
run (CREATE OR REPLACE), so runs can follow each other on one server and database; runs of
different drivers must not overlap in time on one database.

Covers: a text-protocol query with many types, column descriptions, client-side parameters
(executemany), binary columns (all 256 byte values), SQL-level PREPARE/EXECUTE, server-side
prepared statements (COM_STMT_*; connector only: PyMySQL and mysqlclient have none),
multi-statements and a procedure's several result sets, a streamed 100,000-row result, a
17 MiB value (a payload over several 16 MiB packets, both directions), a transaction with
rollback and commit, LOAD DATA LOCAL INFILE, errors that keep the session usable, warnings,
session state across COM_PING and COM_INIT_DB, affected rows and insert ids.
"""
import datetime
import decimal
import hashlib
import json
import os
import sys
import tempfile

driver, host, port, user, password, database = sys.argv[1:7]
port = int(port)
BIG = bytes(range(256)) * (17 * 4096)  # 17 MiB: over one 16 MiB packet


def norm(v):
    if isinstance(v, (bytes, bytearray)):
        return "x'" + bytes(v).hex() + "'"
    if isinstance(v, (decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)):
        return str(v)
    if isinstance(v, set):
        return sorted(v)
    raise TypeError(f"no JSON form for {type(v).__name__}")


def emit(step, value):
    print(f"{step}: {json.dumps(value, default=norm, sort_keys=True, ensure_ascii=False)}", flush=True)


def rows(cur):
    return [list(r) for r in cur.fetchall()]


def names(cur):
    return [d[0] for d in cur.description] if cur.description else None


if driver == "pymysql":
    import pymysql
    import pymysql.cursors
    from pymysql.constants import CLIENT

    Error = pymysql.MySQLError
    conn = pymysql.connect(
        host=host, port=port, user=user, password=password, database=database, charset="utf8mb4",
        autocommit=True, local_infile=True, client_flag=CLIENT.MULTI_STATEMENTS,
        max_allowed_packet=64 << 20,
    )
    stream_cursor = lambda: conn.cursor(pymysql.cursors.SSCursor)  # noqa: E731
    select_db = conn.select_db
elif driver == "mysqldb":
    import MySQLdb
    import MySQLdb.cursors
    from MySQLdb.constants.CLIENT import MULTI_STATEMENTS

    Error = MySQLdb.MySQLError
    conn = MySQLdb.connect(
        host=host, port=port, user=user, password=password, database=database, charset="utf8mb4",
        autocommit=True, local_infile=1, client_flag=MULTI_STATEMENTS,
    )
    stream_cursor = lambda: conn.cursor(MySQLdb.cursors.SSCursor)  # noqa: E731
    select_db = conn.select_db
elif driver in ("connector", "connector_pure"):
    import mysql.connector

    Error = mysql.connector.Error
    conn = mysql.connector.connect(
        host=host, port=port, user=user, password=password, database=database, charset="utf8mb4",
        # Connector's default utf8mb4 collation (utf8mb4_0900_ai_ci) is MySQL 8's, unknown to MariaDB.
        collation="utf8mb4_general_ci", autocommit=True, allow_local_infile=True,
        use_pure=(driver == "connector_pure"),
    )
    stream_cursor = lambda: conn.cursor(buffered=False)  # noqa: E731

    def select_db(db):
        conn.database = db
else:
    sys.exit(f"unknown driver {driver}")


def error(e):
    """errno, SQLSTATE when the driver keeps it, and the server's message."""
    if hasattr(e, "errno") and hasattr(e, "sqlstate"):
        return [e.errno, e.sqlstate, e.msg]
    return [e.args[0], None, e.args[1] if len(e.args) > 1 else None]


def results_of_multi(cur, sql):
    """Every result of a multi-statement text query: column names and rows, or affected rows."""
    out = []
    if driver.startswith("connector"):
        for result in cur.execute(sql, multi=True):
            out.append([names(result), rows(result)] if result.with_rows else ["ok", result.rowcount])
        return out
    cur.execute(sql)
    while True:
        out.append([names(cur), rows(cur)] if cur.description else ["ok", cur.rowcount])
        if not cur.nextset():
            return out


cur = conn.cursor()

cur.execute(
    "SELECT 1 AS one, 'abc' AS txt, NULL AS nothing, 1.5 AS num, CAST(2.25 AS DECIMAL(5,2)) AS dec_val, "
    "DATE '2024-01-02' AS d, TIMESTAMP '2024-01-02 03:04:05.123456' AS ts, TIME '-01:02:03' AS t, "
    "_utf8mb4 'héllo ✓ 🐬' AS uni, 0x00ff AS hex, 1e300 AS big_double, -9223372036854775808 AS min_bigint, "
    "18446744073709551615 AS max_ubigint, CURRENT_USER() AS who, DATABASE() AS db"
)
emit("query.columns", names(cur))
emit("query.rows", rows(cur))

cur.execute(
    "CREATE OR REPLACE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) CHARACTER SET utf8mb4, "
    "price DECIMAL(10,2), data VARBINARY(300), big LONGBLOB, at DATETIME(6), ratio DOUBLE)"
)
emit("create", cur.rowcount)
cur.executemany(
    "INSERT INTO items (id, name, price, data, at, ratio) VALUES (%s, %s, %s, %s, %s, %s)",
    [
        (1, "alpha", decimal.Decimal("1.10"), bytes(range(256)), datetime.datetime(2024, 1, 2, 3, 4, 5, 6), 0.1),
        (2, "bêta 🐬", None, b"", None, -2.5),
        (3, "it's \"quoted\"\\", decimal.Decimal("-99999999.99"), b"\x00\x00'\"\\\n\r\x1a", None, None),
    ],
)
emit("executemany", cur.rowcount)

cur.execute("SELECT id, HEX(data), LENGTH(data), data FROM items ORDER BY id")
emit("binary.rows", rows(cur))
cur.execute("SELECT id FROM items WHERE data = %s", (bytes(range(256)),))
emit("binary.param", rows(cur))

cur.execute("PREPARE s FROM 'SELECT ? * 2 AS doubled, CONCAT(?, ''x'') AS cat, name FROM items WHERE id = ?'")
cur.execute("SET @a = 21, @b = 'y', @c = 2")
cur.execute("EXECUTE s USING @a, @b, @c")
emit("sql_prepare", rows(cur))
cur.execute("DEALLOCATE PREPARE s")

if driver.startswith("connector"):
    pcur = conn.cursor(prepared=True)
    sel = "SELECT id, name, price, data, at, ratio FROM items WHERE id >= ? ORDER BY id"
    pcur.execute(sel, (2,))
    emit("server_prepare.select", rows(pcur))
    pcur.execute(sel, (3,))
    emit("server_prepare.again", rows(pcur))
    pcur.execute(
        "INSERT INTO items (id, name, price, data, at, ratio) VALUES (?, ?, ?, ?, ?, ?)",
        (4, "prepared ✓", decimal.Decimal("4.40"), b"\x00\xff\x00", datetime.datetime(1999, 12, 31, 23, 59, 59), 1e-300),
    )
    emit("server_prepare.insert", pcur.rowcount)
    pcur.execute(sel, (4,))
    emit("server_prepare.inserted", rows(pcur))
    try:
        pcur.execute("SELECT no_such_column FROM items WHERE id = ?", (1,))
    except Error as e:
        emit("server_prepare.error", error(e))
    pcur.close()
else:
    emit("server_prepare", "driver has no server-side prepared statements")

emit("multi_statement", results_of_multi(
    cur, "SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; UPDATE items SET ratio = ratio WHERE id = 1; SELECT COUNT(*) FROM items"
))

cur.execute(
    "CREATE OR REPLACE PROCEDURE two_results(IN n INT) BEGIN "
    "SELECT n AS n, n * n AS square; SELECT id, name FROM items WHERE id <= n ORDER BY id; END"
)
if driver.startswith("connector"):
    cur.callproc("two_results", (2,))
    emit("procedure", [[names(r), rows(r)] for r in cur.stored_results()])
else:
    emit("procedure", results_of_multi(cur, "CALL two_results(2)"))

scur = stream_cursor()
scur.execute("SELECT seq, MD5(seq) FROM seq_1_to_100000")
digest, count, total = hashlib.sha256(), 0, 0
while batch := scur.fetchmany(1000):
    for seq, md5 in batch:
        count, total = count + 1, total + seq
        digest.update(f"{seq},{md5}\n".encode())
scur.close()
emit("large_result", [count, total, digest.hexdigest()])

cur.execute("UPDATE items SET big = %s WHERE id = 1", (BIG,))
emit("large_packet.update", cur.rowcount)
cur.execute("SELECT LENGTH(big), SHA2(big, 256), big FROM items WHERE id = 1")
length, server_sha, big = cur.fetchone()
emit("large_packet.select", [length, server_sha, hashlib.sha256(big).hexdigest(), len(big)])
cur.execute("UPDATE items SET big = NULL WHERE id = 1")

conn.begin() if not driver.startswith("connector") else conn.start_transaction()
cur.execute("INSERT INTO items (id, name) VALUES (100, 'rolled back')")
cur.execute("SELECT COUNT(*) FROM items WHERE id = 100")
inside = rows(cur)
conn.rollback()
cur.execute("SELECT COUNT(*) FROM items WHERE id = 100")
after_rollback = rows(cur)
conn.begin() if not driver.startswith("connector") else conn.start_transaction()
cur.execute("INSERT INTO items (id, name) VALUES (101, 'committed')")
cur.execute("SAVEPOINT sp")
cur.execute("INSERT INTO items (id, name) VALUES (102, 'rolled back to savepoint')")
cur.execute("ROLLBACK TO SAVEPOINT sp")
conn.commit()
cur.execute("SELECT id, name FROM items WHERE id >= 100 ORDER BY id")
emit("transaction", [inside, after_rollback, rows(cur)])

cur.execute("CREATE OR REPLACE TABLE loaded (id INT PRIMARY KEY, name VARCHAR(50), raw VARBINARY(10))")
with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as f:
    for i in range(1, 1001):
        f.write(f"{i},name {i},\\N\n".encode() if i % 100 == 0 else f"{i},name {i},{i % 7}\n".encode())
    path = f.name
try:
    cur.execute(
        "LOAD DATA LOCAL INFILE %s INTO TABLE loaded FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n' (id, name, raw)",
        (path,),
    )
    loaded = cur.rowcount
finally:
    os.unlink(path)
cur.execute("SELECT COUNT(*), SUM(id), COUNT(raw), MAX(name) FROM loaded")
emit("load_data_local", [loaded, rows(cur)])

for sql in ("INSERT INTO items (id, name) VALUES (1, 'duplicate')", "SELEC 1", "SELECT * FROM no_such_table"):
    try:
        cur.execute(sql)
        emit("error", "no error")
    except Error as e:
        emit("error", error(e))
cur.execute("SELECT 'still usable'")
emit("after_errors", rows(cur))

cur.execute("SELECT CAST('12abc' AS SIGNED) AS n")
value = rows(cur)
cur.execute("SHOW WARNINGS")
emit("warnings", [value, rows(cur)])

cur.execute("SET @kept = 'session variable'")
conn.ping()
select_db(database)
cur.execute("SELECT @kept, DATABASE(), @@autocommit")
emit("session", rows(cur))

cur.execute("CREATE OR REPLACE TABLE counters (id INT AUTO_INCREMENT PRIMARY KEY, n INT)")
cur.execute("INSERT INTO counters (n) VALUES (1), (2), (3)")
first_id = cur.lastrowid
cur.execute("UPDATE counters SET n = n + 1 WHERE n >= 2")
emit("affected", [first_id, cur.rowcount])

cur.execute("DROP PROCEDURE two_results")
cur.execute("DROP TABLE items, loaded, counters")
cur.close()
conn.close()
emit("done", driver)
