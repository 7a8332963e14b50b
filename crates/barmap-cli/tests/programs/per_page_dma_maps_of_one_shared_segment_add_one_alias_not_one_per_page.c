// SPDX-License-Identifier: MIT
/*
 * DPDK without huge pages DMA-maps every 4 KiB page of its shared memory
 * segment on its own (tens of thousands of maps). barmap holds shared
 * memory by a second mapping of the pages (the kernel pins them): one
 * alias of the program's whole mapping, shared by every map inside it,
 * so the process's mappings do not grow with the maps (one per page
 * would approach vm.max_map_count and make each map cost a walk of
 * them all). Counted, not timed: /proc/self/maps before and after. The
 * bound leaves room for what appears meanwhile and is not per map (a
 * thread's stack and guard, a malloc arena: a few lines each), and is
 * still far below one line per page.
 */
#include "barmap_test.h"

static int maps_lines(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	DIE_UNLESS(f != NULL, "open /proc/self/maps");
	while (fgets(line, sizeof(line), f))
		n++;
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	const size_t pages = 16384;
	struct bt_dev d;
	uint8_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			    -1, 0);
	int before, after;
	size_t mapped = 0;

	DIE_UNLESS(mem != MAP_FAILED, "mmap");
	bt_open(&d, argc, argv);
	before = maps_lines();
	for (size_t i = 0; i < pages; i++) {
		struct vfio_iommu_type1_dma_map m = {
			.argsz = sizeof(m),
			.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
			.vaddr = (uint64_t)(uintptr_t)(mem + i * 4096),
			.iova = 0x100000 + i * 4096,
			.size = 4096,
		};
		if (ioctl(d.container, VFIO_IOMMU_MAP_DMA, &m) != 0)
			break;
		mapped++;
	}
	after = maps_lines();
	CHECK(mapped == pages, "%zu per-page DMA maps of one shared segment succeed", mapped);
	CHECK(after - before <= 32, "the process's mappings grew by %d (from %d), not by one per page",
	      after - before, before);
	return bt_exit();
}
