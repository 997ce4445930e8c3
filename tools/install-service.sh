#!/usr/bin/env bash
# Install tools/pipeit.service: a "pipeit" system user and group, /etc/pipeit/pipeit.env,
# the unit with this checkout's paths filled in, then enable and start it.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/install-service.sh --model FILE [--platform SPEC] [--venv DIR] [--args "..."]
                                [--unit-dir DIR] [--dry-run] [--help]

  --model FILE     the .tflite the daemon serves (copied to /var/lib/pipeit/model.tflite)
  --platform SPEC  platform spec (default: auto)
  --venv DIR       the virtual environment holding pipeit (default: this checkout's .venv)
  --args "..."     extra `pipeit serve` options, e.g. "--predictor /var/lib/pipeit/board/predictor.json"
  --unit-dir DIR   where to write the unit (default: /etc/systemd/system)
  --dry-run        print what would be done, change nothing
  --help           this text

Needs root (except with --dry-run). Clients must be in group "pipeit" to use the socket.
USAGE
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL=""
PLATFORM="auto"
VENV="$HERE/.venv"
ARGS=""
UNIT_DIR="/etc/systemd/system"
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) MODEL="${2:?--model needs a file}"; shift 2 ;;
        --platform) PLATFORM="${2:?--platform needs a spec}"; shift 2 ;;
        --venv) VENV="${2:?--venv needs a directory}"; shift 2 ;;
        --args) ARGS="${2?--args needs a string}"; shift 2 ;;
        --unit-dir) UNIT_DIR="${2:?--unit-dir needs a directory}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-service.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ -n "$MODEL" ] || { echo "install-service.sh: --model is required (see --help)" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "install-service.sh: $MODEL: no such model file" >&2; exit 2; }
if [ "$DRY" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-service.sh: run as root (or with --dry-run)" >&2
    exit 1
fi

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

write() {  # write FILE: stdin -> FILE
    if [ "$DRY" -eq 1 ]; then
        echo "would write $1:"
        sed 's/^/    /'
    else
        cat > "$1"
    fi
}

if ! getent group pipeit >/dev/null 2>&1; then run groupadd --system pipeit; fi
if ! getent passwd pipeit >/dev/null 2>&1; then
    run useradd --system --gid pipeit --home-dir /var/lib/pipeit --shell /usr/sbin/nologin pipeit
fi
run install -d -m 0750 -o pipeit -g pipeit /var/lib/pipeit
run install -m 0640 -o pipeit -g pipeit "$MODEL" /var/lib/pipeit/model.tflite
run install -d -m 0755 /etc/pipeit
write /etc/pipeit/pipeit.env <<ENV
PIPEIT_MODEL=/var/lib/pipeit/model.tflite
PIPEIT_PLATFORM=$PLATFORM
PIPEIT_ARGS=$ARGS
ENV
sed -e "s|@VENV@|$VENV|g" -e "s|@PREFIX@|$HERE|g" "$HERE/tools/pipeit.service" | write "$UNIT_DIR/pipeit.service"
run systemctl daemon-reload
run systemctl enable --now pipeit.service
echo "installed. Check with: systemctl status pipeit; pipeit status --socket /run/pipeit/pipeit.sock"
