// SPDX-License-Identifier: MIT
/*
 * Helpers for the SR-IOV programs: sysfs writes of sriov_numvfs, the
 * VF's address and group from sysfs, and device opens with and without a
 * VF token through the group (legacy container) and the cdev (iommufd).
 */
#ifndef BT_SRIOV_H
#define BT_SRIOV_H

#include <dirent.h>
#include <libgen.h>
#include "barmap_test.h"
#include "barmap_iommufd.h"

/* VFIO_DEVICE_BIND_FLAG_TOKEN (Linux 6.17), for older system headers. */
#define BT_BIND_FLAG_TOKEN (1 << 0)

#define UUID_A "52ac9bff-3a88-4fbd-901a-0d767c3b6c97"
#define UUID_B "88594674-90a0-47a9-aea8-9d9b352ac08a"

/* The bytes of UUID_A and UUID_B, in the order of their string form. */
static const uint8_t UUID_A_BYTES[16] = { 0x52, 0xac, 0x9b, 0xff, 0x3a, 0x88, 0x4f, 0xbd,
					  0x90, 0x1a, 0x0d, 0x76, 0x7c, 0x3b, 0x6c, 0x97 };
static const uint8_t UUID_B_BYTES[16] = { 0x88, 0x59, 0x46, 0x74, 0x90, 0xa0, 0x47, 0xa9,
					  0xae, 0xa8, 0x9d, 0x9b, 0x35, 0x2a, 0xc0, 0x8a };

/* Writes `val` to the PF's sriov_numvfs: 0, or the write's errno. */
static inline int bt_set_numvfs(const char *pf, const char *val)
{
	char path[128];
	int fd, err = 0;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/sriov_numvfs", pf);
	fd = open(path, O_WRONLY);
	DIE_UNLESS(fd >= 0, "open sriov_numvfs");
	if (write(fd, val, strlen(val)) != (ssize_t)strlen(val))
		err = errno;
	close(fd);
	return err;
}

/* The integer in the PF's sysfs attribute `attr` (-1 if unreadable). */
static inline long bt_sysfs_int(const char *bdf, const char *attr)
{
	char path[128], buf[32] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", bdf, attr);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	if (read(fd, buf, sizeof(buf) - 1) <= 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return strtol(buf, NULL, 0);
}

/* The base name of the link `bdf`/`name` into `out` (0), or -1. */
static inline int bt_link_base(const char *bdf, const char *name, char *out, size_t len)
{
	char path[128], target[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", bdf, name);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -1;
	target[n] = 0;
	snprintf(out, len, "%s", basename(target));
	return 0;
}

/* The IOMMU group of `bdf`. */
static inline int bt_group_of(const char *bdf)
{
	char g[32];

	DIE_UNLESS(bt_link_base(bdf, "iommu_group", g, sizeof(g)) == 0, "iommu_group link");
	return atoi(g);
}

/* A group of `bdf` in a fresh type1v2 container (its fds in *group and
 * *container), ready for VFIO_GROUP_GET_DEVICE_FD. */
static inline void bt_group_ready(const char *bdf, int *container, int *group)
{
	char path[64];

	*container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(*container >= 0, "open /dev/vfio/vfio");
	snprintf(path, sizeof(path), "/dev/vfio/%d", bt_group_of(bdf));
	*group = open(path, O_RDWR | O_CLOEXEC);
	DIE_UNLESS(*group >= 0, "open the group");
	DIE_UNLESS(ioctl(*group, VFIO_GROUP_SET_CONTAINER, container) == 0,
		   "VFIO_GROUP_SET_CONTAINER");
	ioctl(*container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
}

/* VFIO_GROUP_GET_DEVICE_FD of `bdf` with `token` (NULL: none): the fd,
 * or -1 with errno. */
static inline int bt_get_device(int group, const char *bdf, const char *token)
{
	char name[128];

	if (token)
		snprintf(name, sizeof(name), "%s vf_token=%s", bdf, token);
	else
		snprintf(name, sizeof(name), "%s", bdf);
	return ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name);
}

/* Opens `bdf`'s group and gets the device with `token`: the device fd
 * (group and container fds in *group, *container), or -1 with errno. */
static inline int bt_open_with_token(const char *bdf, const char *token, int *container, int *group)
{
	int fd, e;

	bt_group_ready(bdf, container, group);
	fd = bt_get_device(*group, bdf, token);
	if (fd < 0) {
		e = errno;
		close(*group);
		close(*container);
		errno = e;
	}
	return fd;
}

/* The cdev of `bdf`, opened (-1 with errno if it cannot be). */
static inline int bt_open_cdev(const char *bdf)
{
	char path[128], name[64];

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	{
		DIR *d = opendir(path);
		struct dirent *e;

		DIE_UNLESS(d != NULL, "opendir vfio-dev");
		name[0] = 0;
		while ((e = readdir(d)) != NULL)
			if (!strncmp(e->d_name, "vfio", 4))
				snprintf(name, sizeof(name), "%.32s", e->d_name);
		closedir(d);
	}
	snprintf(path, sizeof(path), "/dev/vfio/devices/%s", name);
	return open(path, O_RDWR | O_CLOEXEC);
}

/* VFIO_DEVICE_BIND_IOMMUFD of the cdev fd `dev` to `iommufd` with the
 * token `uuid` (NULL: none): 0, or -1 with errno. */
static inline int bt_bind(int dev, int iommufd, const uint8_t *uuid)
{
	struct bt_vfio_device_bind_iommufd b = {
		.argsz = sizeof(b),
		.iommufd = iommufd,
	};

	if (uuid) {
		b.flags = BT_BIND_FLAG_TOKEN;
		b.token_uuid_ptr = (uintptr_t)uuid;
	}
	return ioctl(dev, BT_VFIO_DEVICE_BIND_IOMMUFD, &b);
}

/* VFIO_DEVICE_FEATURE_PCI_VF_TOKEN with `flags` and `len` bytes of data
 * from `uuid`: the ioctl's result. */
static inline int bt_feature_token(int dev, uint32_t flags, const void *uuid, size_t len)
{
	uint8_t buf[sizeof(struct vfio_device_feature) + 32] = { 0 };
	struct vfio_device_feature *f = (void *)buf;

	f->argsz = sizeof(*f) + len;
	f->flags = flags | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN;
	if (uuid && len)
		memcpy(f->data, uuid, len);
	return ioctl(dev, VFIO_DEVICE_FEATURE, f);
}

/* Enables one VF of `pf` and names it in `vf` (16 bytes). */
static inline void bt_one_vf(const char *pf, char *vf)
{
	DIE_UNLESS(bt_set_numvfs(pf, "1") == 0, "sriov_numvfs 1");
	DIE_UNLESS(bt_link_base(pf, "virtfn0", vf, 16) == 0, "virtfn0");
}

#endif
