"""bench/fleet.py smoke run: a few dozen simulated agents against a real production-mode server.

The published figures (bench/README.md, README "Capacity") come from full runs; this proves the
simulator works end to end: registration, the baseline, check-ins, replayed scan reports and
command results, all answered without an error or a traceback.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the fleet simulator needs PostgreSQL (DATABASE_URL)")
def test_fleet_smoke_run():
    report = run_bench("fleet.py", "--agents", "30", "--heartbeat", "5", "--interval", "5", "--duration", "12",
                       "--baseline-seconds", "2", "--workers", "1", "--scans", "due")
    assert report["registration"]["ok"] == 35 and report["registration"]["failed_agents"] == 0
    steady = report["steady"]
    # 35 agents polling every 5-5.5 s for 12 s; each first check-in hands over its three due scans
    # (apt, system, storage), answered with the recorded reports and three results.
    assert steady["checkin"]["ok"] >= 35
    assert all(kind["errors_by_status"] == {} for kind in steady.values()), steady
    assert steady["report_updates"]["ok"] == 35 and steady["report_system"]["ok"] == 70
    assert steady["result"]["ok"] == 105
    assert report["baseline"]["ok"] > 0 and report["baseline"]["p50_ms"] > 0
    assert report["server"]["log_tracebacks"] == 0
    assert report["steady_checkin_timeline"]
    # Like agent_client run, every agent held the fast channel (GET …/wait) beside its polls.
    assert report["channel"]["mode"] == "agent" and report["channel"]["connect"]["ok"] == 35
