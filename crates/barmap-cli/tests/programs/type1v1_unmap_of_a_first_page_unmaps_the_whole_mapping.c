// SPDX-License-Identifier: MIT
/* type1 (v1) keeps the kernel's "v1" unmap: a range that covers the first
 * IOVA of a mapping unmaps the whole mapping (the size returned says so),
 * and a range that starts inside a mapping unmaps nothing and succeeds
 * with size 0 (vfio_dma_do_unmap). type1v2 refuses the same ranges with
 * EINVAL. */
#include "barmap_test.h"

static int open_type(int argc, char **argv, unsigned long type, int *container, int *group)
{
	const char *bdf = bt_env("BARMAP_BDF", argc, argv, 1);
	char path[64];

	snprintf(path, sizeof(path), "/dev/vfio/%s", bt_env("BARMAP_GROUP", argc, argv, 2));
	*container = open("/dev/vfio/vfio", O_RDWR);
	*group = open(path, O_RDWR);
	DIE_UNLESS(*container >= 0 && *group >= 0, "open the container and the group");
	DIE_UNLESS(ioctl(*group, VFIO_GROUP_SET_CONTAINER, container) == 0, "SET_CONTAINER");
	DIE_UNLESS(ioctl(*container, VFIO_SET_IOMMU, type) == 0, "SET_IOMMU");
	return ioctl(*group, VFIO_GROUP_GET_DEVICE_FD, bdf);
}

static void map(int c, void *va, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)va, .iova = iova, .size = size,
	};

	DIE_UNLESS(ioctl(c, VFIO_IOMMU_MAP_DMA, &m) == 0, "MAP_DMA");
}

static int unmap(int c, uint64_t iova, uint64_t size, uint64_t *unmapped)
{
	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof(u), .iova = iova, .size = size };
	int rc;

	errno = 0;
	rc = ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u);
	*unmapped = u.size;
	return rc;
}

int main(int argc, char **argv)
{
	size_t len = 4 * 4096;
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int c, g, dev;
	uint64_t n;

	DIE_UNLESS(buf != MAP_FAILED, "mmap a DMA buffer");
	dev = open_type(argc, argv, VFIO_TYPE1_IOMMU, &c, &g);
	DIE_UNLESS(dev >= 0, "GET_DEVICE_FD (type1)");
	map(c, buf, 0x100000, len);
	map(c, buf, 0x200000, len);

	CHECK(unmap(c, 0x100000, 4096, &n) == 0 && n == len,
	      "v1: unmapping the first page unmaps the whole mapping (%llu bytes)",
	      (unsigned long long)n);
	CHECK(unmap(c, 0x100000, len, &n) == 0 && n == 0, "and it is gone (%llu bytes)",
	      (unsigned long long)n);
	CHECK(unmap(c, 0x201000, 4096, &n) == 0 && n == 0,
	      "v1: a range that starts inside a mapping unmaps nothing, successfully");
	CHECK(unmap(c, 0x200000, len, &n) == 0 && n == len,
	      "the mapping was still whole (%llu bytes)", (unsigned long long)n);
	close(dev);
	close(g);
	close(c);

	dev = open_type(argc, argv, VFIO_TYPE1v2_IOMMU, &c, &g);
	DIE_UNLESS(dev >= 0, "GET_DEVICE_FD (type1v2)");
	map(c, buf, 0x100000, len);
	CHECK(unmap(c, 0x100000, 4096, &n) == -1 && errno == EINVAL,
	      "v2: unmapping the first page of a mapping is EINVAL");
	CHECK(unmap(c, 0x101000, 4096, &n) == -1 && errno == EINVAL,
	      "v2: a range that starts inside a mapping is EINVAL");
	CHECK(unmap(c, 0x100000, len, &n) == 0 && n == len, "v2: the whole mapping unmaps");
	return bt_exit();
}
