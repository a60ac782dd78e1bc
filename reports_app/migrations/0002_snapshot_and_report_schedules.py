"""The django-q2 schedules of the reports (the hourly fleet snapshot, the report schedules' sweep) and the
default weekly report of the whole fleet, Mondays at 06:00 UTC (editable under Reports → Report schedules)."""

from datetime import datetime, time, timedelta, timezone

from django.db import migrations

SCHEDULES = (
    # (name, function, minutes): each snapshot run refreshes the day's row, so the hour only bounds its age.
    ("Take the daily fleet snapshot", "reports_app.tasks.take_snapshots", 60),
    ("Run due report schedules", "reports_app.tasks.run_report_schedules", 15),
)
WEEKLY_REPORT = "Weekly fleet report"
MONDAY, REPORT_HOUR = 0, time(6, 0)


def next_monday_morning(now: datetime) -> datetime:
    days_ahead = (MONDAY - now.weekday()) % 7 or 7
    return datetime.combine(now.date() + timedelta(days=days_ahead), REPORT_HOUR, tzinfo=timezone.utc)


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, func, minutes in SCHEDULES:
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1})
    apps.get_model("reports_app", "ReportSchedule").objects.get_or_create(
        name=WEEKLY_REPORT, defaults={"every_days": 7, "next_run_at": next_monday_morning(datetime.now(timezone.utc)),
                                      "enabled": True, "deliver": True})


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=[name for name, _, _ in SCHEDULES]).delete()
    apps.get_model("reports_app", "ReportSchedule").objects.filter(name=WEEKLY_REPORT).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reports_app", "0001_snapshots_schedules_reports"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create, remove)]
