"""Runs the MySQL attack corpus (tests/corpus/mysql_baseline.yaml) through a governed connection
and directly, and checks every case (see the corpus file's header for the format).

Usage: python3 mysql_corpus.py CORPUS --host H --port P --user U --password PW --socket S
                                      [--only NAME]

The governed connection is TCP to H:P as U into database `gov` (redirected into the proxy when
this runs as a workload under `warden exec`); the direct one is root over the Unix socket S into
database `ref`, never redirected; so are the runner's own administrative connections (setup,
fingerprints, the victim of the KILL cases). Both databases are dropped and set up afresh.

Prints one `SENT {json}` line per text sent on a governed connection (conn: the governed
connection's number, from 0, in the order they were opened; case, step, class, verdict, gap),
`FAIL name: why` per failure, `GAP name: ...` / `FIXED name: ...` for known gaps, and a last line
`corpus: N cases, M failures, G known gaps`; exits 1 on any failure.
"""

import argparse
import datetime
import decimal
import hashlib
import json
import os
import shutil
import sys
import tempfile

import pymysql
import yaml
from pymysql.constants import CLIENT

GLOBALS = (
    "MAX_CONNECTIONS",
    "GENERAL_LOG",
    "GENERAL_LOG_FILE",
    "SLOW_QUERY_LOG",
    "LOCAL_INFILE",
    "SQL_MODE",
    "READ_ONLY",
    "EVENT_SCHEDULER",
    "INIT_CONNECT",
    "MAX_STATEMENT_TIME",
    "SECURE_AUTH",
    "LOG_BIN_TRUST_FUNCTION_CREATORS",
)
# No statement of the corpus takes long: a stall is a failure, not a hang.
TIMEOUT = 30
MYSQL_TABLES = ("global_priv", "db", "tables_priv", "columns_priv", "procs_priv", "roles_mapping", "proxies_priv", "func", "plugin")


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("corpus")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--only")
    return p.parse_args()


ARGS = parse_args()


def admin(database=None):
    conn = pymysql.connect(
        unix_socket=ARGS.socket,
        user="root",
        password="",
        database=database,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
        read_timeout=TIMEOUT,
        write_timeout=TIMEOUT,
    )
    # A lock a statement that should have been refused took must not stall the runner.
    q(conn, "SET SESSION lock_wait_timeout = 5, innodb_lock_wait_timeout = 5")
    return conn


GOV_CONNS = 0


def governed():
    global GOV_CONNS
    conn = pymysql.connect(
        host=ARGS.host,
        port=ARGS.port,
        user=ARGS.user,
        password=ARGS.password,
        database="gov",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
        read_timeout=TIMEOUT,
        write_timeout=TIMEOUT,
        local_infile=True,
    )
    number = GOV_CONNS
    GOV_CONNS += 1
    return conn, number


def direct():
    conn = pymysql.connect(
        unix_socket=ARGS.socket,
        user="root",
        password="",
        database="ref",
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
        read_timeout=TIMEOUT,
        write_timeout=TIMEOUT,
        local_infile=True,
    )
    return conn


def value(v):
    if isinstance(v, (bytes, bytearray)):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + v.hex()
    if isinstance(v, (decimal.Decimal, datetime.date, datetime.datetime, datetime.timedelta)):
        return str(v)
    return v


def run(conn, sql):
    """Every result of the text: ("rows", affected, rows) per result set, ("error", code, message)
    at the first error (the server runs no more of the text after it)."""
    results = []
    cur = conn.cursor()
    try:
        cur.execute(sql)
        while True:
            rows = [[value(v) for v in row] for row in cur.fetchall()] if cur.description else []
            affected = None if cur.description else cur.rowcount
            results.append(("rows", affected, rows))
            if not cur.nextset():
                break
    except pymysql.MySQLError as e:
        code = e.args[0] if e.args else None
        message = e.args[1] if len(e.args) > 1 else str(e)
        results.append(("error", code, message))
    except UnicodeDecodeError as e:
        # An answer in a character set the driver does not decode (after SET NAMES gbk).
        results.append(("undecodable", None, str(e)))
    finally:
        try:
            cur.close()
        except pymysql.MySQLError:
            pass
    return results


def comparable(results):
    return [(kind, code) if kind == "error" else (kind, code, rows) for kind, code, rows in results]


def q(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(value(v) for v in row) for row in cur.fetchall()]


