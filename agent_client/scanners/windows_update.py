"""Windows Update scanner and installer (Windows Update Agent COM API).

A PowerShell script (kept here as a string so the agent also works from a
zipapp) asks ``Microsoft.Update.Session`` for
``IsInstalled=0 and IsHidden=0`` and prints JSON, one object per update:
``update_id``, ``revision``, ``title``, ``kb_ids``, ``msrc_severity``,
``cve_ids``, ``max_download_size``, ``categories``, ``reboot_behavior``,
``is_downloaded``, ``support_url``. Non-ASCII characters are escaped as
``\\uXXXX`` by the script so the console code page cannot garble them.

Records: ``name`` is the update id (GUID): stable across revisions and exactly
what the installer needs. The title is in metadata. ``current_version`` is
"" (Windows Update has no installed version of a pending update);
``available_version`` is the KB ids joined with "," or ``revision N`` when the
update has no KB (drivers).

Scripts are fed through stdin to ``powershell.exe -Command -``. In that mode
PowerShell reads statements the way its prompt does: a blank line ends a
multi-line block, so the scripts are sent without blank lines and end with one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Optional

from agent_client.protocol import PackageType
from agent_client.scanners.base import (
    CommandOutput,
    CommandRunner,
    OperationResult,
    ScanError,
    Scanner,
    UpdateRecord,
    run_command,
    tail,
)

POWERSHELL_ARGS = ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-Command", "-"]

MSRC_SEVERITY = {"critical": "critical", "important": "important", "moderate": "moderate", "low": "low"}
SECURITY_CATEGORY = "Security Updates"

# OperationResultCode of the Windows Update Agent API.
RESULT_CODES = {0: "not started", 1: "in progress", 2: "succeeded", 3: "succeeded with errors", 4: "failed",
                5: "aborted"}
RESULT_SUCCEEDED = 2


# Shared tail: turn $out into ASCII-only JSON on stdout; errors become {"error": ...}, exit 1.
_EMIT_JSON = r"""
function Write-AsciiJson($value) {
    $json = ConvertTo-Json -InputObject $value -Depth 5 -Compress
    [regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
}
"""

SEARCH_SCRIPT = _EMIT_JSON + r"""
$ErrorActionPreference = 'Stop'
try {
    $session = New-Object -ComObject Microsoft.Update.Session
    $session.ClientApplicationID = 'RedFlag agent'
    $searcher = $session.CreateUpdateSearcher()
    $result = $searcher.Search('IsInstalled=0 and IsHidden=0')
    $out = @()
    foreach ($u in $result.Updates) {
        $out += [PSCustomObject]@{
            update_id = [string]$u.Identity.UpdateID
            revision = [int]$u.Identity.RevisionNumber
            title = [string]$u.Title
            kb_ids = @($u.KBArticleIDs | ForEach-Object { [string]$_ })
            msrc_severity = [string]$u.MsrcSeverity
            cve_ids = @($u.CveIDs | ForEach-Object { [string]$_ })
            max_download_size = [int64]$u.MaxDownloadSize
            categories = @($u.Categories | ForEach-Object { [string]$_.Name })
            reboot_behavior = [int]$u.InstallationBehavior.RebootBehavior
            is_downloaded = [bool]$u.IsDownloaded
            support_url = [string]$u.SupportUrl
        }
    }
    Write-AsciiJson @($out)
} catch {
    Write-AsciiJson ([PSCustomObject]@{ error = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) })
    exit 1
}
"""

# __IDS__ is replaced by a PowerShell array of GUIDs (validated), __DRY_RUN__ by $true/$false.
INSTALL_SCRIPT = _EMIT_JSON + r"""
$ErrorActionPreference = 'Stop'
$ids = @(__IDS__)
$dryRun = __DRY_RUN__
try {
    $session = New-Object -ComObject Microsoft.Update.Session
    $session.ClientApplicationID = 'RedFlag agent'
    $searcher = $session.CreateUpdateSearcher()
    $result = $searcher.Search('IsInstalled=0 and IsHidden=0')
    $selected = New-Object -ComObject Microsoft.Update.UpdateColl
    $found = @()
    foreach ($u in $result.Updates) {
        if ($ids -contains [string]$u.Identity.UpdateID) {
            if (-not $dryRun -and -not $u.EulaAccepted) { $u.AcceptEula() }
            [void]$selected.Add($u)
            $found += [PSCustomObject]@{
                update_id = [string]$u.Identity.UpdateID
                title = [string]$u.Title
                kb_ids = @($u.KBArticleIDs | ForEach-Object { [string]$_ })
                max_download_size = [int64]$u.MaxDownloadSize
            }
        }
    }
    $missing = @($ids | Where-Object { @($found | ForEach-Object { $_.update_id }) -notcontains $_ })
    if ($dryRun -or $selected.Count -eq 0) {
        Write-AsciiJson ([PSCustomObject]@{ dry_run = $dryRun; updates = @($found); missing = $missing })
        exit 0
    }
    $downloader = $session.CreateUpdateDownloader()
    $downloader.Updates = $selected
    $download = $downloader.Download()
    $installer = $session.CreateUpdateInstaller()
    $installer.Updates = $selected
    $install = $installer.Install()
    $perUpdate = @()
    for ($i = 0; $i -lt $selected.Count; $i++) {
        $r = $install.GetUpdateResult($i)
        $perUpdate += [PSCustomObject]@{
            update_id = [string]$selected.Item($i).Identity.UpdateID
            title = [string]$selected.Item($i).Title
            result_code = [int]$r.ResultCode
            hresult = ('0x{0:X8}' -f $r.HResult)
        }
    }
    Write-AsciiJson ([PSCustomObject]@{
        dry_run = $false
        download_result_code = [int]$download.ResultCode
        result_code = [int]$install.ResultCode
        hresult = ('0x{0:X8}' -f $install.HResult)
        reboot_required = [bool]$install.RebootRequired
        updates = @($perUpdate)
        missing = $missing
    })
} catch {
    Write-AsciiJson ([PSCustomObject]@{ error = $_.Exception.Message; hresult = ('0x{0:X8}' -f $_.Exception.HResult) })
    exit 1
}
"""

def stdin_script(script: str) -> str:
    """The script as ``-Command -`` must receive it: no blank lines, one at the end."""
    return "\n".join(line for line in script.splitlines() if line.strip()) + "\n\n"


def parse_json_output(stdout: str, what: str) -> Any:
    """Parse the script's JSON, tolerating a BOM and stray lines before it."""
    text = stdout.lstrip("\ufeff").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for marker in ("[", "{"):
        start = text.find("\n" + marker)
        if start >= 0:
            try:
                return json.loads(text[start + 1:])
            except ValueError:
                continue
    raise ScanError(f"{what} printed something that is not JSON: {text[:200]!r}")


