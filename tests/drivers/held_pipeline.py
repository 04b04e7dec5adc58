"""psycopg 3 pipeline with a statement held for approval in the middle (the approvals test).

Usage: python3 held_pipeline.py HOST PORT
Prints [first select, rows the held DELETE removed, last select] once all of it completed.
"""
import json
import sys

import psycopg

host, port = sys.argv[1], int(sys.argv[2])
with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
    with conn.pipeline():
        first = conn.execute("select 1")
        held = conn.execute("delete from accounts where id = %s", (5,))
        conn.execute("insert into pipelog values (%s)", ("pipelined",))
        last = conn.execute("select 42")
    print(json.dumps([first.fetchone()[0], held.rowcount, last.fetchone()[0]]))
