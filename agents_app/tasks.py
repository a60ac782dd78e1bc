"""django-q2 entry points (schedules in migration 0003, bulk operations enqueued by the admin)."""

from agents_app.bulk import bulk_operation_run  # noqa: F401  (enqueued by name)
from agents_app.commands import commands_time_out
from agents_app.presence import presence_sweep
from agents_app.scheduling import schedule_due_scans


def sweep_due_scans() -> int:
    return schedule_due_scans()


def sweep_command_timeouts() -> int:
    return commands_time_out()


def sweep_presence() -> int:
    return presence_sweep()
