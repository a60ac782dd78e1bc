import uuid

from django.db import models
from django.utils import timezone

from agents_app.querysets import AgentQuerySet


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
    last_boot_at = models.DateTimeField(null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    config_version = models.PositiveIntegerField(default=1)
    metrics = models.JSONField(default=dict, blank=True)
    # Bumped to invalidate every access token issued before (revocation, re-registration).
    credential_generation = models.PositiveIntegerField(default=1, editable=False)
    # Set by the admin "allow rebind" action: the next authenticated request may
    # bind this agent to a new machine id (after a legitimate reinstall).
    rebind_allowed_until = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["hostname"]
        # The online/offline sweep and the fleet dashboard filter on last-seen.
        indexes = [models.Index(fields=["last_seen_at"], name="agent_last_seen")]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_online(self) -> bool:
        from redflag.models import ServerSettings

        if self.last_seen_at is None:
            return False
        return self.last_seen_at >= timezone.now() - ServerSettings.current().offline_threshold

    @property
    def effective_poll_interval_seconds(self) -> int:
        from redflag.models import ServerSettings

        return self.poll_interval_seconds or ServerSettings.current().default_poll_interval_seconds
