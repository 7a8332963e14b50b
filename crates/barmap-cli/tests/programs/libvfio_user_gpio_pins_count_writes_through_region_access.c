// SPDX-License-Identifier: MIT
/*
 * libvfio-user's samples/gpio-pci-idio-16 (an ACCES PCI-IDIO-16 GPIO card)
 * under `barmap run --device vfio-user:SOCKET`: its IDs through config
 * space, and its register BAR (BAR2, 256 bytes, no file) through pread
 * and pwrite, each a REGION_READ or REGION_WRITE. The sample counts the
 * writes of each output bit and reports an input pin as set while its
 * count is a multiple of three: the reads change with the writes exactly
 * as the server counts them. BAR2 has no file, so mmap is EINVAL.
 */
#include "barmap_test.h"

static uint8_t in(struct bt_dev *d, uint64_t reg)
{
	uint8_t v = 0x5a;

	DIE_UNLESS(pread(d->device, &v, 1, d->bar[2].offset + reg) == 1, "pread of BAR2");
	return v;
}

static void out(struct bt_dev *d, uint64_t reg, uint8_t v)
{
	DIE_UNLESS(pwrite(d->device, &v, 1, d->bar[2].offset + reg) == 1, "pwrite of BAR2");
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint16_t id[2] = { 0, 0 };

	bt_open(&d, argc, argv);
	CHECK(pread(d.device, id, 4, d.config_off + PCI_VENDOR_ID) == 4 && id[0] == 0x494f &&
		      id[1] == 0x0dc8,
	      "config space: vendor %04x device %04x (ACCES PCI-IDIO-16)", id[0], id[1]);
	CHECK(d.bar[2].size == 0x100 && !(d.bar[2].flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR2: 256 bytes, not mappable (flags %#x)", d.bar[2].flags);
	errno = 0;
	CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, d.device, d.bar[2].offset) == MAP_FAILED &&
		      errno == EINVAL,
	      "BAR2: mmap is EINVAL");

	CHECK(in(&d, 1) == 0xff && in(&d, 5) == 0xff, "inputs: every pin set (counts 0)");
	out(&d, 0, 0x01);
	CHECK(in(&d, 1) == 0xfe, "one write of bit 0: pin 0 clear (%#x)", in(&d, 1));
	out(&d, 0, 0x01);
	out(&d, 0, 0x01);
	CHECK(in(&d, 1) == 0xff, "three writes of bit 0: pin 0 set again");
	out(&d, 4, 0x80);
	CHECK(in(&d, 5) == 0x7f && in(&d, 1) == 0xff,
	      "a write of bit 7 at 0x4 clears pin 15 only (%#x)", in(&d, 5));
	return bt_exit();
}
