"""Presence (services/presence.py): online/offline transitions, each recorded once."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from agents_app.services.presence import presence_sweep
from events_app.models import SystemEvent


def test_presence_transitions_are_recorded_once(agent):
    assert presence_sweep() == 1  # first sighting: recorded silently
    assert not SystemEvent.objects.filter(message__contains="went offline").exists()
    later = timezone.now() + timedelta(hours=1)
    assert presence_sweep(now=later) == 1
    assert presence_sweep(now=later) == 0
    assert SystemEvent.objects.filter(message__contains="went offline").count() == 1
    agent.post("checkin", {})
    assert presence_sweep() == 1
    assert SystemEvent.objects.filter(message__contains="came back online").count() == 1
