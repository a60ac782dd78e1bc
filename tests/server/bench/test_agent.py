"""bench/agent.py smoke run: the real agent polls a real server for a few seconds; JSON out.

The 180-second figures and the APT timing are not a test (bench/README.md); this only proves the
script works. The APT part is skipped here (``--apt-runs 0``): it waits for the lock the APT tests
hold while they install packages, and its figures need several runs to mean anything.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL): uvicorn and the test share a database "
                           "server")
def test_bench_agent_smoke_run():
    report = run_bench("agent.py", "--seconds", "8", "--warmup", "3", "--apt-runs", "0")
    footprint = report["footprint"]
    agent, baseline = footprint["agent"], footprint["baseline_bare_interpreter"]
    assert agent["checkins_total"] >= 1
    assert agent["rss_mib_median"] > 0 and baseline["rss_mib_median"] > 0
    assert agent["samples"] >= 5 and agent["cpu_seconds"] >= 0
    assert footprint["ratios"]["rss_median"] > 0
    assert isinstance(footprint["goals"]["rss_met"], bool) and isinstance(footprint["goals"]["cpu_met"], bool)
    assert isinstance(footprint["rss_kib_above_baseline_by_mapping"], dict)
    assert report["apt"] == {"skipped": "--apt-runs 0"} and report["kept"] is None
