"""psycopg 3 workload for the driver compatibility test: prints one JSON document of results.

Usage: python3 psycopg_check.py HOST PORT
Exercises server-side cursors, pipeline mode, COPY in both directions and binary results.
"""
import json
import sys

import psycopg

host, port = sys.argv[1], int(sys.argv[2])
out = {}
with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=False) as conn:
    # Server-side (named) cursor, fetched in batches.
    with conn.cursor(name="warden_cursor") as cur:
        cur.execute("select g, md5(g::text) from generate_series(1, 1000) g order by g")
        total, batches = 0, 0
        while rows := cur.fetchmany(128):
            total += sum(r[0] for r in rows)
            batches += 1
        out["server_side_cursor"] = [total, batches]
    conn.commit()

    with conn.cursor() as cur:
        cur.execute("create temp table t (id int primary key, name text, data bytea)")
        # Pipeline mode: many statements in flight, one sync.
        with conn.pipeline():
            for i in range(20):
                cur.execute("insert into t values (%s, %s, %s)", (i, f"name {i}", bytes([i, 255 - i])))
            cur.execute("select count(*), sum(id) from t")
        out["pipeline"] = list(cur.fetchone())
        # An error inside a pipeline is reported and the connection stays usable.
        try:
            with conn.pipeline():
                cur.execute("insert into t values (1, 'duplicate', null)")
                cur.execute("select 1")
        except psycopg.errors.UniqueViolation as e:
            out["pipeline_error"] = e.sqlstate
        conn.rollback()
        cur.execute("create temp table t (id int primary key, name text, data bytea)")

        # COPY FROM STDIN, row by row, then COPY TO STDOUT.
        with cur.copy("copy t (id, name, data) from stdin") as copy:
            for i in range(500):
                copy.write_row((i, f"row\t{i}", bytes([i % 256])))
        rows = []
        with cur.copy("copy (select id, name from t where id % 100 = 0 order by id) to stdout") as copy:
            for row in copy.rows():
                rows.append(list(row))
        out["copy"] = rows

        # Binary results.
        cur.execute(
            "select 42::int8, 1.25::float8, 'abc'::bytea, array[1,2]::int4[], '2024-01-02'::date::text, true",
            binary=True,
        )
        r = cur.fetchone()
        out["binary"] = [r[0], r[1], r[2].hex(), r[3], r[4], r[5]]
    conn.commit()
print(json.dumps(out, sort_keys=True))
