from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agents_app.api.views import (
    CheckinView,
    CommandResultView,
    ConfigView,
    EventsView,
    RegisterView,
    SystemReportView,
    UpdatesReportView,
)
from redflag.api.errors import api_not_found, api_server_error
from redflag.api.views import HealthView
from tokens_app.api.views import RenewView, SigningKeysView

api_v1 = [
    path("api/v1/agents/register", RegisterView.as_view(), name="agent-register"),
    path("api/v1/agents/renew", RenewView.as_view(), name="agent-renew"),
    path("api/v1/agents/<uuid:agent_id>/checkin", CheckinView.as_view(), name="agent-checkin"),
    path("api/v1/agents/<uuid:agent_id>/events", EventsView.as_view(), name="agent-events"),
    path("api/v1/agents/<uuid:agent_id>/commands/<uuid:command_id>/result", CommandResultView.as_view(),
         name="agent-command-result"),
    path("api/v1/agents/<uuid:agent_id>/reports/updates", UpdatesReportView.as_view(), name="agent-report-updates"),
    path("api/v1/agents/<uuid:agent_id>/reports/system", SystemReportView.as_view(), name="agent-report-system"),
    path("api/v1/agents/<uuid:agent_id>/config", ConfigView.as_view(), name="agent-config"),
    path("api/v1/signing-keys", SigningKeysView.as_view(), name="signing-keys"),
    path("api/v1/health", HealthView.as_view(), name="health"),
]

urlpatterns = [
    *api_v1,
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("admin/", admin.site.urls),
    path("", include("agents_app.api.release_urls")),
    path("", include("events_app.urls")),
]


def handler404(request, exception=None):
    if request.path.startswith("/api/"):
        return api_not_found(request, exception)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return api_server_error(request)
    from django.views.defaults import server_error

    return server_error(request)
