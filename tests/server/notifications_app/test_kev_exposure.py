"""A new known-exploited exposure (advisories_app's event) reaches a KEV rule; a refresh that finds
nothing new records nothing. Uses the saved real feed slices and the real import command."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from advisories_app.mapping import KEV_EXPOSURE_KIND, exposures_refresh
from events_app.choices import Origin
from events_app.models import SystemEvent
from notifications_app.choices import Trigger
from notifications_app.models import Delivery
from notifications_app.services import events_dispatch
from tests.server.advisories_app.conftest import KEV_2025, feed, machine, pending
from tests.server.notifications_app.conftest import make_destination, make_rule

pytestmark = pytest.mark.django_db


def kev_events():
    return SystemEvent.objects.filter(metadata__kind=KEV_EXPOSURE_KIND)


def test_a_machine_newly_exposed_to_a_kev_cve_is_told_once():
    destination = make_destination("sec", "ntfys://ntfy.example.com/sec")
    make_rule("kev", [destination], trigger=Trigger.KEV_EXPOSURE)
    alma = machine("alma", "AlmaLinux", "9.2")
    pending(alma, "glibc", "2.34-60.el9_2.6", "2.34-60.el9_2.7", package_type="dnf")
    jammy = machine("jammy", "Ubuntu", "22.04")
    pending(jammy, "vim", "2:8.2.3995-1ubuntu2.1", "2:8.2.3995-1ubuntu2.2")
    call_command("import_advisories", str(feed("osv/almalinux/ALSA-2023_5453.json")), stdout=StringIO())
    assert not kev_events().exists()  # fixed CVEs, none known exploited yet
    call_command("import_advisories", str(feed(KEV_2025)), stdout=StringIO())  # CVE-2023-4911 is listed

    [event] = kev_events()
    assert event.agent == alma and event.severity == "error"
    assert "CVE-2023-4911" in event.metadata["cves"] and event.metadata["packages"] == ["glibc"]
    exposures_refresh()
    assert kev_events().count() == 1  # nothing new: nothing recorded

    assert events_dispatch() == 1
    delivery = Delivery.objects.get()
    assert delivery.payload["event"]["id"] == str(event.pk) and "CVE-2023-4911" in delivery.subject


def test_an_agent_cannot_claim_a_kev_exposure():
    destination = make_destination("sec", "ntfys://ntfy.example.com/sec")
    make_rule("kev", [destination], trigger=Trigger.KEV_EXPOSURE)
    SystemEvent(event_type="agent_scan", event_subtype="warning", severity="error", component="agent",
                origin=Origin.AGENT, message="spoofed", actor="agent:web-01",
                metadata={"kind": KEV_EXPOSURE_KIND, "cves": ["CVE-2023-4911"]}).save()
    assert events_dispatch() == 0
