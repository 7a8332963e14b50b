// SPDX-License-Identifier: MIT
/*
 * A 128 GiB BAR costs what the program touches: 64 windows of 2 MiB, 2 GiB
 * apart, each written and read back, grow the process's resident shared
 * memory by at most their size; an untouched word reads 0; a region write
 * far into the BAR is seen through a mapping; a region read of a hole reads
 * zeros. Before barmap committed BAR memory on demand, building this
 * device allocated all 128 GiB (the test runs it in a memory cgroup).
 */
#include "barmap_test.h"

#define WINDOWS 64
#define WINDOW (2UL << 20)
#define STRIDE (2UL << 30)

static long rss_shmem_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	DIE_UNLESS(f != NULL, "open /proc/self/status");
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "RssShmem: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint8_t *win[WINDOWS];
	uint64_t value = 0x5eed, zeros[8] = { 1 };
	long before, grown;
	int good = 1, zero = 1;

	bt_open(&d, argc, argv);
	CHECK(d.bar[2].size == 128UL << 30, "BAR2 is 128 GiB (%llu bytes)",
	      (unsigned long long)d.bar[2].size);
	before = rss_shmem_kib();
	for (int i = 0; i < WINDOWS; i++) {
		win[i] = bt_map(&d, 2, i * STRIDE, WINDOW);
		*(volatile uint64_t *)(win[i] + 64) = 0xba2000 + i;
		*(volatile uint64_t *)(win[i] + WINDOW / 2) = i;
	}
	for (int i = 0; i < WINDOWS; i++) {
		good &= *(volatile uint64_t *)(win[i] + 64) == 0xba2000UL + i &&
			*(volatile uint64_t *)(win[i] + WINDOW / 2) == (uint64_t)i;
		zero &= *(volatile uint64_t *)(win[i] + WINDOW - 8) == 0;
	}
	CHECK(good, "%d windows 2 GiB apart read back what was written", WINDOWS);
	CHECK(zero, "untouched BAR memory reads 0");
	grown = rss_shmem_kib() - before;
	CHECK(grown >= 0 && grown <= (long)(WINDOWS * WINDOW / 1024) + 4096,
	      "resident shared memory grew by %ld KiB for %d windows of 2 MiB", grown,
	      WINDOWS);

	/* Region access far into the BAR, past every window. */
	uint64_t far = (128UL << 30) - 4096;
	CHECK(pwrite(d.device, &value, 8, d.bar[2].offset + far) == 8,
	      "pwrite at 128 GiB - 4 KiB");
	volatile uint8_t *last = bt_map(&d, 2, (128UL << 30) - WINDOW, WINDOW);
	CHECK(*(volatile uint64_t *)(last + WINDOW - 4096) == value,
	      "a mapping sees the region write");
	CHECK(pread(d.device, zeros, sizeof(zeros), d.bar[2].offset + (100UL << 30)) ==
			      (ssize_t)sizeof(zeros) &&
		      zeros[0] == 0 && zeros[7] == 0,
	      "a region read of a hole reads zeros");
	return bt_exit();
}
