"""django-q2 tasks: the daily download of every enabled feed, and the exposure refresh every 15 minutes
that maps updates scanned since (migration 0002 registers both schedules)."""

from __future__ import annotations

import logging

import requests

from advisories_app.importers import gunzipped
from advisories_app.mapping import exposures_refresh
from advisories_app.models import FeedSource
from advisories_app.services import FeedImportFailed, feed_import

logger = logging.getLogger(__name__)

# The largest feed (the Debian tracker JSON) is ~70 MB; refuse what is clearly not a feed.
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
TIMEOUT_SECONDS = 120


def download(url: str) -> bytes:
    """The body at ``url`` (gunzipped), refusing more than MAX_DOWNLOAD_BYTES."""
    with requests.get(url, stream=True, timeout=TIMEOUT_SECONDS) as response:
        response.raise_for_status()
        chunks, size = [], 0
        for chunk in response.iter_content(chunk_size=1 << 20):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise FeedImportFailed(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
            chunks.append(chunk)
    return gunzipped(b"".join(chunks))


def download_feeds() -> dict[str, str]:
    """Download and import each enabled FeedSource; one failing feed does not stop the others."""
    outcome = {}
    for source in FeedSource.objects.filter(enabled=True):
        try:
            content = download(source.url)
            imported = feed_import(content=content, source=source.url, feed=source.name,
                                   feed_format=source.feed_format)
            outcome[source.name] = imported.status
        except (requests.RequestException, FeedImportFailed) as exc:
            logger.warning("advisory feed %s not imported: %s", source.name, exc)
            outcome[source.name] = f"failed: {exc}"
    return outcome


def refresh_exposures() -> int:
    """Map the updates scanned since the last import (an import refreshes by itself)."""
    return exposures_refresh()
