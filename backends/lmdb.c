/*
 * The LMDB key store: one data file and its "-lock" file (MDB_NOSUBDIR).
 * Named database "keys" maps the kid (8 bytes, big-endian, so that cursor
 * order is kid order) to the expiry (8 bytes, big-endian) followed by the
 * blob; "meta" holds "next_kid", the next kid put() assigns. "life" maps
 * the kid (as in "keys") to its lifecycle entry: created, activate_at,
 * retire_at and revoked_at, 8 bytes each, big-endian two's complement.
 * "users", "user_names", "user_emails" and "auth_log" hold the accounts
 * (see the accounts section below).
 * A store made before "life" or the accounts existed gets them on its
 * first writable open; a read-only one without them has no lifecycle
 * entries, or no accounts.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "ks_backend.h"

#define KS_LMDB_MAXDBS 7
#define KS_LMDB_LIFE_SIZE 32
#define KS_LMDB_LOCK_SUFFIX "-lock"
/*
 * The byte of the lock file our writers lock (LMDB itself locks byte 0
 * only), far from it so that the two never meet.
 */
#define KS_LMDB_WLOCK_OFFSET ((off_t)0x7fff0000)

static char ks_lmdb_key_next_kid[] = "next_kid";

/*
 * The databases of a store. has_life, has_accounts: "life", and the four
 * account databases, exist (a read-only store made before them has none).
 */
struct ks_lmdb_dbis {
	MDB_dbi keys, meta, life;
	MDB_dbi users, names, emails, alog;
	int has_life, has_accounts;
};

/*
 * LMDB forbids opening one environment twice in a process (closing the
 * second would drop the first one's fcntl() locks). Every ks_open() of a
 * file in this process therefore shares one environment, found by the data
 * file's (st_dev, st_ino) and reference counted; the last ks_close() closes
 * it. The first open's map size and reader count apply to all. Entries are
 * never shared with a child of fork(), which opens its own.
 * Every transaction holds map_lock for reading; adopting a map grown by
 * another process (which unmaps the old one) holds it for writing.
 *
 * Writers: LMDB's own writer mutex has no timeout, so a writer that stops
 * while it holds it (a `jwksd keys` under SIGSTOP) would stall every other
 * writer for ever. Before mdb_txn_begin() a writer therefore takes wlock
 * (the threads of this process) and then an open-file-description lock on
 * byte KS_LMDB_WLOCK_OFFSET of the lock file through wfd (the processes),
 * both waited for up to busy_timeout_ms on CLOCK_MONOTONIC; past it the
 * write fails with KS_EBUSY. The kernel drops the lock of a process that
 * dies. wfd is -1 for a read-only environment. It stays open until the
 * environment is closed: closing any descriptor of the lock file drops the
 * process's fcntl() locks on it, LMDB's included.
 *
 * env is NULL after ks_lmdb_scrub() failed to reopen it (map_size and
 * max_readers are then what to reopen it with): every later call tries to
 * reopen it and fails with a clear KS_EIO as long as that fails.
 */
struct ks_lmdb_env {
	struct ks_lmdb_env *next;
	dev_t dev;
	ino_t ino;
	pid_t pid;
	unsigned refs;
	MDB_env *env;
	struct ks_lmdb_dbis db;
	pthread_rwlock_t map_lock;
	pthread_mutex_t wlock;
	int wfd;
	size_t map_size;
	unsigned max_readers;
};

static pthread_mutex_t ks_lmdb_envs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ks_lmdb_env *ks_lmdb_envs;

struct ks_lmdb_store {
	struct ks_store base;
	MDB_env *env;
	struct ks_lmdb_dbis db;
	struct ks_lmdb_env *shared;
	char *path;
	int busy_timeout_ms;
};

/* The transaction ks_lmdb_write() hands to its callback. */
struct ks_lmdb_txn {
	struct ks_txn base;
	MDB_txn *txn;
};

static struct ks_lmdb_store *ks_lmdb_downcast(struct ks_store *store)
{
	if (store->be != &ks_backend_lmdb)
		KS_BUG("store of backend '%s' passed to the lmdb backend",
		       store->be && store->be->name ? store->be->name : "?");
	return (struct ks_lmdb_store *)store;
}

static struct ks_lmdb_txn *ks_lmdb_txn_downcast(struct ks_txn *txn)
{
	ks_lmdb_downcast(txn->store);
	return (struct ks_lmdb_txn *)txn;
}

static int ks_lmdb_code(int rc)
{
	switch (rc) {
	case MDB_NOTFOUND:
		return KS_ENOTFOUND;
	case MDB_KEYEXIST:
		return KS_EEXISTS;
	case MDB_MAP_FULL:
	case MDB_TXN_FULL:
	case ENOSPC:
	case EDQUOT:
		return KS_ENOSPC;
	case MDB_READERS_FULL:
	case MDB_MAP_RESIZED:
	case EBUSY:
	case EAGAIN:
		return KS_EBUSY;
	case MDB_CORRUPTED:
	case MDB_INVALID:
	case MDB_PAGE_NOTFOUND:
	case MDB_VERSION_MISMATCH:
	case MDB_INCOMPATIBLE:
		return KS_ECORRUPT;
	case EACCES:
	case EROFS:
	case EPERM:
		return KS_EACCES;
	case ENOMEM:
		return KS_ENOMEM;
	case MDB_BAD_VALSIZE:
		return KS_EINVAL;
	default:
		return KS_EIO;
	}
}

/*
 * Translate rc (an MDB_* code, negative, or an errno value) at the edge and
 * describe it: function, failing call, the store's path, the library's
 * text and the number. A full map also names its size, which is read from
 * the environment: call it with map_lock held, or before the env is shared.
 */
static int ks_lmdb_error(const struct ks_lmdb_store *s, int rc,
			 const char *func, const char *call, struct ks_err *err)
{
	MDB_envinfo info;
	char text[128];
	const char *msg = text;

	if (rc < 0)
		msg = mdb_strerror(rc);
	else if (strerror_r(rc, text, sizeof(text)) != 0)
		snprintf(text, sizeof(text), "unknown error");
	if (rc == MDB_MAP_FULL && s->env && mdb_env_info(s->env, &info) == 0)
		return ks_err_set(err, KS_ENOSPC,
				  "%s: %s '%s' failed: the map of %zu bytes is "
				  "full: %s (%d)",
				  func, call, s->path, info.me_mapsize, msg,
				  rc);
	return ks_err_set(err, ks_lmdb_code(rc), "%s: %s '%s' failed: %s (%d)",
			  func, call, s->path, msg, rc);
}

static void ks_lmdb_put64(unsigned char *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static uint64_t ks_lmdb_get64(const unsigned char *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static int64_t ks_lmdb_int64(uint64_t v)
{
	return v <= INT64_MAX ? (int64_t)v : -(int64_t)~v - 1;
}

/*
 * Point rec at the record in key and val, inside the map: it is valid until
 * the transaction ends.
 */
static int ks_lmdb_decode(const struct ks_lmdb_store *s, const MDB_val *key,
			  const MDB_val *val, struct ks_record *rec,
			  const char *func, struct ks_err *err)
{
	if (key->mv_size != 8)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: a key in 'keys' of '%s' has %zu bytes, "
				  "want 8",
				  func, s->path, key->mv_size);
	rec->kid = ks_lmdb_int64(ks_lmdb_get64(key->mv_data));
	if (rec->kid < 1)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: kid %lld in '%s' is not positive", func,
				  (long long)rec->kid, s->path);
	if (val->mv_size < 8)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: kid %lld in '%s' has a %zu-byte value, "
				  "want at least 8",
				  func, (long long)rec->kid, s->path,
				  val->mv_size);
	rec->exp = ks_lmdb_int64(ks_lmdb_get64(val->mv_data));
	rec->blob = (unsigned char *)val->mv_data + 8;
	rec->blob_len = val->mv_size - 8;
	return 0;
}

/* Adopt the map size another process committed; no transaction may run. */
static int ks_lmdb_remap(struct ks_lmdb_store *s, const char *func,
			 struct ks_err *err)
{
	int rc;

	pthread_rwlock_wrlock(&s->shared->map_lock);
	rc = mdb_env_set_mapsize(s->env, 0);
	pthread_rwlock_unlock(&s->shared->map_lock);
	return rc ? ks_lmdb_error(s, rc, func, "mdb_env_set_mapsize", err) : 0;
}

