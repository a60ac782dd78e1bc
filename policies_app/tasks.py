"""django-q2 entry points (the schedule is created by migration 0002)."""

from policies_app.services.sweep import policies_sweep


def sweep_policies() -> int:
    return policies_sweep()
