#!/usr/bin/env python
"""Django's command-line utility for RedFlag."""
import os
import sys

import django
from django.core.management import execute_from_command_line

from redflag.preflight import require_services

# Commands that start a service or change the database check first that the database and any
# configured Redis answer (redflag/preflight.py): one line naming the setting, never a traceback.
PREFLIGHT_COMMANDS = {"run_portal", "qcluster", "migrate", "runserver"}


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "redflag.settings")
    if len(sys.argv) > 1 and sys.argv[1] in PREFLIGHT_COMMANDS:
        django.setup()
        require_services()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
