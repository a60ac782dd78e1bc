"""bench/reach.py smoke run: a few dozen agents on the fast channel against a production-mode server.

The published figures (bench/README.md, README "Capacity") come from full runs; this proves the
benchmark works end to end: the waits are held, every probe command reaches its agent through a
wake-up and a check-in, the heartbeat baseline is measured, and nothing fails or leaves a traceback.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the reach benchmark needs PostgreSQL (DATABASE_URL)")
def test_reach_smoke_run():
    report = run_bench("reach.py", "--agents", "40", "--baseline-agents", "5", "--probes", "10", "--idle-seconds",
                       "3", "--workers", "1")
    assert report["registration"] == {**report["registration"], "agents": 45, "failed": 0}
    assert report["connect"]["waits"] == 40 and report["idle"]["waits_held"] == 40
    assert report["reach"]["reached"] == 10 and report["baseline"]["reached"] == 5
    # The fast channel beats a 5-second heartbeat poll by far, even on a loaded machine.
    assert report["reach"]["p50_s"] < report["baseline"]["p50_s"]
    assert report["wait_errors"] == {}
    assert report["server"]["log_tracebacks"] == 0


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the reach benchmark needs PostgreSQL (DATABASE_URL)")
def test_open_only_smoke_run():
    """--open-only: the check-in baseline and the wait opens are measured, the herd is held, and the
    check-ins alongside it all succeed."""
    report = run_bench("reach.py", "--open-only", "--opens", "40", "--herd", "60", "--herd-checkins-per-second",
                       "10", "--workers", "1")
    opens = report["opens"]
    assert opens["baseline_checkin"]["statuses"] == {"200": 40} and opens["wait_open"]["statuses"] == {"200": 40}
    assert set(opens["ratio_to_checkin"]) <= {"server_cpu_ms", "postgres_cpu_ms"}
    herd = report["herd"]
    assert herd["held"] == 60 and herd["all_held_s"] is not None
    assert herd["checkins_during_herd"]["errors_by_status"] == {} and herd["checkins_during_herd"]["ok"] > 0
    assert report["server"]["log_tracebacks"] == 0
