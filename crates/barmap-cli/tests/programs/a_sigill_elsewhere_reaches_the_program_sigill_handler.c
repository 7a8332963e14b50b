// SPDX-License-Identifier: MIT
/*
 * barmap's trap owns SIGILL (to emulate MOVDIR64B and ENQCMD on CPUs
 * without them), but an illegal instruction anywhere else is the
 * program's: its SIGILL handler runs with the kernel's siginfo (ILL_ILLOPN
 * at the instruction) and ucontext, and may step over the instruction;
 * sigaction and signal report the program's own handlers; a MOVDIR64B to
 * ordinary memory is left to the CPU (SIGILL to the program where the CPU
 * lacks it, a plain store where it has it); a SIGILL sent by raise() is
 * delivered as sent.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <ucontext.h>

#include "barmap_test.h"

static volatile sig_atomic_t count, code, signo, other;
static volatile void *addr;
static volatile long long rip;
static volatile int skip;

static void on_sigill(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;

	count++;
	signo = sig;
	code = si->si_code;
	addr = si->si_addr;
	rip = uc->uc_mcontext.gregs[REG_RIP];
	if (si->si_code > 0)
		uc->uc_mcontext.gregs[REG_RIP] += skip;
}

static void on_sigill_plain(int sig)
{
	(void)sig;
	other++;
}

extern char ud2_at[], movdir_at[];

int main(int argc, char **argv)
{
	struct sigaction sa = { 0 }, old = { 0 };
	struct bt_dev d;
	volatile uint32_t *bar;
	unsigned a, b, c, dx;
	int has_movdir64b;

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	bt_memory(&d, 1);
	CHECK(bar[0] != 0xffffffff, "the register BAR is mapped and trapped");

	sa.sa_sigaction = on_sigill;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGILL, &sa, NULL) == 0, "sigaction SIGILL");
	DIE_UNLESS(sigaction(SIGILL, NULL, &old) == 0, "sigaction SIGILL query");
	CHECK(old.sa_sigaction == on_sigill && (old.sa_flags & SA_SIGINFO),
	      "sigaction reports the program's own SIGILL handler");

	skip = 2;
	asm volatile("ud2_at: ud2" ::: "memory");
	CHECK(count == 1 && signo == SIGILL && code == ILL_ILLOPN,
	      "ud2 reaches the program's SIGILL handler with ILL_ILLOPN (count %d code %d)",
	      (int)count, (int)code);
	CHECK(addr == (void *)ud2_at && rip == (long long)(uintptr_t)ud2_at,
	      "si_addr and the saved RIP are the ud2's address");

	has_movdir64b = __get_cpuid_count(7, 0, &a, &b, &c, &dx) && (c & (1u << 28));
	{
		uint8_t src[64] __attribute__((aligned(64)));
		uint8_t dst[64] __attribute__((aligned(64)));

		memset(src, 0x77, sizeof(src));
		memset(dst, 0, sizeof(dst));
		skip = 5;
		count = 0;
		asm volatile("movdir_at: .byte 0x66, 0x0f, 0x38, 0xf8, 0x02"
			     : : "a"(dst), "d"(src) : "memory");
		if (has_movdir64b)
			CHECK(count == 0 && memcmp(src, dst, 64) == 0,
			      "MOVDIR64B to ordinary memory is the CPU's store");
		else
			CHECK(count == 1 && addr == (void *)movdir_at && dst[0] == 0,
			      "MOVDIR64B to ordinary memory on a CPU without it reaches the program's SIGILL handler, untouched");
	}

	count = 0;
	skip = 0;
	raise(SIGILL);
	CHECK(count == 1 && code == SI_TKILL, "a SIGILL sent by raise() reaches the handler as sent (code %d)",
	      (int)code);

	CHECK((uintptr_t)signal(SIGILL, on_sigill_plain) == (uintptr_t)on_sigill,
	      "signal() returns the program's previous SIGILL handler");
	CHECK(bar[0] != 0xffffffff, "a register read still works after signal(SIGILL)");
	raise(SIGILL);
	CHECK(other == 1, "the handler set by signal() gets the next SIGILL");
	return bt_exit();
}
