// SPDX-License-Identifier: MIT
/* SIGTERM to `barmap run` reaches the program: it installs a handler for
 * SIGTERM (or the signal number in $BT_SIGNAL: SIGINT, SIGHUP), prints
 * its testbed and "READY", and waits; the test sends the signal to the
 * barmap run process it started. The program's handler must see it, the
 * device must still answer, and the program exits 0; the test then checks
 * that the testbed directory is gone. */
#include "barmap_test.h"

static volatile sig_atomic_t got;

static void on_term(int sig)
{
	got = sig;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	struct sigaction sa = { .sa_handler = on_term };
	uint16_t vendor = 0;
	int sig = getenv("BT_SIGNAL") ? atoi(getenv("BT_SIGNAL")) : SIGTERM;

	bt_open(&d, argc, argv);
	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(sig, &sa, NULL) == 0, "sigaction");
	printf("testbed %s\nREADY\n", getenv("BARMAP_TESTBED"));
	fflush(stdout);
	for (int i = 0; i < 3000 && !got; i++)
		usleep(10000);
	CHECK(got == sig, "the program's handler of signal %d ran", sig);
	CHECK(pread(d.device, &vendor, 2, d.config_off + PCI_VENDOR_ID) == 2 && vendor != 0xffff,
	      "the device answers after the signal (vendor 0x%04x)", vendor);
	return bt_exit();
}
