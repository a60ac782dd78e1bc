""""What will happen" (policies_app.preview) and the next window per machine: reads that change nothing and
cost the same at any fleet size."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from advisories_app.models import UpdateRisk
from agents_app.models import Command, PackageUpdate
from events_app.models import SystemEvent
from policies_app.models import MachineTurn, Rollout, RolloutStage
from policies_app.preview import policy_preview
from policies_app.selection import enabled_policies, next_window_for_agent, next_windows_for_agents
from redflag.models import ServerSettings
from tests.server.policies_app.helpers import (
    BEFORE_WINDOW,
    WINDOW_OPENS,
    add_updates,
    make_fleet,
    make_group,
    make_policy,
    make_window,
)

pytestmark = pytest.mark.django_db


def snapshot():
    return (list(PackageUpdate.objects.order_by("pk").values_list("pk", "status", "operation_command_id")),
            Command.objects.count(), SystemEvent.objects.count(), MachineTurn.objects.count(),
            Rollout.objects.count())


def test_preview_lists_per_machine_what_the_policy_would_take_and_writes_nothing():
    canary, web = make_fleet(1, "canary"), make_fleet(2, "web", seen=BEFORE_WINDOW - timedelta(days=3))
    add_updates(canary + web, "openssl")
    fresh = add_updates(web[:1], "curl", first_seen=BEFORE_WINDOW - timedelta(hours=2))  # soaking...
    UpdateRisk.objects.create(package_update=fresh[0], cve_count=1, max_cvss=9.8, known_exploited=True)  # ...but KEV
    add_updates(web[:1], "linux-image-amd64", metadata={"held": True})
    policy = make_policy([make_group("all", "*")], minimum_age_days=7)
    stage = RolloutStage.objects.create(policy=policy, position=1, name="canary")
    stage.groups.set([make_group("canaries", "canary-*")])
    RolloutStage.objects.create(policy=policy, position=2, name="rest")
    before = snapshot()

    preview = policy_preview(policy, BEFORE_WINDOW)

    assert snapshot() == before
    assert preview.occurrence.start == WINDOW_OPENS
    rows = {m.agent.hostname: m for m in preview.machines}
    assert [u.name for u in rows["canary-000"].updates] == ["openssl"]
    assert [u.name for u in rows["web-000"].updates] == ["curl", "openssl"]  # the held kernel never
    assert rows["web-000"].waits_for_ring and not rows["canary-000"].waits_for_ring
    assert rows["web-000"].outcome == "Waits until the rollout reaches ring rest"
    assert not rows["web-001"].online
    assert [u.known_exploited for u in rows["web-000"].updates] == [True, False]


def _preview_queries(count: int) -> int:
    agents = make_fleet(count, f"q{count}")
    add_updates(agents)
    policy = make_policy([make_group(f"q{count}", f"q{count}-*")], name=f"q{count}")
    with CaptureQueriesContext(connection) as queries:
        preview = policy_preview(policy, BEFORE_WINDOW)
    assert len(preview.machines) == count
    return len(queries.captured_queries)


def test_preview_queries_do_not_grow_with_the_number_of_machines(monkeypatch):
    monkeypatch.setattr(ServerSettings, "CACHE_SECONDS", 3600)  # its time-based re-read is not the preview's
    ServerSettings.current()
    assert _preview_queries(5) == _preview_queries(50)


def test_next_window_for_an_agent_is_the_earliest_of_its_policies():
    (agent,) = make_fleet(1)
    make_policy([make_group("web", "web-*")], name="weekly")
    daily = make_window("Daily 23:00", weekdays=[0, 1, 2, 3, 4, 5, 6], start_time="23:00")
    make_policy([make_group("web2", "web-*")], window=daily, name="daily")
    policy, occurrence = next_window_for_agent(agent, BEFORE_WINDOW)
    # BEFORE_WINDOW is Sunday 01:00 UTC: Sunday 02:00 comes before Sunday 23:00.
    assert (policy.name, occurrence.start) == ("weekly", WINDOW_OPENS)
    assert next_window_for_agent(agent, WINDOW_OPENS + timedelta(hours=3))[0].name == "daily"
    (stranger,) = make_fleet(1, "db")
    assert next_window_for_agent(stranger, BEFORE_WINDOW) is None


def test_next_windows_for_a_page_of_agents_costs_one_query_per_policy(django_assert_num_queries):
    agents = make_fleet(20)
    make_policy([make_group("web", "web-*")])
    policies = list(enabled_policies())
    with django_assert_num_queries(1):
        found = next_windows_for_agents([a.pk for a in agents], BEFORE_WINDOW, policies=policies)
    assert len(found) == 20


def test_an_update_an_admin_approved_is_taken_whatever_the_rules_but_never_a_held_one():
    [web] = make_fleet(1, "web")
    add_updates([web], "openssl")  # security: the rules take it
    add_updates([web], "vim", security=False, status="approved")  # not security, but an admin approved it
    add_updates([web], "htop", security=False)  # neither: left alone
    add_updates([web], "zsh", security=False, status="approved", metadata={"held": True})  # held: never
    policy = make_policy([make_group("all", "*")], include_patterns="open*")

    [machine] = policy_preview(policy, BEFORE_WINDOW).machines

    assert sorted(u.name for u in machine.updates) == ["openssl", "vim"]