def _as_list(value: Any) -> list[Any]:
    """PowerShell gives a scalar (or null) where a one-item (or empty) array was meant."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def map_msrc_severity(value: Any) -> str:
    return MSRC_SEVERITY.get(str(value or "").strip().lower(), "unknown")


def _kb(value: Any) -> str:
    text = str(value).strip()
    return text if text.upper().startswith("KB") else f"KB{text}"


class WindowsUpdateScanner(Scanner):
    package_type = PackageType.WINDOWS_UPDATE

    def __init__(self, run: Optional[CommandRunner] = None, powershell: Optional[str] = None,
                 timeout: float = 3600) -> None:
        self.run = run or run_command
        self.powershell = powershell or _default_powershell()
        self.timeout = timeout

    def is_available(self) -> bool:
        if sys.platform != "win32":
            return False
        return os.path.isfile(self.powershell) or shutil.which(self.powershell) is not None

    def _run_script(self, script: str) -> CommandOutput:
        return self.run([self.powershell] + POWERSHELL_ARGS, timeout=self.timeout, stdin=stdin_script(script))

    def scan(self) -> list[UpdateRecord]:
        output = self._run_script(SEARCH_SCRIPT)
        data = parse_json_output(output.stdout, "Windows Update search")
        if isinstance(data, dict) and "error" in data:
            raise ScanError(f"Windows Update search failed: {data.get('error')} ({data.get('hresult', '')})")
        if output.exit_code != 0:
            raise ScanError(
                f"Windows Update search exited {output.exit_code}: {tail(output.stderr or output.stdout, 500)}"
            )
        return [self._record(item) for item in _as_list(data)]

    def _record(self, item: Any) -> UpdateRecord:
        if not isinstance(item, dict) or not item.get("update_id") or not item.get("title"):
            raise ScanError(f"Windows Update search returned an entry without id or title: {item!r}"[:300])
        kb_ids = [_kb(kb) for kb in _as_list(item.get("kb_ids")) if str(kb).strip()]
        categories = [str(c) for c in _as_list(item.get("categories"))]
        severity = map_msrc_severity(item.get("msrc_severity"))
        size = item.get("max_download_size")
        revision = item.get("revision")
        return UpdateRecord(
            package_type=self.package_type,
            name=str(item["update_id"]),
            current_version="",
            available_version=",".join(kb_ids) or f"revision {revision}",
            severity=severity,
            is_security=SECURITY_CATEGORY in categories or severity != "unknown",
            repository="Windows Update",
            size_bytes=int(size) if isinstance(size, (int, float)) and size > 0 else None,
            cve_ids=[str(c) for c in _as_list(item.get("cve_ids")) if str(c).strip()],
            kb_ids=kb_ids,
            metadata={
                "title": str(item["title"]),
                "update_id": str(item["update_id"]),
                "revision": revision,
                "categories": categories,
                "msrc_severity": str(item.get("msrc_severity") or ""),
                "reboot_behavior": item.get("reboot_behavior"),
                "is_downloaded": bool(item.get("is_downloaded")),
                "support_url": str(item.get("support_url") or ""),
            },
        )

    def _operation(self, names: list[str], dry_run: bool) -> OperationResult:
        # The ids go into the script's text, not onto a command line (so there is no "--" to
        # give): only a GUID reaches here, which is what the windows_update grammar admits.
        started = time.monotonic()
        ids = ",".join(f"'{name.lower()}'" for name in names)
        script = INSTALL_SCRIPT.replace("__IDS__", ids).replace("__DRY_RUN__", "$true" if dry_run else "$false")
        try:
            output = self._run_script(script)
            data = parse_json_output(output.stdout, "Windows Update install")
        except ScanError as exc:
            return OperationResult(False, 1, str(exc), time.monotonic() - started)
        raw = tail(output.stdout + ("\n" + output.stderr if output.stderr else ""))
        if not isinstance(data, dict) or "error" in data:
            message = data.get("error") if isinstance(data, dict) else "no result printed"
            return OperationResult(False, output.exit_code or 1, tail(f"Windows Update failed: {message}\n{raw}"),
                                   time.monotonic() - started)
        missing = [str(m) for m in _as_list(data.get("missing"))]
        updates = [u for u in _as_list(data.get("updates")) if isinstance(u, dict)]
        lines = [f"not offered (installed, hidden or unknown): {m}" for m in missing]
        packages: list[dict[str, str]] = []
        ok = not missing and output.exit_code == 0
        if dry_run:
            for update in updates:
                kbs = ",".join(_kb(kb) for kb in _as_list(update.get("kb_ids")))
                packages.append({"name": str(update.get("update_id")), "title": str(update.get("title")),
                                 "available_version": kbs, "size_bytes": str(update.get("max_download_size", ""))})
                lines.append(f"would install {update.get('title')} [{update.get('update_id')}]")
        else:
            overall = data.get("result_code")
            reboot = bool(data.get("reboot_required"))
            ok = ok and overall == RESULT_SUCCEEDED
            for update in updates:
                code = update.get("result_code")
                ok = ok and code == RESULT_SUCCEEDED
                packages.append({"name": str(update.get("update_id")), "title": str(update.get("title")),
                                 "result": RESULT_CODES.get(code, f"code {code}"),
                                 "hresult": str(update.get("hresult", "")),
                                 "reboot_required": "true" if reboot else "false"})
                lines.append(f"{update.get('title')}: {RESULT_CODES.get(code, code)} ({update.get('hresult')})")
            download = data.get("download_result_code")
            lines.append(f"download: {RESULT_CODES.get(download, download)}; "
                         f"install: {RESULT_CODES.get(overall, overall)}; reboot required: {reboot}")
        return OperationResult(
            succeeded=ok,
            exit_code=0 if ok else (output.exit_code or 1),
            output_tail=tail("\n".join(lines)),
            duration_seconds=time.monotonic() - started,
            packages=packages,
        )

    def _dry_run(self, names: list[str]) -> OperationResult:
        return self._operation(names, dry_run=True)

    def _install(self, names: list[str]) -> OperationResult:
        return self._operation(names, dry_run=False)


def _default_powershell() -> str:
    root = os.environ.get("SystemRoot", r"C:\Windows")
    path = os.path.join(root, "System32", "WindowsPowerShell", "v1.0", "powershell.exe")
    return path if os.path.isfile(path) else "powershell.exe"
