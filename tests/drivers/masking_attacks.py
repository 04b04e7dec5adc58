"""psycopg 3 workload for the masking test: runs each statement of a JSON list in one mode and
prints one JSON document: for each statement, what came back (rows as text, COPY data) or the
error, so the test can look for protected values in everything the client received.

Usage: python3 masking_attacks.py HOST PORT MODE FILE
MODE: text (client-side cursor, text results), binary (binary results), prepared (server-side
prepared statements, run twice), cursor (a named server-side cursor, fetched in batches),
copy (COPY ... TO STDOUT read with psycopg's copy API), pipeline (every statement in one
pipeline, each through libpq's Parse, Bind, Describe and Execute of the unnamed portal, one Sync).
"""
import json
import sys

import psycopg

host, port, mode, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(path) as f:
    statements = json.load(f)

out = []
notices = []
with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
    conn.add_notice_handler(lambda d: notices.append({"severity": d.severity, "message": d.message_primary,
                                                      "detail": d.message_detail, "hint": d.message_hint,
                                                      "context": d.context}))
    if mode == "pipeline":
        try:
            with conn.pipeline():
                cursors = []
                for sql in statements:
                    cur = conn.cursor()
                    cur.execute(sql)
                    cursors.append((sql, cur))
            for sql, cur in cursors:
                rows = [[repr(v) for v in r] for r in cur.fetchall()] if cur.description else []
                out.append({"sql": sql, "rows": rows, "rowcount": cur.rowcount})
        except psycopg.Error as e:
            out.append({"sql": None, "error": {"sqlstate": e.sqlstate, "message": e.diag.message_primary}})
        statements = []
    for sql in statements:
        entry = {"sql": sql}
        try:
            if mode == "copy":
                chunks = []
                with conn.cursor() as cur:
                    with cur.copy(sql) as copy:
                        for data in copy:
                            chunks.append(bytes(data).decode("utf-8", "replace"))
                entry["copy"] = chunks
            elif mode == "cursor":
                with conn.transaction():
                    with conn.cursor(name="attack") as cur:
                        cur.execute(sql)
                        rows = []
                        while batch := cur.fetchmany(2):
                            rows.extend(batch)
                        entry["rows"] = [[repr(v) for v in r] for r in rows]
            else:
                with conn.cursor(binary=(mode == "binary")) as cur:
                    for _ in range(2 if mode == "prepared" else 1):
                        cur.execute(sql, prepare=(mode == "prepared"))
                    entry["rows"] = [[repr(v) for v in r] for r in cur.fetchall()] if cur.description else []
                    entry["rowcount"] = cur.rowcount
        except psycopg.Error as e:
            diag = e.diag
            entry["error"] = {"sqlstate": e.sqlstate, "message": diag.message_primary, "detail": diag.message_detail,
                              "hint": diag.message_hint, "context": diag.context}
        out.append(entry)
print(json.dumps({"results": out, "notices": notices}))
