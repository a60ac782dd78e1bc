from django.core.management.base import BaseCommand, CommandError

from redflag.env import parse_duration
from redflag.errors import ApiError
from tokens_app.services import token_create


class Command(BaseCommand):
    help = "Create a registration token and print only the token (for scripts)."

    def add_arguments(self, parser):
        parser.add_argument("--label", required=True)
        parser.add_argument("--seats", type=int, default=1, help="How many agents may enroll with it (default 1).")
        parser.add_argument("--expires-in", default="24h", help="Lifetime like 30m, 24h or 7d (default 24h).")

    def handle(self, *args, label, seats, expires_in, **options):
        try:
            lifetime = parse_duration(expires_in)
        except ValueError as exc:
            raise CommandError(f"--expires-in: {exc}") from None
        if seats < 1:
            raise CommandError("--seats must be at least 1")
        try:
            _, secret = token_create(label=label, max_seats=seats, expires_in=lifetime)
        except ApiError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(secret)
