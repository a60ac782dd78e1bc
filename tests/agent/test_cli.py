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
from typing import Optional

import pytest

from agent_client import cli
from agent_client import config as config_module
from agent_client.events import make_event
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


def agent(config_path: Path, *args: str, timeout: float = 60, env: Optional[dict[str, str]] = None,
          stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("REDFLAG_REGISTRATION_TOKEN", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent_client", "--config", str(config_path), *args],
                          cwd=str(config_path.parent.parent), env=environment, capture_output=True, text=True,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def token_file(config_path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path = config_path.parent.parent / "registration-token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def register(config_path: Path, server: str, token: str = TOKEN, *args: str) -> subprocess.CompletedProcess:
    """``register`` the recommended way: the token in a 0600 file, never in argv."""
    return agent(config_path, "register", "--server", server, "--token-file", str(token_file(config_path, token)),
                 *args)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("redflag-agent: error: ")
    return lines[0]


# --- register -------------------------------------------------------------------------


def test_register_writes_a_private_config(stub, config_path):
    result = register(config_path, stub.url + "/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"registered as agent {stub.agent_id} with {stub.url}"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = config_module.load(config_path)
    assert config.agent_id == stub.agent_id and config.server_url == stub.url
    assert config.refresh_token == stub.refresh_token
    assert config.signing_keys[0]["public_key"] == stub.public_key
    assert config.machine_id_hash == stub.machine_id
    assert TOKEN not in config_path.read_text() + result.stdout + result.stderr


def test_a_refused_first_registration_leaves_nothing_behind(stub, config_path):
    """No config, no outbox: a machine that was never enrolled keeps no queue of events nothing can send."""
    refused = register(config_path, stub.url, "rf_reg_wrong")
    assert refused.returncode == 1
    assert "registration failed" in one_error_line(refused) and "registration_refused" in refused.stderr
    assert not config_path.exists() and not config_path.parent.exists()
    assert "rf_reg_wrong" not in refused.stderr


def test_a_refused_re_enrolment_is_kept_for_the_server(stub, config_path):
    assert register(config_path, stub.url).returncode == 0
    refused = register(config_path, stub.url, "rf_reg_wrong")
    assert refused.returncode == 1
    (kept,) = [item.payload for item in Outbox.beside(config_path).pending()]
    assert (kept["event_type"], kept["event_subtype"]) == ("agent_registration", "failed")
    assert kept["metadata"]["reason"] == "registration_refused"
    assert "rf_reg_wrong" not in json.dumps(kept)


@pytest.mark.parametrize("path", ["/wrong", "/admin"])
def test_a_url_that_is_not_the_portal_says_so(stub, config_path, path):
    result = register(config_path, stub.url + path)
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"{stub.url}{path} answered 404 at /api/v1/agents/register: is this the RedFlag portal's address?" in line
    assert not config_path.parent.exists()


def test_register_with_an_unreachable_server(config_path):
    with StubServer() as stub:
        url = stub.url
    result = register(config_path, url)
    assert result.returncode == 1
    line = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(line) == 1 and "cannot reach" in line[0]


@pytest.mark.parametrize("args", [["--server", "redflag.example", "--token", TOKEN], ["--server", "http://x"]])
def test_register_usage_errors(config_path, args):
    result = agent(config_path, "register", *args)
    assert result.returncode == 2
    one_error_line(result)


# --- register: where the token comes from ------------------------------------------------


def argv_holding(secret: str) -> list[str]:
    """The command lines of every process on this machine that hold ``secret`` (what `ps` shows anyone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone already, or not ours to read
        if secret.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.parametrize("way", ["file", "stdin", "environment", "argument"])
def test_register_takes_the_token_without_putting_it_in_any_argv(stub, config_path, way):
    """While the server holds the registration request, no process's argv holds the token (but with --token)."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    token = "rf_reg_" + "k" * 36
    stub.registration_token = token
    seen: list[list[str]] = []
    stub.on_request = lambda entry: seen.append(argv_holding(token)) if entry.endpoint == "register" else None

    if way == "file":
        result = register(config_path, stub.url, token)
    elif way == "stdin":
        result = agent(config_path, "register", "--server", stub.url, "--token-stdin", stdin=token + "\n")
    elif way == "environment":
        result = agent(config_path, "register", "--server", stub.url, env={"REDFLAG_REGISTRATION_TOKEN": token})
    else:
        result = agent(config_path, "register", "--server", stub.url, "--token", token)

    assert result.returncode == 0, result.stderr
    assert config_module.load(config_path).agent_id == stub.agent_id
    (registration,) = stub.calls("register")
    assert registration.body["registration_token"] == token
    (in_argv,) = seen
    if way == "argument":  # still accepted, with one warning line: and this is why
        assert len(in_argv) == 1 and "--token " + token in in_argv[0]
        assert result.stderr.strip() == (
            "redflag-agent: warning: --token puts the registration token in the process list, where other local "
            "users can read it; use --token-file, --token-stdin or REDFLAG_REGISTRATION_TOKEN")
    else:
        assert in_argv == []
        assert "warning" not in result.stderr
    assert token not in config_path.read_text() + result.stdout + result.stderr


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "a registration token is required: --token-file PATH, --token-stdin or REDFLAG_REGISTRATION_TOKEN"),
    (["--token-stdin"], {"REDFLAG_REGISTRATION_TOKEN": TOKEN},
     "give the registration token one way, not 2 (--token-stdin, REDFLAG_REGISTRATION_TOKEN)"),
    (["--token", TOKEN, "--token-stdin"], {}, "give the registration token one way, not 2 (--token-stdin, --token)"),
])
def test_register_needs_exactly_one_token_source(stub, config_path, args, env, message):
    result = agent(config_path, "register", "--server", stub.url, *args, env=env, stdin=TOKEN)
    assert result.returncode == 2
    assert one_error_line(result) == f"redflag-agent: error: {message}"
    assert stub.calls("register") == [] and not config_path.exists()


def test_register_refuses_a_token_file_every_user_can_read_and_warns_for_the_group(stub, config_path):
    path = token_file(config_path, mode=0o644)
    refused = agent(config_path, "register", "--server", stub.url, "--token-file", str(path))
    assert refused.returncode == 2
    assert one_error_line(refused) == (f"redflag-agent: error: {path} is readable by every user on this machine "
                                       "(mode 0644): chmod 600 it first")
    assert stub.calls("register") == []

    path.chmod(0o640)
    accepted = agent(config_path, "register", "--server", stub.url, "--token-file", str(path))
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stderr.strip() == (f"redflag-agent: warning: {path} is readable by its group (mode 0640); "
                                       "chmod 600 would keep the token private")


@pytest.mark.parametrize("content", ["", "  \n", "two words\n"])
def test_register_refuses_an_empty_or_odd_token(stub, config_path, content):
    path = config_path.parent.parent / "token"
    path.write_text(content)
    path.chmod(0o600)
    result = agent(config_path, "register", "--server", stub.url, "--token-file", str(path))
    assert result.returncode == 2
    assert one_error_line(result) == "redflag-agent: error: the registration token from --token-file is empty or " \
                                     "not one word"


def test_the_token_variable_is_not_left_for_the_package_tools(monkeypatch):
    monkeypatch.setenv("REDFLAG_REGISTRATION_TOKEN", TOKEN)
    args = cli.build_parser().parse_args(["register", "--server", "https://redflag.example"])
    assert cli._registration_token(args) == TOKEN
    assert "REDFLAG_REGISTRATION_TOKEN" not in os.environ  # so apt-get & co. never inherit it


# --- register: transport ----------------------------------------------------------------------


REMOTE = "http://redflag.invalid:8000"  # never resolved: the agent reaches the stub through HTTP_PROXY


def through_proxy(stub: StubServer) -> dict[str, str]:
    return {"HTTP_PROXY": stub.url, "http_proxy": stub.url, "NO_PROXY": "", "no_proxy": ""}


@pytest.mark.parametrize("server", ["http://192.0.2.10", REMOTE, "http://10.1.2.3:8000/redflag"])
def test_register_refuses_plain_http_to_another_machine(stub, config_path, server):
    result = agent(config_path, "register", "--server", server, "--token-file", str(token_file(config_path)),
                   env=through_proxy(stub))
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"redflag-agent: error: refusing to register: {server} is plain HTTP to another machine: the registration "
        "token and the agent's credentials would cross the network unencrypted; use https:// (or register with "
        "--insecure)")
    assert stub.received == [] and not config_path.exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2"])
