// SPDX-License-Identifier: MIT
/*
 * QEMU's edu device (1234:11e8) through the plain VFIO uAPI (legacy
 * group/container, type1): every register, the factorial unit, interrupts
 * (MSI and INTx: delivered, masked and pending, acknowledged) and the DMA
 * engine in both directions, through an mmap of BAR0 and through
 * pread/pwrite, and BAR0 while memory decoding is off (SIGBUS, EIO).
 *
 *   edu_test BDF        (or BARMAP_BDF=BDF edu_test)
 *
 * Prints a transcript that depends on neither addresses nor timing, one
 * line per check, so that a run against QEMU's edu behind the kernel's
 * vfio-pci and one under `barmap run --device edu` can be compared with
 * diff. Exit status 0 only if every check passed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

#define BAR0_SIZE (1UL << 20)
#define DMA_BUF 0x40000UL
#define IOVA_SRC 0x100000UL
#define IOVA_DST 0x200000UL
#define IOVA_RO 0x300000UL
#define PAGE 4096UL
/*
 * Bytes per whole-buffer transfer: QEMU's edu before 8.0 stops the whole
 * machine (hw_error) on a transfer that ends exactly at the end of its
 * 4 KiB buffer, so stay below it.
 */
#define XFER 0x800UL

static int failures, checks;
static int device, container;
static volatile uint8_t *bar;
static uint64_t config_offset, bar0_offset;
static sigjmp_buf touch_env;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" %s\n", ok ? "ok" : "FAIL");
	fflush(stdout);
	checks++;
	if (!ok)
		failures++;
}

static void die(const char *what)
{
	printf("%s: %s FAIL\n", what, strerror(errno));
	exit(1);
}

static uint32_t rd32(uint64_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr32(uint64_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static uint64_t rd64(uint64_t off) { return *(volatile uint64_t *)(bar + off); }
static void wr64(uint64_t off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

static uint32_t cfg_read(uint64_t off, int size)
{
	uint32_t v = 0;

	if (pread(device, &v, size, config_offset + off) != size)
		die("config read");
	return v;
}

static void cfg_write16(uint64_t off, uint16_t v)
{
	if (pwrite(device, &v, 2, config_offset + off) != 2)
		die("config write");
}

/* Polls until (reg & bit) == 0; at most 5 s. */
static int wait_clear(uint64_t off, uint32_t bit)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (!(rd32(off) & bit))
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 5)
			return 0;
		usleep(100);
	}
}

/* Whether the eventfd fires within `ms` milliseconds (and drains it). */
static int fired(int efd, int ms)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n;

	if (poll(&p, 1, ms) != 1)
		return 0;
	return read(efd, &n, 8) == 8;
}

static void set_irq(uint32_t index, uint32_t action, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (void *)buf;

	s->argsz = sizeof(buf);
	s->index = index;
	s->start = 0;
	s->count = fd == -2 ? 0 : 1;
	if (action == VFIO_IRQ_SET_ACTION_TRIGGER && fd != -2) {
		s->flags = VFIO_IRQ_SET_DATA_EVENTFD | action;
		memcpy(s->data, &fd, sizeof(int));
	} else {
		s->flags = VFIO_IRQ_SET_DATA_NONE | action;
		if (fd == -2)
			s->argsz = sizeof(*s);
	}
	if (ioctl(device, VFIO_DEVICE_SET_IRQS, s))
		die("VFIO_DEVICE_SET_IRQS");
}

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)info;
	(void)ctx;
	siglongjmp(touch_env, 1);
}

static void *dma_buffer(uint64_t iova, uint32_t flags)
{
	struct vfio_iommu_type1_dma_map m = { .argsz = sizeof(m) };
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap of a DMA buffer");
	memset(p, 0, PAGE);
	m.flags = flags;
	m.vaddr = (uintptr_t)p;
	m.iova = iova;
	m.size = PAGE;
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m))
		die("VFIO_IOMMU_MAP_DMA");
	return p;
}

