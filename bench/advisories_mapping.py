#!/usr/bin/env python3
"""Advisory mapping at fleet scale: the full exposure refresh and the risk-sorted updates page, each
against a bare SQL baseline measured in the same run (JSON on stdout).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/advisories_mapping.py
    .venv/bin/python bench/advisories_mapping.py --agents 40 --updates 20 --repeat 2   # smoke run

1. Create a scratch database on the server DATABASE_URL points at, migrate it, import the saved real
   slices (../shared/data/advisories: OSV Debian, Ubuntu, AlmaLinux; KEV; EPSS).
2. ``--agents`` machines, a third each Debian 12, Ubuntu 22.04 and AlmaLinux 9, with ``--updates``
   pending updates each (one INSERT … SELECT over generate_series): the first ``--real`` of them are
   packages the advisories name, installed at a version every fix is above, half of them updating to the
   fixed version and half to one below it; the rest are packages no advisory names. ANALYZE.
3. Cases, each against a bare SQL baseline measured in the same run:
   - refresh_first: advisories_app.mapping.exposures_refresh() on an empty exposure table (after an
     import of new advisories it writes what changed; this is every row), run once;
   - refresh_steady: the same with nothing changed (the 15-minute schedule's usual run), median of
     ``--repeat``;
     both against the bare join any mapping must read: every outstanding update joined to the fixes
     for its package, counted, nothing written (median of ``--repeat``);
   - risk_page: a page of 100 updates (in id order) with their risk figures
     (with_update_risk), vs the bare SELECT of the first 100 updates;
   - risk_page_sorted: the same page highest risk first (known exploited, then CVSS), as the
     updates list sorts it (advisories_app.risk.HIGHEST_RISK_FIRST).
     (Medians of ``--repeat`` after a warm-up.)
4. Print {"agents", "updates", "exposures", "cases": {name: {"server_ms", "sql_ms", "ratio"}}}; drop
   the scratch database (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from io import StringIO
from pathlib import Path

from django.core.management import call_command
from django.db import connection
from events import drop_database, scratch_database, setup_django  # bench/events.py: scratch DB helpers

ROOT = Path(__file__).resolve().parents[1]
FEEDS = ROOT.parent / "shared" / "data" / "advisories"
IMPORTS = ("osv/debian", "osv/ubuntu", "osv/almalinux",
           "kev/known_exploited_vulnerabilities.cisagov-2025.08.25.slice.json",
           "epss/epss_scores-current.lodestone-2026-09-29.slice.csv")
PLATFORMS = (("Debian GNU/Linux", "12", "debian", "12", "apt"), ("Ubuntu", "22.04", "ubuntu", "22.04", "apt"),
             ("AlmaLinux", "9.4", "almalinux", "9", "dnf"))
# Installed below every fix: dpkg and rpm both order "0:0.1-1" before any real version.
OLD_VERSION = "0.1-1"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--real", type=int, default=20, help="updates per machine that advisories name")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args()


def import_feeds() -> None:
    for path in IMPORTS:
        call_command("import_advisories", str(FEEDS / path), stdout=StringIO())


def update_plan(updates: int, real: int) -> tuple[list[str], list[str], list[str]]:
    """Per platform, ``updates`` (name, installed, available) triples flattened for SQL arrays."""
    from advisories_app.models import FixedIn  # noqa: PLC0415  (needs setup_django())

    names, installed, available = [], [], []
    for _, _, distro, release, _ in PLATFORMS:
        fixes = list(FixedIn.objects.filter(distro=distro, release=release).exclude(fixed_version="")
                     .order_by("package").values_list("package", "fixed_version").distinct()[:real * 4])
        chosen = dict(fixes)  # one fixed version per package
        for index in range(updates):
            if index < min(real, len(chosen)):
                package, fixed = list(chosen.items())[index]
                names.append(package)
                installed.append(OLD_VERSION)
                available.append(fixed if index % 2 == 0 else "0.2-1")
            else:
                names.append(f"lib-bench-{index:04d}")
                installed.append("1.0-1")
                available.append("1.0-2")
    return names, installed, available


def load(agents: int, updates: int, real: int) -> None:
    from agents_app.models import Agent  # noqa: PLC0415  (needs setup_django())

    rows = [Agent(id=uuid.uuid4(), hostname=f"bench-{index:05d}", os_family="linux",
                  os_name=PLATFORMS[index % len(PLATFORMS)][0], os_version=PLATFORMS[index % len(PLATFORMS)][1],
                  machine_id_hash=uuid.uuid4().hex * 2) for index in range(agents)]
    Agent.objects.bulk_create(rows, batch_size=5000)
    names, installed, available = update_plan(updates, real)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO agents_app_packageupdate
                (agent_id, package_type, name, current_version, available_version, severity, is_security,
                 repository, cve_ids, kb_ids, metadata, status, dependencies, last_report_id, first_seen_at,
                 last_seen_at, status_changed_at)
            SELECT (%(agents)s::uuid[])[1 + i], (%(types)s::text[])[1 + i %% %(platforms)s],
                   (%(names)s::text[])[1 + (i %% %(platforms)s) * %(updates)s + j],
                   (%(installed)s::text[])[1 + (i %% %(platforms)s) * %(updates)s + j],
                   (%(available)s::text[])[1 + (i %% %(platforms)s) * %(updates)s + j],
                   'unknown', false, '', '[]'::jsonb, '[]'::jsonb, '{}'::jsonb, 'pending', '[]'::jsonb, '',
                   now(), now(), now()
            FROM generate_series(0, %(last_agent)s) AS i, generate_series(0, %(last_update)s) AS j
            """,
            {"agents": [str(row.id) for row in rows], "types": [platform[4] for platform in PLATFORMS],
             "platforms": len(PLATFORMS), "names": names, "installed": installed, "available": available,
             "updates": updates, "last_agent": agents - 1, "last_update": updates - 1})
        cursor.execute("ANALYZE")