static void ks_lmdb_now(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

/* Milliseconds from now until deadline; 0 once it has passed. */
static long ks_lmdb_ms_left(const struct timespec *deadline)
{
	struct timespec now;
	long long ms;

	ks_lmdb_now(&now);
	ms = (long long)(deadline->tv_sec - now.tv_sec) * 1000 +
	     (deadline->tv_nsec - now.tv_nsec) / 1000000;
	return ms > 0 ? (long)ms : 0;
}

static int ks_lmdb_wfd_lock(int fd, short type)
{
	struct flock fl = {.l_type = type,
			   .l_whence = SEEK_SET,
			   .l_start = KS_LMDB_WLOCK_OFFSET,
			   .l_len = 1};

	return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* Sleep min(*pause_ms, left) ms; the next pause doubles, up to 16 ms. */
static void ks_lmdb_pause(long *pause_ms, long left)
{
	struct timespec pause = {0, 0};

	if (*pause_ms > left)
		*pause_ms = left;
	pause.tv_nsec = *pause_ms * 1000000;
	nanosleep(&pause, NULL);
	if (*pause_ms < 16)
		*pause_ms *= 2;
}

/*
 * Take the writer lock (see struct ks_lmdb_env), waiting up to the busy
 * timeout on CLOCK_MONOTONIC. Returns 0 or KS_EBUSY; nothing is held then.
 */
static int ks_lmdb_wlock(struct ks_lmdb_store *s, const char *func,
			 struct ks_err *err)
{
	struct ks_lmdb_env *e = s->shared;
	struct timespec deadline;
	long pause_ms = 1, left;
	int rc;

	ks_lmdb_now(&deadline);
	deadline.tv_sec += s->busy_timeout_ms / 1000;
	deadline.tv_nsec += (long)(s->busy_timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	/*
	 * Polled rather than pthread_mutex_clocklock(): ThreadSanitizer does
	 * not see that call take the mutex.
	 */
	while ((rc = pthread_mutex_trylock(&e->wlock)) == EBUSY) {
		left = ks_lmdb_ms_left(&deadline);
		if (!left)
			return ks_err_set(err, KS_EBUSY,
					  "%s: '%s' is being written by "
					  "another thread past the busy "
					  "timeout of %d ms",
					  func, s->path, s->busy_timeout_ms);
		ks_lmdb_pause(&pause_ms, left);
	}
	if (rc)
		return ks_lmdb_error(s, rc, func, "pthread_mutex_trylock", err);
	pause_ms = 1;
	while (e->wfd >= 0) {
		rc = ks_lmdb_wfd_lock(e->wfd, F_WRLCK);
		if (!rc)
			break;
		left = ks_lmdb_ms_left(&deadline);
		if ((rc != EAGAIN && rc != EACCES) || !left) {
			pthread_mutex_unlock(&e->wlock);
			if (rc != EAGAIN && rc != EACCES)
				return ks_lmdb_error(s, rc, func,
						     "fcntl F_OFD_SETLK", err);
			return ks_err_set(err, KS_EBUSY,
					  "%s: '%s' is being written by "
					  "another process past the busy "
					  "timeout of %d ms",
					  func, s->path, s->busy_timeout_ms);
		}
		ks_lmdb_pause(&pause_ms, left);
	}
	return 0;
}

static void ks_lmdb_wunlock(struct ks_lmdb_store *s)
{
	if (s->shared->wfd >= 0)
		ks_lmdb_wfd_lock(s->shared->wfd, F_UNLCK);
	pthread_mutex_unlock(&s->shared->wlock);
}

static int ks_lmdb_live(struct ks_lmdb_store *s, struct ks_err *err);

/*
 * Begin a transaction and hold map_lock for reading until ks_lmdb_end()
 * (a write transaction holds the writer lock too, taken first). When
 * another process grew the map past ours, adopt its size and retry once.
 * On failure nothing is held.
 */
static int ks_lmdb_begin(struct ks_lmdb_store *s, unsigned flags, MDB_txn **txn,
			 const char *func, struct ks_err *err)
{
	int rc, ret, tries = 0, write = !(flags & MDB_RDONLY);

	*txn = NULL;
	ret = ks_lmdb_live(s, err);
	if (ret)
		return ret;
	if (write) {
		ret = ks_lmdb_wlock(s, func, err);
		if (ret)
			return ret;
	}
	for (;;) {
		pthread_rwlock_rdlock(&s->shared->map_lock);
		rc = mdb_txn_begin(s->env, NULL, flags, txn);
		if (!rc)
			return 0;
		*txn = NULL;
		ret = ks_lmdb_error(s, rc, func, "mdb_txn_begin", err);
		pthread_rwlock_unlock(&s->shared->map_lock);
		if (rc == MDB_MAP_RESIZED && !tries++)
			ret = ks_lmdb_remap(s, func, err);
		if (ret) {
			if (write)
				ks_lmdb_wunlock(s);
			return ret;
		}
	}
}

/*
 * Abort txn (which may be NULL: committed already), drop map_lock and, for
 * a write transaction (flags as given to ks_lmdb_begin()), the writer lock.
 */
static void ks_lmdb_end(struct ks_lmdb_store *s, MDB_txn *txn, unsigned flags)
{
	if (txn)
		mdb_txn_abort(txn);
	pthread_rwlock_unlock(&s->shared->map_lock);
	if (!(flags & MDB_RDONLY))
		ks_lmdb_wunlock(s);
}

/*
 * A data file shorter than its committed pages would fault (SIGBUS) on the
 * first read of a missing page: refuse it. Called with map_lock held.
 */
static int ks_lmdb_check_size(const struct ks_lmdb_store *s, const char *func,
			      struct ks_err *err)
{
	const char *call = "mdb_env_info";
	MDB_envinfo info;
	MDB_stat st;
	struct stat fst;
	uint64_t need;
	int fd, rc;

	rc = mdb_env_info(s->env, &info);
	if (!rc)
		rc = mdb_env_stat(s->env, &st);
	if (!rc)
		rc = mdb_env_get_fd(s->env, &fd);
	if (!rc && fstat(fd, &fst) != 0) {
		call = "fstat";
		rc = errno;
	}
	if (rc)
		return ks_lmdb_error(s, rc, func, call, err);
	need = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
	if (fst.st_size < 0 || (uint64_t)fst.st_size < need)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: '%s' is %lld bytes, shorter than its "
				  "%llu bytes of committed pages",
				  func, s->path, (long long)fst.st_size,
				  (unsigned long long)need);
	return 0;
}

/* Read "next_kid" in txn; 1 when the store never assigned a kid. */
static int ks_lmdb_next_kid(struct ks_lmdb_store *s, MDB_txn *txn,
			    uint64_t *out, const char *func, struct ks_err *err)
{
	MDB_val key = {sizeof(ks_lmdb_key_next_kid) - 1, ks_lmdb_key_next_kid};
	MDB_val val;
	int rc = mdb_get(txn, s->db.meta, &key, &val);

	*out = 1;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return ks_lmdb_error(s, rc, func, "mdb_get next_kid", err);
	if (val.mv_size == 8)
		*out = ks_lmdb_get64(val.mv_data);
	if (val.mv_size != 8 || *out < 1 || *out > (uint64_t)INT64_MAX + 1)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: 'next_kid' in '%s' is not a kid counter "
				  "(%zu bytes)",
				  func, s->path, val.mv_size);
	return 0;
}

/*
 * Insert one record in the write transaction txn and keep next_kid above
 * every kid. kid 0 means "assign the next kid" (put); else the kid is given
 * (import). The blob is written straight into the reserved value. *kid_out
 * receives the kid.
 */
static int ks_lmdb_insert(struct ks_lmdb_store *s, MDB_txn *txn, int64_t kid,
			  const unsigned char *blob, size_t blob_len,
			  int64_t exp, int64_t *kid_out, const char *func,
			  struct ks_err *err)
{
	unsigned char kbuf[8], nbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {0, NULL};
	MDB_val nkey = {sizeof(ks_lmdb_key_next_kid) - 1, ks_lmdb_key_next_kid};
	MDB_val nval = {sizeof(nbuf), nbuf};
	uint64_t next;
	int rc, ret, given = kid > 0;

	if (blob_len > SIZE_MAX - 8)
		return ks_err_set(err, KS_EINVAL,
				  "%s: a blob of %zu bytes is too large", func,
				  blob_len);
	ret = ks_lmdb_next_kid(s, txn, &next, func, err);
	if (!ret && !given && next > INT64_MAX)
		ret = ks_err_set(err, KS_ENOSPC, "%s: no kid left in '%s'",
				 func, s->path);
	if (ret)
		return ret;
	if (!given)
		kid = (int64_t)next;
	ks_lmdb_put64(kbuf, (uint64_t)kid);
	val.mv_size = blob_len + 8;
	rc = mdb_put(txn, s->db.keys, &key, &val,
		     MDB_NOOVERWRITE | MDB_RESERVE);
	if (rc == MDB_KEYEXIST && given)
		return ks_err_set(err, KS_EEXISTS,
				  "%s: kid %lld in '%s' already exists", func,
				  (long long)kid, s->path);
	if (rc == MDB_KEYEXIST)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: 'next_kid' %llu in '%s' is taken", func,
				  (unsigned long long)next, s->path);
	if (!rc) {
		ks_lmdb_put64(val.mv_data, (uint64_t)exp);
		memcpy((unsigned char *)val.mv_data + 8, blob, blob_len);
		if ((uint64_t)kid >= next) {
			ks_lmdb_put64(nbuf, (uint64_t)kid + 1);
			rc = mdb_put(txn, s->db.meta, &nkey, &nval, 0);
		}
	}
	if (rc)
		return ks_lmdb_error(s, rc, func, "mdb_put", err);
	*kid_out = kid;
	return 0;
}

/*
 * Run fn in one write transaction, holding map_lock as ks_lmdb_begin()
 * does: commit when it returns 0, abort otherwise. LMDB lets one writer of
 * any process in at a time.
 */
static int ks_lmdb_run(struct ks_lmdb_store *s, ks_txn_fn fn, void *arg,
		       const char *func, struct ks_err *err)
{
	struct ks_lmdb_txn t = {{&s->base}, NULL};
	int rc, ret;

	ret = ks_lmdb_begin(s, 0, &t.txn, func, err);
	if (ret)
		return ret;
	ret = fn(&t.base, arg, err);
	if (!ret) {
		rc = mdb_txn_commit(t.txn);
		t.txn = NULL;
		if (rc)
			ret = ks_lmdb_error(s, rc, func, "mdb_txn_commit", err);
	}
	ks_lmdb_end(s, t.txn, 0);
	return ret;
}

/*
 * A record for put() and import() to insert in a transaction of its own;
 * kid 0 asks for the next kid, and receives the kid inserted.
 */
struct ks_lmdb_one {
	int64_t kid;
	const unsigned char *blob;
	size_t blob_len;
	int64_t exp;
	const char *func;
};

static int ks_lmdb_insert_one(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	struct ks_lmdb_one *one = arg;

	return ks_lmdb_insert(ks_lmdb_downcast(txn->store), t->txn, one->kid,
			      one->blob, one->blob_len, one->exp, &one->kid,
			      one->func, err);
}

/*
 * Open the databases added since the first version ("life", then the
 * accounts), creating them with flags MDB_CREATE. Sets has_life and
 * has_accounts by which exist; a missing one is no error.
 */
static int ks_lmdb_dbis_later(MDB_txn *txn, struct ks_lmdb_dbis *db,
			      unsigned flags)
{
	const struct {
		const char *name;
		MDB_dbi *dbi;
	} later[] = {
		{"life", &db->life},	    {"users", &db->users},
		{"user_names", &db->names}, {"user_emails", &db->emails},
		{"auth_log", &db->alog},
	};
	unsigned missing = 0;
	size_t i;
	int rc;

	for (i = 0; i < sizeof(later) / sizeof(later[0]); i++) {
		rc = mdb_dbi_open(txn, later[i].name, flags, later[i].dbi);
		if (rc == MDB_NOTFOUND)
			missing |= 1u << i;
		else if (rc)
			return rc;
	}
	db->has_life = !(missing & 1u);
	db->has_accounts = !(missing & ~1u);
	return 0;
}

/*
 * Open the DBIs once for the environment. Opening an existing store only
 * reads; the databases are created in a write transaction when missing
 * (those added since alone when the store predates them; a read-only store
 * without them goes on without lifecycle entries or accounts). Called
 * before the environment is shared.
 */
static int ks_lmdb_dbis(struct ks_lmdb_store *s, struct ks_err *err)
{
	const char *call = "mdb_dbi_open";
	unsigned env_flags = 0;
	MDB_dbi main_dbi;
	MDB_stat st;
	MDB_txn *txn;
	int rc, ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, "ks_lmdb_open", err);
	if (ret)
		return ret;
	rc = mdb_dbi_open(txn, "keys", 0, &s->db.keys);
	if (!rc)
		rc = mdb_dbi_open(txn, "meta", 0, &s->db.meta);
	if (!rc)
		rc = ks_lmdb_dbis_later(txn, &s->db, 0);
	if (!rc) {
		call = "mdb_txn_commit";
		rc = mdb_txn_commit(txn);
		txn = NULL;
	} else if (rc == MDB_NOTFOUND) {
		rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
		if (!rc)
			rc = mdb_stat(txn, main_dbi, &st);
		if (!rc && st.ms_entries)
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_lmdb_open: '%s' is an LMDB "
					 "environment without the databases "
					 "'keys' and 'meta' of a key store",
					 s->path);
		else if (!rc)
			rc = MDB_NOTFOUND;
	}
	if (rc && rc != MDB_NOTFOUND)
		ret = ks_lmdb_error(s, rc, "ks_lmdb_open", call, err);
	ks_lmdb_end(s, txn, MDB_RDONLY);
	if (ret || (!rc && s->db.has_life && s->db.has_accounts))
		return ret;

	mdb_env_get_flags(s->env, &env_flags);
	if (!rc && (env_flags & MDB_RDONLY))
		return 0;
	if (env_flags & MDB_RDONLY)
		return ks_err_set(err, KS_EACCES,
				  "ks_lmdb_open: mdb_dbi_open '%s' failed: the "
				  "store is new and its file is read-only",
				  s->path);
	ret = ks_lmdb_begin(s, 0, &txn, "ks_lmdb_open", err);
	if (ret)
		return ret;
	call = "mdb_dbi_open";
	rc = mdb_dbi_open(txn, "keys", MDB_CREATE, &s->db.keys);
	if (!rc)
		rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->db.meta);
	if (!rc)
		rc = ks_lmdb_dbis_later(txn, &s->db, MDB_CREATE);
	if (!rc) {
		call = "mdb_txn_commit";
		rc = mdb_txn_commit(txn);
		txn = NULL;
	}
	if (rc) {
		ret = ks_lmdb_error(s, rc, "ks_lmdb_open", call, err);
		s->db.has_life = s->db.has_accounts = 0;
	}
	ks_lmdb_end(s, txn, 0);
	return ret;
}

