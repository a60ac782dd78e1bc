"""``python manage.py build_agent_release --version V [--platform any]``: build, sign and store an agent release."""

from django.core.management.base import BaseCommand, CommandError

from agents_app.models import AgentRelease
from agents_app.services.releases import ReleaseError, release_build


class Command(BaseCommand):
    help = "Build redflag-agent.pyz from agent_client/, sign its manifest with the primary key and store the release."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # The spelling is --version, which Django's own --version (print Django's version) would
        # shadow; "resolve" lets this command's option win.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--version", dest="release_version", required=True,
                            help="dot-separated numbers, e.g. 0.1.23.5 (compared numerically)")
        parser.add_argument("--platform", default=AgentRelease.Platform.ANY, choices=AgentRelease.Platform.values)

    def handle(self, *args, release_version, platform, **options):
        try:
            release = release_build(version=release_version, platform=platform, actor="manage.py build_agent_release")
        except ReleaseError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{release.version} {release.platform} {release.size} {release.sha256} "
                          f"key={release.key_id}")
