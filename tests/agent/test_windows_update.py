"""WindowsUpdateScanner against recorded script outputs (see recorded/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from agent_client.scanners.base import CommandOutput, ScanError
from agent_client.scanners.windows_update import (
    INSTALL_SCRIPT,
    POWERSHELL_ARGS,
    SEARCH_SCRIPT,
    WindowsUpdateScanner,
    map_msrc_severity,
    stdin_script,
)

RECORDED = Path(__file__).parent / "recorded"
POWERSHELL = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"


class FakeRun:
    def __init__(self, stdout: str, exit_code: int = 0, stderr: str = "") -> None:
        self.stdout = stdout
        self.exit_code = exit_code
        self.stderr = stderr
        self.calls: list[dict] = []

    def __call__(self, argv, *, timeout: float = 0, env=None, stdin: Optional[str] = None) -> CommandOutput:
        self.calls.append({"argv": list(argv), "stdin": stdin, "timeout": timeout})
        return CommandOutput(list(argv), self.exit_code, self.stdout, self.stderr, 0.1)


def recorded(name: str) -> str:
    # Read as text the way run_command decodes it (BOM kept: the parser strips it).
    return (RECORDED / name).read_text(encoding="utf-8")


def scanner(run: FakeRun) -> WindowsUpdateScanner:
    return WindowsUpdateScanner(run=run, powershell=POWERSHELL)


def test_scan_runs_search_script_through_stdin():
    run = FakeRun(recorded("windows_update_search.json"))
    scanner(run).scan()

    assert run.calls[0]["argv"] == [POWERSHELL] + POWERSHELL_ARGS
    assert POWERSHELL_ARGS == ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-Command", "-"]
    script = run.calls[0]["stdin"]
    assert "CreateUpdateSearcher()" in script
    assert "Search('IsInstalled=0 and IsHidden=0')" in script
    assert "Microsoft.Update.Session" in script
    # -Command - reads like a prompt: no blank line may end a block early; one ends the input.
    assert script.endswith("\n\n") and "\n\n" not in script[:-2]


def test_scan_parses_recorded_updates_exactly():
    records = scanner(FakeRun(recorded("windows_update_search.json"))).scan()

    summary = [
        (r.name, r.available_version, r.severity, r.is_security, r.kb_ids, r.cve_ids, r.size_bytes)
        for r in records
    ]
    assert summary == [
        ("bcd58b64-3cef-42da-b169-a66060ae195e", "KB4601345", "critical", True, ["KB4601345"],
         ["CVE-2021-24074", "CVE-2021-24086", "CVE-2021-24094"], 1102043820),
        ("3c114126-d4ec-42c6-b563-fd11b8c15b46", "KB4601887", "important", True, ["KB4601887"],
         ["CVE-2021-24111"], 73400320),
        ("1abb2377-20ef-43ff-aabc-0de4711ab205", "KB4580325", "critical", True, ["KB4580325"],
         ["CVE-2020-9746"], 20971520),
        ("7fc75501-1b97-4df1-932e-55c7451a14aa", "KB890830", "unknown", False, ["KB890830"], [], 38797312),
        ("9f19993c-d2de-4ebe-a8ab-9c9edfff44a0", "KB2267602", "unknown", False, ["KB2267602"], [], None),
    ]
    first = records[0]
    assert first.package_type == "windows_update"
    assert first.current_version == ""
    assert first.repository == "Windows Update"
    assert first.metadata == {
        "title": "2021-02 Cumulative Update for Windows Server 2019 (1809) for x64-based Systems (KB4601345)",
        "update_id": "bcd58b64-3cef-42da-b169-a66060ae195e",
        "revision": 1,
        "categories": ["Security Updates", "Windows Server 2019"],
        "msrc_severity": "Critical",
        "reboot_behavior": 1,
        "is_downloaded": False,
        "support_url": "https://support.microsoft.com/help/4601345",
    }
    assert records[3].metadata["categories"] == ["Update Rollups", "Windows Server 2016", "Windows Server 2019"]


def test_single_object_instead_of_array_and_scalar_lists():
    records = scanner(FakeRun(recorded("windows_update_single_object.json"))).scan()

    assert len(records) == 1
    assert records[0].name == "9f19993c-d2de-4ebe-a8ab-9c9edfff44a0"
    assert records[0].kb_ids == ["KB2267602"]
    assert records[0].cve_ids == []
    assert records[0].metadata["categories"] == ["Microsoft Defender Antivirus", "Definition Updates"]


@pytest.mark.parametrize("stdout", ["", "\r\n", "[]\r\n", "\ufeff"])
def test_no_updates(stdout):
    assert scanner(FakeRun(stdout)).scan() == []


def test_search_error_object_is_scan_error():
    with pytest.raises(ScanError, match=r"Exception from HRESULT: 0x8024401C \(0x8024401C\)"):
        scanner(FakeRun(recorded("windows_update_search_error.json"), exit_code=1)).scan()


@pytest.mark.parametrize("stdout", [
    "powershell.exe : The term 'New-Object' is not recognized",
    "{not json",
    "[1, 2, 3]",
    '[{"title": "no id"}]',
])
def test_garbage_output_is_scan_error(stdout):
    with pytest.raises(ScanError):
        scanner(FakeRun(stdout)).scan()


def test_nonzero_exit_without_error_object_is_scan_error():
    with pytest.raises(ScanError, match="exited 1"):
        scanner(FakeRun("", exit_code=1, stderr="Access is denied.")).scan()


@pytest.mark.parametrize("raw,expected", [
    ("Critical", "critical"), ("Important", "important"), ("Moderate", "moderate"), ("Low", "low"),
    ("", "unknown"), (None, "unknown"), ("Unspecified", "unknown"),
])
def test_msrc_severity_mapping(raw, expected):
    assert map_msrc_severity(raw) == expected


def test_stray_lines_before_json_are_tolerated():
    stdout = "WARNING: something chatty\r\n" + recorded("windows_update_search.json")
    assert len(scanner(FakeRun(stdout)).scan()) == 5


# --- installer ---------------------------------------------------------------------


def test_dry_run_lists_what_would_be_installed_and_fails_on_missing_id():
    run = FakeRun(recorded("windows_update_dry_run.json"))
    result = scanner(run).dry_run(["3c114126-d4ec-42c6-b563-fd11b8c15b46", "00000000-0000-0000-0000-000000000000"])

    script = run.calls[0]["stdin"]
    assert "$dryRun = $true" in script
    assert "$ids = @('3c114126-d4ec-42c6-b563-fd11b8c15b46','00000000-0000-0000-0000-000000000000')" in script
    assert result.succeeded is False
    assert result.packages == [{
        "name": "3c114126-d4ec-42c6-b563-fd11b8c15b46",
        "title": "2021-02 Cumulative Update for .NET Framework 3.5, 4.7.2 and 4.8 for Windows Server 2019 for x64 "
                 "(KB4601887)",
        "available_version": "KB4601887",
        "size_bytes": "73400320",
    }]
    assert "not offered (installed, hidden or unknown): 00000000-0000-0000-0000-000000000000" in result.output_tail


def test_install_success_reports_reboot_required():
    run = FakeRun(recorded("windows_update_install_ok.json"))
    result = scanner(run).install(["bcd58b64-3cef-42da-b169-a66060ae195e"])

    script = run.calls[0]["stdin"]
    assert "$dryRun = $false" in script
    assert "CreateUpdateDownloader()" in script and "CreateUpdateInstaller()" in script
    assert result.succeeded is True
    assert result.exit_code == 0
    assert result.packages == [{
        "name": "bcd58b64-3cef-42da-b169-a66060ae195e",
        "title": "2021-02 Cumulative Update for Windows Server 2019 (1809) for x64-based Systems (KB4601345)",
        "result": "succeeded",
        "hresult": "0x00000000",
        "reboot_required": "true",
    }]
    assert "reboot required: True" in result.output_tail


def test_install_with_one_failed_update_is_a_failure():
    result = scanner(FakeRun(recorded("windows_update_install_partial.json"))).install(
        ["bcd58b64-3cef-42da-b169-a66060ae195e", "3c114126-d4ec-42c6-b563-fd11b8c15b46"]
    )
    assert result.succeeded is False
    assert result.exit_code != 0
    assert [p["result"] for p in result.packages] == ["succeeded", "failed"]
    assert "failed (0x80070643)" in result.output_tail
    assert "install: succeeded with errors" in result.output_tail


def test_install_error_object_is_a_failure():
    result = scanner(FakeRun(recorded("windows_update_search_error.json"), exit_code=1)).install(
        ["bcd58b64-3cef-42da-b169-a66060ae195e"]
    )
    assert result.succeeded is False
    assert "Exception from HRESULT: 0x8024401C" in result.output_tail


def test_scripts_have_their_placeholders_and_no_blank_lines_once_fed():
    assert "__IDS__" in INSTALL_SCRIPT and "__DRY_RUN__" in INSTALL_SCRIPT
    for script in (SEARCH_SCRIPT, INSTALL_SCRIPT):
        fed = stdin_script(script)
        assert "\n\n" not in fed[:-2]


def test_not_available_off_windows():
    assert WindowsUpdateScanner(run=FakeRun("")).is_available() is False
