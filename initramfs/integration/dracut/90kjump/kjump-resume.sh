#!/bin/sh
# dracut pre-mount hook: resume a kjump hibernation image when the
# configured device holds a whole one; otherwise the boot goes on.
[ -r /etc/kjump/kjump.conf ] || return 0
# shellcheck source=/dev/null
. /etc/kjump/kjump.conf
[ -n "$KJUMP_DEVICE" ] || return 0
if getargbool 0 kjump.noresume; then
	info "kjump: resume skipped (kjump.noresume)"
	return 0
fi
kjump resume --device "$KJUMP_DEVICE" ${KJUMP_OFFSET:+--offset "$KJUMP_OFFSET"} --kernel /usr/lib/kjump/vmlinuz \
	${KJUMP_KEY_DEVICE:+--key-file "$KJUMP_KEY_DEVICE" --key-size "$KJUMP_KEY_SIZE"} \
	${KJUMP_PROMPT_TIMEOUT:+--prompt-timeout "$KJUMP_PROMPT_TIMEOUT"} \
	${KJUMP_RESUME_ATTEMPTS:+--max-attempts "$KJUMP_RESUME_ATTEMPTS"} \
	$([ "$KJUMP_REQUIRE_ENCRYPTION" = 1 ] && echo --require-encryption)
info "kjump: resume returned $?: continuing the normal boot"
