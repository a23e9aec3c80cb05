#!/usr/bin/env bash
# Install (or upgrade) the fleetpulse agent on a Debian / Raspberry Pi OS gateway.
#
#   sudo deploy/install-agent.sh [--gateway-id ID] [--with-mosquitto]
#   deploy/install-agent.sh --prefix /tmp/root      # into a staging root, no systemctl
#
# What it does, each step only when needed (running it twice changes nothing the
# second time, except reinstalling the package from --source, which is how you upgrade):
#   - a venv under PREFIX/opt/fleetpulse/venv with `pip install SOURCE[agent]` (the agent
#     extra only: no central, no Spark)
#   - PREFIX/etc/fleetpulse/agent.toml from deploy/agent.example.toml, unless it exists
#     (an edited config is never overwritten); it is validated either way
#   - PREFIX/etc/fleetpulse/mqtt-password (random, 0600) and an empty central-token (0600)
#     unless they exist
#   - the systemd unit into PREFIX/etc/systemd/system/ (replaced when it changed: local
#     changes belong in a drop-in, `systemctl edit fleetpulse-agent`)
#   - with --with-mosquitto: the broker drop-in and ACL from deploy/mosquitto/ (unless
#     present) and the agent's broker account in /etc/mosquitto/fleetpulse.passwd
#   - only when installing into / on a machine running systemd: daemon-reload, enable,
#     and restart the agent if it was running (an upgrade)
# Operations guide: docs/operations.md.
set -euo pipefail

PROG=install-agent.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/
SOURCE="$(dirname "$HERE")"
PYTHON=python3
GATEWAY_ID=""
WITH_MOSQUITTO=0

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --prefix DIR       install under DIR instead of / (no systemctl, no apt); default /
  --source DIR       fleetpulse source tree to install; default: this script's checkout
  --gateway-id ID    gateway_id for a new agent.toml; default: the short host name
  --python PATH      Python >= 3.11 to build the venv with; default: python3
  --with-mosquitto   also install the gateway broker config (deploy/mosquitto)
  -h, --help         this help
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE="$2"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --gateway-id) [ $# -ge 2 ] || die "--gateway-id needs a value"; GATEWAY_ID="$2"; shift 2 ;;
        --gateway-id=*) GATEWAY_ID="${1#*=}"; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON="$2"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --with-mosquitto) WITH_MOSQUITTO=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

# --- checks before touching anything ---------------------------------------------------
[ -n "$PREFIX" ] || die "--prefix is empty: give a directory, or / for a real install"
mkdir -p "$PREFIX" || die "cannot create --prefix $PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
REAL_ROOT=0
[ "$PREFIX" = "/" ] && REAL_ROOT=1
P="${PREFIX%/}"   # so that "$P/etc" is /etc for a real install

[ -f "$SOURCE/pyproject.toml" ] && [ -d "$SOURCE/agent" ] \
    || die "--source $SOURCE is not a fleetpulse source tree (no pyproject.toml / agent/)"
SOURCE="$(cd "$SOURCE" && pwd)"
EXAMPLE="$SOURCE/deploy/agent.example.toml"
UNIT_SRC="$SOURCE/deploy/systemd/fleetpulse-agent.service"
[ -f "$EXAMPLE" ] || die "missing $EXAMPLE in --source"
[ -f "$UNIT_SRC" ] || die "missing $UNIT_SRC in --source"

if [ "$REAL_ROOT" = 1 ] && [ "$(id -u)" != 0 ]; then
    die "installing into / needs root: run it with sudo (or use --prefix DIR)"
fi
if [ "$REAL_ROOT" = 1 ] && [ ! -f /etc/debian_version ]; then
    say "warning: not a Debian-based system; the steps are the same, package names may differ"
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON': install Python >= 3.11 (apt-get install python3 python3-venv) or pass --python PATH"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" -V 2>&1) is too old: fleetpulse needs Python >= 3.11 (Debian 12 / Raspberry Pi OS bookworm have 3.11)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "'$PYTHON -m venv' is not available: apt-get install python3-venv"

if [ -z "$GATEWAY_ID" ]; then
    # host names may hold dots or other characters batch ids must not (DESIGN §5)
    GATEWAY_ID="$(hostname -s 2>/dev/null || uname -n)"
    GATEWAY_ID="$(printf '%s' "$GATEWAY_ID" | tr -c 'A-Za-z0-9_-' '-' | cut -c1-64)"
