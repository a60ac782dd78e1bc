"""Advisory vocabulary: the only place these strings are defined."""

from django.db import models


class Distro(models.TextChoices):
    """Distributions whose advisories are matched, as named in FixedIn and PlatformAlias."""

    DEBIAN = "debian", "Debian"
    UBUNTU = "ubuntu", "Ubuntu"
    ALMALINUX = "almalinux", "AlmaLinux"
    ROCKY = "rocky", "Rocky Linux"
    RHEL = "rhel", "Red Hat Enterprise Linux"
    ALPINE = "alpine", "Alpine Linux"


class FeedFormat(models.TextChoices):
    OSV = "osv", "OSV records (JSON, JSON Lines, a directory or an osv.dev all.zip)"
    DEBIAN_TRACKER = "debian_tracker", "Debian Security Tracker JSON"
    KEV = "kev", "CISA Known Exploited Vulnerabilities"
    EPSS = "epss", "FIRST EPSS scores (CSV, optionally gzipped)"


class ImportStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    UNCHANGED = "unchanged", "Unchanged (same content as the current import)"
    FAILED = "failed", "Failed (nothing stored)"


class ExposureStatus(models.TextChoices):
    """What a pending update does about a CVE that affects the machine's installed version."""

    FIXED_BY_UPDATE = "fixed_by_update", "Fixed by this update"
    UPDATE_FALLS_SHORT = "update_falls_short", "Still exposed after this update"
    NO_FIX_YET = "no_fix_yet", "No fix yet"


class ExposureSource(models.TextChoices):
    FEED = "feed", "Matched against an advisory feed"
    AGENT = "agent", "Reported by the agent's package manager (e.g. dnf updateinfo)"
