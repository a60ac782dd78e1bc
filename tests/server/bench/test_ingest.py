"""bench/ingest.py smoke run: a 20-package report on PostgreSQL, JSON out, the statement count constant.

The 2,000-package figures are not a test (bench/README.md); this only proves the script works.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL): its baseline is a COPY")
def test_bench_ingest_smoke_run():
    report = run_bench("ingest.py", "--packages", "20", "--repeat", "1")
    assert report["packages"] == 20 and report["baseline_copy_ms"] > 0 and report["baseline_copy_cpu_ms"] > 0
    for case in ("first_report", "repeated_report"):
        assert report[case]["server_ms"] > 0 and report[case]["ratio"] > 0
        assert report[case]["cpu_ms"] > 0 and report[case]["cpu_ratio"] > 0
        assert report[case]["statements"] == [report["statements_for_10_packages"]]
    assert set(report["first_report_stages"]) == {"parse_ms", "validate_ms", "ingest_ms"}
