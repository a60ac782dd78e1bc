"""The server is SIGKILLed mid-write; nothing is half-written and the agent's retry lands once.

A real uvicorn process serves a real agent (``python -m agent_client run
--once``). The kill points are chosen without any hook in the server: the test
holds a PostgreSQL lock on a second connection (``LOCK TABLE`` on the table the
chosen statement writes, or ``SELECT … FOR UPDATE`` on the row it updates),
waits until pg_stat_activity shows the server's backend waiting on it with that
statement (so the earlier statements of the transaction have run), kills the
server, releases the lock and reads the database. Then the server restarts on
the same port and the agent sends again from its durable outbox.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from agent_client.config import load as load_agent_config
from agent_client.executor import LEDGER_FILE_NAME
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_UPDATES_REPORT, Outbox
from agent_client.transport import Client, RetryPolicy
from agents_app.models import AgentSubsystem, Command, IngestedReport, PackageUpdate
from agents_app.services.commands import command_create
from events_app.models import SystemEvent
from tests.server.agents_app.services.test_reports import package
from tests.server.end_to_end.test_agent import enroll_for_commands, run_agent
from tests.server.processes import ROOT, WebServer, database_url, server_env

pytestmark = pytest.mark.django_db(transaction=True)

REPORT_ID = "crash-report-0001"
LATER_REPORT_ID = "crash-report-0002"
WAIT_SECONDS = 30


# --- the pieces -----------------------------------------------------------------------


@pytest.fixture
def database(transactional_db) -> str:
    return database_url()


@pytest.fixture
def server(database, tmp_path):
    web = WebServer(server_env(database), tmp_path)
    try:
        yield web.start()
    finally:
        web.kill()


@pytest.fixture
def enrolled(server, tmp_path):
    """A real agent registered with the server; it only runs what the test queues."""
    return enroll_for_commands(server.url, tmp_path, "crash")


def start_agent(config_path: Path) -> subprocess.Popen:
    """``run --once`` in the background, as test_agent.run_agent runs it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "agent_client", "--config", str(config_path), "run", "--once"],
        cwd=str(config_path.parent.parent), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@contextmanager
def holding(database: str, sql: str, params: tuple = ()):
    """Run ``sql`` in an open transaction on a second connection; yields its backend pid; always rolls back."""
    holder = psycopg.connect(database)
    try:
        holder.execute(sql, params)
        yield holder.info.backend_pid
    finally:
        holder.rollback()
        holder.close()


def blocked_statement(holder_pid: int, agent_process: subprocess.Popen) -> tuple[int, str]:
    """(pid, query) of the backend waiting on the holder's lock, once there is one."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                           " AND %s = ANY(pg_blocking_pids(pid))", [holder_pid])
            row = cursor.fetchone()
        if row:
            return row
        if agent_process.poll() is not None:
            raise AssertionError(f"the agent finished without blocking:\n{agent_process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no server statement waited on the lock")


def wait_gone(pid: int) -> None:
    """The killed server's backend rolls back once it finds its client gone; terminate it if it lingers."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() is None:
                return
            time.sleep(0.05)
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def kill_at(server: WebServer, database: str, lock_sql: str, lock_params: tuple, statement: tuple[str, ...],
            config_path: Path) -> subprocess.CompletedProcess:
    """Run the agent until the server blocks behind the lock on the statement with these parts; SIGKILL it there.

    Returns the agent's finished run (it fails: the server is gone and stays gone until restarted).
    """
    agent_process = start_agent(config_path)
    try:
        with holding(database, lock_sql, lock_params) as holder_pid:
            pid, query = blocked_statement(holder_pid, agent_process)
            assert all(part in query for part in statement), f"blocked on the wrong statement: {query[:300]}"
            server.kill()
        wait_gone(pid)
        stdout, stderr = agent_process.communicate(timeout=60)
    finally:
        if agent_process.poll() is None:
            agent_process.kill()
            agent_process.wait()
    return subprocess.CompletedProcess(agent_process.args, agent_process.returncode, stdout, stderr)


def queued(config_path: Path, kind: str) -> list[dict]:
    return [item.payload for item in Outbox.beside(config_path).pending() if item.kind == kind]


def agent_client(config_path: Path) -> Client:
    config = load_agent_config(config_path)
    return Client(config, machine_id_hash=config.machine_id_hash, config_path=config_path,
                  retry=RetryPolicy(max_attempts=1))


def table(model) -> str:
    return f'"{model._meta.db_table}"'


# --- (a) report ingestion ----------------------------------------------------------------


