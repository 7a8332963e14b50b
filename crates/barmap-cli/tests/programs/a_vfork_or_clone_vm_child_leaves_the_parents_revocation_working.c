// SPDX-License-Identifier: MIT
/*
 * The classic spawn (vfork, then close/dup2/execve in the child) and a
 * clone(CLONE_VM) child that calls libc on the VFIO fds must leave the
 * parent's device, fds and mappings exactly as they were: afterwards the
 * parent's COMMAND read and write still reach the device, and a
 * COMMAND.MEM clear still revokes its BAR mapping (a touch gets SIGBUS).
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sched.h>
#include <sys/wait.h>

static struct bt_dev d;

static int clone_child(void *arg)
{
	int *result = arg;
	uint16_t cmd;
	int spare;

	/* What a spawn helper does: duplicate, close, and touch the fds. */
	spare = dup(d.device);
	close(spare);
	dup2(d.container, 200);
	close(200);
	result[0] = (int)pread(d.device, &cmd, 2, d.config_off + PCI_COMMAND);
	result[1] = errno;
	result[2] = open("/dev/vfio/vfio", O_RDWR);
	result[3] = errno;
	return 0;
}

static void parent_still_revokes(const char *after)
{
	volatile uint8_t *map = bt_map(&d, 2, 0, 2UL << 20);
	uint64_t v = 0;
	uint16_t cmd = 0;

	*(volatile uint64_t *)map = 0xfeedULL;
	CHECK(pread(d.device, &cmd, 2, d.config_off + PCI_COMMAND) == 2 &&
		      (cmd & PCI_COMMAND_MEMORY),
	      "after %s: COMMAND reads 2 bytes from the device (0x%x)", after, cmd);
	bt_memory(&d, 0);
	CHECK(bt_command(&d) == (cmd & ~PCI_COMMAND_MEMORY),
	      "after %s: COMMAND.MEM clear reaches the device", after);
	CHECK(!bt_read_or_sigbus(map, &v), "after %s: a touch with memory off gets SIGBUS", after);
	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(map, &v) && v == 0xfeedULL,
	      "after %s: re-enabled, the word reads back (0x%llx)", after, (unsigned long long)v);
	munmap((void *)map, 2UL << 20);
}

int main(int argc, char **argv)
{
	char *const args[] = { "/bin/true", NULL };
	static char stack[256 << 10];
	int result[4] = { -2, 0, -2, 0 };
	int status;
	pid_t pid;

	bt_catch_sigbus();
	bt_open(&d, argc, argv);
	bt_memory(&d, 1);

	pid = vfork();
	if (pid == 0) {
		/* The child shares the parent's memory until execve. */
		close(d.group);
		dup2(d.device, 100);
		close(100);
		execve(args[0], args, environ);
		_exit(127);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "vfork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the vfork child ran /bin/true");
	parent_still_revokes("a vfork child's close/dup2/execve");

	pid = clone(clone_child, stack + sizeof(stack), CLONE_VM | SIGCHLD, result);
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "clone");
	CHECK(result[0] == -1 && result[1] == ENODEV,
	      "a clone(CLONE_VM) child's pread of the parent's device fails with ENODEV (%d, %d)",
	      result[0], result[1]);
	CHECK(result[2] == -1 && result[3] == ENODEV,
	      "a clone(CLONE_VM) child's open of /dev/vfio/vfio fails with ENODEV (%d, %d)",
	      result[2], result[3]);
	parent_still_revokes("a clone(CLONE_VM) child's calls");
	return bt_exit();
}