/* One DMA: src, dst, count, command; waits until it finished. */
static int dma(uint64_t src, uint64_t dst, uint64_t cnt, uint64_t cmd)
{
	wr64(0x80, src);
	wr64(0x88, dst);
	wr64(0x90, cnt);
	wr64(0x98, cmd);
	return wait_clear(0x98, 1);
}

static void open_device(const char *bdf)
{
	char path[320], link[256], *g;
	struct vfio_group_status status = { .argsz = sizeof(status) };
	struct vfio_device_info info = { .argsz = sizeof(info) };
	struct vfio_region_info r = { .argsz = sizeof(r) };
	int group;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		die("readlink iommu_group");
	link[n] = 0;
	g = strrchr(link, '/');
	snprintf(path, sizeof(path), "/dev/vfio/%s", g ? g + 1 : link);
	container = open("/dev/vfio/vfio", O_RDWR);
	group = open(path, O_RDWR);
	if (container < 0 || group < 0)
		die("open /dev/vfio");
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("VFIO_GROUP_GET_STATUS");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container))
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		die("VFIO_SET_IOMMU");
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");
	if (ioctl(device, VFIO_DEVICE_GET_INFO, &info))
		die("VFIO_DEVICE_GET_INFO");
	check(info.flags & VFIO_DEVICE_FLAGS_PCI, "device: vfio-pci, %u regions, %u irq indexes",
	      info.num_regions, info.num_irqs);
	r.index = VFIO_PCI_CONFIG_REGION_INDEX;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &r))
		die("GET_REGION_INFO config");
	config_offset = r.offset;
}

static void identity(void)
{
	uint32_t cap, id;
	int n = 0;

	check(cfg_read(PCI_VENDOR_ID, 2) == 0x1234 && cfg_read(PCI_DEVICE_ID, 2) == 0x11e8,
	      "config: id %04x:%04x", cfg_read(PCI_VENDOR_ID, 2), cfg_read(PCI_DEVICE_ID, 2));
	check(cfg_read(PCI_REVISION_ID, 1) == 0x10, "config: revision %02x", cfg_read(PCI_REVISION_ID, 1));
	check(cfg_read(PCI_CLASS_PROG, 1) == 0 && cfg_read(PCI_CLASS_DEVICE, 2) == 0x00ff,
	      "config: class %04x%02x", cfg_read(PCI_CLASS_DEVICE, 2), cfg_read(PCI_CLASS_PROG, 1));
	check(cfg_read(PCI_INTERRUPT_PIN, 1) == 1, "config: interrupt pin %u", cfg_read(PCI_INTERRUPT_PIN, 1));
	for (cap = cfg_read(PCI_CAPABILITY_LIST, 1) & ~3u; cap && n < 48; n++) {
		id = cfg_read(cap, 1);
		if (id == PCI_CAP_ID_MSI)
			check((cfg_read(cap + PCI_MSI_FLAGS, 2) & 0xfe) == PCI_MSI_FLAGS_64BIT,
			      "config: capability %02x (MSI), flags %04x", id,
			      cfg_read(cap + PCI_MSI_FLAGS, 2) & 0xfe);
		else
			check(1, "config: capability %02x", id);
		cap = cfg_read(cap + 1, 1) & ~3u;
	}
}

static void regions_and_irqs(void)
{
	static const char *const names[] = { "INTx", "MSI", "MSI-X" };
	uint32_t i;

	for (i = 0; i < 6; i++) {
		struct vfio_region_info r = { .argsz = sizeof(r), .index = i };

		if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &r))
			die("VFIO_DEVICE_GET_REGION_INFO");
		if (i == 0)
			bar0_offset = r.offset;
		check(i == 0 ? r.size == BAR0_SIZE : r.size == 0, "BAR%u: size %#llx%s%s%s", i,
		      (unsigned long long)r.size, r.flags & VFIO_REGION_INFO_FLAG_READ ? " read" : "",
		      r.flags & VFIO_REGION_INFO_FLAG_WRITE ? " write" : "",
		      r.flags & VFIO_REGION_INFO_FLAG_MMAP ? " mmap" : "");
	}
	for (i = 0; i < 3; i++) {
		struct vfio_irq_info q = { .argsz = sizeof(q), .index = i };

		if (ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, &q))
			die("VFIO_DEVICE_GET_IRQ_INFO");
		check(q.count == (i < 2 ? 1u : 0u), "irq %s: %u vector(s)", names[i], q.count);
	}
}

