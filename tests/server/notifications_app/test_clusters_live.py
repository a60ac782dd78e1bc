"""Live: two real django-q2 clusters against one PostgreSQL. A committed security violation wakes the
dispatcher on commit; the clusters route it and send it to a real webhook receiver, which verifies the
signature with the README's code and gets the message exactly once."""

from __future__ import annotations

import json
import time

import pytest
from django.db import transaction

from events_app.services import security_violation
from notifications_app.choices import DeliveryStatus, DestinationKind, Trigger
from notifications_app.models import Delivery
from tests.server.notifications_app.conftest import make_destination, make_rule
from tests.server.notifications_app.receivers import HttpReceiver
from tests.server.processes import Cluster, database_url, server_env, wait_until

SIGNING_SECRET = "whsec-live-clusters-0123456789"


@pytest.fixture
def clusters(transactional_db, tmp_path):
    env = server_env(database_url(), REDFLAG_LOG_LEVEL="INFO")
    started = [Cluster(env, tmp_path, name=f"q-{number}").start() for number in (1, 2)]
    try:
        for cluster in started:
            wait_until(lambda cluster=cluster: cluster.running and "running." in cluster.output(), 60,
                       f"{cluster.name} to run")
        yield started
    finally:
        for cluster in started:
            cluster.stop(timeout=20)


def test_two_clusters_deliver_a_committed_event_once(clusters):
    with HttpReceiver(secret=SIGNING_SECRET.encode()) as receiver:
        hook = make_destination("siem", f"http://127.0.0.1:{receiver.port}/hook", kind=DestinationKind.WEBHOOK,
                                secret=SIGNING_SECRET)
        make_rule("violations", [hook], trigger=Trigger.SECURITY_VIOLATION)
        with transaction.atomic():
            security_violation("Refresh token replayed from another machine", agent=None, metadata={"family": "f"})
        wait_until(lambda: receiver.requests, 60, "the webhook to arrive")
        wait_until(lambda: Delivery.objects.filter(status=DeliveryStatus.SENT).exists(), 30, "the delivery to be sent")
        # Both clusters poll the queue every second and run the minute tick: a few more seconds, and
        # still one delivery and one request.
        time.sleep(3)
        assert Delivery.objects.count() == 1
        assert len(receiver.requests) == 1
    [request] = receiver.requests
    assert request.verified is True
    assert json.loads(request.body)["event"]["message"] == "Refresh token replayed from another machine"
