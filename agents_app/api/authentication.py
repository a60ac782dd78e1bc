"""Request security for agent endpoints: bearer authentication, machine binding, nonces, path agent."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from agents_app.models import Agent
from agents_app.services.agents import agent_check_machine
from agents_app.services.credentials import access_token_read
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, agent_actor, auth_failure, record_event, security_violation
from redflag.errors import AgentRevoked, InvalidCredentials, ReplayedNonce, StaleRequest, WrongAgent
from redflag.models import RequestNonce

MACHINE_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
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
    raw_timestamp = _header(request, "X-Request-Timestamp", re.compile(r"^\d{1,12}$"), "Unix seconds")
    if abs(time.time() - int(raw_timestamp)) > settings.REDFLAG_NONCE_SKEW_SECONDS:
        raise StaleRequest()
    try:
        with transaction.atomic():
            RequestNonce.objects.create(nonce=nonce, agent_id=agent.pk if agent else None)
    except IntegrityError:
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
        raise ReplayedNonce() from None


class AgentTokenAuthentication(BaseAuthentication):
    """Bearer access token, then machine binding, then the request nonce.

    Order matters for the answers: bad credentials 401, another machine 403,
    a replay 409.
    """

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            return None
        if len(header) != 2 or header[0].lower() != b"bearer":
            raise InvalidCredentials("The Authorization header must be 'Bearer <access token>'.")
        try:
            agent_id, generation = access_token_read(header[1].decode("ascii"))
        except UnicodeDecodeError:
            raise InvalidCredentials() from None
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
        agent_check_machine(agent=agent, machine_id_hash=request_machine_id(request))
        request_nonce_check(request, agent)
        return AgentPrincipal(agent), None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="redflag"'


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
