#!/usr/bin/env bash
# collect-bench.sh: kjump collect against makedumpfile on one real vmcore.
#
# The core is a real kdump core of a busy guest: a 2 GiB QEMU machine with
# 1280 MiB of its memory in use by a process that re-checks it crashes into
# its kdump kernel, which copies /proc/vmcore raw to a disk
# (tests/kdump_vm.rs's busy_guest_vmcore_for_the_collect_bench, run here
# when the core is not in the work directory yet; it needs QEMU and root).
# With the core in the page cache, each collector runs RUNS times at dump
# level 1 (zero pages left out) and 31 (zero, cache, user and free pages
# left out), each ending with its output on disk (kjump compresses with lz4;
# makedumpfile gets -l, LZO, kdump-tools' default and the fastest codec
# Debian 12's makedumpfile 1.7.2 has): kjump collect fsyncs its image
# before it commits it, makedumpfile is followed
# by `sync -d OUTPUT` inside the timed region. Prints medians (GB/s of core
# bytes, wall and CPU seconds, output size, peak RSS) and kjump's ratios to
# makedumpfile's single-threaded and --num-threads 2 runs.
#
# Environment (all optional):
#   KJUMP_BENCH_DIR      work directory, keeps the core between runs (/var/tmp/kjump-bench)
#   KJUMP_BENCH_RUNS     runs per command (3)
#   KJUMP_BENCH_VMCORE   the core to use (default: DIR/vmcore-busy-2g, made if missing)
#   KJUMP                kjump binary to use instead of building it
#   CARGO_TARGET_DIR     where cargo puts the binaries (ROOT/target)
#
# Usage: tests/bench/collect-bench.sh
set -euo pipefail

readonly DIR=${KJUMP_BENCH_DIR:-/var/tmp/kjump-bench}
readonly RUNS=${KJUMP_BENCH_RUNS:-3}
readonly VMCORE=${KJUMP_BENCH_VMCORE:-$DIR/vmcore-busy-2g}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly BENCH=collect-bench
# shellcheck source=tests/bench/common.sh
. "$ROOT/tests/bench/common.sh"

check_tools() {
    [[ -x $TIME ]] || die "$TIME not found; install it: apt-get install time"
    need makedumpfile makedumpfile
    need awk mawk
    need cargo "rustup (see https://rustup.rs)"
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "KJUMP_BENCH_RUNS must be a positive integer, not '$RUNS'"
}

build() {
    if [[ -z ${KJUMP:-} ]]; then
        note "building the release binary: cargo build --release -p kjump"
        (cd "$ROOT" && cargo build --release --quiet -p kjump) || die "cargo build failed"
        KJUMP=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release/kjump
    fi
    [[ -x $KJUMP ]] || die "kjump binary $KJUMP not found or not executable"
}

# The core: reused, or made by the VM test that crashes a busy guest.
prepare_core() {
    mkdir -p "$DIR"
    if [[ -s $VMCORE ]]; then
        note "reusing $VMCORE"
    else
        note "making $VMCORE: a 2 GiB guest, 1280 MiB in use, crashed into its kdump kernel (QEMU, some minutes)"
        (cd "$ROOT" && KJUMP_BENCH_VMCORE=$VMCORE cargo test --test kdump_vm -- \
            --ignored --exact busy_guest_vmcore_for_the_collect_bench --nocapture) >&2 ||
            die "making the core failed"
    fi
    INPUT_BYTES=$(stat -c %s "$VMCORE")
    local avail
    avail=$(df -B1 --output=avail "$DIR" | tail -n 1)
    ((avail > INPUT_BYTES)) || die "only $avail bytes free in $DIR; need about $INPUT_BYTES"
    note "warming the page cache with the core"
    cat "$VMCORE" >/dev/null
    rm -f "$DIR"/collect.*
}

