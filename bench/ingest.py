"""Report ingestion: a 2,000-package updates report through POST /reports/updates, first time and repeated.

Prints JSON. Each figure is compared with a baseline measured in the same run on
the same PostgreSQL server: a raw COPY of the same rows into the same table in one
transaction (the fastest way PostgreSQL takes rows). Also the SQL statement count
per report, which must not depend on the package count, and where a report's time
goes: the JSON parser, the serializer and the ingestion service, each timed alone.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import time
import uuid

from django.conf import settings
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from events import drop_database, scratch_database, setup_django  # bench/events.py: scratch DB helpers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    return parser.parse_args()


def report_rows(count: int, version: str) -> list[dict]:
    """Rows shaped like the APT scanner's (names, Debian versions, a share of security updates)."""
    return [{"name": f"lib-bench-{index:05d}", "current_version": f"1.{index % 97}.0-1",
             "available_version": f"1.{index % 97}.{version}-1+deb12u1",
             "severity": "important" if index % 10 == 0 else "unknown", "is_security": index % 10 == 0,
             "repository": "Debian-Security/bookworm-security" if index % 10 == 0 else "Debian/bookworm",
             "size_bytes": 40_000 + index, "cve_ids": [f"CVE-2026-{index:05d}"] if index % 10 == 0 else [],
             "kb_ids": [], "metadata": {"arch": "amd64"}} for index in range(count)]


def enrolled_client():
    from tokens_app.services import token_create  # noqa: PLC0415  (needs setup_django())

    _, secret = token_create(label="bench", max_seats=10_000, expires_in=__import__("datetime").timedelta(hours=1))
    client = Client()
    machine = uuid.uuid4().hex * 2
    body = client.post("/api/v1/agents/register", {"registration_token": secret, "machine_id": machine,
                                                   "hostname": "bench", "os_family": "linux", "agent_version": "0.1"},
                       content_type="application/json").json()

    def prepare(rows: list[dict]):
        """The request, encoded as the agent sends it; calling the result sends it (timed alone)."""
        headers = {"HTTP_AUTHORIZATION": f"Bearer {body['access_token']}", "HTTP_X_MACHINE_ID": machine,
                   "HTTP_X_REQUEST_NONCE": secrets.token_urlsafe(24), "HTTP_X_REQUEST_TIMESTAMP": str(int(time.time()))}
        payload = json.dumps({"report_id": uuid.uuid4().hex, "package_type": "apt", "updates": rows}).encode()
        return lambda: client.post(f"/api/v1/agents/{body['agent_id']}/reports/updates", payload,
                                   content_type="application/json", **headers)

    return prepare


def cpu_ms() -> float:
    """CPU time so far of this process (the server, in process) and of its PostgreSQL backend, in ms.

    Less moved than wall time by other processes on a shared machine: waiting for a core is not counted.
    The backend's comes from /proc/<pid>/schedstat (nanoseconds on a CPU); PostgreSQL is on this machine.
    """
    connection.ensure_connection()
    with open(f"/proc/{connection.connection.info.backend_pid}/schedstat") as stat:
        backend_ns = int(stat.read().split()[0])
    return (time.process_time_ns() + backend_ns) / 1e6


def timed_report(prepare, rows, cpu: list[float] | None = None) -> tuple[float, int]:
    send = prepare(rows)
    cpu_started = cpu_ms()
    with CaptureQueriesContext(connection) as context:
        started = time.perf_counter()
        response = send()
        elapsed = (time.perf_counter() - started) * 1000
    if cpu is not None:
        cpu.append(cpu_ms() - cpu_started)
    assert response.status_code == 200, response.content
    return elapsed, len(context.captured_queries)


def baseline_copy(rows: list[dict], cpu: list[float] | None = None) -> float:
    """COPY the same rows into the same table for a fresh agent, in one transaction."""
    from agents_app.models import Agent  # noqa: PLC0415  (needs setup_django())

    agent = Agent.objects.create(hostname="baseline", machine_id_hash=uuid.uuid4().hex * 2)
    now = timezone.now()
    columns = ("agent_id", "package_type", "name", "current_version", "available_version", "severity",
               "is_security", "repository", "size_bytes", "cve_ids", "kb_ids", "metadata", "status", "dependencies",
               "last_report_id", "first_seen_at", "last_seen_at", "status_changed_at")
    cpu_started = cpu_ms()
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY agents_app_packageupdate ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((agent.pk, "apt", row["name"], row["current_version"], row["available_version"],
                                row["severity"], row["is_security"], row["repository"], row["size_bytes"],
                                json.dumps(row["cve_ids"]), json.dumps(row["kb_ids"]), json.dumps(row["metadata"]),
                                "pending", "[]", "baseline", now, now, now))
    elapsed = (time.perf_counter() - started) * 1000
    if cpu is not None:
        cpu.append(cpu_ms() - cpu_started)
    return elapsed


