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
 *
 * Also: a grandchild forked before the child touched the mapping reaches
 * the device too; a child that unmapped a page of what it inherited gets
 * SIGSEGV there (the rest still reaches the device); and a
 * clone(CLONE_VM) child's touch leaves the parent's mapping working.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sched.h>
#include <setjmp.h>
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

static sigjmp_buf segv_jmp;

static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(segv_jmp, 1);
}

/* Whether a load at `p` gets SIGSEGV (the disposition put back after). */
static int load_segfaults(volatile uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_segv }, old;
	int faulted = 0;

	sigaction(SIGSEGV, &sa, &old);
	if (sigsetjmp(segv_jmp, 1))
		faulted = 1;
	else
		(void)*(volatile uint32_t *)p;
	sigaction(SIGSEGV, &old, NULL);
	return faulted;
}

static volatile uint8_t *clone_bar;

static int clone_child(void *arg)
{
	(void)arg;
	(void)*(volatile uint32_t *)(clone_bar + EDU_ID);
	return 0;
}

int main(int argc, char **argv)
{
	static char stack[256 << 10];
	struct bt_dev d;
	volatile uint8_t *bar, *bar2;
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

	/* A grandchild forked before the child touched anything. */
	pid = fork();
	if (pid == 0) {
		pid_t gc = fork();
		int st;

		if (gc == 0)
			_exit(reg(bar, EDU_ID) == 0x010000ed ? 0 : 1);
		if (gc < 0 || waitpid(gc, &st, 0) != gc)
			_exit(2);
		_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 3);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a grandchild reads the ID through the mapping its grandparent made (exited %d, signal %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0);

	/* A child that unmapped a page of what it kept. */
	bar2 = bt_map(&d, 0, 0, 8192);
	pid = fork();
	if (pid == 0) {
		if (munmap((void *)(bar2 + 4096), 4096) != 0)
			_exit(1);
		if (!load_segfaults(bar2 + 4096))
			_exit(2);
		_exit(reg(bar2, EDU_ID) == 0x010000ed ? 0 : 3);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a child's unmapped page gets SIGSEGV, the page it kept reaches the device (exited %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	CHECK(!load_segfaults(bar2 + 4096) && reg(bar2, EDU_ID) == 0x010000ed,
	      "the parent's two pages are still mapped and reach the device");

	/* A child sharing the parent's memory maps nothing over it. */
	clone_bar = bar;
	pid = clone(clone_child, stack + sizeof(stack), CLONE_VM | SIGCHLD, NULL);
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "clone");
	set_reg(bar, EDU_LIVENESS, 7);
	CHECK(reg(bar, EDU_LIVENESS) == ~7u && reg(bar, EDU_ID) == 0x010000ed,
	      "after a clone(CLONE_VM) child's touch the parent's mapping still reaches the device");

	/* The parent's mapping keeps working after its children are gone. */
	set_reg(bar, EDU_LIVENESS, 1);
	CHECK(reg(bar, EDU_LIVENESS) == ~1u, "the parent's own mapping still reaches the device");
	return bt_exit();
}
