{% autoescape off %}#!/usr/bin/env bash
# RedFlag agent installer for Linux, rendered by the RedFlag server.
#
#   export REDFLAG_REGISTRATION_TOKEN='rf_reg_...'
#   curl -sfL {{ server_url }}/install/linux.sh | sudo --preserve-env=REDFLAG_REGISTRATION_TOKEN bash
#
# The token comes from the environment (or, without it, is asked for on the terminal), never from
# the command line: every local user can read any process's arguments (ps), but not another
# user's environment. `export` is a shell builtin, so no process is started with the token in it.
# Options (after `bash -s --`): --insecure allows a plain http:// server that is not this machine.
#
# Idempotent: re-running it upgrades the agent in place, keeps the agent's identity and never
# registers a second agent. REDFLAG_PREFIX=/some/dir installs under that directory instead of /
# (used by the test suite; systemd, the system user and OS packages are then left alone).
set -euo pipefail
umask 022

SERVER_URL='{{ server_url }}'
PLATFORM='{{ platform }}'
PREFIX="${REDFLAG_PREFIX:-}"
PREFIX="${PREFIX%/}"

CONFIG_DIR="$PREFIX/etc/redflag/agent"
CONFIG="$CONFIG_DIR/config.json"
BACKUP_DIR="$CONFIG_DIR/backups"
LEGACY_CONFIG="$PREFIX/etc/aggregator/config.json"
LIB_DIR="$PREFIX/usr/local/lib/redflag"
AGENT="$LIB_DIR/redflag-agent.pyz"
UNIT_DIR="$PREFIX/etc/systemd/system"
UNIT="$UNIT_DIR/redflag-agent.service"
SERVICE=redflag-agent
SERVICE_USER=redflag

say() { printf 'redflag-install: %s\n' "$*"; }
die() { printf 'redflag-install: ERROR: %s\n' "$*" >&2; exit 1; }
ONE_LINER="export REDFLAG_REGISTRATION_TOKEN='rf_reg_...'; curl -sfL $SERVER_URL/install/linux.sh | sudo --preserve-env=REDFLAG_REGISTRATION_TOKEN bash"

# --- 0. options and preconditions ---------------------------------------------------------------
insecure=no
for argument in "$@"; do
    case "$argument" in
        --insecure) insecure=yes ;;
        rf_reg_*) die "do not pass the registration token as an argument: every local user can read it in ps." \
                      "Use the environment instead: $ONE_LINER" ;;
        *) die "unknown option '$argument' (the only option is --insecure)" ;;
    esac
done
# Read the token now and forget the variable's export: nothing started below inherits it except
# the registration, which is given it explicitly.
TOKEN="${REDFLAG_REGISTRATION_TOKEN:-}"
export -n REDFLAG_REGISTRATION_TOKEN 2>/dev/null || true

case "$SERVER_URL" in
    https://*) ;;
    http://localhost|http://localhost:*|http://127.*|http://\[::1\]*) ;;  # this machine: nothing on the wire
    http://*)
        [ "$insecure" = yes ] || die "$SERVER_URL is plain http: the agent, its token and every command would" \
            "travel unencrypted. Set an https:// public URL on the server, or re-run with: bash -s -- --insecure"
        say "WARNING: installing from plain http ($SERVER_URL) because --insecure was given" ;;
    *) die "unsupported server URL $SERVER_URL" ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    die "run me as root, e.g.: $ONE_LINER"
fi
command -v python3 >/dev/null 2>&1 || die "python3 (3.9 or newer) is required; install it with your package manager"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "python3 is $(python3 -V 2>&1); the agent needs Python 3.9 or newer"

use_systemd=no
if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    use_systemd=yes
fi

download() {  # download URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        die "curl or wget is required"
    fi
}

# --- 1. an existing install? -------------------------------------------------------------------
existing=none
config_version() {  # the version recorded in a config file, or "unknown"
    python3 - "$1" <<'PY' 2>/dev/null || echo unknown
import json, sys
data = json.load(open(sys.argv[1]))
print(data.get("agent_version") or data.get("version") or "unknown")
PY
}
if [ -f "$CONFIG" ]; then
    existing=current
    installed_version="$(config_version "$CONFIG")"
    if [ "$installed_version" = unknown ] && [ -f "$AGENT" ]; then
        installed_version="$(python3 "$AGENT" --version 2>/dev/null | awk '{print $NF}')" || installed_version=unknown
    fi
    say "found an existing agent (config $CONFIG, version ${installed_version:-unknown}): upgrading in place"
