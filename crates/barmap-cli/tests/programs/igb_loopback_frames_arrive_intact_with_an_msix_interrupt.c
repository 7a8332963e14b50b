// SPDX-License-Identifier: MIT
/*
 * An Intel 82576 (igb) driven as a plain VFIO program: reset through
 * CTRL.RST, the MAC address from the NVM through EERD, the PHY put in
 * loopback over MDIC, one ring pair of advanced descriptors, and frames of
 * several sizes sent and received in loopback by DMA through the type1
 * container. Each frame arrives intact with its write-back (DD, EOP,
 * length), receive queue 0 raises MSI-X vector 0 through IVAR0, and the
 * statistics count the frames and clear on read. Runs unchanged on a real
 * 82576 behind vfio-pci (or QEMU's igb in a guest).
 */
#include <stdint.h>
#include <sys/eventfd.h>
#include <time.h>

#include "barmap_test.h"

#define E_CTRL 0x0000
#define STATUS 0x0008
#define EECD 0x0010
#define EERD 0x0014
#define MDIC 0x0020
#define IMC 0x00d8
#define RCTL 0x0100
#define TCTL 0x0400
#define GPIE 0x1514
#define EIMS 0x1524
#define EIAC 0x152c
#define EICR 0x1580
#define IVAR0 0x1700
#define GPRC 0x4074
#define GPTC 0x4080
#define RAL0 0x5400
#define RXQ 0xc000
#define TXQ 0xe000
#define BAL 0x00
#define BAH 0x04
#define LEN 0x08
#define SRRCTL 0x0c
#define HEAD 0x10
#define TAIL 0x18
#define DCTL 0x28

#define RING 16
#define FRAMES 5
#define IOVA 0x100000ull
#define DMA_LEN (1 << 20)

static volatile uint8_t *bar0;

static uint32_t rd(uint32_t off)
{
	return *(volatile uint32_t *)(bar0 + off);
}

