// SPDX-License-Identifier: MIT
/* MAP_DMA with neither READ nor WRITE is EINVAL (vfio_dma_do_map). The
 * kernel pins the pages at MAP_DMA, writable ones for a map the device may
 * write: a WRITE map of read-only memory, any map of PROT_NONE memory and
 * a map of memory that is not mapped are EFAULT, and leave nothing
 * mapped. A READ map of read-only memory is fine. */
#include "barmap_test.h"

static int map(int container, uint32_t flags, void *va, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m), .flags = flags, .vaddr = (uintptr_t)va, .iova = iova, .size = size,
	};

	errno = 0;
	return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

static uint64_t unmap_all(int container)
{
	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof(u), .flags = VFIO_DMA_UNMAP_FLAG_ALL };

	DIE_UNLESS(ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "UNMAP_DMA ALL");
	return u.size;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	size_t len = 4 * 4096;
	const uint32_t R = VFIO_DMA_MAP_FLAG_READ, W = VFIO_DMA_MAP_FLAG_WRITE;
	void *rw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *ro = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *none = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *gone = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *half = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	DIE_UNLESS(rw != MAP_FAILED && ro != MAP_FAILED && none != MAP_FAILED &&
			   gone != MAP_FAILED && half != MAP_FAILED,
		   "mmap the buffers");
	DIE_UNLESS(munmap(gone, len) == 0, "munmap");
	DIE_UNLESS(mprotect((char *)half + len, len, PROT_READ) == 0, "mprotect");
	bt_open(&d, argc, argv);

	CHECK(map(d.container, 0, rw, 0x100000, len) == -1 && errno == EINVAL,
	      "neither READ nor WRITE: EINVAL");
	CHECK(map(d.container, W, ro, 0x100000, len) == -1 && errno == EFAULT,
	      "WRITE over read-only memory: EFAULT");
	CHECK(map(d.container, R | W, ro, 0x100000, len) == -1 && errno == EFAULT,
	      "READ|WRITE over read-only memory: EFAULT");
	CHECK(map(d.container, R | W, half, 0x100000, 2 * len) == -1 && errno == EFAULT,
	      "READ|WRITE over memory whose second half is read-only: EFAULT");
	CHECK(map(d.container, R, none, 0x100000, len) == -1 && errno == EFAULT,
	      "READ over PROT_NONE memory: EFAULT");
	CHECK(map(d.container, W, none, 0x100000, len) == -1 && errno == EFAULT,
	      "WRITE over PROT_NONE memory: EFAULT");
	CHECK(map(d.container, R, gone, 0x100000, len) == -1 && errno == EFAULT,
	      "READ over unmapped memory: EFAULT");
	CHECK(unmap_all(d.container) == 0, "the failed maps left nothing mapped");

	CHECK(map(d.container, R, ro, 0x100000, len) == 0, "READ over read-only memory is fine");
	CHECK(map(d.container, R, half, 0x200000, 2 * len) == 0,
	      "READ over memory whose second half is read-only is fine");
	CHECK(map(d.container, R | W, rw, 0x300000, len) == 0, "READ|WRITE over writable memory is fine");
	CHECK(unmap_all(d.container) == 4 * len, "three maps, %zu bytes", 4 * len);
	return bt_exit();
}
