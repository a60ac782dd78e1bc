"""The real agent, as a subprocess, against a live server over real HTTP.

``python -m agent_client register`` then ``run --once``; the assertions read
the server's database. Also: a refused registration is kept in the agent's
outbox and arrives once the agent is registered; a refused access token is
renewed with the rotated refresh token saved; a revoked agent stops with one
clear line and exit code 4.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from agent_client.machine import machine_id_hash
from agents_app.models import Agent, AgentSubsystem, RefreshToken
from agents_app.services.agents import agent_revoke
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.processes import ROOT
from tokens_app.hashing import hash_secret
from tokens_app.services import token_create


def run_agent(config_path: Path, *args: str, timeout: float = 120,
              token: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDFLAG_"))}
    env["PYTHONPATH"] = str(ROOT)
    if token:
        env["REDFLAG_REGISTRATION_TOKEN"] = token  # as the installer passes it: never an argument
    return subprocess.run(
        [sys.executable, "-m", "agent_client", "--config", str(config_path), *args],
        cwd=str(config_path.parent.parent), env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def secret(db):
    _, plaintext = token_create(label="e2e", max_seats=5, expires_in=timedelta(hours=1))
    return plaintext


@pytest.fixture
def config_path(tmp_path) -> Path:
    return tmp_path / "agent" / "config.json"


def register(config_path: Path, server: str, token: str) -> subprocess.CompletedProcess:
    # System and storage facts only: a real APT scan of this machine is tested in tests/agent/test_apt.py.
    return run_agent(config_path, "register", "--server", server, "--capabilities", "system,storage", token=token)


def enroll_for_commands(server_url: str, tmp_path: Path, label: str):
    """A real agent registered with the server that runs only the commands a test queues
    (no scheduled scans, no heartbeat before operations). Returns (Agent, config path)."""
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()
    _, secret = token_create(label=label, max_seats=1, expires_in=timedelta(hours=1))
    config_path = tmp_path / "agent" / "config.json"
    registered = register(config_path, server_url, secret)
    assert registered.returncode == 0, registered.stderr
    agent = Agent.objects.get(pk=json.loads(config_path.read_text())["agent_id"])
    AgentSubsystem.objects.filter(agent=agent).update(auto_run=False)
    return agent, config_path


@pytest.mark.django_db(transaction=True)
def test_a_reinstall_re_enrols_with_its_refresh_token_and_a_stranger_config_is_refused(live_server, secret, tmp_path):
    """Same machine id both times: only the config that holds the agent's refresh token may re-enrol it."""
    config_path = tmp_path / "agent" / "config.json"
    assert register(config_path, live_server.url, secret).returncode == 0
    agent_id = json.loads(config_path.read_text())["agent_id"]
    again = register(config_path, live_server.url, secret)
    assert again.returncode == 0, again.stderr
    assert "re-enrolled" in again.stdout and json.loads(config_path.read_text())["agent_id"] == agent_id
    stranger = register(tmp_path / "other" / "config.json", live_server.url, secret)
    assert stranger.returncode != 0 and "already enrolled" in stranger.stderr
    assert not (tmp_path / "other" / "config.json").exists()
    assert Agent.objects.count() == 1
    assert SystemEvent.objects.filter(event_type="security_violation", metadata__reason="reenrolment_not_proven",
                                      agent_id=agent_id).count() == 1
    assert run_agent(config_path, "run", "--once").returncode == 0  # the re-enrolled agent still works