def test_plain_http_to_this_machine_needs_no_flag(stub, config_path, host):
    if host == "127.0.0.2":  # the whole 127.0.0.0/8 is this machine; the stub listens on 127.0.0.1 only
        result = agent(config_path, "register", "--server", f"http://127.0.0.2:{stub.port}", "--token-file",
                       str(token_file(config_path)), env=through_proxy(stub))
    else:
        result = register(config_path, f"http://{host}:{stub.port}")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert config_module.load(config_path).insecure_http is False


def test_register_insecure_warns_records_it_and_the_agent_keeps_working(stub, config_path):
    proxy = through_proxy(stub)
    result = agent(config_path, "register", "--server", REMOTE, "--insecure", "--token-file",
                   str(token_file(config_path)), env=proxy)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"redflag-agent: warning: --insecure: registering with {REMOTE} over plain HTTP; the token and the agent's "
        "credentials cross the network unencrypted")
    assert stub.proxied_hosts == ["redflag.invalid:8000"]
    config = config_module.load(config_path)
    assert config.server_url == REMOTE and config.insecure_http is True
    assert json.loads(config_path.read_text())["insecure_http"] is True

    ran = agent(config_path, "run", "--once", env=proxy)  # the recorded choice keeps it working
    assert ran.returncode == 0, ran.stderr
    assert len(stub.calls("checkin")) == 1

    config.insecure_http = False  # a config that never chose it: refused, before anything is sent
    config_module.save(config, config_path)
    sent_before = len(stub.received)
    refused = agent(config_path, "run", "--once", env=proxy)
    assert refused.returncode == 3
    assert one_error_line(refused) == (
        f"redflag-agent: error: {config_path}: {REMOTE} is plain HTTP to another machine: the registration token "
        "and the agent's credentials would cross the network unencrypted; use https:// (or register with "
        "--insecure)")
    assert len(stub.received) == sent_before


