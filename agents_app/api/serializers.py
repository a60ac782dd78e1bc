from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agent_client.protocol import (
    EVENT_METADATA_MAX_BYTES,
    EVENT_METADATA_MAX_DEPTH,
    EVENT_METADATA_MAX_KEYS,
    TAG_MAX_CHARS,
    TAGS_MAX_COUNT,
    event_metadata_problem,
    package_name_problem,
    tags_problem,
)
from agents_app.choices import CommandStatus, PackageType, SubsystemName, UpdateSeverity
from events_app.choices import AGENT_REPORTABLE_TYPES, Component, EventSubtype, Severity
from tokens_app.api.serializers import SigningKeySerializer


class Text(serializers.CharField):
    """Agent text is taken as sent: DRF's default trimming would turn a schema-valid " " into a blank error."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)


HEX_SHA256 = r"^[0-9a-f]{64}$"
# Column limits: bigger numbers are bad input (400), not a database error.
BIGINT_MAX = 2**63 - 1
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
OS_FAMILIES = ("linux", "windows", "darwin", "freebsd", "other")
MAX_EVENTS_PER_REQUEST = 500


class Count(serializers.IntegerField):
    """A size, count or duration: 0 to BIGINT_MAX. Stored in JSON it has no column limit, but 2**64 bytes of
    memory is nonsense, refused like any other bad input."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(**kwargs)


class RegisterSerializer(serializers.Serializer):
    registration_token = Text(max_length=128)
    machine_id = serializers.RegexField(
        HEX_SHA256, help_text="Lowercase hex SHA-256 of the host's machine id.",
        error_messages={"invalid": "Must be the lowercase hex SHA-256 of the machine id."},
    )
    hostname = Text(max_length=255)
    os_family = serializers.ChoiceField(choices=OS_FAMILIES)
    os_name = Text(max_length=128, required=False, allow_blank=True, default="")
    os_version = Text(max_length=128, required=False, allow_blank=True, default="")
    kernel = Text(max_length=128, required=False, allow_blank=True, default="")
    arch = Text(max_length=32, required=False, allow_blank=True, default="")
    agent_version = Text(max_length=32)
    capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=SubsystemName.choices), required=False, default=list, max_length=16,
        help_text="What this agent can scan; each becomes a subsystem.",
    )
    refresh_token = Text(
        max_length=128, required=False,
        help_text="A machine that is already enrolled re-enrols only with its agent's current refresh token "
                  "(or within a re-enrolment window an admin opened); otherwise 409 already_enrolled.",
    )


class CredentialsSerializer(serializers.Serializer):
    access_token = Text()
    access_token_expires_at = serializers.DateTimeField()
    refresh_token = Text()
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
    refresh_token = Text(max_length=128)


class MetricsSerializer(serializers.Serializer):
    cpu_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    memory_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    memory_used_bytes = Count(required=False)
    memory_total_bytes = Count(required=False)
    disk_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    load_average = serializers.ListField(child=serializers.FloatField(min_value=0), max_length=3, required=False)
    uptime_seconds = Count(required=False)


