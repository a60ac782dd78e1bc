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
from datetime import timedelta
from pathlib import Path

import django
import psycopg
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.http import urlencode

ROOT = Path(__file__).resolve().parents[1]
AGENTS = 50
TYPES = ("agent_checkin", "agent_scan", "agent_update", "agent_install", "agent_reboot", "command_created",
         "command_completed", "config_changed", "auth_failure", "token_renewal", "agent_startup", "security_violation")
COMPONENTS = {"command_created": "scheduler", "command_completed": "scheduler", "config_changed": "config",
              "auth_failure": "security", "token_renewal": "security", "security_violation": "security"}
COMPONENTS = {event_type: COMPONENTS.get(event_type, "agent") for event_type in TYPES}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--explain", action=argparse.BooleanOptionalAction, default=True,
                        help="each case's page query plan: the nodes and indexes it used, rows read")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                        help="any database on the PostgreSQL server to use (a scratch database is created)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", default="", metavar="NAME",
                        help="measure a database an earlier --keep run loaded (migrated again, not loaded, kept)")
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
                   CASE WHEN i %% 5000 = 0 THEN 'critical' WHEN i %% 13 = 0 THEN 'failed' ELSE 'success' END,
                   CASE WHEN i %% 97 = 0 THEN 'warning' ELSE 'info' END,
                   -- the component follows the type, as record_event's callers set it
                   CASE WHEN i %% 5000 = 0 THEN 'security'
                        ELSE (%(components)s::text[])[1 + i %% %(n_types)s] END,
                   'event number ' || i,
                   jsonb_build_object('n', i, 'package_type', CASE WHEN i %% 2 = 0 THEN 'apt' ELSE 'dnf' END),
                   'agent:host-' || lpad((i %% %(n_agents)s)::text, 2, '0'),
                   'agent',
                   now() - make_interval(secs => i)
            FROM generate_series(1, %(rows)s) AS i
            """,
            {"agents": agent_ids, "n_agents": AGENTS, "types": list(TYPES[:-1]), "n_types": len(TYPES) - 1,
             "components": [COMPONENTS[t] for t in TYPES[:-1]], "rows": rows},
        )
        cursor.execute("ANALYZE events_app_systemevent")
    return agent_ids


def reuse(name: str) -> list[str]:
    """The agents of a database an earlier run loaded, in the order load() made them; drop its bench user."""
    from django.contrib.auth.models import User  # noqa: PLC0415  (needs setup_django())

    from agents_app.models import Agent  # noqa: PLC0415  (needs setup_django())

    User.objects.filter(username="bench-auditor").delete()
    return [str(pk) for pk in Agent.objects.order_by("hostname").values_list("pk", flat=True)[:AGENTS]]


def estimated_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'events_app_systemevent'")
        return cursor.fetchone()[0]


def auditor_client():
    from django.contrib.auth.models import Group, User  # noqa: PLC0415  (needs setup_django())

    user = User.objects.create_user("bench-auditor", password=secrets.token_urlsafe(), is_staff=True)
    user.groups.add(Group.objects.get(name="Auditors"))
    client = Client()
    client.force_login(user)
    return user, client


def page_query(queries: list[dict]) -> str:
    """The page query among those a request ran (the one reading the event table with a LIMIT)."""
    candidates = [q["sql"] for q in queries if "events_app_systemevent" in q["sql"] and "LIMIT" in q["sql"]
                  and not q["sql"].startswith("SELECT COUNT(")]  # the admin list's capped count
    candidates = candidates or [q["sql"] for q in queries if "events_app_systemevent" in q["sql"]]
    return candidates[-1]


def measure(fetch, repeat: int) -> tuple[float, float, list[dict]]:
    """Median wall time and median CPU time of this process (Django's whole stack runs in it) per request.

    On a shared machine the wall time includes waiting for a core; the CPU time does not (the database's
    work is in the wall time only), so the two together say what the page costs and what the machine added.
    """
    fetch()  # warm-up
    times, cpu = [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx:
            started, started_cpu = time.perf_counter(), time.process_time()
            fetch()
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    return statistics.median(times) * 1000, statistics.median(cpu) * 1000, ctx.captured_queries


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


def run_cases(rows: int, agent_ids: list[str], repeat: int, explain: bool) -> dict:
    from events_app.models import SystemEvent  # noqa: PLC0415  (needs setup_django())
    from events_app.querysets import encode_cursor  # noqa: PLC0415  (needs setup_django())

    _, client = auditor_client()
    middle = SystemEvent.objects.newest_first().values("created_at", "id")[rows // 2]
    deep = encode_cursor(middle["created_at"], middle["id"])
    # An hour of history around the middle row; a message that occurs a few times (number 42421, 424210...).
    window = {"since": (middle["created_at"] - timedelta(hours=1)).isoformat(),
              "until": middle["created_at"].isoformat()}
    rare_text = f"number {rows // 2 + 7}"
    cases = {
        "first_page": "",
        "deep_page": f"cursor={deep}",
        "by_agent": f"agent={agent_ids[7]}",
        "by_agent_deep": f"agent={agent_ids[7]}&cursor={deep}",
        "by_type_common": "event_type=agent_scan",
        "by_type_rare": "event_type=security_violation",
        "by_severity": "severity=warning",
        "by_component": "component=security",
        "by_subtype": "subtype=failed",
        "no_match": "component=migration",
        "time_window": urlencode(window),
        "by_text_rare": urlencode({"q": rare_text}),
        "by_metadata": "meta=package_type%3Dapt",
    }
    out = {}
    for name, query in cases.items():
        out[name] = figures(*measure(lambda query=query: client.get(f"/audit/events/?{query}"), repeat), repeat,
                            explain)
    for name, query in (("admin_list", ""), ("admin_filtered", "event_type__exact=agent_scan"),
                        ("admin_search", urlencode({"q": "host-07"}))):
        out[name] = figures(*measure(lambda query=query: client.get(f"/admin/events_app/systemevent/?{query}"),
                                     repeat), repeat, explain)
    out.update(api_cases(agent_ids, deep, repeat, explain))
    return out


def figures(server_ms: float, server_cpu_ms: float, queries: list[dict], repeat: int, explain: bool) -> dict:
    sql = page_query(queries)
    sql_ms = bare_sql(sql, repeat)
    out = {"server_ms": round(server_ms, 3), "server_cpu_ms": round(server_cpu_ms, 3), "sql_ms": round(sql_ms, 3),
           "ratio": round(server_ms / sql_ms, 2) if sql_ms else None, "queries": len(queries)}
    if explain:
        out["plan"] = plan_summary(sql)
    return out


def plan_summary(sql: str) -> dict:
    """What the page query did: its plan's nodes (with the index each used) and the rows it read and threw away."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan)[0] if isinstance(plan, str) else plan[0]
    nodes, removed = [], 0

    def walk(node: dict) -> None:
        nonlocal removed
        nodes.append(node["Node Type"] + (f" {node['Index Name']}" if "Index Name" in node else ""))
        removed += int(node.get("Rows Removed by Filter", 0)) * int(node.get("Actual Loops", 1))
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan["Plan"])
    return {"nodes": nodes, "rows_removed_by_filter": removed,
            "shared_buffers_read": plan["Plan"].get("Shared Read Blocks", 0),
            "execution_ms": round(plan["Execution Time"], 3)}


