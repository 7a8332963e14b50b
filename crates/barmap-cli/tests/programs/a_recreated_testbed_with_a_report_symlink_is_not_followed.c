// SPDX-License-Identifier: MIT
/* A testbed made again after the run, with a copy of the run's spec and
 * token and a symbolic link in place of the report, is not taken for the
 * testbed, and nothing is written through the link. The program copies
 * the spec and token, and forks a child that opens a container while the
 * run is live (so its front end has a report to write at exit). Once the
 * run is over, the child makes the directory again (mode 0700, the spec,
 * the token, and report-<pid>.json links to $BT_TARGET for itself and for
 * a grandchild), checks that the container is now ENOENT, and exits; the
 * grandchild waits for it, execs a fresh copy of this program (a front
 * end started after the run), which checks the same and ends $BT_RESULT
 * with "DONE". The test checks that $BT_TARGET is untouched. */
#include "barmap_test.h"
#include <sys/stat.h>

static char spec[1 << 16], token[256];
static ssize_t spec_len, token_len;

/* The file's contents, or 0 bytes if it does not exist. */
static ssize_t slurp(const char *dir, const char *name, char *buf, size_t len)
{
	char path[512];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	if (fd < 0 && errno == ENOENT)
		return 0;
	DIE_UNLESS(fd >= 0, path);
	n = read(fd, buf, len);
	close(fd);
	DIE_UNLESS(n > 0, path);
	return n;
}

static void put(const char *dir, const char *name, const char *buf, ssize_t len)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	DIE_UNLESS(fd >= 0 && write(fd, buf, len) == len, path);
	close(fd);
}

static void link_report(const char *dir, pid_t pid, const char *target)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/report-%d.json", dir, (int)pid);
	CHECK(symlink(target, path) == 0, "a symbolic link %s to the target", path);
}

static void finds_no_device(const char *who)
{
	int fd;

	errno = 0;
	fd = open("/dev/vfio/vfio", O_RDWR);
	CHECK(fd < 0 && errno == ENOENT,
	      "%s: the testbed made again is refused: open /dev/vfio/vfio is ENOENT", who);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	const char *result = getenv("BT_RESULT"), *target = getenv("BT_TARGET");
	const char *tb = getenv("BARMAP_TESTBED");
	pid_t parent = getpid(), child, grandchild;
	int ready[2];
	char byte = 0;

	DIE_UNLESS(result && target && tb, "BT_RESULT, BT_TARGET and BARMAP_TESTBED are set");
	if (getenv("BT_PHASE")) {
		finds_no_device("a program started after the run");
		printf("DONE\n");
		return bt_exit();
	}
	bt_open(&d, argc, argv);
	spec_len = slurp(tb, "barmap-run.json", spec, sizeof(spec));
	token_len = slurp(tb, "barmap-token", token, sizeof(token));
	CHECK(token_len > 0, "the testbed holds the run's token, and the program can copy it");
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
		DIE_UNLESS(mkdir(tb, 0700) == 0, "make the testbed again");
		put(tb, "barmap-run.json", spec, spec_len);
		if (token_len > 0)
			put(tb, "barmap-token", token, token_len);
		link_report(tb, getpid(), target);
		fflush(stdout);
		grandchild = fork();
		DIE_UNLESS(grandchild >= 0, "fork");
		if (grandchild == 0) {
			pid_t mine = getppid();

			for (int i = 0; i < 2000 && getppid() == mine; i++)
				usleep(10000);
			setenv("BT_PHASE", "after", 1);
			execv("/proc/self/exe", argv);
			printf("FAIL exec of a fresh copy (errno %d)\nDONE\n", errno);
			exit(1);
		}
		link_report(tb, grandchild, target);
		finds_no_device("the child whose front end started during the run");
		fflush(stdout);
		exit(0); /* its front end's report goes nowhere */
	}
	DIE_UNLESS(read(ready[0], &byte, 1) == 1, "the child is ready");
	printf("testbed %s\n", tb);
	return bt_exit();
}
