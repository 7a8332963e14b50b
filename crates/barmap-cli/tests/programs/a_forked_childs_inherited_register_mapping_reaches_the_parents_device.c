// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared`, as on the kernel, a BAR mapping survives
 * fork: vfio-pci's vma is not VM_DONTCOPY, so the child's copy maps the
 * same device. Here the mapping is of a register BAR (edu's BAR0, trapped
 * by barmap): the child's loads and stores through the mapping it
 * inherited reach the parent's device, and what the child stores the
 * parent reads through its own mapping (and the other way round).
 *
 * edu's registers: 0x00 the ID (0x010000ed), 0x04 liveness (reads back
 * the inverse of what was written), 0x08 factorial (reads back what was
 * written while no computation runs).
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/wait.h>

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define EDU_FACT 0x08

static uint32_t reg(volatile uint8_t *bar, unsigned off)
{
	return *(volatile uint32_t *)(bar + off);
}

static void set_reg(volatile uint8_t *bar, unsigned off, uint32_t v)
{
	*(volatile uint32_t *)(bar + off) = v;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint8_t *bar;
	int status;
	pid_t pid;

	bt_open(&d, argc, argv);
	bar = bt_map(&d, 0, 0, 4096);
	CHECK(reg(bar, EDU_ID) == 0x010000ed, "the parent reads edu's ID (%#x)", reg(bar, EDU_ID));
	set_reg(bar, EDU_FACT, 5);

	pid = fork();
	if (pid == 0) {
		int bad = 0;

		/* Loads and stores through the mapping the parent made. */
		bad |= (reg(bar, EDU_ID) != 0x010000ed) << 0;
		set_reg(bar, EDU_LIVENESS, 0x12345678);
		bad |= (reg(bar, EDU_LIVENESS) != ~0x12345678u) << 1;
		bad |= (reg(bar, EDU_FACT) != 5 && reg(bar, EDU_FACT) != 120) << 2;
		set_reg(bar, EDU_LIVENESS, 0x0badcafe);
		_exit(bad);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child's loads and stores through its inherited register mapping reach the device "
	      "(exited %d, signal %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	CHECK(reg(bar, EDU_LIVENESS) == ~0x0badcafeu,
	      "the parent reads what the child stored through the inherited mapping (%#x)",
	      reg(bar, EDU_LIVENESS));

	/* The other way round: the parent stores, a new child loads. */
	set_reg(bar, EDU_LIVENESS, 0x00c0ffee);
	pid = fork();
	if (pid == 0)
		_exit(reg(bar, EDU_LIVENESS) == ~0x00c0ffeeu ? 0 : 1);
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child loads what the parent stored (exited %d, signal %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0);

	/* The parent's mapping keeps working after its children are gone. */
	set_reg(bar, EDU_LIVENESS, 1);
	CHECK(reg(bar, EDU_LIVENESS) == ~1u, "the parent's own mapping still reaches the device");
	return bt_exit();
}
