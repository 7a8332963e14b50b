// SPDX-License-Identifier: MIT
/*
 * Descriptors submitted to the dsa model's portals with MOVDIR64B and
 * ENQCMD (encoded with .byte, so no -mmovdir64b is needed) arrive as one
 * 64-byte store, whether this CPU has the instructions (the store to the
 * trapped portal page faults) or not (they raise SIGILL before touching
 * memory; barmap emulates them): the copies they describe run by DMA and
 * their completion records say success. ENQCMD reports ZF clear when the
 * device accepts and set ("retry") when it refuses; a store to a disabled
 * work queue is logged in SWERR, which write-1-to-clear empties.
 */
#define _GNU_SOURCE
#include <time.h>

#include "barmap_test.h"

#define IOVA 0x100000ull
#define DMA_LEN 0x10000ul
#define SRC 0x0000
#define DST 0x4000
#define COMP 0x8000

#define CMD 0xa0
#define CMDSTS 0xa8
#define SWERR 0xc0
#define TABLE 0x60
#define PORTAL(wq) ((wq) * 4 * 4096)

static volatile uint8_t *bar0, *bar2;
static uint8_t *mem;

static uint32_t rd32(uint64_t off) { return *(volatile uint32_t *)(bar0 + off); }
static uint64_t rd64(uint64_t off) { return *(volatile uint64_t *)(bar0 + off); }
static void wr32(uint64_t off, uint32_t v) { *(volatile uint32_t *)(bar0 + off) = v; }
static void wr64(uint64_t off, uint64_t v) { *(volatile uint64_t *)(bar0 + off) = v; }

static uint32_t command(uint32_t cmd, uint32_t operand)
{
	wr32(CMD, cmd << 20 | operand);
	return rd32(CMDSTS);
}

/* MOVDIR64B %(rdx), %rax */
static void movdir64b(volatile void *dst, const void *src)
{
	asm volatile(".byte 0x66, 0x0f, 0x38, 0xf8, 0x02"
		     : : "a"(dst), "d"(src) : "memory");
}

/* MOVDIR64B 0x40(%rdx), %rax: the source 64 bytes past rdx. */
static void movdir64b_disp8(volatile void *dst, const void *src_minus_64)
{
	asm volatile(".byte 0x66, 0x0f, 0x38, 0xf8, 0x42, 0x40"
		     : : "a"(dst), "d"(src_minus_64) : "memory");
}

/* ENQCMD %(rdx), %rax; returns ZF (1: retry). */
static int enqcmd(volatile void *dst, const void *src)
{
	uint8_t zf;

	asm volatile(".byte 0xf2, 0x0f, 0x38, 0xf8, 0x02\n\tsetz %0"
		     : "=q"(zf) : "a"(dst), "d"(src) : "memory", "cc");
	return zf;
}

/* A memmove descriptor (struct dsa_hw_desc) with CRAV and RCR. */
static void memmove_desc(uint8_t d[64], uint32_t len)
{
	uint32_t word = 0x4 | 0x8 | 3u << 24;
	uint64_t comp = IOVA + COMP, src = IOVA + SRC, dst = IOVA + DST;

	memset(d, 0, 64);
	memcpy(d + 4, &word, 4);
	memcpy(d + 8, &comp, 8);
	memcpy(d + 16, &src, 8);
	memcpy(d + 24, &dst, 8);
	memcpy(d + 32, &len, 4);
}

/* Waits up to 2 s for the completion record's status byte. */
static uint8_t wait_completion(void)
{
	for (int i = 0; i < 2000; i++) {
		uint8_t s = *(volatile uint8_t *)(mem + COMP);

		if (s)
			return s;
		usleep(1000);
	}
	return 0;
}

static int copy_with(const char *how, int (*submit)(volatile void *, const void *),
		     volatile void *portal, uint8_t fill)
{
	uint8_t desc[128] __attribute__((aligned(64)));

	memset(mem + SRC, fill, 4096);
	memset(mem + DST, 0, 4096);
	memset(mem + COMP, 0, 32);
	memmove_desc(desc, 4096);
	int zf = submit(portal, desc);
	uint8_t s = wait_completion();
	CHECK(s == 1, "a copy submitted by %s completes with success (status %#x)", how, s);
	CHECK(memcmp(mem + SRC, mem + DST, 4096) == 0, "the copy by %s moved the bytes", how);
	return zf;
}

static int by_movdir64b(volatile void *p, const void *d) { movdir64b(p, d); return 0; }
static int by_movdir64b_disp8(volatile void *p, const void *d)
{
	uint8_t twice[128] __attribute__((aligned(64)));

	memcpy(twice + 64, d, 64);
	memset(twice, 0xee, 64); /* a descriptor the decoder must not pick */
	movdir64b_disp8(p, twice);
	return 0;
}

int main(int argc, char **argv)
{
	struct bt_dev d;

	bt_open(&d, argc, argv);
	bar0 = bt_map(&d, 0, 0, d.bar[0].size);
	bar2 = bt_map(&d, 2, 0, d.bar[2].size);
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

	CHECK(command(5, 0) == 0, "RESET_DEVICE succeeds");
	uint64_t t = rd64(TABLE);
	uint64_t grpcfg = (t & 0xffff) * 0x100, wqcfg = ((t >> 16) & 0xffff) * 0x100;
	uint64_t gencap = rd64(0x10);
	uint32_t xfer = (gencap >> 16) & 0x1f, batch = (gencap >> 21) & 0xf;

	/* WQ 0 dedicated (16 entries), WQ 1 shared (2), both in group 0. */
	wr32(wqcfg + 0, 16);
	wr32(wqcfg + 8, 1 | 1 << 4);
	wr32(wqcfg + 12, xfer | batch << 5);
	wr32(wqcfg + 64 + 0, 2);
	wr32(wqcfg + 64 + 8, 0 | 1 << 4);
	wr32(wqcfg + 64 + 12, xfer | batch << 5);
	wr64(grpcfg + 0, 0x3);
	wr64(grpcfg + 32, 0x1);
	CHECK(command(1, 0) == 0, "ENABLE_DEVICE succeeds");
	CHECK(command(6, 0) == 0 && command(6, 1) == 0, "ENABLE_WQ 0 and 1 succeed");

	copy_with("MOVDIR64B [rdx]", by_movdir64b, bar2 + PORTAL(0), 0x5a);
	copy_with("MOVDIR64B [rdx+0x40]", by_movdir64b_disp8, bar2 + PORTAL(0) + 0x40, 0xa5);
	CHECK((rd64(SWERR) & 1) == 0, "no software error after the MOVDIR64B submissions");

	int zf = copy_with("ENQCMD", enqcmd, bar2 + PORTAL(1), 0x3c);
	CHECK(zf == 0, "ENQCMD to a shared work queue with room clears ZF (accepted)");

	uint8_t desc[64] __attribute__((aligned(64)));
	memmove_desc(desc, 4096);
	CHECK(enqcmd(bar2 + PORTAL(2), desc) == 1,
	      "ENQCMD to a disabled work queue sets ZF (retry)");
	uint64_t swerr = rd64(SWERR);
	CHECK((swerr & 1) && ((swerr >> 16) & 0xff) == 2,
	      "SWERR logs the store to disabled work queue 2 (%#llx)", (unsigned long long)swerr);
	wr64(SWERR, 3);
	CHECK((rd64(SWERR) & 1) == 0, "writing 1s to SWERR's valid and overflow bits clears it");

	CHECK(command(5, 0) == 0, "RESET_DEVICE succeeds again");
	return bt_exit();
}
