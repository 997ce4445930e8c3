#!/usr/bin/env bash
# Prepare a fresh Raspberry Pi OS / Debian / Armbian board for pipeit:
# a virtual environment, pipeit installed into it, a runtime check, the topology,
# and (only with --governor) the performance cpufreq governor on every policy.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/setup-board.sh [--venv DIR] [--source DIR] [--gpu] [--governor] [--check] [--dry-run] [--help]

  --venv DIR     where to create the virtual environment (default: this checkout's .venv,
                 where the other board scripts look for it)
  --source DIR   the pipeit source tree to install (default: this script's repository)
  --gpu          also install pyopencl (the "gpu" extra), so that `--platform auto` finds the
                 board's OpenCL GPU; the vendor's OpenCL driver (ICD) must be installed already
  --governor     set the cpufreq governor of every policy to "performance" (needs root;
                 stable clocks make profiles and benchmarks repeatable; lost at reboot)
  --check        only the runtime check and the topology, in an existing venv
                 (e.g. after changing PIPEIT_RUNTIME); installs nothing
  --dry-run      print each command instead of running it
  --help         this text

Steps: check python3 (>= 3.9) and venv; create the venv; pip install pipeit (on 32-bit ARM
with the tflite-runtime extra, numpy < 2, and PIPEIT_RUNTIME=tflite-runtime for the later
steps); check the runtime loads (it builds an interpreter on a tiny model and runs it: a
runtime that is missing or broken stops here with one line); print `pipeit topology`.
USAGE
}

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="$HERE"
VENV="$HERE/.venv"  # the same default as install-service.sh and the --pipeit default of the others
GOVERNOR=0
GPU=0
CHECK=0
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --venv) need "a directory" "$@"; VENV="$2"; shift 2 ;;
        --source) need "a directory" "$@"; SOURCE="$2"; shift 2 ;;
        --governor) GOVERNOR=1; shift ;;
        --gpu) GPU=1; shift ;;
        --check) CHECK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die 2 "unknown option $1 (see --help)" ;;
    esac
done

EXTRAS=""
ARM32=0
case "$(uname -m)" in
    armv7l|armv6l)  # ai-edge-litert has no 32-bit ARM wheels
        ARM32=1
        EXTRAS="tflite-runtime"
        export PIPEIT_RUNTIME=tflite-runtime ;;  # for the runtime check and topology below
esac
if [ "$GPU" -eq 1 ]; then EXTRAS="${EXTRAS:+$EXTRAS,}gpu"; fi
EXTRA="${EXTRAS:+[$EXTRAS]}"

if [ "$CHECK" -eq 1 ]; then
    [ "$DRY" -eq 1 ] || [ -x "$VENV/bin/python" ] || die 1 "$VENV: no virtual environment (run without --check first)"
else
    command -v python3 >/dev/null 2>&1 || die 1 "python3 not found (apt-get install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' || die 1 "python3 >= 3.9 is needed"
    python3 -c 'import venv' 2>/dev/null || die 1 "the venv module is missing (apt-get install python3-venv)"
    [ -f "$SOURCE/pyproject.toml" ] || die 1 "$SOURCE is not a pipeit source tree"

    echo "== virtual environment in $VENV"
    run python3 -m venv "$VENV"
    run "$VENV/bin/python" -m pip install --upgrade pip
    echo "== installing pipeit from $SOURCE"
    run "$VENV/bin/python" -m pip install "$SOURCE$EXTRA"
    if [ "$ARM32" -eq 1 ]; then
        echo "== 32-bit ARM: using the tflite-runtime backend (set for the steps below; for your shell:)"
        echo "   export PIPEIT_RUNTIME=tflite-runtime"
    fi
fi

# The runtime check: build an interpreter on a tiny model and run it once, with the backend
# PIPEIT_RUNTIME names (pipeit's default when unset). Any failure is one line and exit 1.
RUNTIME_CHECK='import sys
try:
    from pipeit.runtime import make_interpreter, native_stderr_silenced, runtime_info
    from pipeit.tflite_builder import ModelBuilder
    info = runtime_info()
    builder = ModelBuilder(seed=0)
    x = builder.input("image", (1, 8, 8, 4))
    builder.output(builder.conv2d(x, 4, kernel=3, activation="RELU"))
    with native_stderr_silenced():
        make_interpreter(builder.to_bytes()).invoke()
except Exception as err:
    sys.exit("setup-board.sh: runtime check failed: %s" % (str(err).strip().splitlines() or [type(err).__name__])[0])
print("runtime", info, "loads and runs a model")'
echo "== runtime check (PIPEIT_RUNTIME=${PIPEIT_RUNTIME:-unset: pipeit default})"
run "$VENV/bin/python" -c "$RUNTIME_CHECK"
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
            die 1 "cannot set $policy (run as root)"
        fi
    done
    [ "$found" -eq 1 ] || echo "no cpufreq policies here: nothing to set"
fi
echo "done. Next: tools/profile-board.sh --help"
