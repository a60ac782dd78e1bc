"""Nobody who can change anything works without a second factor (REDFLAG_REQUIRE_MFA).

A signed-in person who must hold one (policy.second_factor_required) and does not is sent to set up
TOTP, whatever they asked for: the admin, the auditor's pages, an admin action posted from an old tab.
Only the pages that set up a factor, re-authenticate or sign out stay open to them.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

from accounts_app.signin.policy import second_factor_required, session_has_second_factor

# Views a person without their required factor may still reach (allauth's MFA pages all start "mfa_").
OPEN_VIEWS = frozenset({"account_logout", "account_reauthenticate", "admin:logout", "sign_in", "account_login"})


class SecondFactorRequiredMiddleware(MiddlewareMixin):
    def process_view(self, request, view_func, view_args, view_kwargs):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        match = request.resolver_match
        view_name = match.view_name if match else ""
        if view_name in OPEN_VIEWS or view_name.startswith("mfa_"):
            return None
        if not second_factor_required(user) or session_has_second_factor(request):
            return None
        setup = reverse("mfa_activate_totp")
        if request.method in ("GET", "HEAD"):
            setup += "?" + urlencode({"next": request.get_full_path()})
        return HttpResponseRedirect(setup)
