#!/usr/bin/env bash
# resume-bench.sh: kjump's restore pass against lz4 -d and zstd -d, warm and cold.
#
# Generates (or reuses) the seeded memory dump capture-bench.sh uses, captures
# it into a kjump image once, and compresses it once with `lz4 -1` and
# `zstd -1 -T2`. Then, RUNS times in turn, on the same input:
#
# warm (image and compressed dumps in the page cache):
#   kjump restore   restorer/examples/restore_to_file: the one pass the restore
#                   kernel R runs (restore::write_memory: each chunk read once,
#                   checked completely, its pages written through PhysMem, then
#                   flushed) into a file in /dev/shm standing in for /dev/mem
#   lz4 -d, zstd -d -T2 of the same dump into /dev/shm
# cold (page cache dropped before each command; needs root, skipped otherwise):
#   cold dd direct  dd iflag=direct bs=16M of the image: the disk's limit
#   cold dd cached  dd bs=16M of the image through the page cache (readahead)
#   cold restore    as warm (prefilled file), the image read through the page
#                   cache as R reads it (kjump_sys::PlaceReader: pread)
#   cold rest. direct  the same with the image read with O_DIRECT (--direct)
#   cold verify     kjump verify, the full check pass, for comparison
#
# Prints medians: GB/s (RAM restored for kjump restore, dump bytes for the
# peers, image bytes for dd and verify), wall and CPU seconds, peak RSS, the
# 1-minute load average before each run (min-max), ratios against the peers
# and against the disk's limit, and peak RSS against the 64 MiB bound of
# issue 16. The restore runs twice warm: into a new file, as the peers
# write theirs, and again into the same file, whose pages then exist as
# RAM's do (tmpfs allocating and zeroing 1M pages at their first write
# fault is a cost R does not pay on /dev/mem). As root, a third time into
# a prefilled file on a private tmpfs mounted huge=always, where the
# mapping faults once per 2 MiB: the closest stand-in for /dev/mem, which
# the cold runs restore into (into a prefilled /dev/shm file otherwise). A file in /dev/shm mapped and written counts toward RSS, while
# /dev/mem (R's real target) does not: the example therefore also samples
# its own RssAnon + RssFile, which is the figure the bound is about.
#
# Environment (all optional):
#   KJUMP_BENCH_SIZE     RAM size of the dump, as kjump-dumpgen --size takes it (4G)
#   KJUMP_BENCH_DIR      work directory, keeps the dump between runs (/var/tmp/kjump-bench)
#   KJUMP_BENCH_RUNS     runs per command (3)
#   KJUMP_BENCH_THREADS  threads of the capture and the restore (nproc)
#   KJUMP_BENCH_SHM      memory-backed directory for the restored RAM (/dev/shm)
#   KJUMP, KJUMP_DUMPGEN, KJUMP_RESTORE  binaries to use instead of building them
#   CARGO_TARGET_DIR     where cargo puts the release binaries (ROOT/target)
#
# Usage: tests/bench/resume-bench.sh
set -euo pipefail

readonly SEED=20261127 # the same dump as capture-bench.sh
readonly LAYOUT=qemu
readonly SIZE=${KJUMP_BENCH_SIZE:-4G}
readonly DIR=${KJUMP_BENCH_DIR:-/var/tmp/kjump-bench}
readonly RUNS=${KJUMP_BENCH_RUNS:-3}
readonly THREADS=${KJUMP_BENCH_THREADS:-$(nproc)}
readonly SHM=${KJUMP_BENCH_SHM:-/dev/shm}
readonly RSS_BOUND_MIB=64 # issue 16: peak RSS at most 64 MiB whatever the RAM size
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly BENCH=resume-bench
# shellcheck source=tests/bench/common.sh
. "$ROOT/tests/bench/common.sh"
# Every file this script makes starts with resume. (capture-bench.sh, which
# shares DIR, removes out.*, time.* and log.*).
readonly IMAGE=$DIR/resume.kjump
readonly LZ4=$DIR/resume.lz4
readonly ZST=$DIR/resume.zst
readonly MEM=$SHM/kjump-resume-bench.mem
# A private tmpfs with huge pages (root only): prefilled, the closest stand-in
# for /dev/mem, whose mapping is whole at mmap time and never faults.
readonly HUGE_DIR=$DIR/resume.huge
readonly HUGE_MEM=$HUGE_DIR/mem
HUGE=0

