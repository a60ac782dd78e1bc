"""Guards for /api/: body size before anything reads it, and JSON for failures outside DRF."""

from __future__ import annotations

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse

from redflag.api.errors import database_retry_after, database_unavailable, error_body


class ApiGuardMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            refused = self._check_body_size(request)
            if refused is not None:
                return refused
        return self.get_response(request)

    @staticmethod
    def _check_body_size(request):
        raw_length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw_length)
        except ValueError:
            return JsonResponse(error_body("invalid", "Content-Length is not a number."), status=400)
        if length < 0:
            return JsonResponse(error_body("invalid", "Content-Length is negative."), status=400)
        limit = settings.REDFLAG_MAX_BODY_BYTES
        if length > limit:
            return JsonResponse(
                error_body("payload_too_large", f"The request body is {length} bytes; the limit is {limit}."),
                status=413,
            )
        return None

    def process_exception(self, request, exception):
        """Database outages outside DRF views (health, middleware) answer 503, not 500."""
        if request.path.startswith("/api/") and isinstance(exception, (OperationalError, InterfaceError)):
            unavailable = database_unavailable(exception)
            response = JsonResponse(error_body(unavailable.default_code, str(unavailable.detail)), status=503)
            response["Retry-After"] = database_retry_after()
            return response
        return None
