#!/usr/bin/env bash
# Prepare a fresh Raspberry Pi OS / Debian / Armbian board for pipeit:
# a virtual environment, pipeit installed into it, a runtime check, the topology,
# and (only with --governor) the performance cpufreq governor on every policy.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/setup-board.sh [--venv DIR] [--source DIR] [--governor] [--dry-run] [--help]

  --venv DIR     where to create the virtual environment (default: ./.venv)
  --source DIR   the pipeit source tree to install (default: this script's repository)
  --governor     set the cpufreq governor of every policy to "performance" (needs root;
                 stable clocks make profiles and benchmarks repeatable; lost at reboot)
  --dry-run      print each command instead of running it
  --help         this text

Steps: check python3 (>= 3.9) and venv; create the venv; pip install pipeit (on 32-bit ARM
with the tflite-runtime extra, numpy < 2); check the runtime loads; print `pipeit topology`.
USAGE
}

VENV=".venv"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOVERNOR=0
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --venv) VENV="${2:?--venv needs a directory}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --governor) GOVERNOR=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup-board.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

command -v python3 >/dev/null 2>&1 || { echo "setup-board.sh: python3 not found (apt-get install python3 python3-venv)" >&2; exit 1; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || { echo "setup-board.sh: python3 >= 3.9 is needed" >&2; exit 1; }
python3 -c 'import venv' 2>/dev/null || { echo "setup-board.sh: the venv module is missing (apt-get install python3-venv)" >&2; exit 1; }
[ -f "$SOURCE/pyproject.toml" ] || { echo "setup-board.sh: $SOURCE is not a pipeit source tree" >&2; exit 1; }

EXTRA=""
case "$(uname -m)" in
    armv7l|armv6l) EXTRA="[tflite-runtime]" ;;  # ai-edge-litert has no 32-bit ARM wheels
esac

echo "== virtual environment in $VENV"
run python3 -m venv "$VENV"
run "$VENV/bin/python" -m pip install --upgrade pip
echo "== installing pipeit from $SOURCE"
run "$VENV/bin/python" -m pip install "$SOURCE$EXTRA"
if [ -n "$EXTRA" ]; then
    echo "== 32-bit ARM: using the tflite-runtime backend"
    echo "   export PIPEIT_RUNTIME=tflite-runtime"
fi
echo "== runtime check"
run "$VENV/bin/python" -c 'from pipeit.runtime import runtime_info; print("runtime", runtime_info())'
echo "== topology"
run "$VENV/bin/pipeit" topology

if [ "$GOVERNOR" -eq 1 ]; then
    echo "== performance governor"
    found=0
    for policy in /sys/devices/system/cpu/cpufreq/policy*; do
        [ -e "$policy/scaling_governor" ] || continue
        found=1
        if [ "$DRY" -eq 1 ]; then
            echo "would write performance to $policy/scaling_governor"
        elif ! echo performance > "$policy/scaling_governor"; then
            echo "setup-board.sh: cannot set $policy (run as root)" >&2
            exit 1
        fi
    done
    [ "$found" -eq 1 ] || echo "no cpufreq policies here: nothing to set"
fi
echo "done. Next: tools/profile-board.sh --help"
