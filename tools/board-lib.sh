# shellcheck shell=bash
# Shared by the board scripts (sourced, not run): the one place that knows what --dry-run means,
# and how a script says it cannot go on.

# die STATUS MESSAGE: one line on stderr, named after the script, exit STATUS
die() {
    echo "${0##*/}: $2" >&2
    exit "$1"
}

# need WHAT OPTION [VALUE]: exit 2 with one line unless the option has a non-empty value
need() {
    [ "$#" -ge 3 ] && [ -n "$3" ] && return 0
    die 2 "$2 needs $1 (see --help)"
}

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
