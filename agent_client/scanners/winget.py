"""winget scanner and installer (machine scope).

winget has no stable machine-readable ``upgrade`` listing, so its table is
parsed. What winget prints (winget-cli ``TableOutput.h``): a header line, a
line of dashes, one padded row per package, columns separated by at least one
space, a column left out entirely when all its cells are empty (``Source``),
values cut to fit the console (120 columns when there is no console, as under
a service) and ended with "…" (older builds: "..."). Before the table come
progress spinners and bars (``\\r``-overwritten), after it summary lines
("6 upgrades available.", "N package(s) have pins ...") and possibly a second
table of packages that "require explicit targeting for upgrade".

Columns are located from the header line's positions. Names with East Asian
wide characters are padded by display width in some winget builds and by code
points in others, so each row is cut both ways and the cut whose cells line up
is kept. A row that fits neither is kept out of the report and listed in
``last_unparsed`` (never silently guessed).

Records: ``name`` is the winget Id (what ``upgrade --id`` takes), the display
name and pin state are in metadata. Pins come from ``winget pin list``.
Severity is "unknown": winget carries no security data.

One Id on several rows. A row printed twice, every cell the same, is one package
(winget-cli #1869 lists Microsoft.Office twice): it is reported once. Rows that
share an Id but differ in any other cell are different installed packages: two
SDKs whose versions winget shows as ``< 3.1.419``, or the x64 and x86 Visual C++
redistributables whose Ids the console cut to the same ``Microsoft.VCRedist.2015+…``.
None of them is reported as an update: the server takes one row per name, and
``winget upgrade --id ID --exact`` cannot say which of them to upgrade (winget
answers "multiple packages found"). Inventing a second name would send the
install a name winget does not know. Each goes to ``last_not_checked`` instead,
with its display name and versions, so the report says what was left out.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Sequence
from typing import Callable, Optional

from agent_client.protocol import PackageType
from agent_client.scanners.base import (
    CommandRunner,
    OperationResult,
    ScanError,
    Scanner,
    UpdateRecord,
    run_command,
    tail,
)

WINDOWSAPPS_GLOB = os.path.join("WindowsApps", "Microsoft.DesktopAppInstaller_*_x64__8wekyb3d8bbwe", "winget.exe")

SCAN_ARGS = ["upgrade", "--scope", "machine", "--include-unknown",
             "--accept-source-agreements", "--disable-interactivity"]
PIN_LIST_ARGS = ["pin", "list", "--disable-interactivity"]
NATIVE_LIST_ARGS = ["list", "--upgrade-available", "--scope", "machine", "--include-unknown",
                    "--accept-source-agreements", "--disable-interactivity"]

UPGRADE_COLUMNS = ("Name", "Id", "Version", "Available", "Source")
PIN_COLUMNS = ("Name", "Id", "Version", "Source", "Pin type", "Pinned version")

# winget return codes (winget-cli doc/windows/package-manager/winget/returnCodes.md).
NO_PACKAGES_FOUND = 0x8A150014
NO_APPLICABLE_UPDATE = 0x8A15002B
EXIT_CODES: dict[int, str] = {
    0x8A150001: "internal error",
    0x8A150002: "invalid command line arguments",
    0x8A150003: "executing command failed",
    0x8A150008: "downloading installer failed",
    0x8A15000A: "the index is corrupt",
    0x8A15000B: "the configured source information is corrupt",
    0x8A15000F: "data required by the source is missing",
    0x8A150010: "none of the installers are applicable for this system",
    0x8A150011: "the installer's hash does not match the manifest",
    NO_PACKAGES_FOUND: "no packages found",
    0x8A150015: "no sources are configured",
    0x8A150016: "multiple packages found matching the criteria",
    0x8A150019: "command requires administrator privileges",
    0x8A15002B: "no applicable update found",
    0x8A15002C: "upgrade --all completed with failures",
    0x8A15002D: "installer failed security check",
    0x8A150041: "package agreements were not agreed to",
    0x8A150045: "failed to open the source",
    0x8A150046: "source agreements were not agreed to",
    0x8A15003A: "operation is blocked by Group Policy",
    0x8A15004F: "the upgrade version is not newer than the installed version",
    0x8A150050: "upgrade version is unknown and override is not specified",
    0x8A150056: "the installer cannot be run from an administrator context",
    0x8A150064: "unable to open the pin database",
    0x8A150068: "the package has a pin that prevents upgrade",
}

_NO_UPGRADES_MESSAGES = (
    "No installed package found matching input criteria.",
    "No available upgrade found.",
    "No applicable upgrade found.",
    "No newer package versions are available from the configured sources.",
)
_EXPLICIT_TABLE_INTRO = "require explicit targeting for upgrade"
_SEPARATOR_RE = re.compile(r"^-{8,}\s*$")
_FOOTER_RE = re.compile(r"^\d+ (upgrades? available|package\(s\))")
_ELLIPSES = ("\u2026", "...")

def normalize_exit_code(code: int) -> int:
    """Windows exit codes are DWORDs; some callers see them negative."""
    return code & 0xFFFFFFFF


def describe_exit_code(code: int) -> str:
    code = normalize_exit_code(code)
    meaning = EXIT_CODES.get(code)
    return f"0x{code:08X}" + (f" ({meaning})" if meaning else "")


# --- winget.exe discovery -----------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    folder = os.path.basename(os.path.dirname(path))
    match = re.match(r"Microsoft\.DesktopAppInstaller_([\d.]+)_", folder)
    if not match:
        return (0,)
    return tuple(int(part) for part in match.group(1).split("."))


def find_winget(program_files: Optional[str] = None, path_lookup: Callable[[str], Optional[str]] = shutil.which
                ) -> Optional[str]:
    """winget.exe: the newest App Installer under WindowsApps, else PATH.

    Under SYSTEM, winget is not on PATH (its alias lives in a user profile),
    so the package folder is searched first, newest version first.
    """
    root = program_files if program_files is not None else os.environ.get("ProgramFiles", r"C:\Program Files")
    candidates = sorted(glob.glob(os.path.join(root, WINDOWSAPPS_GLOB)), key=_version_key, reverse=True)
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return path_lookup("winget.exe") or path_lookup("winget")


# --- table parsing ---------------------------------------------------------------


def repair_mojibake(text: str) -> str:
    """winget writes UTF-8; decoded with a Windows code page it turns to mojibake.

    ``…`` read as cp1252 is ``â€¦`` and as cp437 ``ΓÇª``. Undo that when the
    whole text round-trips; leave it alone otherwise.
    """
    if not any(marker in text for marker in ("\u00e2\u20ac", "\u00c3", "\u0393\u00c7")):
        return text
    for codepage in ("cp1252", "cp437"):
        try:
            return text.encode(codepage).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    return text


def clean_lines(text: str) -> list[str]:
    """Lines as a terminal would show them: the last ``\\r``-overwrite wins."""
    lines = []
    for raw in repair_mojibake(text).replace("\r\n", "\n").split("\n"):
        segment = raw.rstrip("\r").split("\r")[-1]
        lines.append(segment.rstrip())
    return lines


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _slice(line: str, starts: Sequence[int], by_width: bool) -> list[str]:
    """Cut a row at column starts, counting code points or display columns."""
    cells = [""] * len(starts)
    position = 0
    column = 0
    for char in line:
        while column + 1 < len(starts) and position >= starts[column + 1]:
            column += 1
        cells[column] += char
        position += _char_width(char) if by_width else 1
    return cells


def _locate_columns(header: str, names: Sequence[str], required: Sequence[str]) -> Optional[list[tuple[str, int]]]:
    """(name, start) of each header column present, in order."""
    found = []
    position = 0
    for name in names:
        match = re.compile(r"(?:^|(?<= ))" + re.escape(name) + r"(?= |$)").search(header, position)
        if match:
            found.append((name, match.start()))
            position = match.end()
    if found and found[0][1] == 0 and set(required) <= {name for name, _start in found}:
        return found
    # Localized header: fall back to word positions when the count fits.
    words = [(m.group(0), m.start()) for m in re.finditer(r"\S+", header)]
    if words and words[0][1] == 0 and len(names) - 2 <= len(words) <= len(names):
        return [(names[i], start) for i, (_word, start) in enumerate(words)]
    return None


def _row_fits(cells: list[str], id_index: int) -> bool:
    # Every non-empty cell after the first starts right after a separating space.
    for cell, following in zip(cells, cells[1:]):
        if following and not cell.endswith(" "):
            return False
    identifier = cells[id_index].strip() if id_index < len(cells) else ""
    return bool(identifier) and " " not in identifier


class Table:
    def __init__(self, columns: list[str], rows: list[dict[str, str]], unparsed: list[str], intro: str) -> None:
        self.columns = columns
        self.rows = rows
        self.unparsed = unparsed
        self.intro = intro


def parse_tables(text: str, names: Sequence[str], required: Sequence[str] = ("Id",)) -> list[Table]:
    """Every header/dashes/rows table in winget's output."""
    lines = clean_lines(text)
    tables: list[Table] = []
    index = 0
    while index < len(lines):
        if not _SEPARATOR_RE.match(lines[index].strip()) or index == 0:
            index += 1
            continue
        header = lines[index - 1]
        # Spinner leftovers may precede the header on its line: start at the first column name.
        first = re.search(re.escape(names[0]) + r"\b", header)
        if first:
            header = header[first.start():]
        else:
            header = header.lstrip(" -\\|/")
        columns = _locate_columns(header, names, required)
        if columns is None:
            index += 1
            continue
        intro = next((line for line in reversed(lines[max(0, index - 3):index - 1]) if line.strip()), "")
        starts = [start for _name, start in columns]
        column_names = [name for name, _start in columns]
        id_index = column_names.index("Id") if "Id" in column_names else 0
        rows: list[dict[str, str]] = []
        unparsed: list[str] = []
        index += 1
        while index < len(lines):
            line = lines[index]
            if not line.strip() or _FOOTER_RE.match(line.strip()) or _EXPLICIT_TABLE_INTRO in line:
                break
            if index + 1 < len(lines) and _SEPARATOR_RE.match(lines[index + 1].strip()):
                break  # the header of the next table
            cells = None
            for by_width in (False, True):
                candidate = _slice(line, starts, by_width)
                if _row_fits(candidate, id_index):
                    cells = candidate
                    break
            if cells is None:
                unparsed.append(line)
            else:
                rows.append({name: cell.strip() for name, cell in zip(column_names, cells)})
            index += 1
        tables.append(Table(column_names, rows, unparsed, intro))
    return tables


