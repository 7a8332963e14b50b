// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared` a group opens once across every process, and
 * a device fd holds its group open wherever it is: while a forked child
 * holds only the device fd it inherited (the parent closed its group and
 * device fds), an open of the group in the parent or in another child is
 * EBUSY; once the child's fd is gone, the group opens again.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
	struct bt_dev d;
	char path[64];
	int hold[2], status, fd;
	pid_t holder, other;

	bt_open(&d, argc, argv);
	snprintf(path, sizeof(path), "/dev/vfio/%s", getenv("BARMAP_GROUP"));
	DIE_UNLESS(pipe(hold) == 0, "pipe");
	holder = fork();
	if (holder == 0) {
		char c;

		close(hold[1]);
		close(d.group);
		close(d.container);
		/* Holds the inherited device fd until the parent says so. */
		_exit(read(hold[0], &c, 1) == 0 ? 0 : 1);
	}
	DIE_UNLESS(holder > 0, "fork the holder");
	close(hold[0]);
	close(d.device);
	close(d.group);
	close(d.container);

	errno = 0;
	fd = open(path, O_RDWR);
	CHECK(fd == -1 && errno == EBUSY,
	      "the parent's open of the group while a child holds its device fd is EBUSY");
	if (fd >= 0)
		close(fd);
	other = fork();
	if (other == 0) {
		int g;

		errno = 0;
		g = open(path, O_RDWR);
		_exit(g == -1 && errno == EBUSY ? 0 : 1);
	}
	DIE_UNLESS(other > 0 && waitpid(other, &status, 0) == other, "fork another child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "another child's open of the group is EBUSY too");

	close(hold[1]);
	DIE_UNLESS(waitpid(holder, &status, 0) == holder, "wait for the holder");
	fd = open(path, O_RDWR);
	CHECK(fd >= 0, "with the holder gone the group opens again");
	if (fd >= 0) {
		errno = 0;
		CHECK(open(path, O_RDWR) == -1 && errno == EBUSY,
		      "and a second open of it is EBUSY");
	}
	return bt_exit();
}
