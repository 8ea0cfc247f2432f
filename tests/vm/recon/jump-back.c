/*
 * Jump back from a kexec-jump kernel (B or R) into the kernel that jumped to
 * it (A): kexec_load with KEXEC_PRESERVE_CONTEXT, entry = A's re-entry point
 * (kexec_jump_back_entry= on our command line), and one zero-size segment at
 * a nonzero page, then reboot(LINUX_REBOOT_CMD_KEXEC). kexec-tools 2.0.25's
 * --load-jump-back-helper puts its zero-size segment at 0, which 6.12 treats
 * as covering all memory, and the load fails.
 *
 *   jump-back [ENTRY]    ENTRY defaults to kexec_jump_back_entry from /proc/cmdline
 *
 * Build: gcc -static -O2 -o jump-back jump-back.c
 */
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned long entry_from_cmdline(void)
{
	char buf[4096];
	FILE *f = fopen("/proc/cmdline", "r");
	size_t n;
	char *p;

	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strstr(buf, "kexec_jump_back_entry=");
	return p ? strtoul(p + strlen("kexec_jump_back_entry="), NULL, 0) : 0;
}

int main(int argc, char **argv)
{
	unsigned long entry = argc > 1 ? strtoul(argv[1], NULL, 0) : entry_from_cmdline();
	struct kexec_segment seg = { .buf = NULL, .bufsz = 0, .mem = (void *)0x1000, .memsz = 0 };
	long r;

	if (!entry) {
		fprintf(stderr, "jump-back: no entry (no kexec_jump_back_entry= in /proc/cmdline)\n");
		return 2;
	}
	if (syscall(SYS_kexec_load, entry, 1UL, &seg, KEXEC_PRESERVE_CONTEXT | KEXEC_ARCH_DEFAULT)) {
		perror("jump-back: kexec_load");
		return 1;
	}
	fprintf(stderr, "jump-back: loaded entry %#lx, jumping\n", entry);
	r = syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, NULL);
	/* Only reached when something jumps back into this kernel again. */
	fprintf(stderr, "jump-back: reboot returned %ld\n", r);
	return r ? 1 : 0;
}
