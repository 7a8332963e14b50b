// SPDX-License-Identifier: MIT
/* A process that outlives `barmap run` finds no testbed. The program
 * opens the device and forks a child, which opens a container while the
 * run is live (so its front end starts during the run), tells the parent,
 * waits until the run is over (its parent gone, the testbed removed),
 * then opens the container and
 * the group and looks up the device's sysfs directory: each is ENOENT, as
 * on a machine without the device. The child then execs a fresh copy of
 * this program, whose front end starts only after the run: it must find
 * nothing either. Both write their checks to $BT_RESULT (the run's output
 * is closed by then); the fresh copy ends it with "DONE". */
#include "barmap_test.h"
#include <sys/stat.h>

static void finds_no_device(const char *who)
{
	const char *tb = getenv("BARMAP_TESTBED");
	char path[128];
	struct stat st;
	int fd;

	errno = 0;
	fd = open("/dev/vfio/vfio", O_RDWR);
	CHECK(fd < 0 && errno == ENOENT, "%s: open /dev/vfio/vfio is ENOENT", who);
	snprintf(path, sizeof(path), "/dev/vfio/%s", getenv("BARMAP_GROUP"));
	errno = 0;
	fd = open(path, O_RDWR);
	CHECK(fd < 0 && errno == ENOENT, "%s: open %s is ENOENT", who, path);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", getenv("BARMAP_BDF"));
	errno = 0;
	CHECK(stat(path, &st) != 0 && errno == ENOENT, "%s: stat %s is ENOENT", who, path);
	errno = 0;
	CHECK(tb != NULL && lstat(tb, &st) != 0 && errno == ENOENT,
	      "%s: the testbed directory is gone", who);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	const char *result = getenv("BT_RESULT");
	const char *tb = getenv("BARMAP_TESTBED");
	pid_t parent = getpid(), child;
	int ready[2];
	char byte = 0;

	DIE_UNLESS(result != NULL && tb != NULL, "BT_RESULT and BARMAP_TESTBED are set");
	if (getenv("BT_PHASE")) {
		finds_no_device("a program started after the run");
		printf("DONE\n");
		return bt_exit();
	}
	bt_open(&d, argc, argv);
	DIE_UNLESS(pipe(ready) == 0, "pipe");
	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		DIE_UNLESS(freopen(result, "w", stdout) != NULL, "open BT_RESULT");
		DIE_UNLESS(freopen("/dev/null", "w", stderr) != NULL, "open /dev/null");
		CHECK(open("/dev/vfio/vfio", O_RDWR) >= 0,
		      "the child opens a container while the run is live");
		DIE_UNLESS(write(ready[1], &byte, 1) == 1, "tell the parent");
		for (int i = 0; i < 2000 && (getppid() == parent || access(tb, F_OK) == 0); i++)
			usleep(10000);
		finds_no_device("a child that outlived the run");
		fflush(stdout);
		setenv("BT_PHASE", "after", 1);
		execv("/proc/self/exe", argv);
		printf("FAIL exec of a fresh copy (errno %d)\nDONE\n", errno);
		exit(1);
	}
	DIE_UNLESS(read(ready[0], &byte, 1) == 1, "the child is ready");
	printf("testbed %s\n", tb);
	return bt_exit();
}
