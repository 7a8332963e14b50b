// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` a device fd sent over a Unix socket
 * (SCM_RIGHTS) to a program that never opened the device works there as
 * on the kernel: the receiver reads what the sender wrote, maps the BAR,
 * and what it writes the sender reads.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/socket.h>
#include <sys/wait.h>

static uint64_t rd(int fd, uint64_t off)
{
	uint64_t v = 0;

	return pread(fd, &v, 8, off) == 8 ? v : ~0ull;
}

static int wr(int fd, uint64_t off, uint64_t v)
{
	return pwrite(fd, &v, 8, off) == 8;
}

/* The exec'd receiver: takes one fd from `sock`, uses it. */
static int receive(int sock, uint64_t off)
{
	char byte, ctl[CMSG_SPACE(sizeof(int))];
	struct iovec io = { &byte, 1 };
	struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1,
			    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct vfio_region_info r = { .argsz = sizeof(r), .index = 2 };
	volatile uint64_t *p;
	int fd;

	if (recvmsg(sock, &m, 0) != 1 || !CMSG_FIRSTHDR(&m))
		return 10;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(fd));
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &r) != 0 || r.offset != off)
		return 11;
	if (rd(fd, off) != 0xabcd)
		return 12;
	if (!wr(fd, off + 8, 0x1234))
		return 13;
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
	if (p == MAP_FAILED || p[0] != 0xabcd)
		return 14;
	p[2] = 0x5678;
	return 0;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	char sockarg[16], baroff[24];
	int sv[2], status;
	pid_t pid;

	if (argc == 4 && strcmp(argv[1], "receiver") == 0)
		return receive(atoi(argv[2]), strtoull(argv[3], NULL, 0));
	bt_open(&d, argc, argv);
	DIE_UNLESS(wr(d.device, d.bar[2].offset, 0xabcd), "pwrite BAR2");
	DIE_UNLESS(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	snprintf(sockarg, sizeof(sockarg), "%d", sv[1]);
	snprintf(baroff, sizeof(baroff), "0x%llx", (unsigned long long)d.bar[2].offset);
	pid = fork();
	if (pid == 0) {
		/* A new program: it inherits the socket, no VFIO fd (all O_CLOEXEC). */
		execl("/proc/self/exe", argv[0], "receiver", sockarg, baroff, (char *)NULL);
		_exit(127);
	}
	DIE_UNLESS(pid > 0, "fork");
	{
		char byte = 'x', ctl[CMSG_SPACE(sizeof(int))];
		struct iovec io = { &byte, 1 };
		struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1,
				    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);

		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &d.device, sizeof(int));
		DIE_UNLESS(sendmsg(sv[0], &m, 0) == 1, "sendmsg");
	}
	DIE_UNLESS(waitpid(pid, &status, 0) == pid, "wait for the receiver");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a program that received the device fd over a Unix socket reads, writes and maps the device (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	CHECK(rd(d.device, d.bar[2].offset + 8) == 0x1234,
	      "the sender reads what the receiver wrote through the fd");
	CHECK(rd(d.device, d.bar[2].offset + 16) == 0x5678,
	      "the sender reads what the receiver stored through its mapping");
	return bt_exit();
}
