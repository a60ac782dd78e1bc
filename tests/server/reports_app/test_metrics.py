"""/metrics: the token gate, the fleet's gauges, the API's counters, and sums across web processes.

Every scrape is parsed with the Prometheus client's own text parser.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone
from django_q.tasks import async_task
from prometheus_client.parser import text_string_to_metric_families

from agents_app.choices import UpdateSeverity
from agents_app.models import Agent, PackageUpdate
from tests.server.processes import WebServer, database_url, migrate, server_env, wait_until

TOKEN = "metrics-token-for-tests-0123456789"
URL = "/metrics"
NOW = timezone.now()


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape, through prometheus_client's parser."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(client) -> dict:
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def api_count(samples: dict, route: str, status: str) -> float:
    return samples.get(("redflag_api_requests_total",
                        (("method", "GET"), ("route", route), ("status", status))), 0.0)


@pytest.fixture
def metrics_on(settings):
    settings.REDFLAG_METRICS_TOKEN = TOKEN


def test_metrics_do_not_exist_without_a_token_setting(client, db, settings):
    settings.REDFLAG_METRICS_TOKEN = ""
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_metrics_refuse_a_missing_or_wrong_token(client, db, metrics_on, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get(URL, **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.content.decode()


def test_metrics_answer_only_reads(client, db, metrics_on):
    assert client.post(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def _agent(name: str, *, seen: timedelta | None, revoked: bool = False) -> Agent:
    return Agent.objects.create(hostname=name, machine_id_hash=hashlib.sha256(name.encode()).hexdigest(),
                                last_seen_at=None if seen is None else timezone.now() - seen,
                                revoked_at=timezone.now() if revoked else None)


def _update(agent: Agent, name: str, severity: str, security: bool, status: str = "pending") -> None:
    PackageUpdate.objects.create(agent=agent, package_type="apt", name=name, current_version="1",
                                 available_version="2", severity=severity, is_security=security, status=status)


def test_fleet_gauges_count_agents_updates_and_compliance(client, db, metrics_on):
    web = _agent("web", seen=timedelta(seconds=10))
    db_host = _agent("db", seen=timedelta(seconds=20))
    _agent("old", seen=timedelta(days=3))
    gone = _agent("gone", seen=timedelta(seconds=5), revoked=True)
    _update(web, "openssl", UpdateSeverity.CRITICAL, True)
    _update(web, "curl", UpdateSeverity.IMPORTANT, True)
    _update(web, "vim", UpdateSeverity.LOW, False)
    _update(db_host, "bash", UpdateSeverity.CRITICAL, True, status="installed")  # done: not pending
    _update(gone, "zlib", UpdateSeverity.CRITICAL, True)  # a revoked agent counts nowhere

    samples = scrape(client)
    assert samples[("redflag_agents", (("state", "online"),))] == 2
    assert samples[("redflag_agents", (("state", "offline"),))] == 1
    assert samples[("redflag_pending_updates", (("security", "true"), ("severity", "critical")))] == 1
    assert samples[("redflag_pending_updates", (("security", "true"), ("severity", "important")))] == 1
    assert samples[("redflag_pending_updates", (("security", "false"), ("severity", "low")))] == 1
    assert samples[("redflag_pending_updates", (("security", "false"), ("severity", "critical")))] == 0
    # Compliance is the reports' own figure: no security update past its severity's deadline.
    assert samples[("redflag_compliance_ratio", (("severity", "all"),))] == 1.0  # all seen just now
    PackageUpdate.objects.filter(name="openssl").update(first_seen_at=timezone.now() - timedelta(days=8))
    samples = scrape(client)
    # web's critical update is 8 days old, past the 7-day deadline: 2 of 3 agents comply.
    assert samples[("redflag_compliance_ratio", (("severity", "all"),))] == pytest.approx(2 / 3)
    assert samples[("redflag_compliance_ratio", (("severity", "critical"),))] == pytest.approx(2 / 3)
    assert samples[("redflag_compliance_ratio", (("severity", "important"),))] == 1.0


def test_compliance_is_absent_while_no_agent_is_enrolled(client, db, metrics_on):
    assert not [key for key in scrape(client) if key[0] == "redflag_compliance_ratio"]


def test_queue_depth_and_age_of_the_oldest_waiting_task(client, db, metrics_on, settings):
    samples = scrape(client)
    assert samples[("redflag_task_queue_depth", ())] == 0
    assert samples[("redflag_task_queue_oldest_age_seconds", ())] == 0
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": False}
    async_task("math.floor", 1.5)
    async_task("math.floor", 2.5)
    samples = scrape(client)
    assert samples[("redflag_task_queue_depth", ())] == 2
    assert 0 <= samples[("redflag_task_queue_oldest_age_seconds", ())] < 60


def test_scrape_costs_the_same_queries_whatever_the_fleet(client, db, metrics_on, django_assert_num_queries):
    for index in range(3):
        _update(_agent(f"a{index}", seen=timedelta(seconds=1)), "pkg", UpdateSeverity.LOW, True)
    scrape(client)  # loads the server settings (the offline threshold) once
    # agents and their updates (reports_app.compliance), updates by severity, the queue's depth and oldest task.
    with django_assert_num_queries(5) as small:
        scrape(client)
    for index in range(3, 40):
        _update(_agent(f"a{index}", seen=timedelta(seconds=1)), "pkg", UpdateSeverity.LOW, True)
    with django_assert_num_queries(len(small.captured_queries)):
        scrape(client)


def test_api_requests_are_counted_by_route_pattern_not_by_path(client, db, metrics_on):
    route = "api/v1/agents/<uuid:agent_id>/config"
    before = api_count(scrape(client), route, "401")
    for _ in range(3):
        client.get(f"/api/v1/agents/{Agent(hostname='x').pk}/config")  # no credentials: 401
    samples = scrape(client)
    assert api_count(samples, route, "401") == before + 3
    # One series for the pattern: no agent id appears in any label.
    assert not any("-" in value and len(value) == 36 for (_name, labels) in samples for _key, value in labels)
    assert samples[("redflag_api_request_duration_seconds_count",
                    (("method", "GET"), ("route", route)))] >= 3


@pytest.mark.django_db(transaction=True)
def test_counters_of_several_web_processes_add_up(tmp_path):
    """Two uvicorn processes on the same data folder: either one's scrape counts both one's requests."""
    database = database_url()
    # A counter folder of their own: this test process's earlier requests count in the default one.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = server_env(database, REDFLAG_METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    migrate(env)
    first = WebServer(env, tmp_path, name="web-a").start()
    second = WebServer(env, tmp_path, name="web-b").start()
    try:
        for server, times in ((first, 4), (second, 7)):
            for _ in range(times):
                assert requests.get(f"{server.url}/api/v1/signing-keys", timeout=10).status_code == 200
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def counted(server):
            samples = parse(requests.get(f"{server.url}/metrics", headers=headers, timeout=10).text)
            return api_count(samples, "api/v1/signing-keys", "200")

        assert wait_until(lambda: counted(first) == 11, 10, "11 requests counted through the first") is True
        assert counted(second) == 11
    finally:
        first.stop()
        second.stop()


def test_the_grafana_dashboard_asks_only_for_series_a_scrape_has(client, db, metrics_on):
    """contrib/grafana/redflag-dashboard.json: every metric and label its queries use is in a real scrape."""
    _agent("web", seen=timedelta(seconds=1))  # an enrolled agent, so the compliance series exist
    client.get(f"/api/v1/agents/{Agent(hostname='x').pk}/config")  # one API request, so its series exist
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    families = {sample.name: set(sample.labels) for family in text_string_to_metric_families(
        response.content.decode()) for sample in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[3] / "contrib/grafana/redflag-dashboard.json")
                           .read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 9
    for expression in expressions:
        for name in re.findall(r"\bredflag_\w+", expression):
            assert name in families, f"{name} (in {expression}) is not in a scrape"
            used = set(re.findall(r"(\w+)\s*=~?\s*\"", expression)) - {"job"}
            assert used <= families[name] | {"le"}, f"{expression} uses labels {used - families[name]}"
