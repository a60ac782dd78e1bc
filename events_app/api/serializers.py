"""The read API's response shapes (documentation for the schema; rows are built by events_app.rendering)."""

from rest_framework import serializers

from events_app.choices import Component, EventSubtype, EventType, Origin, Severity


class AuditEventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    created_at = serializers.DateTimeField(help_text="When the server recorded or received the event.")
    # Plain strings in the schema: named enums would collide with the agent API's "severity"
    # vocabulary (drf-spectacular W001, which fails check --deploy). The values are listed instead.
    event_type = serializers.CharField(help_text="One of: " + ", ".join(EventType.values))
    event_subtype = serializers.CharField(help_text="One of: " + ", ".join(EventSubtype.values))
    severity = serializers.CharField(help_text="One of: " + ", ".join(Severity.values))
    component = serializers.CharField(help_text="One of: " + ", ".join(Component.values))
    agent_id = serializers.UUIDField(allow_null=True)
    hostname = serializers.CharField()
    actor = serializers.CharField()
    origin = serializers.CharField(help_text="Who recorded it: " + "; ".join(f"{value}: {label}" for value, label
                                                                           in Origin.choices))
    reported_at = serializers.DateTimeField(allow_null=True,
                                            help_text="Agent-reported events: the time the agent claims.")
    message = serializers.CharField()
    metadata = serializers.DictField()


class AuditEventPageSerializer(serializers.Serializer):
    results = AuditEventSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True, help_text=(
        "Pass as ?cursor= for the next (older) page; null on the last. Continue while it is set: a page with a "
        "text filter (q) may hold fewer rows than limit and still have a next one."))
    searched_back_to = serializers.DateTimeField(allow_null=True, help_text=(
        "Set when a text filter's page stopped at its scan window rather than at limit rows or the end: the "
        "moment it searched back to. Older matches, if any, are on the next page."))
