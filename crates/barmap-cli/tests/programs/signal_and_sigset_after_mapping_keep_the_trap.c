// SPDX-License-Identifier: MIT
/*
 * signal(), sigset(), bsd_signal() and sysv_signal() for SIGSEGV after a
 * register BAR is mapped set the program's handler, report the previous
 * one, and leave register accesses working; a NULL dereference reaches
 * the handler set last.
 */
#define _GNU_SOURCE
#include <setjmp.h>

#include "barmap_test.h"

/* sigset() is deprecated, and still what System V programs call. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

extern __sighandler_t bsd_signal(int, __sighandler_t);

static sigjmp_buf env;
static volatile sig_atomic_t which;

static void h1(int sig) { which = 1; siglongjmp(env, sig); }
static void h2(int sig) { which = 2; siglongjmp(env, sig); }
static void h3(int sig) { which = 3; siglongjmp(env, sig); }
static void h4(int sig) { which = 4; siglongjmp(env, sig); }

static int null_reaches(int want)
{
	which = 0;
	if (sigsetjmp(env, 1) == 0)
		(void)*(volatile int *)NULL;
	return which == want;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint32_t *bar;
	struct sigaction cur;

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register");

	CHECK(signal(SIGSEGV, h1) == SIG_DFL, "signal() reports SIG_DFL as the previous handler");
	bar[1] = 1;
	CHECK(bar[1] == (uint32_t)~1u, "registers answer after signal()");
	CHECK(null_reaches(1), "a NULL dereference reaches the signal() handler");

	CHECK(sigset(SIGSEGV, h2) == h1, "sigset() reports the signal() handler");
	bar[1] = 2;
	CHECK(bar[1] == (uint32_t)~2u, "registers answer after sigset()");
	CHECK(null_reaches(2), "a NULL dereference reaches the sigset() handler");

	CHECK(bsd_signal(SIGSEGV, h3) == h2, "bsd_signal() reports the sigset() handler");
	CHECK(bar[0] == 0x010000ed, "registers answer after bsd_signal()");
	CHECK(null_reaches(3), "a NULL dereference reaches the bsd_signal() handler");

	CHECK(sysv_signal(SIGSEGV, h4) == h3, "sysv_signal() reports the bsd_signal() handler");
	CHECK(bar[0] == 0x010000ed, "registers answer after sysv_signal()");
	CHECK(null_reaches(4), "a NULL dereference reaches the sysv_signal() handler");
	CHECK(sigaction(SIGSEGV, NULL, &cur) == 0 && cur.sa_handler == SIG_DFL,
	      "sysv_signal()'s handler ran once: SIGSEGV is back at SIG_DFL");
	CHECK(bar[0] == 0x010000ed, "registers answer after the one-shot handler ran");

	CHECK(signal(SIGSEGV, SIG_IGN) == SIG_DFL && signal(SIGSEGV, SIG_DFL) == SIG_IGN,
	      "signal() reports SIG_IGN and SIG_DFL back");
	bar[1] = 3;
	CHECK(bar[1] == (uint32_t)~3u, "registers answer with SIGSEGV at SIG_DFL");
	return bt_exit();
}
