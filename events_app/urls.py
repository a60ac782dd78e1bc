from django.urls import path

from events_app import views
from events_app.api.views import AuditEventsView

app_name = "events"

urlpatterns = [
    path("audit/events/", views.history, name="history"),
    path("audit/events/stream", views.stream, name="stream"),
    path("audit/events/export.<str:export_format>", views.export, name="export"),
    path("audit/events/<uuid:event_id>/", views.detail, name="detail"),
    path("api/v1/audit/events", AuditEventsView.as_view(), name="api-events"),
]
