"""bench/checkin.py smoke run: the saturation bench against a real production-mode server and the
bare ASGI floor (bench/bare_checkin.py). The published figures come from full runs (bench/README.md)."""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the check-in bench needs PostgreSQL (DATABASE_URL)")
def test_checkin_bench_smoke_run():
    report = run_bench("checkin.py", "--agents", "20", "--seconds", "3", "--clients", "4", "--workers", "1",
                       "--checkin-rate", "100000/min")
    assert report["registration"] == {**report["registration"], "agents": 20, "failed": 0}
    for phase in ("config", "checkin", "bare"):
        assert report[phase]["errors_by_status"] == {}, (phase, report[phase])
        assert report[phase]["requests"] > 0 and report[phase]["cpu_ms_per_request"]["server"] > 0
    assert report["server_log_tracebacks"] == 0
    assert set(report["ratios"]) == {"checkin_vs_config", "checkin_vs_bare"}
