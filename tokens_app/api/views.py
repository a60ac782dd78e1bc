from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app.api.serializers import (
    CredentialsSerializer,
    ErrorSerializer,
    RenewSerializer,
    SigningKeySerializer,
    SigningKeysSerializer,
)
from redflag.api.security import request_machine_id, request_nonce_check
from redflag.api.throttling import BucketThrottle
from tokens_app.services import credentials_renew
from tokens_app.signing import active_public_keys

SECURITY_HEADERS = [
    OpenApiParameter("X-Machine-ID", str, OpenApiParameter.HEADER, required=True,
                     description="Lowercase hex SHA-256 of the machine id."),
    OpenApiParameter("X-Request-Nonce", str, OpenApiParameter.HEADER, required=True,
                     description="16-128 random URL-safe characters, never reused."),
    OpenApiParameter("X-Request-Timestamp", int, OpenApiParameter.HEADER, required=True,
                     description="Unix seconds; refused outside ±5 minutes."),
]
ERRORS = {status: OpenApiResponse(ErrorSerializer) for status in (400, 401, 403, 409, 413, 429, 503)}


class SigningKeysView(APIView):
    """The active Ed25519 public keys that sign commands and releases."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="signing_keys", responses={200: SigningKeysSerializer, 503: ERRORS[503]})
    def get(self, request):
        return Response({"keys": SigningKeySerializer(active_public_keys(), many=True).data})


class RenewThrottle(BucketThrottle):
    """Per client IP, at the check-in rate: a renew comes before the agent is known."""

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
