"""Hostile package names and the instruments that prove they reached nothing.

Used by the real-tool tests of every package manager (test_apt.py, test_dnf.py, test_pacman.py,
test_zypper.py, test_flatpak.py):

* :func:`hostile_names`: what a compromised or buggy server could try to pass
  as a package name (an option, a URL, a path, a group, a module stream, shell
  syntax), with the paths and port of this test filled in;
* :func:`refuse_every_name`: each name sent the two ways it could reach a tool - a signed
  dry-run and install command through the executor, and the scanner's own dry_run and install -
  and each refused with the one-line reason;
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
from typing import Any

import pytest

from agent_client.outbox import KIND_COMMAND_RESULT
from agent_client.scanners.base import PackageNamesRefused


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


def refuse_every_name(*, names: list[str], valid: str, package_type: str, signer: Any, executor: Any,
                      scanner: Any, outbox: Any) -> None:
    """Every name, beside the ``valid`` one, through signed dry-run and install commands (each fails) and the
    scanner's dry_run and install (each raises PackageNamesRefused); every result is the one-line refusal."""
    for name in names:
        for command_type in ("dry_run_update", "install_updates"):
            command = signer.command(command_type, {"package_type": package_type, "packages": [valid, name]})
            assert executor.handle(command) == "failed", name
        for operation in (scanner.dry_run, scanner.install):
            with pytest.raises(PackageNamesRefused):
                operation([name])
    results = [item.payload for item in outbox.pending() if item.kind == KIND_COMMAND_RESULT]
    assert len(results) == 2 * len(names)
    refusal = f"refused: invalid {package_type} package name(s): "
    assert all(result["output"].startswith(refusal) for result in results), results


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
