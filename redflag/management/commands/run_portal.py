"""One command for a local portal: migrate, make sure an admin exists, serve web + django-q2.

Both child processes stop together: Ctrl-C reaches them through the process
group, and if either exits the other is stopped.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run RedFlag locally: migrate, ensure an admin account, start the web server and the django-q2 cluster."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address for the web server.")

    def handle(self, *args, addr, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_admin()
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        children = [
            subprocess.Popen([*manage, "runserver", addr, "--noreload"]),
            subprocess.Popen([*manage, "qcluster"]),
        ]
        self.stdout.write(self.style.SUCCESS(f"RedFlag admin: http://{addr}/admin/  (Ctrl-C stops the web server and workers)"))
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
            for child in children:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
        failed = [child.args[2] for child in children if child.returncode not in (0, -signal.SIGINT, None)]
        if failed:
            self.stderr.write(f"stopped: {', '.join(failed)} exited with an error")

    def _ensure_admin(self) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        password = os.environ.get("REDFLAG_ADMIN_PASSWORD")
        generated = not password
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        if generated:
            self.stdout.write(self.style.WARNING(f"Created admin account 'admin' with password: {password}"))
            self.stdout.write("This password is shown once; change it in the admin.")
        else:
            self.stdout.write("Created admin account 'admin' with the password from REDFLAG_ADMIN_PASSWORD.")
