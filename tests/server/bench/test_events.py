"""bench/events.py smoke run: 1,000 rows on PostgreSQL, JSON out, constant query counts per case.

The million-row figures are not a test (bench/README.md); this only proves the script works.
"""

from __future__ import annotations

import os

import pytest

from tests.server.bench.smoke import run_bench


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the benchmark needs PostgreSQL (DATABASE_URL)")
def test_bench_smoke_run():
    report = run_bench("events.py", "--rows", "1000", "--repeat", "2")
    assert report["rows"] == 1000 and report["kept"] is None
    cases = report["cases"]
    assert {"first_page", "deep_page", "by_agent", "by_type_common", "no_match", "by_text_rare", "admin_list",
            "api_first_page", "api_deep_page"} <= set(cases)
    # Filtering by agent adds one query: the picker shows the chosen agent's hostname.
    assert cases["by_agent"]["queries"] == cases["first_page"]["queries"] + 1
    assert cases["deep_page"]["queries"] == cases["first_page"]["queries"] - 1  # no live-stream start seq
    assert cases["api_first_page"]["queries"] == cases["api_deep_page"]["queries"]
    assert all(case["sql_ms"] > 0 and case["server_ms"] > 0 and case["server_cpu_ms"] > 0 for case in cases.values())
    # Every case says how its page query ran: the plan's nodes, the index it used.
    assert cases["first_page"]["plan"]["nodes"][:2] == ["Limit", "Index Scan event_time_id"]
    # The admin list counts at most its cap (the count is not the page query the plan shows).
    assert not cases["admin_list"]["plan"]["nodes"][0].startswith("Aggregate")
