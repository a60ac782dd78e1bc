"""The fast channel for real: uvicorn serving redflag.asgi, the real agent as a service process.

1. An idle agent polling every 300 s holds GET /agents/{id}/wait; commands queued on the server
   (a scan, heartbeat on, another scan while in heartbeat mode) each reach it within 2 s, run
   once, and their results arrive. When the server's listening connection is killed, the next
   command still arrives within 2 s (the listener reconnects and wakes its waiters).
2. A server without the channel (Django's WSGI live server answers 404 for /wait): the agent
   says so once and keeps polling; a command arrives at its next poll.
3. An agent that never opens the channel (``run --poll-only``, as an older agent) works exactly
   as before against the server with the channel: commands at its polls, heartbeat mode
   included.
4. SQLite, the embedded setup: a command queued by another process reaches the agent within 2 s.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta

import psycopg
import pytest
from django.utils import timezone

from agents_app.models import Agent, Command
from agents_app.services.commands import command_create
from agents_app.services.wakeup import LISTENER_APPLICATION_NAME
from tests.server.end_to_end.test_agent import enroll_for_commands, register
from tests.server.processes import ROOT, Process, WebServer, database_url, server_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

REACH_SECONDS = 2.0
IDLE_POLL_SECONDS = 300
QUICK_POLL_SECONDS = 5


def agent_process(config_path, tmp_path, *extra: str, name: str = "agent") -> Process:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "agent_client", "--verbose", "--config", str(config_path), "run", *extra]
    return Process(name, argv, env, tmp_path)


def queue(agent, command_type, **params) -> Command:
    return command_create(agent=agent, command_type=command_type, params=params, source="web_ui")


def delivered_within(command: Command, timeout: float) -> float:
    """Seconds from now (just after the command was created) until the agent fetched it."""
    started = time.monotonic()
    wait_until(lambda: Command.objects.filter(pk=command.pk).exclude(status="pending").exists(), timeout,
               f"{command.command_type} delivered", interval=0.02)
    return time.monotonic() - started


def finished(command: Command) -> Command:
    wait_until(lambda: Command.objects.filter(pk=command.pk, status__in=("succeeded", "failed")).exists(), 60,
               f"{command.command_type} finished")
    return Command.objects.get(pk=command.pk)


@pytest.fixture
def uvicorn_server(tmp_path):
    web = WebServer(server_env(database_url()), tmp_path).start()
    yield web
    web.stop()


@pytest.fixture
def running_agent(tmp_path):
    started = []

    def start(server_url: str, *extra: str, poll_seconds: int) -> tuple[Agent, Process]:
        agent, config_path = enroll_for_commands(server_url, tmp_path, f"fast-{len(started)}")
        Agent.objects.filter(pk=agent.pk).update(poll_interval_seconds=poll_seconds, last_seen_at=None)
        process = agent_process(config_path, tmp_path, *extra).start()
        started.append(process)
        # Its first check-in (at start) learns the interval; from then on it is idle.
        wait_until(lambda: checkins(agent), 60, "the agent's first check-in")
        return Agent.objects.get(pk=agent.pk), process

    yield start
    for process in started:
        process.stop(timeout=10)


def checkins(agent: Agent):
    return Agent.objects.get(pk=agent.pk).last_seen_at


def test_commands_reach_an_idle_agent_within_two_seconds(uvicorn_server, running_agent):
    agent, process = running_agent(uvicorn_server.url, poll_seconds=IDLE_POLL_SECONDS)
    wait_until(lambda: "fast channel open" in process.output(), 30, "the agent to open the fast channel")

    scan = queue(agent, "scan_system")
    reach = {"scan_system": delivered_within(scan, 10)}
    assert finished(scan).status == "succeeded"

    heartbeat = queue(agent, "enable_heartbeat", duration_minutes=10)
    reach["enable_heartbeat"] = delivered_within(heartbeat, 10)
    assert finished(heartbeat).status == "succeeded"
    assert Agent.objects.get(pk=agent.pk).heartbeat_until > timezone.now() + timedelta(minutes=9)

    # In heartbeat mode (5 s polls) a command still arrives well before the next poll.
    storage = queue(agent, "scan_storage")
    reach["scan_storage"] = delivered_within(storage, 10)
    assert finished(storage).status == "succeeded"

    # The server loses its LISTEN connection: the hub reconnects and wakes its waiters, which
    # check in and come back; the next command still arrives at once.
    with psycopg.connect(database_url(), autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                               (f"{LISTENER_APPLICATION_NAME}/{uvicorn_server.popen.pid}",)).fetchall()
    assert killed == [(True,)]  # the server's one listening connection
    time.sleep(7)  # the listener's retry pause (5 s) and the agent's new hold
    system_again = queue(agent, "scan_system")
    reach["after_reconnect"] = delivered_within(system_again, 10)
    assert finished(system_again).status == "succeeded"

    assert all(seconds < REACH_SECONDS for seconds in reach.values()), reach
    # Run once: every command succeeded exactly once, nothing was left behind or repeated.
    assert sorted(Command.objects.filter(agent=agent).values_list("command_type", "status")) == sorted([
        ("scan_system", "succeeded"), ("enable_heartbeat", "succeeded"), ("scan_storage", "succeeded"),
        ("scan_system", "succeeded")])
    assert "Traceback" not in process.output()


def test_without_the_channel_on_the_server_the_agent_polls(live_server, running_agent):
    """Django's live server is WSGI: the wait path is a 404, as on a server from before the channel."""
    agent, process = running_agent(live_server.url, poll_seconds=QUICK_POLL_SECONDS)
    wait_until(lambda: "offers no fast channel (404)" in process.output(), 30, "the agent to find no channel")

    command = queue(agent, "scan_system")
    delivered_within(command, 3 * QUICK_POLL_SECONDS)
    assert finished(command).status == "succeeded"
    assert process.output().count("offers no fast channel") == 1  # said once, not at every poll
    assert "Traceback" not in process.output()


