// SPDX-License-Identifier: MIT
/* VFIO_GROUP_UNSET_CONTAINER while a device fd of the group is open is
 * EBUSY (vfio_group_ioctl_unset_container: container_users != 1), and it
 * drops nothing: the container keeps its IOMMU and its DMA maps. Once the
 * device fd is closed, the unset succeeds. */
#include "barmap_test.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	struct vfio_group_status st = { .argsz = sizeof(st) };
	size_t len = 4 * 4096;
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)buf,
		.iova = 0x100000,
		.size = len,
	};
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap), .iova = 0x100000, .size = len,
	};
	int rc;

	DIE_UNLESS(buf != MAP_FAILED, "mmap a DMA buffer");
	bt_open(&d, argc, argv);
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map) == 0, "VFIO_IOMMU_MAP_DMA");

	errno = 0;
	rc = ioctl(d.group, VFIO_GROUP_UNSET_CONTAINER);
	CHECK(rc == -1 && errno == EBUSY, "UNSET_CONTAINER with a device fd open is EBUSY (rc %d)", rc);
	CHECK(ioctl(d.group, VFIO_GROUP_GET_STATUS, &st) == 0 &&
		      (st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET),
	      "the group is still in its container");
	CHECK(ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 && unmap.size == len,
	      "the DMA map is still there: UNMAP_DMA unmaps %llu bytes",
	      (unsigned long long)unmap.size);

	close(d.device);
	CHECK(ioctl(d.group, VFIO_GROUP_UNSET_CONTAINER) == 0,
	      "with the device fd closed, UNSET_CONTAINER succeeds");
	st.flags = 0;
	CHECK(ioctl(d.group, VFIO_GROUP_GET_STATUS, &st) == 0 &&
		      !(st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET),
	      "the group has no container any more");
	errno = 0;
	rc = ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map);
	CHECK(rc == -1 && errno == EINVAL,
	      "the container lost its IOMMU with its last group (MAP_DMA: EINVAL)");
	return bt_exit();
}
