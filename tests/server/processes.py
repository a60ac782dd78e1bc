"""Real server processes for the crash, outage and multi-process tests.

A web server (uvicorn, as the README's production section runs it) or a
django-q2 cluster started as a subprocess against the same database the test
reads, sharing the test's data folder (so its signing key), killed as a
process group so nothing outlives the test.

These tests need PostgreSQL: the subprocess must see the rows the test
commits, and the test must see the subprocess's. ``database_url()`` gives the
URL of the test database pytest-django created, or skips on SQLite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import requests
from django.conf import settings
from django.core.management.commands.createcachetable import Command as CreateCacheTable
from django.db import connection

from redflag import settings as production

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")


def database_url() -> str:
    """The URL of the test database pytest-django created (PostgreSQL only)."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgresql://… (the PostgreSQL pass of .ci/run)")
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    ensure_cache_table()
    return f"postgresql://{user}{password}@{host}:{port}/{params['NAME']}"


def ensure_cache_table() -> None:
    """The production settings keep rate-limit counters in a table the test settings never create."""
    assert settings.CACHES != production.CACHES  # tests use LocMem; the subprocess uses the table
    command = CreateCacheTable()
    command.verbosity = 0
    command.create_table("default", production.CACHES["default"]["LOCATION"], dry_run=False)


def server_env(database: str, **extra: str) -> dict:
    """Environment for a subprocess of the server: the real settings, the test's data folder and key."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="redflag.settings",
        DATABASE_URL=database,
        REDFLAG_DATA_DIR=str(settings.DATA_DIR),
        REDFLAG_DEBUG="false",
        REDFLAG_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Process:
    """A subprocess in its own session, with its output in a file the test can read."""

    def __init__(self, name: str, argv: list, env: dict, log_dir: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: Optional[subprocess.Popen] = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs, as in a crash."""
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, signum: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            self.popen.wait(timeout=30)


class WebServer(Process):
    """uvicorn serving redflag.asgi on a free loopback port."""

    def __init__(self, env: dict, log_dir: Path, *, name: str = "web", workers: int = 1, port: int = 0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "uvicorn", "redflag.asgi:application", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        super().__init__(name, argv, env, log_dir)

    def start(self, timeout: float = 60) -> WebServer:
        super().start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not answer within {timeout} s:\n{self.output()[-3000:]}")

    def restart(self, timeout: float = 60) -> WebServer:
        """Start again on the same port (after kill() or stop())."""
        return self.start(timeout)


class Cluster(Process):
    """A django-q2 cluster (``manage.py qcluster``)."""

    def __init__(self, env: dict, log_dir: Path, *, name: str = "qcluster"):
        super().__init__(name, [sys.executable, "manage.py", "qcluster"], env, log_dir)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the main process only: it stops its workers itself (a SIGTERM to
        every process of the group at once leaves it waiting, as systemd's default does)."""
        if self.popen is None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever of the group is left


def migrate(env: dict) -> None:
    result = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
