#!/usr/bin/env bash
# Run the strategy benchmark on this board and write it as a Markdown report.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/bench-board.sh --model FILE [--platform SPEC] [--frames N] [--output REPORT.md]
                            [--pipeit CMD] [--dry-run] [--help]

  --model FILE     the .tflite to benchmark (e.g. from `pipeit zoo mobilenet_v1 -o m.tflite`)
  --platform SPEC  platform spec (default: auto)
  --frames N       frames per strategy in each of bench's 3 rounds, a positive integer (default: 200)
  --output FILE    the Markdown report (default: bench-<hostname>-<date>.md)
  --pipeit CMD     the pipeit command (default: this checkout's .venv/bin/pipeit, else pipeit on PATH)
  --dry-run        print the commands instead of running them
  --help           this text

The report holds the board (pipeit topology), the runtime, the governor and temperatures
before and after, and `pipeit bench --json` for every strategy. It is written to a temporary
file next to REPORT.md and moved into place only when every step succeeded: a failed run leaves
no report (and an earlier REPORT.md untouched).
USAGE
}

# shellcheck source=board-lib.sh
. "$(dirname "$0")/board-lib.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MODEL=""
PLATFORM="auto"
FRAMES=200
OUTPUT=""
PIPEIT=""
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) need "a file" "$@"; MODEL="$2"; shift 2 ;;
        --platform) need "a spec" "$@"; PLATFORM="$2"; shift 2 ;;
        --frames) need "a number" "$@"; FRAMES="$2"; shift 2 ;;
        --output) need "a file" "$@"; OUTPUT="$2"; shift 2 ;;
        --pipeit) need "a command" "$@"; PIPEIT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die 2 "unknown option $1 (see --help)" ;;
    esac
done

[ -n "$MODEL" ] || die 2 "--model is required (see --help)"
[ -f "$MODEL" ] || die 2 "$MODEL: no such model file"
case "$FRAMES" in
    [1-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9][0-9]) ;;
    *) die 2 "--frames must be a positive integer (1 to 999999), not '$FRAMES'" ;;
esac
if [ -z "$PIPEIT" ]; then
    if [ -x "$HERE/.venv/bin/pipeit" ]; then PIPEIT="$HERE/.venv/bin/pipeit"; else PIPEIT="pipeit"; fi
fi
[ -n "$OUTPUT" ] || OUTPUT="bench-$(hostname)-$(date +%Y%m%d-%H%M).md"

temps() {
    for zone in /sys/class/thermal/thermal_zone*; do
        [ -r "$zone/temp" ] || continue
        printf -- '- %s: %s m°C\n' "$(cat "$zone/type" 2>/dev/null || echo "$zone")" "$(cat "$zone/temp")"
    done
}

governors() {
    for policy in /sys/devices/system/cpu/cpufreq/policy*; do
        [ -r "$policy/scaling_governor" ] || continue
        printf -- '- %s: %s\n' "$(basename "$policy")" "$(cat "$policy/scaling_governor")"
    done
}

if [ "$DRY" -eq 1 ]; then
    printf 'would run:'; printf ' %q' "$PIPEIT" topology --platform "$PLATFORM"; printf '\n'
    printf 'would run:'; printf ' %q' "$PIPEIT" bench "$MODEL" --platform "$PLATFORM" --frames "$FRAMES" --json; printf '\n'
    echo "would write $OUTPUT"
    exit 0
fi

report() {  # the report on stdout; returns non-zero as soon as a pipeit step fails
    echo "# pipeit benchmark: $(basename "$MODEL") on $(hostname)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -srm), $FRAMES frames per strategy and round"
    echo
    "$PIPEIT" --version || { echo "bench-board.sh: pipeit --version failed" >&2; return 1; }  # pipeit and its runtime
    echo
    echo "## Board"
    echo
    echo '```'
    "$PIPEIT" topology --platform "$PLATFORM" || { echo "bench-board.sh: pipeit topology failed" >&2; return 1; }
    echo '```'
    echo
    echo "## Governors and temperatures before"
    echo
    governors
    temps
    echo
    echo "## Results"
    echo
    echo '```json'
    "$PIPEIT" bench "$MODEL" --platform "$PLATFORM" --frames "$FRAMES" --json \
        || { echo "bench-board.sh: pipeit bench failed" >&2; return 1; }
    echo '```'
    echo
    echo "## Temperatures after"
    echo
    temps
}

TMP="$(mktemp "$OUTPUT.partial.XXXXXX")" || die 1 "cannot create a file next to $OUTPUT"
trap 'rm -f "$TMP"' EXIT
if ! report > "$TMP"; then
    die 1 "the run failed: no report written to $OUTPUT"
fi
chmod "$(printf '%o' "$(( 0666 & ~$(umask) ))")" "$TMP"  # mktemp made it 0600
mv -f "$TMP" "$OUTPUT"
trap - EXIT
echo "report -> $OUTPUT"
