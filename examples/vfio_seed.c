// SPDX-License-Identifier: MIT
/*
 * The seed scenario as a plain VFIO program (legacy group/container, type1).
 *
 *   vfio_seed BDF [BAR]        (or BARMAP_BDF=BDF vfio_seed)
 *
 * Maps a memory BAR, lets 16 threads first-touch every page of it at once,
 * clears COMMAND.MEM and checks that a touch then raises SIGBUS at the
 * touched address, sets COMMAND.MEM again and checks that the data survived. The
 * device must be bound to vfio-pci (or be one of barmap's emulated devices
 * under `barmap run`). Prints one line per step; exit status 0 only if all
 * steps pass.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <setjmp.h>
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

#define THREADS 16
#define PAGE 4096UL
#define MIN_BAR (2UL << 20)
#define MAX_MAP (16UL << 20)

static int failures;
static sigjmp_buf touch_env;
static void *volatile sigbus_addr;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
	(void)sig;
	(void)ctx;
	sigbus_addr = info->si_addr;
	siglongjmp(touch_env, 1);
}

static int step(int ok, const char *what, const char *detail)
{
	printf("%-44s %s%s%s\n", what, ok ? "ok" : "FAIL", *detail ? ": " : "", detail);
	fflush(stdout);
	if (!ok)
		failures++;
	return ok;
}

static void die(const char *what)
{
	char detail[128];

	snprintf(detail, sizeof(detail), "%s", strerror(errno));
	step(0, what, detail);
	exit(1);
}

static int device;
static struct vfio_region_info config = { .argsz = sizeof(config) };
static volatile uint8_t *map;
static size_t map_len;
static pthread_barrier_t barrier;
static int wrong[THREADS];

static uint64_t word_of(long t, size_t page)
{
	return 0x5eed000000000000ULL | (uint64_t)t << 40 | page;
}

static uint16_t command_read(void)
{
	uint16_t cmd;

	if (pread(device, &cmd, 2, config.offset + PCI_COMMAND) != 2)
		die("read COMMAND");
	return cmd;
}

static void command_write(uint16_t cmd)
{
	if (pwrite(device, &cmd, 2, config.offset + PCI_COMMAND) != 2)
		die("write COMMAND");
}

/* Each thread reads every page, then writes and checks its own word in it. */
static void *toucher(void *arg)
{
	long t = (long)arg;

	pthread_barrier_wait(&barrier);
	for (size_t p = 0; p < map_len / PAGE; p++) {
		volatile uint64_t *w = (volatile uint64_t *)(map + p * PAGE) + t;

		(void)*(volatile uint64_t *)(map + p * PAGE);
		*w = word_of(t, p);
		if (*w != word_of(t, p))
			wrong[t]++;
	}
	return NULL;
}

static int words_intact(void)
{
	int bad = 0;

	for (size_t p = 0; p < map_len / PAGE; p++)
		for (long t = 0; t < THREADS; t++)
			if (((volatile uint64_t *)(map + p * PAGE))[t] != word_of(t, p))
				bad++;
	return bad;
}

