// SPDX-License-Identifier: MIT
/*
 * The VFIO nodes are character devices, by path and through their fds,
 * with the major:minor that sysfs names: QEMU's iommufd path opens
 * /dev/vfio/devices/vfioN and requires S_ISCHR and the st_rdev of
 * /sys/bus/pci/devices/<bdf>/vfio-dev/vfioN/dev (util/chardev_open.c).
 * Every stat entry point agrees: stat, lstat, fstat, fstatat (by path and
 * with AT_EMPTY_PATH), statx, and their 64 names.
 */
#define _GNU_SOURCE
#include "barmap_test.h"
#include "barmap_iommufd.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* The vfioN entry of the device's vfio-dev directory and its numbers. */
static void sysfs_cdev(const char *bdf, char *name, size_t len, unsigned *ma, unsigned *mi)
{
	char path[600], text[64] = { 0 };
	struct dirent *e;
	DIR *dir;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	dir = opendir(path);
	DIE_UNLESS(dir != NULL, "opendir vfio-dev");
	while ((e = readdir(dir)) && strncmp(e->d_name, "vfio", 4))
		;
	DIE_UNLESS(e != NULL, "a vfioN entry");
	snprintf(name, len, "%s", e->d_name);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev/%s/dev", bdf, name);
	closedir(dir);
	f = fopen(path, "r");
	DIE_UNLESS(f != NULL, "open vfio-dev/vfioN/dev");
	DIE_UNLESS(fgets(text, sizeof(text), f) != NULL, "read vfio-dev/vfioN/dev");
	fclose(f);
	DIE_UNLESS(sscanf(text, "%u:%u", ma, mi) == 2, "parse M:m");
}

static int is_chr(const struct stat *st, dev_t rdev, mode_t perm)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == rdev && (st->st_mode & 07777) == perm &&
	       st->st_size == 0;
}

int main(int argc, char **argv)
{
	const char *bdf = bt_env("BARMAP_BDF", argc, argv, 1);
	const char *grp = bt_env("BARMAP_GROUP", argc, argv, 2);
	char name[256], cdev[300], gpath[64];
	unsigned ma, mi;
	struct stat st, st2;
	struct stat64 st64;
	struct statx sx;
	dev_t rdev;
	int fd, io, c, g;
	struct bt_dev d;

	sysfs_cdev(bdf, name, sizeof(name), &ma, &mi);
	rdev = makedev(ma, mi);
	snprintf(cdev, sizeof(cdev), "/dev/vfio/devices/%s", name);

	CHECK(stat(cdev, &st) == 0 && is_chr(&st, rdev, 0600),
	      "stat %s: a character device %u:%u, mode 0600 (mode %o rdev %u:%u)", cdev, ma, mi,
	      st.st_mode, major(st.st_rdev), minor(st.st_rdev));
	CHECK(lstat(cdev, &st2) == 0 && is_chr(&st2, rdev, 0600), "lstat %s", cdev);
	CHECK(stat64(cdev, &st64) == 0 && S_ISCHR(st64.st_mode) && st64.st_rdev == rdev,
	      "stat64 %s", cdev);
	CHECK(fstatat(AT_FDCWD, cdev, &st2, 0) == 0 && is_chr(&st2, rdev, 0600),
	      "fstatat(AT_FDCWD, %s)", cdev);
	CHECK(statx(AT_FDCWD, cdev, 0, STATX_BASIC_STATS, &sx) == 0 && S_ISCHR(sx.stx_mode) &&
		      sx.stx_rdev_major == ma && sx.stx_rdev_minor == mi,
	      "statx %s", cdev);

	/* The fd QEMU checks: as open_cdev_internal() does. */
	fd = open(cdev, O_RDWR | O_CLOEXEC);
	DIE_UNLESS(fd >= 0, "open the cdev");
	CHECK(fstat(fd, &st2) == 0 && is_chr(&st2, rdev, 0600), "fstat of the cdev fd: %u:%u",
	      major(st2.st_rdev), minor(st2.st_rdev));
	CHECK(st2.st_ino == st.st_ino && st2.st_dev == st.st_dev,
	      "the fd and the path are the same inode");
	CHECK(fstat64(fd, &st64) == 0 && S_ISCHR(st64.st_mode) && st64.st_rdev == rdev,
	      "fstat64 of the cdev fd");
	CHECK(fstatat(fd, "", &st2, AT_EMPTY_PATH) == 0 && is_chr(&st2, rdev, 0600),
	      "fstatat(fd, \"\", AT_EMPTY_PATH)");
	CHECK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) == 0 &&
		      S_ISCHR(sx.stx_mode) && sx.stx_rdev_major == ma && sx.stx_rdev_minor == mi,
	      "statx(fd, \"\", AT_EMPTY_PATH)");
	close(fd);

	/* The container, iommufd and group nodes and their fds. */
	CHECK(stat("/dev/vfio/vfio", &st) == 0 && is_chr(&st, makedev(10, 196), 0666),
	      "/dev/vfio/vfio is the misc device 10:196, mode 0666");
	c = open("/dev/vfio/vfio", O_RDWR);
	CHECK(c >= 0 && fstat(c, &st2) == 0 && is_chr(&st2, makedev(10, 196), 0666),
	      "fstat of a container fd");
	CHECK(stat("/dev/iommu", &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10 &&
		      (st.st_mode & 07777) == 0660,
	      "/dev/iommu is a misc character device, mode 0660");
	io = open("/dev/iommu", O_RDWR);
	CHECK(io >= 0 && fstat(io, &st2) == 0 && S_ISCHR(st2.st_mode) &&
		      st2.st_rdev == st.st_rdev,
	      "fstat of an iommufd fd: the same numbers");
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%s", grp);
	CHECK(stat(gpath, &st) == 0 && S_ISCHR(st.st_mode) && (st.st_mode & 07777) == 0600,
	      "stat %s: a character device", gpath);
	g = open(gpath, O_RDWR);
	CHECK(g >= 0 && fstat(g, &st2) == 0 && S_ISCHR(st2.st_mode) && st2.st_rdev == st.st_rdev,
	      "fstat of the group fd: the same numbers");
	close(g);
	close(io);
	close(c);

	/* What is not a node stays what it is. */
	errno = 0;
	CHECK(stat("/dev/vfio/4242", &st) == -1 && errno == ENOENT, "no such group: ENOENT");
	CHECK(stat("/dev/vfio/devices", &st) == 0 && S_ISDIR(st.st_mode),
	      "/dev/vfio/devices is a directory");
	bt_open(&d, argc, argv);
	CHECK(fstat(d.device, &st) == 0 && !S_ISCHR(st.st_mode),
	      "a device fd from GET_DEVICE_FD is no device node (an anonymous inode)");
	fd = memfd_create("plain", 0);
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode),
	      "a memfd of the program is a regular file");
	return bt_exit();
}
