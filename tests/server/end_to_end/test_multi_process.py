"""Growing past one machine: two web processes and two django-q2 clusters on one PostgreSQL.

The README's "Growing past one machine" deployment, for real: uvicorn processes A and B and
clusters Q1 and Q2, all on the test's database and data folder (so one signing key).

1. An agent checks in through A, B, A, B; every check-in moves ``last_seen_at``.
2. An admin queues a reboot through A's admin action; a cluster runs the bulk operation; a
   check-in through B delivers the command, once, and a check-in through A does not again.
3. 300 agents x 4 subsystems are all due; 36 sweeps of at most 40 rows each go to the shared
   queue and both clusters run them at the same time: 1,200 commands, one per (agent, kind).
4. The live event stream opened on A shows an event the agent posted through B.
5. The check-in rate limit counts across both: 8 a minute, 4 through each, and the 9th is a 429.

A second test runs a cluster on the Redis broker (REDFLAG_Q_BROKER_URL) and has it run a task.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django.db.models import Count
from django.utils import timezone
from django_q.brokers.redis_broker import Redis as RedisBroker
from django_q.models import OrmQ, Schedule, Task
from django_q.tasks import async_task

from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command
from agents_app.services.scheduling import schedule_due_scans
from redflag.models import ServerSettings
from tests.server.processes import Cluster, Process, WebServer, database_url, server_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "multi-process-pw"
SWEEP_AGENTS = 300
SWEEP_SUBSYSTEMS = ("apt", "docker", "storage", "system")
SWEEP_LIMIT = 40
SWEEP_TASKS = 36  # 30 are needed for 1,200 rows at 40 a sweep; the rest must find nothing left
CHECKIN_RATE = 8  # per agent and minute, counted in the database cache table both web processes share
REDIS_URL = "redis://127.0.0.1:6379/7"


def signed(agent) -> dict:
    return {
        "Authorization": f"Bearer {agent.access_token}",
        "X-Machine-ID": agent.machine_id,
        "X-Request-Nonce": secrets.token_urlsafe(24),
        "X-Request-Timestamp": str(int(time.time())),
    }


def post_check_in(web: WebServer, agent) -> requests.Response:
    return requests.post(f"{web.url}/api/v1/agents/{agent.id}/checkin", json={}, headers=signed(agent), timeout=15)


def check_in(web: WebServer, agent) -> dict:
    response = post_check_in(web, agent)
    assert response.status_code == 200, (web.name, response.status_code, response.text)
    return response.json()


def admin_login(web: WebServer, username: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{web.url}/admin/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(f"{web.url}/admin/login/", timeout=10, allow_redirects=False, data={
        "csrfmiddlewaretoken": token, "login": username, "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302, response.text[-2000:]
    return session


def csrf_token(session: requests.Session, url: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', session.get(url, timeout=10).text).group(1)


def cluster_running(cluster: Cluster) -> bool:
    assert cluster.running, f"{cluster.name} exited:\n{cluster.output()[-3000:]}"
    return "running." in cluster.output()


@pytest.fixture
def deployment(transactional_db, tmp_path):
    """Webs A and B, clusters Q1 and Q2; stopped before the test database is flushed."""
    ServerSettings.objects.update_or_create(pk=1, defaults={"rate_checkin": f"{CHECKIN_RATE}/min"})
    # The test's sweeps are then the only ones, so what they report adds up to what exists.
    Schedule.objects.filter(func="agents_app.tasks.sweep_due_scans").update(
        next_run=timezone.now() + timedelta(days=1))
    # The servers run the production settings, which cannot check the tests' fast MD5 hashes.
    operator = User.objects.create_superuser("operator")
    hasher = PBKDF2PasswordHasher()
    operator.password = hasher.encode(PASSWORD, hasher.salt())
    operator.save(update_fields=["password"])
    url = database_url()
    # The operator signs in with a password only: the second factor is tested in tests/server/accounts_app/signin/.
    web_env = server_env(url, REDFLAG_EVENT_STREAM_SECONDS="30", REDFLAG_REQUIRE_MFA="false")
    queue_env = server_env(url, REDFLAG_LOG_LEVEL="INFO")  # django-q2 logs each task it processes
    webs = [WebServer(web_env, tmp_path, name="web-a"), WebServer(web_env, tmp_path, name="web-b")]
    clusters = [Cluster(queue_env, tmp_path, name="q-1"), Cluster(queue_env, tmp_path, name="q-2")]
    started = time.monotonic()
    try:
        for cluster in clusters:
            cluster.start()
        for web in webs:
            Process.start(web)  # WebServer.start() would wait for each in turn; they boot in parallel
        for web in webs:
            web.wait_ready()
        for cluster in clusters:
            wait_until(lambda cluster=cluster: cluster_running(cluster), 60, f"{cluster.name} to run")
        print(f"four processes ready in {time.monotonic() - started:.1f} s")
        yield webs, clusters
    finally:
        stop_all(*webs, *clusters)


def stop_all(*processes) -> None:
    """Stop them all at once (a cluster stops its own workers); SIGKILL whatever is left after 20 s."""
    started = time.monotonic()

    def stop(process):
        if process.popen is None:
            return process.name, None
        process.stop(timeout=20)
        return process.name, round(time.monotonic() - started, 1)

    with ThreadPoolExecutor(len(processes)) as pool:
        print("stopped after (s):", dict(pool.map(stop, processes)))


def test_two_web_processes_and_two_clusters_share_one_database(deployment, agent):
    (web_a, web_b), (q_1, q_2) = deployment
    timings = {}

    started = time.monotonic()
    check_ins_alternate(agent, [web_a, web_b, web_a, web_b])
    timings["check-ins"] = time.monotonic() - started

    started = time.monotonic()
    command_queued_on_a_is_delivered_on_b_once(agent, web_a, web_b)
    timings["command"] = time.monotonic() - started

    started = time.monotonic()
    every_due_scan_is_created_once(q_1, q_2)
    timings["sweeps"] = time.monotonic() - started

    started = time.monotonic()
    latency = stream_on_a_shows_event_posted_through_b(agent, web_a, web_b)
    timings["stream"] = time.monotonic() - started

    check_in_limit_is_counted_across_processes(agent, web_a, web_b, done=6)
    print("timings:", {name: round(seconds, 2) for name, seconds in timings.items()},
          f"stream latency {latency:.2f} s")

    for process in (web_a, web_b, q_1, q_2):
        assert process.running, f"{process.name} died:\n{process.output()[-3000:]}"
        assert "Traceback" not in process.output(), f"{process.name}:\n{process.output()[-3000:]}"


def check_ins_alternate(agent, webs) -> None:
    seen = []
    for web in webs:
        check_in(web, agent)
        last_seen_at = Agent.objects.values_list("last_seen_at", flat=True).get(pk=agent.id)
        assert seen == [] or last_seen_at > seen[-1], (web.name, last_seen_at, seen)
        assert abs(last_seen_at.timestamp() - time.time()) < 10
        seen.append(last_seen_at)
    assert len(set(seen)) == len(webs)


def command_queued_on_a_is_delivered_on_b_once(agent, web_a, web_b) -> None:
    """The admin's "Reboot" action on A for two agents (one agent's action runs at once, without a bulk
    operation); a cluster runs the bulk operation; B delivers."""
    other = Agent.objects.create(hostname="multi-other", os_family="linux", machine_id_hash="f" * 64)
    admin = admin_login(web_a, "operator")
    changelist = f"{web_a.url}/admin/agents_app/agent/"
    response = admin.post(changelist, timeout=15, allow_redirects=False, headers={"Referer": changelist}, data={
        "csrfmiddlewaretoken": csrf_token(admin, changelist), "action": "reboot", "index": "0",
        "select_across": "0", "_selected_action": [str(agent.id), str(other.id)]})
    assert response.status_code == 302, response.text[-2000:]
    operation = BulkOperation.objects.get()
    assert operation.requested == 2
    assert response.headers["Location"].endswith(f"/admin/agents_app/bulkoperation/{operation.pk}/change/")

    reboot = wait_until(lambda: Command.objects.filter(agent_id=agent.id, command_type="reboot").first(),
                        30, "a cluster to run the bulk operation")
    assert reboot.status == "pending" and reboot.bulk_operation_id == operation.pk

    delivered = [command["id"] for command in check_in(web_b, agent)["commands"]]
    assert delivered.count(str(reboot.pk)) == 1
    reboot.refresh_from_db()
    assert reboot.status == "sent" and reboot.sent_at is not None
    again = [command["id"] for command in check_in(web_a, agent)["commands"]]
    assert str(reboot.pk) not in again
    assert Command.objects.filter(agent_id=agent.id, command_type="reboot").count() == 1


def check_in_limit_is_counted_across_processes(agent, web_a, web_b, *, done: int) -> None:
    """Neither process alone has seen CHECKIN_RATE check-ins, yet the next one over the limit is refused."""
    statuses = [post_check_in((web_a, web_b)[number % 2], agent).status_code
                for number in range(CHECKIN_RATE - done + 1)]
    assert statuses == [200] * (CHECKIN_RATE - done) + [429], statuses


def every_due_scan_is_created_once(q_1: Cluster, q_2: Cluster) -> None:
    """Both clusters sweep the same due rows at once; SKIP LOCKED splits them, nothing doubles."""
    fleet = Agent.objects.bulk_create(
        Agent(hostname=f"sweep-{number:03d}", os_family="linux",
              machine_id_hash=hashlib.sha256(f"sweep-{number}".encode()).hexdigest())
        for number in range(SWEEP_AGENTS)
    )
    AgentSubsystem.objects.bulk_create(
        AgentSubsystem(agent=fleet_agent, name=name, interval_minutes=60, next_run_at=None)
        for fleet_agent in fleet for name in SWEEP_SUBSYSTEMS
    )
    expected = SWEEP_AGENTS * len(SWEEP_SUBSYSTEMS)
    fleet_ids = [fleet_agent.pk for fleet_agent in fleet]
    assert AgentSubsystem.objects.due().filter(agent_id__in=fleet_ids).count() == expected

    names = [f"sweep-{uuid.uuid4().hex[:8]}-{number}" for number in range(SWEEP_TASKS)]
    for name in names:  # the ORM broker: one row each in the shared queue table
        async_task("tests.server.end_to_end.test_multi_process.timed_sweep", SWEEP_LIMIT, task_name=name)

    def finished():
        return Task.objects.filter(name__in=names).count() == SWEEP_TASKS

    wait_until(finished, 60, "both clusters to run the sweeps", interval=0.5)
    tasks = list(Task.objects.filter(name__in=names))
    assert all(task.success for task in tasks), [task.result for task in tasks if not task.success]

    sweeps = {task.name: task.result for task in tasks}
    commands = Command.objects.filter(agent_id__in=fleet_ids)
    assert commands.count() == expected
    assert sum(sweep["created"] for sweep in sweeps.values()) == expected
    doubled = commands.values("agent_id", "dedupe_key").annotate(n=Count("id")).filter(n__gt=1)
    assert not doubled.exists(), list(doubled[:5])
    assert set(commands.values_list("dedupe_key", flat=True)) == {
        "scan_updates:apt", "scan_docker:docker", "scan_storage", "scan_system"}
    now = timezone.now()
    assert not AgentSubsystem.objects.due(now).filter(agent_id__in=fleet_ids).exists()
    assert AgentSubsystem.objects.filter(agent_id__in=fleet_ids, next_run_at__gt=now + timedelta(minutes=50)
                                         ).count() == expected

    # Both clusters took part, with sweeps that created commands, and such sweeps of the two overlapped.
    ran_by = {name: cluster.name for cluster in (q_1, q_2) for name in names if f"({name})" in cluster.output()}
    assert len(ran_by) == SWEEP_TASKS, sorted(set(names) - set(ran_by))
    creating = [name for name, sweep in sweeps.items() if sweep["created"]]
    assert Counter(ran_by[name] for name in creating).keys() == {"q-1", "q-2"}, ran_by
    overlaps = sum(
        1 for one in creating for other in creating
        if ran_by[one] == "q-1" and ran_by[other] == "q-2"
        and sweeps[one]["started"] < sweeps[other]["stopped"] and sweeps[other]["started"] < sweeps[one]["stopped"]
    )
    assert overlaps > 0, "no sweep of q-1 ran while one of q-2 did"
    print(f"sweeps creating commands per cluster: {dict(Counter(ran_by[name] for name in creating))}; "
          f"{overlaps} q-1/q-2 pairs ran at the same time; "
          f"created {sorted((sweep['created'] for sweep in sweeps.values()), reverse=True)}")


def timed_sweep(limit: int) -> dict:
    """Run by the clusters' workers: one sweep of the scheduler, and when it ran."""
    started = time.time()
    created = schedule_due_scans(limit=limit)
    return {"created": created, "started": started, "stopped": time.time(), "pid": os.getpid()}


