"""The server settings page (admin/server_settings.py): one page, validated, every change audited."""

from __future__ import annotations

import pytest

from agents_app.services.server_settings import server_settings_update
from events_app.models import SystemEvent
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
