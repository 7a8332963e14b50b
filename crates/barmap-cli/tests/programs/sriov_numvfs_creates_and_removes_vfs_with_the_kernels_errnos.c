// SPDX-License-Identifier: MIT
/*
 * sriov_numvfs as drivers/pci/iov.c's sriov_numvfs_store and vfio-pci's
 * sriov_configure answer it: not a number EINVAL, more than TotalVFs
 * ERANGE, another non-zero count while VFs exist EBUSY, the same count
 * nothing; a count creates VFs as PCI functions of their own (sysfs with
 * physfn, the PF's virtfnN, vfio-pci, an IOMMU group and a cdev of its
 * own), 0 removes them. The PF's SR-IOV capability says the same.
 * Run with --device igb,sriov=2.
 */
#include <sys/stat.h>

#include "bt_sriov.h"

/* The PF's extended capability SR-IOV (ID 0x10): its offset, or 0. */
static uint32_t find_sriov(struct bt_dev *d)
{
	uint32_t at = 0x100, h;

	for (int i = 0; i < 64 && at >= 0x100; i++) {
		DIE_UNLESS(pread(d->device, &h, 4, d->config_off + at) == 4, "read ext cap");
		if ((h & 0xffff) == 0x10)
			return at;
		at = h >> 20;
	}
	return 0;
}

/* sriov_vf_device: hex without 0x, as iov.c prints it ("%x\n"). */
static long sriov_vf_device(const char *pf)
{
	char path[128], buf[16] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/sriov_vf_device", pf);
	fd = open(path, O_RDONLY);
	DIE_UNLESS(fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0, "read sriov_vf_device");
	close(fd);
	return strtol(buf, NULL, 16);
}

static uint16_t cfg16(struct bt_dev *d, uint32_t off)
{
	uint16_t v = 0;

	DIE_UNLESS(pread(d->device, &v, 2, d->config_off + off) == 2, "read config");
	return v;
}

int main(int argc, char **argv)
{
	const char *pf = bt_env("BARMAP_BDF", argc, argv, 1);
	char vf[16], back[16], drv[32], path[128];
	struct bt_dev d;
	struct stat st;
	uint32_t cap;
	int c, g, fd;

	bt_open(&d, argc, argv);
	cap = find_sriov(&d);
	CHECK(cap >= 0x100, "the PF has the SR-IOV extended capability (at 0x%x)", cap);
	CHECK(cfg16(&d, cap + 0x0e) == 2 && bt_sysfs_int(pf, "sriov_totalvfs") == 2,
	      "TotalVFs is 2 in config space and sysfs");
	CHECK(cfg16(&d, cap + 0x1a) == 0x10ca && sriov_vf_device(pf) == 0x10ca,
	      "the VF device ID is the 82576's VF (0x10ca)");
	CHECK(cfg16(&d, cap + 0x10) == 0 && bt_sysfs_int(pf, "sriov_numvfs") == 0,
	      "NumVFs starts at 0");

	CHECK(bt_set_numvfs(pf, "3") == ERANGE, "more VFs than TotalVFs is ERANGE");
	CHECK(bt_set_numvfs(pf, "one") == EINVAL, "not a number is EINVAL");
	CHECK(bt_set_numvfs(pf, "-1") == EINVAL, "a negative count is EINVAL");
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 0, "refused writes changed nothing");
	CHECK(bt_link_base(pf, "virtfn0", vf, sizeof(vf)) < 0 && errno == ENOENT,
	      "no VF before sriov_numvfs is written");

	CHECK(bt_set_numvfs(pf, "1\n") == 0, "sriov_numvfs 1 creates a VF");
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 1 && cfg16(&d, cap + 0x10) == 1 &&
		      (cfg16(&d, cap + 0x08) & 1),
	      "NumVFs is 1 and VF Enable is set");
	CHECK(bt_link_base(pf, "virtfn0", vf, sizeof(vf)) == 0, "virtfn0 names the VF (%s)", vf);
	{
		long off = bt_sysfs_int(pf, "sriov_offset");
		unsigned b, dv, fn, pb, pd, pfn;

		sscanf(vf, "0000:%x:%x.%x", &b, &dv, &fn);
		sscanf(pf, "0000:%x:%x.%x", &pb, &pd, &pfn);
		CHECK(((b << 8) | (dv << 3) | fn) == ((pb << 8) | (pd << 3) | pfn) + off &&
			      off == cfg16(&d, cap + 0x14),
		      "the VF's routing ID is the PF's plus First VF Offset");
	}
	CHECK(bt_link_base(vf, "physfn", back, sizeof(back)) == 0 && !strcmp(back, pf),
	      "the VF's physfn names the PF");
	CHECK(bt_link_base(vf, "driver", drv, sizeof(drv)) == 0 && !strcmp(drv, "vfio-pci"),
	      "the VF is bound to vfio-pci");
	CHECK(bt_sysfs_int(vf, "device") == 0x10ca, "the VF's device is 0x10ca");
	CHECK(bt_group_of(vf) != bt_group_of(pf), "the VF has an IOMMU group of its own (%d)",
	      bt_group_of(vf));
	snprintf(path, sizeof(path), "/dev/vfio/%d", bt_group_of(vf));
	CHECK(stat(path, &st) == 0 && S_ISCHR(st.st_mode), "its group node exists");
	fd = bt_open_cdev(vf);
	CHECK(fd >= 0, "its vfio cdev opens");
	close(fd);

	CHECK(bt_set_numvfs(pf, "2") == EBUSY, "another count while VFs exist is EBUSY");
	CHECK(bt_set_numvfs(pf, "1") == 0, "the same count is accepted and changes nothing");
	CHECK(bt_sysfs_int(pf, "sriov_numvfs") == 1 &&
		      bt_link_base(pf, "virtfn1", back, sizeof(back)) < 0,
	      "still one VF");

	fd = bt_open_with_token(vf, UUID_A, &c, &g);
	CHECK(fd < 0 && errno == EACCES, "the VF needs the PF's token, here an unset one");

	CHECK(bt_set_numvfs(pf, "0") == 0, "sriov_numvfs 0 removes the VFs");
	CHECK(bt_link_base(pf, "virtfn0", back, sizeof(back)) < 0, "virtfn0 is gone");
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", vf);
	CHECK(stat(path, &st) < 0 && errno == ENOENT, "the VF's sysfs directory is gone");
	CHECK(open("/dev/vfio/devices/vfio1", O_RDWR) < 0 && errno == ENOENT,
	      "the VF's cdev is gone");
	CHECK(cfg16(&d, cap + 0x10) == 0 && !(cfg16(&d, cap + 0x08) & 1),
	      "NumVFs is 0 and VF Enable clear again");
	CHECK(bt_set_numvfs(pf, "2") == 0 && bt_sysfs_int(pf, "sriov_numvfs") == 2,
	      "then 2 VFs may be created");
	CHECK(bt_set_numvfs(pf, "0") == 0, "and removed");
	return bt_exit();
}
