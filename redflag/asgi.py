import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")

application = get_asgi_application()

from redflag.startup import record_server_startup  # noqa: E402  (needs Django set up)

record_server_startup(server="asgi")
