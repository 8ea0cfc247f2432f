# kjump as the dump collector of kdump-tools (Debian, Ubuntu).
#
# kdump-tools' kdump-config saves a dump with the command named
# makedumpfile, looked up in a PATH it sets itself, and always streams the
# dump to standard output (it adds -F to MAKEDUMP_ARGS) through its
# compressor into dump-incomplete: it has no setting that names another
# collector. It does source /etc/default/kdump-tools as shell, so a function
# named makedumpfile defined there runs in its place. To make kjump the
# collector, add this line at the end of /etc/default/kdump-tools:
#
#     . /usr/share/kjump/kdump-tools.sh
#
# In the crash kernel, kdump-config then runs:
# - for `makedumpfile --dump-dmesg VMCORE FILE`: kjump collect --dump-dmesg
#   VMCORE FILE, the crashed kernel's log as text;
# - for `makedumpfile $MAKEDUMP_ARGS VMCORE`: kjump collect with the same
#   options less -F, which writes a checksummed kjump image (a seekable
#   file, not a stream) to $KDUMP_STAMPDIR/dump.$KDUMP_STAMP.kjump. The
#   dump.$KDUMP_STAMP file kdump-config makes beside it stays empty. For
#   crash or drgn: kjump export IMAGE -o vmcore --format kdump.
# When kjump fails (a full disk, an option it does not take), its partial
# image is removed and the real makedumpfile runs as kdump-config asked,
# so the dump is still saved. Dumps sent over FTP or SSH, which kdump-tools
# streams, always go to the real makedumpfile.
#
# kdump-tools-dump.service also reads /etc/default/kdump-tools as a systemd
# EnvironmentFile, which ignores the line above.

makedumpfile() {
	local kjump_arg kjump_image
	if [ "$1" = --dump-dmesg ]; then
		kjump collect "$@" >&2 && return 0
		echo "kjump collect $* failed: running makedumpfile" >&2
		command makedumpfile "$@"
		return
	fi
	# Set by kdump-config's local save (also to NFS) only.
	if [ -z "${KDUMP_STAMPDIR-}" ] || [ -z "${KDUMP_STAMP-}" ]; then
		command makedumpfile "$@"
		return
	fi
	for kjump_arg do
		shift
		[ "$kjump_arg" = -F ] || set -- "$@" "$kjump_arg"
	done
	kjump_image="$KDUMP_STAMPDIR/dump.$KDUMP_STAMP.kjump"
	# kjump's report goes to the console, not into kdump-config's stream.
	kjump collect "$@" "$kjump_image" >&2 && return 0
	echo "kjump collect failed: removing $kjump_image and running makedumpfile" >&2
	rm -f "$kjump_image"
	command makedumpfile -F "$@"
}
