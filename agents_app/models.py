import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.deconstruct import deconstructible

from agents_app import lookups  # noqa: F401  (registers the has_tag lookup the group rules use)
from agents_app.choices import (
    OPEN_COMMAND_STATUSES,
    CommandSource,
    CommandStatus,
    CommandType,
    PackageType,
    SubsystemName,
    SubsystemStatus,
    UpdateSeverity,
    UpdateStatus,
    command_title,
    names_in_words,
)
from agents_app.querysets import AgentQuerySet, AgentSubsystemQuerySet, CommandQuerySet, PackageUpdateQuerySet
from redflag.models import ServerSettings

# How much of a machine-id hash events and pages show: enough to tell machines apart, not the
# identifier itself.
MACHINE_ID_PREFIX_CHARS = 12


def machine_id_prefix(machine_id_hash: str) -> str:
    return machine_id_hash[:MACHINE_ID_PREFIX_CHARS]


class Agent(models.Model):
    """One enrolled machine.

    Online/offline is derived from ``last_seen_at`` (Agent.objects.online() and
    ``is_online`` share ServerSettings.offline_threshold), never stored.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hostname = models.CharField(max_length=255)
    os_family = models.CharField(max_length=32, blank=True)
    os_name = models.CharField(max_length=128, blank=True)
    os_version = models.CharField(max_length=128, blank=True)
    kernel = models.CharField(max_length=128, blank=True)
    arch = models.CharField(max_length=32, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    machine_id_hash = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the host's machine id, sent on every request."
    )
    registered_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    poll_interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: the server's default poll interval."
    )
    heartbeat_until = models.DateTimeField(null=True, blank=True)
    reboot_required = models.BooleanField(default=False)
    reboot_reason = models.CharField(max_length=255, blank=True)
    # What the agent last said it can scan (probed at its start-up; agents_app.services.capabilities).
    # Empty (None) for an agent that never said: its subsystems stand for it.
    capabilities = models.JSONField(null=True, blank=True, editable=False)
    verify_scans = models.BooleanField(
        default=False, db_default=False,
        help_text="Check every scan against the package tool's own listing; a disagreement is recorded as a "
                  "warning event.",
    )
    last_boot_at = models.DateTimeField(null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    # Tags the agent reports from its own config file (``tags`` in config.json); an admin's are ``tags``.
    reported_tags = models.JSONField(default=list, blank=True, editable=False,
                                     db_default=models.Value("[]"))
    config_version = models.PositiveIntegerField(default=1)
    metrics = models.JSONField(default=dict, blank=True)
    # Bumped to invalidate every access token issued before (revocation, re-registration).
    credential_generation = models.PositiveIntegerField(default=1, editable=False)
    # Set by the admin "allow rebind" action: the next authenticated request may
    # bind this agent to a new machine id (after a legitimate reinstall).
    rebind_allowed_until = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The latest system report (OS, CPU, memory, disks, uptime, IPs), shown on the agent page.
    system_info = models.JSONField(default=dict, blank=True)
    system_reported_at = models.DateTimeField(null=True, blank=True)
    # The last online/offline transition the presence sweep recorded as an event, so
    # it records each transition once. Not the status itself: that is derived.
    presence_recorded = models.CharField(max_length=8, blank=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["hostname"]
        # The online/offline sweep and the fleet dashboard filter on last-seen.
        indexes = [models.Index(fields=["last_seen_at"], name="agent_last_seen")]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_online(self) -> bool:
        if self.last_seen_at is None:
            return False
        return self.last_seen_at >= timezone.now() - ServerSettings.current().offline_threshold

    @property
    def effective_poll_interval_seconds(self) -> int:
        return self.poll_interval_seconds or ServerSettings.current().default_poll_interval_seconds


class RefreshToken(models.Model):
    """One link in an agent's refresh-token chain (a "family").

    Each renew marks the presented token rotated and issues its successor in the
    same family. Presenting a rotated token again means it was copied: the whole
    family is revoked (see agents_app.services.credentials.credentials_renew).
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="refresh_tokens")
    family = models.UUIDField(db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    rotated_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )
    # The single tolerated retry of this token after it was rotated (README: "Refresh tokens").
    retry_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"refresh token {self.pk} of {self.agent_id}"


class AgentSubsystem(models.Model):
    """One thing an agent can scan, with its schedule.

    Changed only through agents_app.services.subsystems, which bumps the agent's config_version
    and records the change.
    """

    CONFIG_FIELDS = ("enabled", "auto_run", "interval_minutes")

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="subsystems")
    name = models.CharField(max_length=32, choices=SubsystemName.choices)
    enabled = models.BooleanField(default=True)
    auto_run = models.BooleanField(default=True, help_text="Scan on the schedule below.")
    interval_minutes = models.PositiveIntegerField(default=360)
    next_run_at = models.DateTimeField(null=True, blank=True, help_text="Empty: due now.")
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(max_length=16, choices=SubsystemStatus.choices, default=SubsystemStatus.NEVER_RUN)
    last_error = models.TextField(blank=True)

    objects = AgentSubsystemQuerySet.as_manager()

    class Meta:
        ordering = ["agent", "name"]
        constraints = [models.UniqueConstraint(fields=["agent", "name"], name="one_subsystem_per_name")]
        # The scheduling sweep: enabled, auto-run rows by due time.
        indexes = [models.Index(fields=["next_run_at"], condition=models.Q(enabled=True, auto_run=True),
                                name="subsystem_due")]

    def __str__(self) -> str:
        return f"{self.agent} / {self.name}"


