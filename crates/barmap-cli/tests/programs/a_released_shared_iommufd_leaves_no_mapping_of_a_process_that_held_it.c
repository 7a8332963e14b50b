// SPDX-License-Identifier: MIT
/*
 * Under `barmap run --shared --device edu`: the parent binds the edu's
 * cdev to an iommufd and an IOAS and sends the iommufd to a child, which
 * maps a page of its own into the IOAS and then closes the iommufd (it
 * goes on living). The parent then closes its device and iommufd fds: the
 * last holder is gone, and with it every mapping of the iommufd (the
 * kernel's release path). A fresh iommufd and IOAS for the device then
 * take a map at the IOVA the child had used, and the device's DMA reaches
 * the parent's page there.
 */
#include "barmap_shared_iommufd.h"

#define IOVA 0x500000
#define SRC 0x510000

int main(void)
{
	int sv[2], status;
	uint32_t word;
	pid_t child;

	DIE_UNLESS(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		uint32_t ioas;
		int io;

		close(sv[0]);
		io = si_recv_fd(sv[1], &ioas);
		if (io < 0 || buf == MAP_FAILED || si_map(io, ioas, buf, IOVA, 4096) != 0)
			_exit(10);
		close(io);
		word = 1;
		if (write(sv[1], &word, sizeof(word)) != sizeof(word))
			_exit(11);
		/* Alive until the parent is done. */
		_exit(read(sv[1], &word, sizeof(word)) == sizeof(word) ? 0 : 12);
	}
	close(sv[1]);

	struct bt_dev d;
	int io;
	uint32_t ioas = si_open(&d, &io);

	si_send_fd(sv[0], io, ioas);
	DIE_UNLESS(read(sv[0], &word, sizeof(word)) == sizeof(word), "the child mapped and closed");
	close(d.device);
	close(io);

	ioas = si_open(&d, &io);
	uint8_t *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint8_t *src = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(buf != MAP_FAILED && src != MAP_FAILED, "mmap");
	memset(src, 0x3c, 4096);
	CHECK(si_map(io, ioas, buf, IOVA, 4096) == 0,
	      "a fresh IOAS maps the IOVA the released iommufd's holder had mapped (errno %d)", errno);
	CHECK(si_map(io, ioas, src, SRC, 4096) == 0, "and a source page (errno %d)", errno);
	edu_dma(&d, SRC, 4096, 0);
	edu_dma(&d, IOVA, 4096, 1);
	CHECK(all_bytes(buf, 4096, 0x3c), "the device's DMA there reaches the parent's page");

	word = 1;
	DIE_UNLESS(write(sv[0], &word, sizeof(word)) == sizeof(word), "release the child");
	DIE_UNLESS(waitpid(child, &status, 0) == child, "wait for the child");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child ran (status %#x)", status);
	return bt_exit();
}
