// SPDX-License-Identifier: MIT
/*
 * libvfio-user's samples/server, a device served over vfio-user, reached
 * by this plain VFIO program under `barmap run --device vfio-user:SOCKET`:
 *
 * - config space through pread: the sample's IDs (dead:beef, cafe:babe);
 * - BAR0 (8 bytes, no file: every access is a REGION_READ/WRITE): an
 *   access the server refuses gets the server's errno (EINVAL); mapped,
 *   its page is trapped, and an 8-byte store and load through it are a
 *   REGION_WRITE and a REGION_READ (the sample answers the time since
 *   the value written);
 * - BAR1 (16 KiB, a file with two mappable pages): pwrite then pread, the
 *   sparse-mmap capability, mmap of a mappable page shows what pwrite
 *   wrote and a store through it reaches the server's file; a mapping of
 *   the whole BAR has the file in pages 0 and 2 and traps pages 1 and 3,
 *   where a load returns what pread returns;
 * - INTx with an eventfd (SET_IRQS), and DMA: two buffers mapped with
 *   VFIO_IOMMU_MAP_DMA, one shared (passed to the server as its file, the
 *   server writes it directly) and one private (no file: the server writes
 *   it with DMA_WRITE messages that barmap serves). Writing a time to BAR0
 *   arms the sample's timer; when it fires the server raises INTx and
 *   writes 'A', 'B', 'C', 'D' (1 KiB each) into both buffers, then reads
 *   them back;
 * - DMA unmap, device reset, and the REQ interrupt's eventfd.
 */
#include "barmap_test.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>

#define IOVA_PRIVATE 0x100000
#define IOVA_SHARED 0x200000
#define PAGE 4096

static int dma_map(struct bt_dev *d, void *buf, uint64_t iova)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)buf,
		.iova = iova,
		.size = PAGE,
	};
	return ioctl(d->container, VFIO_IOMMU_MAP_DMA, &m);
}

static int dma_unmap(struct bt_dev *d, uint64_t iova)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u), .iova = iova, .size = PAGE,
	};
	return ioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &u);
}

