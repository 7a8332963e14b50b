// SPDX-License-Identifier: MIT
/*
 * Helpers for the programs under tests/programs: each is a plain VFIO
 * program (the kernel's uAPI headers and libc only) that proves one
 * behaviour of `barmap run`, and would run unchanged on the kernel's
 * vfio-pci. The device is the one `barmap run` names in BARMAP_BDF and
 * BARMAP_GROUP (or argv[1] and argv[2]).
 *
 * Each program prints "ok <what>" per check and exits 0 only if every
 * check passed; CHECK prints "FAIL <what>: <detail>" and counts.
 */
#ifndef BARMAP_TEST_H
#define BARMAP_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

static int bt_failures;

#define CHECK(cond, ...)                                                    \
	do {                                                                \
		if (cond) {                                                 \
			printf("ok ");                                      \
			printf(__VA_ARGS__);                                \
			printf("\n");                                       \
		} else {                                                    \
			printf("FAIL ");                                    \
			printf(__VA_ARGS__);                                \
			printf(" (errno %d %s, line %d)\n", errno,          \
			       strerror(errno), __LINE__);                  \
			bt_failures++;                                      \
		}                                                           \
		fflush(stdout);                                             \
	} while (0)

#define DIE_UNLESS(cond, what)                                              \
	do {                                                                \
		if (!(cond)) {                                              \
			printf("FAIL %s (errno %d %s, line %d)\n", what,    \
			       errno, strerror(errno), __LINE__);           \
			exit(2);                                            \
		}                                                           \
	} while (0)

/* A VFIO device opened through the legacy group and type1 container. */
struct bt_dev {
	int container, group, device;
	uint64_t config_off;
	struct vfio_region_info bar[VFIO_PCI_ROM_REGION_INDEX];
};

static inline const char *bt_env(const char *name, int argc, char **argv, int pos)
{
	const char *v = argc > pos ? argv[pos] : getenv(name);

	DIE_UNLESS(v != NULL, name);
	return v;
}

static inline void bt_region(int device, uint32_t index, struct vfio_region_info *r)
{
	memset(r, 0, sizeof(*r));
	r->argsz = sizeof(*r);
	r->index = index;
	DIE_UNLESS(ioctl(device, VFIO_DEVICE_GET_REGION_INFO, r) == 0,
		   "VFIO_DEVICE_GET_REGION_INFO");
}

/* Opens the group, sets a type1v2 container and gets the device fd. */
static inline void bt_open(struct bt_dev *d, int argc, char **argv)
{
	const char *bdf = bt_env("BARMAP_BDF", argc, argv, 1);
	const char *grp = bt_env("BARMAP_GROUP", argc, argv, 2);
	char path[64];
	struct vfio_group_status st = { .argsz = sizeof(st) };
	struct vfio_region_info cfg;

	d->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(d->container >= 0, "open /dev/vfio/vfio");
	snprintf(path, sizeof(path), "/dev/vfio/%s", grp);
	d->group = open(path, O_RDWR | O_CLOEXEC);
	DIE_UNLESS(d->group >= 0, "open the group");
	DIE_UNLESS(ioctl(d->group, VFIO_GROUP_GET_STATUS, &st) == 0 &&
			   (st.flags & VFIO_GROUP_FLAGS_VIABLE),
		   "VFIO_GROUP_GET_STATUS");
	DIE_UNLESS(ioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container) == 0,
		   "VFIO_GROUP_SET_CONTAINER");
	DIE_UNLESS(ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0,
		   "VFIO_SET_IOMMU");
	d->device = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	DIE_UNLESS(d->device >= 0, "VFIO_GROUP_GET_DEVICE_FD");
	bt_region(d->device, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	d->config_off = cfg.offset;
	for (uint32_t i = 0; i < VFIO_PCI_ROM_REGION_INDEX; i++)
		bt_region(d->device, i, &d->bar[i]);
}

static inline uint16_t bt_command(struct bt_dev *d)
{
	uint16_t cmd = 0;

	DIE_UNLESS(pread(d->device, &cmd, 2, d->config_off + PCI_COMMAND) == 2,
		   "read COMMAND");
	return cmd;
}

static inline void bt_set_command(struct bt_dev *d, uint16_t cmd)
{
	DIE_UNLESS(pwrite(d->device, &cmd, 2, d->config_off + PCI_COMMAND) == 2,
		   "write COMMAND");
}

static inline void bt_memory(struct bt_dev *d, int on)
{
	uint16_t cmd = bt_command(d);

	bt_set_command(d, on ? (cmd | PCI_COMMAND_MEMORY) : (cmd & ~PCI_COMMAND_MEMORY));
}

/* Maps `len` bytes of BAR `index` at `off`, MAP_SHARED read-write. */
static inline volatile uint8_t *bt_map(struct bt_dev *d, uint32_t index, uint64_t off, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, d->device,
		       d->bar[index].offset + off);

	DIE_UNLESS(p != MAP_FAILED, "mmap of a BAR");
	return p;
}


#include <setjmp.h>

static sigjmp_buf bt_jmp;
static volatile sig_atomic_t bt_jmp_armed;

static void bt_on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)info;
	(void)ctx;
	if (bt_jmp_armed)
		siglongjmp(bt_jmp, 1);
	_exit(99);
}

/* Installs a SIGBUS handler that bt_read_sigbus recovers from. */
static inline void bt_catch_sigbus(void)
{
	struct sigaction sa = { .sa_sigaction = bt_on_sigbus, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction SIGBUS");
}

/* Reads the 64-bit word at `p`: 1 and the value in *out, or 0 if the read
 * raised SIGBUS (bt_catch_sigbus first). */
static inline int bt_read_or_sigbus(volatile uint8_t *p, uint64_t *out)
{
	if (sigsetjmp(bt_jmp, 1)) {
		bt_jmp_armed = 0;
		return 0;
	}
	bt_jmp_armed = 1;
	*out = *(volatile uint64_t *)p;
	bt_jmp_armed = 0;
	return 1;
}

#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC. */
static inline long bt_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void bt_on_unexpected_sigbus(int sig, siginfo_t *si, void *ctx)
{
	char msg[96];
	int n;

	(void)sig;
	(void)ctx;
	n = snprintf(msg, sizeof(msg), "FAIL SIGBUS at %p while memory is enabled\n", si->si_addr);
	if (write(1, msg, n) < 0)
		_exit(3);
	_exit(1);
}

/* Makes any SIGBUS a failure: the program says where and exits 1. */
static inline void bt_sigbus_fails(void)
{
	struct sigaction sa = { .sa_sigaction = bt_on_unexpected_sigbus, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	DIE_UNLESS(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction SIGBUS");
}

/* VFIO_DEVICE_SET_IRQS of one eventfd to vector 0 of interrupt `index`
 * (TRIGGER); the ioctl's result. */
static inline int bt_set_irq_eventfd(struct bt_dev *d, uint32_t index, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *s = (struct vfio_irq_set *)buf;

	s->argsz = sizeof(buf);
	s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	s->index = index;
	s->start = 0;
	s->count = 1;
	memcpy(s->data, &fd, sizeof(int));
	return ioctl(d->device, VFIO_DEVICE_SET_IRQS, s);
}

static inline int bt_exit(void)
{
	printf("%s: %d failed\n", bt_failures ? "FAIL" : "PASS", bt_failures);
	return bt_failures ? 1 : 0;
}

#endif
