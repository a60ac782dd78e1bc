"""manage.py import_advisories PATH [PATH…]: import feed files on a server that cannot download them."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from advisories_app.choices import FeedFormat
from advisories_app.services import FeedImportFailed, feed_import_path


class Command(BaseCommand):
    help = ("Import advisory feeds from files: OSV records (a .json, .jsonl, an osv.dev all.zip or a directory), "
            "the Debian Security Tracker JSON, the CISA KEV catalogue or an EPSS CSV (gzipped or not). "
            "The format is recognised from the content.")

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument("--feed", default="", help="Feed name whose data this import replaces "
                                                        f"(default: from the content, e.g. osv-debian, "
                                                        f"{FeedFormat.KEV}, {FeedFormat.EPSS}).")

    def handle(self, *args, paths: list[Path], feed: str, **options):
        for path in paths:
            try:
                imported = feed_import_path(path=path, feed=feed, actor="manage.py import_advisories")
            except FeedImportFailed as exc:
                raise CommandError(f"{exc} (nothing was stored)") from None
            counts = ", ".join(f"{name} {value}" for name, value in imported.counts.items()) or "no change"
            self.stdout.write(f"{path}: {imported.feed} ({imported.get_feed_format_display()}) "
                              f"{imported.status}: {counts}")