def api_cases(agent_ids: list[str], deep: str, repeat: int, explain: bool) -> dict:
    from django.contrib.auth.models import User  # noqa: PLC0415  (needs setup_django())

    from events_app.services import audit_token_issue  # noqa: PLC0415  (needs setup_django())

    _, secret = audit_token_issue(user=User.objects.get(username="bench-auditor"), label="bench", issued_by="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    out = {}
    for name, query in (("api_first_page", "limit=50"), ("api_deep_page", f"limit=50&cursor={deep}"),
                        ("api_by_agent", f"limit=50&agent={agent_ids[7]}")):
        out[name] = figures(*measure(lambda query=query: client.get(f"/api/v1/audit/events?{query}"), repeat), repeat,
                            explain)
    return out


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        print(json.dumps({"error": "set DATABASE_URL (or --database-url) to a PostgreSQL server"}))
        return 2
    if args.reuse:
        base, name = args.database_url.rsplit("/", 1)[0], args.reuse
        args.keep = True
    else:
        base, name = scratch_database(args.database_url)
    load_before = os.getloadavg()
    try:
        setup_django(f"{base}/{name}")
        started = time.perf_counter()
        agent_ids = reuse(name) if args.reuse else load(args.rows)
        load_seconds = time.perf_counter() - started
        rows = args.rows if not args.reuse else estimated_rows()
        cases = run_cases(rows, agent_ids, args.repeat, args.explain)

        connection.close()
    finally:
        if not args.keep:
            drop_database(base, name)
    print(json.dumps({"rows": rows, "load_seconds": None if args.reuse else round(load_seconds, 2),
                      "repeat": args.repeat, "database": "postgresql", "kept": name if args.keep else None,
                      "load_average_before": [round(x, 2) for x in load_before],
                      "load_average_after": [round(x, 2) for x in os.getloadavg()], "cases": cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
