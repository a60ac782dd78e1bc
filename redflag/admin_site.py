"""The RedFlag admin site: Django's admin with a rate-limited log-in."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpResponse

from redflag.api.throttling import AdminLoginThrottle


class RedFlagAdminSite(admin.AdminSite):
    site_header = "RedFlag"
    site_title = "RedFlag"
    index_title = "Fleet administration"

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
