"""Flatpak scanner and installer: apps and runtimes of one Flatpak installation.

Only the ``flatpak`` command line is used. A scan costs a bounded number of calls,
however many refs are installed:

1. ``flatpak update --appstream``: refresh each remote's appstream data, where the
   version strings of apps come from (a stale copy would name an old version).
2. ``flatpak remotes``: the enabled remotes.
3. ``flatpak list``: each installed ref with its origin, deployed commit and version.
4. ``flatpak remote-ls REMOTE`` once per origin remote: the remote's commit of each ref.

An installed ref whose remote offers another commit is a pending update. That is
a different route from ``flatpak remote-ls --updates`` (flatpak's own comparison),
which :meth:`FlatpakScanner.native_listing` runs for ``scan --verify``.

The update's name is the ref without its kind, ``id/arch/branch``: an app
installed in two branches is two updates, and ``flatpak update`` takes exactly
that form. Versions are the appdata version where the ref has one (apps usually
do, runtimes usually do not), else flatpak's short commit. Flatpak has no
advisories: every update's severity is "unknown" and none is a security update.

Flatpak has no dry-run option (``--no-deploy`` still downloads). A dry-run is
``flatpak update`` run on a pseudo-terminal, answering its questions the way
``-y`` would except the last one, "Proceed with these changes?", which it answers
no: flatpak prints its whole plan (new runtimes included) and changes nothing.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Optional

from agent_client.protocol import PackageType
from agent_client.scanners.base import (
    CommandOutput,
    OperationResult,
    ScanError,
    Scanner,
    UpdateRecord,
    run_command,
    tail,
)

# `--installation=NAME` names a file in /etc/flatpak/installations.d; nothing else reaches the option.
_INSTALLATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# g_format_size() units (SI, as flatpak prints sizes): "714 bytes", "2.6 kB", "1.0 GB".
_SIZE = re.compile(r"^<?\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>bytes?|kB|MB|GB|TB)$")
_SIZE_UNITS = {"byte": 1, "bytes": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
# A question flatpak waits on: "... [Y/n]: ", "... [y/n]: " or "Which do you want to use (0 to abort)? [0-2]: ".
_PROMPT = re.compile(r"\[(?:Y/n|y/n|0-[0-9]+)\]:\s*$")
_PROCEED = "Proceed with these changes"
# The questions `-y` answers yes that only add a step to the plan: a missing runtime, an end-of-life rebase.
_PLAN_ONLY_QUESTIONS = ("Do you want to install it?", "Replace it with")
# A row of the plan flatpak prints before "Proceed?": " 1.\t   \tID\t[ARCH\t]BRANCH\tOP\tREMOTE\tDOWNLOAD".
_PLAN_ROW = re.compile(r"^\s*[0-9]+\.\t")
_PLAN_ACTIONS = {"i": "install", "u": "update", "r": "uninstall"}
# What --noninteractive prints for each step it runs.
_DONE_STEP = re.compile(r"^(?P<verb>Installing|Updating|Uninstalling) (?:app|runtime)/(?P<name>\S+)$", re.MULTILINE)
_DONE_ACTIONS = {"Installing": "install", "Updating": "update", "Uninstalling": "uninstall"}


def table_rows(stdout: str, columns: int) -> list[list[str]]:
    """flatpak's tab-separated table (stdout not a terminal), each row padded to ``columns`` cells.

    flatpak leaves out the tabs of empty cells at the end of a row.
    """
    rows = []
    for line in stdout.splitlines():
        if line.strip():
            cells = line.split("\t")
            rows.append(cells + [""] * (columns - len(cells)))
    return rows


def name_of_ref(ref: str) -> str:
    """``app/ID/ARCH/BRANCH`` or ``ID/ARCH/BRANCH`` -> ``ID/ARCH/BRANCH``, the name an update is reported by."""
    parts = ref.split("/")
    return "/".join(parts[1:]) if len(parts) == 4 else ref


def size_in_bytes(text: str) -> Optional[int]:
    """A size as flatpak prints it ("714 bytes", "< 2.6 kB") in bytes, rounded as printed; None for "-" or ""."""
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    return round(float(match.group("number")) * _SIZE_UNITS[match.group("unit")])


def shown_version(version: str, commit: str) -> str:
    """The one rule for a version string: the appdata version where there is one, else the short commit."""
    return version or commit


def parse_installed(stdout: str) -> dict[str, dict[str, str]]:
    """``flatpak list --columns=ref,origin,active,version`` -> {ID/ARCH/BRANCH: origin, commit, version}."""
    return {
        ref: {"origin": origin, "commit": commit, "version": version}
        for ref, origin, commit, version in table_rows(stdout, 4)
    }


def parse_remote_refs(stdout: str) -> dict[str, dict[str, str]]:
    """``flatpak remote-ls --columns=ref,commit,version,download-size`` -> {ID/ARCH/BRANCH: kind, commit, ...}."""
    return {
        name_of_ref(ref): {"kind": ref.split("/", 1)[0], "commit": commit, "version": version, "download": download}
        for ref, commit, version, download in table_rows(stdout, 4)
    }


def parse_plan(transcript: str, default_arch: str) -> list[dict[str, str]]:
    """The steps of the plan flatpak prints before asking "Proceed with these changes?".

    The arch column is there only when some step is not for the default arch.
    """
    steps = []
    for line in transcript.splitlines():
        if not _PLAN_ROW.match(line):
            continue
        cells = line.split("\t")[2:]
        if len(cells) == 5:
            cells.insert(1, default_arch)
        if len(cells) != 6:
            continue
        ref_id, arch, branch, operation, remote, download = (cell.strip() for cell in cells)
        steps.append({"name": f"{ref_id}/{arch}/{branch}", "action": _PLAN_ACTIONS.get(operation, operation),
                      "remote": remote, "download": download})
    return steps


def parse_done_steps(output: str) -> list[dict[str, str]]:
    """The steps ``flatpak update --noninteractive`` reports running ("Updating app/ID/ARCH/BRANCH")."""
    return [{"name": match.group("name"), "action": _DONE_ACTIONS[match.group("verb")]}
            for match in _DONE_STEP.finditer(output)]


def requested(name: str, names: Sequence[str]) -> bool:
    """Whether a step's ``ID/ARCH/BRANCH`` is one of ``names`` (a bare ID asks for all its branches)."""
    return name in names or name.split("/", 1)[0] in names


