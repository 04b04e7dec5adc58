"""MySQL workload for the masking test: runs each statement of a JSON list in one mode and
prints one JSON document: for each statement, what came back (every result set's rows, as
text) or the error, so the test can look for protected values in everything the client got.

Usage: python3 mysql_masking.py HOST PORT USER PASSWORD DATABASE MODE FILE
MODE: text (PyMySQL, COM_QUERY with multi-statements: text rows), prepared (mysql-connector's
prepared cursor: COM_STMT_PREPARE / EXECUTE, binary rows, run twice), cursor (raw protocol:
COM_STMT_EXECUTE opening a read-only cursor with the first COM_STMT_FETCH in the same write,
then fetches of two rows at a time; the raw row bytes are printed), cursor_last (the same,
the fetches naming MariaDB's statement id -1), switch_db (prepared in crm, executed after
COM_INIT_DB back to DATABASE), cursor_one (as cursor, one row per fetch).
"""
import hashlib
import json
import socket
import struct
import sys

host, port, user, password, database, mode, path = sys.argv[1:8]
port = int(port)
with open(path) as f:
    statements = json.load(f)


def text_mode():
    import pymysql
    from pymysql.constants import CLIENT

    conn = pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                           client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True, connect_timeout=20)
    out = []
    for sql in statements:
        entry = {"sql": sql, "results": []}
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                while True:
                    if cur.description:
                        entry["results"].append([[repr(v) for v in r] for r in cur.fetchall()])
                    else:
                        entry["results"].append(cur.rowcount)
                    if not cur.nextset():
                        break
        except pymysql.MySQLError as e:
            entry["error"] = {"code": e.args[0], "message": str(e.args[1]) if len(e.args) > 1 else ""}
            conn.ping(reconnect=True)
        out.append(entry)
    return out


def prepared_mode():
    import mysql.connector

    conn = mysql.connector.connect(host=host, port=port, user=user, password=password, database=database,
                                   autocommit=True, connection_timeout=20, use_pure=True)
    out = []
    for sql in statements:
        entry = {"sql": sql, "results": []}
        try:
            cur = conn.cursor(prepared=True)
            for _ in range(2):
                cur.execute(sql)
                rows = cur.fetchall() if cur.description else []
            entry["results"].append([[repr(v) for v in r] for r in rows])
            cur.close()
        except mysql.connector.Error as e:
            entry["error"] = {"code": e.errno, "message": e.msg}
            conn.reconnect()
        out.append(entry)
    return out


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def read_packet(s):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise EOFError("closed")
            data += chunk
        return data

    head = exactly(4)
    return head[3], exactly(head[0] | head[1] << 8 | head[2] << 16)


def raw_connect():
    """Logs in with mysql_native_password, without CLIENT_DEPRECATE_EOF."""
    s = socket.create_connection((host, port), timeout=20)
    _, g = read_packet(s)
    at = g.index(b"\0", 1) + 1
    part1 = g[at + 4: at + 12]
    at += 4 + 8 + 1 + 2 + 1 + 2 + 2
    auth_len = g[at]
    at += 1 + 10
    nonce = part1 + g[at: at + max(13, auth_len - 8)].rstrip(b"\0")
    h1 = hashlib.sha1(password.encode()).digest()
    scramble = bytes(a ^ b for a, b in zip(h1, hashlib.sha1(nonce + hashlib.sha1(h1).digest()).digest()))
    caps = 0x200 | 0x8000 | 0x80000 | 0x8 | 0x1 | 0x2000 | 0x20000
    response = (struct.pack("<IIB23s", caps, 1 << 24, 45, b"") + user.encode() + b"\0" + bytes([len(scramble)])
                + scramble + database.encode() + b"\0" + b"mysql_native_password\0")
    s.sendall(packet(1, response))
    _, ok = read_packet(s)
    if ok[:1] != b"\x00":
        raise RuntimeError(f"login failed: {ok!r}")
    return s


