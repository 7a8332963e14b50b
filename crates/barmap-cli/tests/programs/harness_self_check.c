// SPDX-License-Identifier: MIT
/* The harness itself: opens the device, reads its vendor ID through
 * config space, and fails one check when BT_FAIL is set. */
#include "barmap_test.h"

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint16_t vendor = 0;

	bt_open(&d, argc, argv);
	CHECK(pread(d.device, &vendor, 2, d.config_off + PCI_VENDOR_ID) == 2 && vendor != 0xffff,
	      "config space reads a vendor ID (0x%04x)", vendor);
	CHECK(getenv("BT_FAIL") == NULL, "a check that is told to fail");
	return bt_exit();
}
