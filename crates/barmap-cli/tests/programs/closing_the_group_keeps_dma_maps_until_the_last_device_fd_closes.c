// SPDX-License-Identifier: MIT
/* A device fd holds its group's open file: closing the group fd while the
 * device fd is open releases nothing. The group stays attached to its
 * container (its DMA maps stay), a new open of the group is EBUSY, and the
 * device fd works. Closing the device fd then releases the group: the
 * container loses its IOMMU and maps, and the group can be opened again. */
#include "barmap_test.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	char path[64];
	size_t len = 8 * 4096;
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)buf,
		.iova = 0x200000,
		.size = len,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap), .iova = 0x200000, .size = 4096,
	};
	uint16_t vendor = 0;
	int g2, rc;

	DIE_UNLESS(buf != MAP_FAILED, "mmap a DMA buffer");
	bt_open(&d, argc, argv);
	snprintf(path, sizeof(path), "/dev/vfio/%s", bt_env("BARMAP_GROUP", argc, argv, 2));
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map) == 0, "VFIO_IOMMU_MAP_DMA");
	map.iova += len;
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map) == 0, "a second VFIO_IOMMU_MAP_DMA");

	close(d.group);
	errno = 0;
	g2 = open(path, O_RDWR);
	CHECK(g2 == -1 && errno == EBUSY,
	      "the group fd closed, a device fd open: a new open of the group is EBUSY (fd %d)", g2);
	CHECK(pread(d.device, &vendor, 2, d.config_off + PCI_VENDOR_ID) == 2 && vendor != 0xffff,
	      "the device fd still works (vendor 0x%04x)", vendor);
	unmap.size = len;
	CHECK(ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 && unmap.size == len,
	      "the container still has its IOMMU and the first map (%llu bytes unmapped)",
	      (unsigned long long)unmap.size);

	close(d.device);
	unmap.iova = map.iova;
	unmap.size = len;
	errno = 0;
	rc = ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &unmap);
	CHECK(rc == -1 && errno == EINVAL,
	      "the last device fd closed: the group left the container, which has no IOMMU (rc %d)", rc);
	g2 = open(path, O_RDWR);
	CHECK(g2 >= 0, "the group can be opened again");
	if (g2 >= 0) {
		struct vfio_group_status st = { .argsz = sizeof(st) };

		CHECK(ioctl(g2, VFIO_GROUP_GET_STATUS, &st) == 0 &&
			      !(st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET),
		      "and it is in no container");
		close(g2);
	}
	return bt_exit();
}
