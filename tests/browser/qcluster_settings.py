"""Settings for the django-q2 cluster the browser test starts: the test settings, on the live server's database.

The test process hands over the test database's name (pytest-django renamed it),
so the cluster's workers read and write exactly the rows the live server serves.
"""

import os

from tests.settings import *  # noqa: F401,F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["REDFLAG_QCLUSTER_DATABASE_NAME"]
