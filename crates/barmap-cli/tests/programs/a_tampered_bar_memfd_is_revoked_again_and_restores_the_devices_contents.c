// SPDX-License-Identifier: MIT
/*
 * A hostile program under `barmap run --device vfio-user:SOCKET` against
 * `barmap serve --device default,memory=...`: it finds the BAR's file in
 * /proc/self/fd (the fd barmap's client received from the server) and
 * tampers with it, as any program could.
 *
 * - Revoked (COMMAND.MEM cleared), a forked child grows the file back to
 *   the BAR's size and pwrites into it: the server's watcher truncates it
 *   again, so a load through the mapping SIGBUSes again (polled, at most
 *   10 s); after COMMAND.MEM is set again the BAR holds the device's
 *   contents, not the tamperer's bytes.
 * - Live, a child shrinks the file to one page: the server sets the size
 *   back, the page past the shrink reads zero (as if the child had written
 *   zeros), the first page keeps its contents.
 */
#define _GNU_SOURCE
#include "barmap_test.h"
#include <dirent.h>
#include <sys/wait.h>

#define PAGE 4096

/* The fd of the served BAR's memfd in this process (its link reads
 * "/memfd:barmap-bar..."), or -1. */
static int find_bar_fd(void)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1;

	DIE_UNLESS(dir != NULL, "open /proc/self/fd");
	while ((e = readdir(dir)) != NULL) {
		char path[300], link[256];
		ssize_t n;

		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		n = readlink(path, link, sizeof link - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (strncmp(link, "/memfd:barmap-bar", 17) == 0) {
			found = atoi(e->d_name);
			break;
		}
	}
	closedir(dir);
	return found;
}

/* Polls a load at `p` until it SIGBUSes (want_bus) or succeeds, for at
 * most `ms`; returns whether it did. */
static int wait_for(volatile uint8_t *p, int want_bus, long ms, uint64_t *v)
{
	long end = bt_now_ms() + ms;

	while (bt_now_ms() < end) {
		if (bt_read_or_sigbus(p, v) != want_bus)
			return 1;
		usleep(1000);
	}
	return 0;
}

/* Runs the tamper in a forked child (a process of its own); returns
 * whether its calls succeeded. */
static int tamper(int fd, off_t size, int evil)
{
	pid_t pid = fork();
	int st = 0;

	if (pid == 0) {
		uint64_t bad = 0xeeeeeeeeeeeeeeeeull;
		int ok = ftruncate(fd, size) == 0;

		if (evil)
			ok = ok && pwrite(fd, &bad, 8, 0) == 8 && pwrite(fd, &bad, 8, PAGE) == 8;
		_exit(ok ? 0 : 1);
	}
	return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint64_t v = 0;
	const uint64_t word = 0x0123456789abcdefull, far = 0xfeedfacecafef00dull;

	bt_open(&d, argc, argv);
	bt_catch_sigbus();
	struct vfio_region_info *b0 = &d.bar[0];
	CHECK(b0->size >= 2 * PAGE && (b0->flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR0: a mappable memory BAR (%llu bytes)", (unsigned long long)b0->size);
	bt_memory(&d, 1);
	volatile uint8_t *m = bt_map(&d, 0, 0, 2 * PAGE);
	int fd = find_bar_fd();
	CHECK(fd >= 0, "the BAR's memfd is in /proc/self/fd (fd %d)", fd);
	*(volatile uint64_t *)m = word;
	*(volatile uint64_t *)(m + PAGE) = far;

	bt_memory(&d, 0);
	CHECK(!bt_read_or_sigbus(m, &v), "COMMAND.MEM cleared: a load is SIGBUS");
	CHECK(tamper(fd, b0->size, 1), "a child grows the revoked file and pwrites into it");
	CHECK(wait_for(m, 1, 10000, &v), "the server truncates it again: a load is SIGBUS again");
	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(m, &v) && v == word,
	      "COMMAND.MEM set: the device's word, not the tamperer's (%#llx)",
	      (unsigned long long)v);
	CHECK(bt_read_or_sigbus(m + PAGE, &v) && v == far,
	      "and the second page's word (%#llx)", (unsigned long long)v);

	CHECK(tamper(fd, PAGE, 0), "a child shrinks the live file to one page");
	CHECK(wait_for(m + PAGE, 0, 10000, &v), "the server sets the size back");
	CHECK(v == 0, "the page past the shrink reads zero (%#llx)", (unsigned long long)v);
	CHECK(bt_read_or_sigbus(m, &v) && v == word, "the first page keeps its word");
	return bt_exit();
}
