"""SystemEvent.seq: an insertion-order counter for the live stream, and the (created_at, id) index.

See events_app.models.next_seq_expression for how each database fills it. Existing rows are numbered
in (created_at, id) order.
"""

from django.db import migrations, models

TABLE = "events_app_systemevent"
SEQ = "events_app_systemevent_seq"


def number_existing_rows(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQ} OWNED BY {TABLE}.seq")
        schema_editor.execute(
            f"UPDATE {TABLE} AS e SET seq = o.n FROM "
            f"(SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM {TABLE}) AS o WHERE e.id = o.id"
        )
        schema_editor.execute(f"SELECT setval('{SEQ}', COALESCE((SELECT MAX(seq) FROM {TABLE}), 0) + 1, false)")
        schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN seq SET DEFAULT nextval('{SEQ}')")
    else:
        schema_editor.execute(
            f"UPDATE {TABLE} SET seq = (SELECT COUNT(*) FROM {TABLE} AS o WHERE o.created_at < {TABLE}.created_at "
            f"OR (o.created_at = {TABLE}.created_at AND o.id <= {TABLE}.id))"
        )


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN seq DROP DEFAULT")
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQ}")


class Migration(migrations.Migration):
    dependencies = [("events_app", "0002_metadata_gin_and_auditors")]

    operations = [
        migrations.AddField(
            model_name="systemevent",
            name="seq",
            field=models.BigIntegerField(blank=True, editable=False, null=True, unique=True),
        ),
        migrations.RunPython(number_existing_rows, drop_sequence),
        migrations.AddIndex(
            model_name="systemevent",
            index=models.Index(fields=["-created_at", "-id"], name="event_time_id"),
        ),
        # New types: audit_export, events_purged.
        migrations.AlterField(
            model_name='systemevent',
            name='event_type',
            field=models.CharField(choices=[('agent_startup', 'Agent Startup'), ('agent_registration', 'Agent Registration'), ('agent_checkin', 'Agent Checkin'), ('agent_scan', 'Agent Scan'), ('agent_update', 'Agent Update'), ('agent_install', 'Agent Install'), ('agent_reboot', 'Agent Reboot'), ('token_created', 'Token Created'), ('token_revoked', 'Token Revoked'), ('token_renewal', 'Token Renewal'), ('command_created', 'Command Created'), ('command_completed', 'Command Completed'), ('config_changed', 'Config Changed'), ('auth_failure', 'Auth Failure'), ('security_violation', 'Security Violation'), ('server_startup', 'Server Startup'), ('migration', 'Migration'), ('bulk_operation', 'Bulk Operation'), ('user_login', 'User Login'), ('audit_export', 'Audit Export'), ('events_purged', 'Events Purged')], max_length=32),
        ),
    ]