class CheckinSerializer(serializers.Serializer):
    agent_version = Text(max_length=32, required=False)
    config_version = Count(required=False)
    heartbeat_active = serializers.BooleanField(required=False)
    metrics = MetricsSerializer(required=False, default=dict)
    capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=SubsystemName.choices), required=False, max_length=16,
        help_text="What this agent can scan now, probed at its start-up; sent with the first check-in after "
                  "it. A set that differs from the known one enables and disables the agent's subsystems.",
    )

    # The plain body's metrics, as agent_client.machine collects them: (field, kind).
    PLAIN_METRICS = (("cpu_percent", "percent"), ("memory_percent", "percent"), ("memory_used_bytes", "count"),
                     ("memory_total_bytes", "count"), ("disk_percent", "percent"), ("load_average", "loads"),
                     ("uptime_seconds", "count"))

    @classmethod
    def plain_validated_data(cls, data) -> dict | None:
        """What ``validated_data`` would be for a body the agent sends as it always does, without building a
        serializer (a third of the check-in's CPU in Django was DRF deep-copying these fields per request); None for
        anything else (other types, capabilities, unknown keys, an error), which the serializer then judges
        and words. Only exact JSON types are taken here, so the result equals the serializer's by construction
        (tests/server/agents_app/api/test_checkin_plain_body.py compares the two on generated bodies).
        """
        if type(data) is not dict or not data.keys() <= {"agent_version", "config_version", "heartbeat_active",
                                                         "metrics"}:
            return None
        validated: dict = {}
        version = data.get("agent_version")
        if "agent_version" in data:
            if type(version) is not str or not 0 < len(version) <= 32 or "\x00" in version or not version.isascii():
                return None  # (a non-ASCII version, rare, goes to DRF's surrogate check)
            validated["agent_version"] = version
        if "config_version" in data:
            if not cls._plain_count(data["config_version"]):
                return None
            validated["config_version"] = data["config_version"]
        if "heartbeat_active" in data:
            if type(data["heartbeat_active"]) is not bool:
                return None
            validated["heartbeat_active"] = data["heartbeat_active"]
        metrics = data.get("metrics", {})
        if type(metrics) is not dict or not metrics.keys() <= {name for name, _ in cls.PLAIN_METRICS}:
            return None
        validated["metrics"] = {}
        for name, kind in cls.PLAIN_METRICS:
            if name not in metrics:
                continue
            value = metrics[name]
            if kind == "count" and cls._plain_count(value):
                validated["metrics"][name] = value
            elif kind == "percent" and cls._plain_number(value) and 0 <= value <= 100:
                validated["metrics"][name] = float(value)
            elif (kind == "loads" and type(value) is list and len(value) <= 3
                  and all(cls._plain_number(load) and load >= 0 for load in value)):
                validated["metrics"][name] = [float(load) for load in value]
            else:
                return None
        return validated

    @staticmethod
    def _plain_count(value) -> bool:
        return type(value) is int and 0 <= value <= BIGINT_MAX

    @staticmethod
    def _plain_number(value) -> bool:
        return type(value) in (int, float) and value == value  # not NaN (the parser refuses it anyway)


class HeartbeatStateSerializer(serializers.Serializer):
    active = serializers.BooleanField()
    until = serializers.DateTimeField(allow_null=True)


class WireCommandSerializer(serializers.Serializer):
    """A signed command; the agent verifies the Ed25519 signature over agent_client.protocol's canonical bytes."""

    id = serializers.UUIDField()
    agent_id = serializers.UUIDField()
    type = Text()
    params = serializers.DictField()
    issued_at = serializers.IntegerField()
    expires_at = serializers.IntegerField()
    nonce = Text()
    key_id = Text()
    signature = Text()


class CheckinResponseSerializer(serializers.Serializer):
    commands = WireCommandSerializer(many=True)
    config_version = serializers.IntegerField()
    poll_interval_seconds = serializers.IntegerField()
    heartbeat = HeartbeatStateSerializer()
    server_time = serializers.DateTimeField()


