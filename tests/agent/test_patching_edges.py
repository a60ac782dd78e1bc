"""The agent's side of unattended patching: an announced reboot, tags from its config file, and the rescan
that follows an install.

The reboot is observed through a recording ``shutdown`` placed first on PATH (it only writes its argv to a
file): nothing here reboots the machine.
"""

from __future__ import annotations

import os
import sys

import pytest

from agent_client import config as config_module
from agent_client.config import AgentConfig
from agent_client.executor import reboot_argv, schedule_reboot
from agent_client.outbox import KIND_COMMAND_RESULT, KIND_SYSTEM_REPORT, KIND_UPDATES_REPORT
from agent_client.protocol import (
    DEFAULT_REBOOT_DELAY_MINUTES,
    DEFAULT_REBOOT_MESSAGE,
    REBOOT_MESSAGE_MAX_CHARS,
    TAG_MAX_CHARS,
    TAGS_MAX_COUNT,
    reboot_params_problem,
    tags_problem,
)
from agent_client.scanners.base import OperationResult
from tests.agent.test_executor import RecordingScanner, queued, setup, signer  # noqa: F401  (fixtures)

ANNOUNCEMENT = "Patching: this machine reboots in 15 minutes. Save your work."


class RebootRecorder:
    def __init__(self):
        self.calls = []

    def __call__(self, delay_minutes, message):
        self.calls.append((delay_minutes, message))
        return OperationResult(True, 0, f"Shutdown scheduled for +{delay_minutes}", 0.01)


