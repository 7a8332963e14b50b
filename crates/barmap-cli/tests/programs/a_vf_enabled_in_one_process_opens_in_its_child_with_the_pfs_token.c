// SPDX-License-Identifier: MIT
/*
 * SR-IOV across the processes of a run (`barmap run --shared --device
 * igb,sriov=2`), as across the kernel's users: VFs that one process
 * enabled through sriov_numvfs are PCI functions every process sees; a
 * forked child and an exec'd program open them with the token the parent
 * set on the PF (VFIO_DEVICE_FEATURE_PCI_VF_TOKEN), and without it (or
 * with another) get EACCES; the PF's NumVFs in config space is the count
 * any process wrote; while VFs are enabled a new count is EBUSY, and
 * removing them waits until no process has one open (as the kernel's VF
 * removal waits for vfio-pci's release); VFs a child enabled open in the
 * parent.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/wait.h>

#include "bt_sriov.h"

/* The PF's SR-IOV capability's NumVFs (offset 0x10), through the PF fd. */
static int numvfs_in_config(struct bt_dev *d)
{
	uint32_t at = 0x100, h;
	uint16_t n = 0;

	for (int i = 0; i < 64 && at >= 0x100; i++) {
		DIE_UNLESS(pread(d->device, &h, 4, d->config_off + at) == 4, "read ext cap");
		if ((h & 0xffff) == 0x10) {
			DIE_UNLESS(pread(d->device, &n, 2, d->config_off + at + 0x10) == 2,
				   "read NumVFs");
			return n;
		}
		at = h >> 20;
	}
	return -1;
}

/* Opens `vf` with `token`: 0 if it opened (and was closed again), else
 * the errno. Reads its vendor and device ID (0x8086:0x10ca) first. */
static int open_vf(const char *vf, const char *token)
{
	int c, g, fd;
	uint32_t id = 0;
	struct vfio_region_info cfg = { .argsz = sizeof(cfg),
					.index = VFIO_PCI_CONFIG_REGION_INDEX };

	fd = bt_open_with_token(vf, token, &c, &g);
	if (fd < 0) {
		int e = errno;

		close(g);
		close(c);
		return e;
	}
	if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &cfg) != 0 ||
	    pread(fd, &id, 4, cfg.offset) != 4 || id != 0x10ca8086)
		return -2;
	close(fd);
	close(g);
	close(c);
	return 0;
}

static const char *the_pf;
static volatile int disabled = -1;

