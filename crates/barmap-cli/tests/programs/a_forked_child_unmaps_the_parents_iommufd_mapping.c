// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared --device edu`, the parent maps a buffer into
 * an IOAS of its iommufd and its bound edu DMAs into it; a child it forks
 * then unmaps that mapping through the iommufd it inherited, as any holder
 * of the kernel's iommufd can. From then on the device's DMA no longer
 * reaches the parent's buffer, the parent's own unmap of it is ENOENT,
 * and a new map at that IOVA goes in.
 */
#include "barmap_shared_iommufd.h"

#define IOVA 0x300000
#define SRC 0x310000

int main(void)
{
	struct bt_dev d;
	int io, status;
	uint32_t ioas = si_open(&d, &io);
	uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint8_t *src = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t done = 0;
	pid_t child;

	DIE_UNLESS(buf != MAP_FAILED && src != MAP_FAILED, "mmap");
	memset(src, 0x5a, 4096);
	DIE_UNLESS(si_map(io, ioas, buf, IOVA, 4096) == 0, "IOAS_MAP of the buffer");
	DIE_UNLESS(si_map(io, ioas, src, SRC, 4096) == 0, "IOAS_MAP of the source");
	edu_dma(&d, SRC, 4096, 0);
	edu_dma(&d, IOVA, 4096, 1);
	CHECK(all_bytes(buf, 4096, 0x5a), "before: the device's DMA reaches the parent's buffer");
	memset(buf, 0, 4096);

	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		uint64_t n = 0;

		if (si_unmap(io, ioas, IOVA, 4096, &n) != 0) {
			fprintf(stderr, "child: IOAS_UNMAP: errno %d\n", errno);
			_exit(1);
		}
		_exit(n == 4096 ? 0 : 2);
	}
	DIE_UNLESS(waitpid(child, &status, 0) == child, "wait for the child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the child unmaps the parent's mapping through the inherited iommufd (status %#x)",
	      status);

	edu_dma(&d, IOVA, 4096, 1);
	CHECK(all_bytes(buf, 4096, 0), "after: the device's DMA no longer reaches the buffer");
	errno = 0;
	CHECK(si_unmap(io, ioas, IOVA, 4096, &done) == -1 && errno == ENOENT,
	      "the parent's unmap of it is ENOENT (errno %d)", errno);
	CHECK(si_map(io, ioas, buf, IOVA, 4096) == 0, "a new map at that IOVA goes in (errno %d)",
	      errno);
	edu_dma(&d, IOVA, 4096, 1);
	CHECK(all_bytes(buf, 4096, 0x5a), "and the device reaches the buffer again");
	return bt_exit();
}
