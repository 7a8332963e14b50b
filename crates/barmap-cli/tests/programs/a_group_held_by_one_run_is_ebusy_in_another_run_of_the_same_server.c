// SPDX-License-Identifier: MIT
/*
 * Two `barmap run --server PATH` invocations joining one server are two
 * program trees that reach the same device, as two programs on one host
 * reach one /dev/vfio/N: the group opens once across both.
 *
 *   hold DIR:  opens the group, attaches a container, gets the device fd,
 *              says so (DIR/held) and holds them until DIR/done exists;
 *   probe DIR: once DIR/held exists, an open of the group is EBUSY, and
 *              binding the device's cdev to an iommufd is EBUSY
 *              (vfio_device_block_group); then writes DIR/done;
 *   again DIR: the holder's run is over: the group opens, a second open
 *              of it is EBUSY, and the device fd from it holds it.
 */
#include "barmap_test.h"
#include "barmap_iommufd.h"

static int wait_for(const char *path)
{
	for (int i = 0; i < 3000; i++) {
		if (access(path, F_OK) == 0)
			return 1;
		usleep(10000);
	}
	return 0;
}

static void touch(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

	DIE_UNLESS(fd >= 0, "create the sync file");
	close(fd);
}

int main(int argc, char **argv)
{
	const char *grp = getenv("BARMAP_GROUP");
	char group[64], held[512], done[512];

	DIE_UNLESS(argc == 3 && grp != NULL, "usage: hold|probe|again DIR, BARMAP_GROUP");
	snprintf(group, sizeof(group), "/dev/vfio/%s", grp);
	snprintf(held, sizeof(held), "%s/held", argv[2]);
	snprintf(done, sizeof(done), "%s/done", argv[2]);

	if (strcmp(argv[1], "hold") == 0) {
		struct bt_dev d;

		bt_open(&d, 1, argv);
		touch(held);
		CHECK(wait_for(done), "the other run probed the group");
	} else if (strcmp(argv[1], "probe") == 0) {
		struct bt_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
		int fd, dev, io;

		DIE_UNLESS(wait_for(held), "the other run holds the group");
		errno = 0;
		fd = open(group, O_RDWR | O_CLOEXEC);
		CHECK(fd == -1 && errno == EBUSY,
		      "an open of the group another run holds is EBUSY (fd %d, errno %d)", fd, errno);
		dev = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
		io = open("/dev/iommu", O_RDWR | O_CLOEXEC);
		CHECK(dev >= 0 && io >= 0, "the device's cdev and /dev/iommu open");
		bind.iommufd = io;
		errno = 0;
		CHECK(ioctl(dev, BT_VFIO_DEVICE_BIND_IOMMUFD, &bind) == -1 && errno == EBUSY,
		      "binding the cdev of a device whose group another run holds is EBUSY (errno %d)",
		      errno);
		close(dev);
		close(io);
		touch(done);
	} else {
		int fd = open(group, O_RDWR | O_CLOEXEC);

		CHECK(fd >= 0, "with the holding run gone, the group opens (errno %d)", errno);
		errno = 0;
		CHECK(open(group, O_RDWR | O_CLOEXEC) == -1 && errno == EBUSY,
		      "and a second open of it is EBUSY");
	}
	return bt_exit();
}
