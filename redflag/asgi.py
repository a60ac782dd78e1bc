import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")
# Each ASGI request runs in its own thread: share a per-process connection pool instead of
# leaving a persistent connection behind in every thread (REDFLAG_DB_POOL=false turns it off).
os.environ.setdefault("REDFLAG_DB_POOL", "true")

application = get_asgi_application()

from events_app.startup import record_server_startup  # noqa: E402  (needs Django set up)

# uvicorn --workers imports this module inside a running event loop, where Django
# refuses database calls: the start-up event is written from a thread of its own.
_startup = threading.Thread(target=record_server_startup, kwargs={"server": "asgi"}, name="redflag-startup")
_startup.start()
_startup.join()
