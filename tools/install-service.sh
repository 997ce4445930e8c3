#!/usr/bin/env bash
# Install tools/pipeit.service: a "pipeit" system user and group, /var/lib/pipeit with the
# model (and the predictor), /etc/pipeit/pipeit.env, the unit with this checkout's paths
# filled in, then enable and start it. Everything is checked before anything is changed.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/install-service.sh --model FILE [--predictor FILE] [--platform SPEC] [--runtime NAME]
                                [--venv DIR] [--args "..."] [--unit-dir DIR] [--dry-run] [--help]

  --model FILE      the .tflite the daemon serves (copied to /var/lib/pipeit/model.tflite)
  --predictor FILE  a fitted predictor, e.g. the predictor.json that tools/profile-board.sh
                    wrote and printed (copied to /var/lib/pipeit/predictor.json; the daemon
                    plans with it). Without it the daemon profiles the model on first start.
  --platform SPEC   platform spec (default: auto); use the one you profiled with
  --runtime NAME    PIPEIT_RUNTIME for the daemon: ai-edge-litert or tflite-runtime
                    (default: $PIPEIT_RUNTIME, else tflite-runtime on 32-bit ARM, else pipeit's default)
  --venv DIR        the virtual environment holding pipeit (default: this checkout's .venv,
                    where tools/setup-board.sh installs it); DIR/bin/pipeit must exist
  --args "..."      extra `pipeit serve` options, e.g. "--max-clients 16 --per-client 8"; split
                    at whitespace (no quoting: an option value cannot contain a space). Not --nice:
                    the unit's Nice= sets the priority (-5), and the service has no capability to
                    change it
  --unit-dir DIR    where to write the unit (default: /etc/systemd/system)
  --dry-run         check everything, print what would be done, change nothing
  --help            this text

Needs root (except with --dry-run). Clients must be in group "pipeit" to use the socket.
USAGE
}

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL=""
PREDICTOR=""
PLATFORM="auto"
RUNTIME="${PIPEIT_RUNTIME:-}"
VENV="$HERE/.venv"
ARGS=""
UNIT_DIR="/etc/systemd/system"
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) need "a file" "$@"; MODEL="$2"; shift 2 ;;
        --predictor) need "a file" "$@"; PREDICTOR="$2"; shift 2 ;;
        --platform) need "a spec" "$@"; PLATFORM="$2"; shift 2 ;;
        --runtime) need "a name" "$@"; RUNTIME="$2"; shift 2 ;;
        --venv) need "a directory" "$@"; VENV="$2"; shift 2 ;;
        --args) [ "$#" -ge 2 ] || die 2 "--args needs a string (see --help)"; ARGS="$2"; shift 2 ;;
        --unit-dir) need "a directory" "$@"; UNIT_DIR="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die 2 "unknown option $1 (see --help)" ;;
    esac
done

# --- checks: nothing on the system is changed before all of them pass --------------------
[ -n "$MODEL" ] || die 2 "--model is required (see --help)"
[ -f "$MODEL" ] || die 2 "$MODEL: no such model file"
[ -z "$PREDICTOR" ] || [ -f "$PREDICTOR" ] || die 2 "$PREDICTOR: no such predictor file"
[ -d "$VENV" ] || die 2 "$VENV: no such virtual environment (run tools/setup-board.sh, or give --venv DIR)"
VENV="$(cd -- "$VENV" && pwd)"  # the unit needs an absolute path
[ -x "$VENV/bin/pipeit" ] || die 2 "$VENV/bin/pipeit: not found or not executable (run tools/setup-board.sh, or give --venv DIR)"
case "$RUNTIME" in
    "") case "$(uname -m)" in armv7l|armv6l) RUNTIME="tflite-runtime" ;; esac ;;  # no ai-edge-litert on 32-bit ARM
    ai-edge-litert|tflite-runtime) ;;
    *) die 2 "--runtime must be ai-edge-litert or tflite-runtime, not '$RUNTIME'" ;;
esac
# The env file holds PLATFORM and ARGS unquoted, and the unit splits $PIPEIT_ARGS at whitespace
# without honouring quotes: refuse what would arrive changed.
case "$PLATFORM" in *[[:space:][:cntrl:]\"\'\\\$]*) die 2 "--platform: spaces, quotes, backslashes and \$ are not allowed" ;; esac
case "$ARGS" in *[\"\'\\\$]*|*[[:cntrl:]]*) die 2 "--args: quotes, backslashes, \$ and control characters are not allowed (it is split at whitespace)" ;; esac
case " $ARGS " in
    *" --model "*|*" --model="*|*" --socket "*|*" --socket="*|*" --group "*|*" --group="*|*" --platform "*|*" --platform="*)
        die 2 "--args: --model, --platform, --socket and --group are set by the unit; use this script's options" ;;
esac
case " $ARGS " in
    *" --nice "*|*" --nice="*)
        die 2 "--args: --nice cannot work in the service (no CAP_SYS_NICE); edit Nice= in the unit instead" ;;
