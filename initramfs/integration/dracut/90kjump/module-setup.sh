#!/bin/bash
# dracut module: resume a kjump hibernation image before the root
# filesystem is mounted (pre-mount hook), with kjump, kexec-tools, the
# restore kernel and /etc/kjump/kjump.conf in the initramfs.

KJUMP_CONF=${KJUMP_CONF:-/etc/kjump/kjump.conf}
KJUMP_BIN=${KJUMP_BIN:-/usr/bin/kjump}

check() {
	require_binaries kexec || return 1
	[[ -x $KJUMP_BIN && -r $KJUMP_CONF ]] || return 1
	return 0
}

depends() {
	return 0
}

install() {
	local KJUMP_KERNEL=
	# shellcheck source=/dev/null
	. "$KJUMP_CONF"
	# shellcheck disable=SC2154 # dracut sets $kernel to the kernel version
	local image=${KJUMP_KERNEL:-/boot/vmlinuz-$kernel}
	# kjump is static: no libraries to follow.
	inst_simple "$KJUMP_BIN" /usr/bin/kjump
	inst_multiple kexec
	inst_simple "$KJUMP_CONF" /etc/kjump/kjump.conf
	inst_simple "$image" /usr/lib/kjump/vmlinuz
	# shellcheck disable=SC2154
	inst_hook pre-mount 10 "$moddir/kjump-resume.sh"
}
