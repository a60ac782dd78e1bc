"""Indexes for the history's component, subtype and origin filters (issue 16, goal 8).

At ten million events a filter on one of these columns with a rare or absent value read the whole table
(a parallel sequential scan, 1.5 s) to fill a page or to find it empty. With (column, created_at DESC) the
page reads its 51 rows. On a large table each index takes a minute or two to build, during which inserts
into the event table wait: run this migration in a maintenance window.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('events_app', '0008_vocabulary_patching_notifications_accounts'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='systemevent',
            index=models.Index(fields=['component', '-created_at'], name='event_component_time'),
        ),
        migrations.AddIndex(
            model_name='systemevent',
            index=models.Index(fields=['event_subtype', '-created_at'], name='event_subtype_time'),
        ),
        migrations.AddIndex(
            model_name='systemevent',
            index=models.Index(fields=['origin', '-created_at'], name='event_origin_time'),
        ),
    ]
