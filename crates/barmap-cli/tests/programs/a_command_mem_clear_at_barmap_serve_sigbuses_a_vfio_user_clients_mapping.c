// SPDX-License-Identifier: MIT
/*
 * A memory BAR held by `barmap serve` (--device default,memory=...) and
 * mapped by this program under `barmap run --device vfio-user:SOCKET`:
 * the client maps the server's memfd, so revocation is the server's
 * truncation, with nothing asked of the client.
 *
 * - The BAR comes mappable with a file; a store through the mapping is
 *   what pread returns, and a pwrite is what the mapping shows.
 * - The program clears COMMAND.MEM itself: a load through the mapping
 *   gets SIGBUS, pread is EIO (vfio_pci_bar_rw's answer); setting it
 *   again restores the mapping with its contents.
 * - With $BARMAP_READY and $BARMAP_REVOKED set, the clear comes from
 *   outside (`barmap ctl command-mem off`, run by the harness once
 *   $BARMAP_READY exists): the mapping SIGBUSes, the program says so by
 *   creating $BARMAP_REVOKED, and after `barmap ctl command-mem on` the
 *   mapping reads its contents again.
 */
#include "barmap_test.h"

#define PAGE 4096

static void touch_file(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);

	DIE_UNLESS(fd >= 0, "create a signal file");
	close(fd);
}

/* Polls the word at `p` until a load SIGBUSes (want_bus) or succeeds
 * (!want_bus), for at most `ms`; returns whether it did. */
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

int main(int argc, char **argv)
{
	struct bt_dev d;
	const char *ready = getenv("BARMAP_READY"), *revoked = getenv("BARMAP_REVOKED");
	uint64_t v = 0, back = 0;

	bt_open(&d, argc, argv);
	bt_catch_sigbus();
	struct vfio_region_info *b0 = &d.bar[0];
	CHECK(b0->size >= 2 * PAGE && (b0->flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR0: a mappable memory BAR (%llu bytes, flags %#x)",
	      (unsigned long long)b0->size, b0->flags);
	bt_memory(&d, 1);
	volatile uint8_t *m = bt_map(&d, 0, 0, 2 * PAGE);
	*(volatile uint64_t *)m = 0x0123456789abcdefull;
	CHECK(pread(d.device, &back, 8, b0->offset) == 8 && back == 0x0123456789abcdefull,
	      "a store through the mapping is what pread returns");
	uint64_t w = 0xfeedfacecafef00dull;
	CHECK(pwrite(d.device, &w, 8, b0->offset + PAGE) == 8 &&
		      *(volatile uint64_t *)(m + PAGE) == w,
	      "a pwrite is what the mapping shows");

	/* The program's own clear. */
	bt_memory(&d, 0);
	CHECK(!bt_read_or_sigbus(m, &v), "COMMAND.MEM cleared: a load through the mapping is SIGBUS");
	errno = 0;
	CHECK(pread(d.device, &back, 8, b0->offset) == -1 && errno == EIO,
	      "COMMAND.MEM cleared: pread is EIO");
	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(m, &v) && v == 0x0123456789abcdefull &&
		      *(volatile uint64_t *)(m + PAGE) == w,
	      "COMMAND.MEM set again: the mapping reads its contents");

	if (ready && revoked) {
		/* A clear from outside, by barmap ctl. */
		touch_file(ready);
		CHECK(wait_for(m, 1, 20000, &v),
		      "barmap ctl command-mem off: the mapping SIGBUSes");
		touch_file(revoked);
		CHECK(wait_for(m, 0, 20000, &v) && v == 0x0123456789abcdefull,
		      "barmap ctl command-mem on: the mapping reads its contents again");
	}
	return bt_exit();
}