class StrictUUIDField(serializers.UUIDField):
    """A UUID written as a string: DRF's UUIDField would also read 0 or false as the all-zero UUID."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
class IPAddressField(serializers.IPAddressField):
    pass


class AgentEventSerializer(serializers.Serializer):
    id = StrictUUIDField(help_text="Chosen by the agent; a repeat of a known id is ignored.")
    event_type = serializers.ChoiceField(choices=[(value, value) for value in AGENT_REPORTABLE_TYPES])
    event_subtype = serializers.ChoiceField(choices=EventSubtype.choices)
    severity = serializers.ChoiceField(choices=Severity.choices, default=Severity.INFO)
    component = serializers.ChoiceField(choices=Component.choices, default=Component.AGENT)
    message = Text(max_length=2000)
    metadata = serializers.DictField(
        required=False, default=dict,
        help_text=f"At most {EVENT_METADATA_MAX_BYTES} bytes as compact JSON, {EVENT_METADATA_MAX_DEPTH} levels deep "
                  f"and {EVENT_METADATA_MAX_KEYS} keys in all (agent_client.protocol.event_metadata_problem).",
    )
    occurred_at = serializers.DateTimeField(help_text="When the agent says it happened; kept as its claim "
                                                      "(reported_at). The history orders by when the server got it.")

    def validate_metadata(self, value):
        problem = event_metadata_problem(value)
        if problem:
            raise serializers.ValidationError(f"{problem[0].upper()}{problem[1:]}.")
        return value


class EventsSerializer(serializers.Serializer):
    events = serializers.ListField(child=AgentEventSerializer(), min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsResponseSerializer(serializers.Serializer):
    received = serializers.IntegerField()
    stored = serializers.IntegerField(help_text="Events not seen before.")


MAX_OUTPUT_CHARS = 256 * 1024
MAX_REPORT_UPDATES = 20000


class CommandResultSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=[(status, status) for status in (CommandStatus.RUNNING, CommandStatus.SUCCEEDED, CommandStatus.FAILED)]
    )
    output = Text(required=False, allow_blank=True, default="", max_length=MAX_OUTPUT_CHARS)
    exit_code = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=INT_MIN,
                                         max_value=INT_MAX)
    duration_seconds = serializers.FloatField(required=False, allow_null=True, default=None, min_value=0)
    dependencies = serializers.ListField(child=Text(max_length=255), required=False, default=list,
                                         max_length=5000)
    packages = serializers.ListField(child=serializers.DictField(), required=False, default=list, max_length=5000)
    details = serializers.DictField(required=False, default=dict)

    def validated_result(self) -> dict:
        data = self.validated_data
        return {key: data[key] for key in ("exit_code", "duration_seconds", "dependencies", "packages", "details")}


class CommandResultResponseSerializer(serializers.Serializer):
    status = Text()
    changed = serializers.BooleanField()


SEVERITIES = frozenset(UpdateSeverity.values)


def _plain_text(value, max_length: int, *, blank: bool = True) -> bool:
    """A string Text(max_length=…) keeps as it is: no NUL, no lone surrogate (DRF's own validators)."""
    if type(value) is not str or len(value) > max_length or not (blank or value) or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_texts(value, max_items: int, max_length: int) -> bool:
    if type(value) is not list or len(value) > max_items:
        return False
    for item in value:  # usually none or one: a loop costs less than all() and its generator
        if not _plain_text(item, max_length, blank=False):
            return False
    return True


def plain_reported_update(row) -> dict | None:
    """ReportedUpdateSerializer's validated data for a row that is plainly valid, built without DRF's per-field
    machinery (75 ms for 2,000 rows, bench/ingest.py); None for anything else, which then goes through the
    serializer, so what is accepted, its defaults and every error message stay DRF's
    (tests/server/agents_app/api/test_updates_report_validation.py holds the two equal).

    Plainly valid means each present field already has the type and form DRF would turn it into: a bool, not
    "true"; an int, not "12"; a string, not 12.
    """
    if type(row) is not dict:
        return None
    get = row.get
    name, current, available = get("name"), get("current_version"), get("available_version")
    severity, is_security = get("severity", UpdateSeverity.UNKNOWN), get("is_security", False)
    repository, size_bytes = get("repository", ""), get("size_bytes")
    cve_ids, kb_ids, metadata = get("cve_ids", []), get("kb_ids", []), get("metadata", {})
    if not (_plain_text(name, 255, blank=False) and _plain_text(current, 255) and _plain_text(available, 255)
            and isinstance(severity, str) and severity in SEVERITIES and (is_security is True or is_security is False)
            and _plain_text(repository, 255)
            and (size_bytes is None or (type(size_bytes) is int and 0 <= size_bytes <= BIGINT_MAX))
            and _plain_texts(cve_ids, 500, 32) and _plain_texts(kb_ids, 100, 32) and type(metadata) is dict):
        return None
    return {"name": name, "current_version": current, "available_version": available, "severity": severity,
            "is_security": is_security, "repository": repository, "size_bytes": size_bytes,
            "cve_ids": list(cve_ids), "kb_ids": list(kb_ids), "metadata": dict(metadata)}


class ReportedUpdateListSerializer(serializers.ListSerializer):
    def run_child_validation(self, data):
        validated = plain_reported_update(data)
        return validated if validated is not None else super().run_child_validation(data)


class ReportedUpdateSerializer(serializers.Serializer):
    class Meta:
        list_serializer_class = ReportedUpdateListSerializer

    name = Text(max_length=255)
    current_version = Text(max_length=255, allow_blank=True)
    available_version = Text(max_length=255, allow_blank=True)
    severity = serializers.ChoiceField(choices=UpdateSeverity.choices, default=UpdateSeverity.UNKNOWN)
    is_security = serializers.BooleanField(default=False)
    repository = Text(max_length=255, allow_blank=True, default="")
    size_bytes = serializers.IntegerField(min_value=0, max_value=BIGINT_MAX, required=False, allow_null=True,
                                          default=None)
    cve_ids = serializers.ListField(child=Text(max_length=32), default=list, max_length=500)
    kb_ids = serializers.ListField(child=Text(max_length=32), default=list, max_length=100)
    metadata = serializers.DictField(default=dict)


class UpdatesReportSerializer(serializers.Serializer):
    report_id = serializers.RegexField(r"^[A-Za-z0-9_.:-]{8,64}$", help_text="Idempotency key chosen by the agent.")
    package_type = serializers.ChoiceField(choices=PackageType.choices)
    updates = ReportedUpdateSerializer(many=True, max_length=MAX_REPORT_UPDATES)
    not_checked = serializers.ListField(child=Text(max_length=255), default=list, max_length=1000)

    def validate_updates(self, updates):
        seen, duplicates = set(), set()
        for update in updates:
            (duplicates if update["name"] in seen else seen).add(update["name"])
        if duplicates:
            raise serializers.ValidationError(f"Package names appear twice: {', '.join(sorted(duplicates)[:10])}.")
        return updates

    def validate(self, data):
        """Every name is a name of this package type (the same grammar the agent and the signer apply)."""
        errors = [{} for _ in data["updates"]]
        for index, update in enumerate(data["updates"]):
            problem = package_name_problem(data["package_type"], update["name"])
            if problem:
                errors[index] = {"name": [f"{update['name'][:100]!r} is {problem}."]}
        if any(errors):
            raise serializers.ValidationError({"updates": errors})
        return data


class UpdatesReportResponseSerializer(serializers.Serializer):
    duplicate = serializers.BooleanField(help_text="True when this report id was applied before.")
    updates = serializers.IntegerField()
    closed = serializers.IntegerField()
    installed = serializers.IntegerField()
    reopened = serializers.IntegerField()


class DiskSerializer(serializers.Serializer):
    mountpoint = Text(max_length=1024)
    device = Text(max_length=1024, allow_blank=True, default="")
    fstype = Text(max_length=64, allow_blank=True, default="")
    total_bytes = Count()
    used_bytes = Count()
    percent = serializers.FloatField(min_value=0, max_value=100)


@extend_schema_field({
    "type": "array", "maxItems": TAGS_MAX_COUNT, "uniqueItems": True,
    "items": {"type": "string", "minLength": 1, "maxLength": TAG_MAX_CHARS},
    "description": "Printable, no comma, no leading or trailing space (agent_client.protocol.tags_problem).",
})
class TagsListField(serializers.ListField):
    """An agent's tags, checked with the rule the agent and the admin share (agent_client.protocol.tags_problem)."""

    def __init__(self, **kwargs):
        super().__init__(child=Text(max_length=TAG_MAX_CHARS), max_length=TAGS_MAX_COUNT, **kwargs)

    def to_internal_value(self, data):
        tags = super().to_internal_value(data)
        problem = tags_problem(tags)
        if problem:
            raise serializers.ValidationError(problem)
        return tags


class SystemReportSerializer(serializers.Serializer):
    hostname = Text(max_length=255, required=False)
    os_name = Text(max_length=128, required=False, allow_blank=True)
    os_version = Text(max_length=128, required=False, allow_blank=True)
    kernel = Text(max_length=128, required=False, allow_blank=True)
    arch = Text(max_length=32, required=False, allow_blank=True)
    cpu_model = Text(max_length=255, required=False, allow_blank=True)
    cpu_count = Count(required=False)
    cpu_percent = serializers.FloatField(min_value=0, max_value=100, required=False)
    memory_total_bytes = Count(required=False)
    memory_used_bytes = Count(required=False)
    disks = DiskSerializer(many=True, required=False, default=list, max_length=256)
    uptime_seconds = Count(required=False)
    boot_time = serializers.DateTimeField(required=False)
    ip_addresses = serializers.ListField(child=IPAddressField(), required=False, default=list,
                                         max_length=256)
    reboot_required = serializers.BooleanField()
    reboot_reason = Text(max_length=1000, required=False, allow_blank=True, default="")
    # The tags in the agent's config file (Agent.reported_tags); absent: the stored ones stay.
    tags = TagsListField(required=False)


class SubsystemConfigSerializer(serializers.Serializer):
    name = Text()
    enabled = serializers.BooleanField()
    auto_run = serializers.BooleanField()
    interval_minutes = serializers.IntegerField()


class AgentConfigResponseSerializer(serializers.Serializer):
    config_version = serializers.IntegerField()
    poll_interval_seconds = serializers.IntegerField()
    subsystems = SubsystemConfigSerializer(many=True)
