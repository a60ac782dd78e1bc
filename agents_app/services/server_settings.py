"""The run-time settings row (redflag.models.ServerSettings): its one write path.

The model lives in redflag/ because every app reads it; writing it records an event, so the write
path lives here, above events_app.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event
from redflag.errors import InvalidRequest
from redflag.models import ServerSettings

EDITABLE_FIELDS = tuple(
    field.name for field in ServerSettings._meta.concrete_fields if field.editable and field.name not in ("id",)
)


def server_settings_update(*, changes: dict[str, Any], actor: str) -> list[str]:
    """Change settings (already validated by the admin form or the caller); returns the fields that changed.

    Every process sees the change within ServerSettings.CACHE_SECONDS.
    """
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidRequest(f"not a server setting: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        row, _ = ServerSettings.objects.select_for_update().get_or_create(pk=1)
        different = {field: value for field, value in changes.items() if getattr(row, field) != value}
        if not different:
            return []
        for field, value in different.items():
            setattr(row, field, value)
        try:
            row.full_clean()
        except ValidationError as error:
            raise InvalidRequest("; ".join(f"{field}: {' '.join(messages)}"
                                           for field, messages in error.message_dict.items())) from None
        row.save()
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.SUCCESS,
            component=Component.CONFIG,
            message=f"Server settings changed: {', '.join(different)}",
            metadata=different,
            actor=actor,
        )
    return list(different)
