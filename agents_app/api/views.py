from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.http import quote_etag
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app.api.serializers import (
    AgentConfigResponseSerializer,
    CheckinResponseSerializer,
    CommandResultResponseSerializer,
    CommandResultSerializer,
    SystemReportSerializer,
    UpdatesReportResponseSerializer,
    UpdatesReportSerializer,
    CheckinSerializer,
    CredentialsSerializer,
    ErrorSerializer,
    EventsResponseSerializer,
    EventsSerializer,
    RegisterResponseSerializer,
    RegisterSerializer,
    SigningKeySerializer,
)
from agents_app.commands import commands_deliver, wire_format
from agents_app.heartbeat import HEARTBEAT_POLL_SECONDS, heartbeat_active, heartbeat_reconcile
from agents_app.models import Command
from agents_app.reports import system_report_ingest, updates_report_ingest
from agents_app.results import command_result_record
from agents_app.scheduling import schedule_due_scans
from agents_app.services import agent_checkin, agent_events_ingest, agent_register
from redflag.api.security import AgentTokenAuthentication, IsPathAgent
from redflag.api.throttling import CheckinThrottle, RegistrationThrottle, ReportsThrottle
from tokens_app.api.views import ERRORS, SECURITY_HEADERS
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
            facts=data,
            client_ip=client_ip(request),
        )
        agent, credentials = registration.agent, registration.credentials
        body = {
            "agent_id": agent.pk,
            "reregistered": registration.reregistered,
            **CredentialsSerializer(credentials).data,
            "signing_keys": SigningKeySerializer(active_public_keys(), many=True).data,
            "config": {
                "config_version": agent.config_version,
                "poll_interval_seconds": agent.effective_poll_interval_seconds,
            },
        }
        return Response(body, status=status.HTTP_201_CREATED)


class AgentEndpoint(APIView):
    """Base for /agents/{id}/...: bearer token, machine binding, nonce, path agent."""

    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsPathAgent]
    throttle_classes = [ReportsThrottle]

    @property
    def agent(self):
        return self.request.user.agent


class CheckinView(AgentEndpoint):
    throttle_classes = [CheckinThrottle]

    @extend_schema(
        operation_id="agents_checkin",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=CheckinSerializer,
        responses={200: CheckinResponseSerializer, **AGENT_ERRORS},
    )
    def post(self, request, agent_id):
        """Alive: store metrics, create this agent's due scans, hand over up to 10 signed commands."""
        serializer = CheckinSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        now = timezone.now()
        agent = self.agent
        agent_checkin(agent=agent, agent_version=data.get("agent_version"), metrics=data["metrics"], now=now)
        heartbeat_reconcile(agent=agent, reported_active=data.get("heartbeat_active"), now=now)
        schedule_due_scans(now=now, agent_ids=[agent.pk])
        commands = commands_deliver(agent=agent, now=now)
        active = heartbeat_active(agent, now)
        return Response(
            {
                "commands": [wire_format(command) for command in commands],
                "config_version": agent.config_version,
                "poll_interval_seconds": HEARTBEAT_POLL_SECONDS if active else agent.effective_poll_interval_seconds,
                "heartbeat": {"active": active, "until": agent.heartbeat_until if active else None},
                "server_time": now,
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
