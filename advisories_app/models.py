"""CVEs with their scores, which release fixes them in which version, and who is exposed.

Written only through advisories_app.services (imports) and advisories_app.mapping (exposures).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from advisories_app.choices import Distro, ExposureSource, ExposureStatus, FeedFormat, ImportStatus
from advisories_app.querysets import ExposureQuerySet, VulnerabilityQuerySet
from agents_app.models import Agent, PackageUpdate


class Vulnerability(models.Model):
    """One CVE: what the feeds say about it, whichever feed said it."""

    cve_id = models.CharField(max_length=32, unique=True)
    summary = models.TextField(blank=True)
    cvss_score = models.FloatField(null=True, blank=True, help_text="Highest CVSS base score any advisory gives.")
    cvss_vector = models.CharField(max_length=255, blank=True)
    epss_score = models.FloatField(null=True, blank=True, help_text="FIRST EPSS: probability of exploitation "
                                                                    "in the next 30 days.")
    epss_percentile = models.FloatField(null=True, blank=True)
    epss_date = models.DateField(null=True, blank=True)
    known_exploited = models.BooleanField(default=False, help_text="Listed in the CISA KEV catalogue.")
    kev_date_added = models.DateField(null=True, blank=True)
    kev_due_date = models.DateField(null=True, blank=True)
    kev_ransomware = models.BooleanField(default=False, help_text="KEV: known use in ransomware campaigns.")

    objects = VulnerabilityQuerySet.as_manager()

    class Meta:
        ordering = ["-known_exploited", "-cvss_score", "cve_id"]
        verbose_name = "CVE"
        verbose_name_plural = "CVEs"

    def __str__(self) -> str:
        return self.cve_id


class FixedIn(models.Model):
    """An advisory's word that ``package`` on (distro, release) is fixed in ``fixed_version``.

    An empty ``fixed_version`` means the release is affected and no fix is published yet. Rows belong
    to the feed that imported them and are replaced as a whole by that feed's next import.
    """

    feed = models.CharField(max_length=64)
    advisory_id = models.CharField(max_length=64)
    vulnerability = models.ForeignKey(Vulnerability, on_delete=models.CASCADE, related_name="fixes")
    distro = models.CharField(max_length=16, choices=Distro.choices)
    release = models.CharField(max_length=16)
    package = models.CharField(max_length=255)
    fixed_version = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["distro", "release", "package"]
        verbose_name = "fixed-in record"
        constraints = [models.UniqueConstraint(
            fields=["feed", "advisory_id", "vulnerability", "distro", "release", "package"], name="fix_once_per_feed")]
        indexes = [
            # The mapping looks fixes up by the machine's release and the update's package name.
            models.Index(fields=["distro", "release", "package"], name="fixedin_lookup"),
            models.Index(fields=["feed"], name="fixedin_feed"),
        ]

    def __str__(self) -> str:
        fixed = self.fixed_version or "(no fix)"
        return f"{self.vulnerability_id}: {self.package} {fixed} ({self.distro} {self.release})"


class FeedSource(models.Model):
    """Where the scheduled download fetches a feed from; an air-gapped server disables it and imports files."""

    name = models.CharField(max_length=64, unique=True, help_text="Also the feed name its imports replace.")
    feed_format = models.CharField(max_length=16, choices=FeedFormat.choices)
    url = models.URLField(max_length=500)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FeedImport(models.Model):
    """One import of one feed, from a download or a file. Its data becomes visible only when it succeeds."""

    feed = models.CharField(max_length=64)
    feed_format = models.CharField(max_length=16, choices=FeedFormat.choices)
    source = models.CharField(max_length=1000, help_text="URL or file path.")
    sha256 = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=ImportStatus.choices, default=ImportStatus.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        # "The current import of this feed" (incremental skip): latest succeeded per feed.
        indexes = [models.Index(fields=["feed", "status", "started_at"], name="feedimport_latest")]

    def __str__(self) -> str:
        return f"{self.feed} {self.started_at:%Y-%m-%d %H:%M} ({self.status})"


class PlatformAlias(models.Model):
    """(os-release NAME, VERSION_ID) as agents report them → the (distro, release) advisories use.

    Rebuilt by each mapping refresh from the distinct pairs in the fleet (a handful of rows), so the
    mapping can join machines to advisories in SQL.
    """

    os_name = models.CharField(max_length=128)
    os_version = models.CharField(max_length=128)
    distro = models.CharField(max_length=16, choices=Distro.choices)
    release = models.CharField(max_length=16)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["os_name", "os_version"], name="one_alias_per_os")]


class VersionVerdict(models.Model):
    """What one (release, package, installed → available) upgrade does about one CVE.

    Computed in Python with the release's version rules once per distinct upgrade in the fleet, then
    joined to every pending update that makes that upgrade (advisories_app.mapping).
    """

    distro = models.CharField(max_length=16, choices=Distro.choices)
    release = models.CharField(max_length=16)
    package = models.CharField(max_length=255)
    current_version = models.CharField(max_length=255)
    available_version = models.CharField(max_length=255)
    vulnerability = models.ForeignKey(Vulnerability, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=24, choices=ExposureStatus.choices)
    fixed_version = models.CharField(max_length=255, blank=True)

    class Meta:
        indexes = [models.Index(fields=["distro", "release", "package", "current_version", "available_version"],
                                name="verdict_upgrade")]


class Exposure(models.Model):
    """A machine whose installed version of a package is affected by a CVE, and what its pending update does."""

    # Derived rows, rewritten by every refresh from a join of existing rows (which also drops the rows
    # whose update, machine or CVE is gone), so no database constraints: PostgreSQL would check three
    # foreign keys per exposure written, the bulk of a refresh's time. Deletes through the ORM still
    # cascade. package_update and vulnerability need no index of their own: the unique
    # (package_update, vulnerability) and the (vulnerability, status) indexes lead with them.
    package_update = models.ForeignKey(PackageUpdate, on_delete=models.CASCADE, related_name="exposures",
                                       db_index=False, db_constraint=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="exposures", db_constraint=False)
    vulnerability = models.ForeignKey(Vulnerability, on_delete=models.CASCADE, related_name="exposures",
                                      db_index=False, db_constraint=False)
    status = models.CharField(max_length=24, choices=ExposureStatus.choices)
    fixed_version = models.CharField(max_length=255, blank=True)
    source = models.CharField(max_length=16, choices=ExposureSource.choices, default=ExposureSource.FEED)

    objects = ExposureQuerySet.as_manager()

    class Meta:
        ordering = ["vulnerability", "agent"]
        constraints = [models.UniqueConstraint(fields=["package_update", "vulnerability"],
                                               name="one_exposure_per_update_and_cve")]
        # The CVE page and the dashboard count machines per CVE and status.
        indexes = [models.Index(fields=["vulnerability", "status"], name="exposure_cve_status")]

    def __str__(self) -> str:
        return f"{self.vulnerability_id} on {self.agent_id}: {self.status}"


class UpdateRisk(models.Model):
    """What one pending update's available version fixes, summed up: one row per update that fixes a CVE.

    Rewritten by each mapping refresh from the exposures, so the updates list can sort the whole fleet by
    risk through an index instead of computing every update's figures (advisories_app.risk).
    """

    package_update = models.OneToOneField(PackageUpdate, on_delete=models.CASCADE, primary_key=True,
                                          related_name="risk", db_constraint=False)
    cve_count = models.PositiveIntegerField()
    max_cvss = models.FloatField(null=True)
    max_epss = models.FloatField(null=True)
    known_exploited = models.BooleanField()

    class Meta:
        # The updates list, highest risk first.
        indexes = [models.Index(fields=["-known_exploited", "-max_cvss"], name="updaterisk_order")]
