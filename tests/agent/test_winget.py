"""WingetScanner against recorded winget outputs (see recorded/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from agent_client.scanners.base import CommandOutput, ScanError, not_checked_line
from agent_client.scanners.winget import (
    SCAN_ARGS,
    WingetScanner,
    clean_lines,
    find_winget,
    parse_pins,
    repair_mojibake,
)

RECORDED = Path(__file__).parent / "recorded"
WINGET = r"C:\Program Files\WindowsApps\Microsoft.DesktopAppInstaller_1.22.11261.0_x64__8wekyb3d8bbwe\winget.exe"


def recorded(name: str) -> str:
    # As subprocess text mode hands it over: universal newlines turn \r\n (and lone \r) into \n.
    raw = (RECORDED / name).read_bytes().decode("utf-8")
    return raw.replace("\r\n", "\n").replace("\r", "\n")


def recorded_raw(name: str) -> str:
    return (RECORDED / name).read_bytes().decode("utf-8")


class FakeRun:
    """Answers by subcommand: {("upgrade",): (stdout, code), ("pin", "list"): ...}."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[str, int]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout: float = 0, env=None, stdin: Optional[str] = None) -> CommandOutput:
        self.calls.append(list(argv))
        for key, (stdout, code) in self.answers.items():
            # A one-word key ("upgrade") answers the scan only, never an install's "upgrade --id".
            for_this_call = len(key) > 1 or "--id" not in argv or key == ("upgrade", "--id")
            if tuple(argv[1:1 + len(key)]) == key and for_this_call:
                return CommandOutput(list(argv), code, stdout, "", 0.1)
        raise AssertionError(f"unexpected command {argv}")


def scanner_with(upgrade: str, pins: str = "There are no pins configured.\n", upgrade_code: int = 0,
                 pin_code: int = 0) -> tuple[WingetScanner, FakeRun]:
    run = FakeRun({("upgrade",): (upgrade, upgrade_code), ("pin", "list"): (pins, pin_code)})
    return WingetScanner(run=run, winget=WINGET), run


def summary(records):
    return [(r.name, r.metadata["display_name"], r.current_version, r.available_version, r.repository)
            for r in records]


def test_scan_uses_machine_scope_and_parses_table_exactly():
    scanner, run = scanner_with(recorded("winget_upgrade.txt"), recorded("winget_pin_list.txt"))
    records = scanner.scan()

    assert run.calls[0] == [WINGET] + SCAN_ARGS
    assert SCAN_ARGS == ["upgrade", "--scope", "machine", "--include-unknown",
                         "--accept-source-agreements", "--disable-interactivity"]
    assert run.calls[1] == [WINGET, "pin", "list", "--disable-interactivity"]
    # The duplicated Microsoft.Office row (same id and version) is reported once.
    assert summary(records) == [
        ("OpenWhisperSystems.Signal", "Signal", "5.27.1", "5.29.0", "winget"),
        ("Microsoft.Edge", "Microsoft Edge", "97.0.1072.62", "97.0.1072.69", "winget"),
        ("Microsoft.EdgeWebView2Runtime", "Microsoft Edge WebView2 Runtime", "97.0.1072.62", "97.0.1072.69", "winget"),
        ("Microsoft.Office", "Microsoft 365 Apps for enterprise", "16.0.14701.20290", "16.0.14729.20228", "winget"),
        ("Postman.Postman", "Postman", "9.8.3", "9.9.3", "winget"),
    ]
    assert all(r.package_type == "winget" and r.severity == "unknown" and not r.is_security for r in records)
    pinned = {r.name: (r.metadata["pinned"], r.metadata["pin_type"]) for r in records}
    assert pinned == {
        "OpenWhisperSystems.Signal": (False, ""),
        "Microsoft.Edge": (False, ""),
        "Microsoft.EdgeWebView2Runtime": (False, ""),
        "Microsoft.Office": (True, "Blocking"),
        "Postman.Postman": (True, "Pinning"),
    }
    assert scanner.last_unparsed == []
    assert scanner.last_pins_known is True