int main(int argc, char *argv[])
{
	const char *bdf = argc > 1 ? argv[1] : getenv("BARMAP_BDF");
	char path[256], link[256], detail[256];
	int container, group, bar = -1;
	ssize_t n;

	if (!bdf) {
		fprintf(stderr, "usage: %s BDF [BAR]  (or set BARMAP_BDF)\n", argv[0]);
		return 2;
	}

	/* 1. Group and container. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		die("readlink iommu_group");
	link[n] = 0;
	snprintf(path, sizeof(path), "/dev/vfio/%s", basename(link));
	container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0)
		die("open /dev/vfio/vfio");
	if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		die("VFIO_GET_API_VERSION");
	group = open(path, O_RDWR);
	if (group < 0)
		die("open group");
	struct vfio_group_status status = { .argsz = sizeof(status) };
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("group viable");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container))
		die("VFIO_GROUP_SET_CONTAINER");
	int type = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0 ?
			   VFIO_TYPE1v2_IOMMU : VFIO_TYPE1_IOMMU;
	if (ioctl(container, VFIO_SET_IOMMU, type))
		die("VFIO_SET_IOMMU");
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");
	struct vfio_device_info info = { .argsz = sizeof(info) };
	if (ioctl(device, VFIO_DEVICE_GET_INFO, &info))
		die("VFIO_DEVICE_GET_INFO");
	snprintf(detail, sizeof(detail), "%s, group %s, %s, %u regions, %u irqs", bdf, basename(link),
		 type == VFIO_TYPE1v2_IOMMU ? "type1v2" : "type1", info.num_regions, info.num_irqs);
	step(1, "1. open device", detail);

	/* 2. The memory BAR and COMMAND.MEM. */
	config.index = VFIO_PCI_CONFIG_REGION_INDEX;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &config))
		die("GET_REGION_INFO config");
	struct vfio_region_info region = { .argsz = sizeof(region) };
	for (int i = 0; i <= VFIO_PCI_BAR5_REGION_INDEX; i++) {
		if (argc > 2 && i != atoi(argv[2]))
			continue;
		region = (struct vfio_region_info){ .argsz = sizeof(region), .index = i };
		if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &region))
			die("GET_REGION_INFO BAR");
		if ((region.flags & VFIO_REGION_INFO_FLAG_MMAP) && (argc > 2 || region.size >= MIN_BAR)) {
			bar = i;
			break;
		}
	}
	if (bar < 0) {
		step(0, "2. memory BAR", "no mmappable BAR of 2 MiB or more");
		return 1;
	}
	uint16_t cmd = command_read();
	if (!(cmd & PCI_COMMAND_MEMORY))
		command_write(cmd | PCI_COMMAND_MEMORY);
	map_len = region.size < MAX_MAP ? region.size : MAX_MAP;
	map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, device, region.offset);
	if (map == MAP_FAILED)
		die("2. mmap BAR");
	snprintf(detail, sizeof(detail), "BAR%d, %llu MiB, mapped %zu MiB, COMMAND 0x%04x", bar,
		 (unsigned long long)region.size >> 20, map_len >> 20, command_read());
	step(command_read() & PCI_COMMAND_MEMORY, "2. map BAR with COMMAND.MEM set", detail);

	/* 3. Concurrent first touch. */
	pthread_t threads[THREADS];
	int bad = 0;
	pthread_barrier_init(&barrier, NULL, THREADS);
	for (long t = 0; t < THREADS; t++)
		pthread_create(&threads[t], NULL, toucher, (void *)t);
	for (long t = 0; t < THREADS; t++) {
		pthread_join(threads[t], NULL);
		bad += wrong[t];
	}
	snprintf(detail, sizeof(detail), "%d threads x %zu pages, %d wrong", THREADS, map_len / PAGE, bad);
	step(bad == 0, "3. concurrent first touch", detail);

	/* 4. Memory disabled: a touch by this process is a SIGBUS at the
	 * touched address (as a DPDK thread would meet it). */
	command_write(command_read() & ~PCI_COMMAND_MEMORY);
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO }, old;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old);
	volatile uint8_t *target = map + map_len / 2;
	sigbus_addr = NULL;
	if (sigsetjmp(touch_env, 1) == 0) {
		(void)*(volatile uint64_t *)target;
		snprintf(detail, sizeof(detail), "the touch read memory");
	} else {
		snprintf(detail, sizeof(detail), "SIGBUS at %s address",
			 sigbus_addr == (void *)target ? "the touched" : "another");
	}
	sigaction(SIGBUS, &old, NULL);
	step(sigbus_addr == (void *)target, "4. COMMAND.MEM clear: touch is SIGBUS", detail);

	/* 5. Memory re-enabled: the data is still there. */
	command_write(command_read() | PCI_COMMAND_MEMORY);
	bad = words_intact();
	snprintf(detail, sizeof(detail), "%d of %zu words written before differ", bad,
		 THREADS * (map_len / PAGE));
	step(bad == 0, "5. COMMAND.MEM set again: data intact", detail);

	munmap((void *)map, map_len);
	close(device);
	close(group);
	close(container);
	printf("%s\n", failures ? "FAILED" : "PASSED");
	return failures ? 1 : 0;
}
