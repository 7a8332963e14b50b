// SPDX-License-Identifier: MIT
/*
 * The NVIDIA falcon (barmap's nv_falcon model, a Tesla T4's GSP) driven as
 * a plain VFIO program through a trapped mmap of BAR0, as the kernel's
 * selftest driver does: engine reset, scrubbing, FBIF set to physical
 * system memory, then transfers between DMEM and IOVAs of a type1
 * container. What the selftest does not check: a transfer the IOMMU
 * refuses never shows DMATRFCMD's idle bit (the driver's only error, a
 * timeout) and writes nothing: to a read-only mapping, from and to an
 * IOVA that was unmapped, with bus mastering off; the next transfer works
 * without a reset; and the data moves through DMEM, where the DMEM port
 * reads it.
 */
#include <stdint.h>
#include <time.h>

#include "barmap_test.h"

#define GSP 0x110000u
#define PMC_BOOT_0 0x000
#define DMA_TOP 0x100f04
#define DMACTL (GSP + 0x10c)
#define DMATRFBASE (GSP + 0x110)
#define DMATRFMOFFS (GSP + 0x114)
#define DMATRFCMD (GSP + 0x118)
#define DMATRFFBOFFS (GSP + 0x11c)
#define DMATRFBASE1 (GSP + 0x128)
#define DMEMC (GSP + 0x1c0)
#define DMEMD (GSP + 0x1c4)
#define ENGINE_RESET (GSP + 0x3c0)
#define TRANSCFG (GSP + 0x600)
#define FBIF_CTL (GSP + 0x624)
#define CMD_IDLE 0x2
#define CMD_WRITE 0x20

#define IOVA 0x100000ull
#define RO_IOVA 0x200000ull
#define LEN 0x10000

static volatile uint8_t *bar0;

static uint32_t rd(uint32_t off)
{
	return *(volatile uint32_t *)(bar0 + off);
}

static void wr(uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(bar0 + off) = v;
}

/* One transfer of `size` bytes between DMEM offset 0 and `iova`; whether
 * the idle bit came within 20 ms. */
static int dma(uint64_t iova, uint32_t size, int write)
{
	struct timespec ms = { .tv_nsec = 1000000 };

	wr(DMA_TOP, (uint32_t)(iova >> 47) & 0x1ffff);
	wr(DMATRFBASE1, (uint32_t)(iova >> 40) & 0x7f);
	wr(DMATRFBASE, (uint32_t)(iova >> 8));
	wr(DMATRFFBOFFS, (uint32_t)iova & 0xff);
	wr(DMATRFMOFFS, 0);
	wr(DMATRFCMD, ((uint32_t)__builtin_ctz(size) - 2) << 8 | (write ? CMD_WRITE : 0));
	for (int i = 0; i < 20; i++) {
		if (rd(DMATRFCMD) & CMD_IDLE)
			return 1;
		nanosleep(&ms, NULL);
	}
	return 0;
}

static void map(struct bt_dev *d, void *mem, uint64_t iova, uint32_t flags)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = flags,
		.vaddr = (uintptr_t)mem,
		.iova = iova,
		.size = LEN,
	};

	DIE_UNLESS(ioctl(d->container, VFIO_IOMMU_MAP_DMA, &m) == 0, "VFIO_IOMMU_MAP_DMA");
}

int main(int argc, char **argv)
{
	struct bt_dev d;
	uint8_t *mem, *ro;
	int scrub_polls = 0;

	bt_open(&d, argc, argv);
	bar0 = bt_map(&d, 0, 0, d.bar[0].size);
	CHECK(d.bar[0].size == 16 << 20, "BAR0 is 16 MiB (%llu)", (unsigned long long)d.bar[0].size);
	CHECK(rd(PMC_BOOT_0) == 0x164000a1, "PMC_BOOT_0 names a TU104 (%#x)", rd(PMC_BOOT_0));

	mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ro = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	DIE_UNLESS(mem != MAP_FAILED && ro != MAP_FAILED, "mmap DMA memory");
	map(&d, mem, IOVA, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
	map(&d, ro, RO_IOVA, VFIO_DMA_MAP_FLAG_READ);
	bt_set_command(&d, bt_command(&d) | PCI_COMMAND_MASTER);

	/* The driver's init. */
	wr(ENGINE_RESET, 1);
	CHECK(rd(DMACTL) == 0xbadf5620, "a falcon in reset reads the priv error (%#x)", rd(DMACTL));
	wr(ENGINE_RESET, 0);
	while ((rd(DMACTL) & 0x6) && scrub_polls < 100)
		scrub_polls++;
	CHECK(scrub_polls == 1, "scrubbing shows once after the reset (%d)", scrub_polls);
	wr(DMEMC, 0);
	wr(TRANSCFG, (rd(TRANSCFG) & ~3u) | 5);
	wr(FBIF_CTL, rd(FBIF_CTL) | 0x90);
	wr(DMACTL, rd(DMACTL) & ~1u);

	/* A copy through DMEM, read back through the DMEM port. */
	for (int i = 0; i < 256; i++)
		mem[i] = (uint8_t)(i * 3 + 1);
	CHECK(dma(IOVA, 256, 0), "a read into DMEM completes");
	wr(DMEMC, 4 | (1u << 24));
	uint32_t w1 = rd(DMEMD), w2 = rd(DMEMD);
	CHECK(w1 == *(uint32_t *)(mem + 4) && w2 == *(uint32_t *)(mem + 8),
	      "DMEM holds what was read (%#x %#x)", w1, w2);
	CHECK(dma(IOVA + 0x1000, 256, 1), "a write out of DMEM completes");
	CHECK(memcmp(mem, mem + 0x1000, 256) == 0, "the copy arrived");

	/* A write to a read-only mapping: never idle, nothing written. */
	memset(ro, 0x5a, 256);
	CHECK(!dma(RO_IOVA, 256, 1), "a write to a read-only IOVA does not complete");
	CHECK(ro[0] == 0x5a && ro[255] == 0x5a, "and writes nothing");
	CHECK(dma(RO_IOVA, 256, 0), "reading the read-only IOVA works");
	CHECK(dma(IOVA + 0x2000, 256, 1) && mem[0x2000] == 0x5a, "and the next transfer runs");

	/* Unmapped: the IOVA range is gone for the device too. */
	struct vfio_iommu_type1_dma_unmap um = {
		.argsz = sizeof(um), .iova = RO_IOVA, .size = LEN,
	};
	DIE_UNLESS(ioctl(d.container, VFIO_IOMMU_UNMAP_DMA, &um) == 0, "VFIO_IOMMU_UNMAP_DMA");
	memset(ro, 0x77, 256);
	CHECK(!dma(RO_IOVA, 256, 0), "a read from an unmapped IOVA does not complete");
	CHECK(!dma(RO_IOVA, 256, 1), "nor a write to it");
	CHECK(ro[0] == 0x77, "which writes nothing to the old pages");
	CHECK(dma(IOVA, 256, 0), "the next transfer runs without a reset");

	/* Bus mastering off: no transfer completes. */
	memset(mem + 0x3000, 0x11, 256);
	bt_set_command(&d, bt_command(&d) & ~PCI_COMMAND_MASTER);
	CHECK(!dma(IOVA + 0x3000, 256, 1), "no transfer without bus mastering");
	CHECK(mem[0x3000] == 0x11, "and nothing written");
	bt_set_command(&d, bt_command(&d) | PCI_COMMAND_MASTER);
	CHECK(dma(IOVA + 0x3000, 256, 1) && mem[0x3000] == 1, "with it back, the write lands");

	return bt_exit();
}
