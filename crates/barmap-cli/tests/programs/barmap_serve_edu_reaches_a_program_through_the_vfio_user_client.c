// SPDX-License-Identifier: MIT
/*
 * An edu held by `barmap serve`, reached by this plain VFIO program under
 * `barmap run --device vfio-user:SOCKET` (barmap's client against
 * barmap's server):
 *
 * - config space through pread: edu's IDs (1234:11e8), COMMAND written
 *   and read back;
 * - BAR0 (registers, no file) through pread/pwrite: the identification
 *   register, the liveness register's complement, the factorial; mapped,
 *   its page is trapped and each load and store is one region access;
 * - MSI through an eventfd: a write to the raise register signals it;
 * - DMA both ways: shared memory (its memfd passed with DMA_MAP, the
 *   server reads and writes it directly) and private memory (no file: the
 *   server's DMA_READ/DMA_WRITE messages, served by barmap's client);
 * - VFIO_DEVICE_RESET returns the registers to their defaults (0).
 */
#include "edu_dma.h"

#include <poll.h>
#include <sys/eventfd.h>

#define PAGE 4096

static uint32_t rd32(struct bt_dev *d, uint64_t reg)
{
	uint32_t v = 0;

	DIE_UNLESS(pread(d->device, &v, 4, d->bar[0].offset + reg) == 4, "edu register read");
	return v;
}

static void wr32(struct bt_dev *d, uint64_t reg, uint32_t v)
{
	DIE_UNLESS(pwrite(d->device, &v, 4, d->bar[0].offset + reg) == 4, "edu register write");
}

/* One round trip through the edu buffer: `out` to the edu, then back
 * into `in`, both at their IOVAs. */
static int round_trip(struct bt_dev *d, uint8_t *out, uint64_t out_iova, uint8_t *in,
		      uint64_t in_iova, uint8_t byte)
{
	memset(out, byte, PAGE);
	memset(in, 0, PAGE);
	edu_dma(d, out_iova, PAGE, 0);
	edu_dma(d, in_iova, PAGE, 1);
	return all_bytes(in, PAGE, byte);
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint16_t id[2] = { 0, 0 };

	bt_open(&d, argc, argv);

	CHECK(pread(d.device, id, 4, d.config_off + PCI_VENDOR_ID) == 4 && id[0] == 0x1234 &&
		      id[1] == 0x11e8,
	      "config space: vendor %04x device %04x (edu's 1234:11e8)", id[0], id[1]);
	edu_bus_master(&d);
	CHECK((bt_command(&d) & (PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY)) ==
		      (PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY),
	      "config space: COMMAND's memory and bus-master bits written and read back");

	CHECK(d.bar[0].size == 1 << 20, "BAR0: 1 MiB (%llu)", (unsigned long long)d.bar[0].size);
	CHECK(rd32(&d, 0x00) == 0x010000ed, "BAR0 pread: identification 0x010000ed");
	wr32(&d, 0x04, 0x12345678);
	CHECK(rd32(&d, 0x04) == ~0x12345678u, "BAR0 pwrite/pread: liveness is the complement");
	wr32(&d, 0x08, 5);
	CHECK(rd32(&d, 0x08) == 120, "BAR0: factorial of 5 is 120");

	volatile uint32_t *regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				       d.bar[0].offset);
	CHECK(regs != MAP_FAILED, "BAR0: mmap (trapped: no file for a register BAR)");
	if (regs != MAP_FAILED) {
		CHECK(regs[0] == 0x010000ed, "BAR0 mapped: a load of the identification register");
		regs[1] = 0xa5a5a5a5;
		CHECK(regs[1] == 0x5a5a5a5a && rd32(&d, 0x04) == 0x5a5a5a5a,
		      "BAR0 mapped: a store reaches the server (liveness read back both ways)");
		munmap((void *)regs, PAGE);
	}

	/* MSI. */
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct vfio_irq_info msi = { .argsz = sizeof(msi), .index = VFIO_PCI_MSI_IRQ_INDEX };
	CHECK(ioctl(d.device, VFIO_DEVICE_GET_IRQ_INFO, &msi) == 0 && msi.count == 1 &&
		      (msi.flags & VFIO_IRQ_INFO_EVENTFD),
	      "GET_IRQ_INFO: one MSI vector with eventfd");
	CHECK(bt_set_irq_eventfd(&d, VFIO_PCI_MSI_IRQ_INDEX, efd) == 0, "SET_IRQS: MSI eventfd");
	wr32(&d, 0x60, 0x1);
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n = 0;
	CHECK(poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8 && n == 1,
	      "MSI: the raise register signalled the program's eventfd (%llu)",
	      (unsigned long long)n);
	wr32(&d, 0x64, 0x1);
	CHECK(rd32(&d, 0x24) == 0, "interrupt acknowledged");

	/* DMA through shared memory (a file) and private memory (messages). */
	uint8_t *sh_out = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			       -1, 0);
	uint8_t *pv_out = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
	DIE_UNLESS(sh_out != MAP_FAILED && pv_out != MAP_FAILED, "DMA buffers");
	edu_map(&d, sh_out, 0x100000, 2 * PAGE);
	edu_map(&d, pv_out, 0x200000, 2 * PAGE);
	CHECK(round_trip(&d, sh_out, 0x100000, sh_out + PAGE, 0x101000, 0x5a),
	      "DMA: shared memory to the edu and back (the server reaches it through its memfd)");
	CHECK(round_trip(&d, pv_out, 0x200000, pv_out + PAGE, 0x201000, 0xc3),
	      "DMA: private memory to the edu and back (DMA_READ/DMA_WRITE messages)");
	CHECK(round_trip(&d, sh_out, 0x100000, pv_out + PAGE, 0x201000, 0x3c),
	      "DMA: shared memory in, private memory out");

	/* Reset. */
	wr32(&d, 0x08, 4);
	CHECK(ioctl(d.device, VFIO_DEVICE_RESET) == 0, "VFIO_DEVICE_RESET");
	uint32_t fact = rd32(&d, 0x08), live = rd32(&d, 0x04);
	CHECK(fact == 0 && live == 0,
	      "after reset the factorial and liveness registers are the device's defaults "
	      "(%#x, %#x)", fact, live);
	return bt_exit();
}