static void registers(void)
{
	uint32_t v = 0xa5a5a5a5, back = 0;
	int done;

	check(rd32(0x00) == 0x010000ed, "0x00 identification: %08x", rd32(0x00));
	wr32(0x04, 0x12345678);
	check(rd32(0x04) == 0xedcba987, "0x04 liveness after 12345678: %08x", rd32(0x04));
	wr32(0x04, 0);
	check(rd32(0x04) == 0xffffffff, "0x04 liveness after 00000000: %08x", rd32(0x04));
	if (pwrite(device, &v, 4, bar0_offset + 0x04) != 4 || pread(device, &back, 4, bar0_offset + 0x04) != 4)
		die("pread/pwrite of BAR0");
	check(back == 0x5a5a5a5a, "0x04 liveness through pwrite/pread: %08x", back);
	if (pread(device, &back, 4, bar0_offset) != 4)
		die("pread of BAR0");
	check(back == 0x010000ed, "0x00 identification through pread: %08x", back);
	wr32(0x20, 0);
	wr32(0x08, 10);
	check(wait_clear(0x20, 0x01), "0x20 status: computing bit clears");
	check(rd32(0x08) == 3628800, "0x08 factorial of 10: %u", rd32(0x08));
	wr32(0x08, 13);
	done = wait_clear(0x20, 0x01);
	v = rd32(0x08);
	check(done && v == 1932053504, "0x08 factorial of 13 (mod 2^32): %u", v);
	wr32(0x20, 0x80);
	check((rd32(0x20) & 0x80) == 0x80, "0x20 status: interrupt-on-factorial bit set");
	wr32(0x20, 0);
	check(rd32(0x20) == 0, "0x20 status: cleared: %08x", rd32(0x20));
	wr64(0x80, 0x0123456);
	wr64(0x88, 0x0fedcba);
	wr64(0x90, 0x10);
	check(rd64(0x80) == 0x0123456 && rd64(0x88) == 0x0fedcba && rd64(0x90) == 0x10,
	      "0x80/0x88/0x90 DMA registers read back: %llx %llx %llx", (unsigned long long)rd64(0x80),
	      (unsigned long long)rd64(0x88), (unsigned long long)rd64(0x90));
	check((rd64(0x98) & 1) == 0, "0x98 DMA command: not running");
}

static void interrupts(void)
{
	int efd = eventfd(0, EFD_CLOEXEC), done;
	uint32_t fact, status;

	if (efd < 0)
		die("eventfd");
	/* MSI */
	set_irq(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, efd);
	wr32(0x60, 0x1234);
	check(fired(efd, 5000), "msi: raise 1234 interrupts");
	check(rd32(0x24) == 0x1234, "0x24 interrupt status: %08x", rd32(0x24));
	wr32(0x64, 0x1234);
	check(rd32(0x24) == 0, "0x64 acknowledge: status %08x", rd32(0x24));
	check(!fired(efd, 200), "msi: quiet after acknowledge");
	wr32(0x20, 0x80);
	wr32(0x08, 5);
	check(fired(efd, 5000), "msi: factorial 5 done interrupts");
	done = wait_clear(0x20, 0x01);
	fact = rd32(0x08);
	status = rd32(0x24);
	check(done && fact == 120 && status == 0x1, "factorial 5: %u, interrupt status %08x", fact, status);
	wr32(0x64, 0x1);
	wr32(0x20, 0);
	set_irq(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, -2);

	/* INTx: level-triggered and automasked */
	set_irq(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, efd);
	wr32(0x60, 0x4);
	check(fired(efd, 5000), "intx: raise 4 interrupts");
	wr32(0x60, 0x8);
	check(!fired(efd, 200), "intx: masked after firing, a second raise stays pending");
	check(rd32(0x24) == 0xc, "0x24 interrupt status: %08x", rd32(0x24));
	set_irq(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0);
	check(fired(efd, 5000), "intx: unmask while still asserted interrupts again");
	wr32(0x64, 0xc);
	check(rd32(0x24) == 0, "0x64 acknowledge: status %08x", rd32(0x24));
	set_irq(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK, 0);
	check(!fired(efd, 200), "intx: quiet after acknowledge and unmask");
	set_irq(VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, -2);
	close(efd);
}