def once_ms(run) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) * 1000


def median_ms(run, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def bare(sql: str):
    def run():
        with connection.cursor() as cursor:
            cursor.execute(sql)
            cursor.fetchall()
    return run


BARE_JOIN = """
SELECT count(*) FROM agents_app_packageupdate u
JOIN agents_app_agent a ON a.id = u.agent_id
JOIN advisories_app_platformalias p ON p.os_name = a.os_name AND p.os_version = a.os_version
JOIN advisories_app_fixedin f ON f.distro = p.distro AND f.release = p.release AND f.package = u.name
WHERE u.status NOT IN ('installed', 'closed', 'ignored')
"""
BARE_PAGE = "SELECT * FROM agents_app_packageupdate ORDER BY id LIMIT 100"


def figures(server_ms: float, sql_ms: float) -> dict:
    return {"server_ms": round(server_ms, 3), "sql_ms": round(sql_ms, 3),
            "ratio": round(server_ms / sql_ms, 2) if sql_ms else None}


def run_cases(repeat: int) -> tuple[dict, int]:
    from advisories_app.mapping import exposures_refresh  # noqa: PLC0415  (needs setup_django())
    from advisories_app.models import Exposure  # noqa: PLC0415
    from advisories_app.risk import HIGHEST_RISK_FIRST, with_update_risk  # noqa: PLC0415
    from agents_app.models import PackageUpdate  # noqa: PLC0415

    first = once_ms(exposures_refresh)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    steady = median_ms(exposures_refresh, repeat)
    bare_join = median_ms(bare(BARE_JOIN), repeat)

    def risk_page(*ordering: str):
        page = with_update_risk(PackageUpdate.objects.all()).order_by(*ordering, "pk")[:100]
        return list(page.values("pk", "name", "cve_count", "max_cvss", "max_epss", "known_exploited"))

    cases = {"refresh_first": figures(first, bare_join), "refresh_steady": figures(steady, bare_join),
             "risk_page": figures(median_ms(risk_page, repeat), median_ms(bare(BARE_PAGE), repeat)),
             "risk_page_sorted": figures(median_ms(lambda: risk_page(*HIGHEST_RISK_FIRST), repeat),
                                         median_ms(bare(BARE_PAGE), repeat))}
    return cases, Exposure.objects.count()


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        print(json.dumps({"error": "set DATABASE_URL (or --database-url) to a PostgreSQL server"}))
        return 2
    base, name = scratch_database(args.database_url)
    try:
        setup_django(f"{base}/{name}")
        import_feeds()
        started = time.perf_counter()
        load(args.agents, args.updates, args.real)
        load_seconds = time.perf_counter() - started
        cases, exposures = run_cases(args.repeat)
        connection.close()
    finally:
        if not args.keep:
            drop_database(base, name)
    print(json.dumps({"agents": args.agents, "updates": args.agents * args.updates, "exposures": exposures,
                      "load_seconds": round(load_seconds, 2), "repeat": args.repeat, "database": "postgresql",
                      "kept": name if args.keep else None, "cases": cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
