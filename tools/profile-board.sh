#!/usr/bin/env bash
# Profile the reference zoo (and the user's own models) on this board, fit the
# predictor, and store both in the state directory where `pipeit serve` looks.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/profile-board.sh [--model FILE]... [--platform SPEC] [--zoo NAMES] [--kind KIND]
                              [--pipeit CMD] [--dry-run] [--help]

  --model FILE     also profile this .tflite (repeatable)
  --platform SPEC  platform spec (default: auto)
  --zoo NAMES      comma-separated zoo models to profile (default: all of `pipeit zoo --list`)
  --kind KIND      predictor kind for `pipeit fit` (default: pipeit's default)
  --pipeit CMD     the pipeit command (default: pipeit on PATH, else .venv/bin/pipeit)
  --dry-run        print each command instead of running it
  --help           this text

Results go to $PIPEIT_STATE_DIR (default ~/.local/state/pipeit)/board/:
profile.csv (rows appended as measured: an interrupted run resumes), predictor.json.
Progress bars are shown by `pipeit profile` on stderr.
USAGE
}

PLATFORM="auto"
ZOO=""
KIND=""
DRY=0
PIPEIT=""
MODELS=()

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) MODELS+=("${2:?--model needs a file}"); shift 2 ;;
        --platform) PLATFORM="${2:?--platform needs a spec}"; shift 2 ;;
        --zoo) ZOO="${2:?--zoo needs names}"; shift 2 ;;
        --kind) KIND="${2:?--kind needs a name}"; shift 2 ;;
        --pipeit) PIPEIT="${2:?--pipeit needs a command}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "profile-board.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$PIPEIT" ]; then
    if command -v pipeit >/dev/null 2>&1; then PIPEIT="pipeit"; else PIPEIT=".venv/bin/pipeit"; fi
fi
STATE="${PIPEIT_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/pipeit}/board"
WORK="$STATE/zoo"

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

for model in "${MODELS[@]+"${MODELS[@]}"}"; do
    [ -f "$model" ] || { echo "profile-board.sh: $model: no such model file" >&2; exit 2; }
done

run mkdir -p "$WORK"
if [ -z "$ZOO" ]; then
    if [ "$DRY" -eq 1 ]; then ZOO="mobilenet_v1"; else ZOO="$("$PIPEIT" zoo --list | awk '{print $1}' | paste -sd, -)"; fi
fi
IFS=',' read -r -a NAMES <<< "$ZOO"
FILES=()
step=0
total=$(( ${#NAMES[@]} + 2 ))
for name in "${NAMES[@]}"; do
    step=$((step + 1))
    echo "[$step/$total] building zoo model $name"
    run "$PIPEIT" zoo "$name" -o "$WORK/$name.tflite"
    FILES+=("$WORK/$name.tflite")
done
FILES+=("${MODELS[@]+"${MODELS[@]}"}")
step=$((step + 1))
echo "[$step/$total] profiling ${#FILES[@]} model(s) on $PLATFORM -> $STATE/profile.csv"
run "$PIPEIT" profile "${FILES[@]}" --platform "$PLATFORM" -o "$STATE/profile.csv"
step=$((step + 1))
echo "[$step/$total] fitting the predictor -> $STATE/predictor.json"
if [ -n "$KIND" ]; then
    run "$PIPEIT" fit "$STATE/profile.csv" -o "$STATE/predictor.json" --kind "$KIND"
else
    run "$PIPEIT" fit "$STATE/profile.csv" -o "$STATE/predictor.json"
fi
echo "done. Serve with: pipeit serve --model MODEL --predictor $STATE/predictor.json --socket /run/pipeit/pipeit.sock"
