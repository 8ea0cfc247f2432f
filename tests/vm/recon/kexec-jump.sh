#!/usr/bin/env bash
# Reconnaissance, by hand and without kjump: boot the test kernel in QEMU as A
# with crashkernel=256M, load the same kernel as B into the crash region with
# kexec-tools (--load-preserve-context, B's memmap/iomem command line from
# shared/KEXEC-JUMP.md), jump to B, and from B jump back to A. A checks that a
# 16 MiB tmpfs file survived the round trip. Every console line is printed
# with the seconds since QEMU started.
#
#   tests/vm/recon/kexec-jump.sh [BZIMAGE]     (default: tests/vm/build-kernel.sh)
#
# Environment:
#   KJUMP_RECON_HELPER  how B jumps back: "kexec-tools" tries
#                       `kexec --load-jump-back-helper` first, then jump-back.c;
#                       "jump-back" (default) uses jump-back.c only
#   KJUMP_RECON_SMP     guest CPUs (default 1)
#
# Exits 0 when A printed that it was resumed with its data intact.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=${1:-$(bash "$here/../build-kernel.sh")}
helper=${KJUMP_RECON_HELPER:-jump-back}
smp=${KJUMP_RECON_SMP:-1}

die() {
	echo "kexec-jump.sh: $*" >&2
	exit 1
}
for tool in qemu-system-x86_64 busybox cpio kexec gcc; do
	command -v "$tool" >/dev/null || die "$tool not found (tests/setup.sh installs qemu-system-x86 busybox-static cpio kexec-tools; gcc from build-essential)"
