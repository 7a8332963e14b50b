// SPDX-License-Identifier: MIT
/*
 * /init of the guest that QEMU boots with a barmap device passed through
 * its own vfio-pci (examples/qemu_vfio_pci.sh). With barmap's default
 * model (1234:ba00) it enables the device, maps its BAR2 through sysfs
 * resource2, writes a pattern across it, reads it back and prints
 * "barmap-guest: BAR2 PASS" (or FAIL). With /dca.ko and /ioatdma.ko in the
 * initramfs (the ioat model, 8086:2021) it loads them: ioatdma's probe
 * runs its DMA self-test (a memcpy through the channel, checked), so
 * "barmap-guest: ioatdma PASS" means the guest's own driver bound the
 * device and its DMA copy went through QEMU's IOMMU mappings. With
 * /igb.ko (the igb model, 8086:10c9) it loads dca, i2c-algo-bit and igb,
 * brings the port's interface up and waits for its carrier: "barmap-guest:
 * igb PASS" means the guest's igb driver reset the port, read its NVM and
 * PHY, and saw the link come up. Then it powers the VM off. Built static.
 */
#include <dirent.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
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

static int run(void)
{
	const char *base = "/sys/bus/pci/devices";
	char dev[512], path[600];
	struct dirent *e;
	struct stat st;
	DIR *d;
	int fd, bad = 0;
	size_t len, i;
	volatile uint64_t *bar;

	mkdir("/sys", 0755);
	if (mount("sysfs", "/sys", "sysfs", 0, NULL))
		return printf("barmap-guest: mount sysfs failed\n"), 1;
	d = opendir(base);
	if (!d)
		return printf("barmap-guest: no %s\n", base), 1;
	dev[0] = 0;
	while ((e = readdir(d))) {
		snprintf(path, sizeof(path), "%s/%.300s", base, e->d_name);
		if (read_hex(path, "vendor") == 0x1234 && read_hex(path, "device") == 0xba00) {
			snprintf(dev, sizeof(dev), "%s/%.300s", base, e->d_name);
			break;
		}
	}
	closedir(d);
	if (!dev[0])
		return printf("barmap-guest: no 1234:ba00 device\n"), 1;
	printf("barmap-guest: found %s\n", dev);
	snprintf(path, sizeof(path), "%.512s/enable", dev);
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, "1", 1) != 1)
		return printf("barmap-guest: enable failed\n"), 1;
	close(fd);
	snprintf(path, sizeof(path), "%.512s/resource2", dev);
	fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0 || fstat(fd, &st))
		return printf("barmap-guest: open resource2 failed\n"), 1;
	len = st.st_size > (1 << 20) ? (1 << 20) : (size_t)st.st_size;
	printf("barmap-guest: BAR2 is %lld bytes; testing %zu\n", (long long)st.st_size, len);
	bar = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED)
		return printf("barmap-guest: mmap resource2 failed\n"), 1;
	for (i = 0; i < len / 8; i += 512)
		bar[i] = 0xba2ba2ba20000000ull + i;
	for (i = 0; i < len / 8; i += 512)
		bad += bar[i] != 0xba2ba2ba20000000ull + i;
	printf("barmap-guest: BAR2 %s (%zu words written and read back, %d wrong)\n",
	       bad ? "FAIL" : "PASS", len / 8 / 512, bad);
	return bad != 0;
}

/* Loads the module at `path` (finit_module); 0 or -1. */
static int load(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0)
		return -1;
	rc = (int)syscall(SYS_finit_module, fd, "", 0);
	close(fd);
	return rc;
}

/* The ioat model: the guest's ioatdma binds and its self-test copies. */
static int run_ioat(void)
{
	const char *drv = "/sys/bus/pci/drivers/ioatdma";
	struct dirent *e;
	DIR *d;
	int bound = 0;

	mkdir("/sys", 0755);
	if (mount("sysfs", "/sys", "sysfs", 0, NULL))
		return printf("barmap-guest: mount sysfs failed\n"), 1;
	if (load("/dca.ko") || load("/ioatdma.ko"))
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
	return !bound;
}

/* The igb model: the guest's igb binds, its interface comes up with link. */
static int run_igb(void)
{
	char path[512], name[IFNAMSIZ] = { 0 }, carrier[8];
	struct ifreq ifr;
	struct dirent *e;
	DIR *d;
	int sock, i, fd;

	mkdir("/sys", 0755);
	if (mount("sysfs", "/sys", "sysfs", 0, NULL))
		return printf("barmap-guest: mount sysfs failed\n"), 1;
	if (load("/dca.ko") || load("/i2c-algo-bit.ko") || load("/igb.ko"))
		return printf("barmap-guest: igb FAIL (loading the modules)\n"), 1;
	d = opendir("/sys/class/net");
	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.' && strcmp(e->d_name, "lo") && strlen(e->d_name) < IFNAMSIZ)
			memcpy(name, e->d_name, strlen(e->d_name) + 1);
	if (d)
		closedir(d);
	if (!name[0])
		return printf("barmap-guest: igb FAIL (no interface: not bound)\n"), 1;
	printf("barmap-guest: igb bound, interface %s\n", name);
	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (sock < 0 || ioctl(sock, SIOCGIFFLAGS, &ifr))
		return printf("barmap-guest: igb FAIL (SIOCGIFFLAGS)\n"), 1;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(sock, SIOCSIFFLAGS, &ifr))
		return printf("barmap-guest: igb FAIL (bringing %s up)\n", name), 1;
	snprintf(path, sizeof(path), "/sys/class/net/%s/carrier", name);
	/* The driver's watchdog checks the link every 2 s; TCG is slow. */
	for (i = 0; i < 120; i++) {
		memset(carrier, 0, sizeof(carrier));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			if (read(fd, carrier, sizeof(carrier) - 1) < 0)
				carrier[0] = 0;
			close(fd);
		}
		if (carrier[0] == '1')
			return printf("barmap-guest: igb PASS (link up on %s after %d s)\n", name,
				      i / 2), 0;
		usleep(500000);
	}
	return printf("barmap-guest: igb FAIL (no carrier on %s in 60 s)\n", name), 1;
}

int main(void)
{
	if (access("/igb.ko", F_OK) == 0)
		run_igb();
	else if (access("/ioatdma.ko", F_OK) == 0)
		run_ioat();
	else
		run();
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
