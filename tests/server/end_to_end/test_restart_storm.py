"""A restart storm: a whole fleet checking in at the same moment.

A real server process (uvicorn, one worker, a pool of one database connection)
and 40 agents, each the agent's own transport (``agent_client.transport.Client``
with its retry policy) in a thread of its own, all checking in at once while the
database is slow (the test holds a lock the first check-in waits on). The server
sheds what it cannot serve with 503 and a Retry-After picked per answer; no
request fails with anything else; the agents come back spread out, not in step,
and every one of them checks in within the test.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
import requests
from django.test import Client as DjangoClient
from django.utils import timezone

from agent_client.config import AgentConfig
from agent_client.transport import Client
from agents_app.models import Agent
from redflag.models import ServerSettings
from tests.server.conftest import host_facts, machine_hash
from tests.server.processes import WebServer, database_url, server_env
from tokens_app.services import token_create

AGENTS = 40


def enroll_fleet(count: int) -> list[AgentConfig]:
    settings_row = ServerSettings.current()
    settings_row.rate_registration = "10000/min"
    settings_row.save()
    ServerSettings.forget()
    _, secret = token_create(label="storm", max_seats=count, expires_in=timedelta(hours=1))
    fleet = []
    for index in range(count):
        machine = machine_hash(f"storm-{index}")
        body = DjangoClient().post("/api/v1/agents/register", {
            "registration_token": secret, "machine_id": machine, **host_facts(hostname=f"storm-{index:02d}")},
            content_type="application/json").json()
        fleet.append(AgentConfig(agent_id=body["agent_id"], machine_id_hash=machine,
                                 access_token=body["access_token"],
                                 access_token_expires_at=body["access_token_expires_at"],
                                 refresh_token=body["refresh_token"],
                                 refresh_token_expires_at=body["refresh_token_expires_at"]))
    return fleet


class Attempts:
    """Every HTTP answer any agent got: (seconds since the storm, agent, status, Retry-After, body code)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rows: list[tuple[float, str, int, str | None, str | None]] = []
        self.lock = threading.Lock()

    def session_for(self, agent_id: str) -> requests.Session:
        session = requests.Session()

        def record(response, *args, **kwargs):
            code = None
            if response.status_code >= 400:
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "not-json"
            with self.lock:
                self.rows.append((time.monotonic() - self.started, agent_id, response.status_code,
                                  response.headers.get("Retry-After"), code))

        session.hooks["response"].append(record)
        return session


@pytest.mark.django_db(transaction=True)
def test_a_fleet_returning_at_once_is_shed_then_spread_out(tmp_path):
    url = database_url()
    fleet = enroll_fleet(AGENTS)
    Agent.objects.update(last_seen_at=None)
    server = WebServer(server_env(url, REDFLAG_DB_POOL_SIZE="1", REDFLAG_DB_POOL_TIMEOUT="1"), tmp_path).start()
    attempts = Attempts()
    outcomes: dict[str, str] = {}

    def agent_runs(config: AgentConfig) -> None:
        config.server_url = server.url
        client = Client(config, machine_id_hash=config.machine_id_hash, session=attempts.session_for(config.agent_id))
        try:
            client.checkin({"agent_version": "0.1.0", "metrics": {"cpu_percent": 1.0}})
            outcomes[config.agent_id] = "checked in"
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            outcomes[config.agent_id] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=agent_runs, args=(config,)) for config in fleet]
    try:
        with psycopg.connect(url) as blocker:
            # The database is slow: the first check-in holds the one pooled connection while it waits.
            blocker.execute("LOCK TABLE agents_app_agent IN SHARE MODE")
            attempts.started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(3)
            blocker.rollback()
        for thread in threads:
            thread.join(timeout=120)
        health = requests.get(f"{server.url}/api/v1/health", timeout=10)
    finally:
        server.stop()

    assert outcomes == {config.agent_id: "checked in" for config in fleet}
    assert Agent.objects.filter(last_seen_at__gte=timezone.now() - timedelta(minutes=5)).count() == AGENTS
    assert health.status_code == 200

    statuses = {status for _, _, status, _, _ in attempts.rows}
    assert statuses <= {200, 429, 503}, attempts.rows
    shed = [row for row in attempts.rows if row[2] == 503]
    assert len(shed) >= AGENTS // 2, "the storm was not shed"
    assert all(code == "unavailable" and retry_after and 15 <= int(retry_after) <= 30
               for _, _, _, retry_after, code in shed), shed
    # Retry-After is picked per answer, so the shed agents come back spread out, not in step.
    assert len({retry_after for _, _, _, retry_after, _ in shed}) >= 5
    returns = sorted(at for at, agent, status, _, _ in attempts.rows
                     if status == 200 and any(row[1] == agent and row[2] == 503 for row in shed))
    assert returns and returns[0] >= 15
    assert returns[-1] - returns[0] >= 8
    busiest_two_seconds = max(sum(1 for other in returns if at <= other < at + 2) for at in returns)
    assert busiest_two_seconds <= len(returns) // 2, returns
    output = server.output()
    assert "Traceback" not in output and "Internal Server Error" not in output, output[-3000:]
