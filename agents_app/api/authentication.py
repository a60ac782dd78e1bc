"""Request security for agent endpoints: bearer authentication, machine binding, nonces, path agent."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from agents_app.api.serializers import CheckinSerializer
from agents_app.models import Agent
from agents_app.services.agents import agent_check_machine
from agents_app.services.checkin import checkin_claim, nonce_take_sql
from agents_app.services.credentials import access_token_read
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, agent_actor, auth_failure, record_event, security_violation
from redflag.api.throttling import CheckinThrottle, rate_window
from redflag.errors import AgentRevoked, InvalidCredentials, ReplayedNonce, StaleRequest, WrongAgent

MACHINE_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
TIMESTAMP_PATTERN = re.compile(r"^\d{1,12}$")
# The headers every agent request carries, as the OpenAPI schema documents them.
SECURITY_HEADERS = [
    OpenApiParameter("X-Machine-ID", str, OpenApiParameter.HEADER, required=True,
                     description="Lowercase hex SHA-256 of the machine id."),
    OpenApiParameter("X-Request-Nonce", str, OpenApiParameter.HEADER, required=True,
                     description="16-128 random URL-safe characters, never reused."),
    OpenApiParameter("X-Request-Timestamp", int, OpenApiParameter.HEADER, required=True,
                     description="Unix seconds; refused outside ±5 minutes."),
]


@dataclass(frozen=True)
class AgentPrincipal:
    """request.user for agent requests."""

    agent: Agent
    is_authenticated: bool = True
    is_staff: bool = False

    def __str__(self) -> str:
        return agent_actor(self.agent)


def _header(request, name: str, pattern: re.Pattern, description: str) -> str:
    value = request.META.get("HTTP_" + name.upper().replace("-", "_"), "")
    if not value:
        raise exceptions.ValidationError({name: [f"The {name} header is required."]})
    if not pattern.fullmatch(value):  # match() with "$" would let a trailing newline through
        raise exceptions.ValidationError({name: [f"The {name} header must be {description}."]})
    return value


def request_machine_id(request) -> str:
    return _header(request, "X-Machine-ID", MACHINE_ID_PATTERN, "the lowercase hex SHA-256 of the machine id")


def request_nonce_check(request, agent: Agent | None) -> None:
    """Refuse a stale timestamp (401) or a nonce seen before (409, recorded)."""
    nonce = _header(request, "X-Request-Nonce", NONCE_PATTERN, "16 to 128 characters of A-Z, a-z, 0-9, - and _")
    raw_timestamp = _header(request, "X-Request-Timestamp", TIMESTAMP_PATTERN, "Unix seconds")
    if abs(time.time() - int(raw_timestamp)) > settings.REDFLAG_NONCE_SKEW_SECONDS:
        raise StaleRequest()
    with connection.cursor() as cursor:
        cursor.execute(*nonce_take_sql(nonce=nonce, agent_id=agent.pk if agent else None, now=timezone.now()))
        fresh = cursor.rowcount == 1
    if not fresh:
        nonce_replayed(request, agent, nonce)


def nonce_replayed(request, agent: Agent | None, nonce: str):
    """Record a replayed request nonce and refuse it (409)."""
    record_event(
        event_type=EventType.SECURITY_VIOLATION,
        subtype=EventSubtype.WARNING,
        severity=Severity.WARNING,
        component=Component.SECURITY,
        message=f"Replayed request nonce on {request.path}",
        agent=agent,
        metadata={"reason": "replayed_nonce", "path": request.path, "nonce": nonce[:8]},
        actor=agent_actor(agent) if agent else SYSTEM_ACTOR,
        standalone=True,  # a refusal changes nothing
    )
    raise ReplayedNonce()


class AgentTokenAuthentication(BaseAuthentication):
    """Bearer access token, then machine binding, then the request nonce.

    Order matters for the answers: bad credentials 401, another machine 403,
    a replay 409.
    """

    def authenticate(self, request):
        token = bearer_token(request)
        if token is None:
            return None
        agent = self.agent_with_credentials(request, *token)
        agent_check_machine(agent=agent, machine_id_hash=request_machine_id(request))
        request_nonce_check(request, agent)
        return AgentPrincipal(agent), None

    @staticmethod
    def agent_with_credentials(request, agent_id: str, generation: int) -> Agent:
        """The token's agent, if its credential generation is current and it is not revoked (401/403)."""
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None or agent.credential_generation != generation:
            auth_failure(
                "Access token refused: its credentials were revoked or replaced",
                agent=agent,
                metadata={"reason": "revoked_access_token" if agent else "unknown_agent", "path": request.path},
                standalone=True,
            )
            raise InvalidCredentials()
        if agent.revoked_at is not None:
            raise AgentRevoked()
        return agent

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="redflag"'


