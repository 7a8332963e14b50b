// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared --device edu`, the parent binds the edu's
 * cdev to an iommufd and attaches it to an IOAS, then forks a child that
 * execs this program again with a copy of the iommufd that has no
 * O_CLOEXEC. The exec'd program maps two pages of its own memory into the
 * IOAS; the parent's device copies the first into the second by DMA, and
 * the exec'd program sees it.
 */
#include "barmap_shared_iommufd.h"

#define IOVA 0x400000

static int execd(char **argv)
{
	int io = atoi(argv[2]), in = atoi(argv[4]), out = atoi(argv[5]);
	uint32_t ioas = (uint32_t)atoi(argv[3]), word = 1;
	uint8_t *buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED)
		return 10;
	memset(buf, 0xa7, 4096);
	memset(buf + 4096, 0, 4096);
	if (si_map(io, ioas, buf, IOVA, 8192) != 0) {
		fprintf(stderr, "exec'd: IOAS_MAP on the inherited iommufd: errno %d\n", errno);
		return 11;
	}
	if (write(out, &word, sizeof(word)) != sizeof(word) || read(in, &word, sizeof(word)) != sizeof(word))
		return 12;
	if (!all_bytes(buf + 4096, 4096, 0xa7)) {
		fprintf(stderr, "exec'd: the device's DMA did not reach its page\n");
		return 13;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	int io, to_child[2], to_parent[2], status;
	uint32_t word;
	pid_t child;

	if (argc == 6 && strcmp(argv[1], "execd") == 0)
		return execd(argv);
	uint32_t ioas = si_open(&d, &io);
	int inherited = dup(io); /* no O_CLOEXEC */

	DIE_UNLESS(inherited >= 0 && pipe(to_child) == 0 && pipe(to_parent) == 0, "dup, pipes");
	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		char a[4][16];
		char *args[] = { argv[0], "execd", a[0], a[1], a[2], a[3], NULL };

		snprintf(a[0], 16, "%d", inherited);
		snprintf(a[1], 16, "%u", ioas);
		snprintf(a[2], 16, "%d", to_child[0]);
		snprintf(a[3], 16, "%d", to_parent[1]);
		execv("/proc/self/exe", args);
		_exit(127);
	}
	close(inherited);
	close(to_child[0]);
	close(to_parent[1]);
	DIE_UNLESS(read(to_parent[0], &word, sizeof(word)) == sizeof(word), "the exec'd program mapped");
	edu_dma(&d, IOVA, 4096, 0);
	edu_dma(&d, IOVA + 4096, 4096, 1);
	DIE_UNLESS(write(to_child[1], &word, sizeof(word)) == sizeof(word), "tell it");
	DIE_UNLESS(waitpid(child, &status, 0) == child, "wait for it");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the exec'd program mapped its memory into the inherited IOAS and the parent's "
	      "device DMAed into it (status %#x)", status);
	return bt_exit();
}
