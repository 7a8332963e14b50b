// SPDX-License-Identifier: MIT
/*
 * A VFIO fd that another process opened (inherited across fork or exec,
 * received over a Unix socket) names a device that lives in that other
 * process: every call on it fails with ENODEV and none reports success
 * (none reaches a placeholder file). The group's single open holds
 * across processes: a child's open of the group its parent holds is
 * EBUSY.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/socket.h>
#include <sys/wait.h>

static int calls_fail(int fd, uint64_t config_off, uint64_t bar2_off, const char *who)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	uint16_t cmd = PCI_COMMAND_MEMORY;
	uint32_t word;
	int bad = 0;

#define FAILS(call, what)                                                         \
	do {                                                                      \
		errno = 0;                                                        \
		if (!((call) && errno == ENODEV)) {                               \
			printf("FAIL %s: %s did not fail with ENODEV (errno %d)\n", \
			       who, what, errno);                                 \
			bad++;                                                    \
		}                                                                 \
	} while (0)
	FAILS(pread(fd, &cmd, 2, config_off + PCI_COMMAND) == -1, "pread of COMMAND");
	FAILS(pwrite(fd, &cmd, 2, config_off + PCI_COMMAND) == -1, "pwrite of COMMAND");
	FAILS(ioctl(fd, VFIO_DEVICE_GET_INFO, &info) == -1, "VFIO_DEVICE_GET_INFO");
	FAILS(read(fd, &word, 4) == -1, "read");
	FAILS(write(fd, &word, 4) == -1, "write");
	FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, bar2_off) == MAP_FAILED, "mmap of BAR2");
#undef FAILS
	return bad;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	char path[64], fdarg[16], cfg[24], bar[24];
	int sv[2], status, nocloexec;
	pid_t pid;

	if (argc == 5 && strcmp(argv[1], "exec-child") == 0) {
		int bad = calls_fail(atoi(argv[2]), strtoull(argv[3], NULL, 0),
				     strtoull(argv[4], NULL, 0), "an exec'd program");
		return bad ? 1 : 0;
	}
	bt_open(&d, argc, argv);

	pid = fork();
	if (pid == 0) {
		int bad = calls_fail(d.device, d.config_off, d.bar[2].offset, "a forked child");

		snprintf(path, sizeof(path), "/dev/vfio/%s", getenv("BARMAP_GROUP"));
		errno = 0;
		if (!(open(path, O_RDWR) == -1 && errno == EBUSY)) {
			printf("FAIL a forked child's open of the held group is not EBUSY (errno %d)\n", errno);
			bad++;
		}
		_exit(bad ? 1 : 0);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child: every call on the inherited device fd fails with ENODEV, "
	      "and its open of the held group is EBUSY");

	nocloexec = dup(d.device); /* GET_DEVICE_FD's fd is O_CLOEXEC */
	snprintf(fdarg, sizeof(fdarg), "%d", nocloexec);
	snprintf(cfg, sizeof(cfg), "0x%llx", (unsigned long long)d.config_off);
	snprintf(bar, sizeof(bar), "0x%llx", (unsigned long long)d.bar[2].offset);
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "exec-child", fdarg, cfg, bar, (char *)NULL);
		_exit(127);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork for exec");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "an exec'd program: every call on the device fd it inherited fails with ENODEV");
	close(nocloexec);

	DIE_UNLESS(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	pid = fork();
	if (pid == 0) {
		char byte, ctl[CMSG_SPACE(sizeof(int))];
		struct iovec io = { &byte, 1 };
		struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1,
				    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
		int fd;

		close(d.device); /* only the received copy is left */
		if (recvmsg(sv[1], &m, 0) != 1 || !CMSG_FIRSTHDR(&m))
			_exit(3);
		memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(fd));
		_exit(calls_fail(fd, d.config_off, d.bar[2].offset, "a receiver") ? 1 : 0);
	}
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
	      "a process that received the device fd over a Unix socket: every call fails with ENODEV");
	CHECK(bt_command(&d) != 0xffff, "the parent's device fd still reaches the device");
	return bt_exit();
}
