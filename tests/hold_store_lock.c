/*
 * hold_store_lock BACKEND PATH SECONDS: open the key store PATH with
 * BACKEND, enter a write transaction (ks_write()), print "held" on stdout,
 * keep it open for SECONDS, then roll it back (nothing is written), print
 * "released" and exit 0. Tests use it to hold a store's write lock from
 * another process (tests/integration/test_storelock.py). Exit 1 when the
 * store cannot be opened or the lock taken, 2 on bad usage.
 */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "keystore.h"

/* Sleep ms milliseconds by CLOCK_MONOTONIC, through interruptions. */
static void hold_sleep(long ms)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) ==
	       EINTR)
		;
}

static int hold_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	const long *ms = arg;

	(void)txn;
	(void)err;
	printf("held\n");
	fflush(stdout);
	hold_sleep(*ms);
	return 1;
}

int main(int argc, char **argv)
{
	struct ks_options opts = KS_OPTIONS_INIT;
	const struct ks_backend *be;
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	char *end = NULL;
	double seconds;
	long ms;
	int rc;

	if (argc != 4) {
		fprintf(stderr, "usage: %s BACKEND PATH SECONDS\n", argv[0]);
		return 2;
	}
	be = ks_backend_find(argv[1]);
	seconds = strtod(argv[3], &end);
	if (!be || !end || *end || seconds < 0 || seconds > 3600) {
		fprintf(stderr, "%s: bad backend or seconds\n", argv[0]);
		return 2;
	}
	ms = (long)(seconds * 1000);
	opts.path = argv[2];
	opts.busy_timeout_ms = 60000;
	rc = ks_open(&store, be, &opts, &err);
	if (!rc)
		rc = ks_write(store, hold_fn, &ms, &err);
	ks_close(store);
	if (rc != 1) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], ks_err_name(rc),
			err.text);
		return 1;
	}
	printf("released\n");
	return 0;
}
