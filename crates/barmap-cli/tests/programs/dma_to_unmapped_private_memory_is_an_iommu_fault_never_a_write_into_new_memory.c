// SPDX-License-Identifier: MIT
/* The program maps a private anonymous buffer for DMA, unmaps it, and maps
 * new memory at the same address. The kernel would still write the pages
 * it pinned at MAP_DMA, which the program no longer sees; barmap cannot
 * hold private pages, so the device's DMA to them is an IOMMU fault
 * (counted in the run's report as "gone"), and the new memory is never
 * written. Run with --device edu. */
#include "edu_dma.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *fresh;

	DIE_UNLESS(buf != MAP_FAILED, "mmap the DMA buffer");
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
	CHECK(all_bytes(fresh, 4096, 0), "the device's DMA never reaches the new memory");
	return bt_exit();
}
