// SPDX-License-Identifier: MIT
/*
 * An ioat held by `barmap serve`, reached by this plain VFIO program under
 * `barmap run --device vfio-user:SOCKET`:
 *
 * - config space: the IDs (8086:2021), the MSI-X capability's one vector;
 * - BAR0's registers through pread and through a (trapped) mapping:
 *   CHANCNT, VER, CHANSTS;
 * - MSI-X vector 0 with an eventfd (SET_IRQS), raised by the device when
 *   a copy descriptor with its interrupt bit completes;
 * - DMA: the descriptor and completion write-back in shared memory (the
 *   server reaches it through the memfd passed with DMA_MAP), the copy's
 *   source in shared memory and its destination in private memory (the
 *   server writes it with DMA_WRITE messages);
 * - VFIO_DEVICE_RESET halts the channel (CHANSTS 3).
 */
#include "barmap_test.h"

#include <poll.h>
#include <sys/eventfd.h>

#define PAGE 4096
#define IOVA_SHARED 0x100000
#define IOVA_PRIVATE 0x200000

struct desc {
	uint32_t size, ctl;
	uint64_t src, dst, next, rsv[4];
};

static uint64_t rd(struct bt_dev *d, uint64_t reg, int width)
{
	uint64_t v = 0;

	DIE_UNLESS(pread(d->device, &v, width, d->bar[0].offset + reg) == width, "ioat read");
	return v;
}

static void wr(struct bt_dev *d, uint64_t reg, uint64_t v, int width)
{
	DIE_UNLESS(pwrite(d->device, &v, width, d->bar[0].offset + reg) == width, "ioat write");
}

static void map(struct bt_dev *d, void *va, uint64_t iova, uint64_t len)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)va, .iova = iova, .size = len,
	};

	DIE_UNLESS(ioctl(d->container, VFIO_IOMMU_MAP_DMA, &m) == 0, "MAP_DMA");
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint16_t id[2] = { 0, 0 };

	bt_open(&d, argc, argv);
	CHECK(pread(d.device, id, 4, d.config_off + PCI_VENDOR_ID) == 4 && id[0] == 0x8086 &&
		      id[1] == 0x2021,
	      "config space: %04x:%04x (ioat's 8086:2021)", id[0], id[1]);
	bt_set_command(&d, bt_command(&d) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

	CHECK(rd(&d, 0x00, 1) == 1 && rd(&d, 0x08, 1) == 0x33,
	      "BAR0 pread: CHANCNT 1, VER 0x33");
	volatile uint8_t *regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				      d.bar[0].offset);
	CHECK(regs != MAP_FAILED, "BAR0: mmap (trapped)");
	if (regs != MAP_FAILED) {
		CHECK(regs[0] == 1 && regs[8] == 0x33,
		      "BAR0 mapped: loads of CHANCNT and VER reach the server");
		*(volatile uint32_t *)(regs + 0xac) = 0x5;
		CHECK(rd(&d, 0xac, 4) == 0x5, "BAR0 mapped: a store to CHANERRMASK reaches the server");
		*(volatile uint32_t *)(regs + 0xac) = 0;
		munmap((void *)regs, PAGE);
	}

	/* MSI-X vector 0. */
	struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	CHECK(ioctl(d.device, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0 && ii.count == 1,
	      "GET_IRQ_INFO: one MSI-X vector (%u)", ii.count);
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(bt_set_irq_eventfd(&d, VFIO_PCI_MSIX_IRQ_INDEX, efd) == 0,
	      "SET_IRQS: MSI-X vector 0 eventfd");

	/* A copy from shared to private memory. */
	uint8_t *sh = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint8_t *pv = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(sh != MAP_FAILED && pv != MAP_FAILED, "DMA buffers");
	map(&d, sh, IOVA_SHARED, 2 * PAGE);
	map(&d, pv, IOVA_PRIVATE, PAGE);
	for (int i = 0; i < PAGE; i++)
		sh[PAGE + i] = (uint8_t)(i * 7 + 1);
	struct desc *ds = (struct desc *)sh;
	volatile uint64_t *comp = (volatile uint64_t *)(sh + 512);
	memset(ds, 0, sizeof(*ds));
	ds->size = PAGE;
	ds->ctl = 0x1 | 0x8; /* interrupt and completion write when done */
	ds->src = IOVA_SHARED + PAGE;
	ds->dst = IOVA_PRIVATE;
	ds->next = 0;
	wr(&d, 0x03, 0x01, 1);             /* INTRCTRL: master enable */
	wr(&d, 0x80, 0x01, 2);             /* CHANCTRL: arm the interrupt */
	wr(&d, 0x98, IOVA_SHARED + 512, 8); /* CHANCMP */
	wr(&d, 0x90, IOVA_SHARED, 8);       /* CHAINADDR */
	wr(&d, 0x86, 1, 2);                 /* DMACOUNT: go */
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n = 0;
	CHECK(poll(&p, 1, 5000) == 1 && read(efd, &n, 8) == 8 && n >= 1,
	      "MSI-X: the completed descriptor signalled the program's eventfd");
	CHECK(!memcmp(pv, sh + PAGE, PAGE),
	      "DMA: the copy read shared memory and wrote private memory (DMA_WRITE messages)");
	CHECK((*comp & 0x7) == 1 && (*comp & ~0x3full) == IOVA_SHARED,
	      "DMA: the completion write-back in shared memory says done at the descriptor "
	      "(%#llx)", (unsigned long long)*comp);

	CHECK(ioctl(d.device, VFIO_DEVICE_RESET) == 0, "VFIO_DEVICE_RESET");
	CHECK((rd(&d, 0x88, 8) & 0x7) == 3, "after reset the channel is halted (CHANSTS %#llx)",
	      (unsigned long long)rd(&d, 0x88, 8));
	return bt_exit();
}
