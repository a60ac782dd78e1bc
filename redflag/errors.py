"""The one error family of the server: domain errors that map to one HTTP status and code each.

Services raise these and nothing else for a refusal; redflag.api.errors turns them into the JSON
error body ``{"error": {"code": ..., "message": ...}}``, the admin shows ``str(error)`` as a
message, and management commands print it. Messages carry no secrets.
"""

from rest_framework import status
from rest_framework.exceptions import APIException, Throttled


class ApiError(APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "The request was refused."


class InvalidRequest(ApiError):
    """Bad input to a write path (an unknown setting, a bad version, an expiry in the past)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"
    default_detail = "The request is not valid."


class InvalidCredentials(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "invalid_credentials"
    default_detail = "The credentials are invalid or expired."


class RegistrationRefused(ApiError):
    # One body for unknown, expired, revoked and exhausted tokens: the real
    # reason goes to the audit event, never to the caller.
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "registration_refused"
    default_detail = "The registration token is not valid."


class StaleRequest(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "stale_request"
    default_detail = "X-Request-Timestamp is outside the allowed clock skew."


class MachineMismatch(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "machine_mismatch"
    default_detail = "X-Machine-ID does not match the machine this agent is bound to."


class AgentRevoked(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "agent_revoked"
    default_detail = "This agent has been revoked."


class WrongAgent(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "wrong_agent"
    default_detail = "These credentials belong to another agent."


class ReplayedNonce(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "replayed_nonce"
    default_detail = "X-Request-Nonce was already used."


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state; retry."


class BudgetExhausted(Throttled):
    """429 with Retry-After: a per-window budget (not a request rate) is used up."""

    default_detail = "The budget for this kind of request is used up; retry after the time in Retry-After."


class ServiceUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"
    default_detail = "The database is unreachable or too busy; retry later."
