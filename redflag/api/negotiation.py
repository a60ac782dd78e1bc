"""Content negotiation that never answers 406: the API speaks JSON whatever Accept says."""

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation


class JSONFallbackNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            # An unsatisfiable Accept header (agents, scripts, fuzzers): answer in the first renderer's format.
            renderer = renderers[0]
            return renderer, renderer.media_type
