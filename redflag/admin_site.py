"""The RedFlag admin site: Django's admin with a rate-limited log-in and the fleet listed first.

The fleet dashboard on its index is a template tag of agents_app (templates/admin/index.html), so
this module imports no app.
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


class RedFlagAdminSite(admin.AdminSite):
    site_header = "RedFlag"
    site_title = "RedFlag"
    index_title = "Fleet dashboard"

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
