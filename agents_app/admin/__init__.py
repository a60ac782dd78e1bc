"""The fleet in the admin: agents, updates across the fleet, live operations, bulk progress, releases,
subsystems and the server settings.

Every action and every save calls the write path that owns it (agents_app.services.*); nothing here
changes a row by hand. Fleet-wide agent actions go through bulk_operation_start, so they run as
django-q2 tasks and the admin lands on the operation's progress page.

One module per page family; importing them registers their ModelAdmins. The dashboard on the admin
index is agents_app.templatetags.fleet.
"""

from agents_app.admin import (  # noqa: F401  (registration)
    agents,
    groups,
    operations,
    releases,
    server_settings,
    subsystems,
    updates,
)
