#!/usr/bin/env bash
# capture-bench.sh: kjump capture against lz4, zstd and cp on one synthetic dump.
#
# Generates (or reuses) a seeded memory dump with kjump-dumpgen, warms the page
# cache with it, then runs each command RUNS times in turn and prints medians:
# GB/s of dump bytes, wall and CPU seconds, output size and compression ratio,
# peak RSS. kjump's capture, verify and export also run on an encrypted image
# of the same dump (a key file, and for capture a passphrase with the default
# Argon2id cost), and their times, alone and as a cycle, are compared with the
# unencrypted ones.
#
# Every compressing/copying command ends durable: kjump capture fsyncs its
# image before committing it, so each peer is followed by `sync -d OUTPUT`
# (fdatasync) inside its timed region. verify and export are timed as they are.
#
# Two limits are measured in the same run, so a capture bound by the disk
# or by the compressor shows as such: writing an image-sized file with
# `dd oflag=direct conv=fdatasync` (each run, right after the capture), and
# the capture's encoding alone, every chunk from memory on the same threads
# with nothing read or written (writer/examples/codec_ceiling.rs).
#
# Environment (all optional):
#   KJUMP_BENCH_SIZE     RAM size of the dump, as kjump-dumpgen --size takes it (4G)
#   KJUMP_BENCH_DIR      work directory, keeps the dump between runs (/var/tmp/kjump-bench)
#   KJUMP_BENCH_RUNS     runs per command (3)
#   KJUMP_BENCH_THREADS  kjump capture --threads (nproc)
#   KJUMP, KJUMP_DUMPGEN binaries to use instead of building them
#   KJUMP_CODEC_CEILING  the codec_ceiling example binary, likewise
#   CARGO_TARGET_DIR     where cargo puts the release binaries (ROOT/target)
#
# Usage: tests/bench/capture-bench.sh
set -euo pipefail

readonly SEED=20261127           # fixed: every run of the benchmark sees the same bytes
readonly LAYOUT=qemu
readonly SIZE=${KJUMP_BENCH_SIZE:-4G}
readonly DIR=${KJUMP_BENCH_DIR:-/var/tmp/kjump-bench}
readonly RUNS=${KJUMP_BENCH_RUNS:-3}
readonly THREADS=${KJUMP_BENCH_THREADS:-$(nproc)}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly BENCH=capture-bench
# shellcheck source=tests/bench/common.sh
. "$ROOT/tests/bench/common.sh"

check_tools() {
    [[ -x $TIME ]] || die "$TIME not found; install it: apt-get install time"
    need lz4 lz4
    need zstd zstd
    need awk mawk
    need cargo "rustup (see https://rustup.rs)"
    sync --help 2>&1 | grep -q -- '--data' ||
        die "'sync' lacks --data (coreutils >= 8.24 needed); apt-get install coreutils"
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "KJUMP_BENCH_RUNS must be a positive integer, not '$RUNS'"
}

