"""Query cancellation through a second connection, as MySQL drivers do it (KILL QUERY).

Usage: python3 mysql_kill.py HOST PORT USER PASSWORD DATABASE
Prints one line per step: the victim's result and whether it ended well before its sleep would.
"""
import sys
import threading
import time

import pymysql

host, port, user, password, database = sys.argv[1:6]
connect = lambda: pymysql.connect(host=host, port=int(port), user=user, password=password, database=database)

victim = connect()
with victim.cursor() as cur:
    cur.execute("SELECT CONNECTION_ID()")
    (victim_id,) = cur.fetchone()

outcome = {}


def run():
    started = time.monotonic()
    try:
        with victim.cursor() as cur:
            cur.execute("SELECT SLEEP(30)")
            outcome["result"] = cur.fetchone()[0]
    except pymysql.MySQLError as e:
        outcome["result"] = f"error {e.args[0]}"
    outcome["elapsed"] = time.monotonic() - started


thread = threading.Thread(target=run)
thread.start()
time.sleep(1.0)
killer = connect()
with killer.cursor() as cur:
    cur.execute(f"KILL QUERY {victim_id}")
thread.join(40)
print(f"victim: {outcome['result']}")
print(f"cancelled early: {outcome['elapsed'] < 15}")
with victim.cursor() as cur:
    cur.execute("SELECT 'still usable'")
    print(f"victim after: {cur.fetchone()[0]}")
try:
    with killer.cursor() as cur:
        cur.execute(f"KILL CONNECTION {victim_id}")
    print("kill connection: ok")
except pymysql.MySQLError as e:
    print(f"kill connection: error {e.args[0]}")
