"""The window sweep (policies_app.services.sweep): exactly once per machine, the approve → dry-run → install →
reboot path with its events, missed windows, reboot limits and a constant query count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents_app.choices import CommandSource, CommandStatus, CommandType, UpdateStatus
from agents_app.models import Command, PackageUpdate
from events_app.choices import Component, EventType
from events_app.models import SystemEvent
from policies_app.choices import MissedWindowRule, PolicyAction, RebootRule, TurnState
from policies_app.models import MachineTurn, Policy
from policies_app.services.sweep import policies_sweep, policy_sweep
from redflag.models import ServerSettings
from tests.server.policies_app.helpers import (
    AFTER_WINDOW,
    BEFORE_WINDOW,
    IN_WINDOW,
    WINDOW_OPENS,
    add_updates,
    answer,
    make_fleet,
    make_group,
    make_policy,
)

pytestmark = pytest.mark.django_db


def policy_events(**filters):
    return SystemEvent.objects.filter(component=Component.POLICY, **filters)


def test_nothing_opens_before_the_window():
    agents = make_fleet(2)
    add_updates(agents)
    make_policy([make_group("web", "web-*")])
    assert policies_sweep(now=BEFORE_WINDOW) == 0
    assert not MachineTurn.objects.exists()
    assert not Command.objects.exists()


def test_window_opens_once_per_machine_approves_and_dry_runs_with_source_policy():
    agents = make_fleet(3)
    add_updates(agents, "openssl")
    add_updates(agents[:1], "vim", security=False)  # not a security update: the policy leaves it
    policy = make_policy([make_group("web", "web-*")])

    policies_sweep(now=IN_WINDOW)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))  # a second sweep in the same window opens nothing new

    turns = MachineTurn.objects.filter(policy=policy)
    assert turns.count() == 3
    assert set(turns.values_list("state", flat=True)) == {TurnState.DRY_RUN}
    assert set(turns.values_list("occurrence_start", flat=True)) == {WINDOW_OPENS}
    dry_runs = Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE)
    assert dry_runs.count() == 3
    assert set(dry_runs.values_list("source", flat=True)) == {CommandSource.POLICY}
    assert all(c.params == {"package_type": "apt", "packages": ["openssl"]} for c in dry_runs)
    assert set(PackageUpdate.objects.filter(name="openssl").values_list("status", flat=True)) == {
        UpdateStatus.APPROVED}
    assert PackageUpdate.objects.get(name="vim").status == UpdateStatus.PENDING
    # Each machine's decision names the policy, the window occurrence, the rollout, the ring and the packages.
    approved = policy_events(event_type=EventType.POLICY_DECISION, metadata__decision="approved")
    assert approved.count() == 3
    event = approved.get(agent=agents[0])
    assert event.metadata["policy"] == "Security nightly"
    assert event.metadata["occurrence_start"] == WINDOW_OPENS.isoformat()
    assert event.metadata["rollout_id"] == turns.first().rollout_id
    assert event.metadata["stage"] == 1
    assert event.metadata["packages"] == ["openssl"]
    assert policy_events(event_type=EventType.MAINTENANCE_WINDOW).count() == 1


def test_the_whole_path_install_reboot_done_and_the_history_tells_it():
    (agent,) = make_fleet(1)
    add_updates([agent])
    make_policy([make_group("web", "web-*")], reboot=RebootRule.ALWAYS, reboot_delay_minutes=3)

    policies_sweep(now=IN_WINDOW)
    answer(Command.objects.get(command_type=CommandType.DRY_RUN_UPDATE), result={"dependencies": []})
    install = Command.objects.get(command_type=CommandType.INSTALL_UPDATES)  # agents_app's own next step
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))
    assert MachineTurn.objects.get().state == TurnState.INSTALLING
    answer(install)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=2))
    turn = MachineTurn.objects.get()
    assert turn.state == TurnState.REBOOTING
    reboot = turn.reboot_command
    assert reboot.command_type == CommandType.REBOOT and reboot.source == CommandSource.POLICY
    assert reboot.params["delay_minutes"] == 3 and "reboots in 3 minute(s)" in reboot.params["message"]
    answer(reboot, when=IN_WINDOW + timedelta(minutes=3))
    agent.last_seen_at = IN_WINDOW + timedelta(minutes=8)
    agent.save(update_fields=["last_seen_at"])
    policies_sweep(now=IN_WINDOW + timedelta(minutes=9))
    assert MachineTurn.objects.get().state == TurnState.DONE
    story = list(policy_events(agent=agent, event_type=EventType.POLICY_DECISION).order_by("seq")
                 .values_list("metadata__decision", flat=True))
    assert story == ["approved", "installed", "reboot", "done"]


def test_extra_dependencies_wait_for_an_admin_or_install_per_policy():
    waiting, installing = make_fleet(1, "wait"), make_fleet(1, "take")
    add_updates(waiting + installing)
    make_policy([make_group("wait", "wait-*")], name="Careful")
    make_policy([make_group("take", "take-*")], name="Eager", action=PolicyAction.INSTALL_WITH_EXTRA)
    policies_sweep(now=IN_WINDOW)
    for command in Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE):
        answer(command, result={"dependencies": ["libfoo1"]})
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))

    assert MachineTurn.objects.get(agent=waiting[0]).state == TurnState.WAITING_ADMIN
    assert PackageUpdate.objects.get(agent=waiting[0]).status == UpdateStatus.PENDING_DEPENDENCIES
    assert MachineTurn.objects.get(agent=installing[0]).state == TurnState.INSTALLING
    confirm = Command.objects.get(agent=installing[0], command_type=CommandType.CONFIRM_DEPENDENCIES)
    assert confirm.params["dependencies"] == ["libfoo1"] and confirm.source == CommandSource.POLICY
    assert PackageUpdate.objects.get(agent=installing[0]).operation_command == confirm
    answer(confirm)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=2))
    assert MachineTurn.objects.get(agent=installing[0]).state == TurnState.DONE  # reboot when required: not


def test_dry_run_only_leaves_the_install_to_an_admin():
    (agent,) = make_fleet(1)
    add_updates([agent])
    make_policy([make_group("web", "web-*")], action=PolicyAction.DRY_RUN)
    policies_sweep(now=IN_WINDOW)
    answer(Command.objects.get(command_type=CommandType.DRY_RUN_UPDATE), result={"dependencies": []})
    assert not Command.objects.filter(command_type=CommandType.INSTALL_UPDATES).exists()
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))
    assert MachineTurn.objects.get().state == TurnState.WAITING_ADMIN
    assert PackageUpdate.objects.get().status == UpdateStatus.APPROVED


def test_at_most_n_machines_of_a_group_reboot_at_once():
    agents = make_fleet(3)
    add_updates(agents)
    make_policy([make_group("web", "web-*")], reboot=RebootRule.ALWAYS, reboot_max_concurrent=2)
    policies_sweep(now=IN_WINDOW)
    for command in Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE):
        answer(command, result={"dependencies": []})
    for command in Command.objects.filter(command_type=CommandType.INSTALL_UPDATES):
        answer(command)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))
    assert Command.objects.filter(command_type=CommandType.REBOOT).count() == 2
    assert MachineTurn.objects.filter(state=TurnState.REBOOT_WAITING).count() == 1
    # One finishes and is back: the third machine's turn comes.
    first = Command.objects.filter(command_type=CommandType.REBOOT).order_by("agent__hostname").first()
    answer(first, when=IN_WINDOW + timedelta(minutes=2))
    first.agent.last_seen_at = IN_WINDOW + timedelta(minutes=3)
    first.agent.save(update_fields=["last_seen_at"])
    policies_sweep(now=IN_WINDOW + timedelta(minutes=4))
    assert Command.objects.filter(command_type=CommandType.REBOOT).count() == 3


def test_reboots_happen_inside_a_window_only():
    (agent,) = make_fleet(1)
    add_updates([agent])
    make_policy([make_group("web", "web-*")], reboot=RebootRule.ALWAYS)
    policies_sweep(now=IN_WINDOW)
    answer(Command.objects.get(command_type=CommandType.DRY_RUN_UPDATE), result={"dependencies": []})
    answer(Command.objects.get(command_type=CommandType.INSTALL_UPDATES))
    policies_sweep(now=AFTER_WINDOW)  # the install finished after the window closed
    assert MachineTurn.objects.get().state == TurnState.REBOOT_WAITING
    assert not Command.objects.filter(command_type=CommandType.REBOOT).exists()
    policies_sweep(now=IN_WINDOW + timedelta(days=7))  # the next window
    assert Command.objects.filter(command_type=CommandType.REBOOT).count() == 1


@pytest.mark.parametrize(("rule", "starts_when_back"), [
    (MissedWindowRule.NEXT_WINDOW, False),
    (MissedWindowRule.AS_SOON_AS_BACK, True),
])
def test_an_offline_machine_misses_the_window_and_catches_up_per_policy(rule, starts_when_back):
    (agent,) = make_fleet(1, seen=BEFORE_WINDOW - timedelta(days=2))
    add_updates([agent])
    make_policy([make_group("web", "web-*")], missed_window=rule)
    policies_sweep(now=IN_WINDOW)
    assert MachineTurn.objects.get().state == TurnState.MISSED
    assert policy_events(metadata__decision="missed").count() == 1
    agent.last_seen_at = AFTER_WINDOW
    agent.save(update_fields=["last_seen_at"])
    policies_sweep(now=AFTER_WINDOW)
    assert Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE).exists() == starts_when_back
    if not starts_when_back:
        agent.last_seen_at = IN_WINDOW + timedelta(days=7)
        agent.save(update_fields=["last_seen_at"])
        policies_sweep(now=IN_WINDOW + timedelta(days=7))
        assert Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE).count() == 1
        assert MachineTurn.objects.count() == 2


def test_a_machine_back_inside_the_same_window_gets_its_turn_whatever_the_rule():
    (agent,) = make_fleet(1, seen=BEFORE_WINDOW - timedelta(days=2))
    add_updates([agent])
    make_policy([make_group("web", "web-*")], missed_window=MissedWindowRule.NEXT_WINDOW)
    policies_sweep(now=IN_WINDOW)
    agent.last_seen_at = IN_WINDOW + timedelta(minutes=30)
    agent.save(update_fields=["last_seen_at"])
    policies_sweep(now=IN_WINDOW + timedelta(minutes=30))
    assert MachineTurn.objects.get().state == TurnState.DRY_RUN


@pytest.mark.parametrize(("rule", "catches_up"), [
    (MissedWindowRule.NEXT_WINDOW, False),
    (MissedWindowRule.AS_SOON_AS_BACK, True),
])
def test_a_window_the_server_missed_while_down_is_handled_when_it_is_back(rule, catches_up):
    agents = make_fleet(2, seen=AFTER_WINDOW)
    add_updates(agents)
    make_policy([make_group("web", "web-*")], missed_window=rule)
    policies_sweep(now=AFTER_WINDOW)  # no sweep ran during the window
    assert Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE).count() == (2 if catches_up else 0)
    missed = policy_events(event_type=EventType.MAINTENANCE_WINDOW)
    assert missed.count() == 1 and "while the server was down" in missed.get().message
    policies_sweep(now=AFTER_WINDOW + timedelta(minutes=1))  # recorded once
    assert policy_events(event_type=EventType.MAINTENANCE_WINDOW).count() == 1


def test_held_soaking_and_excluded_updates_are_never_taken_but_known_exploited_skip_the_soak():
    (agent,) = make_fleet(1)
    add_updates([agent], "openssl")
    add_updates([agent], "linux-image", metadata={"held": True})
    add_updates([agent], "curl", first_seen=IN_WINDOW - timedelta(days=1))  # still soaking
    add_updates([agent], "nginx-dev")
    make_policy([make_group("web", "web-*")], minimum_age_days=3, exclude_patterns="*-dev")
    policies_sweep(now=IN_WINDOW)
    assert MachineTurn.objects.get().packages == ["openssl"]


def test_a_racing_second_sweep_finds_the_turns_taken_and_does_nothing():
    """The other cluster wins between our read of the policy and our insert: we back off."""
    agents = make_fleet(3)
    add_updates(agents)
    policy = make_policy([make_group("web", "web-*")])
    stale = Policy.objects.get(pk=policy.pk)  # read before the other sweep ran
    policies_sweep(now=IN_WINDOW)
    before = Command.objects.count(), SystemEvent.objects.count()
    policy_sweep(policy=stale, now=IN_WINDOW)
    assert (Command.objects.count(), SystemEvent.objects.count()) == before
    assert MachineTurn.objects.count() == 3


def statements(captured) -> list[str]:
    """The statements run, with a bulk INSERT that the driver split into batches (SQLite binds at most 999
    parameters a statement, about 49 commands) counted once: the batches are one statement of ours."""
    merged: list[str] = []
    previous_multi_row = False
    for query in captured.captured_queries:
        sql = query["sql"]
        head = sql.split("(", 1)[0] if sql.startswith("INSERT") else sql[:60]
        # Only the batches after a multi-row INSERT: a loop of one-row INSERTs still counts every row.
        if previous_multi_row and merged[-1] == head:
            continue
        previous_multi_row = sql.startswith("INSERT") and "), (" in sql
        merged.append(head)
    return merged


def _sweep_queries(count: int) -> tuple[int, int]:
    agents = make_fleet(count, prefix=f"n{count}")
    add_updates(agents)
    add_updates(agents, "curl")
    make_policy([make_group(f"n{count}", f"n{count}-*")], name=f"p{count}", reboot=RebootRule.ALWAYS)
    with CaptureQueriesContext(connection) as opening:
        policies_sweep(now=IN_WINDOW)
    assert MachineTurn.objects.filter(policy__name=f"p{count}", state=TurnState.DRY_RUN).count() == count
    for command in Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE, status=CommandStatus.PENDING):
        answer(command, result={"dependencies": []})
    for command in Command.objects.filter(command_type=CommandType.INSTALL_UPDATES):
        answer(command)
    with CaptureQueriesContext(connection) as following:
        policies_sweep(now=IN_WINDOW + timedelta(minutes=1))
    assert MachineTurn.objects.filter(policy__name=f"p{count}", state=TurnState.REBOOTING).count() == 1  # 1 a group
    return len(statements(opening)), len(statements(following))


def test_sweep_queries_do_not_grow_with_the_number_of_machines(monkeypatch):
    """Opening a window and following its turns cost the same at 5 and at 50 machines."""
    monkeypatch.setattr(ServerSettings, "CACHE_SECONDS", 3600)  # its time-based re-read is not the sweep's
    ServerSettings.current()  # once-only work out of the way: the server settings row and the signing key
    policies_sweep(now=BEFORE_WINDOW)
    five = _sweep_queries(5)
    Policy.objects.all().update(enabled=False)
    fifty = _sweep_queries(50)
    assert fifty == five, f"(opening, following) queries: 5 machines {five}, 50 machines {fifty}"