def stages(rows: list[dict], repeat: int) -> dict[str, float]:
    """Median ms of each step of the request alone, in process: StrictJSONParser on the body, the
    UpdatesReportSerializer, updates_report_ingest (first report of a fresh agent, in its transaction)."""
    from agents_app.api.serializers import UpdatesReportSerializer  # noqa: PLC0415  (needs setup_django())
    from agents_app.models import Agent  # noqa: PLC0415
    from agents_app.services.reports import updates_report_ingest  # noqa: PLC0415
    from redflag.api.parsers import StrictJSONParser  # noqa: PLC0415

    body = json.dumps({"report_id": uuid.uuid4().hex, "package_type": "apt", "updates": rows}).encode()
    timings: dict[str, list[float]] = {"parse": [], "validate": [], "ingest": []}
    for _ in range(repeat):
        started = time.perf_counter()
        data = StrictJSONParser().parse(io.BytesIO(body))
        parsed = time.perf_counter()
        serializer = UpdatesReportSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        validated = time.perf_counter()
        agent = Agent.objects.create(hostname="stages", machine_id_hash=uuid.uuid4().hex * 2)
        ingest_started = time.perf_counter()
        updates_report_ingest(agent=agent, report_id=uuid.uuid4().hex, package_type="apt",
                              updates=serializer.validated_data["updates"], not_checked=[])
        timings["ingest"].append((time.perf_counter() - ingest_started) * 1000)
        timings["parse"].append((parsed - started) * 1000)
        timings["validate"].append((validated - parsed) * 1000)
    return {f"{name}_ms": round(statistics.median(values), 2) for name, values in timings.items()}


def main() -> int:
    args = parse_args()
    if not args.database_url.startswith("postgres"):
        raise SystemExit("bench/ingest.py needs a PostgreSQL DATABASE_URL")
    base, name = scratch_database(args.database_url)
    try:
        setup_django(f"{base}/{name}")
        os.environ["REDFLAG_RATE_LIMIT_ENABLED"] = "false"

        settings.REDFLAG_RATE_LIMIT_ENABLED = False
        settings.DEBUG = False
        first, repeated, baseline, first_statements, repeat_statements = [], [], [], set(), set()
        cpu: dict[str, list[float]] = {"first": [], "repeated": [], "baseline": []}
        for _ in range(args.repeat):
            post = enrolled_client()
            ms, statements = timed_report(post, report_rows(args.packages, "1"), cpu["first"])
            first.append(ms)
            first_statements.add(statements)
            ms, statements = timed_report(post, report_rows(args.packages, "2"), cpu["repeated"])  # all conflict
            repeated.append(ms)
            repeat_statements.add(statements)
            baseline.append(baseline_copy(report_rows(args.packages, "1"), cpu["baseline"]))
        small_post = enrolled_client()
        _, small_statements = timed_report(small_post, report_rows(10, "1"))
        steps = stages(report_rows(args.packages, "1"), args.repeat)
        base_ms = statistics.median(baseline)
        base_cpu = statistics.median(cpu["baseline"])
        result = {
            "packages": args.packages, "repeat": args.repeat,
            "baseline_copy_ms": round(base_ms, 2),
            "baseline_copy_cpu_ms": round(base_cpu, 2),
            "first_report": {"server_ms": round(statistics.median(first), 2),
                             "ratio": round(statistics.median(first) / base_ms, 2),
                             "cpu_ms": round(statistics.median(cpu["first"]), 2),
                             "cpu_ratio": round(statistics.median(cpu["first"]) / base_cpu, 2),
                             "statements": sorted(first_statements)},
            "repeated_report": {"server_ms": round(statistics.median(repeated), 2),
                                "ratio": round(statistics.median(repeated) / base_ms, 2),
                                "cpu_ms": round(statistics.median(cpu["repeated"]), 2),
                                "cpu_ratio": round(statistics.median(cpu["repeated"]) / base_cpu, 2),
                                "statements": sorted(repeat_statements)},
            "statements_for_10_packages": small_statements,
            "first_report_stages": steps,  # the rest of server_ms: authentication, nonce, middleware, response
        }
        print(json.dumps(result, indent=2))
    finally:
        connections.close_all()
        drop_database(base, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