def data_fingerprint(conn, schema):
    """What a database holds, independent of its name."""
    fp = {}
    tables = q(conn, f"SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY 1")
    fp["tables"] = tables
    for name, kind in tables:
        if kind == "BASE TABLE":
            rows = q(conn, f"CHECKSUM TABLE `{schema}`.`{name}` EXTENDED")
            fp[f"checksum {name}"] = rows[0][1]
            fp[f"count {name}"] = q(conn, f"SELECT COUNT(*) FROM `{schema}`.`{name}`")[0][0]
            fp[f"columns {name}"] = q(
                conn,
                f"SELECT column_name, column_type FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position",
            )
        elif kind == "SEQUENCE":
            fp[f"sequence {name}"] = q(conn, f"SELECT next_not_cached_value FROM `{schema}`.`{name}`")
    fp["routines"] = q(
        conn,
        f"SELECT routine_name, routine_type, MD5(routine_definition) FROM information_schema.routines WHERE routine_schema = '{schema}' ORDER BY 1",
    )
    fp["views"] = q(conn, f"SELECT table_name FROM information_schema.views WHERE table_schema = '{schema}' ORDER BY 1")
    fp["triggers"] = q(conn, f"SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = '{schema}' ORDER BY 1")
    fp["events"] = q(conn, f"SELECT event_name FROM information_schema.events WHERE event_schema = '{schema}' ORDER BY 1")
    return fp


def server_fingerprint(conn):
    fp = {}
    for table in MYSQL_TABLES:
        rows = q(conn, f"SELECT * FROM mysql.`{table}`")
        fp[f"mysql.{table}"] = sorted(hashlib.sha256(repr(r).encode()).hexdigest() for r in rows)
    fp["databases"] = q(conn, "SELECT schema_name FROM information_schema.schemata ORDER BY 1")
    fp["plugins"] = q(conn, "SELECT plugin_name, plugin_status FROM information_schema.plugins ORDER BY 1")
    names = ", ".join(f"'{g}'" for g in GLOBALS)
    fp["globals"] = q(conn, f"SELECT variable_name, variable_value FROM information_schema.global_variables WHERE variable_name IN ({names}) ORDER BY 1")
    return fp