/* Create, configure and open s->env with flags added to the defaults. */
static int ks_lmdb_env_start(struct ks_lmdb_store *s,
			     const struct ks_options *opts, unsigned flags,
			     struct ks_err *err)
{
	const char *call = "mdb_env_create";
	MDB_env *env = NULL;
	int rc, ret;

	rc = mdb_env_create(&env);
	if (!rc && opts->max_readers) {
		call = "mdb_env_set_maxreaders";
		rc = mdb_env_set_maxreaders(env, opts->max_readers);
	}
	if (!rc && opts->lmdb_map_size) {
		call = "mdb_env_set_mapsize";
		rc = mdb_env_set_mapsize(env, opts->lmdb_map_size);
	}
	if (!rc) {
		call = "mdb_env_set_maxdbs";
		rc = mdb_env_set_maxdbs(env, KS_LMDB_MAXDBS);
	}
	if (!rc) {
		call = "mdb_env_open";
		rc = mdb_env_open(env, s->path,
				  MDB_NOSUBDIR | MDB_NOTLS | flags, 0600);
	}
	if (!rc) {
		s->env = env;
		return 0;
	}
	ret = ks_lmdb_error(s, rc, "ks_lmdb_open", call, err);
	if (env)
		mdb_env_close(env);
	return ret;
}

/* Whether path exists; an error other than ENOENT counts as existing. */
static int ks_lmdb_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 || errno != ENOENT;
}

/* Record which file s->env has open, to share it with later opens. */
static int ks_lmdb_identity(const struct ks_lmdb_store *s,
			    struct ks_lmdb_env *e, struct ks_err *err)
{
	struct stat st;
	int fd, rc;

	rc = mdb_env_get_fd(s->env, &fd);
	if (!rc && fstat(fd, &st) != 0)
		rc = errno;
	if (rc)
		return ks_lmdb_error(s, rc, "ks_lmdb_open", "fstat", err);
	e->dev = st.st_dev;
	e->ino = st.st_ino;
	return 0;
}

/*
 * Open a new environment for s. A data file that is not writable is opened
 * read-only (reads work, writes fail with KS_EACCES). A failed open removes
 * the lock file it created when the data file is no store (nobody else can
 * use that lock file), and files it created when mdb_env_open() failed.
 * Called with ks_lmdb_envs_lock held.
 */
static int ks_lmdb_env_open(struct ks_lmdb_store *s,
			    const struct ks_options *opts, struct ks_err *err)
{
	size_t len = strlen(s->path) + sizeof(KS_LMDB_LOCK_SUFFIX);
	struct ks_lmdb_env *e = calloc(1, sizeof(*e));
	char *lock_path = malloc(len);
	int had_data, had_lock, opened, ret, rc, dead;

	if (!e || !lock_path || pthread_rwlock_init(&e->map_lock, NULL)) {
		free(e);
		free(lock_path);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_lmdb_open: out of memory");
	}
	if (pthread_mutex_init(&e->wlock, NULL)) {
		pthread_rwlock_destroy(&e->map_lock);
		free(e);
		free(lock_path);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_lmdb_open: out of memory");
	}
	e->wfd = -1;
	snprintf(lock_path, len, "%s%s", s->path, KS_LMDB_LOCK_SUFFIX);
	s->shared = e;
	had_data = ks_lmdb_exists(s->path);
	had_lock = ks_lmdb_exists(lock_path);
	ret = ks_lmdb_env_start(s, opts, 0, err);
	if (!ret) {
		/* The writer lock (see struct ks_lmdb_env). */
		e->wfd = open(lock_path, O_RDWR | O_CLOEXEC);
		if (e->wfd < 0)
			ret = ks_lmdb_error(s, errno, "ks_lmdb_open", "open",
					    err);
	} else if (ret == KS_EACCES && had_data) {
		ret = ks_lmdb_env_start(s, opts, MDB_RDONLY, err);
	}
	opened = !ret;
	if (!ret)
		ret = ks_lmdb_check_size(s, "ks_lmdb_open", err);
	if (!ret) {
		rc = mdb_reader_check(s->env, &dead);
		if (rc)
			ret = ks_lmdb_error(s, rc, "ks_lmdb_open",
					    "mdb_reader_check", err);
	}
	if (!ret)
		ret = ks_lmdb_dbis(s, err);
	if (!ret)
		ret = ks_lmdb_identity(s, e, err);

	if (ret) {
		if (s->env)
			mdb_env_close(s->env);
		if (e->wfd >= 0)
			close(e->wfd);
		if (!had_lock && (ret == KS_ECORRUPT || !opened))
			unlink(lock_path);
		if (!had_data && !opened)
			unlink(s->path);
		pthread_rwlock_destroy(&e->map_lock);
		pthread_mutex_destroy(&e->wlock);
		free(e);
		s->shared = NULL;
		s->env = NULL;
	} else {
		e->pid = getpid();
		e->refs = 1;
		e->env = s->env;
		e->db = s->db;
		e->next = ks_lmdb_envs;
		ks_lmdb_envs = e;
	}
	free(lock_path);
	return ret;
}

/* Share this process's environment of s->path, if there is one. */
static void ks_lmdb_env_find(struct ks_lmdb_store *s)
{
	struct ks_lmdb_env *e;
	struct stat st;

	if (stat(s->path, &st) != 0)
		return;
	for (e = ks_lmdb_envs; e; e = e->next) {
		if (e->dev == st.st_dev && e->ino == st.st_ino &&
		    e->pid == getpid()) {
			e->refs++;
			s->shared = e;
			s->env = e->env;
			s->db = e->db;
			return;
		}
	}
}

static int ks_lmdb_open(struct ks_store **out, const struct ks_options *opts,
			struct ks_err *err)
{
	struct ks_lmdb_store *s = calloc(1, sizeof(*s));
	int ret = 0;

	if (s)
		s->path = strdup(opts->path);
	if (!s || !s->path) {
		free(s);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_lmdb_open: out of memory");
	}
	s->base.be = &ks_backend_lmdb;
	s->busy_timeout_ms = opts->busy_timeout_ms;
	pthread_mutex_lock(&ks_lmdb_envs_lock);
	ks_lmdb_env_find(s);
	if (!s->shared)
		ret = ks_lmdb_env_open(s, opts, err);
	pthread_mutex_unlock(&ks_lmdb_envs_lock);
	if (ret) {
		free(s->path);
		free(s);
		return ret;
	}
	*out = &s->base;
	return 0;
}

static void ks_lmdb_close(struct ks_store *store)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	struct ks_lmdb_env **p, *e = s->shared;

	pthread_mutex_lock(&ks_lmdb_envs_lock);
	if (--e->refs == 0) {
		for (p = &ks_lmdb_envs; *p; p = &(*p)->next) {
			if (*p == e) {
				*p = e->next;
				break;
			}
		}
		if (e->env)
			mdb_env_close(e->env);
		/* After the environment: closing it drops LMDB's locks. */
		if (e->wfd >= 0)
			close(e->wfd);
		pthread_rwlock_destroy(&e->map_lock);
		pthread_mutex_destroy(&e->wlock);
		free(e);
	}
	pthread_mutex_unlock(&ks_lmdb_envs_lock);
	free(s->path);
	free(s);
}

static int ks_lmdb_put(struct ks_store *store, const unsigned char *blob,
		       size_t blob_len, int64_t exp, int64_t *kid_out,
		       struct ks_err *err)
{
	struct ks_lmdb_one one = {0, blob, blob_len, exp, "ks_lmdb_put"};
	int ret = ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_insert_one, &one,
			      "ks_lmdb_put", err);

	if (!ret && kid_out)
		*kid_out = one.kid;
	return ret;
}

static int ks_lmdb_import(struct ks_store *store, const struct ks_record *rec,
			  struct ks_err *err)
{
	struct ks_lmdb_one one = {rec->kid, rec->blob, rec->blob_len, rec->exp,
				  "ks_lmdb_import"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_insert_one, &one,
			   "ks_lmdb_import", err);
}

static int ks_lmdb_get(struct ks_store *store, int64_t kid,
		       struct ks_record *out, struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val;
	struct ks_record rec;
	MDB_txn *txn;
	int rc, ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, "ks_lmdb_get", err);
	if (ret)
		return ret;
	ks_lmdb_put64(kbuf, (uint64_t)kid);
	rc = mdb_get(txn, s->db.keys, &key, &val);
	if (rc == MDB_NOTFOUND)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "ks_lmdb_get: kid %lld not found in '%s'",
				 (long long)kid, s->path);
	else if (rc)
		ret = ks_lmdb_error(s, rc, "ks_lmdb_get", "mdb_get", err);
	else
		ret = ks_lmdb_decode(s, &key, &val, &rec, "ks_lmdb_get", err);
	if (!ret) {
		out->blob = malloc(rec.blob_len ? rec.blob_len : 1);
		if (!out->blob)
			ret = ks_err_set(err, KS_ENOMEM,
					 "ks_lmdb_get: out of memory");
	}
	if (!ret) {
		memcpy(out->blob, rec.blob, rec.blob_len);
		out->blob_len = rec.blob_len;
		out->kid = kid;
		out->exp = rec.exp;
	}
	ks_lmdb_end(s, txn, MDB_RDONLY);
	return ret;
}

/*
 * Call visit for every entry of dbi in txn, in key (kid) order, until it
 * returns non-zero; that value, 0, or a cursor error is returned.
 */
typedef int (*ks_lmdb_visit_fn)(struct ks_lmdb_store *s, const MDB_val *key,
				const MDB_val *val, void *ctx,
				struct ks_err *err);

static int ks_lmdb_cursor_walk(struct ks_lmdb_store *s, MDB_txn *txn,
			       MDB_dbi dbi, ks_lmdb_visit_fn visit, void *ctx,
			       const char *func, struct ks_err *err)
{
	MDB_cursor *cur = NULL;
	MDB_val key, val;
	int rc, ret = 0;

	rc = mdb_cursor_open(txn, dbi, &cur);
	if (!rc)
		rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
	while (!rc) {
		ret = visit(s, &key, &val, ctx, err);
		if (ret)
			break;
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	if (!ret && rc != MDB_NOTFOUND)
		ret = ks_lmdb_error(s, rc, func, "mdb_cursor_get", err);
	if (cur)
		mdb_cursor_close(cur);
	return ret;
}

struct ks_lmdb_walk_ctx {
	int64_t exp_after, exp_until;
	ks_list_fn fn;
	ks_life_fn life_fn;
	void *arg;
	const char *func;
};

static int ks_lmdb_visit_record(struct ks_lmdb_store *s, const MDB_val *key,
				const MDB_val *val, void *ctx,
				struct ks_err *err)
{
	struct ks_lmdb_walk_ctx *w = ctx;
	struct ks_record rec;
	int ret = ks_lmdb_decode(s, key, val, &rec, w->func, err);

	/* exp_after INT64_MIN has no lower bound (keystore.h). */
	if (!ret && (w->exp_after == INT64_MIN || rec.exp > w->exp_after) &&
	    rec.exp <= w->exp_until)
		ret = w->fn(&rec, w->arg);
	return ret;
}

/*
 * Call fn for the records of txn in (exp_after, exp_until], in kid order.
 * The callback sees each record in place, inside the transaction: no copy,
 * valid only during the call, as keystore.h allows.
 */
static int ks_lmdb_walk(struct ks_lmdb_store *s, MDB_txn *txn,
			int64_t exp_after, int64_t exp_until, ks_list_fn fn,
			void *arg, const char *func, struct ks_err *err)
{
	struct ks_lmdb_walk_ctx w = {exp_after, exp_until, fn, NULL, arg, func};

	return ks_lmdb_cursor_walk(s, txn, s->db.keys, ks_lmdb_visit_record, &w,
				   func, err);
}

static int ks_lmdb_list(struct ks_store *store, int64_t exp_after,
			int64_t exp_until, ks_list_fn fn, void *arg,
			struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	MDB_txn *txn;
	int ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, "ks_lmdb_list", err);
	if (ret)
		return ret;
	ret = ks_lmdb_walk(s, txn, exp_after, exp_until, fn, arg,
			   "ks_lmdb_list", err);
	ks_lmdb_end(s, txn, MDB_RDONLY);
	return ret;
}