def stream_on_a_shows_event_posted_through_b(agent, web_a, web_b) -> float:
    """The auditor's stream on A; the agent's event posted through B; PostgreSQL's NOTIFY wakes A."""
    admin = admin_login(web_a, "operator")
    event_id = str(uuid.uuid4())
    posted_at = None
    with admin.get(f"{web_a.url}/audit/events/stream?agent={agent.id}", stream=True, timeout=(5, 10)) as stream:
        assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: ") and name == "ready":
                posted_at = time.monotonic()
                response = requests.post(f"{web_b.url}/api/v1/agents/{agent.id}/events", headers=signed(agent),
                                         timeout=15, json={"events": [{
                                             "id": event_id, "event_type": "agent_scan", "event_subtype": "success",
                                             "message": "scan finished, reported through B",
                                             "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]})
                assert response.status_code == 200 and response.json()["stored"] == 1, response.text
            elif line.startswith("data: ") and name == "system_event":
                record = json.loads(line[len("data: "):])
                if record["id"] == event_id:
                    latency = time.monotonic() - posted_at
                    assert record["message"] == "scan finished, reported through B"
                    assert latency < 5, latency
                    return latency
            elif name == "bye":
                break
    raise AssertionError("the stream on A never showed the event posted through B")


@pytest.mark.django_db(transaction=True)
def test_a_cluster_on_the_redis_broker_runs_a_task(tmp_path):
    """REDFLAG_Q_BROKER_URL=redis://… : the queue is a Redis list; the result still lands in the database."""
    redis = pytest.importorskip("redis")

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"needs a Redis server at {REDIS_URL}")
    env = server_env(database_url(), REDFLAG_Q_BROKER_URL=REDIS_URL, REDFLAG_LOG_LEVEL="INFO")
    cluster = Cluster(env, tmp_path, name="q-redis")
    broker = RedisBroker()
    broker.connection = client  # the test's own settings keep the ORM broker
    client.delete(broker.list_key)
    try:
        cluster.start()
        wait_until(lambda: cluster_running(cluster), 60, "the Redis cluster to run")
        name = f"redis-{uuid.uuid4().hex[:8]}"
        async_task("redflag.tasks.prune_request_nonces", task_name=name, broker=broker)
        task = wait_until(lambda: Task.objects.filter(name=name).first(), 30, "the cluster to run the task")
        assert task.success, task.result
        assert not OrmQ.objects.exists()  # nothing went through the database queue
        assert client.llen(broker.list_key) == 0
        assert f"({name})" in cluster.output()
    finally:
        stop_all(cluster)
        client.delete(broker.list_key)