def differences(a, b):
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Runner:
    def __init__(self, corpus):
        self.corpus = corpus
        self.failures = 0
        self.gaps = 0
        self.tmp = tempfile.mkdtemp(prefix="warden-mysql-corpus-")
        os.chmod(self.tmp, 0o1777)
        with open(os.path.join(self.tmp, "local.csv"), "w") as f:
            f.write("9,from the client\n")
        with open(os.path.join(self.tmp, "local.xml"), "w") as f:
            f.write('<list><row id="9" body="from the client"/></list>\n')
        self.admin = None
        self.victim = None
        self.setup()

    def setup(self):
        """The databases, server objects and the victim connection, afresh."""
        for c in (self.admin, self.victim):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self.admin = admin()
        for sql in self.corpus.get("server_setup") or []:
            q(self.admin, sql)
        for db in ("gov", "ref"):
            q(self.admin, f"DROP DATABASE IF EXISTS {db}")
            q(self.admin, f"CREATE DATABASE {db}")
            conn = admin(db)
            for sql in self.corpus.get("setup") or []:
                q(conn, sql)
            conn.close()
        self.victim = admin()
        self.victim_id = q(self.victim, "SELECT CONNECTION_ID()")[0][0]
        self.server_fp = server_fingerprint(self.admin)

    def reset(self):
        try:
            self.setup()
        except Exception as e:
            print(f"setting up again failed: {type(e).__name__}: {e}", flush=True)
            self.admin = None

    def subst(self, text):
        return text.replace("{tmp}", self.tmp).replace("{victim}", str(self.victim_id))

    def encode(self, step):
        text = self.subst(step["sql"])
        return text.encode("latin-1") if step.get("latin1") else text

    def state(self):
        """What a refusal must leave as it was."""
        return {
            "gov": data_fingerprint(self.admin, "gov"),
            "server": server_fingerprint(self.admin),
            "victim": self.victim_alive(),
        }

    def victim_alive(self):
        try:
            self.victim.ping(reconnect=False)
            return True
        except Exception:
            return False

    def run_case(self, case):
        """The case's problems (empty: as expected)."""
        problems = []
        steps = case.get("session") or [case]
        gov, number = governed()
        ref = None
        try:
            for i, step in enumerate(steps):
                sent = {
                    "conn": number,
                    "case": case["name"],
                    "step": i,
                    "class": step["class"],
                    "verdict": step["verdict"],
                    "gap": bool(case.get("known_gap")),
                    "class_gap": bool(case.get("class_gap")),
                }
                where = f"step {i}: " if case.get("session") else ""
                sql = self.encode(step)
                if step["verdict"] == "deny":
                    before = self.state()
                    print("SENT " + json.dumps(sent), flush=True)
                    got = run(gov, sql)
                    after = self.state()
                    if len(got) != 1 or got[0][0] != "error" or got[0][1] != 1142 or not str(got[0][2]).startswith("warden:"):
                        problems.append(f"{where}expected a warden refusal (1142), got {short(got)}")
                    else:
                        message = got[0][2]
                        if 'policy "baseline"' not in message:
                            problems.append(f"{where}the refusal does not name the baseline: {message}")
                        if step.get("rule") and f'rule "{step["rule"]}"' not in message:
                            problems.append(f"{where}the refusal does not name rule {step['rule']}: {message}")
                    for k in differences(before["gov"], after["gov"]):
                        problems.append(f"{where}the refused statement changed gov: {k}: {before['gov'].get(k)} -> {after['gov'].get(k)}")
                    for k in differences(before["server"], after["server"]):
                        problems.append(f"{where}the refused statement changed the server: {k}")
                    if before["victim"] and not after["victim"]:
                        problems.append(f"{where}the refused statement ended the victim connection")
                else:
                    if ref is None:
                        ref = direct()
                    print("SENT " + json.dumps(sent), flush=True)
                    got = run(gov, sql)
                    want = run(ref, sql)
                    if any(r[0] == "error" and r[1] == 1142 and str(r[2]).startswith("warden:") for r in got):
                        problems.append(f"{where}refused: {short(got)}")
                    elif step.get("compare", True) and comparable(got) != comparable(want):
                        problems.append(f"{where}answered {short(got)}, directly {short(want)}")
                    elif not step.get("compare", True) and any(r[0] == "error" for r in got) != any(r[0] == "error" for r in want):
                        problems.append(f"{where}answered {short(got)}, directly {short(want)}")
            for path in case.get("files_absent") or []:
                path = self.subst(path)
                if os.path.exists(path):
                    problems.append(f"{path} exists")
        finally:
            for c in (gov, ref):
                if c is not None:
                    try:
                        c.close()
                    except Exception:
                        pass
        if not self.victim_alive():
            self.victim = admin()
            self.victim_id = q(self.victim, "SELECT CONNECTION_ID()")[0][0]
        # Allowed statements did the same on both sides.
        gov_fp, ref_fp = data_fingerprint(self.admin, "gov"), data_fingerprint(self.admin, "ref")
        for k in differences(gov_fp, ref_fp):
            problems.append(f"gov and ref differ after the case: {k}: {gov_fp.get(k)} / {ref_fp.get(k)}")
        return problems

    def run(self):
        cases = self.corpus["cases"]
        names = [c["name"] for c in cases]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            print(f"FAIL corpus: duplicate names {sorted(dupes)}")
            self.failures += 1
        ran = 0
        broken = 0
        if self.admin is None:
            return False
        for case in cases:
            if ARGS.only and case["name"] != ARGS.only:
                continue
            ran += 1
            try:
                problems = self.run_case(case)
            except Exception as e:  # a broken connection, a server gone: the case failed
                problems = [f"runner error: {type(e).__name__}: {e}"]
                broken += 1
                if broken >= 3:
                    print(f"FAIL {case['name']}: {problems[0]}; three cases in a row could not run: stopping", flush=True)
                    self.failures += 1
                    break
            else:
                broken = 0
                try:
                    self.admin.ping(reconnect=True)
                except Exception:
                    pass
            if case.get("known_gap"):
                self.gaps += 1
                if problems:
                    print(f"GAP {case['name']}: {'; '.join(problems)}", flush=True)
                else:
                    print(f"FIXED {case['name']}: the known gap behaves as expected now ({case['known_gap']})", flush=True)
                self.reset()
            elif problems:
                self.failures += 1
                for p in problems:
                    print(f"FAIL {case['name']}: {p}", flush=True)
                # Whatever it did, the next cases start from the set-up state.
                self.reset()
            if self.admin is None:
                print(f"FAIL {case['name']}: the server cannot be set up again after it; stopping", flush=True)
                self.failures += 1
                break
        print(f"corpus: {ran} cases, {self.failures} failures, {self.gaps} known gaps", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.failures == 0


def short(results):
    text = repr(results)
    return text if len(text) <= 400 else text[:400] + "..."


def main():
    with open(ARGS.corpus) as f:
        corpus = yaml.safe_load(f)
    ok = Runner(corpus).run()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