def answer_for(question: str) -> str:
    """What the dry-run answers: no to "Proceed?", yes where `-y` would only add to the plan, else no (or abort)."""
    if _PROCEED in question:
        return "n"
    if any(words in question for words in _PLAN_ONLY_QUESTIONS):
        return "y"
    return "0" if "(0 to abort)" in question else "n"


def run_answering(argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> CommandOutput:
    """Run ``argv`` on a pseudo-terminal, answering each question with :func:`answer_for`.

    flatpak answers every question "n" itself when it has no terminal, and would
    then refuse a plan that needs a new runtime; so a terminal it gets. stdout and
    stderr are one stream there: the transcript is ``stdout``. ``FLATPAK_FANCY_OUTPUT=0``
    keeps it plain text. A timeout kills the process and raises ScanError.
    """
    full_env = dict(os.environ)
    full_env.update({"LC_ALL": "C", "LANG": "C", "FLATPAK_FANCY_OUTPUT": "0", "TERM": "dumb", **env})
    started = time.monotonic()
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(list(argv), stdin=terminal, stdout=terminal, stderr=terminal,
                                   env=full_env, close_fds=True, start_new_session=True)
    except FileNotFoundError as exc:
        os.close(controller)
        raise ScanError(f"{argv[0]} is not installed") from exc
    finally:
        os.close(terminal)
    transcript = b""
    answered_up_to = 0  # a question is answered once, whatever arrives before flatpak reads the answer
    try:
        while True:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0:
                process.kill()
                process.wait()
                raise ScanError(f"{argv[0]} did not finish within {timeout:.0f} s")
            ready, _, _ = select.select([controller], [], [], min(remaining, 1.0))
            if not ready:
                if process.poll() is not None:
                    break  # flatpak exited; a process it left behind may still hold the terminal open
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal (it exited)
                break
            if not chunk:
                break
            transcript += chunk
            question = transcript[answered_up_to:].decode("utf-8", "replace").rsplit("\n", 1)[-1]
            if _PROMPT.search(question):
                os.write(controller, (answer_for(question) + "\n").encode())
                answered_up_to = len(transcript)
    finally:
        os.close(controller)
    exit_code = process.wait()
    text = transcript.decode("utf-8", "replace").replace("\r\n", "\n")
    return CommandOutput(argv=list(argv), exit_code=exit_code, stdout=text, stderr="",
                         duration_seconds=time.monotonic() - started)


class FlatpakScanner(Scanner):
    """Pending updates of one Flatpak installation's apps and runtimes; dry-run and install by ref.

    ``installation`` is "system" (the default: the agent runs as root and looks after the
    machine's own installation), "user" (the user installation of the user the agent runs as)
    or the name of a system-wide installation in /etc/flatpak/installations.d. ``env`` is passed
    to every flatpak process: tests confine flatpak with ``FLATPAK_USER_DIR``,
    ``FLATPAK_SYSTEM_DIR`` and ``FLATPAK_CONFIG_DIR``.
    """

    package_type = PackageType.FLATPAK

    def __init__(
        self,
        installation: str = "system",
        *,
        env: Optional[Mapping[str, str]] = None,
        binary: str = "flatpak",
        timeout: float = 1800,
    ) -> None:
        self.installation = installation
        if installation in ("system", "user"):
            self.installation_options = [f"--{installation}"]
        elif _INSTALLATION_NAME.fullmatch(installation):
            self.installation_options = [f"--installation={installation}"]
        else:
            raise ValueError(f"not a Flatpak installation name: {installation!r}")
        self.env = dict(env or {})
        self.binary = binary
        self.timeout = timeout
        # Installed refs the last scan could not check, with the reason (the executor reports them).
        self.last_not_checked: list[dict[str, str]] = []

    def _path(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise ScanError("flatpak is not installed")
        return path

    def _flatpak(self, command: str, *args: str) -> CommandOutput:
        return run_command([self._path(), command, *self.installation_options, *args], env=self.env,
                           timeout=self.timeout)

    def _checked(self, command: str, *args: str) -> CommandOutput:
        result = self._flatpak(command, *args)
        if result.exit_code != 0:
            raise ScanError(f"flatpak {command} {' '.join(args)} exited {result.exit_code}: "
                            f"{tail(_combined(result), 2000)}")
        return result

    def remotes(self) -> list[str]:
        """The installation's enabled remotes (``flatpak remotes`` leaves disabled ones out)."""
        listed = self._checked("remotes", "--columns=name")
        return [row[0] for row in table_rows(listed.stdout, 1)]

    def is_available(self) -> bool:
        """True only when a scan can work: flatpak runs and the installation has an enabled remote."""
        try:
            return bool(self.remotes())
        except ScanError:
            return False

    # -- scan ---------------------------------------------------------------

    def scan(self) -> list[UpdateRecord]:
        self._checked("update", "--appstream", "--noninteractive")
        remotes = self.remotes()
        installed = parse_installed(self._checked("list", "--columns=ref,origin,active,version").stdout)
        origins = sorted({ref["origin"] for ref in installed.values() if ref["origin"] in remotes})
        offered = {origin: self._remote_refs(origin) for origin in origins}
        records = []
        self.last_not_checked = []
        for name, ref in installed.items():
            if ref["origin"] not in offered:
                # flatpak update cannot update it either; saying so beats reporting it as current.
                reason = f"not checked: its remote {ref['origin']!r} is disabled or removed"
                self.last_not_checked.append({"name": name, "reason": reason})
                continue
            available = offered[ref["origin"]].get(name)
            if available is not None and available["commit"] != ref["commit"]:
                records.append(self._record(name, ref, available))
        return records

    def _remote_refs(self, remote: str) -> dict[str, dict[str, str]]:
        listed = self._checked("remote-ls", "--arch=*", "--columns=ref,commit,version,download-size", remote)
        return parse_remote_refs(listed.stdout)

    def _record(self, name: str, installed: dict[str, str], available: dict[str, str]) -> UpdateRecord:
        return UpdateRecord(
            package_type=self.package_type,
            name=name,
            current_version=shown_version(installed["version"], installed["commit"]),
            available_version=shown_version(available["version"], available["commit"]),
            repository=installed["origin"],
            size_bytes=size_in_bytes(available["download"]),
            metadata={
                "kind": available["kind"],
                "current_commit": installed["commit"],
                "available_commit": available["commit"],
                "installation": self.installation,
            },
        )

    def native_listing(self) -> dict[str, str]:
        """``flatpak remote-ls --updates``: flatpak's own comparison of installed and remote commits."""
        listed = self._checked("remote-ls", "--updates", "--columns=ref,version,commit")
        rows = table_rows(listed.stdout, 3)
        return {name_of_ref(ref): shown_version(version, commit) for ref, version, commit in rows}

    # -- operations ---------------------------------------------------------
    # Scanner.check_names has already refused an empty list (`flatpak update` without refs
    # updates everything) and anything but ID or ID/ARCH/BRANCH; "--" ends the options anyway.

    def _dry_run(self, names: list[str]) -> OperationResult:
        """``flatpak update REFS``, answering no at "Proceed?": exit 1 after that question is the
        normal ending; exit 0 is "Nothing to do."; anything else failed."""
        started = time.monotonic()
        try:
            default_arch = run_command([self._path(), "--default-arch"], env=self.env).stdout.strip()
            result = run_answering(self._update_argv(names), env=self.env, timeout=self.timeout)
        except ScanError as exc:
            return OperationResult(succeeded=False, exit_code=-1, output_tail=str(exc),
                                   duration_seconds=time.monotonic() - started)
        declined = result.exit_code == 1 and f"{_PROCEED} " in result.stdout
        steps = parse_plan(result.stdout, default_arch)
        return self._result(result, names, steps, resolved=result.exit_code == 0 or declined)

    def _install(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        try:
            result = run_command(self._update_argv(names, "-y", "--noninteractive"), env=self.env,
                                 timeout=self.timeout)
        except ScanError as exc:
            return OperationResult(succeeded=False, exit_code=-1, output_tail=str(exc),
                                   duration_seconds=time.monotonic() - started)
        return self._result(result, names, parse_done_steps(result.stdout), resolved=result.exit_code == 0)

    def _update_argv(self, names: list[str], *options: str) -> list[str]:
        return [self._path(), "update", *self.installation_options, *options, "--", *names]

    @staticmethod
    def _result(result: CommandOutput, names: list[str], steps: list[dict[str, str]], *,
                resolved: bool) -> OperationResult:
        return OperationResult(
            succeeded=resolved,
            exit_code=result.exit_code,
            output_tail=tail(_combined(result)),
            duration_seconds=result.duration_seconds,
            dependencies=[step["name"] for step in steps if not requested(step["name"], names)],
            packages=steps,
        )


def _combined(result: CommandOutput) -> str:
    if result.stdout and result.stderr:
        return result.stdout.rstrip("\n") + "\n" + result.stderr
    return result.stdout or result.stderr