def is_truncated(value: str) -> bool:
    return value.endswith(_ELLIPSES)


def parse_pins(text: str) -> dict[str, str]:
    """Id -> pin type from ``winget pin list`` ({} when there are no pins)."""
    pins: dict[str, str] = {}
    for table in parse_tables(text, PIN_COLUMNS):
        for row in table.rows:
            if row.get("Id"):
                pins[row["Id"]] = row.get("Pin type", "") or "Pinning"
    return pins


def one_row_per_id(tables: Sequence[Table]) -> tuple[list[tuple[dict[str, str], bool]], list[dict[str, str]]]:
    """(row, requires explicit upgrade) once per Id, and not-checked entries for shared Ids.

    Rows with an available version only. A row repeated cell for cell is one package printed
    twice and is kept once; rows that share an Id and differ are different packages that winget
    cannot be told apart by Id, and none of them is kept (see the module docstring).
    """
    by_id: dict[str, list[tuple[dict[str, str], bool]]] = {}
    for table in tables:
        explicit = _EXPLICIT_TABLE_INTRO in table.intro
        for row in table.rows:
            if not row.get("Available"):
                continue
            same_id = by_id.setdefault(row["Id"], [])
            if all(row != kept for kept, _explicit in same_id):
                same_id.append((row, explicit))
    kept: list[tuple[dict[str, str], bool]] = []
    not_checked: list[dict[str, str]] = []
    for package_id, rows in by_id.items():
        if len(rows) == 1:
            kept.append(rows[0])
            continue
        for row, _explicit in rows:
            not_checked.append({
                "name": package_id,
                "reason": (f"{len(rows)} installed packages share this Id; not reported, as winget upgrade "
                           f"--id cannot tell them apart: {row.get('Name', '')} "
                           f"{row.get('Version', '')} -> {row['Available']}"),
            })
    return kept, not_checked