def test_truncated_names_versions_with_spaces_and_no_source_column():
    scanner, _ = scanner_with(recorded("winget_upgrade_truncated_no_source.txt"))
    records = scanner.scan()

    assert summary(records) == [
        ("Mozilla.Firefox", "Mozilla Firefox (x64 en-US)", "110.0.1", "111.0", ""),
        ("ElectronicArts.EADesktop", "EA app", "12.115.0.5372", "12.130.0.5387", ""),
        ("Microsoft.Teams", "Teams Machine-Wide Installer", "1.6.0.376", "1.6.00.4472", ""),
        ("IDMComputerSolutions,Inc.UltraEdit", "UltraEdit", "24.20.0.40", "29.2.52", ""),
    ]
    assert records[0].metadata["name_truncated"] is False
    assert all(r.metadata["pinned"] is False for r in records)
    # Two Windows SDKs and two .NET SDKs share an Id each (versions shown as "< ..."): four different
    # installed packages that `winget upgrade --id` cannot tell apart, each listed as not checked.
    assert [(item["name"], item["reason"].rsplit(": ", 1)[1]) for item in scanner.last_not_checked] == [
        ("Microsoft.WindowsSDK", "Windows Software Development Kit - Windows 10.0.1904\u2026 < 10.0.22000.832 -> "
                                 "10.0.22621.2"),
        ("Microsoft.WindowsSDK", "Windows Software Development Kit - Windows 10.0.1439\u2026 < 10.0.22000.832 -> "
                                 "10.0.22621.2"),
        ("Microsoft.DotNet.SDK.3_1", "Microsoft .NET Core SDK - 2.1.200 (x64) < 3.1.419 -> 3.1.426"),
        ("Microsoft.DotNet.SDK.3_1", "Microsoft .NET Core SDK 2.1.402 (x64) < 3.1.419 -> 3.1.426"),
    ]


def test_spinner_and_progress_garbage_before_the_table():
    for text in (recorded("winget_upgrade_spinner.txt"), recorded_raw("winget_upgrade_spinner.txt")):
        scanner, _ = scanner_with(text)
        records = scanner.scan()
        assert summary(records) == [
            ("ImageMagick.ImageMagick", "ImageMagick 7.1.0-62 Q16-HDRI (64-bit) (2023-02-12)", "7.1.0.62", "7.1.1.24",
             "winget"),
            ("RawTherapee.RawTherapee", "RawTherapee version 5.8", "5.8", "5.9", "winget"),
            ("VB-Audio.Voicemeeter.Banana", "Voicemeeter, The Virtual Mixing Console", "Unknown", "2.0.6.8", "winget"),
            ("XnSoft.XnViewMP", "XnViewMP 1.5.5", "1.5.5", "1.6.3.0", "winget"),
            ("PeterDaveHello.TransmissionRemoteGUI", "Transmission Remote GUI 5.18", "Unknown", "5.18.0", "winget"),
            ("Cyanfish.NAPS2", "NAPS2", "6.1.2", "7.2.2", "winget"),
        ]
        assert scanner.last_unparsed == []


def test_explicit_upgrade_table_is_reported_and_flagged():
    scanner, _ = scanner_with(recorded("winget_upgrade_explicit_table.txt"))
    records = scanner.scan()
    assert summary(records) == [("Discord.Discord", "Discord", "1.0.9242", "1.0.9243", "winget")]
    assert records[0].metadata["requires_explicit_upgrade"] is True


def test_pin_footer_lines_are_not_rows():
    scanner, _ = scanner_with(recorded("winget_upgrade_pins_footer.txt"))
    records = scanner.scan()
    assert summary(records) == [("ALCPU.CoreTemp", "Core Temp 1.18.1", "1.18.1", "1.19.5", "winget")]
    assert records[0].metadata["requires_explicit_upgrade"] is False
    assert scanner.last_unparsed == []


def test_wide_and_accented_names_by_display_width_and_by_code_points():
    scanner, _ = scanner_with(recorded("winget_upgrade_wide_constructed.txt"))
    records = scanner.scan()
    assert summary(records) == [
        ("Tencent.WeChat", "\u5fae\u4fe1", "3.9.0.28", "3.9.5.81", "winget"),
        ("Notepad++.Notepad++", "Notepad++ (64-bit x64) \u2013 \u00e9dition", "8.7.5", "8.7.6", "winget"),
        ("sakura-editor.sakura", "\u30b5\u30af\u30e9\u30a8\u30c7\u30a3\u30bf", "2.4.1", "2.4.2", "winget"),
    ]


def test_mojibake_from_a_windows_code_page_is_repaired():
    text = recorded("winget_upgrade_truncated_no_source.txt")
    garbled = text.encode("utf-8").decode("cp1252", errors="strict")
    assert "\u2026" not in garbled
    assert repair_mojibake(garbled) == text
    scanner, _ = scanner_with(garbled)
    scanner.scan()
    assert scanner.last_not_checked[0]["reason"].endswith("Windows 10.0.1904\u2026 < 10.0.22000.832 -> 10.0.22621.2")


