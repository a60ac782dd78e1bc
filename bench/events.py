#!/usr/bin/env python3
"""Auditor history at scale: server time vs. bare SQL time, measured in the same run (JSON on stdout).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/events.py
    .venv/bin/python bench/events.py --rows 1000        # smoke run (tests/server/bench/test_events.py)

1. Create a scratch database on the server DATABASE_URL points at, migrate it.
2. Load ``--rows`` events with one INSERT ... SELECT over generate_series (seconds for a million),
   spread over 50 agents, 12 event types, one per second back from now; ANALYZE.
3. For each case — first page, a page deep in the history (keyset cursor at the middle), first
   page filtered by agent, filtered by a common and a rare type — request the history page and the
   read API through Django's full stack as an auditor ("server"), capture the page query that
   request ran, and run exactly that SQL through a bare cursor ("sql"). Each is the median of
   ``--repeat`` runs after a warm-up.
4. Print {"rows": ..., "cases": {name: {"server_ms", "sql_ms", "ratio", "queries"}}}; drop the
   scratch database (unless --keep).

The ratio is the figure to watch: it says what Django, templates and auth add to the query
itself, and it must not grow with depth (keyset pagination) or with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import django
import psycopg
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

ROOT = Path(__file__).resolve().parents[1]
AGENTS = 50
TYPES = ("agent_checkin", "agent_scan", "agent_update", "agent_install", "agent_reboot", "command_created",
         "command_completed", "config_changed", "auth_failure", "token_renewal", "agent_startup", "security_violation")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                        help="any database on the PostgreSQL server to use (a scratch database is created)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


def scratch_database(server_url: str) -> tuple[str, str]:
    base = server_url.rsplit("/", 1)[0]
    name = f"redflag_bench_{secrets.token_hex(4)}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base, name


def drop_database(base: str, name: str) -> None:
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("REDFLAG_DATA_DIR", tempfile.mkdtemp(prefix="redflag-bench-"))
    os.environ["REDFLAG_DEBUG"] = "0"
    os.environ["REDFLAG_ALLOWED_HOSTS"] = "testserver"
    os.environ["DJANGO_SETTINGS_MODULE"] = "redflag.settings"
    sys.path.insert(0, str(ROOT))
    django.setup()
    call_command("migrate", verbosity=0)


def load(rows: int) -> list[str]:
    from agents_app.models import Agent  # noqa: PLC0415  (needs setup_django())

    agents = Agent.objects.bulk_create(
        Agent(id=uuid.uuid4(), hostname=f"host-{i:02d}", machine_id_hash=secrets.token_hex(32)) for i in range(AGENTS))
    agent_ids = [str(a.id) for a in agents]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO events_app_systemevent
                (id, agent_id, hostname, event_type, event_subtype, severity, component, message, metadata, actor,
                 origin, created_at)
            SELECT gen_random_uuid(),
                   (%(agents)s::uuid[])[1 + i %% %(n_agents)s],
                   'host-' || lpad((i %% %(n_agents)s)::text, 2, '0'),
                   -- security_violation is rare (1 in 5000); the others share the rest
                   CASE WHEN i %% 5000 = 0 THEN 'security_violation'
                        ELSE (%(types)s::text[])[1 + i %% %(n_types)s] END,
                   'info', CASE WHEN i %% 97 = 0 THEN 'warning' ELSE 'info' END, 'agent',
                   'event number ' || i,
                   jsonb_build_object('n', i, 'package_type', CASE WHEN i %% 2 = 0 THEN 'apt' ELSE 'dnf' END),
                   'agent:host-' || lpad((i %% %(n_agents)s)::text, 2, '0'),
                   'agent',
                   now() - make_interval(secs => i)
            FROM generate_series(1, %(rows)s) AS i
            """,
            {"agents": agent_ids, "n_agents": AGENTS, "types": list(TYPES[:-1]), "n_types": len(TYPES) - 1,
             "rows": rows},
        )
        cursor.execute("ANALYZE events_app_systemevent")
    return agent_ids


