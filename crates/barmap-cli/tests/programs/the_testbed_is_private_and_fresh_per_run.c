// SPDX-License-Identifier: MIT
/* The testbed is private: the directory that `barmap run` names in
 * BARMAP_TESTBED is a directory (not a symbolic link), mode 0700, owned by
 * the program's user, and comes with the run's token. The program prints
 * its path; the test runs it twice and requires two fresh directories
 * under $TMPDIR, both removed when their runs end. */
#include "barmap_test.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	struct bt_dev d;
	const char *tb = getenv("BARMAP_TESTBED");
	struct stat st;

	bt_open(&d, argc, argv);
	DIE_UNLESS(tb != NULL, "BARMAP_TESTBED is set");
	DIE_UNLESS(lstat(tb, &st) == 0, "lstat the testbed");
	CHECK(S_ISDIR(st.st_mode), "the testbed is a directory, not a symbolic link");
	CHECK((st.st_mode & 07777) == 0700, "the testbed's mode is 0700 (%04o)",
	      (unsigned)(st.st_mode & 07777));
	CHECK(st.st_uid == geteuid(), "the testbed is owned by the program's user (uid %u)",
	      (unsigned)st.st_uid);
	CHECK(getenv("BARMAP_TESTBED_TOKEN") != NULL &&
		      strlen(getenv("BARMAP_TESTBED_TOKEN")) >= 32,
	      "the run's token is in the environment");
	printf("testbed %s\n", tb);
	return bt_exit();
}
