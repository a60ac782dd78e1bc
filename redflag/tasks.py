"""django-q2 tasks for cross-cutting maintenance."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from redflag.models import RequestNonce


def prune_request_nonces() -> int:
    """Delete nonces too old to matter: a request that old fails the timestamp check first."""
    cutoff = timezone.now() - timedelta(seconds=2 * settings.REDFLAG_NONCE_SKEW_SECONDS)
    deleted, _ = RequestNonce.objects.filter(created_at__lt=cutoff).delete()
    return deleted