def auditor_client():
    from django.contrib.auth.models import Group, User  # noqa: PLC0415  (needs setup_django())

    user = User.objects.create_user("bench-auditor", password=secrets.token_urlsafe(), is_staff=True)
    user.groups.add(Group.objects.get(name="Auditors"))
    client = Client()
    client.force_login(user)
    return user, client


def page_query(queries: list[dict]) -> str:
    """The page query among those a request ran (the one reading the event table with a LIMIT)."""
    candidates = [q["sql"] for q in queries if "events_app_systemevent" in q["sql"] and "LIMIT" in q["sql"]]
    return candidates[-1]


def measure(fetch, repeat: int) -> tuple[float, list[dict]]:
    fetch()  # warm-up
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            fetch()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, ctx.captured_queries


def bare_sql(sql: str, repeat: int) -> float:
    times = []
    with connection.cursor() as cursor:
        cursor.execute(sql)
        cursor.fetchall()
        for _ in range(repeat):
            started = time.perf_counter()
            cursor.execute(sql)
            cursor.fetchall()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run_cases(rows: int, agent_ids: list[str], repeat: int) -> dict:
    from events_app.models import SystemEvent  # noqa: PLC0415  (needs setup_django())
    from events_app.querysets import encode_cursor  # noqa: PLC0415  (needs setup_django())

    _, client = auditor_client()
    middle = SystemEvent.objects.newest_first().values("created_at", "id")[rows // 2]
    deep = encode_cursor(middle["created_at"], middle["id"])
    cases = {
        "first_page": "",
        "deep_page": f"cursor={deep}",
        "by_agent": f"agent={agent_ids[7]}",
        "by_agent_deep": f"agent={agent_ids[7]}&cursor={deep}",
        "by_type_common": "event_type=agent_scan",
        "by_type_rare": "event_type=security_violation",
        "by_metadata": "meta=package_type%3Dapt",
    }
    out = {}
    for name, query in cases.items():
        out[name] = figures(*measure(lambda query=query: client.get(f"/audit/events/?{query}"), repeat), repeat)
    out.update(api_cases(agent_ids, deep, repeat))
    return out


def figures(server_ms: float, queries: list[dict], repeat: int) -> dict:
    sql_ms = bare_sql(page_query(queries), repeat)
    return {"server_ms": round(server_ms, 3), "sql_ms": round(sql_ms, 3),
            "ratio": round(server_ms / sql_ms, 2) if sql_ms else None, "queries": len(queries)}


def api_cases(agent_ids: list[str], deep: str, repeat: int) -> dict:
    from django.contrib.auth.models import User  # noqa: PLC0415  (needs setup_django())

    from events_app.services import audit_token_issue  # noqa: PLC0415  (needs setup_django())

    _, secret = audit_token_issue(user=User.objects.get(username="bench-auditor"), label="bench", issued_by="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    out = {}
    for name, query in (("api_first_page", "limit=50"), ("api_deep_page", f"limit=50&cursor={deep}"),
                        ("api_by_agent", f"limit=50&agent={agent_ids[7]}")):
        out[name] = figures(*measure(lambda query=query: client.get(f"/api/v1/audit/events?{query}"), repeat), repeat)
    return out


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        print(json.dumps({"error": "set DATABASE_URL (or --database-url) to a PostgreSQL server"}))
        return 2
    base, name = scratch_database(args.database_url)
    try:
        setup_django(f"{base}/{name}")
        started = time.perf_counter()
        agent_ids = load(args.rows)
        load_seconds = time.perf_counter() - started
        cases = run_cases(args.rows, agent_ids, args.repeat)

        connection.close()
    finally:
        if not args.keep:
            drop_database(base, name)
    print(json.dumps({"rows": args.rows, "load_seconds": round(load_seconds, 2), "repeat": args.repeat,
                      "database": "postgresql", "kept": name if args.keep else None, "cases": cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
