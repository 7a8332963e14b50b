// SPDX-License-Identifier: MIT
/*
 * dup2 over device fds while other threads map and touch BAR2 through them
 * never gives SIGBUS while memory is enabled, and the data stays right.
 *
 * - The "swapper" thread loops dup2(device, alias) as fast as it can:
 *   `alias` names the device file all along (the kernel replaces it in one
 *   step), so every mmap through it must reach the device.
 * - The "closer" thread loops: dup2(device, spare), mmap of its window
 *   through `spare`, write and read back, dup2(null, spare) (the device fd
 *   the mapping came through is closed; the mapping lives on), write and
 *   read back again, munmap.
 * - The "mapper" threads loop mmap of their own 1 MiB window of BAR2
 *   through `alias` (the first) or `device`, write every page, read it
 *   back and munmap.
 * Threads: BT_THREADS mappers (default 2); time: BT_MS (default 1500).
 */
#include <pthread.h>
#include <time.h>

#include "barmap_test.h"

#define WINDOW (1u << 20)
#define PAGE 4096u
#define MAX_THREADS 14

static struct bt_dev dev;
static int alias, spare, null_fd;
static long run_ms;
static volatile int stop;

struct worker {
	unsigned int index;
	int fd;
	unsigned long rounds;
	unsigned long bad;
	unsigned long map_failures;
};

static unsigned long fill_and_check(volatile uint32_t *p, uint32_t tag)
{
	unsigned long bad = 0;

	for (unsigned int pg = 0; pg < WINDOW / PAGE; pg++)
		p[pg * PAGE / 4] = tag + pg;
	for (unsigned int pg = 0; pg < WINDOW / PAGE; pg++)
		if (p[pg * PAGE / 4] != tag + pg)
			bad++;
	return bad;
}

static void *map_loop(void *arg)
{
	struct worker *w = arg;
	uint64_t off = dev.bar[2].offset + (uint64_t)w->index * WINDOW;

	while (!stop) {
		void *p = mmap(NULL, WINDOW, PROT_READ | PROT_WRITE, MAP_SHARED, w->fd, off);

		if (p == MAP_FAILED) {
			w->map_failures++;
			continue;
		}
		w->bad += fill_and_check(p, (w->index << 24) ^ (uint32_t)w->rounds);
		DIE_UNLESS(munmap(p, WINDOW) == 0, "munmap of a window");
		w->rounds++;
	}
	return NULL;
}

/* The swapper: dup2 of the device over a device fd, all the time. */
static void *swap_loop(void *arg)
{
	struct worker *w = arg;

	while (!stop) {
		DIE_UNLESS(dup2(dev.device, alias) == alias, "dup2 of the device over its alias");
		w->rounds++;
	}
	return NULL;
}

/* The closer: a mapping that outlives the device fd it came through. */
static void *close_loop(void *arg)
{
	struct worker *w = arg;
	uint64_t off = dev.bar[2].offset + (uint64_t)w->index * WINDOW;

	while (!stop) {
		void *p;

		DIE_UNLESS(dup2(dev.device, spare) == spare, "dup2 of the device over the spare fd");
		p = mmap(NULL, WINDOW, PROT_READ | PROT_WRITE, MAP_SHARED, spare, off);
		if (p == MAP_FAILED) {
			w->map_failures++;
			continue;
		}
		w->bad += fill_and_check(p, 0xd0000000u ^ (uint32_t)w->rounds);
		/* The mapping keeps the device; the fd it came through goes. */
		DIE_UNLESS(dup2(null_fd, spare) == spare, "dup2 of /dev/null over a device fd");
		w->bad += fill_and_check(p, 0xe0000000u ^ (uint32_t)w->rounds);
		DIE_UNLESS(munmap(p, WINDOW) == 0, "munmap of the closer's window");
		w->rounds++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct worker workers[MAX_THREADS + 2];
	pthread_t tid[MAX_THREADS + 2];
	void *(*role[3])(void *) = { swap_loop, close_loop, map_loop };
	unsigned int mappers = getenv("BT_THREADS") ? atoi(getenv("BT_THREADS")) : 2;
	unsigned long rounds = 0, bad = 0, failures = 0;
	long end;

	run_ms = getenv("BT_MS") ? atol(getenv("BT_MS")) : 1500;
	if (mappers < 1 || mappers > MAX_THREADS)
		mappers = 2;
	bt_sigbus_fails();
	bt_open(&dev, argc, argv);
	bt_memory(&dev, 1);
	DIE_UNLESS(dev.bar[2].size >= (uint64_t)(mappers + 2) * WINDOW,
		   "BAR2 holds a window per thread");
	alias = dup(dev.device);
	spare = dup(dev.device);
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	DIE_UNLESS(alias >= 0 && spare >= 0 && null_fd >= 0, "dup and open");
	for (unsigned int i = 0; i < mappers + 2; i++) {
		workers[i] = (struct worker){ .index = i, .fd = i == 2 ? alias : dev.device };
		DIE_UNLESS(pthread_create(&tid[i], NULL, role[i < 2 ? i : 2], &workers[i]) == 0,
			   "pthread_create");
	}
	end = bt_now_ms() + run_ms;
	while (bt_now_ms() < end)
		usleep(10000);
	stop = 1;
	for (unsigned int i = 0; i < mappers + 2; i++) {
		pthread_join(tid[i], NULL);
		if (i > 0)
			rounds += workers[i].rounds;
		bad += workers[i].bad;
		failures += workers[i].map_failures;
	}
	CHECK(workers[0].rounds > 0, "the swapper dup2'd the device over its alias %lu times",
	      workers[0].rounds);
	CHECK(workers[1].rounds > 0,
	      "the closer mapped through a device fd and dup2'd over it %lu times", workers[1].rounds);
	CHECK(workers[2].rounds > 0, "a mapper mapped through the alias %lu times",
	      workers[2].rounds);
	CHECK(failures == 0, "every mmap through a device fd succeeded (%lu failed)", failures);
	CHECK(bad == 0, "every page read back what its thread wrote over %lu windows (%lu wrong)",
	      rounds, bad);
	return bt_exit();
}
