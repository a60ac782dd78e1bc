"""django-q2 schedules for the fleet sweeps (about 30 s resolution, one-minute minimum)."""

from django.db import migrations

SCHEDULES = (
    ("Create due scans", "agents_app.tasks.sweep_due_scans", 1),
    ("Time out silent commands", "agents_app.tasks.sweep_command_timeouts", 1),
    ("Record online/offline transitions", "agents_app.tasks.sweep_presence", 1),
)


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, func, minutes in SCHEDULES:
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1}
        )


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=[name for name, _, _ in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents_app", "0002_agent_presence_recorded_agent_system_info_and_more"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
