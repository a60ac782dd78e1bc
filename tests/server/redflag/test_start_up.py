"""Starting RedFlag when something is wrong (redflag/preflight.py, run_portal, the Makefile's run target).

Each failure is one line on stderr naming the setting and what to do, with exit status 1, before any
part starts: a PostgreSQL database that does not exist, a PostgreSQL that does not answer, a Redis broker
or cache that does not answer, a port in use, a bad address. Real processes against the real services on
this machine; nothing is faked.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import uuid

import pytest

from tests.server.processes import ROOT

PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(argv: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("REDFLAG_", "DJANGO_"))}
    base.pop("DATABASE_URL", None)
    full_env = {**base, "REDFLAG_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "redflag.settings",
                "REDFLAG_ADMIN_PASSWORD": "not-shown", **env}
    return subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The refusal: exit 1, nothing on stdout, exactly one line on stderr (no traceback, no password)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert PASSWORD not in lines[0]
    return lines[0]


def postgres_server_url() -> str:
    return os.environ.get("REDFLAG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.mark.parametrize("command", ["run_portal", "migrate", "qcluster"])
def test_a_missing_postgresql_database_is_named_with_the_command_that_creates_it(tmp_path, command):
    name = f"redflag_missing_{uuid.uuid4().hex[:8]}"
    url = postgres_server_url().replace("postgres@", f"postgres:{PASSWORD}@") + f"/{name}"
    line = one_line(start([sys.executable, "manage.py", command], tmp_path, DATABASE_URL=url))
    assert line == (f"RedFlag will not start: DATABASE_URL names the PostgreSQL database '{name}', which does not "
                    f"exist on 127.0.0.1:5432/{name}; create it (createdb -h 127.0.0.1 -p 5432 -U postgres {name}) "
                    f"or fix the URL")


def test_a_postgresql_that_does_not_answer_is_one_line(tmp_path):
    url = f"postgresql://redflag:{PASSWORD}@127.0.0.1:{free_port()}/redflag"
    line = one_line(start([sys.executable, "manage.py", "run_portal"], tmp_path, DATABASE_URL=url))
    assert line.startswith("RedFlag will not start: DATABASE_URL: cannot connect to PostgreSQL at 127.0.0.1:")
    assert "Connection refused" in line


@pytest.mark.parametrize("setting", ["REDFLAG_Q_BROKER_URL", "REDFLAG_CACHE_URL"])
def test_an_unreachable_redis_is_checked_before_start(tmp_path, setting):
    port = free_port()
    line = one_line(start([sys.executable, "manage.py", "run_portal"], tmp_path,
                          **{setting: f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}))
    assert line.startswith(f"RedFlag will not start: {setting}: Redis at 127.0.0.1:{port}/0 does not answer")


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(start([sys.executable, "manage.py", "run_portal", "--addr", f"127.0.0.1:{port}"], tmp_path))
    assert line == (f"RedFlag will not start: port {port} on 127.0.0.1 is already in use; stop what uses it, "
                    f"or choose another port: make run PORT={port + 1}")
    # Checked before migrations and the admin account: the database has no tables yet.
    database = sqlite3.connect(tmp_path / "data" / "redflag.sqlite3")
    assert database.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone() == (0,)
    database.close()


def test_make_run_takes_port_and_addr_and_refuses_a_bad_one(tmp_path):
    """`make run PORT=… ADDR=…` reaches run_portal; its refusal keeps its one line (make adds its own)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(["make", "--no-print-directory", "run", f"PORT={port}", "ADDR=127.0.0.1"], tmp_path)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (f"RedFlag will not start: port {port} on 127.0.0.1 is already in use; "
                                             f"stop what uses it, or choose another port: make run PORT={port + 1}")
    bad = start(["make", "--no-print-directory", "run", "PORT=eighty"], tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.splitlines()[0] == ("RedFlag will not start: the address '127.0.0.1:eighty' needs a port from "
                                          "1 to 65535 (make run PORT=8000 ADDR=127.0.0.1)")


@pytest.mark.parametrize("argv", [["create_registration_token", "--label", "rack-2"], ["rotate_signing_key"]])
def test_a_command_before_the_first_run_says_to_migrate_instead_of_a_traceback(tmp_path, argv):
    """A fresh data folder (no `make run` yet): the README's commands that read the tables say what to do.
    (That they work once migrated: test_readme_commands.py.)"""
    line = one_line(start([sys.executable, "manage.py", *argv], tmp_path))
    assert line.startswith("RedFlag will not start: the database is not set up yet (")
    assert line.endswith("run `make run` once, or `.venv/bin/python manage.py migrate`, then this command again")