class BulkOperation(models.Model):
    """Progress of one fleet-wide action run as a django-q2 task."""

    class Kind(models.TextChoices):
        SCAN = "scan", "Scan now"
        APPROVE = "approve", "Approve updates"
        INSTALL = "install", "Install updates"
        HEARTBEAT = "heartbeat", "Heartbeat"
        REBOOT = "reboot", "Reboot"
        UPDATE_AGENT = "update_agent", "Update agent"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="The first failures, with the reason.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.done + self.failed}/{self.requested})"


class Command(models.Model):
    """Work for one agent, Ed25519-signed at creation (agents_app.services.commands.command_build), except
    the scheduler's scans: stored unsigned and signed as they are delivered (commands_deliver)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="commands")
    command_type = models.CharField(max_length=32, choices=CommandType.choices)
    params = models.JSONField(default=dict, blank=True)
    # Type plus what distinguishes it (scan_updates:apt): at most one open command per key and agent.
    dedupe_key = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=CommandStatus.choices, default=CommandStatus.PENDING)
    source = models.CharField(max_length=16, choices=CommandSource.choices)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    # The signed envelope. Empty nonce, key id and signature: a scheduled scan not delivered yet.
    issued_at = models.DateTimeField()
    nonce = models.CharField(max_length=64, blank=True)
    key_id = models.CharField(max_length=32, blank=True)
    signature = models.CharField(max_length=128, blank=True)
    result = models.JSONField(default=dict, blank=True)
    output = models.TextField(blank=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    bulk_operation = models.ForeignKey(
        BulkOperation, null=True, blank=True, on_delete=models.SET_NULL, related_name="commands"
    )

    objects = CommandQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "dedupe_key"], condition=models.Q(status__in=OPEN_COMMAND_STATUSES),
                name="one_open_command_per_key",
            ),
        ]
        indexes = [
            # Check-in delivery: an agent's oldest pending commands.
            models.Index(fields=["agent", "status", "created_at"], name="command_delivery"),
            # The timeout sweep: sent or running commands by age.
            models.Index(fields=["status", "sent_at"], name="command_timeout"),
        ]

    def __str__(self) -> str:
        return f"{self.title} for {self.agent_id} ({self.status})"

    @property
    def title(self) -> str:
        """What the command does, naming its package manager and packages (agents_app.choices.command_title)."""
        return command_title(self.command_type, self.params or {})


class PackageUpdate(models.Model):
    """One pending update on one agent; scan reports are the full truth per package type."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="updates")
    package_type = models.CharField(max_length=16, choices=PackageType.choices)
    name = models.CharField(max_length=255)
    current_version = models.CharField(max_length=255, blank=True)
    available_version = models.CharField(max_length=255, blank=True)
    severity = models.CharField(max_length=16, choices=UpdateSeverity.choices, default=UpdateSeverity.UNKNOWN)
    is_security = models.BooleanField(default=False)
    repository = models.CharField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    cve_ids = models.JSONField(default=list, blank=True)
    kb_ids = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # The source package the update was built from, when the agent reports one that differs from the
    # binary name (apt: libssl3 → openssl): Debian's advisories name source packages. Taken from
    # metadata["source"] at ingestion, only when it passes the package name grammar. db_default: the raw
    # inserts that do not name the column (benches) still get "".
    source_name = models.CharField(max_length=255, blank=True, default="", db_default="")
    status = models.CharField(max_length=24, choices=UpdateStatus.choices, default=UpdateStatus.PENDING)
    # Extra packages the last dry-run would pull in (waiting for an admin when not empty).
    dependencies = models.JSONField(default=list, blank=True)
    operation_command = models.ForeignKey(
        Command, null=True, blank=True, on_delete=models.SET_NULL, related_name="package_updates",
        help_text="The dry-run or install working on this update.",
    )
    last_report_id = models.CharField(max_length=64, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    status_changed_at = models.DateTimeField(default=timezone.now)

    objects = PackageUpdateQuerySet.as_manager()

    class Meta:
        ordering = ["agent", "package_type", "name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "package_type", "name"], name="one_update_per_package"),
        ]
        indexes = [
            # Fleet lists and the dashboard: open updates by status and severity.
            models.Index(fields=["status", "severity"], name="update_status_severity"),
            models.Index(fields=["agent", "status"], name="update_agent_status"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.current_version} → {self.available_version}"


class UpdateLog(models.Model):
    """History of package operations (dry-runs and installs)."""

    class Action(models.TextChoices):
        DRY_RUN = "dry_run", "Dry-run"
        INSTALL = "install", "Install"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="update_logs")
    command = models.ForeignKey(Command, null=True, blank=True, on_delete=models.SET_NULL)
    package_type = models.CharField(max_length=16, choices=PackageType.choices)
    packages = models.JSONField(default=list)
    action = models.CharField(max_length=16, choices=Action.choices)
    succeeded = models.BooleanField()
    exit_code = models.IntegerField(null=True, blank=True)
    output_tail = models.TextField(blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} of {names_in_words(self.packages or [])} on {self.agent}"


class IngestedReport(models.Model):
    """Report ids already applied, so a retried report changes nothing."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    report_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "report_id"], name="report_once_per_agent")]


# --- agent releases -----------------------------------------------------------------------------


@deconstructible
class ReleaseStorage(FileSystemStorage):
    """Artifacts under ``settings.DATA_DIR / "releases"``, read when used (tests point DATA_DIR elsewhere)."""

    def __init__(self):
        super().__init__()

    @property
    def base_location(self):
        return Path(settings.DATA_DIR) / "releases"

    @property
    def location(self):
        return str(self.base_location.resolve())

    @property
    def base_url(self):
        return None


class AgentRelease(models.Model):
    """One built agent artifact with its signed manifest.

    The latest release of a platform is computed, never stored: the highest
    version (numeric order, agents_app.services.releases.version_key) among its
    non-revoked releases — ``agents_app.services.releases.latest_release`` is the one rule.
    """

    class Platform(models.TextChoices):
        ANY = "any", "Any (Python zipapp)"

    id = models.BigAutoField(primary_key=True)
    version = models.CharField(max_length=32)
    platform = models.CharField(max_length=16, choices=Platform.choices, default=Platform.ANY)
    artifact = models.FileField(storage=ReleaseStorage(), upload_to="", max_length=255)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    manifest = models.JSONField(default=dict, help_text="The signed fields: version, platform, size, sha256, created.")
    signature = models.CharField(max_length=128, help_text="Ed25519 over agent_client.protocol.release_manifest_bytes.")
    key_id = models.CharField(max_length=32)
    created_by = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["platform", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["platform", "version"], name="release_once_per_platform")]

    def __str__(self) -> str:
        return f"redflag-agent {self.version} ({self.platform})"


def hostname_pattern_regex(pattern: str) -> str:
    """A shell-style hostname pattern (``web-*``, ``db-?.lan``) as an anchored regular expression that
    PostgreSQL and SQLite read alike. The pattern was validated to hostname characters, ``*`` and ``?``."""
    translated = "".join({"*": ".*", "?": ".", ".": r"\."}.get(character, character) for character in pattern)
    return f"^{translated}$"


class AgentGroup(models.Model):
    """Agents picked by a rule, by hand, or both: what bulk actions, policies and role scopes target.

    An agent belongs to the group when an admin added it (``members``) or when it matches every part of
    the rule that is set. A group with no rule part set holds only its members.
    """

    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    rule_os_family = models.CharField(
        "OS family", max_length=32, blank=True, help_text="As the agent reports it: linux, windows, darwin.")
    rule_tag = models.CharField(
        "tag", max_length=64, blank=True, help_text="A tag set by an admin or reported by the agent.")
    rule_hostname_pattern = models.CharField(
        "hostname pattern", max_length=255, blank=True,
        validators=[RegexValidator(r"^[A-Za-z0-9.*?_-]+$", "Use hostname characters with * and ? only.")],
        help_text="Shell-style, case-insensitive: web-*, db-?.lan.")
    rule_package_type = models.CharField(
        "package manager", max_length=16, blank=True, choices=PackageType.choices,
        help_text="Agents that scan with this package manager.")
    members = models.ManyToManyField(Agent, blank=True, related_name="manual_groups",
                                     help_text="Agents in the group whatever the rule says.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_rule(self) -> bool:
        return bool(self.rule_os_family or self.rule_tag or self.rule_hostname_pattern or self.rule_package_type)

    def rule_q(self) -> models.Q | None:
        """The rule as a filter on agents; None when no part of it is set."""
        if not self.has_rule:
            return None
        q = models.Q()
        if self.rule_os_family:
            q &= models.Q(os_family__iexact=self.rule_os_family)
        if self.rule_tag:
            q &= models.Q(tags__has_tag=self.rule_tag) | models.Q(reported_tags__has_tag=self.rule_tag)
        if self.rule_hostname_pattern:
            q &= models.Q(hostname__iregex=hostname_pattern_regex(self.rule_hostname_pattern))
        if self.rule_package_type:
            q &= models.Q(pk__in=AgentSubsystem.objects.filter(
                name=self.rule_package_type, enabled=True).values("agent_id"))
        return q

    def agents_q(self) -> models.Q:
        """Who is in the group, as a filter on agents (one subquery for the members, the rule inline)."""
        q = models.Q(pk__in=AgentGroup.members.through.objects.filter(agentgroup_id=self.pk).values("agent_id"))
        rule = self.rule_q()
        return q | rule if rule is not None else q

    def agents(self):
        return Agent.objects.filter(self.agents_q())
