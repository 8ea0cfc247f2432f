#!/bin/busybox sh
# Kernel A's /init in the QEMU tests (tests/common/hibvm.rs). POSIX sh for
# busybox. What it does is chosen by words on the kernel command line:
#
#   kjump.mode=M       `kjump hibernate --then M` (poweroff, reboot,
#                      checkpoint); none or absent: no hibernation
#   kjump.target=DEV   the image's target for hibernate and info
#                      (default /dev/vda); resume always reads /dev/vda
#   kjump.fs=DEV       after the resume attempt, mount the ext4 on DEV at
#                      /mnt/a and write a file there; it stays mounted while
#                      A hibernates, as a root filesystem would
#   kjump.precheck=1   first, `kjump resume --dry-run`: the checks a resume
#                      makes, without resuming
#   kjump.otherboot=DEV  then, before `kjump resume`: mount the ext4 on DEV,
#                      write a file and unmount it, as another boot would
#   kjump.force=1      `kjump resume --force-stale-filesystems`
#   kjump.resume=DEV   the device `kjump resume` reads (default /dev/vda)
#   kjump.offset=HEX   `kjump resume --offset HEX`: a file target's map
#   kjump.swap=1       the target is a swap area, swapped on while A runs:
#                      hibernate swaps it off, and on again once A is back
#   kjump.hog=N        with kjump.swap: fill a tmpfs with two N MiB files
#                      so that part of it is swapped out; hibernate must
#                      refuse (the swapped pages no longer fit in RAM) until
#                      one is removed; the other is checked after the resume
#   kjump.cache=N      with kjump.fs: write N MiB to a file there, which
#                      stays in the page cache
#   kjump.free=1       `kjump hibernate --free-memory`
#   kjump.pass=WORD    `kjump hibernate --encrypt` with the passphrase WORD
#   kjump.keydev=DEV   `kjump hibernate --encrypt` with the first 64 bytes of
#                      DEV as its key file, and `kjump resume --key-file DEV
#                      --key-size 64`: the restore kernel reads the key there
#   kjump.memcheck=N   before hibernating, start /bin/memcheck over N MiB of
#                      its memory (it re-checks every word every 2 s) and
#                      wait for its first good pass; after the resume, wait
#                      for two more passes
#   kjump.escape=1     first a `kjump hibernate` that must fail: its
#                      --append gives the capture kernel the top megabyte of
#                      the crashkernel region as RAM, which kjump keeps out
#                      of it, so its tripwire finds it outside its region;
#                      then the real hibernation
#   kjump.shell=S      `kjump hibernate --file /bin/busybox:bin/sh
#                      --prompt-timeout S`: B offers a rescue shell for S
#                      seconds after a failed capture
#   kjump.rappend=WORD `kjump resume --append WORD`
#   kjump.rtimeout=S   `kjump resume --prompt-timeout S`
#   kjump.attempts=N   `kjump resume --max-attempts N`
#   kjump.crash=1      with kjump.fs, once hibernate returned (a checkpoint):
#                      write a file there, sync, and reset the machine
#                      without unmounting (sysrq b), as a crash would
#   kjump.waitdisk=DEV before hibernating, wait until DEV appears (a disk
#                      the test plugs in through QMP)
#   kjump.selftest=1   instead of all this: `kjump selftest` (two kexec
#                      jumps into a payload that jumps straight back), then
#                      power off
#   kjump.kdump=SEED   instead of all this: A writes a pattern from SEED to
#                      a tmpfs file (with kjump.memcheck=N, also keeps N MiB
#                      in use), loads a kdump crash kernel and crashes;
#                      the crash kernel copies /proc/vmcore to /dev/vdb
#                      and, with a /dev/vdc, captures it there, and, with a
#                      /dev/vdd, collects it there as makedumpfile's
#                      callers run it (`kjump collect -d 31`; kdump block)
#
# After a resume the script continues where `kjump hibernate` returned, with
# the variables of the boot that hibernated.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
up() { cut -d' ' -f1 /proc/uptime; }
key() { sed -n "s/.*kjump\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
md5() { md5sum <"$1" | cut -d' ' -f1; }
# Every kernel the tests boot skips the IO-APIC timer check, as KVM guests
# do: under TCG on a loaded host it can miss the timer's ticks and panic
# ("IO-APIC + timer doesn't work"), which says nothing about kjump. The
# hibernating kernel has it from the rig's command line; the capture,
# restore and crash kernels get it here.
tcg=no_timer_check
# ---- the rig's jump selftest (tests/common/hibvm.rs): this only ----
if [ "$(key selftest)" = 1 ]; then
	echo "A: up for the jump selftest, uptime $(up) s, $(nproc) CPUs"
	kjump selftest
	echo "A: SELFTEST-EXIT $?"
	poweroff -f
fi
# ---- kdump (tests/kdump_vm.rs): this block only, then power off ----
# In a kdump crash kernel (/proc/vmcore exists): copy the crashed kernel's
# core raw to /dev/vdb and capture it with kjump to /dev/vdc. In A with
# kjump.kdump=SEED: write a pattern made from SEED to a tmpfs file, load this
# kernel with A's own root as its initramfs as the crash kernel, and crash.
if [ -e /proc/vmcore ] || [ -n "$(key kdump)" ]; then
	since() { echo "$(up) $1" | awk '{printf "%.2f", $1 - $2}'; }
	if [ -e /proc/vmcore ]; then
		echo "KDUMP: crash kernel up, uptime $(up) s, $(grep MemTotal /proc/meminfo | tr -s ' ')"
		echo "KDUMP: VMCORE-SIZE $(stat -c %s /proc/vmcore)"
		t0=$(up)
		dd if=/proc/vmcore of=/dev/vdb bs=1M conv=fsync 2>/dev/null
		echo "KDUMP: RAW-COPY-EXIT $? in $(since "$t0") s"
		if [ -b /dev/vdc ]; then
			t0=$(up)
			kjump capture --source /proc/vmcore --target /dev/vdc
			echo "KDUMP: CAPTURE-EXIT $? in $(since "$t0") s"
		fi
		if [ -b /dev/vdd ]; then
			# As kdump-tools or Fedora's kdump service run a collector.
			t0=$(up)
			kjump collect -l --message-level 7 -d 31 /proc/vmcore /dev/vdd
			echo "KDUMP: COLLECT-EXIT $? in $(since "$t0") s"
		fi
		sync
		echo "KDUMP: DONE"
	else
		awk -v s="$(key kdump)" 'BEGIN { for (i = 0; i < 110000; i++) printf "kjump-kdump %s %08d\n", s, i }' >/tmp/kdump-pattern
		echo "KDUMP-A: PATTERN $(md5 /tmp/kdump-pattern) $(stat -c %s /tmp/kdump-pattern) bytes"
		# A's root without the bzImage; /proc, /sys, /dev and /tmp are other mounts.
		(cd / && find . -xdev | grep -v '^\./boot/' | cpio -o -H newc 2>/dev/null) >/tmp/kdump.cpio
		echo "KDUMP-A: INITRAMFS $(stat -c %s /tmp/kdump.cpio) bytes"
		# A busy machine: most of its memory in use by a process.
		busy=$(key memcheck)
		if [ -n "$busy" ]; then
			memcheck "$busy" /tmp/memcheck.passes &
			while [ "$(cat /tmp/memcheck.passes 2>/dev/null || echo 0)" -lt 1 ]; do sleep 1; done
			echo "KDUMP-A: BUSY $busy MiB, $(grep MemAvailable /proc/meminfo | tr -s ' ')"
		fi
		kexec -p /boot/bzImage --initrd=/tmp/kdump.cpio \
			--append="console=ttyS0 irqpoll nr_cpus=1 reset_devices nokaslr acpi_no_memhotplug panic=-1 $tcg"
		echo "KDUMP-A: LOAD-EXIT $? crash loaded $(cat /sys/kernel/kexec_crash_loaded)"
		echo "KDUMP-A: CRASH at $(up) s"
		echo c >/proc/sysrq-trigger
		echo "KDUMP-A: NO-CRASH"
	fi
	poweroff -f
fi
# ---- end of kdump ----
mode=$(key mode)
target=$(key target)
target=${target:-/dev/vda}
fs=$(key fs)
other=$(key otherboot)
force=
[ "$(key force)" = 1 ] && force=--force-stale-filesystems
resume=$(key resume)
resume=${resume:-/dev/vda}
offset=$(key offset)
swap=$(key swap)
cache=$(key cache)
free=
[ "$(key free)" = 1 ] && free=--free-memory
pass=$(key pass)
if [ -n "$pass" ]; then
	printf %s "$pass" >/tmp/pass
	free="$free --encrypt --passphrase-file /tmp/pass"
fi
memcheck=$(key memcheck)
# The crashkernel region's top megabyte as RAM, for kjump.escape.
outside() {
	end=$(sed -n 's/^ *[0-9a-f]*-\([0-9a-f]*\) : Crash kernel$/\1/p' /proc/iomem)
	printf 'memmap=1M@0x%x' $((0x$end + 1 - 1048576))
}
escape=
[ "$(key escape)" = 1 ] && escape=$(outside)
rappend=$(key rappend)
shell=$(key shell)
[ -n "$shell" ] && free="$free --file /bin/busybox:bin/sh --prompt-timeout $shell"
rtimeout=$(key rtimeout)
attempts=$(key attempts)
waitdisk=$(key waitdisk)
passes() { cat /tmp/memcheck.passes 2>/dev/null || echo 0; }
# Waits until memcheck has made $1 good passes; says so if it died first.
wait_passes() {
	while [ "$(passes)" -lt "$1" ]; do
		if ! kill -0 "$memcheck_pid" 2>/dev/null; then
			echo "A: MEMCHECK-DIED after $(passes) passes"
			return 1
		fi
		sleep 1
	done
}
keydev=$(key keydev)
if [ -n "$keydev" ]; then
	head -c 64 "$keydev" >/tmp/key
	free="$free --encrypt --key-file /tmp/key"
fi
echo "A: up, uptime $(up) s, mode ${mode:-none}, target $target"
if [ "$(key precheck)" = 1 ]; then
	kjump resume --device /dev/vda --kernel /boot/bzImage --dry-run
	echo "A: RESUME-DRY-RUN-EXIT $?"
fi
if [ -n "$other" ]; then
	mkdir -p /mnt/b
	if mount -t ext4 "$other" /mnt/b &&
		echo "another boot was here at $(up) s" >/mnt/b/other-boot &&
		umount /mnt/b; then
		echo "A: OTHER-BOOT wrote to $other"
	else
		echo "A: OTHER-BOOT-FAILED on $other"
	fi
fi
echo "A: resume start"
# $force is one word or none; the offset and the key device two or none.
# shellcheck disable=SC2086
kjump resume --device "$resume" ${offset:+--offset "$offset"} --kernel /boot/bzImage $force \
	${keydev:+--key-file "$keydev"} ${keydev:+--key-size 64} --append "$tcg" ${rappend:+--append "$rappend"} \
	${rtimeout:+--prompt-timeout "$rtimeout"} ${attempts:+--max-attempts "$attempts"}
echo "A: RESUME-EXIT $?"
if [ -n "$fs" ]; then
	mkdir -p /mnt/a
	if mount -t ext4 "$fs" /mnt/a &&
		dd if=/dev/urandom of=/mnt/a/a-file bs=64k count=16 2>/dev/null; then
		echo "A: FS-MOUNTED $fs, a-file md5 $(md5 /mnt/a/a-file)"
	else
		echo "A: FS-FAILED $fs"
	fi
fi
if [ -n "$fs" ] && [ -n "$cache" ]; then
	dd if=/dev/urandom of=/mnt/a/cache-file bs=1M count="$cache" 2>/dev/null
	sync
	echo "A: CACHE-FILE $cache MiB, md5 $(md5 /mnt/a/cache-file)"
	grep -E '^(MemFree|Cached):' /proc/meminfo | tr -s ' ' | tr '\n' ' '
	echo
fi
hog=$(key hog)
if [ "$swap" = 1 ]; then
	swapon "$target" && echo "A: SWAPON $target"
	if [ -n "$hog" ]; then
		mkdir -p /mnt/hog
		mount -t tmpfs -o size=$((2 * hog + 64))m hog /mnt/hog
		dd if=/dev/urandom of=/mnt/hog/one bs=1M count="$hog" 2>/dev/null
		dd if=/dev/urandom of=/mnt/hog/two bs=1M count="$hog" 2>/dev/null
		echo "A: HOG $(grep -E '^(MemAvailable|SwapFree):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
		kjump hibernate --target "$target" --kernel /boot/bzImage --then "$mode" --dry-run
		echo "A: HOG-REFUSED-EXIT $?"
		rm /mnt/hog/one
		echo "A: HOG-KEPT md5 $(md5 /mnt/hog/two) $(grep -E '^(MemAvailable|SwapFree):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
	fi
fi
dd if=/dev/urandom of=/tmp/blob bs=1M count=16 2>/dev/null
echo "MD5 $(md5 /tmp/blob)"
if [ -n "$memcheck" ]; then
	memcheck "$memcheck" /tmp/memcheck.passes &
	memcheck_pid=$!
	wait_passes 1 && echo "A: MEMCHECK-READY $memcheck MiB"
fi
(
	n=0
	while :; do
		n=$((n + 1))
		echo "COUNT $n"
		sleep 1
	done
) &
sleep 3
if [ -n "$waitdisk" ]; then
	echo "A: WAITING-FOR-DISK $waitdisk"
	while [ ! -b "$waitdisk" ]; do sleep 1; done
	echo "A: DISK-PLUGGED $waitdisk, $(cat "/sys/class/block/${waitdisk##*/}/size") sectors"
fi
if [ "$mode" != none ] && [ -n "$mode" ]; then
	# Write throughput reference, past where the image goes, on a target
	# with room for it (1280 MiB).
	sectors=$(cat "/sys/class/block/${target##*/}/size" 2>/dev/null || echo 0)
	# Not on a swap area in use.
	if [ "$sectors" -ge 2621440 ] && [ "$swap" != 1 ]; then
		t0=$(up)
		dd if=/dev/zero of="$target" bs=1M seek=1024 count=256 oflag=direct 2>/dev/null
		t1=$(up)
		echo "A: DD-BASELINE 268435456 bytes in $(echo "$t1 $t0" | awk '{printf "%.2f", $1 - $2}') s"
	fi
	# $free is a few words or none.
	# shellcheck disable=SC2086
	kjump hibernate --target "$target" --kernel /boot/bzImage --then "$mode" $free --dry-run
	echo "A: DRY-RUN-EXIT $?"
	if [ -n "$escape" ]; then
		# shellcheck disable=SC2086
		kjump hibernate --target "$target" --kernel /boot/bzImage --then "$mode" $free --append "$tcg" --append "$escape"
		echo "A: ESCAPE-EXIT $?"
		[ -n "$memcheck" ] && wait_passes $(($(passes) + 2)) && echo "A: MEMCHECK-AFTER-ESCAPE $(passes) passes"
	fi
	echo "A: HIBERNATE --then $mode"
	# shellcheck disable=SC2086
	kjump hibernate --target "$target" --kernel /boot/bzImage --then "$mode" $free --append "$tcg"
	echo "A: HIBERNATE-EXIT $?"
	echo "RESUMED"
	echo "MD5 $(md5 /tmp/blob)"
	if [ -n "$memcheck" ]; then
		wait_passes $(($(passes) + 2)) && echo "A: MEMCHECK-AFTER $(passes) passes"
	fi
	if [ -n "$fs" ]; then
		echo "A: FS-AFTER a-file md5 $(md5 /mnt/a/a-file)"
		if [ -n "$cache" ]; then
			echo "A: CACHE-AFTER md5 $(md5 /mnt/a/cache-file)"
		fi
	fi
	if [ -n "$hog" ]; then
		echo "A: HOG-AFTER md5 $(md5 /mnt/hog/two)"
	fi
	if [ "$swap" = 1 ]; then
		if grep "^$target " /proc/swaps >/dev/null; then
			echo "A: SWAP-ACTIVE-AFTER $target"
		else
			echo "A: SWAP-INACTIVE-AFTER $target"
		fi
	fi
	sleep 4
	kjump info "$target"
	if [ -n "$fs" ] && [ "$(key crash)" = 1 ]; then
		dd if=/dev/urandom of=/mnt/a/after-checkpoint bs=64k count=16 2>/dev/null
		sync
		echo "A: WROTE-AFTER $fs, crashing"
		echo b >/proc/sysrq-trigger
	fi
fi
if [ -n "$fs" ]; then
	umount /mnt/a && echo "A: FS-UNMOUNTED $fs"
fi
echo "A: DONE"
poweroff -f
