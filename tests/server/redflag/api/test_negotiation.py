"""Content negotiation (redflag/api/negotiation.py): the API answers JSON whatever the Accept header says."""

from __future__ import annotations

from itertools import product

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from redflag.api.negotiation import JSONFallbackNegotiation


def test_an_unsatisfiable_accept_header_still_gets_json(agent):
    response = agent.post("checkin", {}, HTTP_ACCEPT="U")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"


def test_the_common_accept_headers_get_what_drf_negotiation_gives():
    """The shortcut for no Accept, */* and application/json answers as DRF's own negotiation does."""
    factory = APIRequestFactory()
    for renderers in ([JSONRenderer()], [BrowsableAPIRenderer(), JSONRenderer()]):
        for path, headers in product(("/api/v1/health", "/api/v1/health?format=json", "/api/v1/health?x=1"), (
                {}, {"HTTP_ACCEPT": "*/*"}, {"HTTP_ACCEPT": "application/json"}, {"HTTP_ACCEPT": ""},
                {"HTTP_ACCEPT": "application/json; indent=4"}, {"HTTP_ACCEPT": "text/html, */*"})):
            request = Request(factory.get(path, **headers))
            ours = JSONFallbackNegotiation().select_renderer(request, renderers)
            try:
                drf = DefaultContentNegotiation().select_renderer(request, renderers)
            except Exception:  # noqa: BLE001 - DRF's 406: ours answers in the first renderer's format
                drf = (renderers[0], renderers[0].media_type)
            assert (ours[0], ours[1]) == (drf[0], drf[1]), (renderers, headers)
