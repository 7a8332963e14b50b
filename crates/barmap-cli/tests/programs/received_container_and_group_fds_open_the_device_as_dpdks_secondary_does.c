// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` the container and group fds a program
 * receives over a Unix socket are the sender's, as DPDK's secondary process
 * gets them from its primary: the group reports VIABLE and CONTAINER_SET,
 * the container is ready (type1v2 set by the sender), and
 * VFIO_GROUP_GET_DEVICE_FD on the received group gives the receiver a
 * device fd of the same device. A second open of the group stays EBUSY.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/socket.h>
#include <sys/wait.h>

static int receive(int sock, const char *bdf, const char *grp, uint64_t off)
{
	char byte, ctl[CMSG_SPACE(2 * sizeof(int))], path[64];
	struct iovec io = { &byte, 1 };
	struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1,
			    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct vfio_group_status st = { .argsz = sizeof(st) };
	int fds[2], dev;
	uint64_t v = 0;

	if (recvmsg(sock, &m, 0) != 1 || !CMSG_FIRSTHDR(&m))
		return 10;
	memcpy(fds, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(fds));
	if (ioctl(fds[1], VFIO_GROUP_GET_STATUS, &st) != 0)
		return 11;
	if (st.flags != (VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET))
		return 12;
	if (ioctl(fds[0], VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1)
		return 13;
	dev = ioctl(fds[1], VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev < 0)
		return 14;
	if (pread(dev, &v, 8, off) != 8 || v != 0x5ec0)
		return 15;
	v = 0xd00d;
	if (pwrite(dev, &v, 8, off + 8) != 8)
		return 16;
	snprintf(path, sizeof(path), "/dev/vfio/%s", grp);
	errno = 0;
	if (!(open(path, O_RDWR) == -1 && errno == EBUSY))
		return 17;
	return 0;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	char sockarg[16], baroff[24];
	int sv[2], status, fds[2];
	uint64_t v = 0x5ec0;
	pid_t pid;

	if (argc == 6 && strcmp(argv[1], "receiver") == 0)
		return receive(atoi(argv[2]), argv[3], argv[4], strtoull(argv[5], NULL, 0));
	bt_open(&d, argc, argv);
	DIE_UNLESS(pwrite(d.device, &v, 8, d.bar[2].offset) == 8, "pwrite BAR2");
	DIE_UNLESS(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	snprintf(sockarg, sizeof(sockarg), "%d", sv[1]);
	snprintf(baroff, sizeof(baroff), "0x%llx", (unsigned long long)d.bar[2].offset);
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "receiver", sockarg, getenv("BARMAP_BDF"),
		      getenv("BARMAP_GROUP"), baroff, (char *)NULL);
		_exit(127);
	}
	DIE_UNLESS(pid > 0, "fork");
	fds[0] = d.container;
	fds[1] = d.group;
	{
		char byte = 'x', ctl[CMSG_SPACE(sizeof(fds))];
		struct iovec io = { &byte, 1 };
		struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1,
				    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);

		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(fds));
		memcpy(CMSG_DATA(c), fds, sizeof(fds));
		DIE_UNLESS(sendmsg(sv[0], &m, 0) == 1, "sendmsg");
	}
	DIE_UNLESS(waitpid(pid, &status, 0) == pid, "wait for the receiver");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the receiver's group is viable with its container set, the container is type1v2, "
	      "GET_DEVICE_FD gives it the device, and the group stays EBUSY (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	v = 0;
	CHECK(pread(d.device, &v, 8, d.bar[2].offset + 8) == 8 && v == 0xd00d,
	      "the sender reads what the receiver wrote through its own device fd");
	return bt_exit();
}
