"""An admin's answers to a halted rollout, and the record of changes made to windows and policies."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from policies_app.choices import OPEN_ROLLOUT_STATUSES, RolloutStatus
from policies_app.models import MaintenanceWindow, Policy, Rollout


def _rollout_metadata(rollout: Rollout, **extra) -> dict:
    return {"policy_id": rollout.policy_id, "policy": rollout.policy.name, "rollout_id": rollout.pk,
            "stage": rollout.stage_position, **extra}


def rollout_resume(*, rollout: Rollout, actor: str) -> bool:
    """Resume a halted rollout past the ring that halted it: the next ring starts at the next window (the
    rollout completes when it was the last). False when it was not halted (any more)."""
    now = timezone.now()
    positions = sorted(rollout.policy.stages.values_list("position", flat=True)) or [1]
    later = [position for position in positions if position > rollout.stage_position]
    with transaction.atomic():
        if later:
            moved = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.HALTED).update(
                status=RolloutStatus.RUNNING, stage_position=later[0], stage_started_at=now, stage_finished_at=None)
        else:
            moved = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.HALTED).update(
                status=RolloutStatus.COMPLETED, finished_at=now)
        if not moved:
            return False
        halted_stage = rollout.stage_position
        rollout.refresh_from_db()
        record_event(event_type=EventType.ROLLOUT, subtype=EventSubtype.SUCCESS, component=Component.POLICY,
                     message=f"{actor} resumed the rollout of policy {rollout.policy.name} past ring "
                             f"{halted_stage}" + ("" if later else "; it is complete"),
                     metadata=_rollout_metadata(rollout, halted_stage=halted_stage,
                                                halted_reason=rollout.halted_reason, action="resume"),
                     actor=actor)
    return True


def rollout_abort(*, rollout: Rollout, actor: str) -> bool:
    """Stop a running or halted rollout for good: no machine gets a new turn from it."""
    with transaction.atomic():
        moved = Rollout.objects.filter(pk=rollout.pk, status__in=OPEN_ROLLOUT_STATUSES).update(
            status=RolloutStatus.ABORTED, finished_at=timezone.now())
        if not moved:
            return False
        record_event(event_type=EventType.ROLLOUT, subtype=EventSubtype.WARNING, severity=Severity.WARNING,
                     component=Component.POLICY, message=f"{actor} aborted the rollout of policy {rollout.policy.name}",
                     metadata=_rollout_metadata(rollout, action="abort"), actor=actor)
    return True


def window_changed(*, window: MaintenanceWindow, actor: str, created: bool) -> None:
    """Record an admin's save of a window (in the admin's transaction, after its blackouts were saved)."""
    record_event(event_type=EventType.MAINTENANCE_WINDOW, subtype=EventSubtype.SUCCESS, component=Component.POLICY,
                 message=f"{actor} {'created' if created else 'changed'} maintenance window {window.name}",
                 metadata={"window_id": window.pk, "window": window.name, "recurrence": window.recurrence,
                           "blackouts": [str(b) for b in window.blackouts.all()]}, actor=actor)


def policy_changed(*, policy: Policy, actor: str, created: bool) -> None:
    """Record an admin's save of a policy with its rules (in the admin's transaction, after its groups)."""
    record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.POLICY,
                 message=f"{actor} {'created' if created else 'changed'} patching policy {policy.name}",
                 metadata={"policy_id": policy.pk, "policy": policy.name, "enabled": policy.enabled,
                           "window": policy.window.name, "groups": [g.name for g in policy.groups.all()],
                           "approval_scope": policy.approval_scope, "minimum_severity": policy.minimum_severity,
                           "minimum_age_days": policy.minimum_age_days, "action": policy.action,
                           "reboot": policy.reboot, "missed_window": policy.missed_window,
                           "stages": [str(s) for s in policy.stages.all()]}, actor=actor)
