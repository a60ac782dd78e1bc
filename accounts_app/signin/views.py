"""The one sign-in page: allauth's log-in (password, then the second factor; single sign-on), at
/admin/login/ and allauth's own /accounts/login/ alike, behind the admin's per-address rate limit."""

from __future__ import annotations

from allauth.account.views import LoginView
from django.conf import settings

from accounts_app.signin.events import signin_lockout_record
from redflag.admin_site import login_throttled


class SignInView(LoginView):
    def dispatch(self, request, *args, **kwargs):
        if request.method == "POST":
            refused = login_throttled(request)
            if refused is not None:
                signin_lockout_record(request=request, username=str(request.POST.get("login", "")),
                                      reason="too many sign-in attempts from this address",
                                      window_seconds=int(refused["Retry-After"]))
                return refused
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(sso_enabled=bool(settings.REDFLAG_OIDC_ISSUER), sso_name=settings.REDFLAG_OIDC_NAME,
                       sso_only=settings.REDFLAG_SSO_ONLY, site_header="RedFlag", title="Sign in")
        return context


sign_in = SignInView.as_view()
