// SPDX-License-Identifier: MIT
/*
 * libvfio-user's samples/gpio-pci-idio-16 (an ACCES PCI-IDIO-16 GPIO card)
 * under `barmap run --device vfio-user:SOCKET`: its IDs through config
 * space, and its register BAR (BAR2, 256 bytes, no file) through pread
 * and pwrite, each a REGION_READ or REGION_WRITE. The sample counts the
 * writes of each output bit and reports an input pin as set while its
 * count is a multiple of three: the reads change with the writes exactly
 * as the server counts them. BAR2 has no file: mapped, its page is
 * trapped, and each 1-byte load and store through it is one
 * REGION_READ or REGION_WRITE, counted the same way.
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
	CHECK(d.bar[2].size == 0x100 && (d.bar[2].flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR2: 256 bytes, mappable (flags %#x)", d.bar[2].flags);

	CHECK(in(&d, 1) == 0xff && in(&d, 5) == 0xff, "inputs: every pin set (counts 0)");
	out(&d, 0, 0x01);
	CHECK(in(&d, 1) == 0xfe, "one write of bit 0: pin 0 clear (%#x)", in(&d, 1));
	out(&d, 0, 0x01);
	out(&d, 0, 0x01);
	CHECK(in(&d, 1) == 0xff, "three writes of bit 0: pin 0 set again");
	out(&d, 4, 0x80);
	CHECK(in(&d, 5) == 0x7f && in(&d, 1) == 0xff,
	      "a write of bit 7 at 0x4 clears pin 15 only (%#x)", in(&d, 5));
	volatile uint8_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				   d.bar[2].offset);
	DIE_UNLESS(m != MAP_FAILED, "mmap of BAR2");
	CHECK(m[1] == 0xff, "through the mapping: inputs 0-7 all set");
	m[0] = 0x02;
	CHECK(m[1] == 0xfd && in(&d, 1) == 0xfd,
	      "a store of bit 1 through the mapping clears pin 1, seen by a load and by pread");
	m[4] = 0x80;
	m[4] = 0x80;
	CHECK(m[5] == 0xff, "two more writes of bit 7 at 0x4: pin 15 set again");
	munmap((void *)m, 4096);
	return bt_exit();
}
