"""Admin log-ins are authentication events too."""

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from redflag.api.throttling import AdminLoginThrottle


def _client_ip(request) -> str:
    if request is None:
        return ""
    return AdminLoginThrottle().get_ident(request)


@receiver(user_logged_in)
def record_login(sender, request, user, **kwargs):
    record_event(
        event_type=EventType.USER_LOGIN,
        subtype=EventSubtype.SUCCESS,
        component=Component.SECURITY,
        message=f"{user.get_username()} logged in",
        metadata={"client_ip": _client_ip(request)},
        actor=user.get_username(),
        standalone=True,  # Django's log-in, not a change of ours
    )


@receiver(user_login_failed)
def record_login_failure(sender, credentials, request=None, **kwargs):
    username = str(credentials.get("username", ""))[:150]
    record_event(
        event_type=EventType.AUTH_FAILURE,
        subtype=EventSubtype.FAILED,
        severity=Severity.WARNING,
        component=Component.SECURITY,
        message=f"Failed log-in for {username!r}",
        metadata={"username": username, "client_ip": _client_ip(request)},
        actor=username or "anonymous",
        standalone=True,  # a refusal changes nothing
    )