run_once() {
    local level out
    for level in 1 31; do
        out=$DIR/collect.kjump
        timed "kjump -d $level" "$out" "$KJUMP" collect -l -d "$level" "$VMCORE" "$out"
        rm -f "$out"
        out=$DIR/collect.mdf
        timed "mdf -d $level" "$out" bash -c "$DURABLE" _ makedumpfile -l -d "$level" "$VMCORE" "$out"
        rm -f "$out"
        # makedumpfile 1.7.2's threads now and then abort at their exit
        # ("libgcc_s.so.1 must be installed for pthread_exit to work",
        # seen here with libgcc_s installed): counted, not fatal.
        TIMED_MAY_FAIL=1 timed "mdf -d $level -T2" "$out" \
            bash -c "$DURABLE" _ makedumpfile -l -d "$level" --num-threads 2 "$VMCORE" "$out"
        rm -f "$out"
    done
}

gbps() {
    awk -v b="$INPUT_BYTES" -v s="$1" 'BEGIN { if (s > 0) printf "%.2f", b / s / 1e9; else print "inf" }'
}

print_environment() {
    echo "== kjump collect benchmark =="
    echo "core:     $VMCORE, $INPUT_BYTES bytes ($(gbps 1) GB), page cache warm"
    echo "runs:     $RUNS per command, medians shown"
    echo "nproc:    $(nproc)   cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)   load: $(cut -d ' ' -f 1-3 /proc/loadavg)"
    echo "kernel:   $(uname -r)   fs: $(df -T "$DIR" | awk 'NR == 2 { print $2 " on " $1 }')"
    echo "kjump:    $("$KJUMP" --version 2>/dev/null || echo "version unknown") ($KJUMP)"
    echo "peer:     $(makedumpfile -v 2>&1 | head -n 1)"
    echo "output:   kjump lz4, makedumpfile -l (LZO); makedumpfile followed by 'sync -d OUTPUT' in the timed region"
    echo
}

print_table() {
    printf '%-16s %7s %9s %9s %15s %10s\n' command "GB/s" seconds "cpu s" "output bytes" "RSS MiB"
    local name secs cpu out rss
    for name in "${!FAILED[@]}"; do
        echo "$name: failed in ${FAILED[$name]} of $RUNS runs (medians of the others)"
    done
    for name in "${NAMES[@]}"; do
        # shellcheck disable=SC2086 # the values are space-separated on purpose
        secs=$(median ${SECS[$name]})
        # shellcheck disable=SC2086
        cpu=$(median ${CPU[$name]})
        # shellcheck disable=SC2086
        out=$(median ${OUTBYTES[$name]})
        # shellcheck disable=SC2086
        rss=$(median ${RSS[$name]})
        printf '%-16s %7s %9s %9s %15s %10s\n' "$name" "$(gbps "$secs")" "$secs" "$cpu" "$out" \
            "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')"
    done
}

# ratio_line LEVEL PEER: kjump's median throughput and output size at
# LEVEL against PEER's.
ratio_line() {
    local ks ps ko po
    # shellcheck disable=SC2086
    ks=$(median ${SECS["kjump -d $1"]})
    # shellcheck disable=SC2086
    ps=$(median ${SECS[$2]})
    # shellcheck disable=SC2086
    ko=$(median ${OUTBYTES["kjump -d $1"]})
    # shellcheck disable=SC2086
    po=$(median ${OUTBYTES[$2]})
    awk -v ks="$ks" -v ps="$ps" -v ko="$ko" -v po="$po" -v l="$1" -v n="$2" 'BEGIN {
        printf "-d %-2s kjump / %-16s throughput %5.2fx, output size %.3f\n", l, n ":", (ks > 0 ? ps / ks : 0), ko / po
    }'
}

main() {
    check_tools
    build
    prepare_core
    local run
    for ((run = 1; run <= RUNS; run++)); do
        note "run $run of $RUNS"
        run_once
    done
    print_environment
    print_table
    echo
    local level
    for level in 1 31; do
        ratio_line "$level" "mdf -d $level"
        if [[ -v SECS["mdf -d $level -T2"] ]]; then
            ratio_line "$level" "mdf -d $level -T2"
        fi
    done
}

main "$@"
