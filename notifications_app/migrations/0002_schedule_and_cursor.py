"""The minute schedule of notifications, and the dispatch cursor placed after the existing history
(an upgrade notifies about what happens from now on, not about years of past events)."""

from django.db import migrations
from django.db.models import Max

NAME = "Notifications: route events, digests, retries"
FUNC = "notifications_app.tasks.tick"


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(name=NAME, defaults={"func": FUNC, "schedule_type": "I", "minutes": 1,
                                                           "repeats": -1})
    top = apps.get_model("events_app", "SystemEvent").objects.aggregate(top=Max("seq"))["top"] or 0
    apps.get_model("notifications_app", "DispatchCursor").objects.update_or_create(pk=1, defaults={"position": top})


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("notifications_app", "0001_destinations_rules_deliveries"),
        ("events_app", "0008_vocabulary_patching_notifications_accounts"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create, remove)]
