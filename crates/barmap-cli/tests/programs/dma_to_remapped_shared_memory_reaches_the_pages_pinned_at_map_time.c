// SPDX-License-Identifier: MIT
/* The program maps a memfd buffer for DMA, unmaps it, and maps new memory
 * at the same address. As with the kernel's pinning, the device's DMA
 * still reaches the memfd's pages given at MAP_DMA (the program reads
 * them back through the memfd), and the new memory stays untouched. Run
 * with --device edu. */
#define _GNU_SOURCE
#include "edu_dma.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	int mfd = memfd_create("dma", 0);
	uint8_t *buf, *fresh, back[4096];

	DIE_UNLESS(mfd >= 0 && ftruncate(mfd, 4096) == 0, "a memfd");
	buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	DIE_UNLESS(buf != MAP_FAILED, "mmap the memfd");
	bt_open(&d, argc, argv);
	edu_bus_master(&d);
	edu_fill(&d, 0x5a);
	edu_map(&d, buf, 0x100000, 4096);
	edu_dma(&d, 0x100000, 4096, 1);
	CHECK(all_bytes(buf, 4096, 0x5a), "before the unmap, the device writes the buffer");

	DIE_UNLESS(munmap(buf, 4096) == 0, "munmap");
	fresh = mmap(buf, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	DIE_UNLESS(fresh == buf, "new memory at the same address");
	edu_fill(&d, 0xa5);
	edu_dma(&d, 0x100000, 4096, 1);
	CHECK(all_bytes(fresh, 4096, 0), "the new memory stays untouched");
	DIE_UNLESS(pread(mfd, back, 4096, 0) == 4096, "pread the memfd");
	CHECK(all_bytes(back, 4096, 0xa5), "the DMA reached the memfd's pinned pages");

	close(mfd);
	return bt_exit();
}
