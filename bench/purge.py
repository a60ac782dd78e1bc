#!/usr/bin/env python3
"""The retention purge of a million events beside a fleet's check-ins: does the check-in p99 move?

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/purge.py
    DATABASE_URL=… .venv/bin/python bench/purge.py --agents 10 --rate 5 --expired 2000 --kept 1000 --seconds 3 \
        --workers 1 --no-unpaced                                                          # smoke

In a scratch database (created and dropped):

1. Starts the server as the README's production section does (bench/fleet.py: REDFLAG_ENV=production, uvicorn
   ``--workers``), registers ``--agents`` agents through the API and pushes every scan a day ahead (the common
   check-in: nothing due, nothing pending).
2. Loads ``--expired`` events older than the default retention (365 days) and ``--kept`` recent ones with one
   ``INSERT … SELECT … generate_series`` each, then ``VACUUM ANALYZE`` (a settled table).
3. Sends check-ins open-loop at ``--rate`` a second (default 33.3: 10,000 agents every 5 minutes), agents in
   turn, each request on a new connection, in three phases:
   - ``before``: ``--seconds`` of check-ins alone (the baseline);
   - ``purge``: while the daily task ``events_app.tasks.purge_expired_events`` runs in a process of its own
     (as a django-q2 worker runs it), with its shipped pace (batches of 5,000, resting as long as each took);
   - ``after``: ``--seconds`` more (autovacuum may clean the dead rows now; its runs are counted).
   With ``--unpaced`` (default on) the expired rows are loaded again and the same purge runs without resting
   (``rest_ratio=0``, ``min_rest=0``: batches back to back, as before this change) beside a fourth phase.
4. Prints JSON: per phase the check-in p50/p95/p99/max and errors; the purge's rows, batches, seconds, rows a
   second and WAL written; each phase's p99 as a ratio to ``before``'s; the load average around the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from checkin import bury_scans, checkin_body
from fleet import Fleet, Recorder, Scratch, SimAgent, machine, prepare, register_all, scratch_server, server_argv

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"

# Run the purge as the daily task does, in its own process; print its record's metadata.
PURGE_SCRIPT = """
import json
from django.utils import timezone
from events_app import tasks
from events_app.models import SystemEvent
from events_app.services import PurgePace, events_purge
from redflag.models import ServerSettings
unpaced = {unpaced}
if unpaced:
    pace = PurgePace(batch_size=tasks.PURGE_PACE.batch_size, rest_ratio=0, min_rest=0)
    events_purge(now=timezone.now(), retention_days=ServerSettings.current().event_retention_days, pace=pace,
                 sleep=lambda _: None)
else:
    tasks.purge_expired_events()
print(json.dumps(SystemEvent.objects.filter(event_type="events_purged").order_by("-seq").first().metadata))
"""

# One event every 3 s, going back from ``start``; 1 in 5000 a security event (kept longer when recent).
LOAD_SQL = """
INSERT INTO events_app_systemevent
    (id, hostname, event_type, event_subtype, severity, component, message, metadata, actor, origin, created_at)
SELECT gen_random_uuid(), 'sim-' || lpad((i %% 1000)::text, 5, '0'),
       CASE WHEN i %% 5000 = 0 THEN 'auth_failure' ELSE 'agent_scan' END,
       'info', 'info', CASE WHEN i %% 5000 = 0 THEN 'security' ELSE 'agent' END,
       'event number ' || i, jsonb_build_object('n', i, 'package_type', 'apt'),
       'agent:sim-' || lpad((i %% 1000)::text, 5, '0'), 'agent',
       %(start)s::timestamptz - make_interval(secs => 3 * i)
FROM generate_series(1, %(rows)s) AS i
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500, help="enough that each stays under its 60/min "
                        "check-in rate at --rate")
    parser.add_argument("--rate", type=float, default=10_000 / 300, help="check-ins a second (open loop)")
    parser.add_argument("--expired", type=int, default=1_000_000, help="events past the retention")
    parser.add_argument("--kept", type=int, default=1_000_000, help="events inside it")
    parser.add_argument("--seconds", type=float, default=60, help="length of the before and after phases")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--unpaced", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the purge without resting between batches, for comparison")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args()


def load_events(database_url: str, expired: int, kept: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        now = datetime.now(timezone.utc)
        if expired:
            conn.execute(LOAD_SQL, {"start": now - timedelta(days=366), "rows": expired})
        if kept:
            conn.execute(LOAD_SQL, {"start": now, "rows": kept})
        conn.execute("VACUUM ANALYZE events_app_systemevent")
    return time.perf_counter() - started


def table_state(database_url: str) -> dict:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows, autovacuums, lsn = conn.execute(
            "SELECT (SELECT count(*) FROM events_app_systemevent), autovacuum_count, pg_current_wal_lsn() "
            "FROM pg_stat_user_tables WHERE relname = 'events_app_systemevent'").fetchone()
    return {"rows": rows, "autovacuums": autovacuums, "lsn": lsn}


def wal_bytes(database_url: str, since: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (since,)).fetchone()[0])


