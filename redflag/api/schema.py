"""The error body every API answers with, as an OpenAPI schema (redflag.api.errors writes it)."""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# The error answers an endpoint documents, by status.
ERRORS = {status: OpenApiResponse(ErrorSerializer) for status in (400, 401, 403, 409, 413, 429, 503)}
