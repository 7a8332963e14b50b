// SPDX-License-Identifier: MIT
/*
 * Threads that block every signal (the usual worker-thread setup, so that
 * signals go to one thread) touch registers as on the kernel's vfio-pci,
 * where a register access raises no signal: the accesses work, the
 * thread's mask reads back with SIGSEGV blocked, a thread it creates
 * inherits that, a SIGSEGV sent meanwhile waits until it is unblocked,
 * and a genuine fault in such a thread kills the process
 * with SIGSEGV, as the kernel does for a blocked synchronous signal.
 */
#include <pthread.h>
#include <sys/wait.h>

#include "barmap_test.h"

static volatile uint32_t *bar;
static volatile sig_atomic_t sent;

static void on_sent(int sig)
{
	(void)sig;
	sent++;
}

struct result {
	int ok, segv_blocked;
};

static void *inner(void *arg)
{
	struct result *r = arg;
	sigset_t cur;

	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	r->segv_blocked = sigismember(&cur, SIGSEGV);
	r->ok = bar[0] == 0x010000ed;
	return NULL;
}

static void *worker(void *arg)
{
	struct result *r = arg, child = { 0 };
	sigset_t all, cur;
	pthread_t t;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	r->ok = 1;
	for (uint32_t i = 0; i < 200; i++) {
		bar[1] = i;
		if (bar[1] != ~i)
			r->ok = 0;
	}
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	r->segv_blocked = sigismember(&cur, SIGSEGV);
	pthread_create(&t, NULL, inner, &child);
	pthread_join(t, NULL);
	r[1] = child;
	return NULL;
}

int main(int argc, char **argv)
{
	struct result r[2] = { 0 };
	struct bt_dev d;
	sigset_t seg, cur;
	pthread_t t;
	pid_t pid;
	int st = 0;

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register");

	pthread_create(&t, NULL, worker, r);
	pthread_join(t, NULL);
	CHECK(r[0].ok, "a thread that blocks every signal reads and writes registers");
	CHECK(r[0].segv_blocked == 1, "its mask reads back with SIGSEGV blocked");
	CHECK(r[1].ok && r[1].segv_blocked == 1,
	      "a thread it creates inherits SIGSEGV blocked and touches registers");

	sigemptyset(&seg);
	sigaddset(&seg, SIGSEGV);
	CHECK(sigprocmask(SIG_BLOCK, &seg, NULL) == 0, "the main thread blocks SIGSEGV");
	bar[1] = 5;
	CHECK(bar[1] == ~5u, "and touches registers");
	signal(SIGSEGV, on_sent);
	raise(SIGSEGV);
	CHECK(sent == 0, "a SIGSEGV sent while it is blocked waits");
	CHECK(sigprocmask(SIG_UNBLOCK, &seg, &cur) == 0 && sigismember(&cur, SIGSEGV) == 1,
	      "unblocking reports SIGSEGV as it was blocked");
	CHECK(sent == 1, "the waiting SIGSEGV is delivered once it is unblocked");
	signal(SIGSEGV, SIG_DFL);
	CHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0 && sigismember(&cur, SIGSEGV) == 0,
	      "and then as unblocked");

	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		signal(SIGSEGV, SIG_IGN); /* not even a handler: blocked faults kill */
		sigprocmask(SIG_BLOCK, &seg, NULL);
		(void)*(volatile int *)NULL;
		_exit(4);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
	      "a genuine fault in a thread that blocks SIGSEGV kills with SIGSEGV");
	return bt_exit();
}
