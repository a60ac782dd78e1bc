"""The django-q2 schedule of the maintenance-window sweep (about 30 s resolution, one-minute minimum)."""

from django.db import migrations

NAME = "Open maintenance windows and follow policy turns"
FUNC = "policies_app.tasks.sweep_policies"


def create_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name=NAME, defaults={"func": FUNC, "schedule_type": "I", "minutes": 1, "repeats": -1})


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("policies_app", "0001_windows_policies_rollouts"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