def apt_report() -> dict:
    return {"report_id": REPORT_ID, "package_type": "apt", "not_checked": [],
            "updates": [package("openssl", is_security=True, severity="important"), package("curl"),
                        package("bash")]}


def old_row_lock(agent, package_type: str) -> tuple[str, tuple]:
    row = PackageUpdate.objects.get(agent=agent, package_type=package_type, name="old-package")
    return f"SELECT 1 FROM {table(PackageUpdate)} WHERE id = %s FOR UPDATE", (row.pk,)


CLOSING = (f"UPDATE {table(PackageUpdate)}", "SET \"status\" = 'closed'")
INGEST_KILL_POINTS = {
    # name: (lock taken by the test, the server statement that waits on it)
    "claiming the report id": (lambda agent: (f"LOCK TABLE {table(IngestedReport)} IN ACCESS EXCLUSIVE MODE", ()),
                               (f"INSERT INTO {table(IngestedReport)}",)),
    "upserting the packages": (lambda agent: (f"LOCK TABLE {table(PackageUpdate)} IN ACCESS EXCLUSIVE MODE", ()),
                               ("jsonb_to_recordset",)),
    "closing absent packages": (lambda agent: old_row_lock(agent, "apt"), CLOSING),
    "recording the scan event": (lambda agent: (f"LOCK TABLE {table(SystemEvent)} IN ACCESS EXCLUSIVE MODE", ()),
                                 (f"INSERT INTO {table(SystemEvent)}", "'agent_scan'")),
    # The report commits and is acknowledged; the kill comes during the next one (a dnf report closing its old row).
    "after commit": (lambda agent: old_row_lock(agent, "dnf"), CLOSING),
}


def landed(agent, report_id: str = REPORT_ID) -> dict:
    """Everything one report leaves behind, counted."""
    return {
        "claims": IngestedReport.objects.filter(agent=agent, report_id=report_id).count(),
        "packages": sorted(PackageUpdate.objects.filter(agent=agent, last_report_id=report_id)
                           .values_list("name", flat=True)),
        "old package": PackageUpdate.objects.get(agent=agent, package_type="apt", name="old-package").status,
        "events": SystemEvent.objects.filter(event_type="agent_scan", metadata__report_id=report_id).count(),
    }


NOTHING = {"claims": 0, "packages": [], "old package": "pending", "events": 0}
ONCE = {"claims": 1, "packages": ["bash", "curl", "openssl"], "old package": "closed", "events": 1}


@pytest.mark.parametrize("kill_point", INGEST_KILL_POINTS)
def test_report_killed_mid_ingestion_is_all_or_nothing_and_its_retry_lands_once(server, database, enrolled,
                                                                               kill_point):
    """The agent's outbox holds an APT report; the server dies at ``kill_point`` while ingesting it.

    Before the commit nothing of it exists and the agent keeps it; after the commit all of it exists
    (and the agent, crashing before it deletes the acknowledged report, sends it again). Either way the
    next run lands it exactly once, and one more send is acknowledged as a duplicate.
    """
    agent, config_path = enrolled
    for package_type in ("apt", "dnf"):  # a previous scan's row: the report closes it
        PackageUpdate.objects.create(agent=agent, package_type=package_type, name="old-package",
                                     current_version="1", available_version="2", last_report_id="earlier")
    outbox = Outbox.beside(config_path)
    # What the executor queues after a scan (agent_client/executor.py CommandExecutor._scan).
    outbox.add(KIND_UPDATES_REPORT, apt_report(), item_id=f"updates-{REPORT_ID}")
    after_commit = kill_point == "after commit"
    if after_commit:
        later = {"report_id": LATER_REPORT_ID, "package_type": "dnf", "not_checked": [], "updates": [package("vim")]}
        outbox.add(KIND_UPDATES_REPORT, later, item_id=f"updates-{LATER_REPORT_ID}")
    lock, statement = INGEST_KILL_POINTS[kill_point]

    crashed = kill_at(server, database, *lock(agent), statement, config_path)

    assert crashed.returncode == 1, crashed.stderr
    if after_commit:
        assert landed(agent) == ONCE
        assert not IngestedReport.objects.filter(report_id=LATER_REPORT_ID).exists()
        assert PackageUpdate.objects.get(agent=agent, package_type="dnf", name="old-package").status == "pending"
        # The agent crashes too, before deleting the acknowledged report: it will send it again.
        assert [report["report_id"] for report in queued(config_path, KIND_UPDATES_REPORT)] == [LATER_REPORT_ID]
        outbox.add(KIND_UPDATES_REPORT, apt_report(), item_id=f"updates-{REPORT_ID}")
    else:
        assert landed(agent) == NOTHING
        assert queued(config_path, KIND_UPDATES_REPORT) == [apt_report()]  # kept, with the same id

    server.restart()
    retried = run_agent(config_path, "run", "--once")
    assert retried.returncode == 0, retried.stderr
    assert landed(agent) == ONCE
    assert Outbox.beside(config_path).count() == 0
    if after_commit:
        assert IngestedReport.objects.filter(report_id=LATER_REPORT_ID).count() == 1

    # Once more: acknowledged as a duplicate, nothing changes.
    client = agent_client(config_path)
    again = client.request("POST", client.agent_path("reports/updates"), apt_report()).body
    assert again["duplicate"] is True
    assert landed(agent) == ONCE
    assert "Traceback" not in server.output()


