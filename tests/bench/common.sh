# common.sh: what the benchmark scripts share. Sourced, not run; the
# script sets BENCH (its name, for messages), DIR, LAYOUT, SIZE, SEED and
# KJUMP_DUMPGEN before it calls these.

readonly TIME=/usr/bin/time
# For `bash -c`: runs "$@", then fdatasyncs the file named by its last word.
# shellcheck disable=SC2016 # expanded by the inner shell
readonly DURABLE='"$@" && exec sync -d -- "${!#}"'

die() {
    echo "$BENCH: error: $*" >&2
    exit 1
}

note() {
    echo "$BENCH: $*" >&2
}

# need TOOL PACKAGE: fail with the apt package to install when TOOL is missing.
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install it: apt-get install $2"
}

# median VALUE...: the median, or "-" when any value is "-" or none is given.
median() {
    printf '%s\n' "$@" | sort -g | awk '
        $1 == "-" { dash = 1 }
        { v[NR] = $1 }
        END {
            if (dash || NR == 0) { print "-"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# generate_dump: sets DUMP to the seeded dump in DIR, generating it unless
# one of the same size, seed and layout exists. The generator's summary
# line is kept beside it; a dump without one was interrupted and is
# generated again. Sets INPUT_BYTES to its size.
generate_dump() {
    mkdir -p "$DIR"
    DUMP=$DIR/dump-$LAYOUT-$SIZE-seed$SEED.elf
    if [[ -s $DUMP && -s $DUMP.info ]]; then
        note "reusing $DUMP"
    else
        rm -f "$DUMP" "$DUMP.info"
        note "generating $DUMP"
        "$KJUMP_DUMPGEN" --seed "$SEED" --size "$SIZE" --layout "$LAYOUT" "$DUMP.tmp" >"$DUMP.info.tmp" ||
            die "kjump-dumpgen failed"
        mv "$DUMP.tmp" "$DUMP"
        mv "$DUMP.info.tmp" "$DUMP.info"
    fi
    INPUT_BYTES=$(stat -c %s "$DUMP")
}

# Results, keyed by command name: space-separated per-run values.
declare -A SECS CPU RSS OUTBYTES FAILED
NAMES=()

# timed NAME OUTPUT COMMAND...: runs COMMAND under GNU time ($TIME), records
# wall seconds, CPU seconds (user + system), peak RSS (KiB) and the size of
# OUTPUT ('-' for none); its output goes to DIR/log.NAME. (capture-bench.sh,
# collect-bench.sh; resume-bench.sh records other figures.) A failure ends
# the benchmark, unless TIMED_MAY_FAIL is set: then the run is counted in
# FAILED[NAME], kept out of the medians, and its log is kept as
# DIR/log.NAME.failed.N.
timed() {
    local name=$1 output=$2
    shift 2
    local log=$DIR/log.$name stats=$DIR/time.$name
    sync # outside the timed region: nothing dirty left from the last command
    if ! "$TIME" -f '%e %U %S %M' -o "$stats" "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        [[ -n ${TIMED_MAY_FAIL:-} ]] || die "'$name' failed: $*"
        FAILED[$name]=$((${FAILED[$name]:-0} + 1))
        mv -- "$log" "$log.failed.${FAILED[$name]}"
        note "'$name' failed (run kept out of the medians; log in $log.failed.${FAILED[$name]}): $*"
        return 0
    fi
    local secs user sys kib
    read -r secs user sys kib <"$stats"
    [[ -v SECS[$name] ]] || NAMES+=("$name")
    SECS[$name]+="$secs "
    CPU[$name]+="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') "
    RSS[$name]+="$kib "
    if [[ $output == - ]]; then
        OUTBYTES[$name]+="- "
    else
        OUTBYTES[$name]+="$(stat -c %s "$output") "
    fi
}
