// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` a process killed while it uses the device
 * (SIGKILL: no exit path of its own runs) leaves the device to the others
 * as the kernel's release would: the parent and a second child keep
 * reading and writing it through their fds and mappings, see what the
 * killed child wrote, and COMMAND.MEM still revokes and restores.
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
	int ready[2], status;
	uint64_t v = 0;
	pid_t victim, other;
	char c;

	bt_open(&d, argc, argv);
	bt_catch_sigbus();
	bar = bt_map(&d, 2, 0, 4096);
	DIE_UNLESS(pipe(ready) == 0, "pipe");
	victim = fork();
	if (victim == 0) {
		/* Uses the device, then spins in its mapping until killed. */
		if (!wr(d.device, d.bar[2].offset + 8, 0xdead))
			_exit(1);
		*(volatile uint64_t *)(bar + 16) = 0xbeef;
		if (write(ready[1], "r", 1) != 1)
			_exit(2);
		for (;;)
			(void)*(volatile uint64_t *)bar;
	}
	close(ready[1]);
	DIE_UNLESS(victim > 0 && read(ready[0], &c, 1) == 1, "the victim is ready");
	kill(victim, SIGKILL);
	DIE_UNLESS(waitpid(victim, &status, 0) == victim, "wait for the victim");
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child was killed by SIGKILL");

	CHECK(rd(d.device, d.bar[2].offset + 8) == 0xdead,
	      "the parent reads what the killed child wrote through its fd");
	CHECK(bt_read_or_sigbus(bar + 16, &v) && v == 0xbeef,
	      "and what it stored through its mapping");
	CHECK(wr(d.device, d.bar[2].offset + 24, 0x600d), "the parent still writes the device");
	other = fork();
	if (other == 0) {
		uint64_t w = 0;

		_exit(rd(d.device, d.bar[2].offset + 24) == 0x600d &&
			      bt_read_or_sigbus(bar + 16, &w) && w == 0xbeef ? 0 : 1);
	}
	DIE_UNLESS(other > 0 && waitpid(other, &status, 0) == other, "fork another child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "another child still reaches the device through its fd and mapping");
	bt_memory(&d, 0);
	CHECK(!bt_read_or_sigbus(bar, &v), "a clear still revokes the parent's mapping");
	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(bar + 16, &v) && v == 0xbeef, "and setting it restores the contents");
	return bt_exit();
}
