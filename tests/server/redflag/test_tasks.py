"""Periodic tasks (redflag/tasks.py): request nonces are pruned once they are too old to be replayed."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from redflag.models import RequestNonce
from redflag.tasks import prune_request_nonces


def test_nonce_pruning_keeps_recent_nonces(agent):
    agent.post("checkin", {})
    RequestNonce.objects.create(nonce="o" * 20, created_at=timezone.now() - timedelta(minutes=11))
    assert prune_request_nonces() == 1
    assert RequestNonce.objects.count() >= 1
