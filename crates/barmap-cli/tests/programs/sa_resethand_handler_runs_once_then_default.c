// SPDX-License-Identifier: MIT
/*
 * SA_RESETHAND and SA_NODEFER as the kernel applies them, with barmap's
 * trap in place: an SA_RESETHAND SIGSEGV handler runs once, the program's
 * disposition is then SIG_DFL (the next fault kills with SIGSEGV), and
 * register accesses keep working; the same for SIGBUS on a register
 * access with memory off. Without SA_NODEFER the program sees SIGSEGV
 * blocked inside its handler; with it, not; sa_mask signals are blocked.
 */
#include <setjmp.h>
#include <sys/wait.h>

#include "barmap_test.h"

static sigjmp_buf env;
static volatile sig_atomic_t count, segv_blocked, usr1_blocked;

static void handler(int sig)
{
	sigset_t cur;

	(void)sig;
	count++;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	segv_blocked = sigismember(&cur, SIGSEGV);
	usr1_blocked = sigismember(&cur, SIGUSR1);
	siglongjmp(env, 1);
}

static void set(int sig, int flags)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR1);
	DIE_UNLESS(sigaction(sig, &sa, NULL) == 0, "sigaction");
}

static int null_deref(void)
{
	if (sigsetjmp(env, 1) == 0) {
		(void)*(volatile int *)NULL;
		return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	struct sigaction cur;
	struct bt_dev d;
	volatile uint32_t *bar;
	pid_t pid;
	int st = 0;

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register");

	set(SIGSEGV, 0);
	CHECK(null_deref() && count == 1, "a fault runs the program's handler");
	CHECK(segv_blocked == 1 && usr1_blocked == 1,
	      "without SA_NODEFER the handler sees SIGSEGV and its sa_mask blocked");
	CHECK(bar[0] == 0x010000ed, "registers answer after the handler");

	set(SIGSEGV, SA_NODEFER);
	CHECK(null_deref() && count == 2 && segv_blocked == 0 && usr1_blocked == 1,
	      "with SA_NODEFER the handler sees SIGSEGV unblocked, its sa_mask blocked");

	set(SIGSEGV, SA_RESETHAND);
	CHECK(null_deref() && count == 3, "an SA_RESETHAND handler runs");
	CHECK(sigaction(SIGSEGV, NULL, &cur) == 0 && cur.sa_handler == SIG_DFL,
	      "then the program's SIGSEGV disposition is SIG_DFL");
	bar[1] = 9;
	CHECK(bar[1] == ~9u, "registers answer after the reset");
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		(void)*(volatile int *)NULL;
		_exit(4);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, "the next fault kills with SIGSEGV");

	set(SIGBUS, SA_RESETHAND);
	bt_memory(&d, 0);
	if (sigsetjmp(env, 1) == 0)
		(void)bar[0];
	CHECK(count == 4, "a register access with memory off runs the SA_RESETHAND SIGBUS handler");
	CHECK(sigaction(SIGBUS, NULL, &cur) == 0 && cur.sa_handler == SIG_DFL,
	      "then the program's SIGBUS disposition is SIG_DFL");
	bt_memory(&d, 1);
	CHECK(bar[0] == 0x010000ed, "registers answer with memory back on");
	return bt_exit();
}
