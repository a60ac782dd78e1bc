"""Agent groups (AgentGroup): membership by rule, by hand, or both, as one filter on agents."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from agents_app.models import Agent, AgentGroup, AgentSubsystem

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    def make(hostname, os_family="linux", tags=(), reported=(), subsystems=()):
        agent = Agent.objects.create(hostname=hostname, os_family=os_family, tags=list(tags),
                                     reported_tags=list(reported), machine_id_hash=hostname.ljust(64, "0"))
        for name, enabled in subsystems:
            AgentSubsystem.objects.create(agent=agent, name=name, enabled=enabled)
        return agent

    return {
        "web-1": make("web-1", tags=["production", "eu-west"], subsystems=[("apt", True)]),
        "web-2": make("WEB-2.lan", reported=["production"], subsystems=[("dnf", True)]),
        "db-1": make("db-1", tags=["staging"], subsystems=[("apt", False)]),
        "win-1": make("win-1", os_family="windows", tags=['quote"d', "prod"], subsystems=[("winget", True)]),
    }


def hostnames(group):
    return sorted(group.agents().values_list("hostname", flat=True))


def test_tag_rule_matches_an_admins_or_the_agents_own_tag_exactly(fleet):
    assert hostnames(AgentGroup.objects.create(name="prod", rule_tag="production")) == ["WEB-2.lan", "web-1"]
    # Whole elements only: "prod" is not "production", and a quote in a tag is just a character.
    assert hostnames(AgentGroup.objects.create(name="p", rule_tag="prod")) == ["win-1"]
    assert hostnames(AgentGroup.objects.create(name="q", rule_tag='quote"d')) == ["win-1"]
    assert hostnames(AgentGroup.objects.create(name="none", rule_tag="product")) == []


def test_every_rule_part_must_hold_and_hostname_patterns_are_case_insensitive_globs(fleet):
    group = AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*", rule_os_family="LINUX")
    assert hostnames(group) == ["WEB-2.lan", "web-1"]
    group.rule_hostname_pattern = "web-?"
    assert hostnames(group) == ["web-1"]
    # "." is a dot, not any character.
    assert hostnames(AgentGroup.objects.create(name="dot", rule_hostname_pattern="web-2xlan")) == []


def test_package_manager_rule_counts_enabled_subsystems_only(fleet):
    assert hostnames(AgentGroup.objects.create(name="apt", rule_package_type="apt")) == ["web-1"]


def test_members_join_whatever_the_rule_and_a_group_without_rule_holds_only_members(fleet):
    group = AgentGroup.objects.create(name="hand")
    assert hostnames(group) == []
    group.members.add(fleet["db-1"])
    assert hostnames(group) == ["db-1"]
    group.rule_os_family = "windows"
    assert hostnames(group) == ["db-1", "win-1"]


def test_hostname_pattern_accepts_hostname_characters_only():
    group = AgentGroup(name="bad", rule_hostname_pattern="web-(.*)")
    with pytest.raises(ValidationError) as raised:
        group.full_clean()
    assert "rule_hostname_pattern" in raised.value.error_dict
