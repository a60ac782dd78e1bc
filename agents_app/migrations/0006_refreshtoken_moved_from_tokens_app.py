"""RefreshToken moves from tokens_app to agents_app (agent credentials live with agents).

State: the model is created here as it was (on its old table), then its table is renamed to
agents_app_refreshtoken; tokens_app 0003 drops the old model from its state only. No row moves.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("agents_app", "0005_bulk_update_agent"),
        ("tokens_app", "0002_signing_key_endorsement"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="RefreshToken",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("family", models.UUIDField(db_index=True)),
                        ("token_hash", models.CharField(max_length=64, unique=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("expires_at", models.DateTimeField()),
                        ("rotated_at", models.DateTimeField(blank=True, null=True)),
                        ("retry_used_at", models.DateTimeField(blank=True, null=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        ("agent", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                                    related_name="refresh_tokens", to="agents_app.agent")),
                        ("replaced_by", models.OneToOneField(blank=True, null=True,
                                                             on_delete=django.db.models.deletion.SET_NULL,
                                                             related_name="replaces", to="agents_app.refreshtoken")),
                    ],
                    options={"ordering": ["-created_at"], "db_table": "tokens_app_refreshtoken"},
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="refreshtoken", table=None),
    ]
