"""Hostile package names and the instruments that prove they reached nothing.

Used by the real-tool tests in test_apt.py and test_dnf.py:

* :func:`hostile_names`: what a compromised or buggy server could try to pass
  as a package name (an option, a URL, a path, a group, a module stream, shell
  syntax), with the paths and port of this test filled in;
* :class:`ToolShims`: a directory put first on PATH whose ``apt-get``,
  ``dnf``, ... append their argv to a log and then exec the real binary, so one
  test shows both that a hostile name started no process and that a valid name
  did reach the real tool;
* :class:`FileServer`: a loopback HTTP server (``http.server``, as
  ``python -m http.server`` runs it) serving a real package file and recording
  every request, so "nothing was downloaded" is observed too.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest


def hostile_names(*, marker: Path, url: str, package_file: Path) -> list[str]:
    """Names no package manager may be given; ``marker`` must not exist afterwards."""
    return [
        "-o APT::Get::Trivial-Only=false",
        "--allow-unauthenticated",
        "-y",
        url,
        url.replace("http://", "https://", 1),
        str(package_file),
        "@core",
        "name:stream",
        f"pkg;touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"pkg && touch {marker}",
        "pkg\ntouch",
    ]


class ToolShims:
    """``tools`` on PATH as logging wrappers around the real binaries (found before PATH changes)."""

    def __init__(self, directory: Path, tools: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = directory
        self.log = directory / "started.log"
        directory.mkdir(parents=True)
        for tool in tools:
            real = shutil.which(tool)
            assert real is not None, f"{tool} is not installed"
            shim = directory / tool
            # One line per process: a newline inside an argument becomes a space.
            shim.write_text(f'#!/bin/sh\n{{ printf "%s" "{tool} $*" | tr "\\n" " "; echo; }} >> "{self.log}"\n'
                            f'exec "{real}" "$@"\n')
            shim.chmod(0o755)
        monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")

    def started(self) -> list[str]:
        """One line per process a shim started: ``tool arg arg ...``."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def started_by(self, tool: str) -> list[str]:
        return [line for line in self.started() if line.split(" ", 1)[0] == tool]


class FileServer:
    """Serves ``directory`` on 127.0.0.1 and records each request's path."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