check_tools() {
    [[ -x $TIME ]] || die "$TIME not found; install it: apt-get install time"
    need lz4 lz4
    need zstd zstd
    need awk mawk
    need dd coreutils
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "KJUMP_BENCH_RUNS must be a positive integer, not '$RUNS'"
    [[ -d $SHM && -w $SHM ]] || die "$SHM is not a writable directory"
    [[ $(stat -f -c %T "$SHM") == tmpfs ]] || note "warning: $SHM is not tmpfs; the restore target is not memory-backed"
    COLD=1
    if ((EUID != 0)); then
        COLD=0
        note "not root: the cold case (echo 3 > /proc/sys/vm/drop_caches) is skipped; run as root for it"
    fi
}

# Builds whichever binaries were not given through the environment, and
# sets KJUMP, KJUMP_DUMPGEN and KJUMP_RESTORE.
build() {
    local bin=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release
    local packages=()
    [[ -n ${KJUMP:-} ]] || packages+=(-p kjump)
    [[ -n ${KJUMP_DUMPGEN:-} ]] || packages+=(-p kjump-dumpgen)
    if ((${#packages[@]})) || [[ -z ${KJUMP_RESTORE:-} ]]; then
        need cargo "rustup (see https://rustup.rs)"
    fi
    if ((${#packages[@]})); then
        note "building release binaries: cargo build --release ${packages[*]}"
        (cd "$ROOT" && cargo build --release --quiet "${packages[@]}") || die "cargo build failed"
    fi
    if [[ -z ${KJUMP_RESTORE:-} ]]; then
        note "building the restore example: cargo build --release -p kjump-restorer --example restore_to_file"
        (cd "$ROOT" && cargo build --release --quiet -p kjump-restorer --example restore_to_file) ||
            die "cargo build failed"
    fi
    KJUMP=${KJUMP:-$bin/kjump}
    KJUMP_DUMPGEN=${KJUMP_DUMPGEN:-$bin/kjump-dumpgen}
    KJUMP_RESTORE=${KJUMP_RESTORE:-$bin/examples/restore_to_file}
    local b
    for b in "$KJUMP" "$KJUMP_DUMPGEN" "$KJUMP_RESTORE"; do
        [[ -x $b ]] || die "binary $b not found or not executable"
    done
}

# The dump (generate_dump), and room for what the runs write beside it.
prepare_dump() {
    generate_dump
    local avail
    avail=$(df -B1 --output=avail "$DIR" | tail -n 1)
    # The image and the two compressed dumps: under the dump's size together.
    ((avail > INPUT_BYTES)) || die "only $avail bytes free in $DIR; need about $INPUT_BYTES"
    avail=$(df -B1 --output=avail "$SHM" | tail -n 1)
    # One restored RAM at a time, plus room for the rest of the machine.
    ((avail > INPUT_BYTES * 5 / 4)) ||
        die "only $avail bytes free in $SHM; need about $((INPUT_BYTES * 5 / 4))"
}

# The inputs, made once per run of the script: the image, and the dump
# compressed by each peer.
prepare_inputs() {
    rm -f "$IMAGE" "$LZ4" "$ZST" "$MEM"
    note "warming the page cache with the dump"
    cat "$DUMP" >/dev/null
    note "capturing $DUMP into $IMAGE"
    "$KJUMP" capture --source "$DUMP" --target "$IMAGE" --threads "$THREADS" >/dev/null ||
        die "kjump capture failed"
    note "compressing it with lz4 -1 and zstd -1 -T2"
    lz4 -1 -f -q "$DUMP" "$LZ4" || die "lz4 -1 failed"
    zstd -1 -T2 -f -q "$DUMP" -o "$ZST" || die "zstd -1 -T2 failed"
    IMAGE_BYTES=$(stat -c %s "$IMAGE")
    RAM_BYTES=
}

# Results, keyed by command name: space-separated per-run values.
declare -A SECS CPU RSS OWN LOAD BYTES
NAMES=()

# timed NAME BYTES COMMAND...: runs COMMAND under GNU time and records wall
# seconds, CPU seconds (user + system), peak RSS (KiB), the load average
# before it, and BYTES, what its GB/s is counted in. With COLD_RUN=1 the
# page cache is dropped first.
timed() {
    local name=$1 bytes=$2
    shift 2
    local log=$DIR/resume.log.$name stats=$DIR/resume.time.$name
    sync # outside the timed region: nothing dirty left from the last command
    if ((${COLD_RUN:-0})); then
        echo 3 >/proc/sys/vm/drop_caches
    fi
    local load
    load=$(cut -d ' ' -f 1 /proc/loadavg)
    if ! "$TIME" -f '%e %U %S %M' -o "$stats" "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "'$name' failed: $*"
    fi
    local secs user sys kib own
    read -r secs user sys kib <"$stats"
    # The restore example's own sample of RssAnon + RssFile, without the
    # mapped file standing in for memory.
    own=$(sed -n 's/.*peak own RSS \([0-9]*\) KiB.*/\1/p' "$log")
    if [[ $bytes == ram ]]; then
        bytes=$(sed -n 's/^restored \([0-9]*\) bytes of RAM.*/\1/p' "$log")
        [[ -n $bytes ]] || die "'$name' printed no 'restored N bytes of RAM' line"
        RAM_BYTES=$bytes
    fi
    [[ -v SECS[$name] ]] || NAMES+=("$name")
    SECS[$name]+="$secs "
    CPU[$name]+="$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') "
    RSS[$name]+="$kib "
    OWN[$name]+="${own:--} "
    LOAD[$name]+="$load "
    BYTES[$name]=$bytes
}

warm_once() {
    rm -f "$MEM"
    # Into a new file, as the peers write theirs: tmpfs allocates and
    # zeroes each page at its first write fault.
    timed "kjump restore" ram "$KJUMP_RESTORE" "$IMAGE" "$MEM" --threads "$THREADS"
    # The same file again: its pages exist, as RAM's do, and only the
    # mapping faults remain (a /dev/mem mapping has none).
    timed "restore prefilled" ram "$KJUMP_RESTORE" "$IMAGE" "$MEM" --threads "$THREADS"
    rm -f "$MEM"
    if ((HUGE)); then
        timed "restore huge pref." ram "$KJUMP_RESTORE" "$IMAGE" "$HUGE_MEM" --threads "$THREADS"
    fi
    timed "lz4 -d" "$INPUT_BYTES" lz4 -d -f -q "$LZ4" "$MEM"
    rm -f "$MEM"
    timed "zstd -d -T2" "$INPUT_BYTES" zstd -d -T2 -f -q "$ZST" -o "$MEM"
    rm -f "$MEM"
}

cold_once() {
    local COLD_RUN=1
    timed "cold dd direct" "$IMAGE_BYTES" dd if="$IMAGE" of=/dev/null bs=16M iflag=direct status=none
    timed "cold dd cached" "$IMAGE_BYTES" dd if="$IMAGE" of=/dev/null bs=16M status=none
    # Into a prefilled file (see main): what the cold runs measure is the
    # reading, not tmpfs allocating pages.
    timed "cold restore" ram "$KJUMP_RESTORE" "$IMAGE" "$COLD_MEM" --threads "$THREADS"
    timed "cold rest. direct" ram "$KJUMP_RESTORE" "$IMAGE" "$COLD_MEM" --threads "$THREADS" --direct
    timed "cold verify" "$IMAGE_BYTES" "$KJUMP" verify "$IMAGE"
}

# median VALUES...: the median of numbers ('-' if any is '-').

# med NAME TABLE: the median of NAME's values in TABLE.
med() {
    local -n table=$2
    # shellcheck disable=SC2086 # the values are space-separated on purpose
    median ${table[$1]}
}

# gbps BYTES SECONDS: GB (1e9 bytes) per second.
gbps() {
    awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / s / 1e9; else print "inf" }'
}

mib() {
    [[ $1 == - ]] && { echo -; return; }
    awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

print_environment() {
    echo "== kjump resume benchmark =="
    echo "dump:     $DUMP"
    echo "          $(sed 's/^[^ ]*: //' "$DUMP.info")"
    echo "          $INPUT_BYTES bytes, $RAM_BYTES bytes of RAM"
    echo "image:    $IMAGE, $IMAGE_BYTES bytes ($(awk -v i="$INPUT_BYTES" -v o="$IMAGE_BYTES" 'BEGIN { printf "%.2f", i / o }')x)"
    echo "peers:    lz4 -1 $(stat -c %s "$LZ4") bytes, zstd -1 -T2 $(stat -c %s "$ZST") bytes"
    echo "target:   $MEM ($(stat -f -c %T "$SHM")), one at a time"
    if ((HUGE)); then
        echo "          $HUGE_MEM (tmpfs huge=always, prefilled) for 'huge pref.' and the cold runs"
    fi
    echo "runs:     $RUNS per command, medians shown"
    echo "nproc:    $(nproc)   cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel:   $(uname -r)   fs: $(df -T "$DIR" | awk 'NR == 2 { print $2 " on " $1 }')"
    echo "kjump:    $("$KJUMP" --version 2>/dev/null || echo "version unknown") (--threads $THREADS)"
    echo "lz4:      $(lz4 --version 2>&1 | head -n 1)"
    echo "zstd:     $(zstd --version 2>&1 | head -n 1)"
    echo
}

print_table() {
    printf '%-18s %7s %8s %7s %9s %9s %11s\n' command "GB/s" seconds "cpu s" "RSS MiB" "own MiB" "load"
    local name secs loads
    for name in "${NAMES[@]}"; do
        secs=$(med "$name" SECS)
        # shellcheck disable=SC2086
        loads=$(printf '%s\n' ${LOAD[$name]} | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }')
        printf '%-18s %7s %8s %7s %9s %9s %11s\n' "$name" "$(gbps "${BYTES[$name]}" "$secs")" "$secs" \
            "$(med "$name" CPU)" "$(mib "$(med "$name" RSS)")" "$(mib "$(med "$name" OWN)")" "$loads"
    done
    echo "(GB/s: RAM bytes restored for the restore rows, dump bytes for lz4/zstd, image bytes for"
    echo " dd and verify; GB = 1e9. cpu s = user + system. RSS = peak from GNU time, which for the"
    echo " restore counts the mapped /dev/shm file; own = the example's sampled peak RssAnon + RssFile,"
    echo " what R would hold with /dev/mem. load = 1-minute load average before each run, min-max)"
}

# ratio_line A B WHAT: A's median seconds over B's.
ratio_line() {
    awk -v a="$(med "$1" SECS)" -v b="$(med "$2" SECS)" -v w="$3" 'BEGIN {
        if (a > 0) printf "%-46s %5.2fx\n", w, b / a; else printf "%-46s (too fast to time)\n", w
    }'
}

print_ratios() {
    echo
    local name peer
    for name in "kjump restore" "restore prefilled" "restore huge pref."; do
        [[ -v SECS[$name] ]] || continue
        for peer in "lz4 -d" "zstd -d -T2"; do
            ratio_line "$name" "$peer" "warm: $name throughput / $peer:"
        done
        awk -v b="$RAM_BYTES" -v s="$(med "$name" SECS)" -v n="$name" 'BEGIN {
            r = b / s / 1e9
            printf "warm: %s: %.2f GB/s of RAM restored; target >= 4 GB/s: %s\n", n, r, (r >= 4 ? "met" : "NOT met")
        }'
    done
    if ((COLD)); then
        local dd
        dd=$(med "cold dd direct" SECS)
        awk -v i="$IMAGE_BYTES" -v d="$dd" 'BEGIN {
            printf "cold: disk limit %.2f GB/s (dd iflag=direct): %.2f s for the image\n", i / d / 1e9, d
        }'
        for name in "cold restore" "cold rest. direct" "cold verify" "cold dd cached"; do
            awk -v k="$(med "$name" SECS)" -v d="$dd" -v n="$name" 'BEGIN {
                printf "cold: %-17s %6.2f s = %.2fx the disk limit; target <= 1.10x: %s\n",
                    n ":", k, k / d, (k <= 1.1 * d ? "met" : "NOT met")
            }'
        done
    fi
    echo
    for name in "${NAMES[@]}"; do
        [[ $name == *restor* || $name == *rest.* ]] || continue
        awk -v o="$(med "$name" OWN)" -v r="$(med "$name" RSS)" -v b="$RSS_BOUND_MIB" -v n="$name" 'BEGIN {
            printf "peak RSS %-18s own %.1f MiB (with the mapped file %.1f); bound %d MiB: %s\n",
                n ":", o / 1024, r / 1024, b, (o / 1024 <= b ? "met" : "NOT met")
        }'
    done
}

# Mounts the huge-page tmpfs and prefills it: its first touch is slow in
# some VMs (the host backs the guest's memory then) and is not timed.
mount_huge() {
    if ((EUID != 0)) || [[ ! -d /sys/kernel/mm/transparent_hugepage ]]; then
        note "not root or no transparent huge pages: no huge-page tmpfs case"
        return
    fi
    mkdir -p "$HUGE_DIR"
    mountpoint -q "$HUGE_DIR" ||
        mount -t tmpfs -o "size=$((INPUT_BYTES * 9 / 8)),huge=always,mode=0700" kjump-resume-bench "$HUGE_DIR" ||
        die "mounting a huge-page tmpfs on $HUGE_DIR failed"
    HUGE=1
    note "prefilling $HUGE_MEM (huge pages)"
    "$KJUMP_RESTORE" "$IMAGE" "$HUGE_MEM" --threads "$THREADS" >/dev/null || die "restore_to_file failed"
}

cleanup() {
    rm -f "$MEM"
    if ((HUGE)); then
        rm -f "$HUGE_MEM"
        umount "$HUGE_DIR" && rmdir "$HUGE_DIR"
    fi
}

main() {
    trap cleanup EXIT # 4 GiB of memory each otherwise
    check_tools
    build
    prepare_dump
    prepare_inputs
    mount_huge
    note "warming the page cache with the image and the compressed dumps"
    cat "$IMAGE" "$LZ4" "$ZST" >/dev/null
    local run
    for ((run = 1; run <= RUNS; run++)); do
        note "warm run $run of $RUNS"
        warm_once
    done
    if ((COLD)); then
        COLD_MEM=$MEM
        if ((HUGE)); then
            COLD_MEM=$HUGE_MEM
        else
            note "prefilling $MEM for the cold runs"
            "$KJUMP_RESTORE" "$IMAGE" "$MEM" --threads "$THREADS" >/dev/null || die "restore_to_file failed"
        fi
        for ((run = 1; run <= RUNS; run++)); do
            note "cold run $run of $RUNS"
            cold_once
        done
    fi
    rm -f "$DIR"/resume.time.* "$DIR"/resume.log.* "$MEM"
    print_environment
    print_table
    print_ratios
}

main "$@"
