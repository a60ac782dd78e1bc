from django.conf import settings
from django.db import models
from django.utils import timezone

from tokens_app.choices import TokenStatus
from tokens_app.querysets import RegistrationTokenQuerySet, token_status


class RegistrationToken(models.Model):
    """A multi-seat, expiring, revocable enrollment secret. Only its hash is stored."""

    label = models.CharField(max_length=200)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=32, editable=False, help_text="Enough to recognise the token, not to use it.")
    max_seats = models.PositiveIntegerField(default=1)
    seats_used = models.PositiveIntegerField(default=0, editable=False)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = RegistrationTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(max_seats__gte=1), name="token_at_least_one_seat"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.prefix}…)"

    @property
    def status(self) -> TokenStatus:
        """Computed on read, so an expired token can never show as active."""
        return token_status(self, timezone.now())


class SigningKey(models.Model):
    """The public half of an Ed25519 signing key. The private key lives in a file only."""

    key_id = models.CharField(max_length=32, unique=True)
    public_key = models.CharField(max_length=64, help_text="Raw 32-byte Ed25519 public key, base64.")
    is_primary = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
    # Rotation: the previous primary key's signature over this key (agent_client.protocol.key_endorsement_bytes),
    # so agents that pinned the old key can trust the new one.
    endorsed_by = models.CharField(max_length=32, blank=True)
    endorsement = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_primary"], condition=models.Q(is_primary=True), name="one_primary_signing_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_id}{' (primary)' if self.is_primary else ''}"
