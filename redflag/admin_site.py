"""The RedFlag admin site: Django's admin with a rate-limited log-in, the fleet listed first, and one
navigation bar across the top instead of the app sidebar.

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
from django.http import HttpResponse

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
    ("Updates", "agents_app", "PackageUpdate"),
    ("Commands", "agents_app", "Command"),
    ("Bulk operations", "agents_app", "BulkOperation"),
    ("Registration tokens", "tokens_app", "RegistrationToken"),
    ("Releases", "agents_app", "AgentRelease"),
    ("Server settings", "redflag", "ServerSettings"),
)


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
        if request.method == "POST":
            throttle = AdminLoginThrottle()
            if not throttle.allow_request(request, None):
                wait = max(1, int((throttle.wait() or 1) + 0.999))
                response = HttpResponse(
                    f"Too many log-in attempts from your address. Try again in {wait} seconds.",
                    status=429,
                    content_type="text/plain",
                )
                response["Retry-After"] = str(wait)
                return response
        return super().login(request, extra_context)

    def get_app_list(self, request, app_label=None):
        """The fleet first (it is what admins come for), with the admins' names for its lists."""
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            for model in app["models"]:
                model["name"] = MODEL_TITLES.get((app["app_label"], model["object_name"]), model["name"])
        return sorted(app_list, key=lambda app: app["app_label"] != "agents_app")
