// SPDX-License-Identifier: MIT
/*
 * read(2), write(2), readv(2) and writev(2) on a VFIO device fd are
 * served at the file position, which they advance (vfio-pci's read and
 * write use *ppos, and region 0 is BAR0 at offset 0); the position is the
 * open file's, shared by a dup. lseek(2) is ESPIPE (no llseek method).
 * preadv/pwritev reach the region at their offset. Nothing reaches a
 * placeholder file.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/uio.h>

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint32_t w[2] = { 0, 0 }, first = 0, second = 0, a = 0, b = 0;
	uint64_t word = 0x1122334455667788ULL, back = 0;
	struct iovec iov[2];
	int copy;

	bt_open(&d, argc, argv);
	bt_memory(&d, 1);
	DIE_UNLESS(pread(d.device, w, 8, d.bar[0].offset) == 8, "pread BAR0");

	CHECK(read(d.device, &first, 4) == 4 && first == w[0],
	      "read() at position 0 reads BAR0's word 0 (0x%08x)", first);
	copy = dup(d.device);
	CHECK(read(copy, &second, 4) == 4 && second == w[1],
	      "a dup shares the position: the next read() reads word 1 (0x%08x)", second);
	errno = 0;
	CHECK(lseek(d.device, 0, SEEK_SET) == -1 && errno == ESPIPE, "lseek() is ESPIPE");
	errno = 0;
	CHECK(lseek(d.container, 0, SEEK_SET) == -1 && errno == ESPIPE,
	      "lseek() on the container is ESPIPE");
	errno = 0;
	CHECK(read(d.container, &a, 4) == -1 && errno == EINVAL,
	      "read() on the container is EINVAL (no read method)");
	errno = 0;
	CHECK(write(d.group, &a, 4) == -1 && errno == EINVAL,
	      "write() on the group is EINVAL (no write method)");

	iov[0] = (struct iovec){ &a, 4 };
	iov[1] = (struct iovec){ &b, 4 };
	DIE_UNLESS(pread(d.device, w, 8, d.bar[0].offset + 8) == 8, "pread BAR0 at 8");
	CHECK(readv(d.device, iov, 2) == 8 && a == w[0] && b == w[1],
	      "readv() continues at position 8 with both buffers");

	iov[0] = (struct iovec){ &word, 8 };
	CHECK(pwritev(d.device, iov, 1, d.bar[2].offset + 4096) == 8,
	      "pwritev() writes BAR2 at its offset");
	CHECK(pread(d.device, &back, 8, d.bar[2].offset + 4096) == 8 && back == word,
	      "pread() reads back what pwritev() wrote (0x%llx)", (unsigned long long)back);
	back = 0;
	iov[0] = (struct iovec){ &back, 8 };
	CHECK(preadv(d.device, iov, 1, d.bar[2].offset + 4096) == 8 && back == word,
	      "preadv() reads BAR2 at its offset");
	close(copy);
	return bt_exit();
}
