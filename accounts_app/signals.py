"""A deleted agent group narrows the grants scoped to it: recorded as a role change of each holder."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from accounts_app.models import RoleGrant
from agents_app.models import AgentGroup
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event


@receiver(pre_delete, sender=AgentGroup)
def group_delete_narrows_grants(sender, instance: AgentGroup, **kwargs) -> None:
    """Deleting a group removes it from every grant (the many-to-many rows go with it, without a signal of
    their own): each holder's role now reaches fewer agents, possibly none, never the whole fleet."""
    in_transaction = transaction.get_connection().in_atomic_block
    for grant in RoleGrant.objects.filter(groups=instance).select_related("user"):
        username = grant.user.get_username()
        record_event(
            event_type=EventType.ROLE_CHANGED, subtype=EventSubtype.INFO, component=Component.ACCOUNTS,
            severity=Severity.INFO,
            message=f"Role {grant.role} of {username} no longer covers the deleted group {instance.name}",
            metadata={"user_id": grant.user_id, "username": username, "role": grant.role,
                      "removed_group": instance.name, "source": "group_deleted"},
            standalone=not in_transaction)
