"""Content negotiation (redflag/api/negotiation.py): the API answers JSON whatever the Accept header says."""

from __future__ import annotations


def test_an_unsatisfiable_accept_header_still_gets_json(agent):
    response = agent.post("checkin", {}, HTTP_ACCEPT="U")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
