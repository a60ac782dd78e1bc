{% autoescape off %}#!/usr/bin/env bash
# RedFlag agent uninstaller for Linux, rendered by the RedFlag server ({{ server_url }}).
#
#   curl -sfL {{ server_url }}/install/uninstall.sh | sudo bash            # keep config and credentials
#   curl -sfL {{ server_url }}/install/uninstall.sh | sudo bash -s -- --purge   # remove them too
#
# Removes what linux.sh added: the service and its unit, the agent file(s), the system user.
# REDFLAG_PREFIX works as for linux.sh.
set -euo pipefail

SERVER_URL='{{ server_url }}'
PURGE=no
[ "${1:-}" = "--purge" ] && PURGE=yes
PREFIX="${REDFLAG_PREFIX:-}"
PREFIX="${PREFIX%/}"
CONFIG_DIR="$PREFIX/etc/redflag/agent"
LIB_DIR="$PREFIX/usr/local/lib/redflag"
UNIT="$PREFIX/etc/systemd/system/redflag-agent.service"
SERVICE=redflag-agent
SERVICE_USER=redflag

say() { printf 'redflag-uninstall: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    printf 'redflag-uninstall: ERROR: run me as root\n' >&2
    exit 1
fi

if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
    say "stopped and disabled $SERVICE"
fi
if [ -f "$UNIT" ]; then
    rm -f "$UNIT"
    say "removed $UNIT"
    if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
    fi
fi
if [ -d "$LIB_DIR" ]; then
    rm -rf "$LIB_DIR"
    say "removed $LIB_DIR (the agent and its previous version)"
fi
if [ -z "$PREFIX" ] && id "$SERVICE_USER" >/dev/null 2>&1; then
    userdel "$SERVICE_USER" || true
    say "removed system user $SERVICE_USER"
fi
if [ "$PURGE" = yes ]; then
    rm -rf "$CONFIG_DIR"
    say "removed $CONFIG_DIR (config, credentials, outbox, backups)"
else
    [ -d "$CONFIG_DIR" ] && say "kept $CONFIG_DIR (config, credentials, outbox, backups): re-installing keeps this agent's identity; re-run with --purge to delete it"
fi
say "kept the OS packages python3-requests, python3-psutil and python3-cryptography (other software may use them)"
say "kept any legacy $PREFIX/etc/aggregator directory untouched"
say "the agent is still listed on the server: revoke or delete it at $SERVER_URL/admin/ if it should not come back"
{% endautoescape %}