@pytest.fixture
def fake_shutdown(tmp_path, monkeypatch):
    """A ``shutdown`` first on PATH that records its arguments, one per line, and exits 0."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "shutdown.args"
    script = directory / "shutdown"
    script.write_text(f'#!/bin/sh\nfor argument in "$@"; do printf "%s\\n" "$argument"; done > "{log}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


# --- reboot with an announced delay --------------------------------------------------------


def test_a_reboot_carries_its_delay_and_message_to_the_reboot_call(setup, signer):  # noqa: F811
    recorder = RebootRecorder()
    executor, _, outbox, events, _ = setup(reboot=recorder)
    announced = signer.command("reboot", {"delay_minutes": 15, "message": ANNOUNCEMENT})
    assert executor.handle(announced) == "succeeded"
    assert executor.handle(signer.command("reboot")) == "succeeded"
    assert recorder.calls == [(15, ANNOUNCEMENT), (DEFAULT_REBOOT_DELAY_MINUTES, DEFAULT_REBOOT_MESSAGE)]
    (_, first), (_, second) = queued(outbox)
    assert first["details"] == {"delay_minutes": 15} and first["exit_code"] == 0
    assert second["details"] == {"delay_minutes": 1}
    assert events == []


@pytest.mark.parametrize("params, problem", [
    ({"delay_minutes": 1441}, "delay_minutes must be a whole number of minutes from 0 to 1440"),
    ({"delay_minutes": -1}, "delay_minutes must be a whole number of minutes from 0 to 1440"),
    ({"delay_minutes": "5"}, "delay_minutes must be a whole number of minutes from 0 to 1440"),
    ({"delay_minutes": True}, "delay_minutes must be a whole number of minutes from 0 to 1440"),
    ({"message": "x" * (REBOOT_MESSAGE_MAX_CHARS + 1)}, "message must be at most 200 characters"),
    ({"message": "line one\nline two"}, "message must hold printable characters only"),
    ({"message": "-h now"}, "message must not start with '-' or '/'"),
    ({"message": "/s"}, "message must not start with '-' or '/'"),
    ({"message": "  "}, "message must be a non-empty string"),
    ({"when": "now"}, "reboot takes only delay_minutes and message, not when"),
])
def test_a_signed_reboot_with_bad_params_is_refused_without_calling_shutdown(setup, signer, params,  # noqa: F811
                                                                                 problem):
    recorder = RebootRecorder()
    executor, _, outbox, _, _ = setup(reboot=recorder)
    assert executor.handle(signer.command("reboot", params)) == "failed"
    (_, result), = queued(outbox)
    assert result["output"].startswith(f"refused: {problem}")
    assert recorder.calls == []


def test_edge_values_are_accepted():
    assert reboot_params_problem({"delay_minutes": 0, "message": "x" * REBOOT_MESSAGE_MAX_CHARS}) is None
    assert reboot_params_problem({"delay_minutes": 1440, "message": "Zurück in 5 Minuten — danke"}) is None
    assert reboot_params_problem({}) is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell script stands in for shutdown")
def test_shutdown_gets_the_delay_and_the_message_as_one_argument(fake_shutdown):
    outcome = schedule_reboot(15, ANNOUNCEMENT)
    assert outcome.succeeded and outcome.exit_code == 0
    assert fake_shutdown.read_text().splitlines() == ["-r", "+15", ANNOUNCEMENT]
    schedule_reboot()
    assert fake_shutdown.read_text().splitlines() == ["-r", "+1", DEFAULT_REBOOT_MESSAGE]


def test_windows_takes_the_delay_in_seconds():
    assert reboot_argv(15, ANNOUNCEMENT, platform="win32") == ["shutdown", "/r", "/t", "900", "/c", ANNOUNCEMENT]
    assert reboot_argv(0, ANNOUNCEMENT, platform="linux") == ["shutdown", "-r", "+0", ANNOUNCEMENT]


# --- tags from the config file ---------------------------------------------------------------


def test_tags_in_the_config_file_travel_with_the_system_report(setup, signer, tmp_path):  # noqa: F811
    path = tmp_path / "agent" / "config.json"
    config_module.save(AgentConfig(server_url="https://redflag.example", agent_id="a", tags=["production", "eu-west"]),
                       path)
    loaded = config_module.load(path)
    assert loaded.tags == ["production", "eu-west"]
    executor, _, outbox, events, _ = setup(tags=lambda: loaded.tags)
    executor.handle(signer.command("scan_system"))
    (kind, report), _ = queued(outbox)
    assert kind == KIND_SYSTEM_REPORT and report["tags"] == ["production", "eu-west"]
    assert events == []


def test_an_older_config_without_tags_reports_an_empty_list_and_no_callback_reports_nothing(setup, signer,  # noqa: F811
                                                                                            tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"schema_version": 1, "server_url": "https://r.example", "agent_id": "a"}')
    assert config_module.load(path).tags == []
    executor, _, outbox, _, _ = setup()  # built without a tags source
    executor.handle(signer.command("scan_system"))
    (_, report), _ = queued(outbox)
    assert "tags" not in report


@pytest.mark.parametrize("tags, problem", [
    ("production", "tags must be a list of strings"),
    ([f"t{index}" for index in range(TAGS_MAX_COUNT + 1)], "at most 50 tags"),
    (["x" * (TAG_MAX_CHARS + 1)], "is longer than 64 characters"),
    (["bell\x07"], "holds a control character"),
    (["a,b"], "a comma"),
    ([" padded"], "surrounding spaces"),
    ([""], "each tag must be a non-empty string"),
    ([7], "each tag must be a non-empty string"),
    (["prod", "prod"], "a tag is listed twice"),
])
def test_bad_tags_are_not_sent_and_a_warning_says_why(setup, signer, tags, problem):  # noqa: F811
    assert problem in tags_problem(tags)
    executor, _, outbox, events, _ = setup(tags=lambda: tags)
    executor.handle(signer.command("scan_system"))
    (_, report), _ = queued(outbox)
    assert "tags" not in report
    (event,) = events
    assert event["event_type"] == "config_changed" and event["severity"] == "warning"
    assert problem in event["message"]


def test_fifty_tags_of_sixty_four_characters_are_fine():
    assert tags_problem([f"{index:02d}" + "x" * (TAG_MAX_CHARS - 2) for index in range(TAGS_MAX_COUNT)]) is None


# --- the rescan after an install --------------------------------------------------------------


@pytest.mark.parametrize("command_type", ["install_updates", "confirm_dependencies"])
def test_an_install_is_followed_by_a_scan_whose_report_comes_after_the_result(setup, signer, command_type):  # noqa: F811
    executor, scanner, outbox, _, _ = setup()
    command = signer.command(command_type, {"package_type": "apt", "packages": ["openssl"], "dependencies": []})
    assert executor.handle(command) == "succeeded"
    assert scanner.calls == [("install", ("openssl",)), ("scan",)]
    (result_kind, result), (report_kind, report) = queued(outbox)
    assert (result_kind, result["command_id"]) == (KIND_COMMAND_RESULT, command["id"])
    assert report_kind == KIND_UPDATES_REPORT and report["package_type"] == "apt"
    assert [row["name"] for row in report["updates"]] == ["openssl"]


def test_a_failed_install_is_not_rescanned(setup, signer):  # noqa: F811
    executor, scanner, outbox, _, _ = setup(scanner=RecordingScanner(fail_install=True))
    assert executor.handle(signer.command("install_updates", {"package_type": "apt", "packages": ["openssl"]})) \
        == "failed"
    assert scanner.calls == [("install", ("openssl",))]
    assert [kind for kind, _ in queued(outbox)] == [KIND_COMMAND_RESULT]


def test_a_dry_run_is_not_followed_by_a_scan_and_a_failed_rescan_keeps_the_result(setup, signer):  # noqa: F811
    executor, scanner, outbox, _, _ = setup(scanner=RecordingScanner(scan_error="apt-get update failed: 404"))
    executor.handle(signer.command("dry_run_update", {"package_type": "apt", "packages": ["openssl"]}))
    assert scanner.calls == [("dry_run", ("openssl",))]
    assert executor.handle(signer.command("install_updates", {"package_type": "apt", "packages": ["openssl"]})) \
        == "succeeded"
    assert scanner.calls[-2:] == [("install", ("openssl",)), ("scan",)]
    assert [kind for kind, _ in queued(outbox)] == [KIND_COMMAND_RESULT, KIND_COMMAND_RESULT]
