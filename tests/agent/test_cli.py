"""``python -m agent_client`` as a real subprocess against the loopback stub server,
and the run loop's timing and failure handling in process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_client import cli
from agent_client import config as config_module
from agent_client.machine import MachineIdError, machine_id_hash
from agent_client.outbox import Outbox
from agent_client.runner import (
    CONFIG_WATCH_SECONDS,
    HEARTBEAT_POLL_SECONDS,
    Runner,
)
from agent_client.scanners.base import ScanError, UpdateRecord
from agent_client.scanners.windows_update import WindowsUpdateScanner
from agent_client.transport import Client, RetryPolicy
from tests.agent.stub_server import TEST_MACHINE_ID, StubServer, enrolled_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "rf_reg_test-token"


def agent(config_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("REDFLAG_REGISTRATION_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "agent_client", "--config", str(config_path), *args],
                          cwd=str(config_path.parent.parent), env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("redflag-agent: error: ")
    return lines[0]


# --- register -------------------------------------------------------------------------


def test_register_writes_a_private_config(stub, config_path):
    result = agent(config_path, "register", "--server", stub.url + "/", "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"registered as agent {stub.agent_id} with {stub.url}"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = config_module.load(config_path)
    assert config.agent_id == stub.agent_id and config.server_url == stub.url
    assert config.refresh_token == stub.refresh_token
    assert config.signing_keys[0]["public_key"] == stub.public_key
    assert config.machine_id_hash == stub.machine_id
    assert TOKEN not in config_path.read_text() + result.stdout + result.stderr


def test_a_refused_registration_is_kept_and_sent_once_registered(stub, config_path):
    refused = agent(config_path, "register", "--server", stub.url, "--token", "rf_reg_wrong")
    assert refused.returncode == 1
    assert "registration failed" in one_error_line(refused) and "registration_refused" in refused.stderr
    assert not config_path.exists()
    assert Outbox.beside(config_path).count() == 1

    registered = agent(config_path, "register", "--server", stub.url, "--token", TOKEN)
    assert registered.returncode == 0, registered.stderr
    (kept,) = stub.events.values()
    assert (kept["event_type"], kept["event_subtype"]) == ("agent_registration", "failed")
    assert kept["metadata"]["reason"] == "registration_refused"
    assert "rf_reg_wrong" not in json.dumps(kept)
    assert Outbox.beside(config_path).count() == 0


def test_register_with_an_unreachable_server(config_path):
    with StubServer() as stub:
        url = stub.url
    result = agent(config_path, "register", "--server", url, "--token", TOKEN)
    assert result.returncode == 1
    line = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(line) == 1 and "cannot reach" in line[0]


@pytest.mark.parametrize("args", [["--server", "redflag.example", "--token", TOKEN], ["--server", "http://x"]])
def test_register_usage_errors(config_path, args):
    result = agent(config_path, "register", *args)
    assert result.returncode == 2
    one_error_line(result)


# --- run --once ---------------------------------------------------------------------------


def test_run_once_checks_in_and_flushes(stub, config_path):
    assert agent(config_path, "register", "--server", stub.url, "--token", TOKEN).returncode == 0
    result = agent(config_path, "run", "--once")
    assert result.returncode == 0, result.stderr

    (checkin,) = stub.calls("checkin")
    assert checkin.body["heartbeat_active"] is False
    assert checkin.body["config_version"] == 1
    assert checkin.body["metrics"]["memory_total_bytes"] > 0
    (startup,) = stub.events.values()
    assert (startup["event_type"], startup["event_subtype"]) == ("agent_startup", "success")
    assert config_module.load(config_path).last_checkin_at
    assert Outbox.beside(config_path).count() == 0


def test_run_once_unregistered(config_path):
    result = agent(config_path, "run", "--once")
    assert result.returncode == 3
    assert "not registered" in one_error_line(result)


def test_run_once_with_a_corrupt_config(config_path):
    config_path.parent.mkdir(parents=True)
    config_path.write_text("{ half a file")
    result = agent(config_path, "run", "--once")
    assert result.returncode == 3
    assert "is corrupt" in one_error_line(result) and str(config_path) in result.stderr
    # The start-up failure waits in the outbox for a working config.
    (failure,) = [item.payload for item in Outbox.beside(config_path).pending()]
    assert (failure["event_type"], failure["event_subtype"]) == ("agent_startup", "failed")
    assert agent(config_path, "status").returncode == 3


def test_run_once_with_the_server_down_keeps_the_events(config_path):
    with StubServer() as stub:
        enrolled_config(stub, config_path, machine_id=_host_machine_id())
    result = agent(config_path, "run", "--once")
    assert result.returncode == 1
    assert "check-in failed" in result.stderr and "cannot reach" in result.stderr
    assert [item.payload["event_type"] for item in Outbox.beside(config_path).pending()] == ["agent_startup"]
    status = agent(config_path, "status")
    assert "outbox:" in status.stdout and "1 item (1 event)" in status.stdout


def test_run_once_when_revoked_stops_with_exit_4(stub, config_path):
    assert agent(config_path, "register", "--server", stub.url, "--token", TOKEN).returncode == 0
    stub.revoked = True
    result = agent(config_path, "run", "--once")
    assert result.returncode == 4
    assert "agent_revoked" in one_error_line(result)


def test_run_service_stops_on_sigterm(stub, config_path):
    assert agent(config_path, "register", "--server", stub.url, "--token", TOKEN).returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "agent_client", "--config", str(config_path), "run"],
                               cwd=str(config_path.parent), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 30
        while not stub.calls("events") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stub.calls("checkin") and stub.calls("events")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "stopping" in stderr


# --- status ---------------------------------------------------------------------------------


def test_status(stub, config_path):
    unregistered = agent(config_path, "status")
    assert unregistered.returncode == 3 and re.search(r"^registered: +no$", unregistered.stdout, re.M)

    config = enrolled_config(stub, config_path)
    config.heartbeat_until = config_module.format_time(config_module.utc_now() + dt.timedelta(minutes=5))
    config.last_checkin_at = "2030-01-01T00:00:00+00:00"
    config_module.save(config, config_path)

    text = agent(config_path, "status")
    assert text.returncode == 0, text.stderr
    assert "registered:" in text.stdout and "yes" in text.stdout
    assert stub.agent_id in text.stdout and stub.url in text.stdout
    assert "active until" in text.stdout and "2030-01-01T00:00:00+00:00" in text.stdout
    assert config.refresh_token not in text.stdout

    state = json.loads(agent(config_path, "status", "--json").stdout)
    assert state["registered"] and state["outbox_items"] == 0 and state["heartbeat_until"]
    assert state["agent_version"] and state["signing_keys"] == ["k1"]


# --- scan -------------------------------------------------------------------------------------


def test_scan_of_a_package_manager_this_host_lacks(config_path):
    if WindowsUpdateScanner().is_available():
        pytest.skip("PowerShell is installed here")
    result = agent(config_path, "scan", "--type", "windows_update")
    assert result.returncode == 1
    assert "windows_update is not available on this host" in one_error_line(result)


class FakeScanner:
    def __init__(self, kind: str, available: bool = True, records: list[UpdateRecord] = (), error: str = "") -> None:
        self.package_type, self.available, self.records, self.error = kind, available, list(records), error

    def is_available(self) -> bool:
        return self.available

    def scan(self) -> list[UpdateRecord]:
        if self.error:
            raise ScanError(self.error)
        return self.records


def test_scan_output_and_failure_events(config_path, monkeypatch, capsys):
    config_path.parent.mkdir(parents=True)
    scanners = {
        "apt": FakeScanner("apt", records=[UpdateRecord("apt", "openssl", "3.0.11-1", "3.0.13-1", severity="important",
                                                        is_security=True)]),
        "dnf": FakeScanner("dnf", error="dnf check-update exited 1: repo unreachable"),
        "docker": FakeScanner("docker", available=False),
        "windows_update": FakeScanner("windows_update", available=False),
        "winget": FakeScanner("winget", available=False),
    }
    monkeypatch.setattr(cli, "build_scanners", lambda state_dir: scanners)

    code = cli.main(["--config", str(config_path), "scan", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["updates"]["apt"][0]["name"] == "openssl" and report["updates"]["apt"][0]["is_security"]
    assert report["failed"] == {"dnf": "dnf check-update exited 1: repo unreachable"}
    assert report["unavailable"] == ["docker", "windows_update", "winget"]
    (failure,) = [item.payload for item in Outbox.beside(config_path).pending()]
    assert (failure["event_type"], failure["event_subtype"]) == ("agent_scan", "failed")
    assert failure["metadata"]["package_type"] == "dnf"

    assert cli.main(["--config", str(config_path), "scan", "--type", "apt"]) == 0
    out = capsys.readouterr().out
    assert "apt: 1 update" in out and "openssl  3.0.11-1 -> 3.0.13-1  [security, important]" in out


# --- the run loop, in process ---------------------------------------------------------------------


class Waits(list):
    """Stands in for stop.wait: records each delay; stops the loop after ``limit`` waits."""

    def __init__(self, limit: int, on_wait=None) -> None:
        super().__init__()
        self.limit, self.on_wait = limit, on_wait

    def __call__(self, seconds: float) -> bool:
        self.append(seconds)
        if self.on_wait:
            self.on_wait(len(self))
        return len(self) >= self.limit


def loop_runner(stub: StubServer, config_path: Path, waits: Waits) -> Runner:
    config = config_module.load(config_path)
    outbox = Outbox.beside(config_path)
    client = Client(config, machine_id_hash=TEST_MACHINE_ID, config_path=config_path,
                    retry=RetryPolicy(max_attempts=1), sleep=lambda seconds: None, on_event=outbox.add_event)
    return Runner(config=config, config_path=config_path, client=client, outbox=outbox, rng=random.Random(5),
                  wait=waits, metrics=lambda: {"cpu_percent": 3.0})


def test_loop_polls_at_the_server_interval_with_jitter_then_every_5s_in_heartbeat(stub, config_path):
    enrolled_config(stub, config_path)

    def heartbeat_on_after_first(count: int) -> None:
        if count == 1:
            stub.heartbeat_until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)

    waits = Waits(limit=3, on_wait=heartbeat_on_after_first)
    loop_runner(stub, config_path, waits).run_forever()

    assert 60 <= waits[0] <= 66  # poll_interval_seconds 60 plus at most 10 %
    assert waits[1:] == [HEARTBEAT_POLL_SECONDS, HEARTBEAT_POLL_SECONDS]
    reported = [call.body["heartbeat_active"] for call in stub.calls("checkin")]
    # Each check-in reports the state the agent knew before it: the second learns of the heartbeat.
    assert reported == [False, False, True]
    assert config_module.load(config_path).heartbeat_until


def test_loop_backs_off_on_failures_honours_retry_after_and_recovers(stub, config_path):
    enrolled_config(stub, config_path)
    stub.script("checkin", 502, None, times=3)
    stub.script("checkin", 429, {"error": {"code": "rate_limited", "message": "x"}}, headers={"Retry-After": "120"})
    waits = Waits(limit=6)
    loop_runner(stub, config_path, waits).run_forever()

    assert 2.5 <= waits[0] <= 5 and 5 <= waits[1] <= 10 and 10 <= waits[2] <= 20
    assert waits[3] >= 120
    assert 60 <= waits[4] <= 66 and 60 <= waits[5] <= 66  # success resets the backoff


def test_loop_parks_after_a_terminal_refusal_until_the_config_changes(stub, config_path):
    enrolled_config(stub, config_path)
    stub.revoked = True

    def reregister(count: int) -> None:
        if count == 2:
            stub.revoked = False
            enrolled_config(stub, config_path)  # what `register` does: new credentials on disk

    waits = Waits(limit=4, on_wait=reregister)
    runner = loop_runner(stub, config_path, waits)
    runner.run_forever()

    assert waits[:2] == [CONFIG_WATCH_SECONDS, CONFIG_WATCH_SECONDS]  # no tight retry
    assert len(stub.calls("checkin")) == 3  # refused, then after the re-registration: twice
    assert runner.config.access_token == stub.access_token
    refusals = [event for event in stub.events.values() if event["metadata"].get("reason") == "agent_revoked"]
    assert len(refusals) == 1 and refusals[0]["severity"] == "critical"


def test_commands_are_never_run_by_this_build(stub, config_path):
    enrolled_config(stub, config_path)
    answer = {"commands": [{"id": "c-1", "command_type": "scan_updates"}], "config_version": 4,
              "poll_interval_seconds": 90, "heartbeat": {"active": False, "until": None}, "server_time": "x"}
    stub.script("checkin", 200, answer, times=2)
    waits = Waits(limit=2)
    runner = loop_runner(stub, config_path, waits)
    runner.run_forever()

    warnings = [event for event in stub.events.values() if event["metadata"].get("reason") == "commands_unsupported"]
    assert len(warnings) == 1 and warnings[0]["metadata"]["command_ids"] == ["c-1"]
    saved = config_module.load(config_path)
    assert saved.config_version == 4 and saved.poll_interval_seconds == 90


def _host_machine_id() -> str:
    try:
        return machine_id_hash()
    except MachineIdError:
        pytest.skip("this host has no machine id")
