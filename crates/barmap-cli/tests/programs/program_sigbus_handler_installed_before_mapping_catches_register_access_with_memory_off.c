// SPDX-License-Identifier: MIT
/*
 * A program installs its SIGBUS handler first and maps a register BAR
 * afterwards (the usual order). With COMMAND.MEM clear, a load or a store
 * through the mapping calls that handler with BUS_ADRERR and the faulting
 * address, as the kernel's revoked BAR does; with memory back on the
 * registers answer again. With SIGBUS at SIG_DFL, SIG_IGN or blocked, the
 * process dies of SIGBUS (checked in children that open the device
 * themselves).
 */
#include <setjmp.h>
#include <sys/wait.h>

#include "barmap_test.h"

static sigjmp_buf env;
static volatile sig_atomic_t bus_count, bus_code;
static volatile void *bus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGBUS) {
		bus_count++;
		bus_code = si->si_code;
		bus_addr = si->si_addr;
	}
	siglongjmp(env, 1);
}

enum how { DFL, IGN, BLOCKED };

/* A child that opens the device, clears memory and reads a register. */
static void child(enum how how, int argc, char **argv)
{
	struct bt_dev d;
	volatile uint32_t *bar;

	if (how == DFL)
		signal(SIGBUS, SIG_DFL);
	if (how == IGN)
		signal(SIGBUS, SIG_IGN);
	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	if (bar[0] != 0x010000ed)
		_exit(3);
	if (how == BLOCKED) {
		sigset_t s;

		sigemptyset(&s);
		sigaddset(&s, SIGBUS);
		sigprocmask(SIG_BLOCK, &s, NULL);
	}
	bt_memory(&d, 0);
	(void)bar[0];
	_exit(4); /* survived */
}

static int dies_of_sigbus(enum how how, int argc, char **argv)
{
	pid_t pid;
	int st = 0;

	fflush(stdout);
	pid = fork();
	if (pid == 0)
		child(how, argc, argv);
	waitpid(pid, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { 0 }, old = { 0 };
	struct bt_dev d;
	volatile uint32_t *bar;
	uint32_t v = 0;

	CHECK(dies_of_sigbus(DFL, argc, argv), "with SIGBUS at SIG_DFL the process dies of SIGBUS");
	CHECK(dies_of_sigbus(IGN, argc, argv), "with SIGBUS ignored the process dies of SIGBUS");
	CHECK(dies_of_sigbus(BLOCKED, argc, argv), "with SIGBUS blocked the process dies of SIGBUS");

	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction SIGBUS");

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register (0x%08x)", bar[0]);
	bar[1] = 0x12345678;
	CHECK(bar[1] == (uint32_t)~0x12345678u, "the liveness register returns the complement");
	CHECK(sigaction(SIGBUS, NULL, &old) == 0 && old.sa_sigaction == on_sigbus,
	      "the program's SIGBUS handler is still its own after the mapping");

	bt_memory(&d, 0);
	if (sigsetjmp(env, 1) == 0) {
		v = bar[0];
		CHECK(0, "a load with memory off completes (0x%08x)", v);
	}
	CHECK(bus_count == 1 && bus_code == BUS_ADRERR && bus_addr == (void *)&bar[0],
	      "a load with memory off calls the program's handler with BUS_ADRERR at the address "
	      "(count %d, code %d, addr %p, bar %p)",
	      (int)bus_count, (int)bus_code, bus_addr, (void *)bar);
	if (sigsetjmp(env, 1) == 0) {
		bar[1] = 1;
		CHECK(0, "a store with memory off completes");
	}
	CHECK(bus_count == 2 && bus_code == BUS_ADRERR && bus_addr == (void *)&bar[1],
	      "a store with memory off calls the program's handler with BUS_ADRERR at the address");

	bt_memory(&d, 1);
	CHECK(bar[0] == 0x010000ed, "with memory back on the register answers again");
	return bt_exit();
}
