"""bench/register.py smoke run: registrations at saturation against a real production-mode server, and a
small storm on a token with exactly as many seats. The published figures come from full runs
(bench/README.md)."""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the registration bench needs PostgreSQL (DATABASE_URL)")
def test_register_bench_smoke_run():
    report = run_bench("register.py", "--seconds", "2", "--clients", "4", "--storm", "40", "--storm-clients", "8",
                       "--workers", "1")
    for phase in ("health", "register", "config"):
        assert report[phase]["errors_by_status"] == {}, (phase, report[phase])
        assert report[phase]["requests"] > 0 and report[phase]["cpu_ms_per_request"]["server"] > 0
    storm = report["storm"]
    assert storm["errors_by_status"] == {} and storm["enrolled"] == 40
    # The used-up token refuses every further machine, and the database holds exactly one agent, one seat
    # and one registration event per enrolled machine.
    assert storm["beyond_the_seats"] == {"attempts": 8, "statuses": {"401": 8}, "enrolled": 0}
    assert storm["in_database"] == {"max_seats": 40, "seats_used": 40, "agents": 40, "registration_events": 40}
    assert report["server_log_tracebacks"] == 0
    assert set(report["ratios"]) == {"register_vs_health", "register_vs_config"}
