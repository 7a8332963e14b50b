// SPDX-License-Identifier: MIT
/*
 * IOMMU_IOAS_MAP and IOMMU_IOAS_UNMAP refuse what iommufd refuses, with
 * its errno (drivers/iommu/iommufd/ioas.c, io_pagetable.c):
 *  - a map with neither READABLE nor WRITEABLE: EINVAL;
 *  - once the IOAS has a domain (a HWPT), a writable map over read-only
 *    memory, or any map over PROT_NONE memory: EFAULT (pinning fails);
 *  - an unmap of half of an area: ENOENT, and the area stays mapped.
 */
#include "barmap_test.h"
#include "barmap_iommufd.h"

static int map(int io, uint32_t ioas, void *va, uint64_t len, uint64_t iova, uint32_t perm)
{
	struct bt_iommu_ioas_map m = {
		.size = sizeof(m), .flags = BT_IOAS_MAP_FIXED_IOVA | perm, .ioas_id = ioas,
		.user_va = (uintptr_t)va, .length = len, .iova = iova,
	};

	return ioctl(io, BT_IOMMU_IOAS_MAP, &m);
}

static int unmap(int io, uint32_t ioas, uint64_t iova, uint64_t len)
{
	struct bt_iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };

	return ioctl(io, BT_IOMMU_IOAS_UNMAP, &u);
}

int main(void)
{
	const uint32_t RW = BT_IOAS_MAP_READABLE | BT_IOAS_MAP_WRITEABLE;
	struct bt_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct bt_iommu_ioas_alloc a = { .size = sizeof(a) };
	struct bt_iommu_hwpt_alloc h = { .size = sizeof(h) };
	struct bt_vfio_device_attach_iommufd_pt at = { .argsz = 12 };
	int io, dev;
	char *rw, *ro, *none;

	dev = open("/dev/vfio/devices/vfio0", O_RDWR);
	io = open("/dev/iommu", O_RDWR);
	DIE_UNLESS(dev >= 0 && io >= 0, "open the cdev and /dev/iommu");
	bind.iommufd = io;
	DIE_UNLESS(ioctl(dev, BT_VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND_IOMMUFD");
	DIE_UNLESS(ioctl(io, BT_IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC");
	rw = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(rw != MAP_FAILED && ro != MAP_FAILED && none != MAP_FAILED, "mmap");

	errno = 0;
	CHECK(map(io, a.out_ioas_id, rw, 4096, 0x100000, 0) == -1 && errno == EINVAL,
	      "IOAS_MAP without READABLE or WRITEABLE: EINVAL");

	/* A domain: the device's HWPT, attached. */
	h.dev_id = bind.out_devid;
	h.pt_id = a.out_ioas_id;
	DIE_UNLESS(ioctl(io, BT_IOMMU_HWPT_ALLOC, &h) == 0, "HWPT_ALLOC");
	at.pt_id = h.out_hwpt_id;
	DIE_UNLESS(ioctl(dev, BT_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "ATTACH");

	errno = 0;
	CHECK(map(io, a.out_ioas_id, ro, 4096, 0x100000, RW) == -1 && errno == EFAULT,
	      "a writable map over read-only memory: EFAULT");
	errno = 0;
	CHECK(map(io, a.out_ioas_id, none, 4096, 0x100000, BT_IOAS_MAP_READABLE) == -1 &&
		      errno == EFAULT,
	      "a map over PROT_NONE memory: EFAULT");
	CHECK(map(io, a.out_ioas_id, ro, 4096, 0x100000, BT_IOAS_MAP_READABLE) == 0,
	      "a read-only map over read-only memory");

	CHECK(map(io, a.out_ioas_id, rw, 4 * 4096, 0x200000, RW) == 0, "a 16 KiB area");
	errno = 0;
	CHECK(unmap(io, a.out_ioas_id, 0x200000, 2 * 4096) == -1 && errno == ENOENT,
	      "IOAS_UNMAP of its first half: ENOENT");
	errno = 0;
	CHECK(map(io, a.out_ioas_id, rw, 4096, 0x200000, RW) == -1 && errno == EEXIST,
	      "the area is still mapped");
	CHECK(unmap(io, a.out_ioas_id, 0x200000, 4 * 4096) == 0, "IOAS_UNMAP of the whole area");
	close(dev);
	close(io);
	return bt_exit();
}
