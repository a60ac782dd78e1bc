"""The fleet dashboard (admin/dashboard.py, templatetags/fleet.py): every figure, its link, constant queries."""

from __future__ import annotations

from agents_app.admin.dashboard import fleet_summary
from redflag.models import ServerSettings
from tests.server.agents_app.admin.helpers import ADMIN, count_queries, grow_fleet


def test_dashboard_numbers_for_the_fixture_fleet(admin_client, fleet):
    response = admin_client.get(ADMIN)
    assert response.status_code == 200
    summary = fleet_summary()  # what the page's fleet_summary tag rendered
    assert summary["agents"] == {"total": 4, "online": 2, "offline": 2, "heartbeat": 1, "reboot": 1, "revoked": 1}
    assert summary["updates_total"] == 5 and summary["security"] == 3
    assert {bar["label"]: bar["count"] for bar in summary["severity_bars"]} == {
        "Critical": 2, "Important": 1, "Moderate": 0, "Low": 1, "Unknown": 1}
    assert {bar["label"]: bar["count"] for bar in summary["type_bars"]} == {
        "APT": 2, "DNF": 1, "Docker images": 1, "Windows Update": 1}  # no winget update: no winget bar
    assert summary["commands"] == {"open": 1, "failed_24h": 2}
    page = response.content.decode()
    assert "Fleet dashboard" in page and "failed commands (24 h)" in page
    assert "cdn" not in page.lower() and "<script src=\"http" not in page  # no external assets
    # The app list is still there, with the admins' names for the lists.
    assert "Updates across the fleet" in page and "Live operations" in page


def test_every_dashboard_figure_links_to_a_list_with_that_many_rows(admin_client, fleet):
    response = admin_client.get(ADMIN)
    summary, page = fleet_summary(), response.content.decode()
    links, agents = summary["links"], summary["agents"]
    expected = {
        links["online"]: agents["online"], links["offline"]: agents["offline"],
        links["heartbeat"]: agents["heartbeat"], links["reboot"]: agents["reboot"],
        links["revoked"]: agents["revoked"], links["agents"]: agents["total"],
        links["updates"]: summary["updates_total"], links["security"]: summary["security"],
        links["failed_commands"]: summary["commands"]["failed_24h"],
        links["open_commands"]: summary["commands"]["open"],
    }
    expected.update({bar["url"]: bar["count"] for bar in summary["severity_bars"] + summary["type_bars"]})
    for url, count in expected.items():
        assert url.replace("&", "&amp;") in page, url
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert response.context["cl"].result_count == count, url


def test_dashboard_query_count_does_not_grow_with_the_fleet(admin_client, fleet, now, django_assert_num_queries):
    small = count_queries(admin_client, ADMIN)
    grow_fleet(now, 40)
    assert count_queries(admin_client, ADMIN) == small
    # session, user, server settings, agents aggregate, updates grouped, commands aggregate, advisory exposures
    # aggregate, the trend charts' daily snapshots, recent actions
    ServerSettings.forget()
    with django_assert_num_queries(9):
        admin_client.get(ADMIN)
