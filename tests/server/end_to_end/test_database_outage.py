"""Stop PostgreSQL while an agent polls: 503 with Retry-After, the agent backs off, all recovers by itself.

The test owns a private PostgreSQL cluster (initdb into a temporary folder,
loopback only, on a free port) so that it can really stop it:
``pg_ctl -m fast stop`` terminates every connection and refuses new ones,
which is what an outage looks like to the server's open connections (the
uvicorn process keeps them in a psycopg pool, checked on checkout). The
machine's shared PostgreSQL is never touched. A real uvicorn server and the
real agent run as subprocesses against it; the test never touches either of
them after the outage starts.

1. While PostgreSQL is down, every agent endpoint answers 503 with a numeric
   Retry-After and the JSON error body; no 500, no stack trace in a body or
   in the server's log, and the server keeps running.
2. The agent keeps running, waits at least the Retry-After before its next
   check-in, and keeps in its outbox the events queued during the outage.
3. When PostgreSQL is back, the server answers 200 again and refuses nothing
   more, the agent's next check-in lands and its outbox drains, each event
   stored exactly once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from agent_client.events import AGENT_SCAN, make_event
from agent_client.outbox import Outbox
from tests.server.conftest import host_facts
from tests.server.processes import ROOT, Process, WebServer, free_port, migrate, server_env, wait_until

REQUIRE_SYSTEM_TOOLS = os.environ.get("REDFLAG_REQUIRE_SYSTEM_TOOLS") == "1"
POSTGRES_LIBRARY = Path("/usr/lib/postgresql")
POLL_SECONDS = 5  # the agent's poll interval during the test (the protocol's minimum)
QUEUED_DURING_OUTAGE = 3


# --- a private PostgreSQL ------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest installed server version's bin folder; skip (fail in CI) when there is none."""
    candidates = sorted(
        (path for path in POSTGRES_LIBRARY.glob("*/bin") if (path / "initdb").exists() and (path / "pg_ctl").exists()),
        key=lambda path: float(path.parent.name) if path.parent.name.replace(".", "", 1).isdigit() else 0.0,
    )
    if candidates:
        return candidates[-1]
    message = f"PostgreSQL server binaries (initdb, pg_ctl) not installed under {POSTGRES_LIBRARY}/<version>/bin"
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail(message)
    pytest.skip(message)


class PrivatePostgres:
    """A throwaway cluster: trust auth, 127.0.0.1 only, its socket in its own folder.

    initdb and postgres refuse to run as root, so as root (CI) they run as the
    ``postgres`` user in a folder it owns.
    """

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="redflag-outage-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/redflag"
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}\n{self._log_tail()}"

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def create(self) -> None:
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        overrides = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                     "unix_socket_directories": f"'{self.socket_dir}'",
                     # A test's data: durability is not the point, speed is.
                     "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in overrides.items())
        self.start()
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "redflag")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, new ones refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            except (AssertionError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str, *params):
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module")
def postgres():
    cluster = PrivatePostgres(postgres_bin_dir())
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.destroy()


# --- helpers -----------------------------------------------------------------------