# --- the scanner -------------------------------------------------------------------


class WingetScanner(Scanner):
    package_type = PackageType.WINGET

    def __init__(self, run: Optional[CommandRunner] = None, winget: Optional[str] = None,
                 timeout: float = 1800) -> None:
        self.run = run or run_command
        self._winget = winget
        self.timeout = timeout
        self.last_unparsed: list[str] = []
        # {"name", "reason"} for rows the scan saw but cannot report (see the module docstring).
        self.last_not_checked: list[dict[str, str]] = []
        self.last_pins_known = False

    @property
    def winget(self) -> Optional[str]:
        if self._winget is None:
            self._winget = find_winget()
        return self._winget

    def is_available(self) -> bool:
        return os.name == "nt" and self.winget is not None

    def _exe(self) -> str:
        exe = self.winget
        if exe is None:
            raise ScanError("winget.exe not found (App Installer missing?)")
        return exe

    def _pins(self) -> Optional[dict[str, str]]:
        try:
            output = self.run([self._exe()] + PIN_LIST_ARGS, timeout=300)
        except ScanError:
            return None
        if normalize_exit_code(output.exit_code) != 0:
            return None  # winget before 1.5 has no pins
        return parse_pins(output.stdout)

    def _upgrade_tables(self, args: list[str]) -> list[Table]:
        """The upgrade tables of ``winget ARGS`` ([] when winget says there is nothing to upgrade)."""
        output = self.run([self._exe()] + args, timeout=self.timeout)
        tables = parse_tables(output.stdout, UPGRADE_COLUMNS, required=("Name", "Id", "Version", "Available"))
        code = normalize_exit_code(output.exit_code)
        if not tables:
            if any(message in output.stdout for message in _NO_UPGRADES_MESSAGES) and code in (
                0, NO_PACKAGES_FOUND, NO_APPLICABLE_UPDATE,
            ):
                return []
            raise ScanError(
                f"winget {args[0]} exited {describe_exit_code(code)} without an upgrade table: "
                f"{tail(output.stdout.strip() or output.stderr.strip(), 300)!r}"
            )
        if code not in (0, NO_PACKAGES_FOUND, NO_APPLICABLE_UPDATE):
            raise ScanError(f"winget {args[0]} exited {describe_exit_code(code)}")
        return tables

    def scan(self) -> list[UpdateRecord]:
        tables = self._upgrade_tables(SCAN_ARGS)
        self.last_unparsed = [line for table in tables for line in table.unparsed]
        if not tables:
            self.last_not_checked = []
            return []
        pins = self._pins()
        self.last_pins_known = pins is not None
        rows, self.last_not_checked = one_row_per_id(tables)
        return [self._record(row, pins, explicit) for row, explicit in rows]

    def native_listing(self) -> dict[str, str]:
        """``winget list --upgrade-available`` (the same question asked of the installed list, not
        of the upgrade command): Id -> available version, one Id per package as the scan has it."""
        rows, _not_checked = one_row_per_id(self._upgrade_tables(NATIVE_LIST_ARGS))
        return {row["Id"]: row["Available"] for row, _explicit in rows}

    def _record(self, row: dict[str, str], pins: Optional[dict[str, str]], explicit: bool) -> UpdateRecord:
        package_id = row["Id"]
        pin_type = (pins or {}).get(package_id, "")
        return UpdateRecord(
            package_type=self.package_type,
            name=package_id,
            current_version=row.get("Version", ""),
            available_version=row.get("Available", ""),
            severity="unknown",
            is_security=False,
            repository=row.get("Source", ""),
            metadata={
                "display_name": row.get("Name", ""),
                "name_truncated": is_truncated(row.get("Name", "")),
                "id_truncated": is_truncated(package_id),
                "pinned": bool(pin_type) if pins is not None else None,
                "pin_type": pin_type,
                "requires_explicit_upgrade": explicit,
            },
        )

    def _dry_run(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        try:
            available = {record.name: record for record in self.scan()}
        except ScanError as exc:
            return OperationResult(False, 1, str(exc), time.monotonic() - started)
        packages: list[dict[str, str]] = []
        lines: list[str] = []
        ok = True
        for name in names:
            record = available.get(name)
            if record is None:
                ok = False
                lines.append(f"{name}: no upgrade available in machine scope")
                continue
            packages.append({"name": name, "current_version": record.current_version,
                             "available_version": record.available_version})
            note = f" (pinned: {record.metadata['pin_type']})" if record.metadata.get("pinned") else ""
            lines.append(f"would upgrade {name} {record.current_version} -> {record.available_version}{note}")
        return OperationResult(ok, 0 if ok else 1, tail("\n".join(lines)), time.monotonic() - started,
                               packages=packages)

    def _install(self, names: list[str]) -> OperationResult:
        started = time.monotonic()
        lines: list[str] = []
        packages: list[dict[str, str]] = []
        ok = True
        last_code = 0
        for name in names:
            # The Id is the value of --id, never an operand; winget's parser has no "--" end-of-options
            # marker. A display-truncated Id ("Publisher.Pack…", "Microsoft.Edg...") names no package:
            # the winget grammar already refuses both ellipses, so there is no extra rule here.
            argv = [self._exe(), "upgrade", "--id", name, "--exact", "--silent", "--scope", "machine",
                    "--accept-package-agreements", "--accept-source-agreements", "--disable-interactivity"]
            output = self.run(argv, timeout=self.timeout)
            code = normalize_exit_code(output.exit_code)
            lines.append(f"$ winget upgrade --id {name}")
            lines.extend(line for line in clean_lines(output.stdout) if line.strip() and len(line.strip()) > 1)
            if output.stderr.strip():
                lines.append(output.stderr.strip())
            if code == 0:
                packages.append({"name": name, "result": "upgraded"})
            else:
                ok = False
                last_code = code
                lines.append(f"{name}: FAILED, winget exited {describe_exit_code(code)}")
                packages.append({"name": name, "result": "failed", "exit_code": f"0x{code:08X}"})
        return OperationResult(
            succeeded=ok,
            exit_code=0 if ok else (last_code or 1),
            output_tail=tail("\n".join(lines)),
            duration_seconds=time.monotonic() - started,
            packages=packages,
        )