async def checkins(fleet: Fleet, agents: list[SimAgent], rate: float, keep_going) -> float:
    """Start a check-in every 1/rate s, agents in turn, while ``keep_going()``; wait for the answers."""
    loop = asyncio.get_running_loop()
    start, tasks, sent = loop.time(), set(), 0
    while keep_going(loop.time() - start):
        due = int((loop.time() - start) * rate) + 1
        while sent < due:
            agent = agents[sent % len(agents)]
            task = asyncio.create_task(fleet.call("checkin", "POST", f"/api/v1/agents/{agent.id}/checkin",
                                                  headers=agent.headers(), body=checkin_body(agent)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    return loop.time() - start


async def purge_phase(fleet, recorder, name, agents, args, env, database_url) -> dict:
    """Check-ins while the purge runs in its own process (for at least --seconds)."""
    before = table_state(database_url)
    recorder.start(name)
    purge = subprocess.Popen([sys.executable, "manage.py", "shell", "--no-imports", "-c",
                              PURGE_SCRIPT.format(unpaced=name == "unpaced")],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    seconds = await checkins(fleet, agents, args.rate, lambda elapsed: purge.poll() is None or elapsed < args.seconds)
    out, err = purge.communicate()
    if purge.returncode != 0:
        raise RuntimeError(f"the purge failed:\n{err[-3000:]}")
    record = json.loads(out.strip().splitlines()[-1])
    after = table_state(database_url)
    return {"seconds": round(seconds, 1), "checkin": recorder.summary(name, seconds)["checkin"],
            "purge": {"removed": record["removed"], "batches": record["batches"], "complete": record["complete"],
                      "seconds": record["seconds"], "rested_seconds": record["rested_seconds"],
                      "rows_per_second": round(record["removed"] / max(record["seconds"], 1e-6)),
                      "process_seconds": round(time.perf_counter() - started, 1),
                      "wal_mib_whole_server": round(wal_bytes(database_url, before["lsn"]) / 2**20, 1),
                      "rows_before": before["rows"], "rows_after": after["rows"]},
            "autovacuums_during": after["autovacuums"] - before["autovacuums"]}


async def plain_phase(fleet, recorder, name, agents, args, database_url) -> dict:
    before = table_state(database_url)
    recorder.start(name)
    seconds = await checkins(fleet, agents, args.rate, lambda elapsed: elapsed < args.seconds)
    return {"seconds": round(seconds, 1), "checkin": recorder.summary(name, seconds)["checkin"],
            "autovacuums_during": table_state(database_url)["autovacuums"] - before["autovacuums"]}


async def run(args, url: str, secret: str, env: dict, database_url: str) -> dict:
    recorder = Recorder()
    agents = [SimAgent(index, heartbeat=False) for index in range(args.agents)]
    apt_report = json.loads((DATA / "apt_scan_debian12.json").read_text())
    system_report = json.loads((DATA / "system_report.json").read_text())["report"]
    result: dict = {}
    async with Fleet(url, recorder, apt_report, system_report) as fleet:
        failed = await register_all(fleet, agents, secret, 16)
        registered = [agent for agent in agents if agent.id]
        bury_scans(database_url)
        result["registration"] = {"agents": len(registered), "failed": failed}
        result["load_seconds"] = round(load_events(database_url, args.expired, args.kept), 1)
        phases = result["phases"] = {}
        phases["before"] = await plain_phase(fleet, recorder, "before", registered, args, database_url)
        phases["purge"] = await purge_phase(fleet, recorder, "purge", registered, args, env, database_url)
        phases["after"] = await plain_phase(fleet, recorder, "after", registered, args, database_url)
        if args.unpaced:
            result["reload_seconds"] = round(load_events(database_url, args.expired, 0), 1)
            phases["unpaced"] = await purge_phase(fleet, recorder, "unpaced", registered, args, env, database_url)
    base = phases["before"]["checkin"]
    result["ratios_to_before"] = {
        name: {key: round(phase["checkin"][key] / base[key], 2) for key in ("p50_ms", "p95_ms", "p99_ms")
               if phase["checkin"].get(key) and base.get(key)}
        for name, phase in phases.items() if name != "before"}
    return result


def serve_and_measure(args, scratch: Scratch) -> dict:
    secret = prepare(scratch.env, seats=args.agents, interval=300)
    url = scratch.start(lambda port: server_argv("uvicorn", args.workers, port))
    result = asyncio.run(run(args, url, secret, scratch.env, scratch.database_url))
    result["server_log_tracebacks"] = scratch.log_tracebacks()
    return result


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()
    with scratch_server("purge.py", args.database_url, keep=args.keep) as scratch:
        result = serve_and_measure(args, scratch)
    print(json.dumps({
        "bench": "purge", "machine": machine(),
        "conditions": {"agents": args.agents, "checkins_per_second": round(args.rate, 2), "workers": args.workers,
                       "expired_rows": args.expired, "kept_rows": args.kept, "phase_seconds": args.seconds,
                       "load_average_before": [round(x, 2) for x in load_before],
                       "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        **result,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
