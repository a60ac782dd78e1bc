"""bench/schedule.py smoke run: 50 agents × 4 subsystems on PostgreSQL, JSON out, every scan created once,
delivered and signed.

The 50,000-agent figures are not a test (bench/README.md); this only proves the script works.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench

AGENTS = 50


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL): it loads rows with generate_series "
                           "and measures SKIP LOCKED sweeps")
def test_bench_schedule_smoke_run():
    report = run_bench("schedule.py", "--agents", str(AGENTS))
    assert report["agents"] == AGENTS and report["subsystems"] == 4 * AGENTS and report["kept"] is None
    sweep = report["full_sweep"]
    assert sweep["commands_counted"] == sweep["created_reported"] == sweep["distinct_agent_kind"] == 4 * AGENTS
    assert sweep["exactly_once"] is True
    assert sweep["calls"] == 2 and sweep["final_call"]["statements"] == report["nothing_due"]["statements"][0]
    assert set(report["baselines"]) == {"select_due_seconds", "insert_select_seconds",
                                        "insert_select_with_foreign_keys_seconds", "ed25519_seconds"}
    assert report["nothing_due"]["statements"] == [1]
    delivery = report["delivery"]  # the scans are signed as they are delivered; every signature verified
    assert delivery["agents"] == delivery["presigned_agents"] == AGENTS // 2
    assert delivery["commands"] == delivery["signatures_verified"] == delivery["presigned_commands"] == 2 * AGENTS
    assert report["baselines"]["insert_select_seconds"] > 0 and report["ratios"]["sweep_vs_insert_select"] > 0
