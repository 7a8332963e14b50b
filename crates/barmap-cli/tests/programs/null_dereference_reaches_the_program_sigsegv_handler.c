// SPDX-License-Identifier: MIT
/*
 * With a register BAR mapped (so barmap's trap is in place), a genuine
 * NULL dereference reaches the program's own SIGSEGV handler with the
 * siginfo the kernel gives (si_addr 0, SEGV_MAPERR) and its ucontext;
 * a store through a read-only mapping of the BAR gets SEGV_ACCERR at its
 * address; with SIGSEGV at SIG_DFL or SIG_IGN the process dies of SIGSEGV.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <sys/wait.h>
#include <ucontext.h>

#include "barmap_test.h"

static sigjmp_buf env;
static volatile sig_atomic_t segv_count, segv_code, segv_signo;
static volatile void *segv_addr;
static volatile pid_t segv_pid;
static volatile long long segv_rip;

static void on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;

	segv_count++;
	segv_signo = sig == si->si_signo ? sig : -1;
	segv_code = si->si_code;
	segv_addr = si->si_addr;
	segv_pid = si->si_code == SI_USER ? si->si_pid : 0;
	segv_rip = uc->uc_mcontext.gregs[REG_RIP];
	siglongjmp(env, 1);
}

static int child_dies_of_sigsegv(void (*disp)(int))
{
	pid_t pid;
	int st = 0;

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		signal(SIGSEGV, disp);
		*(volatile int *)NULL = 1;
		_exit(4);
	}
	waitpid(pid, &st, 0);
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { 0 };
	struct bt_dev d;
	volatile uint32_t *bar, *ro;

	sa.sa_sigaction = on_sigsegv;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction SIGSEGV");

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register (0x%08x)", bar[0]);

	if (sigsetjmp(env, 1) == 0) {
		(void)*(volatile int *)NULL;
		CHECK(0, "a NULL dereference completes");
	}
	CHECK(segv_count == 1 && segv_signo == SIGSEGV, "a NULL dereference reaches the program's SIGSEGV handler");
	CHECK(segv_addr == NULL && segv_code == SEGV_MAPERR,
	      "with si_addr 0 and SEGV_MAPERR (addr %p, code %d)", segv_addr, (int)segv_code);
	CHECK(segv_rip != 0, "and the faulting context (rip %#llx)", segv_rip);

	ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, d.device, d.bar[0].offset);
	DIE_UNLESS(ro != MAP_FAILED, "read-only mmap of BAR0");
	CHECK(ro[0] == 0x010000ed, "a read-only mapping reads the identification register");
	if (sigsetjmp(env, 1) == 0) {
		ro[1] = 5;
		CHECK(0, "a store through a read-only mapping completes");
	}
	CHECK(segv_count == 2 && segv_code == SEGV_ACCERR && segv_addr == (void *)&ro[1],
	      "a store through a read-only mapping gets SEGV_ACCERR at its address (code %d)",
	      (int)segv_code);

	bar[1] = 7;
	CHECK(bar[1] == (uint32_t)~7u, "registers still answer after the program's handler ran");

	if (sigsetjmp(env, 1) == 0) {
		kill(getpid(), SIGSEGV);
		CHECK(0, "kill(SIGSEGV) returns without the handler");
	}
	CHECK(segv_count == 3 && segv_code == SI_USER && segv_pid == getpid(),
	      "a SIGSEGV sent by kill reaches the handler with SI_USER and the sender's pid");
	fflush(stdout);
	if (fork() == 0) {
		signal(SIGSEGV, SIG_IGN);
		kill(getpid(), SIGSEGV);
		_exit(bar == NULL ? 1 : 0);
	}
	{
		int st = 0;

		wait(&st);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "an ignored SIGSEGV sent by kill is ignored");
	}

	CHECK(child_dies_of_sigsegv(SIG_DFL), "with SIGSEGV at SIG_DFL a NULL dereference kills with SIGSEGV");
	CHECK(child_dies_of_sigsegv(SIG_IGN), "with SIGSEGV ignored a NULL dereference kills with SIGSEGV");
	return bt_exit();
}
