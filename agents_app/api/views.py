from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app.api.serializers import (
    CheckinResponseSerializer,
    CheckinSerializer,
    CredentialsSerializer,
    EventsResponseSerializer,
    EventsSerializer,
    RegisterResponseSerializer,
    RegisterSerializer,
    SigningKeySerializer,
)
from agents_app.services import agent_checkin, agent_events_ingest, agent_register
from redflag.api.security import AgentTokenAuthentication, IsPathAgent
from redflag.api.throttling import CheckinThrottle, RegistrationThrottle, ReportsThrottle
from tokens_app.api.views import ERRORS, SECURITY_HEADERS
from tokens_app.signing import active_public_keys

AGENT_ID = OpenApiParameter("agent_id", str, OpenApiParameter.PATH, description="The agent's UUID.")
BEARER = [{"AgentBearer": []}]


def client_ip(request) -> str:
    return RegistrationThrottle().get_ident(request)


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
        responses={200: CheckinResponseSerializer, **ERRORS},
        auth=BEARER,
    )
    def post(self, request, agent_id):
        serializer = CheckinSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        now = timezone.now()
        agent = self.agent
        agent_checkin(agent=agent, agent_version=data.get("agent_version"), metrics=data["metrics"], now=now)
        heartbeat_active = bool(agent.heartbeat_until and agent.heartbeat_until > now)
        return Response(
            {
                "commands": [],
                "config_version": agent.config_version,
                "poll_interval_seconds": agent.effective_poll_interval_seconds,
                "heartbeat": {"active": heartbeat_active, "until": agent.heartbeat_until if heartbeat_active else None},
                "server_time": now,
            }
        )


class EventsView(AgentEndpoint):
    @extend_schema(
        operation_id="agents_events",
        parameters=[AGENT_ID, *SECURITY_HEADERS],
        request=EventsSerializer,
        responses={200: EventsResponseSerializer, **ERRORS},
        auth=BEARER,
    )
    def post(self, request, agent_id):
        serializer = EventsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        events = serializer.validated_data["events"]
        stored = agent_events_ingest(agent=self.agent, events=events, now=timezone.now())
        return Response({"received": len(events), "stored": stored})
