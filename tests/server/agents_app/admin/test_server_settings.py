"""The server settings page (admin/server_settings.py): one page, validated, every change audited."""

from __future__ import annotations

import pytest

from agents_app.services.server_settings import server_settings_update
from events_app.models import SystemEvent
from events_app.startup import record_server_startup
from redflag.errors import InvalidRequest
from redflag.models import ServerSettings


def test_server_settings_is_one_page_and_audited(admin_client):
    response = admin_client.get("/admin/redflag/serversettings/")
    assert response.status_code == 302 and response["Location"].endswith("/serversettings/1/change/")
    form = admin_client.get("/admin/redflag/serversettings/1/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "id"}
    data.update(rate_checkin="120/min", public_url="https://rf.example.org")
    response = admin_client.post("/admin/redflag/serversettings/1/change/", data)
    assert response.status_code == 302, response.content
    ServerSettings.forget()
    assert ServerSettings.current().rate_checkin == "120/min"
    event = SystemEvent.objects.get(event_type="config_changed", component="config")
    assert set(event.metadata) == {"rate_checkin", "public_url"}


def test_bad_rate_is_a_form_error(admin_client):
    form = admin_client.get("/admin/redflag/serversettings/1/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "id"}
    data["rate_checkin"] = "lots"
    response = admin_client.post("/admin/redflag/serversettings/1/change/", data)
    assert response.status_code == 200 and "is not a rate" in response.content.decode()


def test_the_write_path_refuses_what_the_form_would_and_records_only_changes(db):
    with pytest.raises(InvalidRequest, match="not a server setting: updated_at"):
        server_settings_update(changes={"updated_at": None}, actor="alice")
    with pytest.raises(InvalidRequest, match="rate_checkin: 'lots' is not a rate"):
        server_settings_update(changes={"rate_checkin": "lots"}, actor="alice")
    ServerSettings.forget()
    assert ServerSettings.current().rate_checkin == "60/min"
    assert server_settings_update(changes={"rate_checkin": "60/min"}, actor="alice") == []
    assert server_settings_update(changes={"rate_checkin": "90/min", "rate_reports": "30/min"},
                                  actor="alice") == ["rate_checkin"]
    event = SystemEvent.objects.get(event_type="config_changed")
    assert (event.actor, event.metadata) == ("alice", {"rate_checkin": "90/min"})


@pytest.mark.parametrize("days", ["0", "89"])
def test_retention_below_the_floor_is_a_form_error(admin_client, days):
    """The audit trail cannot be wiped from the admin: less than 90 days is refused, nothing changes."""
    form = admin_client.get("/admin/redflag/serversettings/1/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "id"}
    data["event_retention_days"] = days
    response = admin_client.post("/admin/redflag/serversettings/1/change/", data)
    assert response.status_code == 200
    assert "Events are kept at least 90 days (security events 365)" in response.content.decode()
    ServerSettings.forget()
    assert ServerSettings.current().event_retention_days == 365
    assert not SystemEvent.objects.filter(event_type="config_changed").exists()


def test_a_retention_change_from_the_admin_is_recorded(admin_client):
    form = admin_client.get("/admin/redflag/serversettings/1/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "id"}
    data["event_retention_days"] = "90"
    response = admin_client.post("/admin/redflag/serversettings/1/change/", data)
    assert response.status_code == 302, response.content
    event = SystemEvent.objects.get(event_type="config_changed")
    assert (event.actor, event.metadata) == ("admin", {"event_retention_days": 90})


def settings_form_data(admin_client, **changes) -> dict:
    form = admin_client.get("/admin/redflag/serversettings/1/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "id"}
    data.update(changes)
    return {name: value for name, value in data.items() if value is not False}  # an unticked box is absent


def test_a_plain_http_public_url_needs_an_explicit_setting_and_is_warned_about(admin_client):
    url = "/admin/redflag/serversettings/1/change/"
    refused = admin_client.post(url, settings_form_data(admin_client, public_url="http://redflag.lan"))
    assert refused.status_code == 200 and "unencrypted" in refused.content.decode()
    ServerSettings.forget()
    assert ServerSettings.current().public_url == ""
    # This machine is fine as it is; another one needs the box ticked, and then warnings follow it around.
    local = admin_client.post(url, settings_form_data(admin_client, public_url="http://127.0.0.1:8000"))
    assert local.status_code == 302
    allowed = admin_client.post(url, settings_form_data(admin_client, public_url="http://redflag.lan",
                                                        allow_insecure_public_url=True))
    assert allowed.status_code == 302
    ServerSettings.forget()
    assert ServerSettings.current().insecure_public_url
    event = SystemEvent.objects.filter(event_type="config_changed").latest("seq")
    assert event.metadata == {"public_url": "http://redflag.lan", "allow_insecure_public_url": True}
    dashboard = admin_client.get("/admin/").content.decode()
    assert 'id="insecure-public-url"' in dashboard and "http://redflag.lan" in dashboard
    token_page = admin_client.post("/admin/tokens_app/registrationtoken/add/",
                                   {"label": "lan", "max_seats": 1, "expires_in_hours": 1}).content.decode()
    assert 'id="insecure-public-url"' in token_page and "--insecure" in token_page


def test_an_https_public_url_shows_no_warning(admin_client):
    assert admin_client.post("/admin/redflag/serversettings/1/change/",
                             settings_form_data(admin_client, public_url="https://rf.example.org")).status_code == 302
    assert 'id="insecure-public-url"' not in admin_client.get("/admin/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_start_up_records_a_plain_http_public_url():
    ServerSettings.objects.update_or_create(pk=1, defaults={"public_url": "http://redflag.lan",
                                                            "allow_insecure_public_url": True})
    ServerSettings.forget()
    record_server_startup(server="test")
    warning = SystemEvent.objects.get(event_type="config_changed", metadata__public_url="http://redflag.lan")
    assert warning.severity == "warning" and "plain http" in warning.message