/* Decode the lifecycle entry in key and val into *life. */
static int ks_lmdb_life_decode(const struct ks_lmdb_store *s,
			       const MDB_val *key, const MDB_val *val,
			       struct ks_life *life, const char *func,
			       struct ks_err *err)
{
	const unsigned char *p = val->mv_data;

	if (key->mv_size != 8)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: a key in 'life' of '%s' has %zu bytes, "
				  "want 8",
				  func, s->path, key->mv_size);
	life->kid = ks_lmdb_int64(ks_lmdb_get64(key->mv_data));
	if (life->kid < 1)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: kid %lld in 'life' of '%s' is not "
				  "positive",
				  func, (long long)life->kid, s->path);
	if (val->mv_size != KS_LMDB_LIFE_SIZE)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: the lifecycle entry of kid %lld in '%s' "
				  "has %zu bytes, want %d",
				  func, (long long)life->kid, s->path,
				  val->mv_size, KS_LMDB_LIFE_SIZE);
	life->created = ks_lmdb_int64(ks_lmdb_get64(p));
	life->activate_at = ks_lmdb_int64(ks_lmdb_get64(p + 8));
	life->retire_at = ks_lmdb_int64(ks_lmdb_get64(p + 16));
	life->revoked_at = ks_lmdb_int64(ks_lmdb_get64(p + 24));
	return 0;
}

static int ks_lmdb_visit_life(struct ks_lmdb_store *s, const MDB_val *key,
			      const MDB_val *val, void *ctx, struct ks_err *err)
{
	struct ks_lmdb_walk_ctx *w = ctx;
	struct ks_life life = {0};
	int ret = ks_lmdb_life_decode(s, key, val, &life, w->func, err);

	return ret ? ret : w->life_fn(&life, w->arg);
}

/*
 * Call fn for every lifecycle entry of txn, in kid order. A read-only store
 * made before "life" existed has none.
 */
static int ks_lmdb_life_walk(struct ks_lmdb_store *s, MDB_txn *txn,
			     ks_life_fn fn, void *arg, const char *func,
			     struct ks_err *err)
{
	struct ks_lmdb_walk_ctx w = {0, 0, NULL, fn, arg, func};

	if (!s->db.has_life)
		return 0;
	return ks_lmdb_cursor_walk(s, txn, s->db.life, ks_lmdb_visit_life, &w,
				   func, err);
}

static int ks_lmdb_life_list(struct ks_store *store, struct ks_txn *txn,
			     ks_life_fn fn, void *arg, struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	MDB_txn *rtxn;
	int ret;

	if (txn)
		return ks_lmdb_life_walk(s, ks_lmdb_txn_downcast(txn)->txn, fn,
					 arg, "ks_lmdb_txn_life_list", err);
	ret = ks_lmdb_begin(s, MDB_RDONLY, &rtxn, "ks_lmdb_life_list", err);
	if (ret)
		return ret;
	ret = ks_lmdb_life_walk(s, rtxn, fn, arg, "ks_lmdb_life_list", err);
	ks_lmdb_end(s, rtxn, MDB_RDONLY);
	return ret;
}

static int ks_lmdb_write(struct ks_store *store, ks_txn_fn fn, void *arg,
			 struct ks_err *err)
{
	return ks_lmdb_run(ks_lmdb_downcast(store), fn, arg, "ks_lmdb_write",
			   err);
}

static int ks_lmdb_txn_next_kid(struct ks_txn *txn, int64_t *out,
				struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	uint64_t next;
	int ret;

	ret = ks_lmdb_next_kid(s, t->txn, &next, "ks_lmdb_txn_next_kid", err);
	if (!ret && next > INT64_MAX)
		ret = ks_err_set(err, KS_ENOSPC,
				 "ks_lmdb_txn_next_kid: no kid left in '%s'",
				 s->path);
	*out = ret ? 0 : (int64_t)next;
	return ret;
}

static int ks_lmdb_txn_put(struct ks_txn *txn, const unsigned char *blob,
			   size_t blob_len, int64_t exp, int64_t *kid_out,
			   struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	int64_t kid = 0;
	int ret;

	ret = ks_lmdb_insert(ks_lmdb_downcast(txn->store), t->txn, 0, blob,
			     blob_len, exp, &kid, "ks_lmdb_txn_put", err);
	if (kid_out)
		*kid_out = kid;
	return ret;
}

static int ks_lmdb_txn_import(struct ks_txn *txn, const struct ks_record *rec,
			      struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	int64_t kid = 0;

	return ks_lmdb_insert(ks_lmdb_downcast(txn->store), t->txn, rec->kid,
			      rec->blob, rec->blob_len, rec->exp, &kid,
			      "ks_lmdb_txn_import", err);
}

/* Whether the record kid exists in txn: 0, KS_ENOTFOUND or an error. */
static int ks_lmdb_txn_has(struct ks_lmdb_store *s, MDB_txn *txn, MDB_val *key,
			   int64_t kid, const char *func, struct ks_err *err)
{
	MDB_val val;
	int rc = mdb_get(txn, s->db.keys, key, &val);

	if (rc == MDB_NOTFOUND)
		return ks_err_set(err, KS_ENOTFOUND,
				  "%s: kid %lld not found in '%s'", func,
				  (long long)kid, s->path);
	return rc ? ks_lmdb_error(s, rc, func, "mdb_get", err) : 0;
}
/* Replace the expiry and blob of an existing record. */
static int ks_lmdb_txn_update(struct ks_txn *txn, const struct ks_record *rec,
			      struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {0, NULL};
	int rc, ret;

	if (rec->blob_len > SIZE_MAX - 8)
		return ks_err_set(err, KS_EINVAL,
				  "ks_lmdb_txn_update: a blob of %zu bytes is "
				  "too large",
				  rec->blob_len);
	ks_lmdb_put64(kbuf, (uint64_t)rec->kid);
	ret = ks_lmdb_txn_has(s, t->txn, &key, rec->kid, "ks_lmdb_txn_update",
			      err);
	if (ret)
		return ret;
	val.mv_size = rec->blob_len + 8;
	rc = mdb_put(t->txn, s->db.keys, &key, &val, MDB_RESERVE);
	if (rc)
		return ks_lmdb_error(s, rc, "ks_lmdb_txn_update", "mdb_put",
				     err);
	ks_lmdb_put64(val.mv_data, (uint64_t)rec->exp);
	memcpy((unsigned char *)val.mv_data + 8, rec->blob, rec->blob_len);
	return 0;
}

/* Remove a record and its lifecycle entry; next_kid stays as it is. */
static int ks_lmdb_txn_delete(struct ks_txn *txn, int64_t kid,
			      struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf};
	int rc;

	ks_lmdb_put64(kbuf, (uint64_t)kid);
	rc = mdb_del(t->txn, s->db.keys, &key, NULL);
	if (rc == MDB_NOTFOUND)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_lmdb_txn_delete: kid %lld not found in "
				  "'%s'",
				  (long long)kid, s->path);
	if (!rc && s->db.has_life) {
		rc = mdb_del(t->txn, s->db.life, &key, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	return rc ? ks_lmdb_error(s, rc, "ks_lmdb_txn_delete", "mdb_del", err)
		  : 0;
}

static int ks_lmdb_txn_list(struct ks_txn *txn, int64_t exp_after,
			    int64_t exp_until, ks_list_fn fn, void *arg,
			    struct ks_err *err)
{
	return ks_lmdb_walk(ks_lmdb_downcast(txn->store),
			    ks_lmdb_txn_downcast(txn)->txn, exp_after,
			    exp_until, fn, arg, "ks_lmdb_txn_list", err);
}

/* Write (or replace) the lifecycle entry of an existing record. */
static int ks_lmdb_txn_life_put(struct ks_txn *txn, const struct ks_life *life,
				struct ks_err *err)
{
	struct ks_lmdb_txn *t = ks_lmdb_txn_downcast(txn);
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	unsigned char kbuf[8], vbuf[KS_LMDB_LIFE_SIZE];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {sizeof(vbuf), vbuf};
	int rc, ret;

	if (!s->db.has_life)
		return ks_err_set(err, KS_EACCES,
				  "ks_lmdb_txn_life_put: '%s' has no database "
				  "'life' and is read-only",
				  s->path);
	ks_lmdb_put64(kbuf, (uint64_t)life->kid);
	ret = ks_lmdb_txn_has(s, t->txn, &key, life->kid,
			      "ks_lmdb_txn_life_put", err);
	if (ret)
		return ret;
	ks_lmdb_put64(vbuf, (uint64_t)life->created);
	ks_lmdb_put64(vbuf + 8, (uint64_t)life->activate_at);
	ks_lmdb_put64(vbuf + 16, (uint64_t)life->retire_at);
	ks_lmdb_put64(vbuf + 24, (uint64_t)life->revoked_at);
	rc = mdb_put(t->txn, s->db.life, &key, &val, 0);
	return rc ? ks_lmdb_error(s, rc, "ks_lmdb_txn_life_put", "mdb_put", err)
		  : 0;
}

/* The id of the last committed transaction, of any process. */
static int ks_lmdb_version(struct ks_store *store, uint64_t *out,
			   struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	MDB_envinfo info;
	int rc;

	rc = ks_lmdb_live(s, err);
	if (rc)
		return rc;
	pthread_rwlock_rdlock(&s->shared->map_lock);
	rc = mdb_env_info(s->env, &info);
	pthread_rwlock_unlock(&s->shared->map_lock);
	if (rc)
		return ks_lmdb_error(s, rc, "ks_lmdb_version", "mdb_env_info",
				     err);
	*out = info.me_last_txnid;
	return 0;
}

struct ks_lmdb_orphan {
	struct ks_lmdb_store *s;
	MDB_txn *txn;
	struct ks_err *err;
};

/* A lifecycle entry must belong to a record. */
static int ks_lmdb_check_life(const struct ks_life *life, void *arg)
{
	struct ks_lmdb_orphan *o = arg;
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf};
	int ret;

	ks_lmdb_put64(kbuf, (uint64_t)life->kid);
	ret = ks_lmdb_txn_has(o->s, o->txn, &key, life->kid, "ks_lmdb_check",
			      o->err);
	if (ret == KS_ENOTFOUND)
		ret = ks_err_set(o->err, KS_ECORRUPT,
				 "ks_lmdb_check: kid %lld in '%s' has a "
				 "lifecycle entry and no record",
				 (long long)life->kid, o->s->path);
	return ret;
}

/*
 * Walk every record, the kid counter and the lifecycle entries, checking
 * the layout.
 */
