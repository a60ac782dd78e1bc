"""The scheduled download: feeds served by a real local HTTP server, one broken source among them."""

from __future__ import annotations

import pytest
from django_q.models import Schedule

from advisories_app.choices import FeedFormat, ImportStatus
from advisories_app.models import FeedImport, FeedSource, FixedIn, Vulnerability
from advisories_app.tasks import download_feeds
from tests.server.advisories_app.conftest import EPSS_CURRENT, KEV_2025

pytestmark = pytest.mark.django_db


def test_the_schedules_and_the_default_sources_exist():
    assert Schedule.objects.get(name="Download advisory feeds").func == "advisories_app.tasks.download_feeds"
    refresh = Schedule.objects.get(name="Refresh advisory exposures")
    assert (refresh.func, refresh.schedule_type, refresh.minutes) == ("advisories_app.tasks.refresh_exposures",
                                                                      "I", 15)
    assert FeedSource.objects.get(name="kev").url.startswith("https://www.cisa.gov/")


def test_download_feeds_imports_each_enabled_source(feed_server):
    FeedSource.objects.update(enabled=False)  # the public hosts are not reachable from tests
    FeedSource.objects.create(name="kev-mirror", feed_format=FeedFormat.KEV, url=f"{feed_server}/{KEV_2025}")
    FeedSource.objects.create(name="epss-mirror", feed_format=FeedFormat.EPSS, url=f"{feed_server}/{EPSS_CURRENT}")
    FeedSource.objects.create(name="alma-errata", feed_format=FeedFormat.OSV,
                              url=f"{feed_server}/osv/almalinux/ALSA-2023_5453.json")
    FeedSource.objects.create(name="gone", feed_format=FeedFormat.OSV, url=f"{feed_server}/osv/missing.zip")
    outcome = download_feeds()
    assert outcome["kev-mirror"] == outcome["epss-mirror"] == outcome["alma-errata"] == ImportStatus.SUCCEEDED
    assert outcome["gone"].startswith("failed: 404")
    assert Vulnerability.objects.filter(known_exploited=True).count() == 212
    assert FixedIn.objects.filter(feed="alma-errata", package="glibc", fixed_version="2.34-60.el9_2.7").exists()
    assert download_feeds()["kev-mirror"] == ImportStatus.UNCHANGED
    assert FeedImport.objects.filter(feed="kev-mirror", source=f"{feed_server}/{KEV_2025}").count() == 2


def test_a_source_serving_the_wrong_format_stores_nothing(feed_server):
    FeedSource.objects.update(enabled=False)
    FeedSource.objects.filter(name="kev").update(feed_format=FeedFormat.EPSS, url=f"{feed_server}/{KEV_2025}",
                                                 enabled=True)
    assert download_feeds()["kev"].startswith("failed:")
    assert not Vulnerability.objects.exists()
    assert FeedImport.objects.get(feed="kev").status == ImportStatus.FAILED