elif [ -f "$LEGACY_CONFIG" ]; then
    existing=legacy
    say "found a legacy agent (config $LEGACY_CONFIG, version $(config_version "$LEGACY_CONFIG")):" \
        "the new agent migrates it on its first run"
else
    say "no existing agent: fresh install"
fi

# --- 2. the agent's Python dependencies, from the OS packages -------------------------------------
if python3 -c 'import requests, psutil, cryptography' >/dev/null 2>&1; then
    say "python3 modules requests, psutil and cryptography are already importable: skipping OS packages"
elif [ -n "$PREFIX" ]; then
    die "python3 lacks requests/psutil/cryptography and REDFLAG_PREFIX is set: install them first"
elif command -v apt-get >/dev/null 2>&1; then
    say "installing python3-requests python3-psutil python3-cryptography (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-requests python3-psutil python3-cryptography
elif command -v dnf >/dev/null 2>&1; then
    say "installing python3-requests python3-psutil python3-cryptography (dnf)"
    dnf install -y -q python3-requests python3-psutil python3-cryptography
else
    die "neither apt-get nor dnf found: install python3 requests, psutil and cryptography, then re-run"
fi

# --- 3. download and verify BEFORE touching the installed agent -----------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "downloading the latest agent release from $SERVER_URL"
download "$SERVER_URL/install/manifest.json?platform=$PLATFORM" "$work/manifest.json" \
    || die "could not fetch the release manifest (has an admin built a release?)"
download "$SERVER_URL/api/v1/signing-keys" "$work/keys.json" || die "could not fetch the server's signing keys"
download "$SERVER_URL/install/redflag-agent.pyz?platform=$PLATFORM" "$work/redflag-agent.pyz" \
    || die "could not download the agent"

# Size, SHA-256, then the Ed25519 signature over the canonical manifest — the same bytes as
# agent_client.protocol.release_manifest_bytes.
new_version="$(python3 - "$work/manifest.json" "$work/keys.json" "$work/redflag-agent.pyz" <<'PY'
import base64, hashlib, json, os, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

manifest = json.load(open(sys.argv[1]))
keys = {key["key_id"]: key["public_key"] for key in json.load(open(sys.argv[2]))["keys"]}
artifact = sys.argv[3]

def fail(message):
    sys.stderr.write("redflag-install: ERROR: %s\n" % message)
    sys.exit(1)

if os.path.getsize(artifact) != manifest["size"]:
    fail("downloaded agent has %d bytes, the manifest says %d" % (os.path.getsize(artifact), manifest["size"]))
digest = hashlib.sha256(open(artifact, "rb").read()).hexdigest()
if digest != manifest["sha256"]:
    fail("downloaded agent's SHA-256 %s does not match the manifest's %s" % (digest, manifest["sha256"]))
if manifest["key_id"] not in keys:
    fail("the manifest is signed by unknown key %s" % manifest["key_id"])
signed = json.dumps({"v": 1, "purpose": "redflag-agent-release", "version": manifest["version"],
                     "platform": manifest["platform"], "size": int(manifest["size"]), "sha256": manifest["sha256"],
                     "created": int(manifest["created"])},
                    sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
try:
    Ed25519PublicKey.from_public_bytes(base64.b64decode(keys[manifest["key_id"]])).verify(
        base64.b64decode(manifest["signature"]), signed)
except (InvalidSignature, ValueError):
    fail("the manifest's signature does not verify")
print(manifest["version"])
PY
)" || die "verification failed: nothing was installed or changed"
say "verified redflag-agent $new_version (size, SHA-256 and signature)"