/* Whether the 4 KiB at `p` hold 'A', 'B', 'C', 'D', 1 KiB each. */
static int written(const volatile uint8_t *p)
{
	for (int i = 0; i < PAGE; i++)
		if (p[i] != 'A' + i / 1024)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint16_t id[2] = { 0, 0 }, sub[2] = { 0, 0 };

	bt_open(&d, argc, argv);

	CHECK(pread(d.device, id, 4, d.config_off + PCI_VENDOR_ID) == 4 &&
		      id[0] == 0xdead && id[1] == 0xbeef,
	      "config space: vendor %04x device %04x (the sample's dead:beef)", id[0], id[1]);
	CHECK(pread(d.device, sub, 4, d.config_off + PCI_SUBSYSTEM_VENDOR_ID) == 4 &&
		      sub[0] == 0xcafe && sub[1] == 0xbabe,
	      "config space: subsystem %04x:%04x", sub[0], sub[1]);

	struct vfio_region_info vga = { .argsz = sizeof(vga), .index = VFIO_PCI_VGA_REGION_INDEX };
	errno = 0;
	CHECK(ioctl(d.device, VFIO_DEVICE_GET_REGION_INFO, &vga) == -1 && errno == EINVAL,
	      "GET_REGION_INFO of the VGA region, which the device has not: EINVAL");

	/* BAR0: 8 bytes of registers, no file. */
	struct vfio_region_info *b0 = &d.bar[VFIO_PCI_BAR0_REGION_INDEX];
	CHECK(b0->size == 8 && (b0->flags & VFIO_REGION_INFO_FLAG_MMAP) &&
		      (b0->flags & VFIO_REGION_INFO_FLAG_READ),
	      "BAR0: 8 bytes, readable, mappable (size %llu flags %#x)",
	      (unsigned long long)b0->size, b0->flags);
	uint32_t four;
	errno = 0;
	CHECK(pread(d.device, &four, 4, b0->offset) == -1 && errno == EINVAL,
	      "BAR0: a 4-byte read the server refuses is the server's EINVAL");
	volatile int64_t *r0 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				    b0->offset);
	CHECK(r0 != MAP_FAILED, "BAR0: mmap (trapped: the server offers no file)");
	if (r0 != MAP_FAILED) {
		int64_t later = (int64_t)time(NULL) + 1000, since;
		*r0 = later;
		since = *r0;
		CHECK(since <= -998 && since >= -1000,
		      "BAR0: a store and a load through the trapped page reach the server (%lld)",
		      (long long)since);
		munmap((void *)r0, PAGE);
	}
	errno = 0;
	CHECK(pread(d.device, &four, 4, b0->offset + 8) == -1 && errno == EINVAL,
	      "BAR0: a read past its end is EINVAL");

	/* BAR1: 16 KiB with a file, pages 0 and 2 mappable. */
	struct vfio_region_info *b1 = &d.bar[VFIO_PCI_BAR1_REGION_INDEX];
	CHECK(b1->size == 0x4000 && (b1->flags & VFIO_REGION_INFO_FLAG_MMAP) &&
		      (b1->flags & VFIO_REGION_INFO_FLAG_CAPS),
	      "BAR1: 16 KiB, mappable in parts (flags %#x)", b1->flags);
	char ibuf[sizeof(struct vfio_region_info) + 256];
	struct vfio_region_info *ri = (struct vfio_region_info *)ibuf;
	memset(ibuf, 0, sizeof(ibuf));
	ri->argsz = sizeof(ibuf);
	ri->index = VFIO_PCI_BAR1_REGION_INDEX;
	DIE_UNLESS(ioctl(d.device, VFIO_DEVICE_GET_REGION_INFO, ri) == 0, "region info with caps");
	struct vfio_region_info_cap_sparse_mmap *sp =
		(struct vfio_region_info_cap_sparse_mmap *)(ibuf + ri->cap_offset);
	CHECK(ri->cap_offset && sp->header.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP &&
		      sp->nr_areas == 2 && sp->areas[0].offset == 0 &&
		      sp->areas[0].size == PAGE && sp->areas[1].offset == 2 * PAGE &&
		      sp->areas[1].size == PAGE,
	      "BAR1: the sparse-mmap capability names pages 0 and 2");

	const char hello[16] = "barmap via vfio";
	char back[16] = { 0 };
	CHECK(pwrite(d.device, hello, 16, b1->offset) == 16 &&
		      pread(d.device, back, 16, b1->offset) == 16 && !memcmp(hello, back, 16),
	      "BAR1: pwrite then pread through REGION_WRITE/READ: \"%s\"", back);
	volatile uint8_t *m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				   b1->offset);
	DIE_UNLESS(m != MAP_FAILED, "mmap of BAR1's first page");
	CHECK(!memcmp((const void *)m, hello, 16),
	      "BAR1: the mapping shows what pwrite wrote (the server's file)");
	m[0] = 'B';
	m[1] = 'M';
	CHECK(pread(d.device, back, 16, b1->offset) == 16 && back[0] == 'B' && back[1] == 'M',
	      "BAR1: a store through the mapping reaches the server (read back \"%.2s\")", back);
	volatile uint64_t *w = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, d.device,
				    b1->offset);
	CHECK(w != MAP_FAILED, "BAR1: mmap of the whole BAR");
	if (w != MAP_FAILED) {
		uint64_t direct = 0, trapped = 0;
		CHECK(!memcmp((const void *)w, "BM", 2),
		      "BAR1 whole: page 0 is the server's file");
		w[0] = 0x1122334455667788ull;
		CHECK(pread(d.device, &direct, 8, b1->offset) == 8 &&
			      direct == 0x1122334455667788ull,
		      "BAR1 whole: a store in page 0 reaches the server's file");
		trapped = w[PAGE / 8];
		CHECK(pread(d.device, &direct, 8, b1->offset + PAGE) == 8 && trapped == direct,
		      "BAR1 whole: a load in page 1 (trapped) returns what pread returns (%#llx)",
		      (unsigned long long)trapped);
		munmap((void *)w, 4 * PAGE);
	}

	/* INTx and DMA. */
	int efd = eventfd(0, EFD_CLOEXEC);
	CHECK(bt_set_irq_eventfd(&d, VFIO_PCI_INTX_IRQ_INDEX, efd) == 0, "SET_IRQS: INTx eventfd");
	void *priv = aligned_alloc(PAGE, PAGE);
	volatile uint8_t *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(priv && shared != MAP_FAILED, "DMA buffers");
	memset(priv, 0, PAGE);
	memset((void *)shared, 0, PAGE);
	/* The sample writes its first DMA region with messages, its second
	 * directly through the file. */
	CHECK(dma_map(&d, priv, IOVA_PRIVATE) == 0, "MAP_DMA of private memory (no file)");
	CHECK(dma_map(&d, (void *)shared, IOVA_SHARED) == 0,
	      "MAP_DMA of shared memory (its file passed)");

	time_t t = time(NULL) + 2;
	CHECK(pwrite(d.device, &t, 8, b0->offset) == 8, "BAR0: arm the sample's timer");
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n = 0;
	CHECK(poll(&p, 1, 10000) == 1 && read(efd, &n, 8) == 8 && n >= 1,
	      "INTx: the server signalled the program's eventfd");
	int ok_shared = 0, ok_priv = 0;
	for (int i = 0; i < 500 && !(ok_shared && ok_priv); i++) {
		ok_shared = written(shared);
		ok_priv = written(priv);
		usleep(10000);
	}
	CHECK(ok_shared, "DMA: the server wrote the shared buffer through its file");
	CHECK(ok_priv, "DMA: the server wrote the private buffer with DMA_WRITE messages");
	/* Let the server read both back (DMA_READ messages for the private one). */
	usleep(200000);

	CHECK(dma_unmap(&d, IOVA_PRIVATE) == 0 && dma_unmap(&d, IOVA_SHARED) == 0,
	      "UNMAP_DMA of both (DMA_UNMAP to the server)");
	CHECK(ioctl(d.device, VFIO_DEVICE_RESET) == 0, "VFIO_DEVICE_RESET: DEVICE_RESET");
	int req = eventfd(0, EFD_CLOEXEC);
	CHECK(bt_set_irq_eventfd(&d, VFIO_PCI_REQ_IRQ_INDEX, req) == 0, "SET_IRQS: REQ eventfd");
	struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	CHECK(ioctl(d.device, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0 && ii.count == 0,
	      "GET_IRQ_INFO: the sample has no MSI-X vectors");
	errno = 0;
	CHECK(bt_set_irq_eventfd(&d, VFIO_PCI_MSIX_IRQ_INDEX, efd) == -1 && errno == EINVAL,
	      "SET_IRQS on an index without vectors is EINVAL");
	return bt_exit();
}
