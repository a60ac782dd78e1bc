#!/usr/bin/env python
"""Django's command-line utility for RedFlag."""
import os
import sys

import django
from django.core.management import execute_from_command_line

from redflag.preflight import require_schema, require_services

# Commands that start a service or change the database check first that the database and any
# configured Redis answer (redflag/preflight.py): one line naming the setting, never a traceback.
PREFLIGHT_COMMANDS = {"run_portal", "qcluster", "migrate", "runserver"}
# Commands that read RedFlag's tables also check that they exist: before the first `make run` (which
# migrates) or after an upgrade before `migrate`, one line says so instead of a traceback.
SCHEMA_COMMANDS = {"create_registration_token", "build_agent_release", "rotate_signing_key", "import_advisories",
                   "changepassword", "createsuperuser"}


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")
    if len(sys.argv) > 1 and sys.argv[1] in PREFLIGHT_COMMANDS:
        django.setup()
        require_services()
    elif len(sys.argv) > 1 and sys.argv[1] in SCHEMA_COMMANDS and not {"-h", "--help"} & set(sys.argv[2:]):
        django.setup()
        require_schema()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
