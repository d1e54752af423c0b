/*
 * A corrupted or hostile SQLite store file: the input's bytes are written
 * to a file that the sqlite backend then opens, lists, reads key by key and
 * checks, loading every blob it finds as a key, the way jwksd starts up.
 * Any error is fine; a crash, a leak or a hang is not.
 *
 * One temporary directory per process (under $TMPDIR, or /tmp) holds the
 * file, rewritten for every input together with the removal of SQLite's
 * -wal, -shm and -journal files left by the input before, so that each
 * input is read alone. The directory is removed at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "keystore.h"
#include "signer.h"

/* Keys read back with ks_get() per input, to bound the time of one run. */
#define STORE_GETS_MAX 64

static char store_dir[512];
static char store_path[sizeof(store_dir) + 16];
static const char *const store_suffixes[] = {"", "-wal", "-shm", "-journal"};

static void store_unlink_all(void)
{
	char path[sizeof(store_path) + 16];
	size_t i;

	for (i = 0; i < sizeof(store_suffixes) / sizeof(store_suffixes[0]);
	     i++) {
		snprintf(path, sizeof(path), "%s%s", store_path,
			 store_suffixes[i]);
		FUZZ_CHECK(unlink(path) == 0 || errno == ENOENT);
	}
}

static void store_cleanup(void)
{
	store_unlink_all();
	rmdir(store_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = getenv("TMPDIR");
	int n;

	(void)argc;
	(void)argv;
	if (!tmp || !tmp[0])
		tmp = "/tmp";
	n = snprintf(store_dir, sizeof(store_dir), "%s/jwksd-fuzz-store.XXXXXX",
		     tmp);
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(store_dir));
	FUZZ_CHECK(mkdtemp(store_dir) != NULL);
	snprintf(store_path, sizeof(store_path), "%s/store", store_dir);
	atexit(store_cleanup);
	return 0;
}

static void store_write(const uint8_t *data, size_t size)
{
	int fd = open(store_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		      0600);
	ssize_t n;

	FUZZ_CHECK(fd >= 0);
	while (size > 0) {
		n = write(fd, data, size);
		if (n < 0 && errno == EINTR)
			continue;
		FUZZ_CHECK(n > 0);
		data += n;
		size -= (size_t)n;
	}
	FUZZ_CHECK(close(fd) == 0);
}

struct store_walk {
	int64_t kids[STORE_GETS_MAX];
	size_t n_kids;
	size_t n_records;
};

static int store_visit(const struct ks_record *rec, void *arg)
{
	struct store_walk *walk = arg;
	struct signer_key *key = NULL;

	FUZZ_CHECK(rec && (rec->blob || rec->blob_len == 0));
	walk->n_records++;
	if (walk->n_kids < STORE_GETS_MAX)
		walk->kids[walk->n_kids++] = rec->kid;
	if (signer_load(&key, rec->blob, rec->blob_len, NULL) == 0)
		signer_key_free(key);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ks_options opts = KS_OPTIONS_INIT;
	struct store_walk walk = {{0}, 0, 0};
	struct ks_record rec = {0, NULL, 0, 0};
	struct ks_store *store = NULL;
	struct ks_err err = {{0}};
	uint64_t version;
	size_t i;

	store_unlink_all();
	store_write(data, size);

	opts.path = store_path;
	opts.busy_timeout_ms = 0;
	if (ks_open(&store, ks_backend_find("sqlite"), &opts, &err) != 0) {
		FUZZ_CHECK(!store);
		return 0;
	}
	FUZZ_CHECK(store);
	ks_version(store, &version, &err);
	ks_list(store, INT64_MIN, INT64_MAX, store_visit, &walk, &err);
	for (i = 0; i < walk.n_kids; i++) {
		if (ks_get(store, walk.kids[i], &rec, &err) == 0)
			FUZZ_CHECK(rec.kid == walk.kids[i]);
		ks_record_release(&rec);
	}
	ks_check(store, &err);
	ks_close(store);
	return 0;
}
