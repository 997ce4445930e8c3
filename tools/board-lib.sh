# shellcheck shell=bash
# Shared by the board scripts (sourced, not run): the one place that knows what --dry-run means.

# run CMD ARGS...: run it, or with DRY=1 print it, quoted, as "would run: ..." and go on.
run() {
    if [ "${DRY:-0}" -eq 1 ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}
