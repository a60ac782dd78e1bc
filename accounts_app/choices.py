"""People-and-access vocabulary: the only place these strings are defined."""

from django.db import models


class Role(models.TextChoices):
    """What a person may do; each role is granted on a scope (the whole fleet or some agent groups).

    The permission codenames each role carries are in ``accounts_app.roles``.
    """

    VIEWER = "viewer", "Viewer (reads everything in scope)"
    OPERATOR = "operator", "Operator (scans, heartbeat)"
    APPROVER = "approver", "Approver (approve, install, reboot, policies)"
    ADMIN = "admin", "Admin (tokens, releases, settings, people)"
    AUDITOR = "auditor", "Auditor (the event history)"


class GrantSource(models.TextChoices):
    """Who wrote a user's grants: a person in the admin, single sign-on (claim mapping), a command."""

    ADMIN = "admin", "Granted in the admin"
    SSO = "sso", "Mapped from single sign-on claims"
    COMMAND = "command", "Granted by a management command"
