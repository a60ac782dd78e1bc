"""The README's run command, for real: `manage.py run_portal` serves HTTP and runs django-q2.

A token made with the management command registers an agent over plain HTTP;
a replayed nonce gets 409; a wrong X-Machine-ID gets 403 and an event; Ctrl-C
stops the web server and the workers together.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import psycopg
import pytest
import requests
from django.db import connection

from events_app.models import SystemEvent
from tests.server.processes import ROOT, WebServer, database_url, server_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def portal_env(tmp_path):
    """Environment for a separate portal: its own data folder, and its own database on PostgreSQL runs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    env.update(REDFLAG_DATA_DIR=str(tmp_path), REDFLAG_ADMIN_PASSWORD="e2e-admin-pw", PYTHONUNBUFFERED="1",
               DJANGO_SETTINGS_MODULE="redflag.settings")
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        env.pop("DATABASE_URL", None)
        yield env
        return

    name = f"redflag_e2e_{uuid.uuid4().hex[:8]}"
    server_url = database_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    env["DATABASE_URL"] = f"{server_url}/{name}"
    yield env
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(env, *args) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "run_portal exited early"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def signed_headers(access_token: str, machine_id: str, nonce: str | None = None) -> dict:
    return {
        "Authorization": f"Bearer {access_token}",
        "X-Machine-ID": machine_id,
        "X-Request-Nonce": nonce or secrets.token_urlsafe(24),
        "X-Request-Timestamp": str(int(time.time())),
    }


def test_run_portal_end_to_end(portal_env):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    portal = subprocess.Popen(
        [sys.executable, "manage.py", "run_portal", "--addr", f"127.0.0.1:{port}"],
        cwd=ROOT, env=portal_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        wait_for(f"{base}/api/v1/health", portal)
        login_page = requests.get(f"{base}/admin/login/", timeout=5)
        assert login_page.status_code == 200 and "RedFlag" in login_page.text
        children = psutil.Process(portal.pid).children()
        assert len(children) == 2  # web server and django-q2 cluster

        secret = manage(portal_env, "create_registration_token", "--label", "e2e", "--seats", "2").strip()
        machine_id = hashlib.sha256(b"e2e-machine").hexdigest()
        registered = requests.post(f"{base}/api/v1/agents/register", json={
            "registration_token": secret, "machine_id": machine_id, "hostname": "e2e-host",
            "os_family": "linux", "agent_version": "0.1.0"}, timeout=10)
        assert registered.status_code == 201, registered.text
        body = registered.json()
        checkin = f"{base}/api/v1/agents/{body['agent_id']}/checkin"

        nonce = secrets.token_urlsafe(24)
        assert requests.post(checkin, json={}, headers=signed_headers(body["access_token"], machine_id, nonce),
                             timeout=10).status_code == 200
        replay = requests.post(checkin, json={}, headers=signed_headers(body["access_token"], machine_id, nonce),
                               timeout=10)
        assert replay.status_code == 409 and replay.json()["error"]["code"] == "replayed_nonce"
        stranger = hashlib.sha256(b"another-machine").hexdigest()
        mismatch = requests.post(checkin, json={}, headers=signed_headers(body["access_token"], stranger), timeout=10)
        assert mismatch.status_code == 403

        counts = manage(portal_env, "shell", "--no-imports", "-c", (
            "from events_app.models import SystemEvent as E;"
            "print(E.objects.filter(event_type='security_violation', metadata__reason='machine_mismatch').count(),"
            " E.objects.filter(event_type='server_startup').count())"
        )).split()
        assert counts[0] == "1" and int(counts[1]) >= 1

        # The django-q2 cluster started with it runs tasks.
        task_id = manage(portal_env, "shell", "--no-imports", "-c", (
            "from django_q.tasks import async_task;print(async_task('redflag.tasks.prune_request_nonces'))"
        )).strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = manage(portal_env, "shell", "--no-imports", "-c", (
                f"from django_q.models import Task;print(Task.objects.filter(id='{task_id}', success=True).exists())"
            )).strip()
            if done == "True":
                break
            time.sleep(1)
        assert done == "True", "the django-q2 cluster did not run the task"
    finally:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(portal.pid, signal.SIGINT)
        try:
            output, _ = portal.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(portal.pid, signal.SIGKILL)  # never leave a web server or cluster behind
            portal.communicate()
            raise
    assert "RedFlag admin: http://127.0.0.1:" in output
    assert "Created admin account 'admin'" in output
    assert "e2e-admin-pw" not in output
    assert "exited with an error" not in output
    assert portal.returncode == 0
    assert all(not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE for child in children)


@pytest.mark.django_db(transaction=True)
def test_production_command_with_several_uvicorn_workers(tmp_path):
    """The README's `uvicorn … --workers N`: each worker imports the app inside its event loop."""
    server = WebServer(server_env(database_url(), REDFLAG_ENV="production", REDFLAG_ALLOWED_HOSTS="127.0.0.1",
                                  REDFLAG_SECRET_KEY=secrets.token_urlsafe(64), REDFLAG_SSL_REDIRECT="false",
                                  REDFLAG_DB_POOL_SIZE="3", PGAPPNAME="redflag-pool-test"),
                       tmp_path, workers=2)
    try:
        server.start()
        deadline = time.monotonic() + 30
        while SystemEvent.objects.filter(event_type="server_startup").count() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        starts = SystemEvent.objects.filter(event_type="server_startup")
        assert {event.metadata["server"] for event in starts} == {"asgi"}
        assert len({event.metadata["pid"] for event in starts}) == 2
        assert requests.get(f"{server.url}/api/v1/health", timeout=5).json() == {"status": "ok", "database": "ok"}

        # Each ASGI request runs in a thread of its own; the per-process pool keeps the
        # connections to REDFLAG_DB_POOL_SIZE per worker however many requests come at once.
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(lambda _: requests.get(f"{server.url}/api/v1/health", timeout=30).status_code,
                                    range(200)))
        assert answers == [200] * 200
        with connection.cursor() as cursor:
            # Only the two workers' connections (libpq reads PGAPPNAME): a listener another test of
            # this process left lingering is not theirs.
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = 'redflag-pool-test'")
            (server_connections,) = cursor.fetchone()
        assert 1 <= server_connections <= 2 * 3
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()
