"""bench/advisories_mapping.py smoke run: a small fleet on PostgreSQL, JSON out, every case measured.

The 10,000 × 200 figures are not a test (the report of the run is); this proves the script works and
that the mapping it measures finds the exposures the plan puts there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server.processes import ROOT


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL)")
def test_bench_smoke_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDFLAG_"))}
    result = subprocess.run([sys.executable, "bench/advisories_mapping.py", "--agents", "30", "--updates", "20",
                             "--real", "5", "--repeat", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["updates"] == 600 and report["kept"] is None
    assert report["exposures"] > 0
    assert set(report["cases"]) == {"refresh_first", "refresh_steady", "risk_page", "risk_page_sorted"}
    assert all(case["server_ms"] > 0 and case["sql_ms"] > 0 for case in report["cases"].values())
