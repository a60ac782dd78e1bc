"""Rings: a ring starts after the previous one soaked and succeeded; failures halt until an admin answers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents_app.choices import CommandType
from agents_app.models import Agent, Command
from events_app.choices import Component, EventType
from events_app.models import SystemEvent
from policies_app.choices import RolloutStatus, TurnState
from policies_app.models import MachineTurn, Rollout, RolloutStage
from policies_app.services.rollouts import rollout_abort, rollout_resume
from policies_app.services.sweep import policies_sweep
from tests.server.policies_app.helpers import IN_WINDOW, add_updates, answer, make_fleet, make_group, make_policy

pytestmark = pytest.mark.django_db
NEXT_WINDOW = IN_WINDOW + timedelta(days=7)


@pytest.fixture
def two_rings():
    canary = make_fleet(1, "canary")
    rest = make_fleet(3, "web")
    add_updates(canary + rest)
    policy = make_policy([make_group("all", "*")])
    first = RolloutStage.objects.create(policy=policy, position=1, name="canary", soak_hours=24, success_percent=100,
                                        minimum_machines=1, halt_failure_percent=0)
    first.groups.set([make_group("canaries", "canary-*")])
    RolloutStage.objects.create(policy=policy, position=2, name="rest", soak_hours=0, success_percent=50)
    return policy, canary, rest


def finish_canary(canary, *, succeeded: bool, when):
    answer(Command.objects.get(agent=canary[0], command_type=CommandType.DRY_RUN_UPDATE),
           result={"dependencies": []})
    answer(Command.objects.get(agent=canary[0], command_type=CommandType.INSTALL_UPDATES), succeeded=succeeded)
    policies_sweep(now=when)


def test_the_next_ring_starts_only_after_the_canary_soaked_and_succeeded(two_rings):
    policy, canary, rest = two_rings
    policies_sweep(now=IN_WINDOW)
    assert list(MachineTurn.objects.values_list("agent__hostname", flat=True)) == ["canary-000"]
    finish_canary(canary, succeeded=True, when=IN_WINDOW + timedelta(minutes=2))
    rollout = Rollout.objects.get()
    assert rollout.stage_position == 1 and rollout.stage_finished_at is not None
    # Still soaking at the next window (7 days > 24 h soak, but test a sweep before the soak ends first).
    policies_sweep(now=IN_WINDOW + timedelta(hours=1))
    assert Rollout.objects.get().stage_position == 1
    policies_sweep(now=NEXT_WINDOW)
    assert Rollout.objects.get().stage_position == 2
    rest_turns = MachineTurn.objects.filter(agent__in=rest, occurrence_start__gte=NEXT_WINDOW - timedelta(hours=1))
    assert rest_turns.count() == 3
    assert set(rest_turns.values_list("stage_position", flat=True)) == {2}
    assert SystemEvent.objects.filter(event_type=EventType.ROLLOUT, metadata__next_ring="rest").exists()


def test_a_failing_canary_halts_the_rollout_and_an_admin_resumes_or_aborts(two_rings):
    policy, canary, rest = two_rings
    policies_sweep(now=IN_WINDOW)
    finish_canary(canary, succeeded=False, when=IN_WINDOW + timedelta(minutes=2))
    rollout = Rollout.objects.get()
    assert rollout.status == RolloutStatus.HALTED
    assert "1 of 1 machine(s) failed in ring canary" in rollout.halted_reason
    halted = SystemEvent.objects.get(event_type=EventType.ROLLOUT, component=Component.POLICY,
                                     metadata__reason=rollout.halted_reason)
    assert halted.metadata["failed"] == 1 and halted.metadata["rollout_id"] == rollout.pk
    # Halted: the next window opens nothing for the rest.
    policies_sweep(now=NEXT_WINDOW)
    assert not MachineTurn.objects.filter(agent__in=rest).exists()
    assert rollout_resume(rollout=rollout, actor="alice")
    assert not rollout_resume(rollout=rollout, actor="alice")  # no longer halted
    rollout.refresh_from_db()
    assert (rollout.status, rollout.stage_position) == (RolloutStatus.RUNNING, 2)
    assert SystemEvent.objects.filter(event_type=EventType.ROLLOUT, actor="alice", metadata__action="resume").exists()
    Agent.objects.filter(pk__in=[a.pk for a in rest]).update(last_seen_at=NEXT_WINDOW)
    policies_sweep(now=NEXT_WINDOW + timedelta(minutes=1))
    assert MachineTurn.objects.filter(agent__in=rest, state=TurnState.DRY_RUN).count() == 3
    assert rollout_abort(rollout=rollout, actor="bob")
    assert Rollout.objects.get().status == RolloutStatus.ABORTED
    assert SystemEvent.objects.filter(event_type=EventType.ROLLOUT, actor="bob", metadata__action="abort").exists()


def test_a_ring_below_its_success_share_halts_once_it_finished():
    agents = make_fleet(4)
    add_updates(agents)
    policy = make_policy([make_group("web", "web-*")])
    RolloutStage.objects.create(policy=policy, position=1, name="all", soak_hours=0, success_percent=100,
                                halt_failure_percent=50)
    policies_sweep(now=IN_WINDOW)
    for index, command in enumerate(Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE)
                                    .order_by("agent__hostname")):
        answer(command, succeeded=index > 0)  # one dry-run fails: 25 %, under the halt threshold
    for command in Command.objects.filter(command_type=CommandType.INSTALL_UPDATES):
        answer(command)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=2))
    rollout = Rollout.objects.get()
    assert rollout.status == RolloutStatus.HALTED
    assert "succeeded on 3 of 4" in rollout.halted_reason


def test_without_rings_a_rollout_of_every_machine_completes():
    agents = make_fleet(2)
    add_updates(agents)
    make_policy([make_group("web", "web-*")])
    policies_sweep(now=IN_WINDOW)
    for command in Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE):
        answer(command, result={"dependencies": []})
    for command in Command.objects.filter(command_type=CommandType.INSTALL_UPDATES):
        answer(command)
    policies_sweep(now=IN_WINDOW + timedelta(minutes=1))
    policies_sweep(now=IN_WINDOW + timedelta(minutes=2))
    assert Rollout.objects.filter(status=RolloutStatus.COMPLETED).count() == 1
