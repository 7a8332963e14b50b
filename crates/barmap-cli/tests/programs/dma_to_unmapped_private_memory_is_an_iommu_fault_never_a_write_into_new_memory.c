// SPDX-License-Identifier: MIT
/* The program maps private anonymous buffers for DMA, then takes each
 * away from under the device in one of the ways a program does: munmap
 * through libc, munmap as a raw system call, mmap(MAP_FIXED) of new memory
 * over it, madvise(MADV_DONTNEED). The kernel would still write the pages
 * it pinned at MAP_DMA, which the program no longer sees; barmap cannot
 * hold private pages, so the device's DMA to them is an IOMMU fault
 * (counted in the run's report as "gone", one per buffer), and the
 * memory the program sees there now is never written. Run with
 * --device edu. */
#include <sys/syscall.h>

#include "edu_dma.h"

enum way { LIBC_MUNMAP, RAW_MUNMAP, MAP_FIXED_OVER, DONTNEED, WAYS };

static const char *const names[WAYS] = {
	"munmap through libc", "munmap as a raw system call", "mmap(MAP_FIXED) over it",
	"madvise(MADV_DONTNEED)",
};

int main(int argc, char **argv)
{
	struct bt_dev d;

	bt_open(&d, argc, argv);
	edu_bus_master(&d);
	for (int w = 0; w < WAYS; w++) {
		uint64_t iova = 0x100000 + 0x10000 * w;
		uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint8_t *now = buf;

		DIE_UNLESS(buf != MAP_FAILED, "mmap the DMA buffer");
		edu_fill(&d, 0x5a);
		edu_map(&d, buf, iova, 4096);
		edu_dma(&d, iova, 4096, 1);
		CHECK(all_bytes(buf, 4096, 0x5a), "%s: before, the device writes the buffer", names[w]);

		switch (w) {
		case LIBC_MUNMAP:
			DIE_UNLESS(munmap(buf, 4096) == 0, "munmap");
			break;
		case RAW_MUNMAP:
			DIE_UNLESS(syscall(SYS_munmap, buf, 4096) == 0, "SYS_munmap");
			break;
		case DONTNEED:
			DIE_UNLESS(madvise(buf, 4096, MADV_DONTNEED) == 0, "madvise");
			break;
		}
		if (w != DONTNEED) {
			now = mmap(buf, 4096, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			DIE_UNLESS(now == buf, "new memory at the same address");
		}
		edu_fill(&d, 0xa5);
		edu_dma(&d, iova, 4096, 1);
		CHECK(all_bytes(now, 4096, 0), "%s: the device's DMA never reaches the memory there now",
		      names[w]);
	}
	return bt_exit();
}
