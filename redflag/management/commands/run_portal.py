"""One command for a local portal: migrate, make sure an admin exists, serve web + django-q2.

Nothing is printed until the portal answers: the address is checked first (a port in use is one
line and exit status 1, before anything starts), the database and Redis were checked by manage.py
(redflag/preflight.py), and the banner with the admin URL (and a password made just now) comes only
once the web server accepts connections. If either child process fails to start or exits, the other
is stopped and the command exits 1 with one line naming it.

Both child processes stop together: Ctrl-C reaches them through the process
group (SIGTERM to this process works too), and if either exits the other is
stopped: a grace period, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from redflag.env import StartupRefused

STOPPED_CLEANLY = (0, -signal.SIGINT, -signal.SIGTERM)
READY_TIMEOUT_SECONDS = 120
PASSWORD_RESET = "make admin-password"


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


def parse_addr(addr: str) -> tuple[str, int]:
    """HOST:PORT (or PORT alone) as runserver takes it; StartupRefused naming the problem otherwise."""
    host, _, port_text = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StartupRefused(f"the address {addr!r} needs a port from 1 to 65535 (make run PORT=8000 ADDR=127.0.0.1)")
    return host, int(port_text)


def port_problem(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port; None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE
                return (f"port {port} on {host} is already in use; stop what uses it, "
                        f"or choose another port: make run PORT={port + 1}")
            return f"cannot listen on {host}:{port}: {exc.strerror} (make run ADDR=127.0.0.1 PORT=8000)"
    return None


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "::") else host, port), timeout=1):
            return True
    except OSError:
        return False


def clear_request_metrics() -> None:
    """Start the API's Prometheus counters from zero: the web processes of an earlier run left theirs in
    PROMETHEUS_MULTIPROC_DIR (settings), and /metrics would go on summing them."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))


class Command(BaseCommand):
    help = "Run RedFlag locally: migrate, ensure an admin account, start the web server and the django-q2 cluster."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address for the web server.")

    def handle(self, *args, addr, **options):
        host, port = parse_addr(addr)
        problem = port_problem(host, port)
        if problem:
            raise StartupRefused(problem)
        call_command("migrate", interactive=False, verbosity=0)
        password_note = self._ensure_admin()
        manage = [sys.executable, os.path.abspath(sys.argv[0])]
        clear_request_metrics()
        # Started from a background job, this process may have inherited an
        # ignored SIGINT; Ctrl-C and SIGTERM must stop it all the same.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        children = [
            subprocess.Popen([*manage, "runserver", addr, "--noreload"], preexec_fn=_default_signals),
            subprocess.Popen([*manage, "qcluster"], preexec_fn=_default_signals),
        ]
        interrupted = False
        try:
            ready = self._wait_until_ready(host, port, children)
            if ready:
                self._banner(host, port, password_note)
                while all(child.poll() is None for child in children):
                    time.sleep(0.5)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            _stop(children)
        failed = [child.args[2] for child in children if child.returncode not in STOPPED_CLEANLY]
        if failed:
            raise SystemExit(f"RedFlag stopped: {' and '.join(failed)} exited with an error (its output is above)")
        if not interrupted and not ready:
            raise SystemExit(f"RedFlag did not start: the web server did not answer on {host}:{port} "
                             f"within {READY_TIMEOUT_SECONDS} s")

    def _wait_until_ready(self, host: str, port: int, children: list[subprocess.Popen]) -> bool:
        """True once the web server accepts connections; False if a child exits first or time runs out."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if any(child.poll() is not None for child in children):
                return False
            if answers(host, port):
                return True
            time.sleep(0.2)
        return False

    def _banner(self, host: str, port: int, password_note: str) -> None:
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
        self.stdout.write(self.style.SUCCESS(f"RedFlag admin: http://{shown_host}:{port}/admin/"))
        if password_note:
            self.stdout.write(self.style.WARNING(password_note))
            if settings.REDFLAG_REQUIRE_MFA:
                self.stdout.write("At the first sign-in, set up a second factor: an authenticator app (TOTP) "
                                  "scans the code shown; keep the recovery codes.")
        self.stdout.write(f"Forgot the admin password? {PASSWORD_RESET}. Ctrl-C stops the web server and workers.")

    def _ensure_admin(self) -> str:
        """Create 'admin' when no superuser exists; the line the banner shows about its password, or ''."""
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return ""
        password = os.environ.get("REDFLAG_ADMIN_PASSWORD")
        if password:
            User.objects.create_superuser("admin", "", password)
            return "Created admin account 'admin' with the password from REDFLAG_ADMIN_PASSWORD."
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        return f"Created admin account 'admin' with password: {password}  (shown once)"