/* Removes the VFs: the store's result in `disabled`. */
static void *disable_vfs(void *arg)
{
	(void)arg;
	disabled = bt_set_numvfs(the_pf, "0");
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t remover;
	const char *pf;
	struct bt_dev d;
	char vf0[16], vf1[16];
	int status, to_parent[2], to_child[2];
	char byte;
	pid_t pid;

	if (argc == 3 && strcmp(argv[1], "exec-vf") == 0) {
		/* The exec'd program: VF1 with and without the token. */
		int bad = 0;

		bad |= (open_vf(argv[2], NULL) != EACCES) << 0;
		bad |= (open_vf(argv[2], UUID_B) != EACCES) << 1;
		bad |= (open_vf(argv[2], UUID_A) != 0) << 2;
		return bad;
	}
	pf = bt_env("BARMAP_BDF", argc, argv, 1);
	bt_open(&d, argc, argv);
	CHECK(bt_feature_token(d.device, VFIO_DEVICE_FEATURE_SET, UUID_A_BYTES, 16) == 0,
	      "the parent sets the PF's VF token");
	CHECK(bt_set_numvfs(pf, "2") == 0, "the parent enables two VFs");
	DIE_UNLESS(bt_link_base(pf, "virtfn0", vf0, sizeof(vf0)) == 0, "virtfn0");
	DIE_UNLESS(bt_link_base(pf, "virtfn1", vf1, sizeof(vf1)) == 0, "virtfn1");
	CHECK(numvfs_in_config(&d) == 2, "the PF's NumVFs is 2 (%d)", numvfs_in_config(&d));

	/* A forked child opens VF0 with the token and keeps it open. */
	DIE_UNLESS(pipe(to_parent) == 0 && pipe(to_child) == 0, "pipe");
	pid = fork();
	if (pid == 0) {
		int c, g, fd, bad = 0;

		bad |= (open_vf(vf0, NULL) != EACCES) << 0;
		bad |= (open_vf(vf0, UUID_B) != EACCES) << 1;
		bad |= (numvfs_in_config(&d) != 2) << 2;
		fd = bt_open_with_token(vf0, UUID_A, &c, &g);
		bad |= (fd < 0) << 3;
		byte = (char)bad;
		if (write(to_parent[1], &byte, 1) != 1 || read(to_child[0], &byte, 1) != 1)
			_exit(100);
		close(fd);
		_exit(bad);
	}
	DIE_UNLESS(pid > 0, "fork");
	DIE_UNLESS(read(to_parent[0], &byte, 1) == 1, "the child's report");
	CHECK(byte == 0, "a forked child opens the parent's VF with the PF's token only (%#x)", byte);
	CHECK(bt_set_numvfs(pf, "1") == EBUSY,
	      "while VFs are enabled (one open in the child), a new count is EBUSY");
	CHECK(bt_feature_token(d.device, VFIO_DEVICE_FEATURE_SET, UUID_B_BYTES, 16) == 0,
	      "the token may change while a VF is open");
	DIE_UNLESS(bt_feature_token(d.device, VFIO_DEVICE_FEATURE_SET, UUID_A_BYTES, 16) == 0,
		   "token back");
	the_pf = pf;
	DIE_UNLESS(pthread_create(&remover, NULL, disable_vfs, NULL) == 0, "pthread_create");
	usleep(300 * 1000);
	CHECK(disabled == -1, "removing the VFs waits while the child holds one open");
	DIE_UNLESS(write(to_child[1], "x", 1) == 1, "release the child");
	DIE_UNLESS(waitpid(pid, &status, 0) == pid, "wait");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child closed its VF and exited");
	pthread_join(remover, NULL);
	CHECK(disabled == 0 && numvfs_in_config(&d) == 0,
	      "once the child closed it, the removal completes (%d)", disabled);
	CHECK(bt_set_numvfs(pf, "2") == 0, "the parent enables two VFs again");
	DIE_UNLESS(bt_link_base(pf, "virtfn1", vf1, sizeof(vf1)) == 0, "virtfn1");

	/* An exec'd program opens VF1. */
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", argv[0], "exec-vf", vf1, (char *)NULL);
		_exit(127);
	}
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork for exec");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "an exec'd program opens VF1 with the PF's token only (status %d)",
	      WIFEXITED(status) ? WEXITSTATUS(status) : -1);

	CHECK(bt_set_numvfs(pf, "0") == 0, "with no VF open anywhere, the parent removes them");
	CHECK(numvfs_in_config(&d) == 0, "the PF's NumVFs is 0");

	/* The other way round: a child enables, the parent opens. */
	pid = fork();
	if (pid == 0)
		_exit(bt_set_numvfs(pf, "1") == 0 && numvfs_in_config(&d) == 1 ? 0 : 1);
	DIE_UNLESS(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a child enables one VF");
	CHECK(numvfs_in_config(&d) == 1, "the parent's PF reads NumVFs 1");
	CHECK(bt_link_base(pf, "virtfn0", vf0, sizeof(vf0)) == 0 && open_vf(vf0, UUID_A) == 0,
	      "the parent opens the VF its child enabled, with its token");
	CHECK(open_vf(vf0, NULL) == EACCES, "and without the token it is EACCES");
	CHECK(bt_set_numvfs(pf, "0") == 0, "the VF is removed");
	return bt_exit();
}
