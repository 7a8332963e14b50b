// SPDX-License-Identifier: MIT
/*
 * The iommufd sequence of QEMU 10's vfio-pci (hw/vfio/iommufd.c): open the
 * cdev that sysfs names and check it is that character device, bind it to
 * /dev/iommu, allocate an IOAS, ask IOMMU_GET_HW_INFO, allocate a paging
 * HWPT for the device over the IOAS and attach to it, then map guest RAM
 * (and fail, with EFAULT, to map a BAR: nothing to pin). Then what the
 * kernel refuses: destroying an attached HWPT or an IOAS under a HWPT
 * (EBUSY); and attach again is a replace. Unmapping everything in two
 * halves, as QEMU does, works, and closing the device frees the HWPT.
 */
#include "barmap_test.h"
#include "barmap_iommufd.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

static int hwpt_alloc(int io, uint32_t dev, uint32_t pt, uint32_t flags, uint32_t *out)
{
	struct bt_iommu_hwpt_alloc a = {
		.size = sizeof(a), .flags = flags, .dev_id = dev, .pt_id = pt,
	};
	int rc = ioctl(io, BT_IOMMU_HWPT_ALLOC, &a);

	*out = a.out_hwpt_id;
	return rc;
}

static int attach(int dev, uint32_t *pt)
{
	struct bt_vfio_device_attach_iommufd_pt a = { .argsz = 12, .pt_id = *pt };
	int rc = ioctl(dev, BT_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);

	*pt = a.pt_id;
	return rc;
}

static int destroy(int io, uint32_t id)
{
	struct bt_iommu_destroy d = { .size = sizeof(d), .id = id };

	return ioctl(io, BT_IOMMU_DESTROY, &d);
}

static int map(int io, uint32_t ioas, void *va, uint64_t len, uint64_t iova)
{
	struct bt_iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = BT_IOAS_MAP_FIXED_IOVA | BT_IOAS_MAP_READABLE | BT_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)va, .length = len, .iova = iova,
	};

	return ioctl(io, BT_IOMMU_IOAS_MAP, &m);
}

static int unmap(int io, uint32_t ioas, uint64_t iova, uint64_t len, uint64_t *done)
{
	struct bt_iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
	int rc = ioctl(io, BT_IOMMU_IOAS_UNMAP, &u);

	*done = u.length;
	return rc;
}

static uint32_t ioas_alloc(int io)
{
	struct bt_iommu_ioas_alloc a = { .size = sizeof(a) };

	DIE_UNLESS(ioctl(io, BT_IOMMU_IOAS_ALLOC, &a) == 0, "IOMMU_IOAS_ALLOC");
	return a.out_ioas_id;
}

