// SPDX-License-Identifier: MIT
/*
 * Device memory past `barmap run --memory-limit` is refused with SIGBUS,
 * never taken from the machine: the program writes page after page of a
 * 64 MiB window of a 1 GiB BAR under an 8 MiB limit; a SIGBUS comes before
 * the window is done, every page written before it reads back, and a
 * region write past the limit fails with ENOMEM.
 */
#include <setjmp.h>

#include "barmap_test.h"

#define WINDOW (64UL << 20)

static sigjmp_buf env;
static volatile void *bus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)sig;
	(void)ctx;
	bus_addr = si->si_addr;
	siglongjmp(env, 1);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	volatile uint8_t *map;
	volatile size_t page = 0;
	size_t pages = WINDOW / 4096;
	volatile int good = 1;

	bt_open(&d, argc, argv);
	map = bt_map(&d, 2, 0, WINDOW);
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction");
	if (sigsetjmp(env, 1) == 0) {
		for (; page < pages; page++)
			*(volatile uint64_t *)(map + page * 4096) = page + 1;
	}
	CHECK(page < pages && bus_addr == map + page * 4096,
	      "SIGBUS at page %zu of %zu, at the page being written", page, pages);
	CHECK(page * 4096 <= (8UL << 20), "no more than the 8 MiB limit was written (%zu KiB)",
	      page * 4);
	for (size_t p = 0; p < page; p++)
		good &= *(volatile uint64_t *)(map + p * 4096) == p + 1;
	CHECK(good, "the %zu pages written before it read back", page);
	/* Region writes of 1 MiB each: ENOMEM before 8 MiB more are written. */
	static uint8_t chunk[1 << 20];
	size_t written = 0;
	ssize_t n = 0;

	memset(chunk, 0xab, sizeof(chunk));
	errno = 0;
	for (uint64_t off = 512UL << 20; off < (544UL << 20); off += sizeof(chunk)) {
		n = pwrite(d.device, chunk, sizeof(chunk), d.bar[2].offset + off);
		if (n != (ssize_t)sizeof(chunk))
			break;
		written += n;
	}
	CHECK(n == -1 && errno == ENOMEM && written <= (8UL << 20),
	      "a region write past the limit fails with ENOMEM (after %zu KiB)", written >> 10);
	return bt_exit();
}
