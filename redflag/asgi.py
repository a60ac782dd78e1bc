import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")
# Each ASGI request runs in its own thread: share a per-process connection pool instead of
# leaving a persistent connection behind in every thread (REDFLAG_DB_POOL=false turns it off).
os.environ.setdefault("REDFLAG_DB_POOL", "true")

application = get_asgi_application()

# Agent API requests run their Django cycle in one pooled thread each, not through ASGI's
# per-middleware thread hand-offs (redflag/api/asgi.py says why).
from redflag.api.asgi import with_agent_api_in_threads  # noqa: E402  (needs Django set up)

application = with_agent_api_in_threads(application)

# GET /api/v1/agents/{id}/wait (the fast channel) is served in front of Django: an idle wait is a
# coroutine, not a thread (agents_app/api/wait.py says why).
from agents_app.api.wait import with_wait_endpoint  # noqa: E402  (needs Django set up)

application = with_wait_endpoint(application)

from events_app.startup import record_server_startup  # noqa: E402  (needs Django set up)
from redflag.env import StartupRefused  # noqa: E402
from redflag.preflight import services_problem  # noqa: E402

_problems: list[str] = []


def _start() -> None:
    """Check the database and Redis, then record the start-up (redflag/preflight.py)."""
    problem = services_problem()
    if problem:
        _problems.append(problem)
        return
    record_server_startup(server="asgi")


# uvicorn --workers imports this module inside a running event loop, where Django
# refuses database calls: the checks and the start-up event run in a thread of their own.
_startup = threading.Thread(target=_start, name="redflag-startup")
_startup.start()
_startup.join()
if _problems:
    raise StartupRefused(_problems[0])
