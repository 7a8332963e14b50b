// SPDX-License-Identifier: MIT
/*
 * vfio_pci_core_match_token_uuid for a VF whose PF is bound to vfio-pci:
 * no token or another token is EACCES, through the group (before the
 * container is looked at) and through the cdev's BIND_IOMMUFD; the PF's
 * token opens it. Opening the PF with a token while no VF is open sets
 * the token. Run with --device igb,sriov=2.
 */
#include "bt_sriov.h"

int main(int argc, char **argv)
{
	const char *pf = bt_env("BARMAP_BDF", argc, argv, 1);
	char vf[16], path[64];
	int pc, pg, pfd, c, g, fd, iommufd, cdev;

	bt_one_vf(pf, vf);
	pfd = bt_open_with_token(pf, UUID_A, &pc, &pg);
	CHECK(pfd >= 0, "the PF opens with a token while no VF is open (which sets it)");

	/* The group path: the token is checked when the name is matched,
	 * before the group's container. */
	snprintf(path, sizeof(path), "/dev/vfio/%d", bt_group_of(vf));
	g = open(path, O_RDWR);
	DIE_UNLESS(g >= 0, "open the VF's group");
	CHECK(bt_get_device(g, vf, NULL) < 0 && errno == EACCES,
	      "no token is EACCES even before a container is set");
	CHECK(bt_get_device(g, vf, UUID_A) < 0 && errno == EINVAL,
	      "the right token without a container is the container's EINVAL");
	close(g);
	fd = bt_open_with_token(vf, NULL, &c, &g);
	CHECK(fd < 0 && errno == EACCES, "the VF without a token is EACCES");
	fd = bt_open_with_token(vf, UUID_B, &c, &g);
	CHECK(fd < 0 && errno == EACCES, "the VF with another token is EACCES");
	fd = bt_open_with_token(vf, UUID_A, &c, &g);
	CHECK(fd >= 0, "the VF with the PF's token opens");
	close(fd);
	close(g);
	close(c);

	/* The cdev path. */
	iommufd = open("/dev/iommu", O_RDWR);
	DIE_UNLESS(iommufd >= 0, "open /dev/iommu");
	cdev = bt_open_cdev(vf);
	DIE_UNLESS(cdev >= 0, "open the VF's cdev");
	CHECK(bt_bind(cdev, iommufd, NULL) < 0 && errno == EACCES, "bind without a token is EACCES");
	CHECK(bt_bind(cdev, iommufd, UUID_B_BYTES) < 0 && errno == EACCES,
	      "bind with another token is EACCES");
	CHECK(bt_bind(cdev, iommufd, (const uint8_t *)8) < 0 && errno == EFAULT,
	      "bind with an unreadable token is EFAULT");
	CHECK(bt_bind(cdev, -1, UUID_A_BYTES) < 0 && errno == EINVAL,
	      "a negative iommufd is EINVAL before the token");
	CHECK(bt_bind(cdev, iommufd, UUID_A_BYTES) == 0, "bind with the PF's token succeeds");
	close(cdev);
	close(iommufd);

	close(pfd);
	close(pg);
	close(pc);
	CHECK(bt_set_numvfs(pf, "0") == 0, "the VF is removed");
	return bt_exit();
}