static void wr(uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(bar0 + off) = v;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static uint32_t mdic(uint32_t op, uint32_t reg, uint16_t data)
{
	uint32_t v = 0;

	wr(MDIC, op | (1u << 21) | (reg << 16) | data);
	for (int i = 0; i < 1000 && !((v = rd(MDIC)) & (1u << 28)); i++)
		sleep_ms(1);
	return v;
}

static uint16_t nvm(uint32_t word)
{
	uint32_t v = 0;

	wr(EERD, (word << 2) | 1);
	for (int i = 0; i < 1000 && !((v = rd(EERD)) & 2); i++)
		sleep_ms(1);
	return v >> 16;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint8_t *mem;
	int efd;

	bt_open(&d, argc, argv);
	bar0 = bt_map(&d, 0, 0, d.bar[0].size);
	bt_set_command(&d, bt_command(&d) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);

	mem = mmap(NULL, DMA_LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(mem != MAP_FAILED, "mmap DMA memory");
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)mem,
		.iova = IOVA,
		.size = DMA_LEN,
	};
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_MAP_DMA, &map) == 0, "VFIO_IOMMU_MAP_DMA");

	efd = eventfd(0, EFD_NONBLOCK);
	DIE_UNLESS(efd >= 0, "eventfd");
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)buf;
	irq->argsz = sizeof(buf);
	irq->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	irq->index = VFIO_PCI_MSIX_IRQ_INDEX;
	irq->start = 0;
	irq->count = 1;
	memcpy(irq->data, &efd, sizeof(int));
	DIE_UNLESS(ioctl(d.device, VFIO_DEVICE_SET_IRQS, irq) == 0, "MSI-X vector 0");

	/* Reset; the NVM is read again (EECD.AUTO_RD). */
	wr(E_CTRL, rd(E_CTRL) | (1u << 26));
	sleep_ms(2);
	CHECK(rd(EECD) & (1u << 9), "EECD.AUTO_RD after CTRL.RST");
	CHECK(!(rd(E_CTRL) & (1u << 26)), "CTRL.RST clears itself");
	wr(IMC, ~0u);

	uint16_t sum = 0;
	for (uint32_t w = 0; w < 0x40; w++)
		sum += nvm(w);
	CHECK(sum == 0xbaba, "the NVM words 0..0x3f sum to 0xBABA (%#x)", sum);
	uint32_t ral = rd(RAL0);
	CHECK(ral == ((uint32_t)nvm(1) << 16 | nvm(0)), "RAL0 holds the NVM's MAC address");

	uint32_t id1 = mdic(2u << 26, 2, 0), id2 = mdic(2u << 26, 3, 0);
	CHECK((id1 & 0xffff) != 0 && (id1 & 0xffff) != 0xffff && !(id1 & (1u << 30)),
	      "PHY ID %04x:%04x over MDIC", id1 & 0xffff, id2 & 0xffff);
	/* PHY loopback at 1000 full duplex, then force the MAC's link. */
	CHECK(!(mdic(1u << 26, 0, 0x4000 | 0x0040 | 0x0100) & (1u << 30)),
	      "BMCR loopback written");
	wr(E_CTRL, (rd(E_CTRL) & ~0x300u) | 0x200 | 0x1 | (1u << 6) | (1u << 11) | (1u << 12));
	sleep_ms(10);
	CHECK(rd(STATUS) & 2, "STATUS.LU with the PHY in loopback");

	/* Rings: TX at mem + 0, RX at mem + 0x1000, buffers after. */
	uint8_t *txr = mem, *rxr = mem + 0x1000;
	wr(TXQ + BAL, (uint32_t)IOVA);
	wr(TXQ + BAH, 0);
	wr(TXQ + LEN, RING * 16);
	wr(TXQ + HEAD, 0);
	wr(TXQ + TAIL, 0);
	wr(TXQ + DCTL, 1u << 25);
	wr(RXQ + BAL, (uint32_t)(IOVA + 0x1000));
	wr(RXQ + BAH, 0);
	wr(RXQ + LEN, RING * 16);
	wr(RXQ + HEAD, 0);
	wr(RXQ + TAIL, 0);
	wr(RXQ + SRRCTL, 1u << 25); /* advanced one buffer, RCTL's 2 KiB */
	wr(RXQ + DCTL, 1u << 25);
	wr(RCTL, (1u << 1) | (1u << 15) | (1u << 26)); /* EN, BAM, SECRC */
	wr(TCTL, (1u << 1) | (1u << 3));               /* EN, PSP */
	wr(GPIE, (1u << 4) | (1u << 30));              /* MSI-X mode, EIAME */
	wr(EIAC, 1);
	wr(IVAR0, 0x80); /* RX queue 0 -> vector 0 */
	(void)rd(GPRC);
	(void)rd(GPTC);

	static const int sizes[FRAMES] = { 60, 64, 333, 1000, 1514 };
	for (int i = 0; i < FRAMES; i++) {
		uint8_t *f = mem + 0x10000 + i * 0x800;
		uint64_t *t = (uint64_t *)(txr + i * 16), *r = (uint64_t *)(rxr + i * 16);

		memset(f, 0xff, 6); /* broadcast */
		memcpy(f + 6, "\x02\x00\x00\x00\x00\x01", 6);
		f[12] = 0x88;
		f[13] = 0xb5;
		for (int b = 14; b < sizes[i]; b++)
			f[b] = (uint8_t)(b * 7 + i);
		t[0] = IOVA + 0x10000 + i * 0x800;
		t[1] = (uint64_t)((uint32_t)sizes[i] | (3u << 20) | (1u << 24) | (1u << 25) |
				  (1u << 27) | (1u << 29)) |
		       ((uint64_t)((uint32_t)sizes[i] << 14) << 32);
		r[0] = IOVA + 0x40000 + i * 0x800;
		r[1] = 0;
	}
	wr(EIMS, 1);
	wr(RXQ + TAIL, FRAMES);
	wr(TXQ + TAIL, FRAMES);

	volatile uint32_t *last = (volatile uint32_t *)(rxr + (FRAMES - 1) * 16 + 8);
	for (int i = 0; i < 2000 && !(*last & 1); i++)
		sleep_ms(1);
	for (int i = 0; i < FRAMES; i++) {
		uint32_t st = *(volatile uint32_t *)(rxr + i * 16 + 8);
		uint16_t len = *(volatile uint16_t *)(rxr + i * 16 + 12);
		int same = memcmp(mem + 0x40000 + i * 0x800, mem + 0x10000 + i * 0x800,
				  sizes[i]) == 0;

		CHECK((st & 3) == 3 && len == sizes[i] && same,
		      "frame %d of %d bytes arrived intact (status %#x, length %u)", i, sizes[i],
		      st, len);
		CHECK(*(volatile uint32_t *)(txr + i * 16 + 12) & 1, "transmit DD %d", i);
	}
	uint64_t n = 0;
	int got = 0;
	for (int i = 0; i < 1000 && !got; i++) {
		got = read(efd, &n, 8) == 8;
		if (!got)
			sleep_ms(1);
	}
	CHECK(got && n >= 1, "MSI-X vector 0 fired for receive queue 0");
	CHECK(rd(EICR) == 0, "EIAC cleared the cause when the message went");
	CHECK(rd(RXQ + HEAD) == FRAMES, "the receive head advanced past %d frames", FRAMES);
	uint32_t gprc = rd(GPRC), gptc = rd(GPTC);
	CHECK(gprc == FRAMES && gptc == FRAMES, "GPRC %u and GPTC %u count the frames", gprc,
	      gptc);
	CHECK(rd(GPRC) == 0, "GPRC clears on read");
	return bt_exit();
}
