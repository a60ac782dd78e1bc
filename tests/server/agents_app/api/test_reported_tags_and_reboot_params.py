"""Tags an agent reports from its config file (POST reports/system ``tags``) and the announced reboot's
parameters: both checked by the server with the rules the agent shares (agent_client.protocol)."""

from __future__ import annotations

import pytest

from agents_app.models import AgentGroup, BulkOperation, Command
from agents_app.services.bulk import bulk_operation_start
from agents_app.services.commands import command_create
from events_app.models import SystemEvent
from redflag.errors import InvalidRequest

FACTS = {"hostname": "tagged-1", "reboot_required": False}


def test_reported_tags_need_credentials(client, agent):
    response = client.post(f"/api/v1/agents/{agent.id}/reports/system", {**FACTS, "tags": ["production"]},
                           content_type="application/json")
    assert response.status_code == 401
    assert agent.model.reported_tags == []


def test_tags_are_stored_as_the_agents_own_and_a_change_is_recorded_once(agent):
    assert agent.post("reports/system", {**FACTS, "tags": ["production", "eu-west"]}).status_code == 204
    model = agent.model
    assert model.reported_tags == ["production", "eu-west"] and model.tags == []  # the admin's stay apart
    assert "tags" not in model.system_info
    assert agent.post("reports/system", {**FACTS, "tags": ["production", "eu-west"]}).status_code == 204
    changes = SystemEvent.objects.filter(agent_id=agent.id, event_type="config_changed")
    assert [event.metadata["reported_tags"] for event in changes] == [["production", "eu-west"]]

    # A report without tags (an older agent) leaves them; an empty list clears them.
    assert agent.post("reports/system", FACTS).status_code == 204
    assert agent.model.reported_tags == ["production", "eu-west"]
    assert agent.post("reports/system", {**FACTS, "tags": []}).status_code == 204
    assert agent.model.reported_tags == []


def test_a_group_by_tag_follows_the_reported_tags(agent):
    group = AgentGroup.objects.create(name="prod", rule_tag="production")
    assert list(group.agents()) == []
    agent.post("reports/system", {**FACTS, "tags": ["production"]})
    assert [member.pk for member in group.agents()] == [agent.model.pk]


@pytest.mark.parametrize("tags", [
    "production",
    ["x" * 65],
    [f"t{index}" for index in range(51)],
    ["new\nline"],
    ["a,b"],
    ["prod", "prod"],
    [""],
    [{"tag": "x"}],
])
def test_bad_tags_are_a_400_naming_the_field_and_change_nothing(agent, tags):
    response = agent.post("reports/system", {**FACTS, "tags": tags})
    assert response.status_code == 400, response.content
    assert [field.split("[")[0] for field in response.json()["error"]["fields"]] == ["tags"]  # tags or tags[0]
    assert agent.model.reported_tags == [] and agent.model.system_reported_at is None


# --- reboot with an announced delay --------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"delay_minutes": 1441},
    {"delay_minutes": -5},
    {"delay_minutes": "10"},
    {"message": "x" * 201},
    {"message": "two\nlines"},
    {"message": "-k"},
    {"shell": "rm -rf /"},
])
def test_a_reboot_with_bad_params_is_never_signed(agent, params):
    with pytest.raises(InvalidRequest) as refused:
        command_create(agent=agent.model, command_type="reboot", params=params, source="api")
    assert refused.value.status_code == 400 and "refusing to sign a reboot" in str(refused.value.detail)
    assert not Command.objects.exists()


def test_a_good_announced_reboot_is_signed_with_its_params(agent):
    command = command_create(agent=agent.model, command_type="reboot", source="api",
                             params={"delay_minutes": 30, "message": "Reboot for kernel 6.1.0-21 in 30 minutes"})
    delivered = agent.post("checkin", {}).json()["commands"]
    assert [(wire["id"], wire["params"]) for wire in delivered] == [
        (str(command.pk), {"delay_minutes": 30, "message": "Reboot for kernel 6.1.0-21 in 30 minutes"})]


def test_a_bulk_reboot_with_bad_params_is_refused_before_it_starts(agent):
    with pytest.raises(InvalidRequest):
        bulk_operation_start(kind=BulkOperation.Kind.REBOOT, agent_ids=[agent.id], params={"delay_minutes": 5000})
    assert not BulkOperation.objects.exists()
