"""PostgreSQL: NOTIFY redflag_events after every insert into the event table (the live stream's nudge).

A statement trigger, so a bulk insert sends one notification; PostgreSQL delivers it at commit to
every listening process. SQLite has no NOTIFY: its streams poll.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION events_app_systemevent_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('redflag_events', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS events_app_systemevent_notify ON events_app_systemevent;
CREATE TRIGGER events_app_systemevent_notify AFTER INSERT ON events_app_systemevent
    FOR EACH STATEMENT EXECUTE FUNCTION events_app_systemevent_notify();
"""
DROP = """
DROP TRIGGER IF EXISTS events_app_systemevent_notify ON events_app_systemevent;
DROP FUNCTION IF EXISTS events_app_systemevent_notify();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("events_app", "0005_audit_api_token")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