@pytest.mark.django_db(transaction=True)
def test_register_then_run_once_reaches_the_database(live_server, secret, config_path):
    registered = register(config_path, live_server.url, secret)
    assert registered.returncode == 0, registered.stderr
    assert secret not in registered.stdout + registered.stderr

    config = json.loads(config_path.read_text())
    assert oct(config_path.stat().st_mode & 0o777) == "0o600"
    agent = Agent.objects.get(pk=config["agent_id"])
    assert agent.hostname == socket.gethostname()
    assert agent.machine_id_hash == machine_id_hash() == config["machine_id_hash"]
    assert agent.os_family == "linux"
    assert config["signing_keys"] and config["signing_keys"][0]["public_key"]

    Agent.objects.filter(pk=agent.pk).update(last_seen_at=None)
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    agent.refresh_from_db()
    assert agent.last_seen_at is not None
    assert agent.metrics["memory_total_bytes"] > 0
    assert 0 <= agent.metrics["cpu_percent"] <= 100
    assert len(agent.metrics["load_average"]) == 3
    # A one-off run is no service start: no start-up event (the service records one, test_agent_commands.py).
    assert not SystemEvent.objects.filter(agent=agent, event_type="agent_startup").exists()
    assert json.loads(config_path.read_text())["last_checkin_at"]

    status = run_agent(config_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["registered"] is True and state["agent_id"] == str(agent.pk) and state["outbox_items"] == 0

    # A second one-off cycle adds none either: start-up events are for service starts.
    assert run_agent(config_path, "run", "--once").returncode == 0
    assert not SystemEvent.objects.filter(agent=agent, event_type="agent_startup").exists()


@pytest.mark.django_db(transaction=True)
def test_a_refused_first_registration_is_recorded_by_the_server_and_leaves_nothing_on_the_machine(
        live_server, secret, config_path):
    refused = register(config_path, live_server.url, "rf_reg_not-a-real-token-at-all")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "registration failed" in lines[0] and "registration_refused" in lines[0]
    assert not config_path.parent.exists()  # no config, no outbox of events nothing could send

    registered = register(config_path, live_server.url, secret)
    assert registered.returncode == 0, registered.stderr
    agent_id = json.loads(config_path.read_text())["agent_id"]
    # The auditor still sees the refusal: the server's own record of it, never the agent's copy.
    assert not SystemEvent.objects.filter(agent_id=agent_id, event_type="agent_registration",
                                          event_subtype="failed").exists()
    assert SystemEvent.objects.filter(origin="server", event_type="agent_registration",
                                      event_subtype="failed").count() == 1


@pytest.mark.django_db(transaction=True)
def test_refused_access_token_is_renewed_and_the_rotated_refresh_token_saved(live_server, secret, config_path):
    assert register(config_path, live_server.url, secret).returncode == 0
    config = json.loads(config_path.read_text())
    first_refresh = config["refresh_token"]
    # An access token the server no longer accepts (as after a key change): 401, renew, retry.
    config["access_token"] = "rf_acc_" + "x" * 40
    config_path.write_text(json.dumps(config))

    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    saved = json.loads(config_path.read_text())
    assert saved["refresh_token"] != first_refresh
    assert saved["access_token"] != config["access_token"]
    assert RefreshToken.objects.get(token_hash=hash_secret(first_refresh)).rotated_at is not None
    current = RefreshToken.objects.get(token_hash=hash_secret(saved["refresh_token"]))
    assert current.rotated_at is None and current.revoked_at is None
    assert first_refresh not in ran.stderr and saved["refresh_token"] not in ran.stderr

    # An access token past its stated expiry is renewed before the request, again rotating.
    saved["access_token_expires_at"] = "2000-01-01T00:00:00+00:00"
    config_path.write_text(json.dumps(saved))
    assert run_agent(config_path, "run", "--once").returncode == 0
    assert json.loads(config_path.read_text())["refresh_token"] != saved["refresh_token"]


@pytest.mark.django_db(transaction=True)
def test_revoked_agent_stops_with_one_line_and_exit_code_4(live_server, secret, config_path):
    assert register(config_path, live_server.url, secret).returncode == 0
    agent = Agent.objects.get(pk=json.loads(config_path.read_text())["agent_id"])
    agent_revoke(agent=agent, actor="admin")

    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 4
    errors = [line for line in ran.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "agent_revoked" in errors[0], ran.stderr

    status = json.loads(run_agent(config_path, "status", "--json").stdout)
    assert status["outbox_items"] >= 1  # the refusal and startup wait for a re-registration


def test_machine_id_hash_matches_what_the_server_expects():
    raw = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else None
    if raw is None:
        pytest.skip("no /etc/machine-id on this host")
    assert machine_id_hash() == hashlib.sha256(raw.lower().encode()).hexdigest()
