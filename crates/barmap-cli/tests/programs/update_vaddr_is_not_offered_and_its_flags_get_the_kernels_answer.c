// SPDX-License-Identifier: MIT
/* barmap does not offer VFIO_UPDATE_VADDR (it holds the pages of shared
 * memory only, and the extension promises that the device keeps using
 * pinned pages while no vaddr is valid). Its flags get the kernel's
 * answers for a container that cannot update vaddrs: UNMAP_DMA with VADDR
 * is EBUSY (vfio_dma_do_unmap), MAP_DMA with VADDR is ENOENT where
 * nothing is mapped and EINVAL for a mapping whose vaddr is valid, and
 * the mapping is untouched. */
#include "barmap_test.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	size_t len = 4 * 4096;
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)buf, .iova = 0x100000, .size = len,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap), .flags = VFIO_DMA_UNMAP_FLAG_VADDR, .iova = 0x100000, .size = len,
	};
	int rc;

	DIE_UNLESS(buf != MAP_FAILED, "mmap a DMA buffer");
	bt_open(&d, argc, argv);
	CHECK(ioctl(d.container, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) == 0,
	      "VFIO_UPDATE_VADDR is not advertised");
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map) == 0, "MAP_DMA");

	errno = 0;
	rc = ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &unmap);
	CHECK(rc == -1 && errno == EBUSY, "UNMAP_DMA with VADDR: EBUSY (rc %d)", rc);
	map.flags = VFIO_DMA_MAP_FLAG_VADDR;
	errno = 0;
	rc = ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map);
	CHECK(rc == -1 && errno == EINVAL, "MAP_DMA with VADDR of a mapping whose vaddr is valid: EINVAL");
	map.iova = 0x400000;
	errno = 0;
	rc = ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map);
	CHECK(rc == -1 && errno == ENOENT, "MAP_DMA with VADDR where nothing is mapped: ENOENT");
	unmap.flags = 0;
	CHECK(ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 && unmap.size == len,
	      "the mapping is untouched (%llu bytes unmapped)", (unsigned long long)unmap.size);
	return bt_exit();
}
