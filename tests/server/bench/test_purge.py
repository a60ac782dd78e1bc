"""bench/purge.py smoke run: a few thousand expired events purged beside check-ins, on PostgreSQL, JSON out.

The million-row figures are not a test (bench/README.md); this only proves the script works and the purge
removes exactly the expired rows, in batches, while every check-in is answered.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL)")
def test_bench_smoke_run():
    report = run_bench("purge.py", "--agents", "6", "--rate", "4", "--expired", "12000", "--kept", "500",
                       "--seconds", "2", "--workers", "1", timeout=600)
    assert report["registration"] == {"agents": 6, "failed": 0}
    phases = report["phases"]
    assert set(phases) == {"before", "purge", "after", "unpaced"}
    for name in ("purge", "unpaced"):
        purge = phases[name]["purge"]
        assert (purge["removed"], purge["batches"], purge["complete"]) == (12000, 3, True)  # 5,000 a batch
        assert purge["rows_after"] == purge["rows_before"] - 12000 + 1  # and its own record
    assert phases["purge"]["purge"]["rested_seconds"] > 0 and phases["unpaced"]["purge"]["rested_seconds"] == 0
    assert all(phase["checkin"]["ok"] == phase["checkin"]["requests"] > 0 for phase in phases.values())
    assert set(report["ratios_to_before"]) == {"purge", "after", "unpaced"}
    assert report["server_log_tracebacks"] == 0
