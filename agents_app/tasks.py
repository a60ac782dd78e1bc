"""django-q2 entry points (schedules in migration 0003, bulk operations enqueued by the admin)."""

from agents_app.services.bulk import bulk_operation_run  # noqa: F401  (enqueued by name)
from agents_app.services.presence import presence_sweep
from agents_app.services.results import commands_time_out
from agents_app.services.scheduling import schedule_due_scans


def sweep_due_scans() -> int:
    return schedule_due_scans()


def sweep_command_timeouts() -> int:
    return commands_time_out()


def sweep_presence() -> int:
    return presence_sweep()
