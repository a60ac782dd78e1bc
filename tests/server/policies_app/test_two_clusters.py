"""Two real django-q2 clusters sweep one PostgreSQL database at the same time: each machine's window opens
exactly once (one turn, one dry-run, one "approved" decision per machine; the window's opening recorded once).

The test enqueues many sweeps at once so both clusters run them concurrently; the unique (policy, agent,
occurrence) claim and the conditional UPDATEs are what keep them apart.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task
from django_q.tasks import async_task

from agents_app.choices import CommandSource, CommandType
from agents_app.models import Command
from events_app.choices import EventType
from events_app.models import SystemEvent
from policies_app.choices import TurnState
from policies_app.models import MachineTurn
from tests.server.policies_app.helpers import add_updates, make_fleet, make_group, make_policy, make_window
from tests.server.processes import Cluster, database_url, server_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
MACHINES = 60
SWEEPS = 24
SWEEP_FUNC = "policies_app.tasks.sweep_policies"


@pytest.fixture
def clusters(transactional_db, tmp_path):
    url = database_url()  # skips on SQLite
    # Only the test's sweeps run: the scheduled ones wait (every other schedule is harmless here).
    Schedule.objects.filter(func=SWEEP_FUNC).update(next_run=timezone.now() + timedelta(days=1))
    env = server_env(url, REDFLAG_LOG_LEVEL="INFO", REDFLAG_Q_WORKERS="2")
    started = [Cluster(env, tmp_path, name="q-1").start(), Cluster(env, tmp_path, name="q-2").start()]
    try:
        for cluster in started:
            wait_until(lambda c=cluster: "running." in c.output() or not c.running, 60, f"{cluster.name} to run")
            assert cluster.running, cluster.output()[-3000:]
        yield started
    finally:
        for cluster in started:
            cluster.stop(timeout=20)


def test_each_window_opens_once_per_machine_with_two_clusters(clusters):
    now = timezone.now()
    agents = make_fleet(MACHINES, seen=now + timedelta(hours=1))  # online for the whole test
    add_updates(agents)
    # Open now, every day, in UTC: started five minutes ago, an hour long.
    window = make_window("Now", weekdays=list(range(7)), start_time=(now - timedelta(minutes=5)).time().replace(
        second=0, microsecond=0), duration_minutes=60)
    make_policy([make_group("web", "web-*")], window=window, name="Two clusters",
                created_at=now, last_occurrence_start=None)

    for _ in range(SWEEPS):
        async_task(SWEEP_FUNC)
    wait_until(lambda: Task.objects.filter(func=SWEEP_FUNC).count() >= SWEEPS and not OrmQ.objects.exists(),
               120, "both clusters to run every sweep")

    assert Task.objects.filter(func=SWEEP_FUNC, success=True).count() == SWEEPS
    ran_by = {cluster.name: cluster.output().count(SWEEP_FUNC.rsplit(".", 1)[1]) for cluster in clusters}
    assert all(ran_by.values()), f"each cluster should have swept: {ran_by}"
    per_machine = Counter(MachineTurn.objects.values_list("agent_id", flat=True))
    assert len(per_machine) == MACHINES and set(per_machine.values()) == {1}
    assert set(MachineTurn.objects.values_list("state", flat=True)) == {TurnState.DRY_RUN}
    dry_runs = Counter(Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE, source=CommandSource.POLICY)
                       .values_list("agent_id", flat=True))
    assert len(dry_runs) == MACHINES and set(dry_runs.values()) == {1}
    approved = SystemEvent.objects.filter(event_type=EventType.POLICY_DECISION, metadata__decision="approved")
    assert approved.count() == MACHINES
    assert SystemEvent.objects.filter(event_type=EventType.MAINTENANCE_WINDOW).count() == 1
