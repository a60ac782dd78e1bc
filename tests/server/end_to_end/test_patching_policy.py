"""Patching by policy, end to end: a live server, the real agent (a subprocess) and a local APT repository.

1. The agent scans a local repository (apt pointed at it through APT_CONFIG): a security update, an ordinary
   one and a held one.
2. A policy whose window is open now approves the security update only, the agent dry-runs it, the server
   confirms the install (nothing extra pulled in), the agent installs it for real, and the policy reboots the
   machine inside the window: ``shutdown`` is a harmless stub first on PATH that records its arguments.
3. The history (SystemEvents) tells the story, in order, each naming the policy, window and rollout.

A second test runs a two-ring rollout whose canary (the real agent) fails its dry-run (the package was put on
hold there since the scan): the rollout halts with the reason recorded and the second ring never starts.

Needs root, apt, dpkg-deb and dpkg-scanpackages (dpkg-dev), like tests/agent/test_apt.py, whose repository
builder and clean-up it reuses; the test packages are purged afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agents_app.choices import CommandSource, CommandType, UpdateStatus
from agents_app.models import Agent, AgentGroup, AgentSubsystem, Command, PackageUpdate
from agents_app.services.commands import command_create
from events_app.choices import EventType
from events_app.models import SystemEvent
from policies_app.choices import PolicyAction, RebootRule, RolloutStatus, TurnState
from policies_app.models import MachineTurn, MaintenanceWindow, Policy, Rollout, RolloutStage
from policies_app.services.sweep import policies_sweep
from redflag.models import ServerSettings
from tests.agent.conftest import require_root, require_tools
from tests.agent.test_apt import (
    HELD,
    OLD_VERSIONS,
    PKG,
    SEC,
    AptRepo,
    apt_mark,
    check,
    installed_version,
    remove_test_packages,
)
from tests.server.end_to_end.test_agent import run_agent
from tokens_app.services import token_create

pytestmark = pytest.mark.django_db(transaction=True)
TOOLS = ("apt-get", "apt-cache", "apt-mark", "dpkg", "dpkg-deb", "dpkg-query", "dpkg-scanpackages")
REBOOT_DELAY = 0  # the stub records the announced delay; a real machine would wait this long


@pytest.fixture
def apt_machine(tmp_path_factory, request, monkeypatch):
    """The repository built, old versions installed, HELD on hold, apt (the agent's too) pointed at it only."""
    require_tools(*TOOLS)
    require_root()
    repo = AptRepo(tmp_path_factory.mktemp("policy-apt"))
    repo.build()
    argv = repo.apt_argv()
    lock = open(os.path.join(tempfile.gettempdir(), "redflag-apt-tests.lock"), "w")  # shared with test_apt.py
    fcntl.flock(lock, fcntl.LOCK_EX)
    request.addfinalizer(lock.close)
    request.addfinalizer(lambda: remove_test_packages(argv))
    remove_test_packages(argv)
    check(["apt-get", "-q", *argv, "install", "-y", *[str(repo.old_debs[name]) for name, _, _ in OLD_VERSIONS]])
    apt_mark("hold", [HELD])
    # apt reads APT_CONFIG before its own files: the agent's apt sees only the test repository.
    config = repo.base / "apt.conf"
    config.write_text("".join(f'{option[3:].split("=", 1)[0]} "{option.split("=", 1)[1]}";\n'
                              for option in repo.options))
    monkeypatch.setenv("APT_CONFIG", str(config))
    return repo


@pytest.fixture
def shutdown_stub(tmp_path, monkeypatch) -> Path:
    """A ``shutdown`` first on PATH that only writes down how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "shutdown-calls.txt"
    stub = bin_dir / "shutdown"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture
def apt_agent(live_server, tmp_path, apt_machine):
    """The real agent enrolled with APT, its scheduled scans off (the test queues what it needs)."""
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()
    ServerSettings.forget()
    _, secret = token_create(label="policy-e2e", max_seats=1, expires_in=timedelta(hours=1))
    config_path = tmp_path / "agent" / "config.json"
    registered = run_agent(config_path, "register", "--server", live_server.url, "--capabilities",
                           "apt,system,storage", token=secret)
    assert registered.returncode == 0, registered.stderr
    agent = Agent.objects.get(pk=json.loads(config_path.read_text())["agent_id"])
    AgentSubsystem.objects.filter(agent=agent).update(auto_run=False)
    command_create(agent=agent, command_type=CommandType.SCAN_UPDATES, params={"package_type": "apt"},
                   source=CommandSource.API)
    cycle(config_path)
    reported = set(PackageUpdate.objects.filter(agent=agent).values_list("name", "is_security"))
    assert {(SEC, True), (PKG, False), (HELD, True)} <= reported, reported
    return agent, config_path


def cycle(config_path: Path) -> None:
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode in (0, 1), ran.stderr  # 1: some command failed (the failing-canary test wants one)


def window_open_now(name: str) -> MaintenanceWindow:
    now = timezone.now()
    return MaintenanceWindow.objects.create(name=name, time_zone="UTC", weekdays=list(range(7)),
                                            start_time=(now - timedelta(minutes=5)).time().replace(second=0,
                                                                                                   microsecond=0),
                                            duration_minutes=120)


def policy_for(agent: Agent, **fields) -> Policy:
    group = AgentGroup.objects.create(name=f"machines-{agent.hostname}"[:64])
    group.members.add(agent)
    policy = Policy.objects.create(name="Security in the window", window=window_open_now("Open now"),
                                   created_at=timezone.now(), **fields)
    policy.groups.set([group])
    return policy


def test_a_policy_window_installs_the_security_update_and_reboots_and_the_history_tells_it(apt_agent,
                                                                                           shutdown_stub):
    agent, config_path = apt_agent
    policy = policy_for(agent, action=PolicyAction.INSTALL_NO_EXTRA, reboot=RebootRule.ALWAYS,
                        reboot_delay_minutes=REBOOT_DELAY)

    policies_sweep()  # the window is open: approve and dry-run the security update only
    turn = MachineTurn.objects.get(policy=policy, agent=agent)
    assert (turn.state, turn.packages) == (TurnState.DRY_RUN, [SEC])  # HELD never, PKG is no security update
    cycle(config_path)  # the dry-run: nothing extra, so the server confirms the install at once
    cycle(config_path)  # the install
    assert installed_version(SEC) == "1.1"
    assert installed_version(PKG) == "1.0" and installed_version(HELD) == "1.0"
    assert PackageUpdate.objects.get(agent=agent, name=SEC).status == UpdateStatus.INSTALLED

    policies_sweep()  # installed: the reboot, announced
    turn.refresh_from_db()
    assert turn.state == TurnState.REBOOTING
    cycle(config_path)  # the agent runs the reboot: the stub records it
    calls = shutdown_stub.read_text()
    assert f"-r +{REBOOT_DELAY} RedFlag policy Security in the window: this machine reboots" in calls
    cycle(config_path)  # and checks in again
    policies_sweep()
    turn.refresh_from_db()
    assert turn.state == TurnState.DONE

    story = SystemEvent.objects.filter(agent=agent).order_by("seq")
    decisions = [e.metadata["decision"] for e in story.filter(event_type=EventType.POLICY_DECISION)]
    assert decisions == ["approved", "installed", "reboot", "done"]
    for event in story.filter(event_type=EventType.POLICY_DECISION):
        assert event.metadata["policy"] == policy.name and event.metadata["window"] == "Open now"
        assert event.metadata["rollout_id"] == turn.rollout_id and event.metadata["packages"] == [SEC]
    # Between the decisions, the agent's own account of what it did.
    installed = story.get(event_type=EventType.AGENT_INSTALL)
    assert installed.metadata["packages"] and installed.metadata["packages"][0]["name"] == SEC
    sequence = [e.event_type for e in story.filter(event_type__in=(
        EventType.POLICY_DECISION, EventType.AGENT_INSTALL))]
    assert sequence.index(EventType.AGENT_INSTALL) == 1  # approved → (installed by the agent) → installed ...
    dry_run, install, reboot = (Command.objects.get(agent=agent, command_type=kind) for kind in (
        CommandType.DRY_RUN_UPDATE, CommandType.INSTALL_UPDATES, CommandType.REBOOT))
    assert dry_run.source == CommandSource.POLICY and reboot.source == CommandSource.POLICY
    assert install.status == reboot.status == "succeeded"


def test_a_two_ring_rollout_halts_when_the_canary_fails(apt_agent):
    canary, config_path = apt_agent
    other = Agent.objects.create(hostname="rest-01", machine_id_hash="f" * 64, last_seen_at=timezone.now())
    PackageUpdate.objects.create(agent=other, package_type="apt", name=SEC, is_security=True, severity="important")
    policy = policy_for(canary, action=PolicyAction.INSTALL_NO_EXTRA)
    everyone = AgentGroup.objects.create(name="rest")
    everyone.members.add(other)
    policy.groups.add(everyone)
    first = RolloutStage.objects.create(policy=policy, position=1, name="canary", halt_failure_percent=0)
    first.groups.set(AgentGroup.objects.filter(members=canary))
    RolloutStage.objects.create(policy=policy, position=2, name="rest")
    # Since its scan, someone held the package on the canary: apt refuses to change it, the dry-run fails.
    apt_mark("hold", [SEC])

    policies_sweep()
    assert list(MachineTurn.objects.values_list("agent__hostname", flat=True)) == [canary.hostname]
    cycle(config_path)  # the dry-run fails
    policies_sweep()
    rollout = Rollout.objects.get(policy=policy)
    assert rollout.status == RolloutStatus.HALTED
    assert "failed in ring canary" in rollout.halted_reason
    assert MachineTurn.objects.get(agent=canary).state == TurnState.FAILED
    policies_sweep()
    assert not MachineTurn.objects.filter(agent=other).exists()  # the rest never started
    halted = SystemEvent.objects.get(event_type=EventType.ROLLOUT, metadata__reason=rollout.halted_reason)
    assert halted.metadata["ring"] == "canary" and halted.metadata["failed"] == 1
    assert installed_version(SEC) == "1.0"
