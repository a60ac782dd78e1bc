{% autoescape off %}<#
  RedFlag agent installer for Windows, rendered by the RedFlag server.

    $env:REDFLAG_REGISTRATION_TOKEN='rf_reg_...'; & ([scriptblock]::Create((irm {{ server_url }}/install/windows.ps1)))

  The token comes from the environment of this PowerShell session, never from a command line: other
  users can read any process's command line, not its environment.

  Idempotent: re-running upgrades in place and keeps the agent's identity. Run as Administrator.
  Not yet exercised on a real Windows host by the test suite (rendered and statically checked only).
#>
param(
    [Parameter(Position = 0)] [string] $Token = $env:REDFLAG_REGISTRATION_TOKEN
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$ServerUrl = '{{ server_url }}'
$Platform = '{{ platform }}'
$InstallDir = Join-Path $env:ProgramFiles 'RedFlag'
$StateDir = Join-Path $env:ProgramData 'RedFlag\agent'
$Config = Join-Path $StateDir 'config.json'
$BackupDir = Join-Path $StateDir 'backups'
$Agent = Join-Path $InstallDir 'redflag-agent.pyz'
$TaskName = 'RedFlag Agent'

function Say([string] $Message) { Write-Host "redflag-install: $Message" }
function Fail([string] $Message) { Write-Error "redflag-install: ERROR: $Message"; exit 1 }

# 0. Administrator, Python 3.9+ with the agent's modules
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 'run me from an elevated (Administrator) PowerShell'
}
$Python = $null
foreach ($candidate in @('py', 'python', 'python3')) {
    $command = Get-Command $candidate -ErrorAction SilentlyContinue
    if ($command) {
        $arguments = @()
        if ($candidate -eq 'py') { $arguments = @('-3') }
        & $command.Source @arguments -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>$null
        if ($LASTEXITCODE -eq 0) {
            $Python = (& $command.Source @arguments -c 'import sys; print(sys.executable)').Trim()
            break
        }
    }
}
if (-not $Python) {
    Fail 'Python 3.9 or newer is required: install it from https://www.python.org/downloads/windows/ (tick "Add python.exe to PATH") or with: winget install Python.Python.3.12 - then re-run this installer'
}
& $Python -c 'import requests, psutil, cryptography' 2>$null
if ($LASTEXITCODE -ne 0) {
    Say 'installing the Python modules requests, psutil and cryptography (pip)'
    & $Python -m pip install --disable-pip-version-check --quiet requests psutil cryptography
    if ($LASTEXITCODE -ne 0) { Fail 'pip could not install requests, psutil and cryptography' }
}

# 1. An existing install?
$Existing = Test-Path $Config
if ($Existing) {
    $current = Get-Content -Raw $Config | ConvertFrom-Json
    $version = 'unknown'
    if ($current.PSObject.Properties.Name -contains 'agent_version') { $version = $current.agent_version }
    Say "found an existing agent ($Config, version $version): upgrading in place"
} else {
    Say 'no existing agent: fresh install'
}

