// SPDX-License-Identifier: MIT
/*
 * The PF side of the VF token: while a VF is open, the PF opens only with
 * the current token (none or another: EACCES), through the group and the
 * cdev, and the token cannot be replaced by opening the PF; once no VF
 * is open, opening the PF with a token sets it. Across processes: a VF
 * that a forked child holds open counts too, and the child's VF needs
 * the token the parent set. Run with --device igb,sriov=2.
 */
#include <sys/wait.h>

#include "bt_sriov.h"

int main(int argc, char **argv)
{
	const char *pf = bt_env("BARMAP_BDF", argc, argv, 1);
	char vf[16];
	int pc, pg, pfd, c, g, vfd, iommufd, cdev, ready[2], go[2];
	pid_t child;
	char byte = 0;

	bt_one_vf(pf, vf);
	pfd = bt_open_with_token(pf, UUID_A, &pc, &pg);
	DIE_UNLESS(pfd >= 0, "open the PF with token A");
	close(pfd);
	close(pg);
	close(pc);
	vfd = bt_open_with_token(vf, UUID_A, &c, &g);
	CHECK(vfd >= 0, "the VF opens with A after the PF closed");

	pfd = bt_open_with_token(pf, NULL, &pc, &pg);
	CHECK(pfd < 0 && errno == EACCES, "the PF without a token while a VF is open is EACCES");
	pfd = bt_open_with_token(pf, UUID_B, &pc, &pg);
	CHECK(pfd < 0 && errno == EACCES, "the PF with another token while a VF is open is EACCES");
	iommufd = open("/dev/iommu", O_RDWR);
	cdev = bt_open_cdev(pf);
	CHECK(bt_bind(cdev, iommufd, NULL) < 0 && errno == EACCES,
	      "binding the PF's cdev without a token while a VF is open is EACCES");
	CHECK(bt_bind(cdev, iommufd, UUID_A_BYTES) == 0, "with the current token it binds");
	close(cdev);

	/* Close the VF: the PF's open with B now sets the token to B. */
	close(vfd);
	close(g);
	close(c);
	pfd = bt_open_with_token(pf, UUID_B, &pc, &pg);
	CHECK(pfd >= 0, "with no VF open the PF opens with B");
	close(pfd);
	close(pg);
	close(pc);
	CHECK(bt_open_with_token(vf, UUID_A, &c, &g) < 0 && errno == EACCES,
	      "the VF's old token A no longer opens it");

	/* Across processes. */
	DIE_UNLESS(pipe(ready) == 0 && pipe(go) == 0, "pipes");
	child = fork();
	DIE_UNLESS(child >= 0, "fork");
	if (child == 0) {
		int cc, cg, fd;

		fd = bt_open_with_token(vf, NULL, &cc, &cg);
		if (!(fd < 0 && errno == EACCES))
			_exit(3);
		fd = bt_open_with_token(vf, UUID_B, &cc, &cg);
		if (fd < 0)
			_exit(4);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &byte, 1) != 1)
			_exit(5);
		_exit(0);
	}
	CHECK(read(ready[0], &byte, 1) == 1, "a forked child opened the VF with B (the parent's)");
	pfd = bt_open_with_token(pf, NULL, &pc, &pg);
	CHECK(pfd < 0 && errno == EACCES,
	      "while the child holds the VF, the parent's PF open without a token is EACCES");
	pfd = bt_open_with_token(pf, UUID_B, &pc, &pg);
	CHECK(pfd >= 0, "and with B it opens");
	close(pfd);
	close(pg);
	close(pc);
	CHECK(write(go[1], "g", 1) == 1, "the child is told to exit");
	{
		int st = 0;

		waitpid(child, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's checks passed (%d)",
		      WEXITSTATUS(st));
	}
	pfd = bt_open_with_token(pf, NULL, &pc, &pg);
	CHECK(pfd >= 0, "once the child is gone the PF opens without a token");
	close(pfd);
	close(pg);
	close(pc);
	close(iommufd);
	CHECK(bt_set_numvfs(pf, "0") == 0, "the VF is removed");
	return bt_exit();
}