def test_rows_sharing_an_id_are_not_merged_and_reach_the_report_as_distinct_not_checked_lines():
    """x64 and x86 redistributables whose Ids the console cut to one, and two SDKs with "<" versions.

    Reported as one update they would hide a package (the old merge) and the install could not
    name either; reported twice under one name the server would refuse the report. Each is a
    not_checked line naming its display name.
    """
    scanner, _ = scanner_with(recorded("winget_upgrade_shared_ids_constructed.txt"))
    records = scanner.scan()
    assert summary(records) == [("Mozilla.Firefox", "Mozilla Firefox (x64 en-US)", "110.0.1", "111.0", "winget")]
    assert [item["name"] for item in scanner.last_not_checked] == [
        "Microsoft.VCRedist.2015+\u2026", "Microsoft.VCRedist.2015+\u2026",
        "Microsoft.DotNet.SDK.7", "Microsoft.DotNet.SDK.7"]

    # What the executor puts in the report (executor._scan): kept records, then these lines.
    kept, refused = scanner.sort_for_report(records)
    assert [record.name for record in kept] == ["Mozilla.Firefox"] and refused == []
    lines = [not_checked_line(item["name"], item["reason"]) for item in scanner.last_not_checked]
    assert len(lines) == len(set(lines)) == 4
    assert any("(x64) - 14\u2026 14.36.32532.0 -> 14.38.33135.0" in line for line in lines)
    assert any("(x86) - 14\u2026 14.36.32532.0 -> 14.38.33135.0" in line for line in lines)
    assert any("Microsoft .NET SDK 7.0.400 (x64) < 7.0.403 -> 7.0.404" in line for line in lines)
    assert any("Microsoft .NET SDK 7.0.401 (x64) < 7.0.403 -> 7.0.404" in line for line in lines)


def test_native_listing_is_winget_list_upgrade_available():
    run = FakeRun({("list", "--upgrade-available"): (recorded("winget_upgrade_pins_footer.txt"), 0)})
    scanner = WingetScanner(run=run, winget=WINGET)
    assert scanner.native_listing() == {"ALCPU.CoreTemp": "1.19.5"}
    assert run.calls == [[WINGET, "list", "--upgrade-available", "--scope", "machine", "--include-unknown",
                          "--accept-source-agreements", "--disable-interactivity"]]

    # The same recording as an upgrade table, and the shared-Id one: both routes name the same packages.
    for name in ("winget_upgrade.txt", "winget_upgrade_shared_ids_constructed.txt"):
        scanner, _ = scanner_with(recorded(name))
        scanned = {record.name: record.available_version for record in scanner.scan()}
        listing = FakeRun({("list", "--upgrade-available"): (recorded(name), 0)})
        assert WingetScanner(run=listing, winget=WINGET).native_listing() == scanned


def test_gating_pin_list_with_pinned_version_column():
    assert parse_pins(recorded("winget_pin_list_gating.txt")) == {"Microsoft.Office": "Gating"}
    assert parse_pins(recorded("winget_pin_list.txt")) == {"Microsoft.Office": "Blocking", "Postman.Postman": "Pinning"}
    assert parse_pins(recorded("winget_pin_list_empty.txt")) == {}


def test_pins_unknown_when_pin_list_fails():
    scanner, _ = scanner_with(recorded("winget_upgrade.txt"), "Unrecognized command: 'pin'\n", pin_code=0x8A150002)
    records = scanner.scan()
    assert scanner.last_pins_known is False
    assert {r.metadata["pinned"] for r in records} == {None}


@pytest.mark.parametrize("code", [0, 0x8A150014, -1978335212])
def test_no_upgrades(code):
    scanner, _ = scanner_with(recorded("winget_no_upgrades.txt"), upgrade_code=code)
    assert scanner.scan() == []


@pytest.mark.parametrize("stdout,code,message", [
    ("winget_source_error.txt", 0x8A15000F, "0x8A15000F \\(data required by the source is missing\\)"),
    ("", 0x8A150019, "administrator privileges"),
    ("\x00\x01garbage\n\ufffd\ufffd\n", 0, "without an upgrade table"),
])
def test_garbage_or_failure_is_scan_error(stdout, code, message):
    text = recorded(stdout) if stdout.endswith(".txt") else stdout
    scanner, _ = scanner_with(text, upgrade_code=code)
    with pytest.raises(ScanError, match=message):
        scanner.scan()


def test_table_with_failing_exit_code_is_scan_error():
    scanner, _ = scanner_with(recorded("winget_upgrade.txt"), upgrade_code=0x8A150001)
    with pytest.raises(ScanError, match="0x8A150001"):
        scanner.scan()


