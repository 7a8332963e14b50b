// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared --device edu`, the parent binds the edu's
 * cdev to an iommufd, attaches it to an IOAS and sends the iommufd and the
 * IOAS id to a child it forked before opening any of them (so the child
 * has them only from SCM_RIGHTS). The child maps two pages of its own
 * memory into that IOAS; the parent's device copies the first (the
 * child's pattern) into its buffer and back into the second by DMA, as
 * the kernel's iommufd lets any holder map for a device bound elsewhere.
 * The child then unmaps its mapping, and the parent's own map at that
 * IOVA goes in (no mapping is left there).
 */
#include "barmap_shared_iommufd.h"

#define IOVA 0x200000

int main(void)
{
	int sv[2], status;
	uint32_t word;
	pid_t child;

	DIE_UNLESS(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		uint8_t *buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		uint32_t ioas;
		uint64_t done = 0;
		int io, ok = 1;
		struct bt_iommu_ioas_alloc probe = { .size = sizeof(probe) };

		close(sv[0]);
		io = si_recv_fd(sv[1], &ioas);
		if (io < 0 || buf == MAP_FAILED)
			_exit(10);
		memset(buf, 0x5a, 4096);
		memset(buf + 4096, 0, 4096);
		if (si_map(io, ioas, buf, IOVA, 8192) != 0) {
			fprintf(stderr, "child: IOAS_MAP on the received iommufd: errno %d\n", errno);
			_exit(11);
		}
		word = 1;
		if (write(sv[1], &word, sizeof(word)) != sizeof(word) ||
		    read(sv[1], &word, sizeof(word)) != sizeof(word))
			_exit(12);
		if (!all_bytes(buf + 4096, 4096, 0x5a)) {
			fprintf(stderr, "child: the device's DMA did not reach the child's page\n");
			ok = 0;
		}
		if (si_unmap(io, ioas, IOVA, 8192, &done) != 0 || done != 8192) {
			fprintf(stderr, "child: IOAS_UNMAP: errno %d, %llu bytes\n", errno,
				(unsigned long long)done);
			ok = 0;
		}
		/* A new IOAS from the received iommufd: the next id. */
		if (ioctl(io, BT_IOMMU_IOAS_ALLOC, &probe) != 0 || probe.out_ioas_id == ioas) {
			fprintf(stderr, "child: IOAS_ALLOC: errno %d, id %u\n", errno, probe.out_ioas_id);
			ok = 0;
		}
		word = ok;
		_exit(write(sv[1], &word, sizeof(word)) == sizeof(word) && ok ? 0 : 13);
	}
	close(sv[1]);

	struct bt_dev d;
	int io;
	uint32_t ioas = si_open(&d, &io);

	si_send_fd(sv[0], io, ioas);
	DIE_UNLESS(read(sv[0], &word, sizeof(word)) == sizeof(word), "the child mapped");
	edu_dma(&d, IOVA, 4096, 0);
	edu_dma(&d, IOVA + 4096, 4096, 1);
	word = 1;
	DIE_UNLESS(write(sv[0], &word, sizeof(word)) == sizeof(word), "tell the child");
	CHECK(read(sv[0], &word, sizeof(word)) == sizeof(word) && word == 1,
	      "the child saw the device's DMA into its page, and unmapped");
	DIE_UNLESS(waitpid(child, &status, 0) == child, "wait for the child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the child's calls on the received iommufd and IOAS worked (status %#x)", status);

	uint8_t *mine = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(mine != MAP_FAILED, "mmap");
	CHECK(si_map(io, ioas, mine, IOVA, 4096) == 0,
	      "the parent maps the IOVA the child unmapped (errno %d)", errno);
	return bt_exit();
}