/* A record of the check: decodable, with a kid below next_kid (ctx). */
static int ks_lmdb_visit_check(struct ks_lmdb_store *s, const MDB_val *key,
			       const MDB_val *val, void *ctx,
			       struct ks_err *err)
{
	const uint64_t *next = ctx;
	struct ks_record rec;
	int ret = ks_lmdb_decode(s, key, val, &rec, "ks_lmdb_check", err);

	if (!ret && (uint64_t)rec.kid >= *next)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_lmdb_check: kid %lld in '%s' is not below "
				 "'next_kid' %llu",
				 (long long)rec.kid, s->path,
				 (unsigned long long)*next);
	return ret;
}

static int ks_lmdb_check_accounts(struct ks_lmdb_store *s, MDB_txn *txn,
				  struct ks_err *err);

static int ks_lmdb_check(struct ks_store *store, struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	MDB_txn *txn;
	uint64_t next;
	int ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, "ks_lmdb_check", err);
	if (ret)
		return ret;
	ret = ks_lmdb_check_size(s, "ks_lmdb_check", err);
	if (!ret)
		ret = ks_lmdb_next_kid(s, txn, &next, "ks_lmdb_check", err);
	if (!ret)
		ret = ks_lmdb_cursor_walk(s, txn, s->db.keys,
					  ks_lmdb_visit_check, &next,
					  "ks_lmdb_check", err);
	if (!ret) {
		struct ks_lmdb_orphan o = {s, txn, err};

		ret = ks_lmdb_life_walk(s, txn, ks_lmdb_check_life, &o,
					"ks_lmdb_check", err);
	}
	if (!ret)
		ret = ks_lmdb_check_accounts(s, txn, err);
	ks_lmdb_end(s, txn, MDB_RDONLY);
	return ret;
}

/*
 * Write a compacted copy of s->env (no free pages: none of the bytes that
 * earlier transactions replaced) to a new 0600 file beside the store and
 * rename it over the data file. Called holding the lock file exclusively.
 */
static int ks_lmdb_compact_copy(struct ks_lmdb_store *s, struct ks_err *err)
{
	size_t len = strlen(s->path) + sizeof(".compact");
	char *tmp = malloc(len);
	const char *call = "open";
	int fd = -1, rc = 0;

	if (!tmp)
		return ks_err_set(err, KS_ENOMEM,
				  "ks_lmdb_scrub: out of memory");
	snprintf(tmp, len, "%s.compact", s->path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		rc = errno;
	if (!rc) {
		call = "mdb_env_copyfd2";
		rc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
	}
	if (!rc && fsync(fd) != 0) {
		call = "fsync";
		rc = errno;
	}
	if (fd >= 0 && close(fd) != 0 && !rc) {
		call = "close";
		rc = errno;
	}
	if (!rc && rename(tmp, s->path) != 0) {
		call = "rename";
		rc = errno;
	}
	if (rc)
		unlink(tmp);
	free(tmp);
	return rc ? ks_lmdb_error(s, rc, "ks_lmdb_scrub", call, err) : 0;
}

#if defined(JWKS_KS_FAULTS) && JWKS_KS_FAULTS
/*
 * Tests only (built with JWKS_KS_FAULTS): how many of the next reopens
 * fail, as a reopen that meets a full disk or a damaged file would.
 */
int ks__lmdb_fail_reopens;
#endif

/*
 * Open the environment of s again, after ks_lmdb_scrub() closed it. It is
 * built in a copy of s, so that s->env stays NULL until it is complete; on
 * failure nothing stays open. Called with ks_lmdb_envs_lock held and no
 * transaction running.
 */
static int ks_lmdb_reopen(struct ks_lmdb_store *s, struct ks_err *err)
{
	struct ks_lmdb_env *e = s->shared;
	struct ks_options opts = KS_OPTIONS_INIT;
	struct ks_lmdb_store t = *s;
	int ret;

#if defined(JWKS_KS_FAULTS) && JWKS_KS_FAULTS
	if (ks__lmdb_fail_reopens > 0) {
		ks__lmdb_fail_reopens--;
		return ks_err_set(err, KS_EIO,
				  "ks_lmdb_reopen: mdb_env_open '%s' failed: "
				  "an injected fault",
				  s->path);
	}
#endif
	opts.lmdb_map_size = e->map_size;
	opts.max_readers = e->max_readers;
	t.env = NULL;
	ret = ks_lmdb_env_start(&t, &opts, 0, err);
	if (!ret)
		ret = ks_lmdb_dbis(&t, err);
	if (!ret)
		ret = ks_lmdb_identity(&t, e, err);
	if (ret) {
		if (t.env)
			mdb_env_close(t.env);
		return ret;
	}
	pthread_rwlock_wrlock(&e->map_lock);
	s->env = e->env = t.env;
	s->db = e->db = t.db;
	pthread_rwlock_unlock(&e->map_lock);
	return 0;
}

/*
 * 0 when s has an open environment; after a failed reopen, try again:
 * 0 when that works, else its error (KS_EIO, ...), detail in err.
 */
static int ks_lmdb_live(struct ks_lmdb_store *s, struct ks_err *err)
{
	int ret = 0, live;

	pthread_rwlock_rdlock(&s->shared->map_lock);
	live = s->env != NULL;
	pthread_rwlock_unlock(&s->shared->map_lock);
	if (live)
		return 0;
	pthread_mutex_lock(&ks_lmdb_envs_lock);
	if (!s->env)
		ret = ks_lmdb_reopen(s, err);
	pthread_mutex_unlock(&ks_lmdb_envs_lock);
	return ret;
}

/*
 * LMDB never overwrites a page it freed: old copies of replaced records stay
 * in the file until the page is reused. Scrubbing rewrites the file
 * compacted, which only this process may do, with no other handle open:
 * LMDB holds a shared fcntl() lock on the first byte of the lock file in
 * every process that has the environment open, so an exclusive lock there
 * proves nobody else has. Closing any descriptor of the lock file drops all
 * of this process's locks on it, so the environment is reopened afterwards
 * in every case, as on a fresh start.
 */
static int ks_lmdb_scrub(struct ks_store *store, struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	struct ks_lmdb_env *e = s->shared;
	struct flock fl = {.l_type = F_WRLCK,
			   .l_whence = SEEK_SET,
			   .l_start = 0,
			   .l_len = 1};
	size_t len = strlen(s->path) + sizeof(KS_LMDB_LOCK_SUFFIX);
	char *lock_path = malloc(len);
	unsigned env_flags = 0, readers = 0;
	MDB_envinfo info;
	int fd, rc, ret = 0;

	if (!lock_path)
		return ks_err_set(err, KS_ENOMEM,
				  "ks_lmdb_scrub: out of memory");
	ret = ks_lmdb_live(s, err);
	if (ret) {
		free(lock_path);
		return ret;
	}
	snprintf(lock_path, len, "%s%s", s->path, KS_LMDB_LOCK_SUFFIX);
	pthread_mutex_lock(&ks_lmdb_envs_lock);
	mdb_env_get_flags(s->env, &env_flags);
	if (e->refs != 1 || (env_flags & MDB_RDONLY)) {
		ret = ks_err_set(err, e->refs != 1 ? KS_EBUSY : KS_EACCES,
				 "ks_lmdb_scrub: '%s' is %s", s->path,
				 e->refs != 1 ? "open twice in this process"
					      : "read-only");
		goto out;
	}
	fd = open(lock_path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fcntl(fd, F_SETLK, &fl) != 0)
		ret = ks_err_set(err, KS_EBUSY,
				 "ks_lmdb_scrub: '%s' is open in another "
				 "process",
				 s->path);
	else
		ret = ks_lmdb_compact_copy(s, err);
	if (fd < 0)
		goto out;

	/*
	 * Reopen: the locks are gone, and the file may be a new one. When
	 * that fails the store has no environment; every later call tries
	 * again (ks_lmdb_live()) and fails clearly meanwhile.
	 */
	mdb_env_info(s->env, &info);
	mdb_env_get_maxreaders(s->env, &readers);
	e->map_size = info.me_mapsize;
	e->max_readers = readers;
	pthread_rwlock_wrlock(&e->map_lock);
	mdb_env_close(s->env);
	s->env = e->env = NULL;
	pthread_rwlock_unlock(&e->map_lock);
	close(fd);
	rc = ks_lmdb_reopen(s, ret ? NULL : err);
	if (rc && !ret)
		ret = rc;
out:
	pthread_mutex_unlock(&ks_lmdb_envs_lock);
	free(lock_path);
	return ret;
}

/*
 * Accounts. "users" maps the id (8 bytes, big-endian) to a 32-byte header,
 * registered, last_login (8 bytes each), flags (4: bit 0 locked, bit 1 has
 * an email), and the lengths of username, email and hash (4 each), then
 * each string with its NUL, the email only when set. "user_names" and
 * "user_emails" map the username and the email to the id. "auth_log" maps
 * the id to when and user_id (8 bytes each), success (1) and the client
 * address. "meta" holds "next_user_id" and "next_log_id", the next ids to
 * assign, which only grow.
 */
#define KS_LMDB_USER_HEAD 32
#define KS_LMDB_LOG_HEAD 17

static char ks_lmdb_key_next_user[] = "next_user_id";
static char ks_lmdb_key_next_log[] = "next_log_id";

static void ks_lmdb_put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t ks_lmdb_get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/*
 * KS_EACCES for a write, 1 for a read (nothing to see), when the store has
 * no account databases: it is read-only and predates them. 0 otherwise.
 */
static int ks_lmdb_acct_missing(const struct ks_lmdb_store *s, int write,
				const char *func, struct ks_err *err)
{
	if (s->db.has_accounts)
		return 0;
	if (!write)
		return 1;
	return ks_err_set(err, KS_EACCES,
			  "%s: '%s' has no account databases and is "
			  "read-only",
			  func, s->path);
}

/* Read the id counter name in txn; 1 when the store never assigned one. */
static int ks_lmdb_counter(struct ks_lmdb_store *s, MDB_txn *txn, char *name,
			   int64_t *out, const char *func, struct ks_err *err)
{
	MDB_val key = {strlen(name), name}, val;
	uint64_t v = 1;
	int rc = mdb_get(txn, s->db.meta, &key, &val);

	*out = 1;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return ks_lmdb_error(s, rc, func, "mdb_get", err);
	if (val.mv_size == 8)
		v = ks_lmdb_get64(val.mv_data);
	if (val.mv_size != 8 || v < 1 || v > INT64_MAX)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: '%s' in '%s' is not an id counter", func,
				  name, s->path);
	*out = (int64_t)v;
	return 0;
}

/* Raise the counter name above id when it is not already. */
static int ks_lmdb_counter_above(struct ks_lmdb_store *s, MDB_txn *txn,
				 char *name, int64_t next, int64_t id,
				 const char *func, struct ks_err *err)
{
	unsigned char buf[8];
	MDB_val key = {strlen(name), name}, val = {sizeof(buf), buf};
	int rc;

	if (id < next)
		return 0;
	if (id == INT64_MAX)
		return ks_err_set(err, KS_ENOSPC, "%s: no id left in '%s'",
				  func, s->path);
	ks_lmdb_put64(buf, (uint64_t)id + 1);
	rc = mdb_put(txn, s->db.meta, &key, &val, 0);
	return rc ? ks_lmdb_error(s, rc, func, "mdb_put", err) : 0;
}

/*
 * Point u at the user in key and val, inside the map: valid until the
 * transaction ends or writes.
 */
static int ks_lmdb_user_decode(const struct ks_lmdb_store *s,
			       const MDB_val *key, const MDB_val *val,
			       struct ks_user *u, const char *func,
			       struct ks_err *err)
{
	const unsigned char *p = val->mv_data;
	uint64_t ulen, elen, hlen, flags, need;