# --- run --once ---------------------------------------------------------------------------


def test_run_once_checks_in_and_flushes(stub, config_path):
    assert register(config_path, stub.url).returncode == 0
    result = agent(config_path, "run", "--once")
    assert result.returncode == 0, result.stderr

    (checkin,) = stub.calls("checkin")
    assert checkin.body["heartbeat_active"] is False
    assert checkin.body["config_version"] == 1
    assert checkin.body["metrics"]["memory_total_bytes"] > 0
    assert stub.events == {}  # a one-off run is no service start: no start-up event
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
    Outbox.beside(config_path).add_event(make_event("agent_scan", "failed", "queued before the outage"))
    result = agent(config_path, "run", "--once")
    assert result.returncode == 1
    assert "check-in failed" in result.stderr and "cannot reach" in result.stderr
    # What waited stays; a one-off run adds no start-up event of its own.
    assert [item.payload["message"] for item in Outbox.beside(config_path).pending()] == ["queued before the outage"]
    status = agent(config_path, "status")
    assert "outbox:" in status.stdout and "1 item (1 event)" in status.stdout


def test_run_once_when_revoked_stops_with_exit_4(stub, config_path):
    assert register(config_path, stub.url).returncode == 0
    stub.revoked = True
    result = agent(config_path, "run", "--once")
    assert result.returncode == 4
    assert "agent_revoked" in one_error_line(result)


def test_run_service_stops_on_sigterm(stub, config_path):
    assert register(config_path, stub.url).returncode == 0
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
