/*
 * kjump-workload: the service tests/system_vm.rs runs in its Debian guest to
 * prove that the same system came back from a hibernation.
 *
 * It fills MIB MiB of anonymous memory from SEED (see fill), and then, in
 * passes 2 s apart, re-reads all of it, computes its checksum (FNV-1a over
 * 64-bit words) and compares it with the one computed when it was filled.
 * Each good pass advances a counter, appends "pass N sum HEX" to LOG on the
 * root filesystem (fsync'd) and writes "pid=P pass=N sum=HEX ok" to STATUS
 * (replaced atomically). A bad pass writes "... BAD" and exits 1, so systemd
 * marks the unit failed.
 *
 *   kjump-workload --sum MIB SEED            print the checksum and exit
 *   kjump-workload MIB SEED LOG STATUS       run
 *
 * Built static (cc -static -O2) by the test, so it runs in any guest.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/*
 * Each 4 KiB page: 8 words from the generator, then one value of its own
 * repeated. Every page differs from every other (a page restored to the
 * wrong place changes the checksum), none is zero (kjump skips zero pages),
 * and lz4 packs the repeats, so the image stays small and a cycle quick
 * under emulation.
 */
static void fill(uint64_t *words, size_t n, uint64_t seed)
{
	uint64_t x = seed ? seed : 1;
	for (size_t i = 0; i < n; i++) {
		if (i % 512 < 8) {
			x ^= x >> 12;
			x ^= x << 25;
			x ^= x >> 27;
			words[i] = x * 0x2545F4914F6CDD1DULL;
		} else {
			words[i] = ((i / 512) + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
		}
	}
}

static uint64_t checksum(const uint64_t *words, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= words[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void die(const char *what)
{
	fprintf(stderr, "kjump-workload: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void write_status(const char *path, const char *text)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) < 0)
		die(tmp);
	if (rename(tmp, path) < 0)
		die(path);
}

int main(int argc, char **argv)
{
	int sum_only = argc == 4 && strcmp(argv[1], "--sum") == 0;
	if (!sum_only && argc != 5) {
		fprintf(stderr, "usage: %s --sum MIB SEED | %s MIB SEED LOG STATUS\n", argv[0], argv[0]);
		return 2;
	}
	char **a = sum_only ? argv + 2 : argv + 1;
	size_t bytes = strtoull(a[0], NULL, 10) << 20;
	uint64_t seed = strtoull(a[1], NULL, 0);
	size_t n = bytes / sizeof(uint64_t);
	uint64_t *words = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (words == MAP_FAILED)
		die("mmap");
	fill(words, n, seed);
	uint64_t want = checksum(words, n);
	if (sum_only) {
		printf("%016" PRIx64 "\n", want);
		return 0;
	}
	const char *log = a[2], *status = a[3];
	int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (logfd < 0)
		die(log);
	printf("kjump-workload: %zu MiB filled from seed %" PRIu64 ", checksum %016" PRIx64 "\n",
	       bytes >> 20, seed, want);
	fflush(stdout);
	char line[256];
	for (uint64_t pass = 1;; pass++) {
		uint64_t got = checksum(words, n);
		int ok = got == want;
		snprintf(line, sizeof line, "pid=%ld pass=%" PRIu64 " sum=%016" PRIx64 " %s\n",
			 (long)getpid(), pass, got, ok ? "ok" : "BAD");
		if (!ok) {
			write_status(status, line);
			fprintf(stderr, "kjump-workload: %s", line);
			return 1;
		}
		int len = snprintf(line, sizeof line, "pass %" PRIu64 " sum %016" PRIx64 "\n", pass, got);
		if (write(logfd, line, len) != len || fsync(logfd) < 0)
			die(log);
		snprintf(line, sizeof line, "pid=%ld pass=%" PRIu64 " sum=%016" PRIx64 " ok\n",
			 (long)getpid(), pass, got);
		write_status(status, line);
		sleep(2);
	}
}
