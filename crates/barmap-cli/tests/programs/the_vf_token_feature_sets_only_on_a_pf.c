// SPDX-License-Identifier: MIT
/*
 * VFIO_DEVICE_FEATURE_PCI_VF_TOKEN as vfio_pci_core_feature_token and
 * vfio_ioctl_device_feature answer it: on a PF, SET (16 bytes) sets the
 * token the VF then needs, PROBE of SET succeeds, GET is EINVAL, fewer
 * than 16 bytes EINVAL, unreadable data EFAULT, GET with SET EINVAL,
 * unknown flags EINVAL; on a VF or a function without SR-IOV it is
 * ENOTTY. A token given to a function that is neither PF nor VF is
 * EINVAL, and vfio_pci_core_match's name rules hold. Run with
 * --device igb,sriov=2 --device default.
 */
#include "bt_sriov.h"

int main(int argc, char **argv)
{
	const char *pf = bt_env("BARMAP_BDF", argc, argv, 1);
	const char *other = "0000:ba:01.0";
	char vf[16], name[160];
	int pc, pg, pfd, c, g, fd, iommufd, cdev;

	bt_one_vf(pf, vf);
	pfd = bt_open_with_token(pf, NULL, &pc, &pg);
	DIE_UNLESS(pfd >= 0, "open the PF");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET, NULL, 0) == 0,
	      "PROBE of SET succeeds");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_GET, NULL, 16) < 0 && errno == EINVAL,
	      "GET is EINVAL (the token is never read back)");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET, NULL, 0) < 0 &&
		      errno == EINVAL,
	      "PROBE of GET is EINVAL");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET, UUID_B_BYTES, 16) < 0 &&
		      errno == EINVAL,
	      "GET with SET is EINVAL");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_SET | (1u << 20), UUID_B_BYTES, 16) < 0 &&
		      errno == EINVAL,
	      "an unknown flag is EINVAL");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_SET, UUID_B_BYTES, 8) < 0 && errno == EINVAL,
	      "8 bytes of token are EINVAL");
	{
		struct vfio_device_feature f = { .argsz = sizeof(f) - 1 };

		CHECK(ioctl(pfd, VFIO_DEVICE_FEATURE, &f) < 0 && errno == EINVAL,
		      "argsz below the header is EINVAL");
		CHECK(ioctl(pfd, VFIO_DEVICE_FEATURE, (void *)8) < 0 && errno == EFAULT,
		      "an unreadable header is EFAULT");
	}
	fd = bt_open_with_token(vf, NULL, &c, &g);
	CHECK(fd < 0 && errno == EACCES, "refused SETs left the VF closed to no token");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_SET, UUID_B_BYTES, 16) == 0, "SET of B succeeds");
	fd = bt_open_with_token(vf, UUID_B, &c, &g);
	CHECK(fd >= 0, "the VF opens with the token SET on the PF");
	CHECK(bt_feature_token(fd, VFIO_DEVICE_FEATURE_SET, UUID_A_BYTES, 16) < 0 && errno == ENOTTY,
	      "the feature on the VF is ENOTTY");
	CHECK(bt_feature_token(pfd, VFIO_DEVICE_FEATURE_SET, UUID_A_BYTES, 16) == 0,
	      "SET works while a VF is open");
	close(fd);
	close(g);
	close(c);
	fd = bt_open_with_token(vf, UUID_A, &c, &g);
	CHECK(fd >= 0, "and the VF then needs the new token");
	close(fd);
	close(g);
	close(c);

	/* A function without SR-IOV. */
	fd = bt_open_with_token(other, UUID_A, &c, &g);
	CHECK(fd < 0 && errno == EINVAL, "a token for a function without SR-IOV is EINVAL");
	bt_group_ready(other, &c, &g);
	snprintf(name, sizeof(name), "%s vf_token=52ac9bff", other);
	CHECK(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name) < 0 && errno == EINVAL,
	      "a short token is EINVAL");
	snprintf(name, sizeof(name), "%s colour=red", other);
	CHECK(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name) < 0 && errno == EINVAL,
	      "an unknown option is EINVAL");
	snprintf(name, sizeof(name), "%sx", other);
	CHECK(ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name) < 0 && errno == ENODEV,
	      "an address followed by anything but a space is ENODEV");
	snprintf(name, sizeof(name), "%s   ", other);
	fd = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, name);
	CHECK(fd >= 0, "trailing spaces are allowed");
	CHECK(bt_feature_token(fd, VFIO_DEVICE_FEATURE_SET, UUID_A_BYTES, 16) < 0 && errno == ENOTTY,
	      "the feature on a function without SR-IOV is ENOTTY");
	close(fd);
	close(g);
	close(c);
	iommufd = open("/dev/iommu", O_RDWR);
	cdev = bt_open_cdev(other);
	CHECK(bt_bind(cdev, iommufd, UUID_A_BYTES) < 0 && errno == EINVAL,
	      "binding a function without SR-IOV with a token is EINVAL");
	CHECK(bt_bind(cdev, iommufd, NULL) == 0, "and without one it binds");
	close(cdev);
	close(iommufd);

	close(pfd);
	close(pg);
	close(pc);
	CHECK(bt_set_numvfs(pf, "0") == 0, "the VF is removed");
	return bt_exit();
}