def bearer_token(request) -> tuple[str, int] | None:
    """(agent id, credential generation) from a valid access token; None without an Authorization header."""
    header = get_authorization_header(request).split()
    if not header:
        return None
    if len(header) != 2 or header[0].lower() != b"bearer":
        raise InvalidCredentials("The Authorization header must be 'Bearer <access token>'.")
    try:
        return access_token_read(header[1].decode("ascii"))
    except UnicodeDecodeError:
        raise InvalidCredentials() from None


class CheckinAuthentication(AgentTokenAuthentication):
    """The check-in's lean path: the same checks, with the request nonce, the rate-limit count and
    "the agent is alive" in one statement (``checkin_claim``) instead of a read and four writes.

    The access token is verified without a query (signed, with an expiry); the statement itself
    checks the credential generation, revocation and machine binding, so revocation takes effect
    at once. When the body is not a valid check-in, a header is malformed, or the path names another
    agent, it takes the general path (AgentTokenAuthentication), whose answers are the same as for
    every agent endpoint. When the statement records nothing, the refusal is worked out the general
    way (401, 403, 409; 429 by the throttle), without taking the nonce a second time.
    """

    def authenticate(self, request):
        token = bearer_token(request)
        if token is None:
            return None
        agent_id, generation = token
        lean = self._lean_request(request, agent_id)
        if isinstance(lean, exceptions.APIException):
            # An unreadable body: credentials are answered first (401/403/409), then the 400.
            super().authenticate(request)
            raise lean
        if lean is None:
            return super().authenticate(request)
        data, machine_id_hash, nonce = lean
        now = timezone.now()
        window = rate_window(CheckinThrottle.bucket, agent_id, now)
        claim = checkin_claim(agent_id=agent_id, generation=generation, machine_id_hash=machine_id_hash, nonce=nonce,
                              rate=window, agent_version=data.get("agent_version"), metrics=data["metrics"], now=now)
        if window is not None and claim.rate_count is not None:
            request.rate_counts = {window.key: claim.rate_count}
        request.checkin_data = data
        if claim.agent is not None:
            return AgentPrincipal(claim.agent), claim
        # Nothing recorded: say why, in the general path's order, without taking the nonce twice.
        agent = self.agent_with_credentials(request, agent_id, generation)  # 401, 403
        agent_check_machine(agent=agent, machine_id_hash=machine_id_hash)  # 403, or an admin-opened rebind
        if not claim.nonce_fresh:
            request_nonce_check(request, agent)  # 409 for a replay
        return AgentPrincipal(agent), claim  # over the rate (the throttle answers 429), or just rebound

    @staticmethod
    def _lean_request(request, agent_id: str) -> tuple[dict, str, str] | exceptions.APIException | None:
        """(valid check-in body, machine id, nonce); the body's parse error; or None for anything else
        the general path must answer."""
        if str(request.parser_context["kwargs"].get("agent_id")) != agent_id:
            return None
        try:
            machine_id_hash = request_machine_id(request)
            nonce = _header(request, "X-Request-Nonce", NONCE_PATTERN, "")
            raw_timestamp = _header(request, "X-Request-Timestamp", TIMESTAMP_PATTERN, "")
        except exceptions.APIException:
            return None
        try:
            body = request.data
        except exceptions.APIException as error:  # DRF answers an empty body if request.data is read again
            return error
        if abs(time.time() - int(raw_timestamp)) > settings.REDFLAG_NONCE_SKEW_SECONDS:
            return None
        data = CheckinSerializer.plain_validated_data(body)
        if data is None:
            serializer = CheckinSerializer(data=body)
            if not serializer.is_valid():
                return None
            data = serializer.validated_data
        return data, machine_id_hash, nonce


class IsPathAgent(BasePermission):
    """The agent in the URL must be the agent the credentials belong to."""

    def has_permission(self, request, view) -> bool:
        principal = request.user
        if not isinstance(principal, AgentPrincipal):
            return False
        if str(view.kwargs.get("agent_id")) != str(principal.agent.pk):
            security_violation(
                f"{principal.agent.hostname} used its credentials for another agent's endpoint",
                agent=principal.agent,
                metadata={"reason": "wrong_agent", "path": request.path},
                standalone=True,
            )
            raise WrongAgent()
        return True


class AgentTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """How agents authenticate, in the OpenAPI schema (registered by being defined)."""

    target_class = AgentTokenAuthentication
    name = "AgentBearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The agent's access token (renew it at /api/v1/agents/renew). Every request also "
                           "carries X-Machine-ID, X-Request-Nonce and X-Request-Timestamp.",
        }


class CheckinAuthenticationScheme(AgentTokenAuthenticationScheme):
    """The check-in's lean path takes the same credentials; the schema needs a name per authenticator class."""

    target_class = CheckinAuthentication
    name = "AgentBearerCheckin"