int main(int argc, char **argv)
{
	const char *bdf = bt_env("BARMAP_BDF", argc, argv, 1);
	char path[300], text[64] = { 0 };
	unsigned ma, mi;
	struct stat st;
	struct bt_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct bt_iommu_hw_info info = { .size = sizeof(info) };
	struct vfio_device_info dinfo = { .argsz = sizeof(dinfo) };
	struct vfio_region_info bar2 = { .argsz = sizeof(bar2), .index = 2 };
	uint8_t vendor_caps[64];
	uint32_t ioas, ioas2, hwpt, hwpt2, pt;
	uint64_t done;
	FILE *f;
	int io, dev;
	void *ram, *bar;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev/vfio0/dev", bdf);
	f = fopen(path, "r");
	DIE_UNLESS(f && fgets(text, sizeof(text), f) && sscanf(text, "%u:%u", &ma, &mi) == 2,
		   "read vfio-dev/vfio0/dev");
	fclose(f);
	dev = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(dev >= 0, "open the cdev");
	CHECK(fstat(dev, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(ma, mi),
	      "the cdev fd is the character device %u:%u that sysfs names", ma, mi);
	io = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(io >= 0, "open /dev/iommu");
	bind.iommufd = io;
	DIE_UNLESS(ioctl(dev, BT_VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND_IOMMUFD");
	ioas = ioas_alloc(io);

	/* iommufd_cdev_autodomains_get: hardware info, then a HWPT. */
	info.dev_id = bind.out_devid;
	CHECK(ioctl(io, BT_IOMMU_GET_HW_INFO, &info) == 0 &&
		      !(info.out_capabilities & BT_HW_CAP_DIRTY_TRACKING),
	      "IOMMU_GET_HW_INFO: type %u, caps %#llx, no dirty tracking", info.out_data_type,
	      (unsigned long long)info.out_capabilities);
	errno = 0;
	CHECK(hwpt_alloc(io, bind.out_devid, ioas, BT_HWPT_ALLOC_DIRTY_TRACKING, &hwpt) == -1 &&
		      errno == EOPNOTSUPP,
	      "a dirty-tracking HWPT without the capability: EOPNOTSUPP");
	CHECK(hwpt_alloc(io, bind.out_devid, ioas, 0, &hwpt) == 0, "IOMMU_HWPT_ALLOC over the IOAS: %u",
	      hwpt);
	pt = hwpt;
	CHECK(attach(dev, &pt) == 0 && pt == hwpt, "attach the device to the HWPT");
	/* hiod_iommufd_vfio_realize: the info again, with a buffer. */
	memset(vendor_caps, 0xff, sizeof(vendor_caps));
	info.data_len = sizeof(vendor_caps);
	info.data_uptr = (uintptr_t)vendor_caps;
	CHECK(ioctl(io, BT_IOMMU_GET_HW_INFO, &info) == 0 && vendor_caps[0] == 0 &&
		      vendor_caps[63] == 0,
	      "GET_HW_INFO zeroes the part of the buffer the driver has no data for");
	CHECK(ioctl(dev, VFIO_DEVICE_GET_INFO, &dinfo) == 0 && dinfo.num_regions >= 9,
	      "the attached device answers VFIO_DEVICE_GET_INFO");

	/* The memory listener: guest RAM maps; a BAR cannot be pinned. */
	ram = mmap(NULL, 1 << 21, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(ram != MAP_FAILED, "guest RAM");
	CHECK(map(io, ioas, ram, 1 << 21, 0) == 0, "IOAS_MAP of guest RAM");
	DIE_UNLESS(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar2) == 0, "BAR2 info");
	bar = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar2.offset);
	DIE_UNLESS(bar != MAP_FAILED, "mmap BAR2");
	errno = 0;
	CHECK(map(io, ioas, bar, 1 << 20, 1ull << 32) == -1 && errno == EFAULT,
	      "IOAS_MAP of a BAR mapping: EFAULT (QEMU: \"PCI BAR?\")");
	errno = 0;
	CHECK(map(io, ioas, ram, 1 << 21, 0) == -1 && errno == EEXIST, "the same IOVA again: EEXIST");

	/* What the kernel refuses while things are attached. */
	errno = 0;
	CHECK(destroy(io, hwpt) == -1 && errno == EBUSY, "IOMMU_DESTROY of the attached HWPT: EBUSY");
	errno = 0;
	CHECK(destroy(io, ioas) == -1 && errno == EBUSY, "IOMMU_DESTROY of the IOAS under it: EBUSY");
	errno = 0;
	pt = 4242;
	CHECK(attach(dev, &pt) == -1 && errno == ENOENT, "attach to no object: ENOENT");

	/* Attach again = replace, here to a HWPT over a second IOAS. */
	ioas2 = ioas_alloc(io);
	CHECK(hwpt_alloc(io, bind.out_devid, ioas2, 0, &hwpt2) == 0, "a second HWPT");
	pt = hwpt2;
	CHECK(attach(dev, &pt) == 0 && pt == hwpt2, "attach again replaces");
	CHECK(destroy(io, hwpt) == 0, "the replaced HWPT can be destroyed");
	pt = ioas;
	CHECK(attach(dev, &pt) == 0 && pt != ioas && pt != hwpt2,
	      "attach to an IOAS: its automatic HWPT, id %u", pt);

	/* iommufd_cdev_unmap(unmap_all): in two halves. */
	CHECK(unmap(io, ioas, 0, 1ull << 63, &done) == 0 && done == 1 << 21,
	      "unmap the lower half: %llu bytes", (unsigned long long)done);
	errno = 0;
	CHECK(unmap(io, ioas, 1ull << 63, 1ull << 63, &done) == -1 && errno == ENOENT,
	      "the upper half is empty: ENOENT (QEMU takes it as done)");

	/* Closing the device detaches it: the HWPTs and IOASes are free. */
	munmap(bar, 1 << 20);
	close(dev);
	CHECK(destroy(io, hwpt2) == 0, "after close, the second HWPT can be destroyed");
	CHECK(destroy(io, ioas) == 0 && destroy(io, ioas2) == 0, "and both IOASes");
	close(io);
	return bt_exit();
}