def test_unfittable_row_is_listed_not_guessed():
    text = recorded("winget_upgrade.txt").replace(
        "Postman                           Postman.Postman ",
        "Postman                           Post man.Postman",
    )
    scanner, _ = scanner_with(text)
    names = [r.name for r in scanner.scan()]
    assert "Postman.Postman" not in names and len(names) == 4
    assert scanner.last_unparsed == [
        "Postman                           Post man.Postman              9.8.3            9.9.3            winget"
    ]


def test_clean_lines_keeps_last_carriage_return_overwrite():
    assert clean_lines("  - \r  \\ \rName  Id\r\n----\n") == ["Name  Id", "----", ""]


# --- installer -------------------------------------------------------------------


def test_dry_run_reports_what_would_be_upgraded():
    scanner, run = scanner_with(recorded("winget_upgrade.txt"), recorded("winget_pin_list.txt"))
    result = scanner.dry_run(["Postman.Postman", "Not.There"])
    assert result.succeeded is False
    assert result.packages == [{"name": "Postman.Postman", "current_version": "9.8.3", "available_version": "9.9.3"}]
    assert "would upgrade Postman.Postman 9.8.3 -> 9.9.3 (pinned: Pinning)" in result.output_tail
    assert "Not.There: no upgrade available in machine scope" in result.output_tail
    assert all("--silent" not in call for call in run.calls)


def test_install_runs_exact_silent_machine_upgrade():
    run = FakeRun({("upgrade", "--id"): (recorded("winget_install_ok_constructed.txt"), 0)})
    result = WingetScanner(run=run, winget=WINGET).install(["Postman.Postman"])
    assert run.calls == [[WINGET, "upgrade", "--id", "Postman.Postman", "--exact", "--silent", "--scope", "machine",
                          "--accept-package-agreements", "--accept-source-agreements", "--disable-interactivity"]]
    assert result.succeeded is True and result.exit_code == 0
    assert result.packages == [{"name": "Postman.Postman", "result": "upgraded"}]
    assert "Successfully installed" in result.output_tail


def test_install_failure_maps_exit_code_honestly():
    run = FakeRun({("upgrade", "--id"): (recorded("winget_install_fail_constructed.txt"), 0x8A15002B + 0x3A)})
    result = WingetScanner(run=run, winget=WINGET).install(["Microsoft.Edge"])
    assert result.succeeded is False
    assert result.exit_code == 0x8A150065
    assert result.packages == [{"name": "Microsoft.Edge", "result": "failed", "exit_code": "0x8A150065"}]
    assert "Installer failed with exit code: 1603" in result.output_tail
    assert "FAILED, winget exited 0x8A150065" in result.output_tail


def test_install_pinned_package_failure_is_named():
    run = FakeRun({("upgrade", "--id"): ("The package has a pin that prevents upgrade.\n", 0x8A150068)})
    result = WingetScanner(run=run, winget=WINGET).install(["Microsoft.Office"])
    assert result.succeeded is False
    assert "0x8A150068 (the package has a pin that prevents upgrade)" in result.output_tail


# --- discovery ---------------------------------------------------------------------


def _fake_app_installer(root: Path, version: str) -> Path:
    folder = root / "WindowsApps" / f"Microsoft.DesktopAppInstaller_{version}_x64__8wekyb3d8bbwe"
    folder.mkdir(parents=True)
    exe = folder / "winget.exe"
    exe.write_bytes(b"MZ")
    return exe


def test_find_winget_picks_newest_app_installer_version(tmp_path):
    _fake_app_installer(tmp_path, "1.21.3482.0")
    newest = _fake_app_installer(tmp_path, "1.22.11261.0")
    _fake_app_installer(tmp_path, "1.9.25200.0")  # 1.9 < 1.22: numeric, not text, order
    (tmp_path / "WindowsApps" / "Microsoft.DesktopAppInstaller_1.23.0.0_arm64__8wekyb3d8bbwe").mkdir()
    assert find_winget(str(tmp_path), path_lookup=lambda name: None) == str(newest)


def test_find_winget_falls_back_to_path(tmp_path):
    assert find_winget(str(tmp_path), path_lookup=lambda name: r"C:\Users\me\winget.exe" if name == "winget.exe"
                       else None) == r"C:\Users\me\winget.exe"
    assert find_winget(str(tmp_path), path_lookup=lambda name: None) is None


def test_not_available_off_windows():
    assert WingetScanner(run=FakeRun({}), winget=WINGET).is_available() is False
