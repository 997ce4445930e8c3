#!/usr/bin/env bash
# Profile the reference zoo (and the user's own models) on this board and fit the predictor
# into <state directory>/board/. The daemon does not look there by itself: hand the predictor
# to tools/install-service.sh --predictor (or to `pipeit serve --predictor`), as printed at the end.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/profile-board.sh [--model FILE]... [--platform SPEC] [--zoo NAMES] [--kind KIND]
                              [--pipeit CMD] [--dry-run] [--help]

  --model FILE     also profile this .tflite (repeatable)
  --platform SPEC  platform spec (default: auto); serve with the same one
  --zoo NAMES      comma-separated zoo models to profile (default: all of `pipeit zoo --list`)
  --kind KIND      predictor kind for `pipeit fit` (default: pipeit's default)
  --pipeit CMD     the pipeit command (default: this checkout's .venv/bin/pipeit, else pipeit on PATH)
  --dry-run        print each command instead of running it (the same list a real run does)
  --help           this text

Results go to $PIPEIT_STATE_DIR (default ~/.local/state/pipeit)/board/:
profile.csv (rows appended as measured: an interrupted run resumes), predictor.json.
`pipeit serve` does not read that folder by itself; give it the predictor, as the last line
prints: sudo tools/install-service.sh --model MODEL --predictor .../board/predictor.json
(it copies the file into the service's state directory), or pipeit serve --predictor FILE.
Progress bars are shown by `pipeit profile` on stderr.
USAGE
}

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLATFORM="auto"
ZOO=""
KIND=""
DRY=0
PIPEIT=""
MODELS=()

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) need "a file" "$@"; MODELS+=("$2"); shift 2 ;;
        --platform) need "a spec" "$@"; PLATFORM="$2"; shift 2 ;;
        --zoo) need "names" "$@"; ZOO="$2"; shift 2 ;;
        --kind) need "a name" "$@"; KIND="$2"; shift 2 ;;
        --pipeit) need "a command" "$@"; PIPEIT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die 2 "unknown option $1 (see --help)" ;;
    esac
done

if [ -z "$PIPEIT" ]; then  # the venv setup-board.sh made and install-service.sh serves from, as they default
    if [ -x "$HERE/.venv/bin/pipeit" ]; then PIPEIT="$HERE/.venv/bin/pipeit"; else PIPEIT="pipeit"; fi
fi
STATE="${PIPEIT_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/pipeit}/board"
WORK="$STATE/zoo"

for model in "${MODELS[@]+"${MODELS[@]}"}"; do
    [ -f "$model" ] || die 2 "$model: no such model file"
done

# The zoo's names, asked of pipeit in a dry run too (it only lists), so that a dry run shows
# exactly the models a real run builds, and unknown or empty names are refused up front.
LISTING="$("$PIPEIT" zoo --list)" || die 1 "cannot list the zoo with '$PIPEIT zoo --list' (give --pipeit CMD)"
KNOWN=()
while read -r name _; do
    case "$name" in ''|name|-*) continue ;; esac  # the table's header and rule
    KNOWN+=("$name")
done <<< "$LISTING"
[ "${#KNOWN[@]}" -gt 0 ] || die 1 "'$PIPEIT zoo --list' listed no models"
# A bad --kind would otherwise be found by `pipeit fit`, after the whole zoo is profiled (hours on a board):
# argparse checks it before it acts on --help, so this asks and runs nothing.
if [ -n "$KIND" ] && ! "$PIPEIT" fit --kind "$KIND" --help >/dev/null 2>&1; then
    die 2 "--kind: unknown predictor kind '$KIND' (see $PIPEIT fit --help)"
fi
if [ -z "$ZOO" ]; then
    NAMES=("${KNOWN[@]}")
else
    case "$ZOO" in ,*|*,|*,,*) die 2 "--zoo '$ZOO': empty model name" ;; esac
    IFS=',' read -r -a NAMES <<< "$ZOO"
    SEEN=","
    for name in "${NAMES[@]}"; do
        case " ${KNOWN[*]} " in *" $name "*) ;; *) die 2 "--zoo: unknown zoo model '$name' (known: ${KNOWN[*]})" ;; esac
        case "$SEEN" in *",$name,"*) die 2 "--zoo: '$name' given twice" ;; esac
        SEEN+="$name,"
    done
fi

run mkdir -p "$WORK"
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
PLATFORM_OPT=""
[ "$PLATFORM" = "auto" ] || PLATFORM_OPT=" --platform $(printf '%q' "$PLATFORM")"
MODEL_ARG="MODEL"  # the user's own model where there is one
[ "${#MODELS[@]}" -eq 1 ] && MODEL_ARG="$(printf '%q' "${MODELS[0]}")"
PREDICTOR_ARG="$(printf '%q' "$STATE/predictor.json")"
echo "done. The predictor is $STATE/predictor.json; the daemon uses it only when given it:"
case "$PLATFORM" in
    emulate:*) echo "  as a service: not on an emulated platform (it needs cgroups, which the unit keeps read-only)" ;;
    *) echo "  as a service: sudo tools/install-service.sh --model $MODEL_ARG$PLATFORM_OPT --predictor $PREDICTOR_ARG" ;;
esac
echo "  by hand:      pipeit serve --model $MODEL_ARG$PLATFORM_OPT --predictor $PREDICTOR_ARG --socket ~/pipeit/pipeit.sock"