fi
[[ "$GATEWAY_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] \
    || die "gateway id '$GATEWAY_ID' is invalid: use 1-64 letters, digits, '-' or '_', starting with a letter or digit (--gateway-id ID)"

VENV="$P/opt/fleetpulse/venv"
ETC="$P/etc/fleetpulse"
CONFIG="$ETC/agent.toml"
UNIT_DIR="$P/etc/systemd/system"

# install SRC DEST MODE: copy only when DEST is missing or differs; says what it did.
install_file() {
    local src="$1" dest="$2" mode="$3"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        say "unchanged $dest"
    else
        local verb=created
        [ -f "$dest" ] && verb=updated
        install -D -m "$mode" "$src" "$dest"
        say "$verb $dest"
    fi
}

# --- the venv with the agent extra only -------------------------------------------------
if [ -x "$VENV/bin/python" ]; then
    say "kept venv $VENV"
else
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    say "created venv $VENV"
fi
say "installing fleetpulse[agent] from $SOURCE (pip) ..."
# --no-input: never wait for a prompt on a headless gateway
"$VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check "$SOURCE[agent]" \
    || die "pip could not install $SOURCE[agent] into $VENV (output above); nothing else was changed"
say "installed $("$VENV/bin/fleetpulse" --version)"

# --- config and secrets -----------------------------------------------------------------
install -d -m 0755 "$ETC"
if [ -f "$CONFIG" ]; then
    say "kept $CONFIG (never overwritten; compare with $EXAMPLE after an upgrade)"
else
    grep -q '^gateway_id = ' "$EXAMPLE" || die "$EXAMPLE has no 'gateway_id = ' line"
    tmp="$(mktemp "$ETC/.agent.toml.XXXXXX")"
    sed "s/^gateway_id = .*/gateway_id = \"$GATEWAY_ID\"/" "$EXAMPLE" >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$CONFIG"
    say "created $CONFIG (gateway_id = \"$GATEWAY_ID\")"
fi

# Secrets are root-only; the unit hands the agent private copies (LoadCredential=).
umask 077
if [ -f "$ETC/mqtt-password" ]; then
    say "kept $ETC/mqtt-password"
else
    "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$ETC/mqtt-password"
    say "created $ETC/mqtt-password (the agent's broker password)"
fi
if [ -f "$ETC/central-token" ]; then
    say "kept $ETC/central-token"
else
    : >"$ETC/central-token"
    say "created $ETC/central-token (empty until the gateway is registered)"
fi
chmod 0600 "$ETC/mqtt-password" "$ETC/central-token"
umask 022

# The config must load before the service is enabled: a typo stops here, named.
"$VENV/bin/python" - "$CONFIG" <<'EOF' || die "$CONFIG does not validate (message above); fix it and run again"
import sys
from pathlib import Path

from agent.config import load_config
from agent.errors import AgentError

try:
    cfg = load_config(Path(sys.argv[1]), environ={})
except AgentError as exc:
    print(f"install-agent.sh: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
print(f"install-agent.sh: config ok: gateway_id = {cfg.gateway_id!r}, broker {cfg.mqtt.host}:{cfg.mqtt.port}")
EOF

# --- systemd unit -----------------------------------------------------------------------
install_file "$UNIT_SRC" "$UNIT_DIR/fleetpulse-agent.service" 0644

# --- optional: the gateway broker -------------------------------------------------------
if [ "$WITH_MOSQUITTO" = 1 ]; then
    if [ "$REAL_ROOT" = 1 ] && ! command -v mosquitto_passwd >/dev/null 2>&1; then
        say "installing mosquitto (apt-get) ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients
    fi
    command -v mosquitto_passwd >/dev/null 2>&1 \
        || die "--with-mosquitto needs mosquitto_passwd: apt-get install mosquitto"
    MQ="$P/etc/mosquitto"
    for pair in "fleetpulse.conf:$MQ/conf.d/fleetpulse.conf" "fleetpulse.acl:$MQ/fleetpulse.acl"; do
        src="$SOURCE/deploy/mosquitto/${pair%%:*}" dest="${pair#*:}"
        if [ -f "$dest" ]; then
            cmp -s "$src" "$dest" && say "unchanged $dest" \
                || say "kept $dest (edited locally; compare with $src)"
        else
            install -D -m 0644 "$src" "$dest"
            say "created $dest"
        fi
    done
    PASSWD="$MQ/fleetpulse.passwd"
    if [ -f "$PASSWD" ] && grep -q '^fleetpulse-agent:' "$PASSWD"; then
        say "kept the fleetpulse-agent account in $PASSWD"
    else
        [ -f "$PASSWD" ] || install -m 0640 /dev/null "$PASSWD"
        mosquitto_passwd -b "$PASSWD" fleetpulse-agent "$(head -n1 "$ETC/mqtt-password")"
        say "added the fleetpulse-agent account to $PASSWD"
    fi
    if [ "$REAL_ROOT" = 1 ] && getent group mosquitto >/dev/null; then
        chgrp mosquitto "$PASSWD" && chmod 0640 "$PASSWD"
    fi
    [ -f "$MQ/certs/server.crt" ] \
        || say "note: no $MQ/certs/server.crt yet: the broker needs its TLS certificate (deploy/mosquitto/README.md)"
fi

# --- enable (real installs only) ----------------------------------------------------------
if [ "$REAL_ROOT" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable fleetpulse-agent.service
    # an upgrade: pick up the new code; a first install is started by the operator once the
    # broker has its certificate (docs/operations.md)
    systemctl try-restart fleetpulse-agent.service
    [ "$WITH_MOSQUITTO" = 1 ] && systemctl try-reload-or-restart mosquitto.service
    say "enabled fleetpulse-agent.service"
else
    say "not enabling anything: installed under $PREFIX (systemctl runs only for installs into / under systemd)"
fi

cat <<EOF
$PROG: done. Next steps (docs/operations.md):
  1. broker: TLS certificate and device accounts (deploy/mosquitto/README.md)
  2. register the gateway centrally and write its token to $ETC/central-token
  3. systemctl start fleetpulse-agent && journalctl -u fleetpulse-agent -f
EOF
