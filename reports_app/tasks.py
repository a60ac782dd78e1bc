"""django-q2 tasks: the hourly fleet snapshot, the report schedules' sweep and one report's generation
(migration 0002 registers the two schedules)."""

from __future__ import annotations

from reports_app.services import report_generate, report_schedules_run, snapshot_take


def take_snapshots() -> int:
    return len(snapshot_take())


def run_report_schedules() -> int:
    return len(report_schedules_run())


def generate_report(report_id: str) -> str:
    report = report_generate(report_id=report_id)
    return report.status if report else "not claimed"
