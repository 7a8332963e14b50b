// SPDX-License-Identifier: MIT
/*
 * With barmap's trap in place (a register BAR mapped), an illegal
 * instruction in a program that has no SIGILL handler kills it by SIGILL,
 * at that instruction, as without barmap: `barmap run` exits 128 + 4.
 */
#include "barmap_test.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint32_t *bar;

	bt_open(&d, argc, argv);
	bar = (volatile uint32_t *)bt_map(&d, 0, 0, 4096);
	bt_memory(&d, 1);
	CHECK(bar[0] != 0xffffffff, "the register BAR is mapped and trapped");
	printf("ok about to execute ud2\n");
	fflush(stdout);
	asm volatile("ud2" ::: "memory");
	printf("FAIL the program survived ud2\n");
	return 1;
}
