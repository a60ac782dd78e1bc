from rest_framework import serializers

from events_app.choices import AGENT_REPORTABLE_TYPES, Component, EventSubtype, Severity

HEX_SHA256 = r"^[0-9a-f]{64}$"
OS_FAMILIES = ("linux", "windows", "darwin", "freebsd", "other")
MAX_EVENTS_PER_REQUEST = 500
MAX_EVENT_METADATA_KEYS = 100


class RegisterSerializer(serializers.Serializer):
    registration_token = serializers.CharField(max_length=128)
    machine_id = serializers.RegexField(
        HEX_SHA256, help_text="Lowercase hex SHA-256 of the host's machine id.",
        error_messages={"invalid": "Must be the lowercase hex SHA-256 of the machine id."},
    )
    hostname = serializers.CharField(max_length=255)
    os_family = serializers.ChoiceField(choices=OS_FAMILIES)
    os_name = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    os_version = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    kernel = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    arch = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    agent_version = serializers.CharField(max_length=32)


class SigningKeySerializer(serializers.Serializer):
    key_id = serializers.CharField()
    algorithm = serializers.CharField(default="ed25519")
    public_key = serializers.CharField(help_text="Raw 32-byte Ed25519 public key, base64.")
    primary = serializers.BooleanField(source="is_primary")
    created_at = serializers.DateTimeField()


class SigningKeysSerializer(serializers.Serializer):
    keys = SigningKeySerializer(many=True)


class CredentialsSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    access_token_expires_at = serializers.DateTimeField()
    refresh_token = serializers.CharField()
    refresh_token_expires_at = serializers.DateTimeField()


class AgentConfigSerializer(serializers.Serializer):
    config_version = serializers.IntegerField()
    poll_interval_seconds = serializers.IntegerField()


class RegisterResponseSerializer(CredentialsSerializer):
    agent_id = serializers.UUIDField()
    reregistered = serializers.BooleanField()
    signing_keys = SigningKeySerializer(many=True)
    config = AgentConfigSerializer()


class RenewSerializer(serializers.Serializer):
    refresh_token = serializers.CharField(max_length=128)


class MetricsSerializer(serializers.Serializer):
    cpu_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    memory_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    memory_used_bytes = serializers.IntegerField(min_value=0, required=False)
    memory_total_bytes = serializers.IntegerField(min_value=0, required=False)
    disk_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    load_average = serializers.ListField(child=serializers.FloatField(min_value=0), max_length=3, required=False)
    uptime_seconds = serializers.IntegerField(min_value=0, required=False)


class CheckinSerializer(serializers.Serializer):
    agent_version = serializers.CharField(max_length=32, required=False)
    config_version = serializers.IntegerField(min_value=0, required=False)
    heartbeat_active = serializers.BooleanField(required=False)
    metrics = MetricsSerializer(required=False, default=dict)


class HeartbeatStateSerializer(serializers.Serializer):
    active = serializers.BooleanField()
    until = serializers.DateTimeField(allow_null=True)


class CheckinResponseSerializer(serializers.Serializer):
    commands = serializers.ListField(child=serializers.DictField())
    config_version = serializers.IntegerField()
    poll_interval_seconds = serializers.IntegerField()
    heartbeat = HeartbeatStateSerializer()
    server_time = serializers.DateTimeField()


class AgentEventSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="Chosen by the agent; a repeat of a known id is ignored.")
    event_type = serializers.ChoiceField(choices=[(value, value) for value in AGENT_REPORTABLE_TYPES])
    event_subtype = serializers.ChoiceField(choices=EventSubtype.choices)
    severity = serializers.ChoiceField(choices=Severity.choices, default=Severity.INFO)
    component = serializers.ChoiceField(choices=Component.choices, default=Component.AGENT)
    message = serializers.CharField(max_length=2000)
    metadata = serializers.DictField(required=False, default=dict)
    occurred_at = serializers.DateTimeField()

    def validate_metadata(self, value):
        if len(value) > MAX_EVENT_METADATA_KEYS:
            raise serializers.ValidationError(f"At most {MAX_EVENT_METADATA_KEYS} keys.")
        return value


class EventsSerializer(serializers.Serializer):
    events = AgentEventSerializer(many=True, max_length=MAX_EVENTS_PER_REQUEST, min_length=1)


class EventsResponseSerializer(serializers.Serializer):
    received = serializers.IntegerField()
    stored = serializers.IntegerField(help_text="Events not seen before.")


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