	memset(u, 0, sizeof(*u));
	if (key->mv_size == 8)
		u->id = ks_lmdb_int64(ks_lmdb_get64(key->mv_data));
	if (key->mv_size != 8 || u->id < 1 || val->mv_size < KS_LMDB_USER_HEAD)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: a user in '%s' is damaged (%zu-byte "
				  "key, %zu-byte value)",
				  func, s->path, key->mv_size, val->mv_size);
	flags = ks_lmdb_get32(p + 16);
	ulen = ks_lmdb_get32(p + 20);
	elen = ks_lmdb_get32(p + 24);
	hlen = ks_lmdb_get32(p + 28);
	need = KS_LMDB_USER_HEAD + ulen + 1 + hlen + 1 +
	       ((flags & 2) ? elen + 1 : 0);
	if (need != val->mv_size || !ulen || (!(flags & 2) && elen))
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: user %lld in '%s' has a damaged value",
				  func, (long long)u->id, s->path);
	p += KS_LMDB_USER_HEAD;
	u->username = (char *)(uintptr_t)p;
	p += ulen + 1;
	if (flags & 2) {
		u->email = (char *)(uintptr_t)p;
		p += elen + 1;
	}
	u->password_hash = (char *)(uintptr_t)p;
	if (strlen(u->username) != ulen || strlen(u->password_hash) != hlen ||
	    (u->email && strlen(u->email) != elen))
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: user %lld in '%s' has a damaged value",
				  func, (long long)u->id, s->path);
	u->registered = ks_lmdb_int64(ks_lmdb_get64(val->mv_data));
	u->last_login =
		ks_lmdb_int64(ks_lmdb_get64((unsigned char *)val->mv_data + 8));
	u->locked = (flags & 1) != 0;
	return 0;
}

/* The value of u in a new buffer (*out, freed by the caller). */
static int ks_lmdb_user_encode(const struct ks_user *u, MDB_val *out,
			       const char *func, struct ks_err *err)
{
	size_t ulen = strlen(u->username), hlen = strlen(u->password_hash);
	size_t elen = u->email ? strlen(u->email) : 0;
	unsigned char *p;

	if (ulen > UINT32_MAX || elen > UINT32_MAX || hlen > UINT32_MAX ||
	    hlen > SIZE_MAX - KS_LMDB_USER_HEAD - 3 - ulen - elen)
		return ks_err_set(err, KS_EINVAL, "%s: a user too large", func);
	out->mv_size = KS_LMDB_USER_HEAD + ulen + 1 + hlen + 1 +
		       (u->email ? elen + 1 : 0);
	out->mv_data = p = malloc(out->mv_size);
	if (!p)
		return ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	ks_lmdb_put64(p, (uint64_t)u->registered);
	ks_lmdb_put64(p + 8, (uint64_t)u->last_login);
	ks_lmdb_put32(p + 16, (u->locked ? 1u : 0u) | (u->email ? 2u : 0u));
	ks_lmdb_put32(p + 20, (uint32_t)ulen);
	ks_lmdb_put32(p + 24, (uint32_t)elen);
	ks_lmdb_put32(p + 28, (uint32_t)hlen);
	p += KS_LMDB_USER_HEAD;
	memcpy(p, u->username, ulen + 1);
	p += ulen + 1;
	if (u->email) {
		memcpy(p, u->email, elen + 1);
		p += elen + 1;
	}
	memcpy(p, u->password_hash, hlen + 1);
	return 0;
}

/* Read the user id in txn into *u (borrowed); KS_ENOTFOUND when absent. */
static int ks_lmdb_user_read(struct ks_lmdb_store *s, MDB_txn *txn, int64_t id,
			     struct ks_user *u, const char *func,
			     struct ks_err *err)
{
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val;
	int rc;

	ks_lmdb_put64(kbuf, (uint64_t)id);
	rc = mdb_get(txn, s->db.users, &key, &val);
	if (rc == MDB_NOTFOUND)
		return ks_err_set(err, KS_ENOTFOUND, "%s: no user %lld in '%s'",
				  func, (long long)id, s->path);
	if (rc)
		return ks_lmdb_error(s, rc, func, "mdb_get", err);
	return ks_lmdb_user_decode(s, &key, &val, u, func, err);
}

/*
 * Point an index (username or email) at id, unless another user has it:
 * then KS_EEXISTS naming what and whom.
 */
static int ks_lmdb_index_put(struct ks_lmdb_store *s, MDB_txn *txn, MDB_dbi dbi,
			     const char *text, int64_t id, const char *what,
			     const char *func, struct ks_err *err)
{
	unsigned char buf[8];
	MDB_val key = {strlen(text), (void *)(uintptr_t)text};
	MDB_val val = {sizeof(buf), buf};
	int rc;

	if (key.mv_size > (size_t)mdb_env_get_maxkeysize(s->env))
		return ks_err_set(err, KS_EINVAL,
				  "%s: the %s is longer than %d bytes", func,
				  what, mdb_env_get_maxkeysize(s->env));
	ks_lmdb_put64(buf, (uint64_t)id);
	rc = mdb_put(txn, dbi, &key, &val, MDB_NOOVERWRITE);
	if (rc == MDB_KEYEXIST)
		return ks_err_set(
			err, KS_EEXISTS,
			"%s: the %s is taken by user %lld in '%s'", func, what,
			val.mv_size == 8 ? (long long)ks_lmdb_int64(
						   ks_lmdb_get64(val.mv_data))
					 : -1LL,
			s->path);
	return rc ? ks_lmdb_error(s, rc, func, "mdb_put", err) : 0;
}

/* Everything an account call needs; unused members stay zero. */
struct ks_lmdb_acct_args {
	const struct ks_user *user;
	int64_t id;
	const char *hash;
	int locked;
	int64_t when;
	int what;
	const struct ks_auth_log *entries;
	size_t n;
	size_t count;
	ks_user_fn user_fn;
	ks_auth_log_fn log_fn;
	void *arg;
	const char *func;
};

/*
 * Insert a->user as it is (its id, import) or, with id 0, as a new user
 * with the next id; a->id receives the id.
 */
static int ks_lmdb_user_insert(struct ks_lmdb_store *s, MDB_txn *txn,
			       struct ks_lmdb_acct_args *a, struct ks_err *err)
{
	const struct ks_user *u = a->user;
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {0, NULL};
	int64_t next, id = u->id;
	void *buf;
	int rc, ret;

	ret = ks_lmdb_acct_missing(s, 1, a->func, err);
	if (!ret)
		ret = ks_lmdb_counter(s, txn, ks_lmdb_key_next_user, &next,
				      a->func, err);
	if (ret)
		return ret;
	if (!id)
		id = next;
	ks_lmdb_put64(kbuf, (uint64_t)id);
	ret = ks_lmdb_user_encode(u, &val, a->func, err);
	if (ret)
		return ret;
	/* On MDB_KEYEXIST val points at the user there: free ours. */
	buf = val.mv_data;
	rc = mdb_put(txn, s->db.users, &key, &val, MDB_NOOVERWRITE);
	free(buf);
	if (rc == MDB_KEYEXIST && u->id)
		return ks_err_set(err, KS_EEXISTS,
				  "%s: user id %lld is taken in '%s'", a->func,
				  (long long)id, s->path);
	if (rc == MDB_KEYEXIST)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: 'next_user_id' %lld in '%s' is taken",
				  a->func, (long long)id, s->path);
	if (rc)
		return ks_lmdb_error(s, rc, a->func, "mdb_put", err);
	ret = ks_lmdb_index_put(s, txn, s->db.names, u->username, id,
				"username", a->func, err);
	if (!ret && u->email)
		ret = ks_lmdb_index_put(s, txn, s->db.emails, u->email, id,
					"email", a->func, err);
	if (!ret)
		ret = ks_lmdb_counter_above(s, txn, ks_lmdb_key_next_user, next,
					    id, a->func, err);
	a->id = id;
	return ret;
}

static int ks_lmdb_user_insert_txn(struct ks_txn *txn, void *arg,
				   struct ks_err *err)
{
	return ks_lmdb_user_insert(ks_lmdb_downcast(txn->store),
				   ks_lmdb_txn_downcast(txn)->txn, arg, err);
}

static int ks_lmdb_user_add(struct ks_store *store, const char *username,
			    const char *password_hash, const char *email,
			    int64_t registered, int64_t *id_out,
			    struct ks_err *err)
{
	struct ks_user u = {0,
			    (char *)(uintptr_t)username,
			    (char *)(uintptr_t)email,
			    (char *)(uintptr_t)password_hash,
			    registered,
			    KS_NEVER,
			    0};
	struct ks_lmdb_acct_args a = {.user = &u, .func = "ks_lmdb_user_add"};
	int ret = ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_insert_txn,
			      &a, a.func, err);

	if (!ret && id_out)
		*id_out = a.id;
	return ret;
}

static int ks_lmdb_user_import(struct ks_store *store, const struct ks_user *u,
			       struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.user = u, .func = "ks_lmdb_user_import"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_insert_txn, &a,
			   a.func, err);
}

static int ks_lmdb_txn_user_import(struct ks_txn *txn, const struct ks_user *u,
				   struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.user = u,
				      .func = "ks_lmdb_txn_user_import"};

	return ks_lmdb_user_insert_txn(txn, &a, err);
}

static char *ks_lmdb_strdup(const char *text, int *failed)
{
	char *copy = text ? strdup(text) : NULL;

	*failed |= text && !copy;
	return copy;
}

/* The id the username index gives username: 0, KS_ENOTFOUND, an error. */
static int ks_lmdb_user_id(struct ks_lmdb_store *s, MDB_txn *txn,
			   const char *username, int64_t *out,
			   struct ks_err *err)
{
	MDB_val key = {strlen(username), (void *)(uintptr_t)username}, val;
	int rc;

	if (ks_lmdb_acct_missing(s, 0, NULL, NULL))
		return ks_err_set(err, KS_ENOTFOUND, "no such user");
	rc = mdb_get(txn, s->db.names, &key, &val);
	if (rc == MDB_NOTFOUND)
		return ks_err_set(err, KS_ENOTFOUND, "no such user");
	if (rc)
		return ks_lmdb_error(s, rc, "ks_lmdb_user_get", "mdb_get", err);
	if (val.mv_size != 8)
		return ks_err_set(err, KS_ECORRUPT,
				  "ks_lmdb_user_get: the username index of "
				  "'%s' is damaged",
				  s->path);
	*out = ks_lmdb_int64(ks_lmdb_get64(val.mv_data));
	return 0;
}

static int ks_lmdb_user_get(struct ks_store *store, const char *username,
			    struct ks_user *out, struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	struct ks_user u = {0, NULL, NULL, NULL, 0, 0, 0};
	MDB_txn *txn;
	int64_t id = 0;
	int ret, failed = 0;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, "ks_lmdb_user_get", err);
	if (ret)
		return ret;
	ret = ks_lmdb_user_id(s, txn, username, &id, err);
	if (!ret) {
		ret = ks_lmdb_user_read(s, txn, id, &u, "ks_lmdb_user_get",
					err);
		if (ret == KS_ENOTFOUND)
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_lmdb_user_get: the username index "
					 "of '%s' names a missing user %lld",
					 s->path, (long long)id);
	}
	if (!ret) {
		*out = u;
		out->username = ks_lmdb_strdup(u.username, &failed);
		out->email = ks_lmdb_strdup(u.email, &failed);
		out->password_hash = ks_lmdb_strdup(u.password_hash, &failed);
		if (failed)
			ret = ks_err_set(err, KS_ENOMEM,
					 "ks_lmdb_user_get: out of memory");
	}
	ks_lmdb_end(s, txn, MDB_RDONLY);
	if (ret)
		ks_user_release(out);
	return ret;
}

