// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` a device belongs to the run, not to the
 * process that opened it, as on the kernel: a forked child's calls on the
 * device fd it inherited, and an exec'd program's on the fd it kept, reach
 * the parent's device (what the parent wrote, the child reads; what the
 * child writes, the parent reads), and a forked child keeps the parent's
 * BAR mapping of that device.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

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

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint8_t *bar;
	char fdarg[16], baroff[24];
	int status, keep;
	pid_t pid;

	if (argc == 4 && strcmp(argv[1], "exec-child") == 0) {
		int fd = atoi(argv[2]);
		uint64_t off = strtoull(argv[3], NULL, 0);
		struct vfio_device_info info = { .argsz = sizeof(info) };
		volatile uint64_t *m;

		if (rd(fd, off) != 0x1111)
			return 1;
		if (!wr(fd, off + 24, 0x4444))
			return 2;
		if (ioctl(fd, VFIO_DEVICE_GET_INFO, &info) != 0 || info.num_regions < 9)
			return 3;
		m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
		if (m == MAP_FAILED || m[0] != 0x1111)
			return 4;
		m[5] = 0x5555;
		return 0;
	}
	bt_open(&d, argc, argv);
	bar = bt_map(&d, 2, 0, 4096);
	*(volatile uint64_t *)bar = 0x1111;

	pid = fork();
	if (pid == 0) {
		int bad = 0;

		bad += rd(d.device, d.bar[2].offset) != 0x1111;
		bad += !wr(d.device, d.bar[2].offset + 8, 0x2222);
		bad += bt_command(&d) & PCI_COMMAND_MEMORY ? 0 : 1;
		/* The mapping the parent made is the child's too. */
		bad += *(volatile uint64_t *)bar != 0x1111;
		*(volatile uint64_t *)(bar + 16) = 0x3333;
		_exit(bad ? 1 : 0);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child read the parent's value through its inherited fd and its inherited mapping");
	CHECK(rd(d.device, d.bar[2].offset + 8) == 0x2222,
	      "the parent reads what the child wrote through the fd");
	CHECK(*(volatile uint64_t *)(bar + 16) == 0x3333,
	      "the parent reads what the child stored through the inherited mapping");

	keep = dup(d.device); /* GET_DEVICE_FD's fd is O_CLOEXEC; the dup is not */
	snprintf(fdarg, sizeof(fdarg), "%d", keep);
	snprintf(baroff, sizeof(baroff), "0x%llx", (unsigned long long)d.bar[2].offset);
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "exec-child", fdarg, baroff, (char *)NULL);
		_exit(127);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork for exec");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "an exec'd program's pread, ioctl and mmap of the fd it kept reach the parent's device (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	CHECK(rd(d.device, d.bar[2].offset + 24) == 0x4444,
	      "the parent reads what the exec'd program wrote through the fd");
	CHECK(*(volatile uint64_t *)(bar + 40) == 0x5555,
	      "the parent reads what the exec'd program stored through its own mapping");
	close(keep);
	return bt_exit();
}
