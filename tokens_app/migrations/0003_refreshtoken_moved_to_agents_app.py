"""RefreshToken now lives in agents_app (its migration 0006 took over the table): state only."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("tokens_app", "0002_signing_key_endorsement"),
        ("agents_app", "0006_refreshtoken_moved_from_tokens_app"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="RefreshToken")],
            database_operations=[],
        ),
    ]
