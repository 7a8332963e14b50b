// SPDX-License-Identifier: MIT
/* Inputs that several checks reject get the errno of the check the kernel
 * makes first: an unknown container ioctl before SET_IOMMU is EINVAL
 * (vfio_fops_unl_ioctl), SET_CONTAINER with a number that is no fd EBADF
 * and with an fd that is no container EBADFD
 * (vfio_group_ioctl_set_container), GET_DEVICE_FD with an unknown name
 * ENODEV even before a container is set (vfio_device_get_from_name comes
 * first), the VGA region of a device that is no VGA device EINVAL. */
#include <sys/eventfd.h>

#include "barmap_test.h"

int main(int argc, char **argv)
{
	const char *bdf = bt_env("BARMAP_BDF", argc, argv, 1);
	char path[64];
	int c = open("/dev/vfio/vfio", O_RDWR), g, dev, rc, fd;
	struct vfio_region_info vga = { .argsz = sizeof(vga), .index = VFIO_PCI_VGA_REGION_INDEX };

	snprintf(path, sizeof(path), "/dev/vfio/%s", bt_env("BARMAP_GROUP", argc, argv, 2));
	g = open(path, O_RDWR);
	DIE_UNLESS(c >= 0 && g >= 0, "open the container and the group");

	errno = 0;
	rc = ioctl(c, VFIO_IOMMU_GET_INFO, NULL);
	CHECK(rc == -1 && errno == EINVAL, "an IOMMU ioctl before SET_IOMMU: EINVAL");
	errno = 0;
	rc = ioctl(c, _IO(VFIO_TYPE, VFIO_BASE + 99));
	CHECK(rc == -1 && errno == EINVAL, "an unknown container ioctl before SET_IOMMU: EINVAL");
	CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) == 0,
	      "VFIO_UPDATE_VADDR is not advertised");

	fd = 9999;
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_SET_CONTAINER, &fd);
	CHECK(rc == -1 && errno == EBADF, "SET_CONTAINER with a number that is no fd: EBADF");
	fd = eventfd(0, 0);
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_SET_CONTAINER, &fd);
	CHECK(rc == -1 && errno == EBADFD, "SET_CONTAINER with an eventfd: EBADFD");
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_SET_CONTAINER, &g);
	CHECK(rc == -1 && errno == EBADFD, "SET_CONTAINER with the group itself: EBADFD");
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:99:99.9");
	CHECK(rc == -1 && errno == ENODEV, "GET_DEVICE_FD of an unknown name, no container: ENODEV");
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
	CHECK(rc == -1 && errno == EINVAL, "GET_DEVICE_FD of the device, no container: EINVAL");

	DIE_UNLESS(ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) == 0, "SET_CONTAINER");
	errno = 0;
	rc = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
	CHECK(rc == -1 && errno == EINVAL, "GET_DEVICE_FD before SET_IOMMU: EINVAL");
	errno = 0;
	rc = ioctl(c, VFIO_SET_IOMMU, VFIO_UNMAP_ALL);
	CHECK(rc == -1 && errno == EINVAL, "SET_IOMMU(VFIO_UNMAP_ALL): EINVAL (type1 claims it, cannot open it)");
	errno = 0;
	rc = ioctl(c, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU);
	CHECK(rc == -1 && errno == ENODEV, "SET_IOMMU(VFIO_NOIOMMU_IOMMU): ENODEV");
	DIE_UNLESS(ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");
	errno = 0;
	rc = ioctl(c, _IO(VFIO_TYPE, VFIO_BASE + 99));
	CHECK(rc == -1 && errno == ENOTTY, "an unknown container ioctl after SET_IOMMU: ENOTTY");
	CHECK(ioctl(c, VFIO_CHECK_EXTENSION, VFIO_DMA_CC_IOMMU) == 1,
	      "VFIO_DMA_CC_IOMMU once the IOMMU is set");

	dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, bdf);
	DIE_UNLESS(dev >= 0, "GET_DEVICE_FD");
	errno = 0;
	rc = ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &vga);
	CHECK(rc == -1 && errno == EINVAL, "the VGA region of a device that is no VGA device: EINVAL");
	return bt_exit();
}
