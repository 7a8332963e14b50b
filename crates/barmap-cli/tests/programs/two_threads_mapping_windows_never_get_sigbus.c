// SPDX-License-Identifier: MIT
/*
 * Threads that each loop mmap of their own 1 MiB window of BAR2 through the
 * device fd, write every page, read it back and munmap, all at once, never
 * get SIGBUS while memory is enabled, and always read back what they wrote.
 * The kernel hands a window's addresses to the next mmap as soon as the
 * munmap took them away, so the threads keep reusing each other's
 * addresses. Threads: BT_THREADS (default 2); time: BT_MS (default 1500).
 */
#include <pthread.h>
#include <time.h>

#include "barmap_test.h"

#define WINDOW (1u << 20)
#define PAGE 4096u
#define MAX_THREADS 16

static struct bt_dev dev;
static long run_ms;
static volatile int wrong;

struct worker {
	unsigned int index;
	unsigned long rounds;
	unsigned long bad;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t off = (uint64_t)w->index * WINDOW;
	long end = bt_now_ms() + run_ms;

	while (bt_now_ms() < end) {
		volatile uint32_t *p = (volatile uint32_t *)bt_map(&dev, 2, off, WINDOW);
		uint32_t tag = (w->index << 24) ^ (uint32_t)w->rounds;

		for (unsigned int pg = 0; pg < WINDOW / PAGE; pg++)
			p[pg * PAGE / 4] = tag + pg;
		for (unsigned int pg = 0; pg < WINDOW / PAGE; pg++)
			if (p[pg * PAGE / 4] != tag + pg)
				w->bad++;
		DIE_UNLESS(munmap((void *)p, WINDOW) == 0, "munmap of a window");
		w->rounds++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct worker workers[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	unsigned int threads = getenv("BT_THREADS") ? atoi(getenv("BT_THREADS")) : 2;
	unsigned long rounds = 0, bad = 0;

	run_ms = getenv("BT_MS") ? atol(getenv("BT_MS")) : 1500;
	if (threads < 2 || threads > MAX_THREADS)
		threads = 2;
	bt_sigbus_fails();
	bt_open(&dev, argc, argv);
	bt_memory(&dev, 1);
	DIE_UNLESS(dev.bar[2].size >= (uint64_t)threads * WINDOW, "BAR2 holds a window per thread");
	for (unsigned int i = 0; i < threads; i++) {
		workers[i] = (struct worker){ .index = i };
		DIE_UNLESS(pthread_create(&tid[i], NULL, work, &workers[i]) == 0, "pthread_create");
	}
	for (unsigned int i = 0; i < threads; i++) {
		pthread_join(tid[i], NULL);
		rounds += workers[i].rounds;
		bad += workers[i].bad;
	}
	(void)wrong;
	CHECK(rounds >= threads, "%u threads mapped, wrote, read back and unmapped %lu windows",
	      threads, rounds);
	CHECK(bad == 0, "every page read back what its thread wrote (%lu wrong)", bad);
	return bt_exit();
}
