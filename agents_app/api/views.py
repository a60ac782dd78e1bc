"""The agent API: thin views that validate with a serializer, call one service, serialise its answer."""

from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.http import quote_etag
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app.api.authentication import (
    SECURITY_HEADERS,
    AgentTokenAuthentication,
    CheckinAuthentication,
    IsPathAgent,
    request_machine_id,
    request_nonce_check,
)
from agents_app.api.serializers import (
    AgentConfigResponseSerializer,
    CheckinResponseSerializer,
    CheckinSerializer,
    CommandResultResponseSerializer,
    CommandResultSerializer,
    CredentialsSerializer,
    EventsResponseSerializer,
    EventsSerializer,
    RegisterResponseSerializer,
    RegisterSerializer,
    RenewSerializer,
    SystemReportSerializer,
    UpdatesReportResponseSerializer,
    UpdatesReportSerializer,
)
from agents_app.models import Command
from agents_app.services.agents import agent_register
from agents_app.services.checkin import CheckinClaim, checkin_handle
from agents_app.services.commands import wire_format
from agents_app.services.credentials import credentials_renew
from agents_app.services.reports import agent_events_ingest, system_report_ingest, updates_report_ingest
from agents_app.services.results import command_result_record
from redflag.api.schema import ERRORS, ErrorSerializer
from redflag.api.throttling import CheckinThrottle, RegistrationThrottle, ReportsThrottle, WindowThrottle
from tokens_app.api.serializers import SigningKeySerializer
from tokens_app.models import SigningKey
from tokens_app.signing import active_public_keys