def test_an_agent_that_never_opens_the_channel_works_as_before(uvicorn_server, running_agent):
    agent, process = running_agent(uvicorn_server.url, "--poll-only", poll_seconds=QUICK_POLL_SECONDS)

    heartbeat = queue(agent, "enable_heartbeat", duration_minutes=10)
    delivered_within(heartbeat, 3 * QUICK_POLL_SECONDS)
    assert finished(heartbeat).status == "succeeded"
    # In heartbeat mode it now checks in every 5 s.
    seen = checkins(agent)
    wait_until(lambda: checkins(agent) > seen, 3 * QUICK_POLL_SECONDS, "a heartbeat check-in")

    command = queue(agent, "scan_system")
    delivered_within(command, 3 * QUICK_POLL_SECONDS)
    assert finished(command).status == "succeeded"
    assert "fast channel" not in process.output()


QUEUE_FROM_ANOTHER_PROCESS = """
from agents_app.models import Agent
from agents_app.services.commands import command_create
command_create(agent=Agent.objects.get(), command_type="enable_heartbeat", params={"duration_minutes": 10},
               source="web_ui_bulk")
"""


def test_on_sqlite_a_command_queued_by_another_process_reaches_the_agent(tmp_path):
    """The embedded setup: uvicorn on its own SQLite file; the command comes from another process
    (as a django-q2 worker's bulk operation would), whose wake-up cannot reach the server's loop:
    the server's read of newly queued commands wakes the agent instead."""
    data = tmp_path / "server-data"
    data.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_", "DATABASE_"))}
    env.update(DJANGO_SETTINGS_MODULE="redflag.settings", REDFLAG_DATA_DIR=str(data), REDFLAG_DEBUG="false",
               REDFLAG_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    manage("migrate", "--noinput")
    manage("createcachetable")
    token = manage("create_registration_token", "--label", "sqlite", "--seats", "1").strip()
    web = WebServer(env, tmp_path).start()
    agent = None
    try:
        config_path = tmp_path / "agent" / "config.json"
        registered = register(config_path, web.url, token)
        assert registered.returncode == 0, registered.stderr
        agent = agent_process(config_path, tmp_path).start()
        wait_until(lambda: "fast channel open" in agent.output(), 60, "the agent to open the fast channel")

        def statuses(where: str = "") -> list:
            with sqlite3.connect(data / "redflag.sqlite3") as db:
                return [row[0] for row in db.execute(f"SELECT status FROM agents_app_command {where}")]

        def status() -> str:
            return statuses("WHERE command_type = 'enable_heartbeat'")[0]

        # The scans due at enrolment are done: the agent is idle, holding the channel.
        wait_until(lambda: all(state in ("succeeded", "failed") for state in statuses()), 60, "the first scans")
        time.sleep(2)
        seen = len(agent.output())
        manage("shell", "--no-imports", "-c", QUEUE_FROM_ANOTHER_PROCESS)
        committed = time.monotonic()

        wait_until(lambda: status() != "pending", 10, "the command delivered", interval=0.02)
        reached = time.monotonic() - committed
        wait_until(lambda: status() == "succeeded", 60, "the command run")
        assert reached < REACH_SECONDS
        assert "woken by the server (queued)" in agent.output()[seen:]
    finally:
        if agent is not None:
            agent.stop(timeout=10)
        web.stop()
