"""Who must hold a second factor, and who may still sign in with a password in SSO-only mode.

One definition each, used by the middleware, the adapters and the tests.
"""

from __future__ import annotations

from allauth.mfa.models import Authenticator
from django.conf import settings
from django.http import HttpRequest

# Factors that count as a second factor. Recovery codes are the way back in when one is lost, not a
# factor of their own: an account holding only recovery codes must still set up TOTP or a security key.
SECOND_FACTORS = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)
# This session's user holds a second factor (or their provider did one, when trusted): set at sign-in
# and when a factor is added, cleared when the last one goes, so the check costs no query per request.
SESSION_FLAG = "redflag_second_factor"


def can_change_anything(user) -> bool:
    """A superuser, or an active staff member holding any permission other than view_*.

    Permissions that are not "view" change something (add/change/delete, and the fleet's own actions
    such as approving an install), so any of them makes the account worth a second factor.
    """
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return False
    if user.is_superuser:
        return True
    return any(not permission.partition(".")[2].startswith("view_") for permission in user.get_all_permissions())


def second_factor_required(user) -> bool:
    return settings.REDFLAG_REQUIRE_MFA and can_change_anything(user)


def holds_second_factor(user) -> bool:
    return Authenticator.objects.filter(user=user, type__in=SECOND_FACTORS).exists()


def session_has_second_factor(request: HttpRequest) -> bool:
    """True once this session's user is known to hold a second factor (one query the first time only).

    The flag holds the user's id, not True: a flag left by a sign-in that never finished (set before
    Django's log-in, which keeps an anonymous session's data) cannot vouch for someone else.
    """
    if request.session.get(SESSION_FLAG) == request.user.pk:
        return True
    if holds_second_factor(request.user):
        mark_second_factor(request, request.user)
        return True
    return False


def mark_second_factor(request: HttpRequest, user) -> None:
    request.session[SESSION_FLAG] = user.pk


def forget_second_factor(request: HttpRequest) -> None:
    request.session.pop(SESSION_FLAG, None)


def is_break_glass(user) -> bool:
    """May sign in with a password while SSO only is on: superusers and REDFLAG_BREAK_GLASS_USERS."""
    return user.is_superuser or user.get_username() in settings.REDFLAG_BREAK_GLASS_USERS
