// SPDX-License-Identifier: MIT
/*
 * A VFIO fd closed other than through close() (close_range(2) by libc or
 * by raw syscall, fclose(fdopen(fd))) frees its number like any fd. The
 * next file that gets the number is that file: its pwrite lands in the
 * file and its pread returns the file's bytes, never the device's.
 */
#define _GNU_SOURCE
#include "barmap_test.h"

#include <sys/stat.h>
#include <sys/syscall.h>

static void reused_number_is_the_file(struct bt_dev *d, int closed, const char *how)
{
	uint32_t mark = 0xabcd1234, back = 0, before = 0, after = 0;
	int fd = memfd_create("plain-file", 0);

	DIE_UNLESS(pread(d->device, &before, 4, d->bar[2].offset) == 4, "pread BAR2");
	CHECK(fd == closed, "%s: the next file gets the number %d (got %d)", how, closed, fd);
	struct stat st;

	if (before == mark)
		mark = ~mark;
	/* At BAR2's region offset: on a stale entry this would be the device's. */
	CHECK(pwrite(fd, &mark, 4, d->bar[2].offset) == 4 &&
		      pread(fd, &back, 4, d->bar[2].offset) == 4 && back == mark,
	      "%s: pwrite and pread on the reused number reach the file", how);
	CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == d->bar[2].offset + 4,
	      "%s: the file grew to hold the word (size 0x%llx)", how,
	      (unsigned long long)st.st_size);
	CHECK(pread(d->device, &after, 4, d->bar[2].offset) == 4 && after == before,
	      "%s: the device's BAR2 did not change", how);
	close(fd);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	int copy;
	FILE *f;

	bt_open(&d, argc, argv);
	bt_memory(&d, 1);

	copy = dup(d.device);
	DIE_UNLESS(close_range(copy, copy, 0) == 0, "close_range");
	reused_number_is_the_file(&d, copy, "close_range()");

	copy = dup(d.device);
	DIE_UNLESS(syscall(SYS_close_range, copy, copy, 0) == 0, "raw close_range");
	reused_number_is_the_file(&d, copy, "a raw close_range syscall");

	copy = dup(d.device);
	f = fdopen(copy, "r");
	DIE_UNLESS(f != NULL, "fdopen");
	fclose(f);
	reused_number_is_the_file(&d, copy, "fclose(fdopen())");

	copy = dup(d.device);
	closefrom(copy);
	reused_number_is_the_file(&d, copy, "closefrom()");

	CHECK(bt_command(&d) & PCI_COMMAND_MEMORY, "the device fd itself still reaches the device");
	return bt_exit();
}
