"""Agent releases over HTTP: the signed manifest and the artifact, and the installers.

Agent endpoints (/api/v1/releases/...) authenticate like every agent request
(bearer access token, machine binding, nonce). The installer endpoints
(/install/...) are public — see ``InstallerArtifactView`` for why that is safe.
"""

from __future__ import annotations

import re

from django.http import FileResponse, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import View
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app.api.authentication import SECURITY_HEADERS, AgentPrincipal, AgentTokenAuthentication
from agents_app.models import AgentRelease
from agents_app.services.releases import latest_release, manifest_wire, release_find
from redflag.api.schema import ERRORS, ErrorSerializer
from redflag.api.throttling import ReportsThrottle
from redflag.errors import ApiError
from redflag.models import ServerSettings


class ReleaseRevoked(ApiError):
    status_code = 410
    default_code = "release_revoked"
    default_detail = "This release was revoked; ask for the latest release."


class IsAgent(BasePermission):
    """Any authenticated agent (releases are not per agent)."""

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, AgentPrincipal)


ReleaseManifestSerializer = inline_serializer("ReleaseManifest", {
    "version": serializers.CharField(),
    "platform": serializers.ChoiceField(choices=AgentRelease.Platform.choices),
    "size": serializers.IntegerField(),
    "sha256": serializers.CharField(),
    "created": serializers.IntegerField(help_text="Unix seconds."),
    "key_id": serializers.CharField(),
    "signature": serializers.CharField(
        help_text="Base64 Ed25519 signature over agent_client.protocol.release_manifest_bytes(version, platform, "
                  "size, sha256, created)."),
    "revoked": serializers.BooleanField(),
})
PLATFORM = OpenApiParameter("platform", str, OpenApiParameter.QUERY, required=False, enum=AgentRelease.Platform.values,
                            description="Defaults to 'any' (the Python zipapp).")
VERSION = OpenApiParameter("version", str, OpenApiParameter.PATH, pattern=r"^\d{1,9}(\.\d{1,9}){0,5}$",
                           description="Dot-separated numbers, compared numerically (0.1.23 < 0.1.23.5).")
RELEASE_ERRORS = {**ERRORS, 404: OpenApiResponse(ErrorSerializer), 410: OpenApiResponse(ErrorSerializer)}


def _release(version: str, *, allow_revoked: bool = False) -> AgentRelease:
    release = release_find(version=version)
    if release is None:
        raise NotFound(f"No agent release {version}.")
    if release.revoked_at is not None and not allow_revoked:
        raise ReleaseRevoked()
    return release


def artifact_response(release: AgentRelease) -> FileResponse:
    """Stream the artifact with its hash; the client checks both before it trusts the file."""
    response = FileResponse(release.artifact.open("rb"), content_type="application/octet-stream", as_attachment=True,
                            filename=f"redflag-agent-{release.version}.pyz")
    response["Content-Length"] = str(release.size)
    response["X-Content-SHA256"] = release.sha256
    response["X-Release-Version"] = release.version
    return response


class ReleaseEndpoint(APIView):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]
    throttle_classes = [ReportsThrottle]


class LatestReleaseView(ReleaseEndpoint):
    @extend_schema(operation_id="releases_latest", parameters=[PLATFORM, *SECURITY_HEADERS],
                   responses={200: ReleaseManifestSerializer, **RELEASE_ERRORS})
    def get(self, request):
        """The signed manifest of the latest non-revoked release of a platform."""
        platform = request.query_params.get("platform", AgentRelease.Platform.ANY)
        if platform not in AgentRelease.Platform.values:
            choices = ", ".join(AgentRelease.Platform.values)
            raise serializers.ValidationError({"platform": [f"Choose one of: {choices}."]})
        release = latest_release(platform=platform)
        if release is None:
            raise NotFound(f"No agent release for platform {platform}.")
        return Response(manifest_wire(release))


class ReleaseManifestView(ReleaseEndpoint):
    @extend_schema(operation_id="releases_manifest", parameters=[VERSION, *SECURITY_HEADERS],
                   responses={200: ReleaseManifestSerializer, **RELEASE_ERRORS})
    def get(self, request, version):
        """The signed manifest of one release; 410 once it is revoked."""
        return Response(manifest_wire(_release(version)))


class ReleaseArtifactView(ReleaseEndpoint):
    @extend_schema(
        operation_id="releases_artifact", parameters=[VERSION, *SECURITY_HEADERS],
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description=(
            "The artifact, streamed; X-Content-SHA256 carries its hash.")), **RELEASE_ERRORS},
    )
    def get(self, request, version):
        """The release's artifact, streamed with X-Content-SHA256 and Content-Length; 410 once revoked."""
        return artifact_response(_release(version))


# --- installers (public, outside the API schema) ---------------------------------------------------

INSTALLERS = {
    "linux.sh": ("install/linux.sh", "text/x-shellscript; charset=utf-8"),
    "uninstall.sh": ("install/uninstall.sh", "text/x-shellscript; charset=utf-8"),
    "windows.ps1": ("install/windows.ps1", "text/plain; charset=utf-8"),
}
# Rendered into a single-quoted shell / PowerShell string: nothing that could end the quote.
SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$")


def _public_url() -> str | None:
    url = (ServerSettings.current().public_url or "").strip().rstrip("/")
    return url if SAFE_URL.match(url) else None


def _unconfigured() -> HttpResponse:
    return HttpResponse(
        "RedFlag's public URL is not configured (or is not a plain http(s) URL), so installers cannot tell agents "
        "where to connect. An admin sets it in Server settings → Public URL.\n",
        status=503, content_type="text/plain; charset=utf-8", headers={"Retry-After": "300"},
    )


class InstallerScriptView(View):
    """GET /install/<script>: rendered with the configured public URL — never the request's Host header,
    which a client (or a proxy) controls."""

    def get(self, request, script: str):
        if script not in INSTALLERS:
            return HttpResponse("No such installer.\n", status=404, content_type="text/plain; charset=utf-8")
        server_url = _public_url()
        if server_url is None:
            return _unconfigured()
        template, content_type = INSTALLERS[script]
        body = render_to_string(template, {"server_url": server_url, "platform": AgentRelease.Platform.ANY})
        return HttpResponse(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def _installer_release(request) -> AgentRelease | None:
    platform = request.GET.get("platform", AgentRelease.Platform.ANY)
    return latest_release(platform=platform) if platform in AgentRelease.Platform.values else None


class InstallerManifestView(View):
    """GET /install/manifest.json: the latest release's signed manifest, for the installers."""

    def get(self, request):
        release = _installer_release(request)
        if release is None:
            return JsonResponse({"error": {"code": "not_found", "message": "No agent release is available yet; "
                                           "an admin runs manage.py build_agent_release."}}, status=404)
        return JsonResponse(manifest_wire(release))


class InstallerArtifactView(View):
    """GET /install/redflag-agent.pyz: the latest non-revoked artifact, without credentials.

    The installer has only a registration token, which the agent endpoints do not accept, so the
    installer's download is public. That is safe because the artifact holds no secret and its integrity
    never rests on who may download it: the installer checks size and SHA-256 against the manifest and the
    manifest's Ed25519 signature against the server's published keys (/api/v1/signing-keys) before it
    installs anything. Only the latest release is served here; older and revoked ones stay behind agent
    authentication (/api/v1/releases/{version}/artifact).
    """

    def get(self, request):
        release = _installer_release(request)
        if release is None:
            return JsonResponse({"error": {"code": "not_found", "message": "No agent release is available yet."}},
                                status=404)
        return artifact_response(release)
