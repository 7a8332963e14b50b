// SPDX-License-Identifier: MIT
/*
 * sigaction() reports the program's own SIGSEGV and SIGBUS dispositions
 * as `old`, never barmap's: before and after a register BAR is mapped,
 * with the flags and mask the program gave. A handler installed past libc
 * with a raw rt_sigaction system call replaces barmap's; the next
 * register mapping puts barmap's back in front of it, and it is then the
 * program's handler that sigaction() reports and faults reach.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <sys/syscall.h>

#include "barmap_test.h"

static sigjmp_buf env;
static volatile sig_atomic_t which;

static void h_segv(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; which = 1; siglongjmp(env, 1); }
static void h_bus(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; which = 2; siglongjmp(env, 1); }
static void h_raw(int sig) { (void)sig; which = 3; siglongjmp(env, 1); }

/* The kernel's struct sigaction on x86_64. */
struct k_sigaction {
	void (*handler)(int);
	unsigned long flags;
	void (*restorer)(void);
	uint64_t mask;
};

extern void barmap_test_restore_rt(void);
__asm__(".text\n"
	"barmap_test_restore_rt:\n"
	"	mov $15, %rax\n" /* rt_sigreturn */
	"	syscall\n");

static int null_reaches(int want)
{
	which = 0;
	if (sigsetjmp(env, 1) == 0)
		(void)*(volatile int *)NULL;
	return which == want;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { 0 }, old;
	struct k_sigaction raw = { 0 };
	struct bt_dev d;
	volatile uint32_t *bar, *bar2;

	CHECK(sigaction(SIGSEGV, NULL, &old) == 0 && old.sa_handler == SIG_DFL,
	      "before anything SIGSEGV reads back as SIG_DFL");
	sa.sa_sigaction = h_segv;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	DIE_UNLESS(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction SIGSEGV");
	sa.sa_sigaction = h_bus;
	DIE_UNLESS(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction SIGBUS");

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	CHECK(bar[0] == 0x010000ed, "BAR0 reads the identification register");

	memset(&old, 0, sizeof(old));
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0 && old.sa_sigaction == h_segv &&
		      (old.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER)) ==
			      (SA_SIGINFO | SA_RESTART) &&
		      sigismember(&old.sa_mask, SIGUSR2) == 1 && sigismember(&old.sa_mask, SIGINT) == 0,
	      "after the mapping sigaction reports the program's SIGSEGV handler, flags and mask");
	memset(&old, 0, sizeof(old));
	CHECK(sigaction(SIGBUS, NULL, &old) == 0 && old.sa_sigaction == h_bus,
	      "and its SIGBUS handler");
	sa.sa_handler = SIG_IGN;
	sa.sa_flags = 0;
	memset(&old, 0, sizeof(old));
	CHECK(sigaction(SIGSEGV, &sa, &old) == 0 && old.sa_sigaction == h_segv,
	      "replacing it reports the program's handler as old");
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0 && old.sa_handler == SIG_IGN,
	      "and the new disposition reads back");
	bar[1] = 3;
	CHECK(bar[1] == ~3u, "registers answer with SIGSEGV ignored");

	/* Past libc: the kernel's disposition is replaced outright. */
	raw.handler = h_raw;
	raw.flags = 0x04000000 /* SA_RESTORER */;
	raw.restorer = barmap_test_restore_rt;
	CHECK(syscall(SYS_rt_sigaction, SIGSEGV, &raw, NULL, 8) == 0, "a raw rt_sigaction installs a handler");
	CHECK(null_reaches(3), "a fault reaches the raw handler");

	bar2 = (volatile uint32_t *)bt_map(&d, 0, 4096, 4096);
	CHECK(bar2 != NULL, "the next register mapping");
	memset(&old, 0, sizeof(old));
	CHECK(sigaction(SIGSEGV, NULL, &old) == 0 && old.sa_handler == h_raw,
	      "then sigaction reports the raw handler as the program's");
	CHECK(bar[0] == 0x010000ed, "registers answer again");
	CHECK(null_reaches(3), "and faults still reach the raw handler");
	return bt_exit();
}
