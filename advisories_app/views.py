"""Exposures for other tools: CSV / JSON Lines exports (admin session) and GET /api/v1/advisories/exposures."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from advisories_app.choices import ExposureStatus
from advisories_app.rendering import csv_lines, exposure_record, exposures_for_reading, jsonl_lines
from events_app.api.auth import AuditTokenAuthentication
from redflag.access import scope_queryset
from redflag.api.schema import ErrorSerializer

VIEW_EXPOSURES = "advisories_app.view_exposure"
EXPORT_FORMATS = {"csv": ("text/csv; charset=utf-8", csv_lines), "jsonl": ("application/x-ndjson", jsonl_lines)}
EXPORT_BATCH = 2000
MAX_LIMIT = 500


def can_read_exposures(user) -> bool:
    return bool(user and user.is_active and user.is_staff and user.has_perm(VIEW_EXPOSURES))


class ExposureFilter(serializers.Serializer):
    """The filters the export and the API share; a bad value is a 400 naming the field."""

    cve = serializers.RegexField(r"^CVE-\d{4}-\d{4,}$", required=False)
    agent = serializers.UUIDField(required=False)
    status = serializers.ChoiceField(ExposureStatus.choices, required=False)
    known_exploited = serializers.BooleanField(required=False, allow_null=True, default=None)
    after = serializers.IntegerField(required=False, min_value=0, default=0, help_text="next_cursor of the last page.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=100)

    def queryset(self, user):
        """The matching exposures of the agents ``user`` may see (redflag.access)."""
        rows = scope_queryset(exposures_for_reading(), user, "agent", VIEW_EXPOSURES)
        data, rows = self.validated_data, rows.filter(pk__gt=self.validated_data["after"])
        if data.get("cve"):
            rows = rows.filter(vulnerability__cve_id=data["cve"])
        if data.get("agent"):
            rows = rows.filter(agent_id=data["agent"])
        if data.get("status"):
            rows = rows.filter(status=data["status"])
        if data["known_exploited"] is not None:
            rows = rows.filter(vulnerability__known_exploited=data["known_exploited"])
        return rows


@require_safe
def export(request, export_format: str):
    """Every exposure matching the filters, streamed in batches (constant memory)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="admin:login")
    if not can_read_exposures(request.user):
        raise PermissionDenied
    filters = ExposureFilter(data=request.GET.dict())
    if export_format not in EXPORT_FORMATS or not filters.is_valid():
        errors = {} if export_format in EXPORT_FORMATS else {"format": [f"one of {', '.join(EXPORT_FORMATS)}"]}
        errors.update(getattr(filters, "_errors", None) or {})
        return HttpResponseBadRequest("Invalid request: " + "; ".join(
            f"{name}: {' '.join(map(str, messages))}" for name, messages in errors.items()), content_type="text/plain")
    content_type, lines = EXPORT_FORMATS[export_format]
    response = StreamingHttpResponse(lines(filters.queryset(request.user).iterator(chunk_size=EXPORT_BATCH)),
                                     content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="redflag-exposures-{stamp}.{export_format}"'
    response["Cache-Control"] = "no-store"
    return response


class ExposureRecordSerializer(serializers.Serializer):
    """advisories_app.rendering.exposure_record, for the schema."""

    cve_id = serializers.CharField()
    cvss_score = serializers.FloatField(allow_null=True)
    epss_score = serializers.FloatField(allow_null=True)
    epss_percentile = serializers.FloatField(allow_null=True)
    known_exploited = serializers.BooleanField()
    kev_date_added = serializers.DateField(allow_null=True)
    kev_due_date = serializers.DateField(allow_null=True)
    agent_id = serializers.UUIDField()
    hostname = serializers.CharField()
    package_type = serializers.CharField()
    package = serializers.CharField()
    current_version = serializers.CharField()
    available_version = serializers.CharField()
    status = serializers.ChoiceField(ExposureStatus.choices)
    fixed_version = serializers.CharField()
    source = serializers.CharField()


class ExposurePageSerializer(serializers.Serializer):
    results = ExposureRecordSerializer(many=True)
    next_cursor = serializers.IntegerField(allow_null=True)


class CanReadExposures(BasePermission):
    message = "This token's user may not read exposures (advisories_app.view_exposure)."

    def has_permission(self, request, view) -> bool:
        return can_read_exposures(request.user)


class ExposuresView(APIView):
    """Exposures in id order; ``next_cursor`` is the ``after`` of the next page (null on the last)."""

    authentication_classes = [AuditTokenAuthentication]
    permission_classes = [CanReadExposures]

    @extend_schema(operation_id="advisories_exposures_list", parameters=[ExposureFilter],
                   responses={200: ExposurePageSerializer,
                              **{status: OpenApiResponse(ErrorSerializer) for status in (400, 401, 403)}},
                   tags=["advisories"])
    def get(self, request):
        filters = ExposureFilter(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        limit = filters.validated_data["limit"]
        rows = list(filters.queryset(request.user)[:limit + 1])
        page = rows[:limit]
        return Response({"results": [exposure_record(row) for row in page],
                         "next_cursor": page[-1].pk if len(rows) > limit else None})