# 2. Download and verify BEFORE touching the installed agent
$Work = Join-Path ([IO.Path]::GetTempPath()) ("redflag-" + [Guid]::NewGuid())
New-Item -ItemType Directory -Path $Work | Out-Null
try {
    [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
    Invoke-WebRequest -UseBasicParsing -Uri "$ServerUrl/install/manifest.json?platform=$Platform" -OutFile (Join-Path $Work 'manifest.json')
    Invoke-WebRequest -UseBasicParsing -Uri "$ServerUrl/api/v1/signing-keys" -OutFile (Join-Path $Work 'keys.json')
    Invoke-WebRequest -UseBasicParsing -Uri "$ServerUrl/install/redflag-agent.pyz?platform=$Platform" -OutFile (Join-Path $Work 'redflag-agent.pyz')

    $manifest = Get-Content -Raw (Join-Path $Work 'manifest.json') | ConvertFrom-Json
    $hash = (Get-FileHash -Algorithm SHA256 (Join-Path $Work 'redflag-agent.pyz')).Hash.ToLowerInvariant()
    if ($hash -ne $manifest.sha256) { Fail "the downloaded agent's SHA-256 $hash does not match the manifest" }
    if ((Get-Item (Join-Path $Work 'redflag-agent.pyz')).Length -ne $manifest.size) { Fail 'the downloaded agent has the wrong size' }
    # The Ed25519 signature over agent_client.protocol.release_manifest_bytes, checked with Python's cryptography.
    $verify = @'
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
manifest = json.load(open(sys.argv[1]))
keys = dict((k["key_id"], k["public_key"]) for k in json.load(open(sys.argv[2]))["keys"])
signed = json.dumps({"v": 1, "purpose": "redflag-agent-release", "version": manifest["version"],
                     "platform": manifest["platform"], "size": int(manifest["size"]), "sha256": manifest["sha256"],
                     "created": int(manifest["created"])}, sort_keys=True, separators=(",", ":"),
                    ensure_ascii=False).encode("utf-8")
Ed25519PublicKey.from_public_bytes(base64.b64decode(keys[manifest["key_id"]])).verify(
    base64.b64decode(manifest["signature"]), signed)
'@
    $verifyScript = Join-Path $Work 'verify.py'
    Set-Content -Path $verifyScript -Value $verify -Encoding ASCII
    & $Python $verifyScript (Join-Path $Work 'manifest.json') (Join-Path $Work 'keys.json')
    if ($LASTEXITCODE -ne 0) { Fail 'the release signature does not verify: nothing was installed' }
    Say "verified redflag-agent $($manifest.version) (size, SHA-256 and signature)"

    # 3. Back up the config, stop the running agent, replace the file (keeping the previous one)
    New-Item -ItemType Directory -Force -Path $StateDir, $InstallDir | Out-Null
    if ($Existing) {
        New-Item -ItemType Directory -Force -Path $BackupDir | Out-Null
        $backup = Join-Path $BackupDir ("config-" + (Get-Date).ToUniversalTime().ToString('yyyyMMddTHHmmssZ') + ".json")
        Copy-Item $Config $backup
        Say "backed up the config to $backup"
    }
    if (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue) {
        Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    }
    if (Test-Path $Agent) { Copy-Item -Force $Agent "$Agent.previous" }
    Copy-Item -Force (Join-Path $Work 'redflag-agent.pyz') $Agent
    Say "installed $Agent"
} finally {
    Remove-Item -Recurse -Force $Work -ErrorAction SilentlyContinue
}

# 4. Register only when not registered yet
$registered = $false
if (Test-Path $Config) {
    $current = Get-Content -Raw $Config | ConvertFrom-Json
    $registered = [bool]($current.PSObject.Properties.Name -contains 'agent_id' -and $current.agent_id)
}
if ($registered) {
    Say 'already registered: keeping the agent identity (no new registration)'
} else {
    if (-not $Token) { Fail "no registration token: first run `$env:REDFLAG_REGISTRATION_TOKEN='rf_reg_...' in this PowerShell" }
    $env:REDFLAG_REGISTRATION_TOKEN = $Token
    & $Python $Agent --config $Config register --server $ServerUrl
    Remove-Item Env:REDFLAG_REGISTRATION_TOKEN
    if ($LASTEXITCODE -ne 0) { Fail 'registration failed (see above); re-run with a valid token' }
}

# 5. A SYSTEM start-up task that survives reboots and restarts the agent if it stops
$action = New-ScheduledTaskAction -Execute $Python -Argument "`"$Agent`" --config `"$Config`" run"
$trigger = New-ScheduledTaskTrigger -AtStartup
$settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -ExecutionTimeLimit ([TimeSpan]::Zero) -StartWhenAvailable
$principalTask = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings -Principal $principalTask -Force | Out-Null
Start-ScheduledTask -TaskName $TaskName
Say "started the '$TaskName' task (runs as SYSTEM at every start-up)"
{% endautoescape %}
