"""Every API error as ``{"error": {"code": ..., "message": ...}}``, never a stack trace."""

from __future__ import annotations

import logging
import random

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from redflag.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# A 503 asks for a retry 15 to 30 s later, picked at random per answer, so a fleet shed at one
# moment does not return at one moment (the agent adds only a little jitter of its own).
DATABASE_RETRY_AFTER_SECONDS = (15, 30)


def database_retry_after() -> str:
    return str(random.randint(*DATABASE_RETRY_AFTER_SECONDS))


def database_unavailable(exc: Exception) -> ServiceUnavailable:
    """503 for a database that is down, or too busy to lend this request a pooled connection in
    time (a pool timeout cannot tell the two apart)."""
    logger.warning("database unavailable: %s", type(exc.__cause__ or exc).__name__)
    return ServiceUnavailable()


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """{"field": [...]} / {"events": [{"message": [...]}, ...]} -> {"events[0].message": [...]}."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(key, int):  # DRF keys list-item errors by index
                flat.update(_flatten(value, f"{prefix}[{key}]"))
                continue
            name = key if key != "non_field_errors" else "body"
            flat.update(_flatten(value, f"{prefix}.{name}" if prefix else name))
        return flat
    if isinstance(detail, list) and detail and not all(isinstance(item, str) for item in detail):
        flat = {}
        for index, item in enumerate(detail):
            if item:
                flat.update(_flatten(item, f"{prefix}[{index}]"))
        return flat
    items = detail if isinstance(detail, list) else [detail]
    return {prefix or "body": [str(item) for item in items]}


def _validation_response(exc: exceptions.ValidationError) -> Response:
    fields = _flatten(exc.detail)
    summary = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
    return Response(error_body("invalid", f"Invalid input — {summary}", fields=fields), status=400)


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, (OperationalError, InterfaceError)):
        exc = database_unavailable(exc)
    elif isinstance(exc, DatabaseError):
        logger.exception("database error in %s", context.get("view").__class__.__name__)
        return Response(error_body("server_error", "The server could not complete the request."), status=500)

    if not isinstance(exc, exceptions.APIException):
        return None  # Django's handler500 answers (JSON for /api/), after logging.

    if isinstance(exc, exceptions.ValidationError):
        return _validation_response(exc)

    headers = {}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    elif isinstance(exc, ServiceUnavailable):
        headers["Retry-After"] = database_retry_after()
    if exc.status_code == status.HTTP_401_UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="redflag"'
    code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
    if isinstance(exc, exceptions.Throttled):
        code = "rate_limited"
        message = "Too many requests; retry after the time in Retry-After."
    else:
        message = str(exc.detail)
    return Response(error_body(code, message), status=exc.status_code, headers=headers)


def json_error_view(status_code: int, code: str, message: str):
    def view(request, exception=None):
        return JsonResponse(error_body(code, message), status=status_code)

    return view


api_not_found = json_error_view(status.HTTP_404_NOT_FOUND, "not_found", "No such API endpoint.")
api_server_error = json_error_view(
    status.HTTP_500_INTERNAL_SERVER_ERROR, "server_error", "The server could not complete the request."
)
