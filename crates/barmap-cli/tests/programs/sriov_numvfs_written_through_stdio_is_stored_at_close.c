// SPDX-License-Identifier: MIT
/*
 * sriov_numvfs written the ways shells and scripts write sysfs: through
 * stdio (fopen and fprintf, whose write happens inside libc) and through
 * open with O_TRUNC. The count is stored when the stream is closed (a
 * refused one leaves it as it was), and a read of a read-write open gives
 * the current count. Run with --device igb,sriov=2.
 */
#include "bt_sriov.h"

int main(int argc, char **argv)
{
	const char *pf = bt_env("BARMAP_BDF", argc, argv, 1);
	char path[128], vf[16], buf[16] = { 0 };
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/sriov_numvfs", pf);
	f = fopen(path, "w");
	DIE_UNLESS(f != NULL, "fopen sriov_numvfs for writing");
	CHECK(fprintf(f, "2\n") == 2, "fprintf of 2");
	CHECK(fclose(f) == 0, "fclose");
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 2 && bt_link_base(pf, "virtfn1", vf, sizeof(vf)) == 0,
	      "the count written through stdio is stored at the close: two VFs");

	f = fopen(path, "w");
	DIE_UNLESS(f != NULL, "fopen again");
	fprintf(f, "5\n");
	fclose(f);
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 2, "a refused count (ERANGE) changed nothing");

	fd = open(path, O_RDWR | O_TRUNC);
	DIE_UNLESS(fd >= 0, "open O_RDWR|O_TRUNC");
	CHECK(read(fd, buf, sizeof(buf) - 1) == 2 && !strcmp(buf, "2\n"),
	      "O_TRUNC truncated nothing: a read gives the count (%s)", buf);
	CHECK(write(fd, "1", 1) < 0 && errno == EBUSY, "write of another count is EBUSY at once");
	CHECK(write(fd, "0", 1) == 1, "write of 0 removes the VFs");
	close(fd);
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 0 && bt_link_base(pf, "virtfn0", vf, sizeof(vf)) < 0,
	      "no VF left");
	return bt_exit();
}
