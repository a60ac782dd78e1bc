"""Who recorded an event (the server, or the agent about itself) and the time an agent claims.

Rows stored before this migration get origin "unknown": agent-reported and server-recorded events
were not told apart then, and guessing would mislabel some. New rows default to "server"; the
agent-events endpoint stores "agent".
"""

from django.db import migrations, models

CHOICES = [("server", "Recorded by the server"), ("agent", "Reported by the agent"),
           ("unknown", "Not known (recorded before origins were kept)")]
HELP = "Recorded by the server, or reported by the agent about itself."


class Migration(migrations.Migration):

    dependencies = [
        ("events_app", "0006_notify_trigger"),
    ]

    operations = [
        migrations.AddField(
            model_name="systemevent",
            name="origin",
            field=models.CharField(choices=CHOICES, default="unknown", help_text=HELP, max_length=8),
        ),
        migrations.AlterField(
            model_name="systemevent",
            name="origin",
            field=models.CharField(choices=CHOICES, default="server", db_default="server", help_text=HELP,
                                   max_length=8),
        ),
        migrations.AddField(
            model_name="systemevent",
            name="reported_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
