"""The public feeds the daily download fetches (editable in the admin; disable them on an air-gapped
server and use manage.py import_advisories), its django-q2 schedule, and the exposure refresh that
follows new scan reports between imports."""

from django.db import migrations

SCHEDULES = [
    # (name, function, django-q2 schedule type, minutes)
    ("Download advisory feeds", "advisories_app.tasks.download_feeds", "D", None),
    ("Refresh advisory exposures", "advisories_app.tasks.refresh_exposures", "I", 15),
]
OSV = "https://osv-vulnerabilities.storage.googleapis.com"
FEEDS = [
    ("debian-tracker", "debian_tracker", "https://security-tracker.debian.org/tracker/data/json"),
    ("osv-debian", "osv", f"{OSV}/Debian/all.zip"),
    ("osv-ubuntu", "osv", f"{OSV}/Ubuntu/all.zip"),
    ("osv-almalinux", "osv", f"{OSV}/AlmaLinux/all.zip"),
    ("osv-rocky", "osv", f"{OSV}/Rocky%20Linux/all.zip"),
    ("osv-alpine", "osv", f"{OSV}/Alpine/all.zip"),
    ("osv-rhel", "osv", f"{OSV}/Red%20Hat/all.zip"),
    ("kev", "kev", "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"),
    ("epss", "epss", "https://epss.empiricalsecurity.com/epss_scores-current.csv.gz"),
]


def create(apps, schema_editor):
    FeedSource = apps.get_model("advisories_app", "FeedSource")
    for name, feed_format, url in FEEDS:
        FeedSource.objects.get_or_create(name=name, defaults={"feed_format": feed_format, "url": url})
    Schedule = apps.get_model("django_q", "Schedule")
    for name, func, schedule_type, minutes in SCHEDULES:
        Schedule.objects.update_or_create(name=name, defaults={"func": func, "schedule_type": schedule_type,
                                                               "minutes": minutes, "repeats": -1})


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=[name for name, _, _, _ in SCHEDULES]).delete()
    apps.get_model("advisories_app", "FeedSource").objects.filter(name__in=[name for name, _, _ in FEEDS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("advisories_app", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create, remove)]
