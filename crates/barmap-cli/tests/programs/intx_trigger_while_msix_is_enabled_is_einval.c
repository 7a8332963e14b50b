// SPDX-License-Identifier: MIT
/* vfio-pci enables one of INTx, MSI and MSI-X at a time: with MSI-X
 * enabled, an INTx trigger (eventfd, loopback or none) is EINVAL
 * (vfio_pci_set_intx_trigger), and so is an MSI one; masking MSI-X, or
 * two action bits at once, has no handler (ENOTTY). With MSI-X disabled
 * again, INTx can be enabled. */
#include <sys/eventfd.h>

#include "barmap_test.h"

struct irq_one {
	struct vfio_irq_set hdr;
	int32_t fd;
};

static int set_irqs(int device, uint32_t flags, uint32_t index, uint32_t count, int32_t fd)
{
	struct irq_one s = {
		.hdr = { .argsz = sizeof(s), .flags = flags, .index = index, .start = 0, .count = count },
		.fd = fd,
	};

	errno = 0;
	return ioctl(device, VFIO_DEVICE_SET_IRQS, &s);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	const uint32_t TRIG = VFIO_IRQ_SET_ACTION_TRIGGER, EFD = VFIO_IRQ_SET_DATA_EVENTFD;
	const uint32_t NONE = VFIO_IRQ_SET_DATA_NONE;
	int efd = eventfd(0, EFD_NONBLOCK), rc;

	DIE_UNLESS(efd >= 0, "eventfd");
	bt_open(&d, argc, argv);
	DIE_UNLESS(set_irqs(d.device, EFD | TRIG, VFIO_PCI_MSIX_IRQ_INDEX, 1, efd) == 0,
		   "enable MSI-X vector 0");

	rc = set_irqs(d.device, EFD | TRIG, VFIO_PCI_INTX_IRQ_INDEX, 1, efd);
	CHECK(rc == -1 && errno == EINVAL, "INTx eventfd trigger with MSI-X enabled: EINVAL (rc %d)", rc);
	rc = set_irqs(d.device, NONE | TRIG, VFIO_PCI_INTX_IRQ_INDEX, 1, 0);
	CHECK(rc == -1 && errno == EINVAL, "INTx loopback with MSI-X enabled: EINVAL");
	rc = set_irqs(d.device, EFD | TRIG, VFIO_PCI_MSI_IRQ_INDEX, 1, efd);
	CHECK(rc == -1 && errno == EINVAL, "MSI trigger with MSI-X enabled: EINVAL");
	rc = set_irqs(d.device, NONE | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_MSIX_IRQ_INDEX, 1, 0);
	CHECK(rc == -1 && errno == ENOTTY, "MSI-X MASK: ENOTTY");
	rc = set_irqs(d.device, NONE | TRIG | VFIO_IRQ_SET_ACTION_MASK, VFIO_PCI_MSIX_IRQ_INDEX, 1, 0);
	CHECK(rc == -1 && errno == ENOTTY, "two action bits: ENOTTY");
	rc = set_irqs(d.device, NONE | VFIO_IRQ_SET_DATA_BOOL | TRIG, VFIO_PCI_MSIX_IRQ_INDEX, 1, 0);
	CHECK(rc == -1 && errno == EINVAL, "two data types: EINVAL");

	CHECK(set_irqs(d.device, NONE | TRIG, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0) == 0, "disable MSI-X");
	CHECK(set_irqs(d.device, EFD | TRIG, VFIO_PCI_INTX_IRQ_INDEX, 1, efd) == 0,
	      "then INTx can be enabled");
	rc = set_irqs(d.device, EFD | TRIG, VFIO_PCI_MSIX_IRQ_INDEX, 1, efd);
	CHECK(rc == -1 && errno == EINVAL, "and MSI-X with INTx enabled is EINVAL");
	return bt_exit();
}
