"""bench/reach.py smoke run: a few dozen agents on the fast channel against a production-mode server.

The published figures (bench/README.md, README "Capacity") come from full runs; this proves the
benchmark works end to end: the waits are held, every probe command reaches its agent through a
wake-up and a check-in, the heartbeat baseline is measured, and nothing fails or leaves a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server.processes import ROOT


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the reach benchmark needs PostgreSQL (DATABASE_URL)")
def test_reach_smoke_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDFLAG_"))}
    result = subprocess.run([sys.executable, "bench/reach.py", "--agents", "40", "--baseline-agents", "5",
                             "--probes", "10", "--idle-seconds", "3", "--workers", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDFLAG_"))}
    result = subprocess.run([sys.executable, "bench/reach.py", "--open-only", "--opens", "40", "--herd", "60",
                             "--herd-checkins-per-second", "10", "--workers", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    opens = report["opens"]
    assert opens["baseline_checkin"]["statuses"] == {"200": 40} and opens["wait_open"]["statuses"] == {"200": 40}
    assert set(opens["ratio_to_checkin"]) <= {"server_cpu_ms", "postgres_cpu_ms"}
    herd = report["herd"]
    assert herd["held"] == 60 and herd["all_held_s"] is not None
    assert herd["checkins_during_herd"]["errors_by_status"] == {} and herd["checkins_during_herd"]["ok"] > 0
    assert report["server"]["log_tracebacks"] == 0
