// SPDX-License-Identifier: MIT
/* The edu device (--device edu) through its cdev and an iommufd, for the
 * programs on iommufds shared by processes: open, bind, an IOAS, attach,
 * bus mastering on; a map of a buffer; an fd over a Unix socket. */
#ifndef BARMAP_SHARED_IOMMUFD_H
#define BARMAP_SHARED_IOMMUFD_H

#include "edu_dma.h"
#include "barmap_iommufd.h"

#include <sys/socket.h>
#include <sys/wait.h>

/* Opens the edu's cdev and /dev/iommu, binds, allocates an IOAS and
 * attaches the device to it; returns the IOAS id. */
static inline uint32_t si_open(struct bt_dev *d, int *io)
{
	struct bt_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct bt_iommu_ioas_alloc a = { .size = sizeof(a) };
	struct vfio_region_info cfg;

	memset(d, 0, sizeof(*d));
	d->container = d->group = -1;
	d->device = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
	*io = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(d->device >= 0 && *io >= 0, "open the cdev and /dev/iommu");
	bind.iommufd = *io;
	DIE_UNLESS(ioctl(d->device, BT_VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND_IOMMUFD");
	DIE_UNLESS(ioctl(*io, BT_IOMMU_IOAS_ALLOC, &a) == 0, "IOMMU_IOAS_ALLOC");
	struct bt_vfio_device_attach_iommufd_pt at = { .argsz = 12, .pt_id = a.out_ioas_id };
	DIE_UNLESS(ioctl(d->device, BT_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "ATTACH to the IOAS");
	bt_region(d->device, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	d->config_off = cfg.offset;
	for (uint32_t i = 0; i < VFIO_PCI_ROM_REGION_INDEX; i++)
		bt_region(d->device, i, &d->bar[i]);
	edu_bus_master(d);
	return a.out_ioas_id;
}

static inline int si_map(int io, uint32_t ioas, void *va, uint64_t iova, uint64_t len)
{
	struct bt_iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = BT_IOAS_MAP_FIXED_IOVA | BT_IOAS_MAP_READABLE | BT_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)va, .length = len, .iova = iova,
	};

	return ioctl(io, BT_IOMMU_IOAS_MAP, &m);
}

/* IOAS_UNMAP of iova..iova+len: 0 and the bytes unmapped in *done. */
static inline int si_unmap(int io, uint32_t ioas, uint64_t iova, uint64_t len, uint64_t *done)
{
	struct bt_iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova, .length = len };
	int rc = ioctl(io, BT_IOMMU_IOAS_UNMAP, &u);

	if (done)
		*done = u.length;
	return rc;
}

static inline void si_send_fd(int sock, int fd, uint32_t word)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &word, .iov_len = sizeof(word) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	DIE_UNLESS(sendmsg(sock, &msg, 0) == sizeof(word), "sendmsg SCM_RIGHTS");
}

static inline int si_recv_fd(int sock, uint32_t *word)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = word, .iov_len = sizeof(*word) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd = -1;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != sizeof(*word))
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (c && c->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

#endif
