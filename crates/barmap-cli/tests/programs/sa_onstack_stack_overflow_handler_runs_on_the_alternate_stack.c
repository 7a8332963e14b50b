// SPDX-License-Identifier: MIT
/*
 * A program with an alternate signal stack and an SA_ONSTACK SIGSEGV
 * handler (the usual stack-overflow guard) maps a register BAR: register
 * accesses work while the alternate stack is set, and a stack overflow
 * runs the program's handler on the alternate stack, with the faulting
 * address near the stack pointer.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <sys/resource.h>
#include <ucontext.h>

#include "barmap_test.h"

#define ALT_SIZE 16384

static sigjmp_buf env;
static char *alt;
static volatile sig_atomic_t on_alt, count;
static volatile uintptr_t fault_addr, fault_sp;

static void on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	char here;

	(void)sig;
	count++;
	on_alt = (char *)&here >= alt && (char *)&here < alt + ALT_SIZE;
	fault_addr = (uintptr_t)si->si_addr;
	fault_sp = uc->uc_mcontext.gregs[REG_RSP];
	siglongjmp(env, 1);
}

static volatile int depth_limit = 1 << 30;

static int recurse(int n)
{
	volatile char frame[512];

	frame[0] = (char)n;
	if (n == depth_limit)
		return 0;
	return recurse(n + 1) + frame[0];
}

int main(int argc, char **argv)
{
	struct sigaction sa = { 0 };
	struct rlimit rl = { 1 << 20, 1 << 20 };
	stack_t ss = { 0 };
	struct bt_dev d;
	volatile uint32_t *bar;

	/* A 1 MiB stack overflows quickly. */
	DIE_UNLESS(setrlimit(RLIMIT_STACK, &rl) == 0, "setrlimit");
	alt = malloc(ALT_SIZE);
	ss.ss_sp = alt;
	ss.ss_size = ALT_SIZE;
	DIE_UNLESS(sigaltstack(&ss, NULL) == 0, "sigaltstack");
	sa.sa_sigaction = on_sigsegv;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register with an alternate stack set");
	for (uint32_t i = 0; i < 1000; i++) {
		bar[1] = i;
		if (bar[1] != ~i) {
			CHECK(0, "the liveness register returns the complement of %u", i);
			break;
		}
	}
	CHECK(count == 0, "register accesses never reach the program's handler");

	if (sigsetjmp(env, 1) == 0) {
		recurse(0);
		CHECK(0, "infinite recursion returns");
	}
	CHECK(count == 1, "a stack overflow reaches the program's SA_ONSTACK handler");
	CHECK(on_alt, "the handler runs on the alternate stack");
	CHECK(fault_addr + 65536 > fault_sp && fault_addr < fault_sp + 65536,
	      "the fault is at the stack pointer (addr %#lx, sp %#lx)", (unsigned long)fault_addr,
	      (unsigned long)fault_sp);

	bar[1] = 42;
	CHECK(bar[1] == ~42u, "registers answer after the overflow was handled");

	/* Without SA_ONSTACK the handler runs on the interrupted stack. */
	sa.sa_flags = SA_SIGINFO;
	DIE_UNLESS(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
	if (sigsetjmp(env, 1) == 0) {
		(void)*(volatile int *)NULL;
		CHECK(0, "a NULL dereference completes");
	}
	CHECK(count == 2 && !on_alt && fault_addr == 0,
	      "a handler without SA_ONSTACK runs off the alternate stack (on_alt %d)", (int)on_alt);
	return bt_exit();
}
