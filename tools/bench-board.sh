#!/usr/bin/env bash
# Run the strategy benchmark on this board and write it as a Markdown report.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: tools/bench-board.sh --model FILE [--platform SPEC] [--frames N] [--output REPORT.md]
                            [--pipeit CMD] [--dry-run] [--help]

  --model FILE     the .tflite to benchmark (e.g. from `pipeit zoo mobilenet_v1 -o m.tflite`)
  --platform SPEC  platform spec (default: auto)
  --frames N       frames per strategy (default: 200)
  --output FILE    the Markdown report (default: bench-<hostname>-<date>.md)
  --pipeit CMD     the pipeit command (default: pipeit on PATH, else .venv/bin/pipeit)
  --dry-run        print the commands instead of running them
  --help           this text

The report holds the board (pipeit topology), the runtime, the governor and temperatures
before and after, and `pipeit bench --json` for every strategy.
USAGE
}

MODEL=""
PLATFORM="auto"
FRAMES=200
OUTPUT=""
PIPEIT=""
DRY=0

while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) MODEL="${2:?--model needs a file}"; shift 2 ;;
        --platform) PLATFORM="${2:?--platform needs a spec}"; shift 2 ;;
        --frames) FRAMES="${2:?--frames needs a number}"; shift 2 ;;
        --output) OUTPUT="${2:?--output needs a file}"; shift 2 ;;
        --pipeit) PIPEIT="${2:?--pipeit needs a command}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-board.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ -n "$MODEL" ] || { echo "bench-board.sh: --model is required (see --help)" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "bench-board.sh: $MODEL: no such model file" >&2; exit 2; }
case "$FRAMES" in ''|*[!0-9]*) echo "bench-board.sh: --frames must be a positive integer" >&2; exit 2 ;; esac
if [ -z "$PIPEIT" ]; then
    if command -v pipeit >/dev/null 2>&1; then PIPEIT="pipeit"; else PIPEIT=".venv/bin/pipeit"; fi
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

{
    echo "# pipeit benchmark: $(basename "$MODEL") on $(hostname)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -srm), $FRAMES frames per strategy"
    echo
    echo "## Board"
    echo
    echo '```'
    "$PIPEIT" topology --platform "$PLATFORM"
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
    "$PIPEIT" bench "$MODEL" --platform "$PLATFORM" --frames "$FRAMES" --json
    echo '```'
    echo
    echo "## Temperatures after"
    echo
    temps
} > "$OUTPUT"
echo "report -> $OUTPUT"
