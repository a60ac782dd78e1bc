#!/usr/bin/env python3
"""Scheduling at fleet scale: the due-scan sweep over 50,000 agents × 4 subsystems (JSON on stdout).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/schedule.py
    .venv/bin/python bench/schedule.py --agents 50      # smoke run (tests/server/bench/test_schedule.py)

1. Create a scratch database on the server DATABASE_URL points at, migrate it.
2. Load ``--agents`` agents and 4 subsystems each (apt, docker, storage, system; never run, so all
   due) with two INSERT ... SELECT statements over generate_series; ANALYZE.
3. Baselines, in the same run:
   - ``select_due``: one plain SELECT of every due row (what the sweep must at least read);
   - ``insert_select``: one raw INSERT ... SELECT of the same number of command rows (fixed dummy
     signature), rolled back and vacuumed away — the least a database can do to create them;
   - ``ed25519``: bare Ed25519 signatures of the same number of commands, and ``command_build``
     (the signed, unsaved Command the sweep builds for each, with the key it fetched once).
4. Drain the fleet exactly as the django-q2 schedule does: call ``agents_app.tasks.sweep_due_scans``
   (at most SWEEP_LIMIT subsystems a call) until it returns 0; time each call and count its SQL
   statements. Then COUNT the scheduler's commands: it must be agents × 4.
5. The nothing-due sweep: one more call with every subsystem scheduled in the future.
6. Print the figures with their ratios; drop the scratch database (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

from django.db import connection, connections, transaction
from django.utils import timezone
from events import drop_database, scratch_database, setup_django  # bench/events.py: scratch DB helpers

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"  # as bench/events.py documents

# Four subsystems that have scan commands (agents_app.choices.SUBSYSTEM_SCAN), with the intervals
# subsystems_ensure gives them.
SUBSYSTEMS = {"apt": 360, "docker": 360, "storage": 60, "system": 60}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_SERVER),
                        help="any database on the PostgreSQL server to use (a scratch database is created)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


def load(agents: int) -> None:
    from agents_app.choices import SUBSYSTEM_SCAN  # noqa: PLC0415  (needs setup_django())

    assert set(SUBSYSTEMS) <= set(SUBSYSTEM_SCAN), "every benchmarked subsystem must have a scan command"
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO agents_app_agent
                (id, hostname, os_family, os_name, os_version, kernel, arch, agent_version, machine_id_hash,
                 registered_at, last_seen_at, reboot_required, reboot_reason, tags, config_version, metrics,
                 credential_generation, system_info, presence_recorded)
            SELECT gen_random_uuid(), 'host-' || lpad(i::text, 6, '0'), 'linux', 'Debian GNU/Linux', '12',
                   '6.1.0', 'x86_64', '0.1.0', md5(i::text) || md5('m' || i::text),
                   now() - interval '30 days', now() - make_interval(secs => i %% 300), false, '', '[]', 1, '{}',
                   1, '{}', ''
            FROM generate_series(1, %(agents)s) AS i
            """,
            {"agents": agents},
        )
        cursor.execute(
            """
            INSERT INTO agents_app_agentsubsystem
                (agent_id, name, enabled, auto_run, interval_minutes, next_run_at, last_status, last_error)
            SELECT a.id, s.name, true, true, s.minutes, NULL, 'never_run', ''
            FROM agents_app_agent a
            CROSS JOIN unnest(%(names)s::text[], %(minutes)s::int[]) AS s(name, minutes)
            """,
            {"names": list(SUBSYSTEMS), "minutes": list(SUBSYSTEMS.values())},
        )
        cursor.execute("ANALYZE agents_app_agent")
        cursor.execute("ANALYZE agents_app_agentsubsystem")


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def baseline_select_due() -> tuple[float, int]:
    """Read every due row once: the sweep's input, with nothing done to it."""
    with connection.cursor() as cursor:
        def select():
            cursor.execute(
                """
                SELECT s.id, s.agent_id, s.name, s.interval_minutes FROM agents_app_agentsubsystem s
                JOIN agents_app_agent a ON a.id = s.agent_id
                WHERE s.enabled AND s.auto_run AND (s.next_run_at IS NULL OR s.next_run_at <= now())
                  AND a.revoked_at IS NULL
                """
            )
            return len(cursor.fetchall())

        select()  # warm-up
        return timed(select)


