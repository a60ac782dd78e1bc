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
     signature), rolled back and vacuumed away — the least a database can do to create them; and
     the same with its deferred foreign-key checks run (``insert_select_with_foreign_keys``), which
     every committed INSERT pays and a rolled-back one does not;
   - ``ed25519``: bare Ed25519 signatures of the same number of commands (the sweep no longer signs:
     scheduled scans are signed as they are delivered, so this is what delivery adds in all).
4. Drain the fleet exactly as the django-q2 schedule does: call ``agents_app.tasks.sweep_due_scans``
   (at most SWEEP_LIMIT subsystems a call) until it returns 0; time each call and count its SQL
   statements. Then COUNT the scheduler's commands: it must be agents × 4.
5. Delivery, where the signing went: ``commands_deliver`` (the check-in's step) for the first
   ``--deliver-agents`` agents, each taking its 4 scans, signed as they are claimed; every
   signature verified afterwards. Its baseline: the same for the next as many agents, whose scans
   were given a signature first (delivery as it was when every command was signed at creation).
6. The nothing-due sweep: one more call with every subsystem scheduled in the future.
7. Print the figures with their ratios; drop the scratch database (unless --keep).
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
    parser.add_argument("--deliver-agents", type=int, default=1000,
                        help="agents whose scans are delivered (and signed) after the sweep")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


def fleet_sql(agents: int, *, first: int = 1) -> list[tuple[str, dict]]:
    """``agents`` inert agents (hosts ``first`` … ``first + agents - 1``) and 4 subsystems each, never
    run (so all due), as two INSERT ... SELECT statements and their ANALYZE; bench/checkin.py pads its
    fleet with them too."""
    return [
        (
            """
            INSERT INTO agents_app_agent
                (id, hostname, os_family, os_name, os_version, kernel, arch, agent_version, machine_id_hash,
                 registered_at, last_seen_at, reboot_required, reboot_reason, tags, config_version, metrics,
                 credential_generation, system_info, presence_recorded)
            SELECT gen_random_uuid(), 'host-' || lpad(i::text, 6, '0'), 'linux', 'Debian GNU/Linux', '12',
                   '6.1.0', 'x86_64', '0.1.0', md5(i::text) || md5('m' || i::text),
                   now() - interval '30 days', now() - make_interval(secs => i %% 300), false, '', '[]', 1, '{}',
                   1, '{}', ''
            FROM generate_series(%(first)s, %(last)s) AS i
            """,
            {"first": first, "last": first + agents - 1},
        ),
        (
            """
            INSERT INTO agents_app_agentsubsystem
                (agent_id, name, enabled, auto_run, interval_minutes, next_run_at, last_status, last_error)
            SELECT a.id, s.name, true, true, s.minutes, NULL, 'never_run', ''
            FROM agents_app_agent a
            CROSS JOIN unnest(%(names)s::text[], %(minutes)s::int[]) AS s(name, minutes)
            WHERE NOT EXISTS (SELECT 1 FROM agents_app_agentsubsystem o WHERE o.agent_id = a.id)
            """,
            {"names": list(SUBSYSTEMS), "minutes": list(SUBSYSTEMS.values())},
        ),
        ("ANALYZE agents_app_agent", {}),
        ("ANALYZE agents_app_agentsubsystem", {}),
    ]


def load(agents: int) -> None:
    from agents_app.choices import SUBSYSTEM_SCAN  # noqa: PLC0415  (needs setup_django())

    assert set(SUBSYSTEMS) <= set(SUBSYSTEM_SCAN), "every benchmarked subsystem must have a scan command"
    with connection.cursor() as cursor:
        for sql, params in fleet_sql(agents):
            cursor.execute(sql, params or None)


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


def baseline_insert_select(*, foreign_keys: bool = False) -> tuple[float, int]:
    """One INSERT ... SELECT of a command per due subsystem (dummy signature), then rolled back.

    ``foreign_keys``: also run the deferred foreign-key checks (SET CONSTRAINTS ALL IMMEDIATE) inside
    the timing, which a committed INSERT pays at COMMIT and a rolled-back one never does.
    """
    from agents_app.choices import SUBSYSTEM_SCAN  # noqa: PLC0415  (needs setup_django())
    from agents_app.services.commands import dedupe_key  # noqa: PLC0415  (needs setup_django())

    kinds = {name: (str(SUBSYSTEM_SCAN[name][0]), json.dumps({k: str(v) for k, v in SUBSYSTEM_SCAN[name][1].items()}),
                    dedupe_key(*SUBSYSTEM_SCAN[name])) for name in SUBSYSTEMS}
    with transaction.atomic(), connection.cursor() as cursor:
        started = time.perf_counter()
        if foreign_keys:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
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


def baseline_signing(count: int) -> float:
    """Bare Ed25519 signatures of ``count`` command envelopes with the loaded key."""
    from agent_client.protocol import command_signing_bytes  # noqa: PLC0415  (root on sys.path by setup_django())
    from tokens_app.signing import primary_key  # noqa: PLC0415  (needs setup_django())

    now = timezone.now()
    agent_id = uuid.uuid4()
    key = primary_key()  # loads (and publishes) the key
    payloads = [command_signing_bytes(agent_id=str(agent_id), command_id=str(uuid.uuid4()),
                                      command_type="scan_updates", params={"package_type": "apt"},
                                      issued_at=int(now.timestamp()), expires_at=int(now.timestamp()) + 86400,
                                      nonce=f"nonce-{i}") for i in range(count)]
    seconds, _ = timed(lambda: [key.private_key.sign(payload) for payload in payloads])
    return seconds


def delivery(agents: int) -> dict:
    """commands_deliver for ``agents`` agents (4 scans each, signed as claimed), then every delivered
    signature checked against the published key, as the agent checks it. Baseline in the same run: the
    next ``agents`` agents, their scans given a (dummy) signature first, as when every command was signed
    at creation: the same claim with nothing to sign."""
    import base64  # noqa: PLC0415

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    from agent_client.protocol import command_signing_bytes_from_wire  # noqa: PLC0415
    from agents_app.models import Agent, Command  # noqa: PLC0415  (needs setup_django())
    from agents_app.services.commands import commands_deliver, wire_format  # noqa: PLC0415
    from tokens_app.models import SigningKey  # noqa: PLC0415

    chosen = list(Agent.objects.order_by("hostname")[:2 * agents])
    signing, presigned = chosen[:agents], chosen[agents:]
    Command.objects.filter(agent__in=presigned).update(nonce="n" * 22, key_id="baseline", signature="A" * 88)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_app_command")
    now = timezone.now()

    def deliver(agents_list) -> tuple[float, list, StatementMeter]:
        meter, delivered = StatementMeter(), []
        with connection.execute_wrapper(meter):
            seconds, _ = timed(lambda: [delivered.extend(commands_deliver(agent=agent, now=now))
                                        for agent in agents_list])
        return seconds, delivered, meter

    seconds, delivered, meter = deliver(signing)
    baseline_seconds, baseline_delivered, _ = deliver(presigned)
    keys = {row.key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(row.public_key))
            for row in SigningKey.objects.all()}
    for command in delivered:
        wire = wire_format(command)
        keys[wire["key_id"]].verify(base64.b64decode(wire["signature"]), command_signing_bytes_from_wire(wire))
    count = max(len(signing), 1)
    return {"agents": len(signing), "commands": len(delivered), "seconds": round(seconds, 3),
            "ms_per_checkin": round(seconds * 1000 / count, 3),
            "statements_per_checkin": round(meter.statements / count, 2),
            "signatures_verified": len(delivered),
            "presigned_agents": len(presigned), "presigned_commands": len(baseline_delivered),
            "presigned_seconds": round(baseline_seconds, 3),
            "presigned_ms_per_checkin": round(baseline_seconds * 1000 / max(len(presigned), 1), 3),
            "ed25519_seconds": round(baseline_signing(len(delivered)), 3)}


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
        insert_fk_seconds, _ = baseline_insert_select(foreign_keys=True)
        ed25519_seconds = baseline_signing(expected)
        sweep = full_sweep()
        created = Command.objects.filter(source=CommandSource.SCHEDULER).count()
        distinct = Command.objects.values("agent_id", "dedupe_key").distinct().count()
        delivered = delivery(min(args.deliver_agents, args.agents // 2))
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
        "delivery": delivered,
        "baselines": {
            "select_due_seconds": round(select_seconds, 3),
            "insert_select_seconds": round(insert_seconds, 3),
            "insert_select_with_foreign_keys_seconds": round(insert_fk_seconds, 3),
            "ed25519_seconds": round(ed25519_seconds, 3),
        },
        "ratios": {
            "sweep_vs_insert_select": round(total / insert_seconds, 2) if insert_seconds else None,
            "sweep_vs_insert_select_with_foreign_keys": (round(total / insert_fk_seconds, 2)
                                                         if insert_fk_seconds else None),
            "sweep_vs_select_due": round(total / select_seconds, 2) if select_seconds else None,
            "signing_at_delivery_vs_sweep": round(ed25519_seconds / total, 3) if total else None,
            "delivery_vs_presigned": (round(delivered["ms_per_checkin"] / delivered["presigned_ms_per_checkin"], 2)
                                      if delivered["presigned_ms_per_checkin"] else None),
        },
        "kept": name if args.keep else None,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