done
busybox=$(command -v busybox)
file -L "$busybox" | grep -q 'statically linked' || die "$busybox is not static (install busybox-static)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One root for both kernels; /init tells them apart by kexec_jump_back_entry=.
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
	[[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done
# Debian's kexec is dynamically linked: bring its libraries along.
cp "$(command -v kexec)" "$root/sbin/kexec"
for lib in $(ldd "$(command -v kexec)" | grep -o '/[^ ]*'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done
gcc -static -O2 -Wall -o "$root/sbin/jump-back" "$here/jump-back.c"

cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t debugfs debug /sys/kernel/debug 2>/dev/null

if grep -q kexec_jump_back_entry= /proc/cmdline; then
	echo "B: up, uptime $(cut -d' ' -f1 /proc/uptime) s"
	echo "B: cmdline: $(cat /proc/cmdline)"
	echo "B: iomem:"
	grep -v '^ ' /proc/iomem | sed 's/^/B:   /'
	entry=$(sed -n 's/.*kexec_jump_back_entry=\(0x[0-9a-fA-F]*\).*/\1/p' /proc/cmdline)
	# A's RAM through /dev/mem (an ACPI range in B; needs iomem=relaxed).
	if dd if=/dev/mem of=/dev/null bs=4096 skip=256 count=256 2>/tmp/dd; then
		echo "B: read 1 MiB of A's RAM at 1 MiB through /dev/mem"
	else
		echo "B: /dev/mem read at 1 MiB failed: $(cat /tmp/dd)"
	fi
	if grep -q 'kjump_helper=kexec-tools' /proc/cmdline; then
		echo "B: kexec --load-jump-back-helper --entry=$entry"
		if kexec --load-jump-back-helper --entry="$entry"; then
			echo "B: helper loaded; kexec -e"
			kexec -e
			echo "B: kexec -e returned $?"
		else
			echo "B: kexec-tools helper failed ($?); falling back to jump-back"
		fi
	fi
	[ -r /sys/kernel/debug/x86/pat_memtype_list ] && echo "B: /sys/kernel/debug/x86/pat_memtype_list is there"
	echo "B: jump-back $entry"
	jump-back "$entry"
	echo "B: jump-back failed ($?)"
	poweroff -f
fi

echo "A: up, uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "A: cmdline: $(cat /proc/cmdline)"
crash=$(sed -n 's/^ *\([0-9a-f]*\)-\([0-9a-f]*\) : Crash kernel$/\1 \2/p' /proc/iomem)
[ -n "$crash" ] || { echo "A: FAIL no Crash kernel in /proc/iomem"; poweroff -f; }
grep 'Crash kernel' /proc/iomem | sed 's/^ */A: iomem: /'
set -- $crash
cs=$((0x$1))
ce=$((0x$2 + 1))

# Every piece of A's System RAM outside 64K@64K and the crash region becomes
# memmap=<size>K#<start>K (ACPI data) in B.
ram_args=
emit() {
	[ "$2" -gt "$1" ] && ram_args="$ram_args memmap=$((($2 - $1) / 1024))K#$(($1 / 1024))K"
	return 0
}
for r in $(sed -n 's/^\([0-9a-f]*\)-\([0-9a-f]*\) : System RAM$/\1-\2/p' /proc/iomem); do
	s=$((0x${r%-*}))
	e=$((0x${r#*-} + 1))
	for hole in 65536-131072 $cs-$ce; do
		hs=${hole%-*}
		he=${hole#*-}
		if [ "$hs" -lt "$e" ] && [ "$he" -gt "$s" ]; then
			[ "$s" -lt "$hs" ] && emit "$s" "$hs"
			s=$he
		fi
	done
	emit "$s" "$e"
done
extra=
grep -q kjump_helper=kexec-tools /proc/cmdline && extra=kjump_helper=kexec-tools
bcmd="console=ttyS0 panic=-1 iomem=relaxed memmap=exactmap memmap=64K@64K memmap=$((($ce - $cs) / 1024 - 1024))K@$(($cs / 1024))K$ram_args${extra:+ $extra}"

dd if=/dev/urandom of=/tmp/blob bs=1M count=16 2>/dev/null
sum=$(md5sum </tmp/blob)
echo "A: 16 MiB tmpfs file md5 $sum"
min=$(printf 0x%x $cs)
max=$(printf 0x%x $((ce - 1)))
echo "A: kexec --load-preserve-context --mem-min=$min --mem-max=$max /bzImage --initrd=/b.cpio --append=\"$bcmd\""
kexec --load-preserve-context --mem-min=$min --mem-max=$max /bzImage --initrd=/b.cpio --append="$bcmd" ||
	{ echo "A: FAIL kexec load ($?)"; poweroff -f; }
echo "A: loaded; kexec -e at uptime $(cut -d' ' -f1 /proc/uptime) s"
kexec -e
echo "A: resumed: kexec -e returned $?, uptime $(cut -d' ' -f1 /proc/uptime) s"
after=$(md5sum </tmp/blob)
if [ "$after" = "$sum" ]; then
	echo "A: RESUMED OK, tmpfs file intact"
else
	echo "A: FAIL tmpfs file changed: $after"
fi
ls /sys/bus/cpu/devices/ | sed 's/^/A: cpu /'
poweroff -f
INIT
chmod +x "$root/init"

# B's initramfs: the root without the kernel; A's: the root plus bzImage and B's.
(cd "$root" && find . | sort | cpio -o -H newc --quiet) >"$tmp/b.cpio"
cp "$kernel" "$root/bzImage"
cp "$tmp/b.cpio" "$root/b.cpio"
(cd "$root" && find . | sort | cpio -o -H newc --quiet) >"$tmp/a.cpio"
echo "kexec-jump.sh: kernel $kernel, initramfs A $(du -h "$tmp/a.cpio" | cut -f1), B $(du -h "$tmp/b.cpio" | cut -f1)" >&2

append="console=ttyS0 crashkernel=256M panic=-1"
[[ $helper == kexec-tools ]] && append="$append kjump_helper=kexec-tools"
start=$EPOCHREALTIME
status=1
while IFS= read -r line; do
	line=${line%$'\r'}
	printf '%7.2f %s\n' "$(bc <<<"$EPOCHREALTIME - $start")" "$line"
	[[ $line == *'A: RESUMED OK'* ]] && status=0
done < <(timeout 300 qemu-system-x86_64 -accel tcg -cpu max -m 1G -smp "$smp" \
	-nographic -no-reboot -kernel "$kernel" -initrd "$tmp/a.cpio" -append "$append" 2>&1)
exit $status
