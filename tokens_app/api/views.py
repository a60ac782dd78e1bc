from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from redflag.api.schema import ERRORS
from tokens_app.api.serializers import SigningKeySerializer, SigningKeysSerializer
from tokens_app.signing import active_public_keys


class SigningKeysView(APIView):
    """The active Ed25519 public keys that sign commands and releases."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="signing_keys", responses={200: SigningKeysSerializer, 503: ERRORS[503]})
    def get(self, request):
        return Response({"keys": SigningKeySerializer(active_public_keys(), many=True).data})