esac
[ -d "$UNIT_DIR" ] || die 2 "$UNIT_DIR: no such directory (--unit-dir)"
if [ -n "$PREDICTOR" ]; then
    case " $ARGS " in
        *" --plan"*|*" --predictor"*|*" --profile"*|*" --times"*)
            die 2 "--args: give one of --plan/--predictor/--profile/--times, not one of them besides --predictor" ;;
    esac
fi
case "$PLATFORM" in
    emulate:*) die 2 "--platform $PLATFORM: an emulated platform writes cgroups, which the unit keeps read-only; run pipeit serve by hand" ;;
esac
[ -f "$HERE/tools/pipeit.service" ] || die 1 "$HERE/tools/pipeit.service: the unit template is missing"
# systemd refuses an executable path with quotes, backslashes or control characters.
case "$VENV" in *[\"\'\\]*|*[[:cntrl:]]*) die 2 "$VENV: systemd cannot run a program from a path with quotes, backslashes or control characters (give --venv DIR)" ;; esac
if [ "$DRY" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die 1 "run as root (or with --dry-run)"
fi
# What the daemon checks at start, checked now with the service's own options: the model, the
# predictor, the platform and --args. A unit that fails at start restarts every 5 s for ever.
CHECK=("$VENV/bin/pipeit" serve --check --model "$MODEL" --platform "$PLATFORM" --socket /run/pipeit/pipeit.sock)
[ -z "$PREDICTOR" ] || CHECK+=(--predictor "$PREDICTOR")
read -r -a EXTRA <<< "$ARGS"  # split at whitespace, as the unit splits $PIPEIT_ARGS
CHECK+=("${EXTRA[@]+"${EXTRA[@]}"}")
echo "checking: pipeit serve --check with the service's options"
env PIPEIT_RUNTIME="$RUNTIME" "${CHECK[@]}" || die 2 "the daemon would not start with these options (above); nothing was changed"

# exec_path PATH: PATH as the double-quoted first word of ExecStart= (it may hold spaces;
# "%" doubled against specifiers; "$" stays: systemd expands no variables there).
exec_path() {
    printf '"%s"' "${1//%/%%}"
}

# file_url PATH: a file:// URL, bytes other than [A-Za-z0-9/._~-] percent-encoded, "%" doubled
# against specifiers (so a path with a space or "|" still gives a valid Documentation=).
file_url() {
    local LC_ALL=C s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
            [A-Za-z0-9/._~-]) out+="$c" ;;
            *) out+="$(printf '%%%%%02X' "'$c")" ;;
        esac
    done
    printf 'file://%s' "$out"
}

EXEC="$(exec_path "$VENV/bin/pipeit")"
DOC="$(file_url "$HERE/docs/PROTOCOL.md")"
UNIT="$(cat "$HERE/tools/pipeit.service")"
UNIT="${UNIT//@VENV@\/bin\/pipeit/"$EXEC"}"
UNIT="${UNIT//file:\/\/@PREFIX@\/docs\/PROTOCOL.md/"$DOC"}"
case "$UNIT" in *@VENV@*|*@PREFIX@*) die 1 "$HERE/tools/pipeit.service: unexpected template (placeholders left)" ;; esac

SERVE_ARGS="$ARGS"
if [ -n "$PREDICTOR" ]; then SERVE_ARGS="--predictor /var/lib/pipeit/predictor.json${ARGS:+ $ARGS}"; fi

# --- changes ------------------------------------------------------------------------------
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
for gpu_group in render video; do  # the GPU device nodes (/dev/dri/renderD*, /dev/mali0, /dev/kgsl-3d0)
    if getent group "$gpu_group" >/dev/null 2>&1; then run usermod -a -G "$gpu_group" pipeit; fi
done
run install -d -m 0750 -o pipeit -g pipeit /var/lib/pipeit
run install -m 0640 -o pipeit -g pipeit "$MODEL" /var/lib/pipeit/model.tflite
if [ -n "$PREDICTOR" ]; then
    run install -m 0640 -o pipeit -g pipeit "$PREDICTOR" /var/lib/pipeit/predictor.json
fi
run install -d -m 0755 /etc/pipeit
write /etc/pipeit/pipeit.env <<ENV
PIPEIT_MODEL=/var/lib/pipeit/model.tflite
PIPEIT_PLATFORM=$PLATFORM
PIPEIT_RUNTIME=$RUNTIME
PIPEIT_ARGS=$SERVE_ARGS
ENV
printf '%s\n' "$UNIT" | write "$UNIT_DIR/pipeit.service"
run systemctl daemon-reload
run systemctl enable --now pipeit.service
if [ "$DRY" -eq 1 ]; then
    echo "dry run: nothing was changed. Run it as root without --dry-run to install."
else
    echo "installed. Check with: systemctl status pipeit; pipeit status --socket /run/pipeit/pipeit.sock"
fi
