import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")

application = get_wsgi_application()

from events_app.startup import record_server_startup  # noqa: E402  (needs Django set up)

record_server_startup(server="wsgi")