def agent_env() -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def agent_cli(config_path: Path, *args: str, timeout: float = 60,
              token: str | None = None) -> subprocess.CompletedProcess:
    env = {**agent_env(), **({"REDFLAG_REGISTRATION_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "agent_client", "--config", str(config_path), *args],
                          cwd=config_path.parent.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def outbox_items(config_path: Path) -> int:
    status = agent_cli(config_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["outbox_items"]


def last_seen(postgres: PrivatePostgres, agent_id: str):
    return postgres.query("SELECT last_seen_at FROM agents_app_agent WHERE id = %s", uuid.UUID(agent_id))[0][0]


def unfinished_commands(postgres: PrivatePostgres, agent_id: str) -> int:
    return postgres.query("SELECT COUNT(*) FROM agents_app_command WHERE agent_id = %s AND status = ANY(%s)",
                          uuid.UUID(agent_id), ["pending", "sent", "running"])[0][0]


def assert_unavailable(response: requests.Response, what: str) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text[:500]}"
    assert re.fullmatch(r"[1-9]\d*", response.headers.get("Retry-After", "")), f"{what}: {response.headers}"
    assert response.headers["Content-Type"].startswith("application/json"), what
    assert response.json()["error"]["code"] == "unavailable", f"{what}: {response.text}"
    for leak in ("Traceback", 'File "', "psycopg", "OperationalError", "127.0.0.1"):
        assert leak not in response.text, f"{what} leaks {leak!r}: {response.text}"


# Everything the server may print while its database is down: a warning per
# refused request, Django's one-line request log for a 5xx answer, and the
# connection pool's warnings: a connection the shutdown closed is discarded,
# and each failed reconnection in the background (with psycopg's hint on a
# second line); the fast channel's listener saying it lost the database (the
# agents poll until it is back). Never a traceback.
ACCEPTABLE_OUTAGE_LOG_RECORD = re.compile(
    r"\S+ \S+ (WARNING redflag\.\S+: database unavailable: \w+"
    r"|ERROR django\.request: Service Unavailable: /api/v1/\S*"
    r"|WARNING psycopg\.pool: discarding closed connection: <psycopg\.Connection \[BAD\] at 0x[0-9a-f]+>"
    r"|WARNING psycopg\.pool: error connecting in '[\w-]+': connection failed: [^\n]*(\n\t[^\n]*)*"
    r"|WARNING agents_app\.services\.wakeup: wake-up listener lost \(\w+\); agents poll until it reconnects)"
)
NEXT_LOG_RECORD = re.compile(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )")


def log_records(text: str) -> list:
    """The server's log as records: a record's continuation lines stay with it."""
    return [record for record in NEXT_LOG_RECORD.split(text.strip("\n")) if record.strip()]


# The agent runs with --verbose: every line starts with HH:MM:SS.
CHECKIN = re.compile(r"^(\d\d:\d\d:\d\d) debug \S+: POST /api/v1/agents/\S+/checkin -> (\d{3})$", re.MULTILINE)
RETRY_WAIT = re.compile(r"server answered 503 \(unavailable\); retrying in ([\d.]+) s")


def clock_seconds(stamp: str) -> int:
    hours, minutes, seconds = (int(part) for part in stamp.split(":"))
    return hours * 3600 + minutes * 60 + seconds


# --- the tests ---------------------------------------------------------------------


def test_postgresql_outage_gives_503_the_agent_backs_off_and_everything_recovers(postgres, tmp_path):
    started = time.monotonic()
    env = server_env(postgres.url)
    migrate(env)
    manage(env, "createcachetable")
    secret = manage(env, "create_registration_token", "--label", "outage", "--seats", "2").strip()
    server = WebServer(env, tmp_path)
    config_path = tmp_path / "agent" / "config.json"
    agent = Process("agent", [sys.executable, "-m", "agent_client", "--config", str(config_path), "--verbose", "run"],
                    agent_env(), tmp_path)
    try:
        server.start()
        registered = agent_cli(config_path, "register", "--server", server.url, "--capabilities", "system,storage",
                               token=secret)
        assert registered.returncode == 0, registered.stderr
        config = json.loads(config_path.read_text())
        agent_id = config["agent_id"]
        postgres.query("UPDATE agents_app_agent SET poll_interval_seconds = %s WHERE id = %s",
                       POLL_SECONDS, uuid.UUID(agent_id))
        registered_seen = last_seen(postgres, agent_id)
        agent.start()
        # Quiet before the outage: checked in, the scheduler's first scans done and reported, nothing queued.
        wait_until(lambda: last_seen(postgres, agent_id) > registered_seen
                   and not unfinished_commands(postgres, agent_id) and outbox_items(config_path) == 0,
                   30, "the agent's first check-in and its first scans reported")
        setup_seconds = time.monotonic() - started

        # --- PostgreSQL goes away ---------------------------------------------------
        seen_before_outage = last_seen(postgres, agent_id)
        server_log_offset = len(server.output())
        agent_log_offset = len(agent.output())
        postgres.stop()
        outage_started = time.monotonic()

        headers = {
            "Authorization": f"Bearer {config['access_token']}",
            "X-Machine-ID": config["machine_id_hash"],
            "X-Request-Timestamp": str(int(time.time())),
        }
        agent_url = f"{server.url}/api/v1/agents/{agent_id}"
        requests_during_outage = {
            "health": lambda: requests.get(f"{server.url}/api/v1/health", timeout=10),
            "check-in": lambda: requests.post(f"{agent_url}/checkin", json={"agent_version": "0.1.0"},
                                              headers={**headers, "X-Request-Nonce": uuid.uuid4().hex}, timeout=10),
            "system report": lambda: requests.post(f"{agent_url}/reports/system", json={"system": {}},
                                                   headers={**headers, "X-Request-Nonce": uuid.uuid4().hex},
                                                   timeout=10),
            "events": lambda: requests.post(f"{agent_url}/events", json={"events": []},
                                            headers={**headers, "X-Request-Nonce": uuid.uuid4().hex}, timeout=10),
            "register": lambda: requests.post(f"{server.url}/api/v1/agents/register",
                                              json={"registration_token": secret, "machine_id": "0" * 64,
                                                    **host_facts(hostname="during-outage")},
                                              headers={"X-Request-Nonce": uuid.uuid4().hex,
                                                       "X-Request-Timestamp": str(int(time.time()))}, timeout=10),
            "renew": lambda: requests.post(f"{server.url}/api/v1/agents/renew",
                                           json={"refresh_token": config["refresh_token"]},
                                           headers={"X-Machine-ID": config["machine_id_hash"],
                                                    "X-Request-Nonce": uuid.uuid4().hex,
                                                    "X-Request-Timestamp": str(int(time.time()))}, timeout=10),
        }
        # At once, as a fleet would: each may wait out the connection pool's timeout before its 503.
        with ThreadPoolExecutor(max_workers=len(requests_during_outage)) as pool:
            answers = {what: pool.submit(send) for what, send in requests_during_outage.items()}
        for what, answer in answers.items():
            assert_unavailable(answer.result(), what)

        # Events the agent queues while the server cannot store them (as the CLI does from another process).

        outbox = Outbox.beside(config_path)
        kept = [make_event(AGENT_SCAN, "info", f"queued during the outage ({number})", metadata={"number": number})
                for number in range(QUEUED_DURING_OUTAGE)]
        for event in kept:
            assert outbox.add_event(event)

        # The agent's check-in fails, and it says it will wait out the Retry-After (15 s or more).
        wait_until(lambda: RETRY_WAIT.search(agent.output()[agent_log_offset:]), 30, "a failed check-in by the agent")
        waits = [float(value) for value in RETRY_WAIT.findall(agent.output()[agent_log_offset:])]
        assert min(waits) >= 15, agent.output()[agent_log_offset:]
        assert agent.running, agent.output()[-3000:]
        queued = {item.item_id: item.payload for item in outbox.pending()}
        assert set(queued) == {event["id"] for event in kept}, queued
        assert outbox_items(config_path) == QUEUED_DURING_OUTAGE  # as `status --json` reports it

        assert server.running, server.output()[-3000:]
        outage_log = server.output()[server_log_offset:]
        unexpected = [record for record in log_records(outage_log)
                      if not ACCEPTABLE_OUTAGE_LOG_RECORD.fullmatch(record)]
        assert not unexpected, unexpected[:5]
        assert re.search(r"WARNING redflag\.\S+: database unavailable", outage_log), outage_log[-3000:]
        outage_seconds = time.monotonic() - outage_started

        # --- PostgreSQL is back; nobody touches the server or the agent --------------
        postgres.start()
        back = time.monotonic()
        wait_until(lambda: _answers(f"{server.url}/api/v1/health") == 200, 10, "the server's health check answers 200")
        server_recovered = time.monotonic() - back
        recovered_log_offset = len(server.output())
        ids = [uuid.UUID(event["id"]) for event in kept]

        def stored() -> int:
            return postgres.query("SELECT COUNT(*) FROM events_app_systemevent WHERE id = ANY(%s)", ids)[0][0]

        wait_until(lambda: stored() == len(ids) and outbox_items(config_path) == 0, 45,
                 "the agent's outbox drained into the database", interval=0.5)
        agent_recovered = time.monotonic() - back
        # It did wait: its next check-in came at least the announced wait after the refused one.
        checkins = [(clock_seconds(stamp), int(status))
                    for stamp, status in CHECKIN.findall(agent.output()[agent_log_offset:])]
        landed = next(index for index, (_, status) in enumerate(checkins) if status == 200)
        assert landed > 0 and all(status == 503 for _, status in checkins[:landed]), checkins
        spacing = [(later - earlier) % 86400 for (earlier, _), (later, _) in zip(checkins, checkins[1:landed + 1])]
        assert min(spacing) >= min(waits) - 1, (spacing, waits)  # the log has whole seconds
        assert last_seen(postgres, agent_id) > seen_before_outage
        # Exactly once: no copy under another id, and nothing sent before the outage came again.
        events_of_agent = "SELECT COUNT(*) FROM events_app_systemevent WHERE agent_id = %s AND "
        assert postgres.query(events_of_agent + "message LIKE %s", uuid.UUID(agent_id),
                              "queued during the outage%")[0][0] == len(ids)
        assert postgres.query(events_of_agent + "event_type = %s", uuid.UUID(agent_id), "agent_startup")[0][0] == 1
        assert agent.running and server.running

        # Once the server answered 200 it refused nothing more: no request met a connection the restart killed.
        after = server.output()[recovered_log_offset:]
        assert "Service Unavailable" not in after and "Traceback" not in after, after[-5000:]
        assert "Internal Server Error" not in server.output(), server.output()[-5000:]
        assert "Traceback" not in agent.output(), agent.output()[-5000:]
        print(f"\nsetup {setup_seconds:.1f} s, outage {outage_seconds:.1f} s, server back after "
              f"{server_recovered:.1f} s, agent drained after {agent_recovered:.1f} s; "
              f"agent waited {waits} s; check-ins {spacing} s apart")
    finally:
        for process in (agent, server):
            if process.popen is not None:
                process.stop(timeout=10)


def _answers(url: str) -> int:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return 0
