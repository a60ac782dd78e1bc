"""The fleet in the admin: agents, updates across the fleet, live operations, bulk progress, releases.

Every action calls the write path that owns it (agents_app.updates, .commands,
.bulk, .services, .releases, .subsystems); nothing here changes a row by hand.
Fleet-wide agent actions go through bulk_operation_start, so they run as
django-q2 tasks and the admin lands on the operation's progress page.

One module per page family; importing them registers their ModelAdmins.
"""

from agents_app.admin import agents, operations, releases, subsystems, updates  # noqa: F401  (registration)
from agents_app.admin.common import actor_of  # noqa: F401
from agents_app.admin.dashboard import fleet_summary  # noqa: F401  (redflag.admin_site's dashboard)
