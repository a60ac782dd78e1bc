"""The agent page shows why the agent needs a reboot (its own words, escaped) and offers the per-agent
``verify_scans`` setting."""

from __future__ import annotations

from agents_app.models import Agent
from tests.server.agents_app.admin.helpers import AGENTS

KERNEL_REASON = "running kernel 6.1.0-18-amd64 is older than the installed 6.1.0-21-amd64"


def test_the_agent_page_shows_the_reboot_reason(admin_client, fleet):
    web1 = fleet["web1"]
    Agent.objects.filter(pk=web1.pk).update(reboot_reason=f"{KERNEL_REASON}; <b>pkg</b>")
    page = admin_client.get(f"{AGENTS}{web1.pk}/change/").content.decode()
    assert KERNEL_REASON in page
    assert "&lt;b&gt;pkg&lt;/b&gt;" in page and "<b>pkg</b>" not in page


def test_the_agent_page_offers_scan_verification(admin_client, fleet):
    page = admin_client.get(f"{AGENTS}{fleet['web1'].pk}/change/").content.decode()
    assert 'name="verify_scans"' in page
