"""GIN index on SystemEvent.metadata (PostgreSQL only) and the Auditors group."""

from django.db import migrations

GIN_INDEX = "event_metadata_gin"
AUDITOR_PERMISSIONS = (("events_app", "view_systemevent"), ("agents_app", "view_agent"))


def create_gin_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {GIN_INDEX} ON events_app_systemevent USING gin (metadata jsonb_path_ops)"
        )


def drop_gin_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {GIN_INDEX}")


def create_auditors_group(apps, schema_editor):
    """Auditors may log in (as staff users) and read events and agents; nothing else."""
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="Auditors")
    for app_label, codename in AUDITOR_PERMISSIONS:
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def remove_auditors_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="Auditors").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("events_app", "0001_initial"),
        ("agents_app", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_gin_index, drop_gin_index),
        migrations.RunPython(create_auditors_group, remove_auditors_group),
    ]
