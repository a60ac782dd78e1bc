"""Routes for agent releases (/api/v1/releases/...) and the installers (/install/...)."""

from django.urls import path, re_path

from agents_app.api.releases import (
    InstallerArtifactView,
    InstallerManifestView,
    InstallerScriptView,
    LatestReleaseView,
    ReleaseArtifactView,
    ReleaseManifestView,
)
from agents_app.releases import VERSION_REGEX

urlpatterns = [
    path("api/v1/releases/latest", LatestReleaseView.as_view(), name="release-latest"),
    re_path(rf"^api/v1/releases/(?P<version>{VERSION_REGEX})$", ReleaseManifestView.as_view(), name="release-manifest"),
    re_path(rf"^api/v1/releases/(?P<version>{VERSION_REGEX})/artifact$", ReleaseArtifactView.as_view(),
            name="release-artifact"),
    path("install/redflag-agent.pyz", InstallerArtifactView.as_view(), name="install-artifact"),
    path("install/manifest.json", InstallerManifestView.as_view(), name="install-manifest"),
    path("install/<str:script>", InstallerScriptView.as_view(), name="install-script"),
]