# --- (b) command delivery and result ----------------------------------------------------------


def ledger(config_path: Path) -> list[str]:
    path = config_path.parent / LEDGER_FILE_NAME
    if not path.exists():
        return []
    with sqlite3.connect(str(path)) as ledger_db:
        return [row[0] for row in ledger_db.execute("SELECT command_id FROM executed")]


def completions(command) -> int:
    return SystemEvent.objects.filter(event_type="command_completed", metadata__command_id=str(command.pk)).count()


def replay_refusals(command) -> int:
    return SystemEvent.objects.filter(event_type="security_violation", metadata__reason="replayed",
                                      metadata__command_id=str(command.pk)).count()


def test_kill_while_delivering_a_command_leaves_it_pending_and_it_runs_once(server, database, enrolled):
    """The check-in's delivery UPDATE waits on the command row: killed there, the agent never got it."""
    agent, config_path = enrolled
    command = command_create(agent=agent, command_type="scan_system", params={}, source="api")

    crashed = kill_at(server, database, f"SELECT 1 FROM {table(Command)} WHERE id = %s FOR UPDATE", (command.pk,),
                      (f"UPDATE {table(Command)}", "SET \"status\" = 'sent'"), config_path)

    assert crashed.returncode == 1, crashed.stderr
    command.refresh_from_db()
    assert (command.status, command.sent_at) == ("pending", None)
    assert ledger(config_path) == []

    server.restart()
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    command.refresh_from_db()
    assert command.status == "succeeded"
    assert ledger(config_path) == [str(command.pk)]
    assert completions(command) == 1
    assert Outbox.beside(config_path).count() == 0


@pytest.mark.parametrize("redelivered", [False, True], ids=["kept sent", "delivered again"])
def test_kill_between_delivery_and_result_lands_the_result_once_and_never_reruns(server, database, enrolled,
                                                                                redelivered):
    """The result's transaction claims the command, then waits on the subsystem row it updates: killed there.

    The command was delivered and run; the server never recorded its result. After the restart the
    server keeps it ``sent`` (only pending commands are delivered) and the agent's outbox sends the
    result, which lands once. A server that delivers the same signed command again (forced here, as
    if its delivery mark were lost) gets it refused by the agent's ledger, and the result still lands once.
    """
    agent, config_path = enrolled
    command = command_create(agent=agent, command_type="scan_system", params={}, source="api")
    subsystem = AgentSubsystem.objects.get(agent=agent, name="system")

    crashed = kill_at(server, database, f"SELECT 1 FROM {table(AgentSubsystem)} WHERE id = %s FOR UPDATE",
                      (subsystem.pk,), (f"UPDATE {table(AgentSubsystem)}",), config_path)

    assert crashed.returncode == 1, crashed.stderr
    command.refresh_from_db()
    # Delivered and executed, but the half-applied result rolled back whole.
    assert command.status == "sent" and command.completed_at is None and command.output == ""
    assert completions(command) == 0
    assert AgentSubsystem.objects.get(pk=subsystem.pk).last_run_at is None
    assert ledger(config_path) == [str(command.pk)]
    assert [result["command_id"] for result in queued(config_path, KIND_COMMAND_RESULT)] == [str(command.pk)]
    if redelivered:
        Command.objects.filter(pk=command.pk).update(status="pending", sent_at=None)

    server.restart()
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    command.refresh_from_db()
    assert command.status == "succeeded" and command.output == "system facts collected"
    assert completions(command) == 1
    assert AgentSubsystem.objects.get(pk=subsystem.pk).last_run_at is not None
    # Run once: one ledger entry, and a redelivery refused rather than run (it queued no second result).
    assert ledger(config_path) == [str(command.pk)]
    assert replay_refusals(command) == (1 if redelivered else 0)
    assert Outbox.beside(config_path).count() == 0
    assert "Traceback" not in server.output()
