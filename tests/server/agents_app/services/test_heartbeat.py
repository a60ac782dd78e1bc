"""Heartbeat (services/heartbeat.py): 5-second polling for a while, as the agent acknowledges it."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from agents_app.choices import CommandSource, CommandStatus
from agents_app.models import Command, PackageUpdate
from agents_app.services.heartbeat import heartbeat_enable
from agents_app.services.package_updates import updates_install
from events_app.models import SystemEvent


def test_heartbeat_follows_what_the_agent_acknowledged(agent):
    heartbeat_enable(agent=agent.model, minutes=30, source=CommandSource.WEB_UI, actor="alice")
    reply = agent.post("checkin", {"heartbeat_active": False}).json()
    assert reply["heartbeat"]["active"] is False  # not acknowledged yet, and not cleared either
    command = reply["commands"][0]
    agent.post(f"commands/{command['id']}/result", {"status": "succeeded"})
    reply = agent.post("checkin", {"heartbeat_active": True}).json()
    assert reply["heartbeat"]["active"] is True and reply["poll_interval_seconds"] == 5
    until = agent.model.heartbeat_until
    assert timedelta(minutes=29) < until - timezone.now() <= timedelta(minutes=30)


def test_stale_heartbeat_the_agent_no_longer_reports_is_cleared_and_recorded(agent):
    model = agent.model
    model.heartbeat_until = timezone.now() + timedelta(minutes=10)
    model.save()
    reply = agent.post("checkin", {"heartbeat_active": False}).json()
    assert reply["heartbeat"] == {"active": False, "until": None} and reply["poll_interval_seconds"] == 300
    assert agent.model.heartbeat_until is None
    assert SystemEvent.objects.filter(message__contains="no longer reports heartbeat").count() == 1


def test_heartbeat_turns_on_before_an_install(agent):
    PackageUpdate.objects.create(agent=agent.model, package_type="apt", name="curl", current_version="1",
                                 available_version="2")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    types = list(Command.objects.order_by("created_at").values_list("command_type", flat=True))
    assert types == ["enable_heartbeat", "dry_run_update"]
    assert Command.objects.filter(status=CommandStatus.PENDING).count() == 2
