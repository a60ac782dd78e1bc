"""The root URLconf: each app owns its routes; this file only mounts them (and imports no app)."""

from django.contrib import admin
from django.urls import include, path
from django.views.defaults import page_not_found, server_error
from django.views.generic.base import RedirectView
from drf_spectacular.views import SpectacularAPIView

from redflag.api.errors import api_not_found, api_server_error
from redflag.api.views import HealthView

urlpatterns = [
    # The portal is the admin: a bare visit (or the admin's "View site") lands there, not on a 404.
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
    path("", include("agents_app.api.urls")),
    path("", include("tokens_app.api.urls")),
    path("api/v1/health", HealthView.as_view(), name="health"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Signing in (allauth, with second factors and single sign-on): ahead of the admin, whose log-in it is.
    path("", include("accounts_app.signin.urls")),
    path("admin/", admin.site.urls),
    path("", include("events_app.urls")),
    path("", include("advisories_app.urls")),
    path("", include("reports_app.metrics_urls")),
]


def handler404(request, exception=None):
    if request.path.startswith("/api/"):
        return api_not_found(request, exception)
    return page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return api_server_error(request)
    return server_error(request)
