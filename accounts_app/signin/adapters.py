"""allauth's hooks, fitted to RedFlag.

- No sign-up: accounts are made by admins (or ``make run``'s first admin), or by single sign-on.
- Wrong passwords lock an account's password sign-in for a while (allauth's login_failed limit);
  each lock is recorded once (user_lockout).
- SSO only: a correct password of an account that is not break-glass is refused, and recorded.
- Single sign-on maps the provider's claims to roles at every sign-in (role_grants_replace); a person
  the map gives no role is refused, and any roles single sign-on gave them before are taken away.
"""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.core.exceptions import ValidationError
from django.shortcuts import render

from accounts_app.choices import GrantSource
from accounts_app.services import role_grants_replace
from accounts_app.signin.events import signin_failure_record, signin_lockout_record
from accounts_app.signin.policy import holds_second_factor, is_break_glass, mark_second_factor
from accounts_app.signin.sso import claim_values, grants_for, provider_did_second_factor

PASSWORD_SIGN_IN_OFF = ("Password sign-in is only for break-glass accounts on this server: "
                        "sign in with single sign-on.")
SSO_ACTOR = "single sign-on"


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request) -> bool:
        return False

    def pre_authenticate(self, request, **credentials) -> None:
        try:
            super().pre_authenticate(request, **credentials)
        except ValidationError:
            signin_lockout_record(request=request, username=str(credentials.get("username", "")),
                                  reason="too many failed passwords",
                                  window_seconds=settings.REDFLAG_LOCKOUT_SECONDS)
            raise

    def is_reauthentication_required(self, *, app: str, **kwargs) -> bool:
        """Setting up the first factor needs no second password prompt just after signing in: with no factor
        there is nothing to protect yet. Changing or removing a factor someone holds still needs proof."""
        request = context.request
        user = getattr(request, "user", None)
        if app == "allauth.mfa" and user is not None and user.is_authenticated and not holds_second_factor(user):
            return False
        return super().is_reauthentication_required(app=app, **kwargs)

    def authenticate(self, request, **credentials):
        user = super().authenticate(request, **credentials)
        if user is not None and settings.REDFLAG_SSO_ONLY and not is_break_glass(user):
            signin_failure_record(request=request, username=user.get_username(), stage="password",
                                  detail="password sign-in is off (SSO only) and the account is not break-glass")
            raise ValidationError(PASSWORD_SIGN_IN_OFF)
        return user


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request, sociallogin) -> bool:
        return True  # the provider vouches for the person; the role map decides what they may do

    def pre_social_login(self, request, sociallogin) -> None:
        """Before the sign-in goes on: refuse a person without a mapped role; re-map a known person."""
        grants = self._grants(sociallogin)
        if sociallogin.is_existing:
            self._apply(request, sociallogin, sociallogin.user, grants)
        if not grants:
            self._refuse(request, sociallogin, "the provider's claims map to no role")

    def save_user(self, request, sociallogin, form=None):
        user = super().save_user(request, sociallogin, form)
        self._apply(request, sociallogin, user, self._grants(sociallogin))
        user.refresh_from_db()  # role_grants_replace made them staff on its own copy
        return user

    def on_authentication_error(self, request, provider, error=None, exception=None, extra_context=None):
        # The provider's error code only: its description and the exception may quote what it was sent.
        signin_failure_record(request=request, username="", stage="single sign-on",
                              detail=f"the provider answered {error or 'an error'}",
                              provider=getattr(provider, "id", ""), error=str(error or ""))
        return super().on_authentication_error(request, provider, error, exception, extra_context)

    @staticmethod
    def _grants(sociallogin) -> list[tuple[str, list[str]]]:
        values = claim_values(sociallogin.account.extra_data, settings.REDFLAG_OIDC_ROLE_CLAIM)
        return grants_for(values, settings.REDFLAG_OIDC_ROLE_MAP)

    def _apply(self, request, sociallogin, user, grants) -> None:
        try:
            role_grants_replace(user=user, grants=grants, actor=SSO_ACTOR, source=GrantSource.SSO)
        except ValidationError as exc:  # the map names a group that no longer exists
            self._refuse(request, sociallogin, "; ".join(exc.messages), username=user.get_username())
        if settings.REDFLAG_OIDC_TRUST_PROVIDER_MFA and provider_did_second_factor(sociallogin.account.extra_data):
            mark_second_factor(request, user)

    @staticmethod
    def _refuse(request, sociallogin, detail: str, username: str = "") -> None:
        claims = sociallogin.account.extra_data
        username = username or str((claims.get("userinfo") or {}).get("preferred_username")
                                    or sociallogin.account.uid)
        signin_failure_record(request=request, username=username, stage="single sign-on", detail=detail,
                              subject=str(sociallogin.account.uid)[:255])
        raise ImmediateHttpResponse(render(request, "socialaccount/refused.html", {"detail": detail}, status=403))
