"""Who may read the audit history: admins (superusers) and staff users in the Auditors group.

One rule, used by the pages, the exports, the stream and the API: an active staff user holding
``events_app.view_systemevent`` (the Auditors group grants it; superusers hold every permission).
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

AUDITORS_GROUP = "Auditors"
VIEW_EVENTS = "events_app.view_systemevent"


def can_read_events(user) -> bool:
    return bool(user and user.is_active and user.is_staff and user.has_perm(VIEW_EVENTS))


def auditor_required(view):
    """Anonymous: redirect to the admin log-in. Logged in without the right: 403."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), login_url="admin:login")
        if not can_read_events(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper
