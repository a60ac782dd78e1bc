"""``python -m agent_client`` (and the zipapp) start here."""

import sys

from agent_client.cli import main

sys.exit(main())