static uint32_t sum(const uint8_t *p, size_t n)
{
	uint32_t s = 0;

	while (n--)
		s = s * 31 + *p++;
	return s;
}

static void dma_engine(void)
{
	uint8_t *src = dma_buffer(IOVA_SRC, VFIO_DMA_MAP_FLAG_READ);
	uint8_t *dst = dma_buffer(IOVA_DST, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
	int efd = eventfd(0, EFD_CLOEXEC), done;
	uint32_t status;
	size_t i;

	for (i = 0; i < PAGE; i++)
		src[i] = (uint8_t)(i * 7 + 3);
	check(dma(IOVA_SRC, DMA_BUF, XFER, 0x1), "dma: %lu bytes RAM to edu finished", XFER);
	set_irq(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, efd);
	wr64(0x80, DMA_BUF);
	wr64(0x88, IOVA_DST);
	wr64(0x90, XFER);
	wr64(0x98, 0x1 | 0x2 | 0x4);
	check(fired(efd, 5000), "dma: %lu bytes edu to RAM interrupts when done", XFER);
	done = wait_clear(0x98, 1);
	status = rd32(0x24);
	check(done && status == 0x100, "dma: command idle, interrupt status %08x", status);
	wr32(0x64, 0x100);
	check(memcmp(src, dst, XFER) == 0, "dma: round trip intact, checksum %08x", sum(dst, PAGE));
	memset(dst, 0, PAGE);
	check(dma(IOVA_SRC + 0x100, DMA_BUF + 0x800, 0x80, 0x1) &&
	      dma(DMA_BUF + 0x7c0, IOVA_DST + 0x40, 0x100, 0x1 | 0x2),
	      "dma: partial transfers at offsets finished");
	check(memcmp(dst + 0x80, src + 0x100, 0x80) == 0,
	      "dma: partial round trip, checksum %08x", sum(dst, PAGE));
	set_irq(VFIO_PCI_MSI_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER, -2);
	close(efd);
}

static void memory_disabled(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	uint16_t cmd = cfg_read(PCI_COMMAND, 2);
	volatile int got_sigbus = 0;
	uint32_t v;
	int rc, err;

	sigaction(SIGBUS, &sa, NULL);
	cfg_write16(PCI_COMMAND, cmd & ~PCI_COMMAND_MEMORY);
	if (sigsetjmp(touch_env, 1) == 0)
		(void)rd32(0x00);
	else
		got_sigbus = 1;
	check(got_sigbus, "memory off: a load from the mapping gets SIGBUS");
	errno = 0;
	rc = pread(device, &v, 4, bar0_offset);
	err = errno;
	check(rc < 0 && err == EIO, "memory off: pread fails with %s", strerror(err));
	cfg_write16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY);
	check(rd32(0x00) == 0x010000ed, "memory on: identification %08x", rd32(0x00));
	signal(SIGBUS, SIG_DFL);
}

int main(int argc, char *argv[])
{
	const char *bdf = argc > 1 ? argv[1] : getenv("BARMAP_BDF");
	void *p;

	if (!bdf) {
		fprintf(stderr, "usage: %s BDF (or BARMAP_BDF=BDF)\n", argv[0]);
		return 2;
	}
	open_device(bdf);
	identity();
	regions_and_irqs();
	p = mmap(NULL, BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, device, bar0_offset);
	if (p == MAP_FAILED)
		die("mmap of BAR0");
	bar = p;
	cfg_write16(PCI_COMMAND, cfg_read(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	registers();
	interrupts();
	dma_engine();
	memory_disabled();
	munmap(p, BAR0_SIZE);
	printf("edu_test: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
