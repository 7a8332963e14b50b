// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` a COMMAND.MEM clear made through any
 * process's device fd revokes the BAR mappings of every process: a forked
 * child clears it, and both the parent's mapping and the mapping another
 * child inherited get SIGBUS; the parent sets it again and every mapping
 * sees the same contents; the parent clears it, and the child's mapping
 * gets SIGBUS.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/wait.h>

/* A child that waits for a byte on `in`, touches `p`, writes its verdict
 * (1: SIGBUS, 2: read `want`, 3: other) on `out`; twice. */
static void watcher(volatile uint8_t *p, int in, int out)
{
	for (int round = 0; round < 2; round++) {
		char go, verdict;
		uint64_t v = 0;

		if (read(in, &go, 1) != 1)
			_exit(5);
		if (!bt_read_or_sigbus(p, &v))
			verdict = 1;
		else
			verdict = v == 0x77 ? 2 : 3;
		if (write(out, &verdict, 1) != 1)
			_exit(6);
	}
	_exit(0);
}

static char ask(int to, int from)
{
	char c = 'g', verdict = 0;

	if (write(to, &c, 1) != 1 || read(from, &verdict, 1) != 1)
		return 0;
	return verdict;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	volatile uint8_t *bar;
	int go[2], back[2], status;
	uint64_t v = 0;
	pid_t watch, clear;

	bt_open(&d, argc, argv);
	bt_catch_sigbus();
	bar = bt_map(&d, 2, 0, 4096);
	*(volatile uint64_t *)bar = 0x77;
	DIE_UNLESS(pipe(go) == 0 && pipe(back) == 0, "pipe");
	watch = fork();
	if (watch == 0)
		watcher(bar, go[0], back[1]);
	DIE_UNLESS(watch > 0, "fork the watcher");

	clear = fork();
	if (clear == 0) {
		uint16_t cmd = 0;

		if (pread(d.device, &cmd, 2, d.config_off + PCI_COMMAND) != 2)
			_exit(1);
		cmd &= ~PCI_COMMAND_MEMORY;
		_exit(pwrite(d.device, &cmd, 2, d.config_off + PCI_COMMAND) == 2 ? 0 : 2);
	}
	DIE_UNLESS(clear > 0 && waitpid(clear, &status, 0) == clear, "fork the clearing child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child cleared COMMAND.MEM through its inherited fd");
	CHECK(!(bt_command(&d) & PCI_COMMAND_MEMORY), "the parent sees COMMAND.MEM clear");
	CHECK(!bt_read_or_sigbus(bar, &v), "the parent's mapping: SIGBUS after the child's clear");
	CHECK(ask(go[1], back[0]) == 1, "the other child's inherited mapping: SIGBUS after the clear");

	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(bar, &v) && v == 0x77,
	      "set again: the parent's mapping reads the contents back (0x%llx)", (unsigned long long)v);
	bt_memory(&d, 0);
	CHECK(ask(go[1], back[0]) == 1, "the parent's clear: the child's mapping gets SIGBUS");
	DIE_UNLESS(waitpid(watch, &status, 0) == watch, "wait for the watcher");
	bt_memory(&d, 1);
	CHECK(bt_read_or_sigbus(bar, &v) && v == 0x77, "set again: the contents are back");
	return bt_exit();
}
