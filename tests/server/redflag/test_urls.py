"""The root URLconf (redflag/urls.py): an unknown path under /api/ is a JSON 404, not an HTML page."""

from __future__ import annotations


def test_unknown_api_path_is_json_404(client, db):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_site_root_leads_to_the_admin(client, db):
    """A bare visit, or the admin's "View site", lands on the portal, never on a list of URL patterns."""
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
