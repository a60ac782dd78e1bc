"""One command for a local portal: migrate, make sure an admin exists, serve web + django-q2.

Both child processes stop together: Ctrl-C reaches them through the process
group (SIGTERM to this process works too), and if either exits the other is
stopped: a grace period, then SIGTERM, then SIGKILL.
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

STOPPED_CLEANLY = (0, -signal.SIGINT, -signal.SIGTERM)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(children: list[subprocess.Popen]) -> None:
    """Let children finish on the Ctrl-C they got, then SIGTERM, then SIGKILL."""
    for stop_signal, grace_seconds in ((None, 5), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        running = [child for child in children if child.poll() is None]
        if not running:
            return
        if stop_signal is not None:
            for child in running:
                child.send_signal(stop_signal)
        deadline = time.monotonic() + grace_seconds
        for child in running:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


class Command(BaseCommand):
    help = "Run RedFlag locally: migrate, ensure an admin account, start the web server and the django-q2 cluster."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address for the web server.")

    def handle(self, *args, addr, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_admin()
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        # Started from a background job, this process may have inherited an
        # ignored SIGINT; Ctrl-C and SIGTERM must stop it all the same.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        children = [
            subprocess.Popen([*manage, "runserver", addr, "--noreload"], preexec_fn=_default_signals),
            subprocess.Popen([*manage, "qcluster"], preexec_fn=_default_signals),
        ]
        self.stdout.write(self.style.SUCCESS(
            f"RedFlag admin: http://{addr}/admin/  (Ctrl-C stops the web server and workers)"))
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            _stop(children)
        failed = [child.args[2] for child in children if child.returncode not in STOPPED_CLEANLY]
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
