// SPDX-License-Identifier: MIT
/* QEMU's edu device (--device edu) as a DMA engine for the programs: its
 * DMA registers in BAR0, its 4 KiB buffer at edu address 0x40000. */
#ifndef EDU_DMA_H
#define EDU_DMA_H

#include "barmap_test.h"

#define EDU_BUF 0x40000
#define EDU_TO_RAM 0x2

static inline void edu_wr64(struct bt_dev *d, uint64_t reg, uint64_t v)
{
	DIE_UNLESS(pwrite(d->device, &v, 8, d->bar[0].offset + reg) == 8, "edu register write");
}

/* One transfer of `len` bytes between `iova` and the edu buffer; the edu
 * finishes it before the write that starts it returns. */
static inline void edu_dma(struct bt_dev *d, uint64_t iova, uint64_t len, int to_ram)
{
	edu_wr64(d, 0x80, to_ram ? EDU_BUF : iova);
	edu_wr64(d, 0x88, to_ram ? iova : EDU_BUF);
	edu_wr64(d, 0x90, len);
	edu_wr64(d, 0x98, 0x1 | (to_ram ? EDU_TO_RAM : 0));
}

static inline void edu_bus_master(struct bt_dev *d)
{
	bt_set_command(d, bt_command(d) | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
}

static inline void edu_map(struct bt_dev *d, void *va, uint64_t iova, uint64_t len)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)va, .iova = iova, .size = len,
	};

	DIE_UNLESS(ioctl(d->container, VFIO_IOMMU_MAP_DMA, &m) == 0, "MAP_DMA");
}

/* Fills the edu buffer with `byte`, by DMA from a buffer of the program. */
static inline void edu_fill(struct bt_dev *d, uint8_t byte)
{
	uint8_t *src = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof(u), .iova = 0x0f00000, .size = 4096 };

	DIE_UNLESS(src != MAP_FAILED, "mmap the source");
	memset(src, byte, 4096);
	edu_map(d, src, 0x0f00000, 4096);
	edu_dma(d, 0x0f00000, 4096, 0);
	DIE_UNLESS(ioctl(d->container, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "UNMAP_DMA of the source");
	munmap(src, 4096);
}

static inline int all_bytes(const volatile uint8_t *p, size_t len, uint8_t byte)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != byte)
			return 0;
	return 1;
}

#endif