def prepare(s, sql):
    """COM_STMT_PREPARE: the statement id and column count, or the error."""
    s.sendall(packet(0, b"\x16" + sql.encode()))
    _, body = read_packet(s)
    if body[:1] == b"\xff":
        return {"error": error_of(body)}
    stmt, columns, params = struct.unpack("<IHH", body[1:9])
    # Parameter and column definitions, each list closed by an EOF (no CLIENT_DEPRECATE_EOF).
    for n in (params, columns):
        if n:
            for _ in range(n + 1):
                read_packet(s)
    return {"stmt": stmt, "columns": columns}


def error_of(body):
    code = struct.unpack("<H", body[1:3])[0]
    return {"code": code, "message": body[9:].decode("utf-8", "replace")}


def cursor_mode(last_id=False, batch=2):
    """`last_id`: the fetches name MariaDB's statement id -1 (the statement prepared last);
    `batch`: rows asked for by each fetch."""
    out = []
    for sql in statements:
        entry = {"sql": sql, "results": []}
        s = raw_connect()
        try:
            prepared = prepare(s, sql)
            if "error" in prepared:
                entry["error"] = prepared["error"]
                out.append(entry)
                continue
            stmt, columns = prepared["stmt"], prepared["columns"]
            # Execute with CURSOR_TYPE_READ_ONLY, no parameters, and the first fetch in the
            # same write (before the execution's answer has described the cursor's columns).
            fetch = packet(0, b"\x1c" + struct.pack("<II", 0xFFFFFFFF if last_id else stmt, batch))
            s.sendall(packet(0, b"\x17" + struct.pack("<IBI", stmt, 1, 1)) + fetch)
            _, body = read_packet(s)
            if body[:1] in (b"\xff", b"\x00"):
                if body[:1] == b"\xff":
                    entry["error"] = error_of(body)
                # The fetch's own answer (an error: no cursor).
                _, after = read_packet(s)
                if after[:1] == b"\xff" and "error" not in entry:
                    entry["error"] = error_of(after)
                out.append(entry)
                continue
            for _ in range(columns):
                read_packet(s)
            read_packet(s)
            rows = []
            first = True
            while True:
                if not first:
                    s.sendall(fetch)
                first = False
                last = None
                while True:
                    _, body = read_packet(s)
                    if body[:1] == b"\xff":
                        entry["error"] = error_of(body)
                        break
                    if body[:1] == b"\xfe" and len(body) < 9:
                        last = struct.unpack("<H", body[3:5])[0]
                        break
                    rows.append(body.decode("latin-1"))
                if last is None or last & 0x80:
                    break
            entry["results"].append(rows)
        finally:
            s.close()
        out.append(entry)
    return out


def switch_db_mode():
    """Each statement prepared in database crm, executed after COM_INIT_DB back to DATABASE
    (the server runs it in crm, where it was prepared); the raw answer packets."""
    out = []
    for sql in statements:
        entry = {"sql": sql, "results": []}
        s = raw_connect()
        try:
            s.sendall(packet(0, b"\x02crm"))
            read_packet(s)
            prepared = prepare(s, sql)
            if "error" in prepared:
                entry["error"] = prepared["error"]
                out.append(entry)
                continue
            stmt, columns = prepared["stmt"], prepared["columns"]
            s.sendall(packet(0, b"\x02" + database.encode()))
            read_packet(s)
            s.sendall(packet(0, b"\x17" + struct.pack("<IBI", stmt, 0, 1)))
            rows = []
            eofs = 0
            while True:
                _, body = read_packet(s)
                if body[:1] == b"\xff":
                    entry["error"] = error_of(body)
                    break
                if body[:1] == b"\x00" and not rows and eofs == 0:
                    break
                if body[:1] == b"\xfe" and len(body) < 9:
                    eofs += 1
                    if eofs == 2:
                        break
                    continue
                rows.append(body.decode("latin-1"))
            entry["results"].append(rows)
        finally:
            s.close()
        out.append(entry)
    return out


modes = {"text": text_mode, "prepared": prepared_mode, "cursor": cursor_mode, "switch_db": switch_db_mode,
         "cursor_last": lambda: cursor_mode(last_id=True), "cursor_one": lambda: cursor_mode(batch=1)}
results = modes[mode]()
print(json.dumps({"results": results}))