# --- 4. back up the config, stop the service ------------------------------------------------------
mkdir -p "$CONFIG_DIR"
chmod 0700 "$CONFIG_DIR"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for source in "$CONFIG" "$LEGACY_CONFIG"; do
    if [ -f "$source" ]; then
        mkdir -p "$BACKUP_DIR"
        chmod 0700 "$BACKUP_DIR"
        name="config-$stamp.json"
        [ "$source" = "$LEGACY_CONFIG" ] && name="legacy-config-$stamp.json"
        cp -p "$source" "$BACKUP_DIR/$name"
        chmod 0600 "$BACKUP_DIR/$name"
        say "backed up $source to $BACKUP_DIR/$name"
    fi
done
if [ "$use_systemd" = yes ] && systemctl is-active --quiet "$SERVICE"; then
    say "stopping $SERVICE before replacing the agent"
    systemctl stop "$SERVICE"
fi

# --- 5. system user (the service runs as root: installing OS updates needs it) ---------------------
if [ -z "$PREFIX" ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        nologin="$(command -v nologin || echo /usr/sbin/nologin)"
        useradd --system --no-create-home --home-dir /nonexistent --shell "$nologin" "$SERVICE_USER"
        say "created system user $SERVICE_USER (owns $LIB_DIR)"
    fi
fi

# --- 6. install the agent file (the previous one is kept) --------------------------------------
mkdir -p "$LIB_DIR"
if [ -f "$AGENT" ]; then
    cp -p "$AGENT" "$AGENT.previous"
fi
install -m 0755 "$work/redflag-agent.pyz" "$AGENT.new"
mv -f "$AGENT.new" "$AGENT"
if [ -z "$PREFIX" ]; then
    chown -R root:"$SERVICE_USER" "$LIB_DIR"
fi
say "installed $AGENT ($new_version)"

# --- 7. the service unit ------------------------------------------------------------------------
mkdir -p "$UNIT_DIR"
cat > "$UNIT" <<UNIT
[Unit]
Description=RedFlag update agent
Documentation=$SERVER_URL
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
# Root, because the agent installs OS updates; the rest is locked down.
User=root
ExecStart=/usr/bin/env python3 $AGENT --config $CONFIG run
Restart=always
RestartSec=10
PrivateTmp=yes
ProtectHome=read-only
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
UMask=0077

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 "$UNIT"
say "wrote $UNIT"

# --- 8. register only when not registered yet -----------------------------------------------------
registered=no
if [ -f "$CONFIG" ] && python3 - "$CONFIG" <<'PY' >/dev/null 2>&1
import json, sys
data = json.load(open(sys.argv[1]))
sys.exit(0 if data.get("agent_id") and data.get("refresh_token") else 1)
PY
then
    registered=yes
fi
if [ "$registered" = yes ]; then
    say "already registered: keeping the agent's identity (no new registration)"
elif [ "$existing" = legacy ]; then
    say "legacy install: not registering; 'run' migrates $LEGACY_CONFIG and keeps its agent id"
else
    if [ -z "$TOKEN" ] && { : < /dev/tty > /dev/tty; } 2>/dev/null; then  # a terminal to ask on
        printf 'redflag-install: registration token (input hidden): ' > /dev/tty
        IFS= read -rs TOKEN < /dev/tty || TOKEN=""
        printf '\n' > /dev/tty
    fi
    [ -n "$TOKEN" ] || die "no registration token: $ONE_LINER"
    say "registering with $SERVER_URL"
    register_options=()
    [ "$insecure" = yes ] && register_options+=(--insecure)
    # The token reaches the agent in its environment only, never on a command line (ps).
    REDFLAG_REGISTRATION_TOKEN="$TOKEN" python3 "$AGENT" --config "$CONFIG" register --server "$SERVER_URL" \
        ${register_options[@]+"${register_options[@]}"} \
        || die "registration failed (see the message above); the agent is installed, re-run with a valid token"
fi

# --- 9. start ----------------------------------------------------------------------------------
if [ "$use_systemd" = yes ]; then
    systemctl daemon-reload
    systemctl enable "$SERVICE" >/dev/null
    systemctl restart "$SERVICE"
    say "started $SERVICE (systemctl status $SERVICE; journalctl -u $SERVICE)"
else
    say "systemd is not available here: the unit was written to $UNIT but not started."
    say "start the agent with your init system or supervisor: python3 $AGENT --config $CONFIG run"
fi
say "done: redflag-agent $new_version"
{% endautoescape %}
