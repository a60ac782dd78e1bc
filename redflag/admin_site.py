"""The RedFlag admin site: Django's admin with a rate-limited, two-factor sign-in (accounts_app/signin),
the fleet listed first, and one navigation bar across the top instead of the app sidebar.

The fleet dashboard on its index is a template tag of agents_app (templates/admin/index.html), so
this module imports no app.

The look is Django's own admin (its stylesheets, dark mode and responsive rules, maintained with
Django) with RedFlag's colours and denser lists on top (redflag/static/redflag/admin.css), rather
than a theme such as django-unfold: unfold needs every ModelAdmin and inline to subclass its own
classes and replaces the templates this project overrides, the admin's actions and change forms
included, for a look that the one stylesheet gives here. The auditor's pages extend the same
base template, so they share the header, the navigation and the stylesheet.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.urls import reverse

from redflag.api.throttling import AdminLoginThrottle

# What admins call these lists (the models keep their own verbose names).
MODEL_TITLES = {
    ("agents_app", "PackageUpdate"): "Updates across the fleet",
    ("agents_app", "Command"): "Live operations (commands)",
}
# The navigation bar on every page: the lists admins work in, in the order they use them. A user sees
# the ones their permissions open (an auditor: agents and the event history).
NAVIGATION = (
    ("Agents", "agents_app", "Agent"),
    ("Groups", "agents_app", "AgentGroup"),
    ("Policies", "policies_app", "Policy"),
    ("Windows", "policies_app", "MaintenanceWindow"),
    ("Rollouts", "policies_app", "Rollout"),
    ("Updates", "agents_app", "PackageUpdate"),
    ("Commands", "agents_app", "Command"),
    ("Bulk operations", "agents_app", "BulkOperation"),
    ("Registration tokens", "tokens_app", "RegistrationToken"),
    ("Releases", "agents_app", "AgentRelease"),
    ("Reports", "reports_app", "Report"),
    ("Notifications", "notifications_app", "Destination"),
    ("Server settings", "redflag", "ServerSettings"),
    ("People", "auth", "User"),
)


def login_throttled(request) -> HttpResponse | None:
    """A 429 with Retry-After when this address has used up its log-in attempts (ServerSettings' admin
    rate), else None. The sign-in page asks before every posted attempt, ahead of any password check."""
    throttle = AdminLoginThrottle()
    if throttle.allow_request(request, None):
        return None
    wait = max(1, int((throttle.wait() or 1) + 0.999))
    response = HttpResponse(
        f"Too many log-in attempts from your address. Try again in {wait} seconds.",
        status=429,
        content_type="text/plain",
    )
    response["Retry-After"] = str(wait)
    return response


class ReadOnlyAdminMixin:
    """A list that is a record (events, deliveries, a policy's machine turns): viewed, never added,
    changed or deleted in the admin. Put it after any scoping mixin, before ``admin.ModelAdmin``."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class RedFlagAdminSite(admin.AdminSite):
    site_header = "RedFlag"
    site_title = "RedFlag"
    index_title = "Fleet dashboard"
    # The sidebar took a fifth of a 1366 px screen from every list; the navigation bar replaces it.
    enable_nav_sidebar = False
    site_url = None  # no public site besides the admin: no "View site" link

    def each_context(self, request):
        context = super().each_context(request)
        context["navigation"] = self.navigation(context["available_apps"])
        return context

    @staticmethod
    def navigation(app_list) -> list[tuple[str, str]]:
        """(label, url) of the NAVIGATION lists the user may open, from the app list the admin already built."""
        urls = {(app["app_label"], model["object_name"]): model["admin_url"]
                for app in app_list for model in app["models"] if model.get("admin_url")}
        return [(label, urls[app_label, object_name]) for label, app_label, object_name in NAVIGATION
                if (app_label, object_name) in urls]

    def login(self, request, extra_context=None):
        # Signing in is allauth's log-in with its second factors (accounts_app/signin), mounted at this
        # site's log-in address ahead of the site's own URLs: anything that still reaches Django's admin
        # log-in goes there, so no password form skips the second factor.
        return redirect_to_login(request.GET.get(REDIRECT_FIELD_NAME) or reverse("admin:index"),
                                 login_url="account_login")

    def get_app_list(self, request, app_label=None):
        """The fleet first (it is what admins come for), with the admins' names for its lists."""
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            for model in app["models"]:
                model["name"] = MODEL_TITLES.get((app["app_label"], model["object_name"]), model["name"])
        return sorted(app_list, key=lambda app: app["app_label"] != "agents_app")
