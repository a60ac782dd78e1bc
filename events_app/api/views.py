"""GET /api/v1/audit/events: the history for SIEM tools, same filters and cursor as the history page."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from events_app.access import VIEW_EVENTS
from events_app.api.auth import AuditTokenAuthentication, CanReadEvents
from events_app.api.serializers import AuditEventPageSerializer
from events_app.choices import Component, EventSubtype, EventType, Origin, Severity
from events_app.filters import REPEATED, EventFilterForm, repeated_parameters
from events_app.models import SystemEvent
from events_app.querysets import TEXT_SCAN_WINDOW
from events_app.rendering import event_record
from redflag.access import agents_q
from redflag.api.schema import ErrorSerializer

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
Q = OpenApiParameter.QUERY
PARAMETERS = [
    OpenApiParameter("agent", OpenApiTypes.UUID, Q, description="Only this agent's events."),
    OpenApiParameter("event_type", OpenApiTypes.STR, Q, enum=EventType.values),
    OpenApiParameter("subtype", OpenApiTypes.STR, Q, enum=EventSubtype.values),
    OpenApiParameter("severity", OpenApiTypes.STR, Q, enum=Severity.values),
    OpenApiParameter("component", OpenApiTypes.STR, Q, enum=Component.values),
    OpenApiParameter("origin", OpenApiTypes.STR, Q, enum=Origin.values,
                     description="server: recorded by the server; agent: an agent's report about itself."),
    OpenApiParameter("since", OpenApiTypes.DATETIME, Q,
                     description="From (inclusive). UTC without an offset; years 1-9999 once in UTC."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, Q, description="To (exclusive), as since."),
    OpenApiParameter("q", OpenApiTypes.STR, Q, description=(
        "Text the message contains (case-insensitive). Unindexed: a page searches at most "
        f"{TEXT_SCAN_WINDOW} events of the rest of the filter, so it may hold fewer than limit rows (even none) "
        "and still have a next_cursor; searched_back_to then says how far back it looked.")),
    OpenApiParameter("meta", OpenApiTypes.STR, Q, description=(
        "Metadata filters: key=value[,key=value...], at most 5. A value matches as text and, when it is JSON, as "
        'that value: numbers must be finite and integers fit 64 bits (quote them, x="NaN", to match the text).')),
    OpenApiParameter("cursor", OpenApiTypes.STR, Q, description="next_cursor of the previous page."),
    OpenApiParameter("limit", OpenApiTypes.INT, Q, description=f"Page size, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})."),
]
ERRORS = {status: OpenApiResponse(ErrorSerializer) for status in (400, 401, 403)}


class LimitField(serializers.Serializer):
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=DEFAULT_LIMIT)


class AuditEventsView(APIView):
    """Newest first; keyset pagination (``next_cursor``), so a deep page costs what the first costs."""

    authentication_classes = [AuditTokenAuthentication]
    permission_classes = [CanReadEvents]

    @extend_schema(operation_id="audit_events_list", parameters=PARAMETERS,
                   responses={200: AuditEventPageSerializer, **ERRORS}, tags=["audit"])
    def get(self, request):
        form = EventFilterForm(request.query_params).within(agents_q(request.user, VIEW_EVENTS))
        limit = LimitField(data={k: v for k, v in request.query_params.items() if k == "limit"})
        errors = {**(form.errors if not form.is_valid() else {}), **(limit.errors if not limit.is_valid() else {})}
        if repeated_parameters(request.query_params, ["limit"]):
            errors["limit"] = [REPEATED]
        if errors:
            raise ValidationError({name: list(messages) for name, messages in errors.items()})
        page = SystemEvent.objects.search_page(form.spec(), form.cleaned_data["cursor"] or None,
                                               limit.validated_data["limit"])
        searched = page.searched_back_to
        return Response({"results": [event_record(row) for row in page.rows], "next_cursor": page.next_cursor,
                         "searched_back_to": searched.isoformat() if searched else None})

    def handle_exception(self, exc):
        # Django refuses to parse a query string of more than DATA_UPLOAD_MAX_NUMBER_FIELDS
        # parameters; answer that in the API's error body, not Django's HTML 400 page.
        if isinstance(exc, TooManyFieldsSent):
            exc = ValidationError({"query": [f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} parameters."]})
        return super().handle_exception(exc)
