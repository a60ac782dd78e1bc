"""Prometheus metrics at ``/metrics``, in the text format of the official client library.

What a scrape returns:

- the API's request counter and latency histogram, counted by every web process into its own files
  under ``PROMETHEUS_MULTIPROC_DIR`` (settings point it at the data folder) and summed at scrape time
  by the client library's multi-process collector, so any number of uvicorn workers add up;
- the fleet's gauges (agents online/offline, outstanding updates by severity, compliance with the patch
  deadlines, the reports' own figures) and
  the task queue's depth and age, read from the database at scrape time by ``FleetCollector``: one
  answer whichever process is scraped, a constant number of queries whatever the fleet's size.

The endpoint answers only a request carrying ``Authorization: Bearer <REDFLAG_METRICS_TOKEN>``; without
that setting it does not exist (404), so a fresh install exposes nothing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agents_app.choices import UpdateSeverity
from agents_app.models import PackageUpdate
from reports_app.compliance import fleet_counts

# Requests under this prefix are the API (agents, releases, signing keys, the auditors' read API).
API_PREFIX = "/api/"
# Request durations: the agent API answers in milliseconds; reports and exports can take seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

API_REQUESTS = Counter(
    "redflag_api_requests", "API requests answered, by route pattern, method and status code.",
    ["route", "method", "status"],
)
API_LATENCY = Histogram(
    "redflag_api_request_duration_seconds", "Time to answer an API request, by route pattern and method.",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)


def _route_of(request: HttpRequest) -> str:
    """The URL pattern that answered (``api/v1/agents/<uuid:agent_id>/checkin``), never the path itself:
    an agent's id in a label would make one series per agent."""
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else "unmatched"


class ApiMetricsMiddleware:
    """Counts and times every API request (a few microseconds each; everything else passes untouched)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        route = _route_of(request)
        API_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        API_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        return response


def oldest_task_age_seconds(broker, now) -> float:
    """Seconds since the oldest task still waiting in the queue was enqueued (0 when none waits).

    django-q2 stamps each task with ``started`` when it is enqueued; the ORM broker keeps tasks in
    insertion order in OrmQ, the Redis broker in a list it pushes to the right and pops from the left.
    """
    if hasattr(broker, "get_connection"):  # the ORM broker
        row = (OrmQ.objects.using(broker.get_connection().db).filter(key=broker.list_key)
               .order_by("id").values_list("payload", flat=True).first())
    else:
        row = broker.connection.lindex(broker.list_key, 0)
    if row is None:
        return 0.0
    try:
        started = SignedPackage.loads(row)["started"]
    except Exception:  # a payload signed with another key, or damaged: no age rather than a failed scrape
        return 0.0
    return max(0.0, (now - started).total_seconds())


class FleetCollector:
    """The fleet's gauges, read from the database when scraped: five queries, whatever the fleet's size."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        # The same figures as the reports and the dashboard's trends (reports_app.compliance), two queries.
        fleet = fleet_counts(now=now)
        agents = GaugeMetricFamily("redflag_agents", "Enrolled agents (revoked ones left out), by presence.",
                                   labels=["state"])
        agents.add_metric(["online"], fleet.online)
        agents.add_metric(["offline"], fleet.machines - fleet.online)
        yield agents

        compliance = GaugeMetricFamily(
            "redflag_compliance_ratio",
            "Share of enrolled agents with no security update past its deadline (REDFLAG_PATCH_DEADLINES_DAYS), "
            "per severity and for all severities; absent while no agent is enrolled.", labels=["severity"])
        if fleet.machines:
            compliance.add_metric(["all"], fleet.compliant / fleet.machines)
            for row in fleet.by_severity:
                compliance.add_metric([row.severity], row.compliant / row.machines)
        yield compliance

        pending = GaugeMetricFamily(
            "redflag_pending_updates", "Updates not yet installed, closed or ignored, by severity and kind.",
            labels=["severity", "security"])
        counts = {(row["severity"], row["is_security"]): row["n"] for row in
                  PackageUpdate.objects.outstanding().filter(agent__revoked_at__isnull=True)
                  .values("severity", "is_security").annotate(n=Count("id")).order_by()}
        for severity in UpdateSeverity.values:
            for security in (True, False):
                pending.add_metric([severity, str(security).lower()], counts.get((severity, security), 0))
        yield pending

        broker = get_broker()
        depth = GaugeMetricFamily("redflag_task_queue_depth", "Tasks waiting in the django-q2 queue.")
        depth.add_metric([], broker.queue_size())
        yield depth
        age = GaugeMetricFamily("redflag_task_queue_oldest_age_seconds",
                                "Age of the oldest task waiting in the django-q2 queue (0 when empty).")
        age.add_metric([], oldest_task_age_seconds(broker, now))
        yield age


def _authorised(request: HttpRequest, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.REDFLAG_METRICS_TOKEN
    if not token:
        return HttpResponse("Metrics are off: set REDFLAG_METRICS_TOKEN to turn them on.\n", status=404,
                            content_type="text/plain")
    if not _authorised(request, token):
        response = HttpResponse("Send the metrics token: Authorization: Bearer <REDFLAG_METRICS_TOKEN>.\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(FleetCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