static int ks_lmdb_visit_user(struct ks_lmdb_store *s, const MDB_val *key,
			      const MDB_val *val, void *ctx, struct ks_err *err)
{
	struct ks_lmdb_acct_args *a = ctx;
	struct ks_user u;
	int ret = ks_lmdb_user_decode(s, key, val, &u, a->func, err);

	return ret ? ret : a->user_fn(&u, a->arg);
}

static int ks_lmdb_user_walk(struct ks_lmdb_store *s, MDB_txn *txn,
			     struct ks_lmdb_acct_args *a, struct ks_err *err)
{
	if (ks_lmdb_acct_missing(s, 0, NULL, NULL))
		return 0;
	return ks_lmdb_cursor_walk(s, txn, s->db.users, ks_lmdb_visit_user, a,
				   a->func, err);
}

static int ks_lmdb_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
			     struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	struct ks_lmdb_acct_args a = {
		.user_fn = fn, .arg = arg, .func = "ks_lmdb_user_list"};
	MDB_txn *txn;
	int ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, a.func, err);
	if (ret)
		return ret;
	ret = ks_lmdb_user_walk(s, txn, &a, err);
	ks_lmdb_end(s, txn, MDB_RDONLY);
	return ret;
}

static int ks_lmdb_txn_user_list(struct ks_txn *txn, ks_user_fn fn, void *arg,
				 struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {
		.user_fn = fn, .arg = arg, .func = "ks_lmdb_txn_user_list"};

	return ks_lmdb_user_walk(ks_lmdb_downcast(txn->store),
				 ks_lmdb_txn_downcast(txn)->txn, &a, err);
}

enum {
	KS_LMDB_SET_HASH,
	KS_LMDB_SET_LOCKED,
	KS_LMDB_SET_LOGIN
};

/* Change one field of the user a->id (a->what says which). */
static int ks_lmdb_user_set_txn(struct ks_txn *txn, void *arg,
				struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	MDB_txn *t = ks_lmdb_txn_downcast(txn)->txn;
	struct ks_lmdb_acct_args *a = arg;
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {0, NULL};
	struct ks_user u;
	void *buf;
	int rc, ret;

	ret = ks_lmdb_acct_missing(s, 1, a->func, err);
	if (!ret)
		ret = ks_lmdb_user_read(s, t, a->id, &u, a->func, err);
	if (ret)
		return ret;
	if (a->what == KS_LMDB_SET_HASH)
		u.password_hash = (char *)(uintptr_t)a->hash;
	else if (a->what == KS_LMDB_SET_LOCKED)
		u.locked = a->locked;
	else
		u.last_login = a->when;
	/* Encoded into a buffer of its own before the put moves pages. */
	ret = ks_lmdb_user_encode(&u, &val, a->func, err);
	if (ret)
		return ret;
	buf = val.mv_data;
	ks_lmdb_put64(kbuf, (uint64_t)a->id);
	rc = mdb_put(t, s->db.users, &key, &val, 0);
	free(buf);
	return rc ? ks_lmdb_error(s, rc, a->func, "mdb_put", err) : 0;
}

static int ks_lmdb_user_set_hash(struct ks_store *store, int64_t id,
				 const char *hash, struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.id = id,
				      .hash = hash,
				      .what = KS_LMDB_SET_HASH,
				      .func = "ks_lmdb_user_set_hash"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_set_txn, &a,
			   a.func, err);
}

static int ks_lmdb_user_set_locked(struct ks_store *store, int64_t id,
				   int locked, struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.id = id,
				      .locked = locked,
				      .what = KS_LMDB_SET_LOCKED,
				      .func = "ks_lmdb_user_set_locked"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_set_txn, &a,
			   a.func, err);
}

static int ks_lmdb_user_set_login(struct ks_store *store, int64_t id,
				  int64_t when, struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.id = id,
				      .when = when,
				      .what = KS_LMDB_SET_LOGIN,
				      .func = "ks_lmdb_user_set_login"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_set_txn, &a,
			   a.func, err);
}

/* Remove the index entry text of dbi (it must exist). */
static int ks_lmdb_index_del(struct ks_lmdb_store *s, MDB_txn *txn, MDB_dbi dbi,
			     char *text, const char *func, struct ks_err *err)
{
	MDB_val key = {strlen(text), text};
	int rc = mdb_del(txn, dbi, &key, NULL);

	if (rc == MDB_NOTFOUND)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: an index of '%s' lacks a user", func,
				  s->path);
	return rc ? ks_lmdb_error(s, rc, func, "mdb_del", err) : 0;
}

/*
 * Set user_id to 0 in every auth-log entry of the user id: a walk of the
 * whole log (deletes are rare).
 */
static int ks_lmdb_log_unlink(struct ks_lmdb_store *s, MDB_txn *txn, int64_t id,
			      const char *func, struct ks_err *err)
{
	unsigned char buf[KS_LMDB_LOG_HEAD + 64];
	MDB_cursor *cur = NULL;
	MDB_val key, val, nval;
	int rc;

	rc = mdb_cursor_open(txn, s->db.alog, &cur);
	if (!rc)
		rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
	while (!rc) {
		if (val.mv_size >= KS_LMDB_LOG_HEAD &&
		    val.mv_size <= sizeof(buf) &&
		    ks_lmdb_int64(ks_lmdb_get64((unsigned char *)val.mv_data +
						8)) == id) {
			memcpy(buf, val.mv_data, val.mv_size);
			ks_lmdb_put64(buf + 8, 0);
			nval.mv_size = val.mv_size;
			nval.mv_data = buf;
			rc = mdb_cursor_put(cur, &key, &nval, MDB_CURRENT);
		}
		if (!rc)
			rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	if (cur)
		mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND
		       ? 0
		       : ks_lmdb_error(s, rc, func, "mdb_cursor", err);
}

/* The user, its index entries, and its id in the log, in one go. */
static int ks_lmdb_user_delete_txn(struct ks_txn *txn, void *arg,
				   struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	MDB_txn *t = ks_lmdb_txn_downcast(txn)->txn;
	struct ks_lmdb_acct_args *a = arg;
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf};
	char *username = NULL, *email = NULL;
	struct ks_user u;
	int rc, ret, failed = 0;

	ret = ks_lmdb_acct_missing(s, 1, a->func, err);
	if (!ret)
		ret = ks_lmdb_user_read(s, t, a->id, &u, a->func, err);
	if (ret)
		return ret;
	/* Copied out: the deletes below may move the pages u points into. */
	username = ks_lmdb_strdup(u.username, &failed);
	email = ks_lmdb_strdup(u.email, &failed);
	if (failed)
		ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory", a->func);
	if (!ret) {
		ks_lmdb_put64(kbuf, (uint64_t)a->id);
		rc = mdb_del(t, s->db.users, &key, NULL);
		if (rc)
			ret = ks_lmdb_error(s, rc, a->func, "mdb_del", err);
	}
	if (!ret)
		ret = ks_lmdb_index_del(s, t, s->db.names, username, a->func,
					err);
	if (!ret && email)
		ret = ks_lmdb_index_del(s, t, s->db.emails, email, a->func,
					err);
	if (!ret)
		ret = ks_lmdb_log_unlink(s, t, a->id, a->func, err);
	free(username);
	free(email);
	return ret;
}

static int ks_lmdb_user_delete(struct ks_store *store, int64_t id,
			       struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.id = id, .func = "ks_lmdb_user_delete"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_user_delete_txn, &a,
			   a.func, err);
}

/*
 * Append a->n entries: with their ids (import) or the next ones. A user
 * id that names no user is stored as 0.
 */
static int ks_lmdb_log_insert(struct ks_lmdb_store *s, MDB_txn *txn,
			      const struct ks_lmdb_acct_args *a, int import,
			      struct ks_err *err)
{
	unsigned char kbuf[8], vbuf[KS_LMDB_LOG_HEAD + 64];
	MDB_val key = {sizeof(kbuf), kbuf}, val = {0, vbuf}, uval;
	int64_t next, top = 0;
	size_t i, iplen;
	int rc = 0, ret;

	ret = ks_lmdb_acct_missing(s, 1, a->func, err);
	if (!ret)
		ret = ks_lmdb_counter(s, txn, ks_lmdb_key_next_log, &next,
				      a->func, err);
	for (i = 0; !ret && i < a->n; i++) {
		const struct ks_auth_log *e = &a->entries[i];
		int64_t id, user_id = e->user_id;

		if (!import && (uint64_t)next + i > INT64_MAX)
			return ks_err_set(err, KS_ENOSPC,
					  "%s: no id left in '%s'", a->func,
					  s->path);
		id = import ? e->id : (int64_t)((uint64_t)next + i);
		if (user_id) {
			ks_lmdb_put64(kbuf, (uint64_t)user_id);
			rc = mdb_get(txn, s->db.users, &key, &uval);
			if (rc == MDB_NOTFOUND)
				user_id = 0;
			else if (rc)
				break;
		}
		iplen = strnlen(e->ip, sizeof(e->ip));
		ks_lmdb_put64(vbuf, (uint64_t)e->when);
		ks_lmdb_put64(vbuf + 8, (uint64_t)user_id);
		vbuf[16] = e->success ? 1 : 0;
		memcpy(vbuf + KS_LMDB_LOG_HEAD, e->ip, iplen);
		val.mv_size = KS_LMDB_LOG_HEAD + iplen;
		val.mv_data = vbuf;
		ks_lmdb_put64(kbuf, (uint64_t)id);
		rc = mdb_put(txn, s->db.alog, &key, &val, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST)
			return ks_err_set(err,
					  import ? KS_EEXISTS : KS_ECORRUPT,
					  "%s: auth-log id %lld is taken in "
					  "'%s'",
					  a->func, (long long)id, s->path);
		if (rc)
			break;
		if (id > top)
			top = id;
	}
	if (rc)
		return ks_lmdb_error(s, rc, a->func, "mdb_put", err);
	if (!ret && a->n)
		ret = ks_lmdb_counter_above(s, txn, ks_lmdb_key_next_log, next,
					    top, a->func, err);
	return ret;
}

static int ks_lmdb_log_add_txn(struct ks_txn *txn, void *arg,
			       struct ks_err *err)
{
	return ks_lmdb_log_insert(ks_lmdb_downcast(txn->store),
				  ks_lmdb_txn_downcast(txn)->txn, arg, 0, err);
}

static int ks_lmdb_auth_log_add(struct ks_store *store,
				const struct ks_auth_log *entries, size_t n,
				struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {
		.entries = entries, .n = n, .func = "ks_lmdb_auth_log_add"};

	return ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_log_add_txn, &a,
			   a.func, err);
}

static int ks_lmdb_txn_auth_log_import(struct ks_txn *txn,
				       const struct ks_auth_log *entries,
				       size_t n, struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.entries = entries,
				      .n = n,
				      .func = "ks_lmdb_txn_auth_log_import"};

	return ks_lmdb_log_insert(ks_lmdb_downcast(txn->store),
				  ks_lmdb_txn_downcast(txn)->txn, &a, 1, err);
}

