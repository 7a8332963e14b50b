// SPDX-License-Identifier: MIT
/*
 * /init of the guest that QEMU 11.1 boots with two barmap devices served
 * by `barmap serve` over vfio-user (examples/qemu_vfio_user.sh):
 *
 * 1. the ioat model (8086:2021): it loads dca.ko and ioatdma.ko; ioatdma's
 *    probe runs its DMA self-test (a memcpy through the channel, checked),
 *    so "barmap-guest: ioatdma PASS" means the guest's own driver bound the
 *    device and a DMA copy went through the server into guest memory; with
 *    /dmatest.ko it then runs dmatest on the channel and prints its summary;
 * 2. the default model (1234:ba00): it maps BAR2 through sysfs resource2
 *    (QEMU maps the server's memfd there), writes a pattern, reads it back
 *    ("barmap-guest: BAR2 PASS"), then touches the BAR every 100 ms
 *    ("barmap-guest: BAR2 touching"), while the host clears COMMAND.MEM from
 *    outside (`barmap ctl command-mem off`). The server truncates the memfd:
 *    QEMU's next access through its mapping gets SIGBUS, and QEMU dies of
 *    it. A guest that is still alive after 30 s prints "BAR2 NOT REVOKED".
 *
 * Built static.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static unsigned read_hex(const char *dir, const char *name)
{
	char path[512], text[32] = { 0 };
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (read(fd, text, sizeof(text) - 1) < 0)
		text[0] = 0;
	close(fd);
	return (unsigned)strtoul(text, NULL, 16);
}

/* The sysfs directory of the first function with these IDs. */
static int find(unsigned vendor, unsigned device, char *out, size_t n)
{
	const char *base = "/sys/bus/pci/devices";
	struct dirent *e;
	DIR *d = opendir(base);
	char dir[512];

	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", base, e->d_name);
		if (read_hex(dir, "vendor") == vendor && read_hex(dir, "device") == device) {
			snprintf(out, n, "%s", dir);
			closedir(d);
			return 0;
		}
	}
	if (d)
		closedir(d);
	return -1;
}

static int load(const char *path, const char *params)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0)
		return -1;
	rc = (int)syscall(SYS_finit_module, fd, params, 0);
	close(fd);
	return rc;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0) {
		if (write(fd, text, strlen(text)) < 0)
			printf("barmap-guest: writing %s failed\n", path);
		close(fd);
	}
}

/* Prints the kernel log lines that contain `what`. */
static void print_klog(const char *what)
{
	static char buf[1 << 17];
	int n = (int)syscall(SYS_syslog, 3, buf, (int)sizeof(buf) - 1);
	char *line, *save;

	if (n <= 0)
		return;
	buf[n] = 0;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strstr(line, what))
			printf("barmap-guest: klog: %s\n", line);
}

static void sleep_ms(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&t, NULL);
}

/* Whether the kernel log has a line containing `what`. */
static int klog_has(const char *what)
{
	static char buf[1 << 17];
	int n = (int)syscall(SYS_syslog, 3, buf, (int)sizeof(buf) - 1);

	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, what) != NULL;
}

static int run_ioat(void)
{
	const char *drv = "/sys/bus/pci/drivers/ioatdma";
	struct dirent *e;
	DIR *d;
	int bound = 0;

	if (load("/dca.ko", "") || load("/ioatdma.ko", ""))
		return printf("barmap-guest: ioatdma FAIL (loading the modules)\n"), 1;
	d = opendir(drv);
	while (d && (e = readdir(d)))
		if (!strncmp(e->d_name, "0000:", 5)) {
			printf("barmap-guest: ioatdma bound %s\n", e->d_name);
			bound++;
		}
	if (d)
		closedir(d);
	printf("barmap-guest: ioatdma %s\n", bound ? "PASS (bound: its DMA self-test passed)"
						    : "FAIL (not bound)");
	if (bound && access("/dmatest.ko", F_OK) == 0) {
		if (load("/dmatest.ko", "iterations=200 threads_per_chan=1 timeout=20000"))
			return printf("barmap-guest: dmatest FAIL (loading)\n"), 1;
		write_file("/sys/module/dmatest/parameters/channel", "dma0chan0");
		write_file("/sys/module/dmatest/parameters/run", "1");
		/* Until its summary is in the kernel log (60 s at most). */
		for (int i = 0; i < 600 && !klog_has("summary"); i++)
			sleep_ms(100);
		print_klog("summary");
	}
	return !bound;
}

static int run_bar2(void)
{
	char dev[512], path[600];
	struct stat st;
	volatile uint64_t *bar;
	size_t len, i;
	int fd, bad = 0;

	if (find(0x1234, 0xba00, dev, sizeof(dev)))
		return printf("barmap-guest: no 1234:ba00 device\n"), 1;
	snprintf(path, sizeof(path), "%s/enable", dev);
	write_file(path, "1");
	snprintf(path, sizeof(path), "%s/resource2", dev);
	fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0 || fstat(fd, &st))
		return printf("barmap-guest: open %s failed\n", path), 1;
	len = (size_t)st.st_size;
	bar = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED)
		return printf("barmap-guest: mmap %s failed\n", path), 1;
	for (i = 0; i < len / 8; i += 512)
		bar[i] = 0xba5eba11ULL ^ i;
	for (i = 0; i < len / 8; i += 512)
		bad += bar[i] != (0xba5eba11ULL ^ i);
	printf("barmap-guest: BAR2 %s (%zu KiB, %d bad)\n", bad ? "FAIL" : "PASS", len >> 10, bad);
	printf("barmap-guest: BAR2 touching\n");
	fflush(stdout);
	for (i = 0; i < 300; i++) {
		bar[0] = i;
		if (bar[0] != i)
			printf("barmap-guest: BAR2 touch %zu read back %llx\n", i,
			       (unsigned long long)bar[0]);
		if (i % 10 == 0) {
			printf("barmap-guest: BAR2 touch %zu ok\n", i);
			fflush(stdout);
		}
		sleep_ms(100);
	}
	printf("barmap-guest: BAR2 NOT REVOKED\n");
	return 1;
}

int main(void)
{
	mkdir("/sys", 0755);
	if (mount("sysfs", "/sys", "sysfs", 0, NULL))
		printf("barmap-guest: mount sysfs failed\n");
	run_ioat();
	fflush(stdout);
	run_bar2();
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