# Builds whichever of kjump / kjump-dumpgen was not given through the
# environment, and sets KJUMP and KJUMP_DUMPGEN.
build() {
    local bin=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release
    local packages=()
    [[ -n ${KJUMP:-} ]] || packages+=(-p kjump)
    [[ -n ${KJUMP_DUMPGEN:-} ]] || packages+=(-p kjump-dumpgen)
    if ((${#packages[@]})); then
        note "building release binaries: cargo build --release ${packages[*]}"
        (cd "$ROOT" && cargo build --release --quiet "${packages[@]}") || die "cargo build failed"
    fi
    if [[ -z ${KJUMP_CODEC_CEILING:-} ]]; then
        (cd "$ROOT" && cargo build --release --quiet -p kjump-writer --example codec_ceiling) ||
            die "cargo build of the codec_ceiling example failed"
    fi
    KJUMP=${KJUMP:-$bin/kjump}
    KJUMP_DUMPGEN=${KJUMP_DUMPGEN:-$bin/kjump-dumpgen}
    KJUMP_CODEC_CEILING=${KJUMP_CODEC_CEILING:-$bin/examples/codec_ceiling}
    [[ -x $KJUMP_CODEC_CEILING ]] || die "codec_ceiling binary $KJUMP_CODEC_CEILING not found or not executable"
    [[ -x $KJUMP ]] || die "kjump binary $KJUMP not found or not executable"
    [[ -x $KJUMP_DUMPGEN ]] || die "kjump-dumpgen binary $KJUMP_DUMPGEN not found or not executable"
}

# The dump (generate_dump), and room for what the runs write beside it.
prepare_dump() {
    generate_dump
    local avail
    avail=$(df -B1 --output=avail "$DIR" | tail -n 1)
    # Outputs alive at once: the kjump image plus an export or a copy.
    ((avail > INPUT_BYTES * 3 / 2)) ||
        die "only $avail bytes free in $DIR; need about $((INPUT_BYTES * 3 / 2))"
    note "warming the page cache with the dump"
    cat "$DUMP" >/dev/null
    rm -f "$DIR"/out.*
    KEY=$DIR/bench.key
    PASS=$DIR/bench.pass
    head -c 64 /dev/urandom >"$KEY"
    echo "kjump benchmark passphrase" >"$PASS"
}

run_once() {
    local image=$DIR/out.kjump
    timed "kjump capture" "$image" \
        "$KJUMP" capture --source "$DUMP" --target "$image" --threads "$THREADS"
    # The disk's limit for this image: as many bytes written the way the
    # capture writes them (O_DIRECT, then fdatasync).
    local mib=$((($(stat -c %s "$image") + 1048575) / 1048576))
    timed "disk write" "$DIR/out.dd" dd if=/dev/zero of="$DIR/out.dd" bs=1M count="$mib" \
        oflag=direct conv=fdatasync status=none
    rm -f "$DIR/out.dd"
    # The peers must end with their output on disk, as kjump's image is.
    timed "lz4 -1" "$DIR/out.lz4" bash -c "$DURABLE" _ lz4 -1 -f -q "$DUMP" "$DIR/out.lz4"
    rm -f "$DIR/out.lz4"
    timed "zstd -1 -T2" "$DIR/out.zst" \
        bash -c "$DURABLE" _ zstd -1 -T2 -f -q "$DUMP" -o "$DIR/out.zst"
    rm -f "$DIR/out.zst"
    timed "cp" "$DIR/out.raw" bash -c "$DURABLE" _ cp "$DUMP" "$DIR/out.raw"
    rm -f "$DIR/out.raw"
    timed "kjump verify" - "$KJUMP" verify "$image"
    timed "kjump export" "$DIR/out.elf" "$KJUMP" export "$image" --output "$DIR/out.elf"
    rm -f "$DIR/out.elf" "$image"
    # The same three on an encrypted image, right after the plain ones.
    timed "capture enc" "$image" \
        "$KJUMP" capture --source "$DUMP" --target "$image" --threads "$THREADS" --key-file "$KEY"
    timed "verify enc" - "$KJUMP" verify "$image" --key-file "$KEY"
    timed "export enc" "$DIR/out.elf" \
        "$KJUMP" export "$image" --key-file "$KEY" --output "$DIR/out.elf"
    rm -f "$DIR/out.elf" "$image"
    timed "capture pass" "$image" \
        "$KJUMP" capture --source "$DUMP" --target "$image" --threads "$THREADS" --passphrase-file "$PASS"
    rm -f "$image"
}

# median VALUES...: the median of numbers ('-' if any is '-').

# gbps SECONDS: GB (1e9 bytes) of dump per second.
gbps() {
    awk -v b="$INPUT_BYTES" -v s="$1" 'BEGIN { if (s > 0) printf "%.2f", b / s / 1e9; else print "inf" }'
}

print_environment() {
    echo "== kjump capture benchmark =="
    echo "dump:     $DUMP"
    echo "          $(sed 's/^[^ ]*: //' "$DUMP.info")"
    echo "input:    $INPUT_BYTES bytes ($(awk -v b="$INPUT_BYTES" 'BEGIN { printf "%.2f", b / 1e9 }') GB), page cache warm"
    echo "runs:     $RUNS per command, medians shown"
    echo "nproc:    $(nproc)   cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel:   $(uname -r)   fs: $(df -T "$DIR" | awk 'NR == 2 { print $2 " on " $1 }')"
    echo "kjump:    $("$KJUMP" --version 2>/dev/null || echo "version unknown") ($KJUMP, --threads $THREADS)"
    echo "lz4:      $(lz4 --version 2>&1 | head -n 1)"
    echo "zstd:     $(zstd --version 2>&1 | head -n 1)"
    echo "cp:       $(cp --version | head -n 1)"
    echo "durable:  lz4, zstd and cp are each followed by 'sync -d OUTPUT' (fdatasync) inside the"
    echo "          timed region, as kjump capture fsyncs its image; verify/export are timed alone"
    echo
}

print_table() {
    printf '%-14s %9s %9s %9s %15s %8s %10s\n' command "GB/s" seconds "cpu s" "output bytes" ratio "RSS MiB"
    local name secs cpu out rss ratio
    for name in "${NAMES[@]}"; do
        # shellcheck disable=SC2086 # the values are space-separated on purpose
        secs=$(median ${SECS[$name]})
        # shellcheck disable=SC2086
        cpu=$(median ${CPU[$name]})
        # shellcheck disable=SC2086
        out=$(median ${OUTBYTES[$name]})
        # shellcheck disable=SC2086
        rss=$(median ${RSS[$name]})
        ratio=-
        [[ $out == - ]] || ratio=$(awk -v i="$INPUT_BYTES" -v o="$out" 'BEGIN { printf "%.2f", (o > 0 ? i / o : 0) }')
        printf '%-14s %9s %9s %9s %15s %8s %10s\n' "$name" "$(gbps "$secs")" "$secs" "$cpu" "$out" "$ratio" \
            "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')"
    done
    echo "(GB/s = dump bytes / wall seconds for every row, GB = 1e9; cpu s = user + system seconds;"
    echo " ratio = dump bytes / output bytes)"
}

# ratio_line PEER: kjump capture's median throughput over PEER's.
ratio_line() {
    local k p
    # shellcheck disable=SC2086
    k=$(median ${SECS["kjump capture"]})
    # shellcheck disable=SC2086
    p=$(median ${SECS[$1]})
    awk -v k="$k" -v p="$p" -v n="$1" 'BEGIN {
        if (k > 0) printf "kjump capture throughput / %-12s %5.2fx\n", n ":", p / k
        else printf "kjump capture throughput / %-12s  (too fast to time)\n", n ":"
    }'
}

# print_limits: the disk's limit and the encoding's, against the capture.
print_limits() {
    local k d
    # shellcheck disable=SC2086
    k=$(median ${SECS["kjump capture"]})
    # shellcheck disable=SC2086
    d=$(median ${SECS["disk write"]})
    echo
    echo "limits on this machine:"
    awk -v d="$d" -v k="$k" -v b="$INPUT_BYTES" 'BEGIN {
        printf "  writing the image (disk write row):         %6.2f GB/s of dump\n", b / d / 1e9
        printf "  kjump capture / disk limit:                 %6.2f\n", d / k
    }'
    awk -v e="$CEILING" -v k="$k" -v b="$INPUT_BYTES" -v t="$THREADS" 'BEGIN {
        printf "  encoding alone, %s threads, from memory:     %6.2f GB/s of dump\n", t, b / e / 1e9
        printf "  kjump capture / encoding limit:             %6.2f\n", e / k
    }'
}