static int ks_lmdb_log_decode(const struct ks_lmdb_store *s, const MDB_val *key,
			      const MDB_val *val, struct ks_auth_log *e,
			      const char *func, struct ks_err *err)
{
	const unsigned char *p = val->mv_data;

	memset(e, 0, sizeof(*e));
	if (key->mv_size == 8)
		e->id = ks_lmdb_int64(ks_lmdb_get64(key->mv_data));
	if (key->mv_size != 8 || e->id < 1 ||
	    val->mv_size <= KS_LMDB_LOG_HEAD ||
	    val->mv_size >= KS_LMDB_LOG_HEAD + sizeof(e->ip))
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: an auth-log entry in '%s' is damaged "
				  "(%zu-byte key, %zu-byte value)",
				  func, s->path, key->mv_size, val->mv_size);
	e->when = ks_lmdb_int64(ks_lmdb_get64(p));
	e->user_id = ks_lmdb_int64(ks_lmdb_get64(p + 8));
	e->success = p[16] != 0;
	memcpy(e->ip, p + KS_LMDB_LOG_HEAD, val->mv_size - KS_LMDB_LOG_HEAD);
	return 0;
}

/* Call a->log_fn for the entries after a->id, in id order. */
static int ks_lmdb_log_walk(struct ks_lmdb_store *s, MDB_txn *txn,
			    const struct ks_lmdb_acct_args *a,
			    struct ks_err *err)
{
	unsigned char kbuf[8];
	MDB_val key = {sizeof(kbuf), kbuf}, val;
	MDB_cursor *cur = NULL;
	struct ks_auth_log e;
	int rc, ret = 0;

	if (ks_lmdb_acct_missing(s, 0, NULL, NULL) || a->id == INT64_MAX)
		return 0;
	ks_lmdb_put64(kbuf, (uint64_t)(a->id < 0 ? 0 : a->id + 1));
	rc = mdb_cursor_open(txn, s->db.alog, &cur);
	if (!rc)
		rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
	while (!rc) {
		ret = ks_lmdb_log_decode(s, &key, &val, &e, a->func, err);
		if (!ret)
			ret = a->log_fn(&e, a->arg);
		if (ret)
			break;
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	if (!ret && rc != MDB_NOTFOUND)
		ret = ks_lmdb_error(s, rc, a->func, "mdb_cursor_get", err);
	if (cur)
		mdb_cursor_close(cur);
	return ret;
}

static int ks_lmdb_auth_log_list(struct ks_store *store, int64_t after_id,
				 ks_auth_log_fn fn, void *arg,
				 struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(store);
	struct ks_lmdb_acct_args a = {.id = after_id,
				      .log_fn = fn,
				      .arg = arg,
				      .func = "ks_lmdb_auth_log_list"};
	MDB_txn *txn;
	int ret;

	ret = ks_lmdb_begin(s, MDB_RDONLY, &txn, a.func, err);
	if (ret)
		return ret;
	ret = ks_lmdb_log_walk(s, txn, &a, err);
	ks_lmdb_end(s, txn, MDB_RDONLY);
	return ret;
}

static int ks_lmdb_txn_auth_log_list(struct ks_txn *txn, int64_t after_id,
				     ks_auth_log_fn fn, void *arg,
				     struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.id = after_id,
				      .log_fn = fn,
				      .arg = arg,
				      .func = "ks_lmdb_txn_auth_log_list"};

	return ks_lmdb_log_walk(ks_lmdb_downcast(txn->store),
				ks_lmdb_txn_downcast(txn)->txn, &a, err);
}

/* Delete every entry older than a->when; the walk is over all entries. */
static int ks_lmdb_log_purge_txn(struct ks_txn *txn, void *arg,
				 struct ks_err *err)
{
	struct ks_lmdb_store *s = ks_lmdb_downcast(txn->store);
	struct ks_lmdb_acct_args *a = arg;
	unsigned char kbuf[8];
	MDB_cursor *cur = NULL;
	MDB_val key, val;
	struct ks_auth_log e;
	int rc, ret = 0;

	if (ks_lmdb_acct_missing(s, 0, NULL, NULL))
		return 0;
	rc = mdb_cursor_open(ks_lmdb_txn_downcast(txn)->txn, s->db.alog, &cur);
	if (!rc)
		rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
	while (!rc) {
		ret = ks_lmdb_log_decode(s, &key, &val, &e, a->func, err);
		if (ret)
			break;
		if (e.when < a->when) {
			/*
			 * Found again from its key: where a cursor stands
			 * after a delete is the library's business.
			 */
			memcpy(kbuf, key.mv_data, sizeof(kbuf));
			rc = mdb_cursor_del(cur, 0);
			if (rc)
				break;
			a->count++;
			key.mv_size = sizeof(kbuf);
			key.mv_data = kbuf;
			rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
		} else {
			rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
		}
	}
	if (!ret && rc != MDB_NOTFOUND)
		ret = ks_lmdb_error(s, rc, a->func, "mdb_cursor", err);
	if (cur)
		mdb_cursor_close(cur);
	return ret;
}

static int ks_lmdb_auth_log_purge(struct ks_store *store, int64_t before,
				  size_t *count_out, struct ks_err *err)
{
	struct ks_lmdb_acct_args a = {.when = before,
				      .func = "ks_lmdb_auth_log_purge"};
	int ret = ks_lmdb_run(ks_lmdb_downcast(store), ks_lmdb_log_purge_txn,
			      &a, a.func, err);

	if (!ret && count_out)
		*count_out = a.count;
	return ret;
}

/* A user of the check: decodable, indexed, with an id below the counter. */
static int ks_lmdb_visit_user_check(struct ks_lmdb_store *s, const MDB_val *key,
				    const MDB_val *val, void *ctx,
				    struct ks_err *err)
{
	struct ks_lmdb_orphan *o = ctx;
	const char *what = "the username";
	MDB_val ikey, ival;
	struct ks_user u;
	int64_t next;
	int rc, ret;

	ret = ks_lmdb_user_decode(s, key, val, &u, "ks_lmdb_check", err);
	if (!ret)
		ret = ks_lmdb_counter(s, o->txn, ks_lmdb_key_next_user, &next,
				      "ks_lmdb_check", err);
	if (!ret && u.id >= next)
		return ks_err_set(err, KS_ECORRUPT,
				  "ks_lmdb_check: user %lld in '%s' is not "
				  "below 'next_user_id' %lld",
				  (long long)u.id, s->path, (long long)next);
	ikey.mv_size = strlen(u.username);
	ikey.mv_data = u.username;
	rc = ret ? 0 : mdb_get(o->txn, s->db.names, &ikey, &ival);
	if (!ret && !rc && u.email) {
		what = "the email";
		ikey.mv_size = strlen(u.email);
		ikey.mv_data = u.email;
		if (ival.mv_size == 8 &&
		    ks_lmdb_int64(ks_lmdb_get64(ival.mv_data)) == u.id)
			rc = mdb_get(o->txn, s->db.emails, &ikey, &ival);
	}
	if (!ret &&
	    (rc == MDB_NOTFOUND ||
	     (!rc && (ival.mv_size != 8 ||
		      ks_lmdb_int64(ks_lmdb_get64(ival.mv_data)) != u.id))))
		return ks_err_set(err, KS_ECORRUPT,
				  "ks_lmdb_check: %s of user %lld in '%s' is "
				  "not indexed to it",
				  what, (long long)u.id, s->path);
	if (!ret && rc)
		ret = ks_lmdb_error(s, rc, "ks_lmdb_check", "mdb_get", err);
	return ret;
}

static int ks_lmdb_visit_log_check(struct ks_lmdb_store *s, const MDB_val *key,
				   const MDB_val *val, void *ctx,
				   struct ks_err *err)
{
	const int64_t *next = ctx;
	struct ks_auth_log e;
	int ret = ks_lmdb_log_decode(s, key, val, &e, "ks_lmdb_check", err);

	if (!ret && e.id >= *next)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_lmdb_check: auth-log id %lld in '%s' is "
				 "not below 'next_log_id' %lld",
				 (long long)e.id, s->path, (long long)*next);
	return ret;
}

/*
 * The account databases: every user decodes and its username and email
 * are indexed to it, the indexes hold nothing else, every entry of the
 * log decodes, and the counters are above every id.
 */
static int ks_lmdb_check_accounts(struct ks_lmdb_store *s, MDB_txn *txn,
				  struct ks_err *err)
{
	struct ks_lmdb_orphan o = {s, txn, err};
	MDB_stat users, names, emails;
	int64_t next;
	int rc, ret;

	if (ks_lmdb_acct_missing(s, 0, NULL, NULL))
		return 0;
	ret = ks_lmdb_cursor_walk(s, txn, s->db.users, ks_lmdb_visit_user_check,
				  &o, "ks_lmdb_check", err);
	if (!ret)
		ret = ks_lmdb_counter(s, txn, ks_lmdb_key_next_log, &next,
				      "ks_lmdb_check", err);
	if (!ret)
		ret = ks_lmdb_cursor_walk(s, txn, s->db.alog,
					  ks_lmdb_visit_log_check, &next,
					  "ks_lmdb_check", err);
	if (ret)
		return ret;
	rc = mdb_stat(txn, s->db.users, &users);
	if (!rc)
		rc = mdb_stat(txn, s->db.names, &names);
	if (!rc)
		rc = mdb_stat(txn, s->db.emails, &emails);
	if (rc)
		return ks_lmdb_error(s, rc, "ks_lmdb_check", "mdb_stat", err);
	/* Each user has one username and at most one email indexed to it. */
	if (names.ms_entries != users.ms_entries ||
	    emails.ms_entries > users.ms_entries)
		return ks_err_set(err, KS_ECORRUPT,
				  "ks_lmdb_check: '%s' has %zu users, %zu "
				  "usernames and %zu emails indexed",
				  s->path, users.ms_entries, names.ms_entries,
				  emails.ms_entries);
	return 0;
}

const struct ks_backend ks_backend_lmdb = {
	.name = "lmdb",
	.default_path = "totally_not_my_privateKeys.lmdb",
	.open = ks_lmdb_open,
	.close = ks_lmdb_close,
	.put = ks_lmdb_put,
	.import = ks_lmdb_import,
	.get = ks_lmdb_get,
	.list = ks_lmdb_list,
	.version = ks_lmdb_version,
	.check = ks_lmdb_check,
	.life_list = ks_lmdb_life_list,
	.write = ks_lmdb_write,
	.txn_next_kid = ks_lmdb_txn_next_kid,
	.txn_put = ks_lmdb_txn_put,
	.txn_import = ks_lmdb_txn_import,
	.txn_update = ks_lmdb_txn_update,
	.txn_delete = ks_lmdb_txn_delete,
	.txn_list = ks_lmdb_txn_list,
	.txn_life_put = ks_lmdb_txn_life_put,
	.scrub = ks_lmdb_scrub,
	.user_add = ks_lmdb_user_add,
	.user_import = ks_lmdb_user_import,
	.user_get = ks_lmdb_user_get,
	.user_list = ks_lmdb_user_list,
	.user_set_hash = ks_lmdb_user_set_hash,
	.user_set_locked = ks_lmdb_user_set_locked,
	.user_set_login = ks_lmdb_user_set_login,
	.user_delete = ks_lmdb_user_delete,
	.auth_log_add = ks_lmdb_auth_log_add,
	.auth_log_list = ks_lmdb_auth_log_list,
	.auth_log_purge = ks_lmdb_auth_log_purge,
	.txn_user_list = ks_lmdb_txn_user_list,
	.txn_user_import = ks_lmdb_txn_user_import,
	.txn_auth_log_list = ks_lmdb_txn_auth_log_list,
	.txn_auth_log_import = ks_lmdb_txn_auth_log_import,
};
