from django.core.management.base import BaseCommand, CommandError

from redflag.errors import ApiError
from tokens_app.models import SigningKey
from tokens_app.signing import signing_key_retire, signing_key_rotate


class Command(BaseCommand):
    help = (
        "Make a new primary Ed25519 signing key. Older keys stay listed (agents keep verifying with them) "
        "until retired with --retire KEY_ID."
    )

    def add_arguments(self, parser):
        parser.add_argument("--retire", metavar="KEY_ID", help="Retire this non-primary key instead of rotating.")

    def handle(self, *args, retire=None, **options):
        if retire:
            try:
                signing_key_retire(key_id=retire, actor="manage.py")
            except SigningKey.DoesNotExist:
                raise CommandError(f"no signing key {retire!r}") from None
            except ApiError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"retired {retire}")
            return
        key = signing_key_rotate(actor="manage.py")
        self.stdout.write(f"new primary signing key {key.key_id}")
        for other in SigningKey.objects.filter(retired_at__isnull=True, is_primary=False):
            self.stdout.write(f"still verifiable: {other.key_id} (retire with --retire {other.key_id})")
