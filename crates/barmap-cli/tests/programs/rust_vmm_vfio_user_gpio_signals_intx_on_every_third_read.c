// SPDX-License-Identifier: MIT
/*
 * rust-vmm's vfio_user crate's `gpio` example server under `barmap run
 * --device vfio-user:SOCKET`: config space through pread, and INTx through
 * the program's eventfd. The example counts the reads of BAR2 at 0 and
 * on every third returns 1 and signals INTx: the program's eventfd, handed
 * to the server with SET_IRQS, is signalled once after three reads, by
 * pread and by loads through a (trapped) mapping alike. Closing the last
 * device fd disables the interrupt at the server, as vfio-pci's release
 * does: after a reopen, three more reads signal nothing.
 */
#include "barmap_test.h"

#include <poll.h>
#include <sys/eventfd.h>

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint32_t ids = 0;

	bt_open(&d, argc, argv);
	CHECK(pread(d.device, &ids, 4, d.config_off + PCI_VENDOR_ID) == 4 &&
		      (ids & 0xffff) == 0x494f && (ids >> 16) == 0x0dc8,
	      "config space: ids %08x", ids);
	CHECK(d.bar[2].size == 256 && (d.bar[2].flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR2: 256 bytes, mappable");

	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)buf;
	s->argsz = sizeof(buf);
	s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	s->index = VFIO_PCI_INTX_IRQ_INDEX;
	s->start = 0;
	s->count = 1;
	memcpy(s->data, &efd, sizeof(int));
	CHECK(ioctl(d.device, VFIO_DEVICE_SET_IRQS, s) == 0, "SET_IRQS: INTx eventfd");

	uint8_t v[3] = { 9, 9, 9 };
	uint64_t n = 0;
	for (int i = 0; i < 2; i++)
		DIE_UNLESS(pread(d.device, &v[i], 1, d.bar[2].offset) == 1, "pread of BAR2");
	CHECK(v[0] == 0 && v[1] == 0 && read(efd, &n, 8) == -1 && errno == EAGAIN,
	      "two reads: 0 and 0, no interrupt");
	DIE_UNLESS(pread(d.device, &v[2], 1, d.bar[2].offset) == 1, "pread of BAR2");
	struct pollfd p = { .fd = efd, .events = POLLIN };
	CHECK(v[2] == 1 && poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8 && n == 1,
	      "the third read: 1, and INTx signalled the program's eventfd once");
	volatile uint8_t *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, d.device, d.bar[2].offset);
	DIE_UNLESS(m != MAP_FAILED, "mmap of BAR2");
	v[0] = m[0];
	v[1] = m[0];
	CHECK(v[0] == 0 && v[1] == 0 && read(efd, &n, 8) == -1 && errno == EAGAIN,
	      "two loads through the mapping: 0 and 0, no interrupt");
	v[2] = m[0];
	CHECK(v[2] == 1 && poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8 && n == 1,
	      "the third load: 1, and INTx signalled once");
	munmap((void *)m, 4096);

	close(d.device);
	d.device = ioctl(d.group, VFIO_GROUP_GET_DEVICE_FD, bt_env("BARMAP_BDF", argc, argv, 1));
	DIE_UNLESS(d.device >= 0, "reopen the device");
	for (int i = 0; i < 3; i++)
		DIE_UNLESS(pread(d.device, &v[i], 1, d.bar[2].offset) == 1, "pread of BAR2");
	CHECK(v[2] == 1 && read(efd, &n, 8) == -1 && errno == EAGAIN,
	      "after the last close and a reopen: the third read is 1, and no interrupt");
	return bt_exit();
}
