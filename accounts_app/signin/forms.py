"""allauth's second-factor form, with its lock-out recorded (MFA_FORMS["authenticate"])."""

from __future__ import annotations

from allauth.core import context
from allauth.mfa.base.forms import AuthenticateForm
from django.conf import settings
from django.core.exceptions import ValidationError

from accounts_app.signin.events import signin_lockout_record


class RecordedAuthenticateForm(AuthenticateForm):
    def clean_code(self) -> str:
        """Too many wrong codes for one account lock its second-factor step for a while (allauth's
        login_failed limit, per account): recorded once per lock, like a password lock-out."""
        try:
            return super().clean_code()
        except ValidationError as exc:
            if exc.code == "too_many_login_attempts":
                signin_lockout_record(request=context.request, username=self.user.get_username(),
                                      reason="too many wrong second-factor codes",
                                      window_seconds=settings.REDFLAG_LOCKOUT_SECONDS)
            raise
