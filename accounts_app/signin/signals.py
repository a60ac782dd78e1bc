"""allauth's MFA signals as SystemEvents, and the session's "holds a second factor" flag kept current.

Sign-ins and wrong passwords are recorded by events_app/signals.py (Django's user_logged_in and
user_login_failed, which allauth's log-in sends too); lock-outs and SSO refusals by the adapters.
"""

from __future__ import annotations

from allauth.account.internal.flows.login import record_authentication
from allauth.mfa.signals import (
    authentication_failed,
    authenticator_added,
    authenticator_removed,
    authenticator_reset,
    authenticator_used,
)
from django.dispatch import receiver

from accounts_app.signin.events import second_factor_change_record, signin_failure_record
from accounts_app.signin.policy import forget_second_factor, holds_second_factor, mark_second_factor


def _factor(authenticator) -> str:
    return str(authenticator.type)


@receiver(authenticator_added, dispatch_uid="redflag-mfa-added")
def on_factor_added(sender, request, user, authenticator, **kwargs):
    second_factor_change_record(request=request, user=user, change="added", factor=_factor(authenticator))
    if request is not None and holds_second_factor(user):
        mark_second_factor(request, user)
        # Adding it took its proof (a code from the app, a touch of the key): that counts as a fresh
        # second-factor authentication, so the recovery codes shown next need no new password prompt.
        record_authentication(request, user, "mfa", id=authenticator.pk, type=str(authenticator.type),
                              reauthenticated=True)


@receiver(authenticator_removed, dispatch_uid="redflag-mfa-removed")
def on_factor_removed(sender, request, user, authenticator, **kwargs):
    second_factor_change_record(request=request, user=user, change="removed", factor=_factor(authenticator))
    if request is not None and not holds_second_factor(user):
        forget_second_factor(request)


@receiver(authenticator_reset, dispatch_uid="redflag-mfa-reset")
def on_factor_reset(sender, request, user, authenticator, **kwargs):
    second_factor_change_record(request=request, user=user, change="reset", factor=_factor(authenticator))


@receiver(authenticator_used, dispatch_uid="redflag-mfa-used")
def on_factor_used(sender, request, user, authenticator, **kwargs):
    # Used at sign-in (before Django's log-in, which keeps the session's data) or to re-authenticate.
    if request is not None:
        mark_second_factor(request, user)


@receiver(authentication_failed, dispatch_uid="redflag-mfa-failed")
def on_second_factor_failed(sender, request, user, authenticator=None, **kwargs):
    factor = _factor(authenticator) if authenticator is not None else "unknown"
    signin_failure_record(request=request, username=user.get_username(), stage="second factor",
                          detail=f"wrong {factor} code", factor=factor,
                          reauthentication=bool(kwargs.get("reauthentication")))