def baseline_insert_select() -> tuple[float, int]:
    """One INSERT ... SELECT of a command per due subsystem (dummy signature), then rolled back."""
    from agents_app.choices import SUBSYSTEM_SCAN  # noqa: PLC0415  (needs setup_django())
    from agents_app.services.commands import dedupe_key  # noqa: PLC0415  (needs setup_django())

    kinds = {name: (str(SUBSYSTEM_SCAN[name][0]), json.dumps({k: str(v) for k, v in SUBSYSTEM_SCAN[name][1].items()}),
                    dedupe_key(*SUBSYSTEM_SCAN[name])) for name in SUBSYSTEMS}
    with transaction.atomic(), connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(
            """
            INSERT INTO agents_app_command
                (id, agent_id, command_type, params, dedupe_key, status, source, created_at, expires_at,
                 issued_at, nonce, key_id, signature, result, output)
            SELECT gen_random_uuid(), s.agent_id, k.command_type, k.params::jsonb, k.dedupe_key, 'pending',
                   'scheduler', now(), now() + interval '24 hours', now(), md5(random()::text),
                   'baseline', repeat('A', 88), '{}', ''
            FROM agents_app_agentsubsystem s
            JOIN unnest(%(names)s::text[], %(types)s::text[], %(params)s::text[], %(keys)s::text[])
                 AS k(name, command_type, params, dedupe_key) ON k.name = s.name
            WHERE s.enabled AND s.auto_run AND (s.next_run_at IS NULL OR s.next_run_at <= now())
            """,
            {"names": list(kinds), "types": [v[0] for v in kinds.values()],
             "params": [v[1] for v in kinds.values()], "keys": [v[2] for v in kinds.values()]},
        )
        rows = cursor.rowcount
        elapsed = time.perf_counter() - started
        transaction.set_rollback(True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM agents_app_command")
    return elapsed, rows


def baseline_signing(count: int) -> dict:
    """Signing ``count`` commands: bare Ed25519 with the loaded key, and the whole command_build
    (signature plus the unsaved Command) as the sweep runs it, with the key it fetched once."""
    from agent_client.protocol import command_signing_bytes  # noqa: PLC0415  (root on sys.path by setup_django())
    from agents_app.services.commands import command_build  # noqa: PLC0415  (needs setup_django())
    from tokens_app.signing import primary_key  # noqa: PLC0415  (needs setup_django())

    now = timezone.now()
    agent_id = uuid.uuid4()
    key = primary_key()  # loads (and publishes) the key
    payloads = [command_signing_bytes(agent_id=str(agent_id), command_id=str(uuid.uuid4()),
                                      command_type="scan_updates", params={"package_type": "apt"},
                                      issued_at=int(now.timestamp()), expires_at=int(now.timestamp()) + 86400,
                                      nonce=f"nonce-{i}") for i in range(count)]
    ed25519_seconds, _ = timed(lambda: [key.private_key.sign(payload) for payload in payloads])
    build_seconds, _ = timed(lambda: [command_build(agent_id=agent_id, command_type="scan_updates",
                                                    params={"package_type": "apt"}, source="scheduler", now=now,
                                                    key=key)
                                      for _ in range(count)])
    return {"ed25519_seconds": round(ed25519_seconds, 3), "command_build_seconds": round(build_seconds, 3)}


class StatementMeter:
    """Counts and times every SQL statement the connection runs (no query-log cap, unlike
    CaptureQueriesContext's 9,000)."""

    def __init__(self):
        self.statements = 0
        self.seconds = 0.0

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started
            self.statements += 1


def metered_sweep() -> tuple[int, float, StatementMeter]:
    from agents_app.tasks import sweep_due_scans  # noqa: PLC0415  (needs setup_django())

    meter = StatementMeter()
    with connection.execute_wrapper(meter):
        seconds, created = timed(sweep_due_scans)
    return created, seconds, meter


def full_sweep() -> dict:
    """Call the scheduled task until it creates nothing, as repeated django-q2 runs would."""
    from agents_app.services.scheduling import SWEEP_LIMIT  # noqa: PLC0415  (needs setup_django())

    calls = []
    while True:
        created, seconds, meter = metered_sweep()
        calls.append({"created": created, "seconds": seconds, "statements": meter.statements,
                      "sql_seconds": meter.seconds})
        if not created:
            break
    working = calls[:-1]
    return {
        "sweep_limit": SWEEP_LIMIT,
        "calls": len(calls),
        "calls_creating": len(working),
        "total_seconds": round(sum(call["seconds"] for call in calls), 3),
        "sql_seconds": round(sum(call["sql_seconds"] for call in calls), 3),
        "seconds_per_call_median": round(statistics.median(c["seconds"] for c in working), 3) if working else 0,
        "statements_per_call": sorted({call["statements"] for call in working}),
        "statements_total": sum(call["statements"] for call in calls),
        "final_call": {"seconds": round(calls[-1]["seconds"], 4), "statements": calls[-1]["statements"]},
        "created_reported": sum(call["created"] for call in calls),
    }


def nothing_due() -> dict:
    metered_sweep()  # warm-up
    times, statements = [], set()
    for _ in range(5):
        created, seconds, meter = metered_sweep()
        assert created == 0
        times.append(seconds)
        statements.add(meter.statements)
    return {"ms_median": round(statistics.median(times) * 1000, 3), "statements": sorted(statements)}


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        print(json.dumps({"error": "set DATABASE_URL (or --database-url) to a PostgreSQL server"}))
        return 2
    load_before = os.getloadavg()[0]
    base, name = scratch_database(args.database_url)
    try:
        setup_django(f"{base}/{name}")

        from agents_app.choices import CommandSource  # noqa: PLC0415  (needs setup_django())
        from agents_app.models import Command  # noqa: PLC0415  (needs setup_django())

        load_seconds, _ = timed(lambda: load(args.agents))
        expected = args.agents * len(SUBSYSTEMS)
        select_seconds, due_rows = baseline_select_due()
        assert due_rows == expected, (due_rows, expected)
        insert_seconds, inserted = baseline_insert_select()
        assert inserted == expected, (inserted, expected)
        signing = baseline_signing(expected)
        sweep = full_sweep()
        created = Command.objects.filter(source=CommandSource.SCHEDULER).count()
        distinct = Command.objects.values("agent_id", "dedupe_key").distinct().count()
        idle = nothing_due()
        connection.close()
    finally:
        if not args.keep:
            connections.close_all()
            drop_database(base, name)
    total = sweep["total_seconds"]
    result = {
        "agents": args.agents,
        "subsystems": expected,
        "database": "postgresql",
        "load_seconds": round(load_seconds, 2),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpu_count": os.cpu_count(),
        "full_sweep": {**sweep, "commands_counted": created, "distinct_agent_kind": distinct,
                       "exactly_once": created == expected == distinct,
                       "commands_per_second": round(created / total) if total else None},
        "nothing_due": idle,
        "baselines": {
            "select_due_seconds": round(select_seconds, 3),
            "insert_select_seconds": round(insert_seconds, 3),
            **signing,
        },
        "ratios": {
            "sweep_vs_insert_select": round(total / insert_seconds, 2) if insert_seconds else None,
            "sweep_vs_select_due": round(total / select_seconds, 2) if select_seconds else None,
            "ed25519_share_of_sweep": round(signing["ed25519_seconds"] / total, 3) if total else None,
            "command_build_share_of_sweep": round(signing["command_build_seconds"] / total, 3) if total else None,
        },
        "kept": name if args.keep else None,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
