// SPDX-License-Identifier: MIT
/*
 * libvfio-user's samples/server reached through the vfio cdev and iommufd
 * under `barmap run --device vfio-user:SOCKET`: bind, an IOAS with one
 * mapping made before the device is attached (sent to the server when it
 * attaches) and one after (sent at once), both shared memory. The sample's
 * timer then makes the server write 'A'..'D' into the first mapping with
 * DMA_WRITE messages (barmap serves them through the IOAS) and into the
 * second through the file barmap passed, and raise INTx on the program's
 * eventfd. Unmapping goes to the server too.
 */
#include "barmap_test.h"
#include "barmap_iommufd.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>

#define PAGE 4096

static int map(int io, uint32_t ioas, volatile void *va, uint64_t iova)
{
	struct bt_iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = BT_IOAS_MAP_FIXED_IOVA | BT_IOAS_MAP_READABLE | BT_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)va, .length = PAGE, .iova = iova,
	};

	return ioctl(io, BT_IOMMU_IOAS_MAP, &m);
}

static int written(const volatile uint8_t *p)
{
	for (int i = 0; i < PAGE; i++)
		if (p[i] != 'A' + i / 1024)
			return 0;
	return 1;
}

int main(void)
{
	struct bt_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct bt_iommu_ioas_alloc a = { .size = sizeof(a) };
	struct vfio_region_info cfg, bar0;
	uint16_t id[2] = { 0, 0 };
	int dev = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
	int io = open("/dev/iommu", O_RDWR | O_CLOEXEC);

	DIE_UNLESS(dev >= 0 && io >= 0, "open the cdev and /dev/iommu");
	bind.iommufd = io;
	DIE_UNLESS(ioctl(dev, BT_VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND_IOMMUFD");
	DIE_UNLESS(ioctl(io, BT_IOMMU_IOAS_ALLOC, &a) == 0, "IOMMU_IOAS_ALLOC");
	bt_region(dev, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	bt_region(dev, VFIO_PCI_BAR0_REGION_INDEX, &bar0);
	CHECK(pread(dev, id, 4, cfg.offset) == 4 && id[0] == 0xdead && id[1] == 0xbeef,
	      "config space through the cdev: %04x:%04x", id[0], id[1]);

	volatile uint8_t *before = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	volatile uint8_t *after = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(before != MAP_FAILED && after != MAP_FAILED, "buffers");
	CHECK(map(io, a.out_ioas_id, before, 0x100000) == 0, "IOAS_MAP before the attach");
	struct bt_vfio_device_attach_iommufd_pt at = { .argsz = 12, .pt_id = a.out_ioas_id };
	CHECK(ioctl(dev, BT_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "attach to the IOAS");
	CHECK(map(io, a.out_ioas_id, after, 0x200000) == 0, "IOAS_MAP after the attach");

	int efd = eventfd(0, EFD_CLOEXEC);
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
	s->argsz = sizeof(buf);
	s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	s->index = VFIO_PCI_INTX_IRQ_INDEX;
	s->start = 0;
	s->count = 1;
	memcpy(s->data, &efd, sizeof(int));
	CHECK(ioctl(dev, VFIO_DEVICE_SET_IRQS, s) == 0, "SET_IRQS: INTx eventfd");

	time_t t = time(NULL) + 2;
	CHECK(pwrite(dev, &t, 8, bar0.offset) == 8, "BAR0: arm the sample's timer");
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n = 0;
	CHECK(poll(&p, 1, 10000) == 1 && read(efd, &n, 8) == 8,
	      "INTx: the server signalled the program's eventfd");
	int ok_before = 0, ok_after = 0;
	for (int i = 0; i < 500 && !(ok_before && ok_after); i++) {
		ok_before = written(before);
		ok_after = written(after);
		usleep(10000);
	}
	CHECK(ok_before, "DMA: the mapping made before the attach, written with messages");
	CHECK(ok_after, "DMA: the mapping made after the attach, written through its file");
	usleep(200000);

	struct bt_iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = a.out_ioas_id,
					 .iova = 0, .length = UINT64_MAX };
	CHECK(ioctl(io, BT_IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 2 * PAGE,
	      "IOAS_UNMAP of everything: %llu bytes", (unsigned long long)u.length);
	return bt_exit();
}
