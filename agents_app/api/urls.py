"""Agent routes: enrolment and credentials, check-in and reports (/api/v1/agents/...), releases
(/api/v1/releases/...) and the installers (/install/...)."""

from django.urls import path, re_path

from agents_app.api.releases import (
    InstallerArtifactView,
    InstallerManifestView,
    InstallerScriptView,
    LatestReleaseView,
    ReleaseArtifactView,
    ReleaseManifestView,
)
from agents_app.api.views import (
    CheckinView,
    CommandResultView,
    ConfigView,
    EventsView,
    RegisterView,
    RenewView,
    SystemReportView,
    UpdatesReportView,
)
from agents_app.services.releases import VERSION_REGEX

urlpatterns = [
    path("api/v1/agents/register", RegisterView.as_view(), name="agent-register"),
    path("api/v1/agents/renew", RenewView.as_view(), name="agent-renew"),
    path("api/v1/agents/<uuid:agent_id>/checkin", CheckinView.as_view(), name="agent-checkin"),
    path("api/v1/agents/<uuid:agent_id>/events", EventsView.as_view(), name="agent-events"),
    path("api/v1/agents/<uuid:agent_id>/commands/<uuid:command_id>/result", CommandResultView.as_view(),
         name="agent-command-result"),
    path("api/v1/agents/<uuid:agent_id>/reports/updates", UpdatesReportView.as_view(), name="agent-report-updates"),
    path("api/v1/agents/<uuid:agent_id>/reports/system", SystemReportView.as_view(), name="agent-report-system"),
    path("api/v1/agents/<uuid:agent_id>/config", ConfigView.as_view(), name="agent-config"),
    path("api/v1/releases/latest", LatestReleaseView.as_view(), name="release-latest"),
    re_path(rf"^api/v1/releases/(?P<version>{VERSION_REGEX})$", ReleaseManifestView.as_view(), name="release-manifest"),
    re_path(rf"^api/v1/releases/(?P<version>{VERSION_REGEX})/artifact$", ReleaseArtifactView.as_view(),
            name="release-artifact"),
    path("install/redflag-agent.pyz", InstallerArtifactView.as_view(), name="install-artifact"),
    path("install/manifest.json", InstallerManifestView.as_view(), name="install-manifest"),
    path("install/<str:script>", InstallerScriptView.as_view(), name="install-script"),
]