AGENT_ID = OpenApiParameter("agent_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The agent's UUID.")
COMMAND_ID = OpenApiParameter("command_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# Agent endpoints also answer 404 (an unknown command, a path that is not a UUID).
AGENT_ERRORS = {**ERRORS, 404: OpenApiResponse(ErrorSerializer)}


def client_ip(request) -> str:
    return RegistrationThrottle().get_ident(request) or ""


class RegisterView(APIView):
    """Enroll a machine with a registration token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [RegistrationThrottle]

    @extend_schema(
        operation_id="agents_register",
        request=RegisterSerializer,
        responses={201: RegisterResponseSerializer, **ERRORS},
    )
    def post(self, request):
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        registration = agent_register(
            token_secret=data.pop("registration_token"),
            machine_id_hash=data.pop("machine_id"),
            refresh_token=data.pop("refresh_token", None),
            facts=data,
            client_ip=client_ip(request),
        )
        agent, credentials = registration.agent, registration.credentials
        body = {
            "agent_id": agent.pk,
            "reregistered": registration.reregistered,
            **CredentialsSerializer(credentials).data,
            "signing_keys": SigningKeySerializer(self.signing_keys(), many=True).data,
            "config": {
                "config_version": agent.config_version,
                "poll_interval_seconds": agent.effective_poll_interval_seconds,
            },
        }
        return Response(body, status=status.HTTP_201_CREATED)

    @staticmethod
    def signing_keys() -> list[SigningKey]:
        """The keys the new agent pins: one read once a primary key is published (by the server's first
        signature or registration); before that, ``active_public_keys`` publishes it."""
        keys = list(SigningKey.objects.filter(retired_at__isnull=True).order_by("-is_primary", "-created_at"))
        return keys if keys and keys[0].is_primary else active_public_keys()


class RenewThrottle(WindowThrottle):
    """Per client IP, at the check-in rate: a renew comes before the agent is known. One statement."""

    bucket = "checkin"

    def identity(self, request) -> str:
        return "renew-" + super().identity(request)


class RenewView(APIView):
    """Exchange a refresh token for a new access token and a rotated refresh token."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [RenewThrottle]

    @extend_schema(
        operation_id="agents_renew",
        parameters=SECURITY_HEADERS,
        request=RenewSerializer,
        responses={200: CredentialsSerializer, **ERRORS},
    )
    def post(self, request):
        serializer = RenewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        machine_id_hash = request_machine_id(request)
        request_nonce_check(request, None)
        issued = credentials_renew(secret=serializer.validated_data["refresh_token"], machine_id_hash=machine_id_hash)
        return Response(CredentialsSerializer(issued).data)


class AgentEndpoint(APIView):
    """Base for /agents/{id}/...: bearer token, machine binding, nonce, path agent."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsPathAgent]
    throttle_classes = [ReportsThrottle]

    @property
    def agent(self):
        return self.request.user.agent


class CheckinView(AgentEndpoint):
    authentication_classes = [CheckinAuthentication]
    throttle_classes = [CheckinThrottle]

    @extend_schema(
        operation_id="agents_checkin",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=CheckinSerializer,
        responses={200: CheckinResponseSerializer, **AGENT_ERRORS},
    )
    def post(self, request, agent_id):
        """Alive: store metrics, create this agent's due scans, hand over up to 10 signed commands."""
        data = getattr(request, "checkin_data", None)  # validated by CheckinAuthentication's lean path
        if data is None:
            serializer = CheckinSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        claim = request.auth if isinstance(request.auth, CheckinClaim) else None
        reply = checkin_handle(agent=self.agent, agent_version=data.get("agent_version"), metrics=data["metrics"],
                               heartbeat_reported=data.get("heartbeat_active"),
                               capabilities=data.get("capabilities"), claim=claim)
        return Response(
            {
                "commands": [wire_format(command) for command in reply.commands],
                "config_version": reply.config_version,
                "poll_interval_seconds": reply.poll_interval_seconds,
                "heartbeat": {"active": reply.heartbeat_active, "until": reply.heartbeat_until},
                "server_time": reply.server_time,
            }
        )


class EventsView(AgentEndpoint):
    @extend_schema(
        operation_id="agents_events",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=EventsSerializer,
        responses={200: EventsResponseSerializer, **AGENT_ERRORS},
    )
    def post(self, request, agent_id):
        serializer = EventsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        events = serializer.validated_data["events"]
        stored = agent_events_ingest(agent=self.agent, events=events, now=timezone.now())
        return Response({"received": len(events), "stored": stored})


class CommandResultView(AgentEndpoint):
    @extend_schema(
        operation_id="agents_command_result",
        parameters=[AGENT_ID, COMMAND_ID, *SECURITY_HEADERS],
        request=CommandResultSerializer,
        responses={200: CommandResultResponseSerializer, **AGENT_ERRORS},
    )
    def post(self, request, agent_id, command_id):
        """running / succeeded / failed. Idempotent: a repeat, or a result for a finished command, changes nothing."""
        serializer = CommandResultSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        command = get_object_or_404(Command, pk=command_id, agent=self.agent)
        changed = command_result_record(
            agent=self.agent, command=command, status=serializer.validated_data["status"],
            output=serializer.validated_data["output"], result=serializer.validated_result(),
        )
        command.refresh_from_db(fields=["status"])
        return Response({"status": command.status, "changed": changed})


class UpdatesReportView(AgentEndpoint):
    @extend_schema(
        operation_id="agents_report_updates",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=UpdatesReportSerializer,
        responses={200: UpdatesReportResponseSerializer, **AGENT_ERRORS},
    )
    def post(self, request, agent_id):
        """A full snapshot for one package type; a report id seen before changes nothing."""
        serializer = UpdatesReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        outcome = updates_report_ingest(
            agent=self.agent, report_id=data["report_id"], package_type=data["package_type"],
            updates=data["updates"], not_checked=data["not_checked"],
        )
        if outcome is None:
            return Response({"duplicate": True, "updates": len(data["updates"]), "closed": 0, "installed": 0,
                             "reopened": 0})
        return Response({"duplicate": False, **outcome})


class SystemReportView(AgentEndpoint):
    @extend_schema(
        operation_id="agents_report_system",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=SystemReportSerializer,
        responses={204: None, **AGENT_ERRORS},
    )
    def post(self, request, agent_id):
        serializer = SystemReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        system_report_ingest(agent=self.agent, report=serializer.data)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConfigView(AgentEndpoint):
    throttle_classes = [CheckinThrottle]

    @extend_schema(
        operation_id="agents_config",
        parameters=[AGENT_ID, *SECURITY_HEADERS,
                    OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, required=False)],
        responses={200: AgentConfigResponseSerializer, 304: OpenApiResponse(description="Unchanged"), **AGENT_ERRORS},
    )
    def get(self, request, agent_id):
        """The agent's subsystem config; 304 when If-None-Match carries the current version's ETag."""
        agent = self.agent
        etag = quote_etag(f"config-{agent.config_version}")
        if request.headers.get("If-None-Match") == etag:
            response = Response(status=status.HTTP_304_NOT_MODIFIED)
        else:
            response = Response({
                "config_version": agent.config_version,
                "poll_interval_seconds": agent.effective_poll_interval_seconds,
                "subsystems": [
                    {"name": sub.name, "enabled": sub.enabled, "auto_run": sub.auto_run,
                     "interval_minutes": sub.interval_minutes}
                    for sub in agent.subsystems.order_by("name")
                ],
            })
        response["ETag"] = etag
        return response