print_ratios() {
    echo
    ratio_line "lz4 -1"
    ratio_line "zstd -1 -T2"
    ratio_line "cp"
    local k l
    # shellcheck disable=SC2086
    k=$(median ${OUTBYTES["kjump capture"]})
    # shellcheck disable=SC2086
    l=$(median ${OUTBYTES["lz4 -1"]})
    awk -v k="$k" -v l="$l" 'BEGIN { printf "kjump image size / lz4 -1 output size: %.3f\n", k / l }'
    echo
    enc_line "kjump capture" "capture enc"
    enc_line "kjump capture" "capture pass"
    enc_line "kjump verify" "verify enc"
    enc_line "kjump export" "export enc"
    cycle_line
}

# run_sums TABLE NAME...: per run, the sum of NAME's values in TABLE (SECS
# or CPU), one per line.
run_sums() {
    local -n table=$1
    shift
    local name
    for name in "$@"; do
        echo "${table[$name]}"
    done | awk '{ for (i = 1; i <= NF; i++) sum[i] += $i; n = NF } END { for (i = 1; i <= n; i++) print sum[i] }'
}

# cycle_line: capture, verify and export (the write pass of a resume) run
# back to back, plain against encrypted: the medians of the per-run sums,
# in wall and in CPU seconds (the CPU figure shrugs off a busy neighbour).
cycle_line() {
    local what table p e
    for what in wall cpu; do
        table=SECS
        [[ $what == cpu ]] && table=CPU
        # shellcheck disable=SC2046 # one sum per line
        p=$(median $(run_sums "$table" "kjump capture" "kjump verify" "kjump export"))
        # shellcheck disable=SC2046
        e=$(median $(run_sums "$table" "capture enc" "verify enc" "export enc"))
        awk -v p="$p" -v e="$e" -v w="$what" 'BEGIN {
            printf "cycle enc / plain (%-4s s):         %5.2fx time (%+.0f%%): %.2f s against %.2f\n",
                w, e / p, (e / p - 1) * 100, e, p
        }'
    done
}

# enc_line PLAIN ENCRYPTED: how much longer the encrypted command took.
enc_line() {
    local p e
    # shellcheck disable=SC2086
    p=$(median ${SECS[$1]})
    # shellcheck disable=SC2086
    e=$(median ${SECS[$2]})
    awk -v p="$p" -v e="$e" -v n="$2 / $1:" 'BEGIN {
        if (p > 0) printf "%-34s %5.2fx time (%+.0f%%)\n", n, e / p, (e / p - 1) * 100
        else printf "%-34s (too fast to time)\n", n
    }'
}

main() {
    check_tools
    build
    prepare_dump
    local run
    for ((run = 1; run <= RUNS; run++)); do
        note "run $run of $RUNS"
        run_once
    done
    note "the encoding alone: $KJUMP_CODEC_CEILING (median of $RUNS)"
    local ceiling_log=$DIR/log.codec_ceiling
    "$KJUMP_CODEC_CEILING" "$DUMP" "$THREADS" "$RUNS" >"$ceiling_log" 2>&1 ||
        { tail -n 20 "$ceiling_log" >&2; die "codec_ceiling failed"; }
    CEILING=$(sed -n 's/.*median \([0-9.]*\) s.*/\1/p' "$ceiling_log")
    [[ -n $CEILING ]] || die "codec_ceiling printed no median: see $ceiling_log"
    rm -f "$DIR"/time.* "$DIR"/log.*
    print_environment
    print_table
    print_ratios
    print_limits
}

main "$@"
