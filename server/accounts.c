/*
 * Accounts: see include/accounts.h.
 *
 * Locks: each rate limiter has its own (ratelimit.c); q_lock guards the
 * log queue and its counters, held only for memory work. The request path
 * reads the store once per login (the user it cannot do without) and
 * never writes it: the writer thread does.
 */
#define _DEFAULT_SOURCE /* explicit_bzero */

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "accounts.h"
#include "ratelimit.h"
#include "signer.h"

/* Memory for each rate limiter's table. */
#define ACCT_LIMITER_BYTES (8u << 20)
/* Entries one batch of the writer takes. */
#define ACCT_BATCH 256
/* How often old log entries are purged. */
#define ACCT_PURGE_EVERY_S 3600

struct acct_cidr {
	int family;
	unsigned char addr[16];
	unsigned prefix;
};

/* One queued write: a log entry, and what a successful login changes. */
struct acct_item {
	uint64_t seq;
	struct ks_auth_log entry;
	int64_t login_id;	  /* set last_login of this user, or 0 */
	char rehash[PW_HASH_MAX]; /* new hash for login_id, or "" */
};

struct jwks_accounts {
	struct ks_store *store;
	struct jwks_accounts_options opts;
	struct acct_cidr proxies[JWKS_MAX_TRUSTED_PROXIES];
	size_t n_proxies;
	struct rl_limiter *auth_rl, *register_rl;
	sem_t hash_slots;
	char dummy_hash[PW_HASH_MAX];

	/* q_lock: the queue (a ring of cap items), its counters. */
	pthread_mutex_t q_lock;
	pthread_cond_t q_cond;	  /* the writer waits for work */
	pthread_cond_t done_cond; /* logins wait for their row */
	struct acct_item *q;
	size_t cap, head, count;
	uint64_t next_seq, committed_seq;
	int dropping; /* a drop was logged and the queue has not drained */
	int stopping;
	int store_down;
	pthread_t writer;
	int writer_started;

	atomic_uint_fast64_t log_dropped, log_written, rate_limited,
		login_failures;
};

static int64_t acct_now(const struct jwks_accounts *a)
{
	return a->opts.clock ? a->opts.clock(a->opts.clock_arg)
			     : (int64_t)time(NULL);
}

static int64_t acct_mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
acct_log(const struct jwks_accounts *a, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (a->opts.log)
		a->opts.log(a->opts.log_arg, line);
	else
		fprintf(stderr, "jwksd: %s\n", line);
}

/* "ADDR/PREFIX" (or a bare address: all bits) into *out: 0 or -1. */
static int acct_parse_cidr(const char *text, struct acct_cidr *out)
{
	char addr[64];
	const char *slash = strchr(text, '/');
	size_t n = slash ? (size_t)(slash - text) : strlen(text);
	unsigned long prefix;
	char *end;

	if (n == 0 || n >= sizeof(addr))
		return -1;
	memcpy(addr, text, n);
	addr[n] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, addr, out->addr) == 1)
		out->family = AF_INET;
	else if (inet_pton(AF_INET6, addr, out->addr) == 1)
		out->family = AF_INET6;
	else
		return -1;
	out->prefix = out->family == AF_INET ? 32 : 128;
	if (slash) {
		errno = 0;
		prefix = strtoul(slash + 1, &end, 10);
		if (errno || end == slash + 1 || *end || prefix > out->prefix)
			return -1;
		out->prefix = (unsigned)prefix;
	}
	return 0;
}

int jwks_accounts_valid_cidr(const char *text)
{
	struct acct_cidr c;

	return text && acct_parse_cidr(text, &c) == 0;
}

/* Whether the address text is inside one of the trusted ranges. */
static int acct_trusted(const struct jwks_accounts *a, const char *text)
{
	unsigned char addr[16];
	int family;
	size_t i;

	if (inet_pton(AF_INET, text, addr) == 1)
		family = AF_INET;
	else if (inet_pton(AF_INET6, text, addr) == 1)
		family = AF_INET6;
	else
		return 0;
	for (i = 0; i < a->n_proxies; i++) {
		const struct acct_cidr *c = &a->proxies[i];
		unsigned full = c->prefix / 8, rest = c->prefix % 8;

		if (c->family != family || memcmp(addr, c->addr, full))
			continue;
		if (rest && ((addr[full] ^ c->addr[full]) &
			     (unsigned char)(0xff << (8 - rest))))
			continue;
		return 1;
	}
	return 0;
}

/* Whether text is an IPv4 or IPv6 address. */
static int acct_is_address(const char *text)
{
	unsigned char probe[16];

	return inet_pton(AF_INET, text, probe) == 1 ||
	       inet_pton(AF_INET6, text, probe) == 1;
}

void jwks_accounts_client(const struct jwks_accounts *a, const char *peer,
			  const char *forwarded, char *out, size_t cap)
{
	const char *end, *start;
	char hop[64];
	size_t n;

	snprintf(out, cap, "%s", peer ? peer : "");
	if (!forwarded || !a->n_proxies || !acct_trusted(a, out))
		return;
	/*
	 * Right to left: each hop was appended by the proxy after it. The
	 * client is the first hop a trusted proxy vouches for that is not
	 * a trusted proxy itself; junk ends the walk where it is.
	 */
	end = forwarded + strlen(forwarded);
	for (;;) {
		start = end;
		while (start > forwarded && start[-1] != ',')
			start--;
		n = (size_t)(end - start);
		while (n && (*start == ' ' || *start == '\t')) {
			start++;
			n--;
		}
		while (n && (start[n - 1] == ' ' || start[n - 1] == '\t'))
			n--;
		if (n == 0 || n >= sizeof(hop))
			return;
		memcpy(hop, start, n);
		hop[n] = '\0';
		if (!acct_is_address(hop))
			return;
		snprintf(out, cap, "%s", hop);
		if (!acct_trusted(a, hop) || start == forwarded)
			return;
		/* Step over the comma before this hop. */
		end = start;
		while (end > forwarded && end[-1] != ',')
			end--;
		if (end == forwarded)
			return;
		end--;
	}
}

/* Decode one UTF-8 sequence at s: its code point and length, or -1. */
static int acct_utf8_next(const unsigned char *s, uint32_t *cp)
{
	int n, i;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		*cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		*cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		*cp = s[0] & 0x07;
	} else {
		return -1;
	}
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		*cp = (*cp << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates, beyond Unicode. */
	if ((n == 2 && *cp < 0x80) || (n == 3 && *cp < 0x800) ||
	    (n == 4 && *cp < 0x10000) || *cp > 0x10ffff ||
	    (*cp >= 0xd800 && *cp <= 0xdfff))
		return -1;
	return n;
}

/* Whether s is UTF-8 without control characters (C0, DEL, C1). */
static int acct_text_ok(const char *text)
{
	const unsigned char *s = (const unsigned char *)text;
	uint32_t cp;
	int n;

	while (*s) {
		n = acct_utf8_next(s, &cp);
		if (n < 0 || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return 0;
		s += n;
	}
	return 1;
}

int jwks_accounts_valid_username(const char *username)
{
	size_t len = username ? strlen(username) : 0;

	return len >= 1 && len <= 64 && acct_text_ok(username);
}

int jwks_accounts_valid_email(const char *email)
{
	const char *at;
	size_t len = email ? strlen(email) : 0, i;

	if (len < 3 || len > 254 || !acct_text_ok(email))
		return 0;
	for (i = 0; i < len; i++)
		if ((unsigned char)email[i] <= 0x20)
			return 0;
	at = strchr(email, '@');
	return at && at != email && at[1] && !strchr(at + 1, '@');
}

int jwks_accounts_login_required(const struct jwks_accounts *acct)
{
	return acct->opts.login_required;
}

/* Hash and verify within the concurrency bound. */
static int acct_hash(struct jwks_accounts *a, char out[PW_HASH_MAX],
		     const char *password, size_t len)
{
	int rc;

	while (sem_wait(&a->hash_slots) && errno == EINTR)
		;
	rc = pw_hash(out, &a->opts.argon2, password, len);
	sem_post(&a->hash_slots);
	return rc;
}

static int acct_verify(struct jwks_accounts *a, const char *hash,
		       const char *password, size_t len, int *stale)
{
	int rc;

	while (sem_wait(&a->hash_slots) && errno == EINTR)
		;
	rc = pw_verify(hash, password, len, &a->opts.argon2, stale);
	sem_post(&a->hash_slots);
	return rc;
}

/*
 * Queue an item (q_lock not held); returns its sequence number. A full
 * queue drops its oldest item.
 */
static uint64_t acct_enqueue(struct jwks_accounts *a, struct acct_item *item)
{
	uint64_t seq;

	pthread_mutex_lock(&a->q_lock);
	if (a->count == a->cap) {
		a->head = (a->head + 1) % a->cap;
		a->count--;
		atomic_fetch_add(&a->log_dropped, 1);
		if (!a->dropping)
			acct_log(a,
				 "auth log queue full (%zu entries): the "
				 "oldest entries are dropped until the "
				 "store keeps up",
				 a->cap);
		a->dropping = 1;
	}
	seq = item->seq = ++a->next_seq;
	a->q[(a->head + a->count) % a->cap] = *item;
	a->count++;
	pthread_cond_signal(&a->q_cond);
	pthread_mutex_unlock(&a->q_lock);
	return seq;
}

/* Wait until seq is written, at most ms. */
static void acct_wait_written(struct jwks_accounts *a, uint64_t seq,
			      unsigned ms)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&a->q_lock);
	while (a->committed_seq < seq && !a->stopping &&
	       pthread_cond_timedwait(&a->done_cond, &a->q_lock, &until) !=
		       ETIMEDOUT)
		;
	pthread_mutex_unlock(&a->q_lock);
}

int jwks_accounts_flush(struct jwks_accounts *a, unsigned timeout_ms)
{
	uint64_t seq;
	int done;

	pthread_mutex_lock(&a->q_lock);
	seq = a->next_seq;
	pthread_mutex_unlock(&a->q_lock);
	acct_wait_written(a, seq, timeout_ms);
	pthread_mutex_lock(&a->q_lock);
	done = a->committed_seq >= seq;
	pthread_mutex_unlock(&a->q_lock);
	return done;
}

/* Write one batch (no lock held). Returns 0 or the store's error. */
static int acct_write_batch(struct jwks_accounts *a, struct acct_item *items,
			    size_t n, struct ks_err *err)
{
	struct ks_auth_log entries[ACCT_BATCH] = {{0}};
	size_t i;
	int rc;

	for (i = 0; i < n; i++)
		entries[i] = items[i].entry;
	rc = ks_auth_log_add(a->store, entries, n, err);
	for (i = 0; !rc && i < n; i++) {
		if (!items[i].login_id)
			continue;
		if (items[i].rehash[0])
			rc = ks_user_set_hash(a->store, items[i].login_id,
					      items[i].rehash, err);
		if (!rc)
			rc = ks_user_set_login(a->store, items[i].login_id,
					       items[i].entry.when, err);
		/* A user deleted meanwhile: nothing left to update. */
		if (rc == KS_ENOTFOUND)
			rc = 0;
	}
	return rc;
}

static void acct_purge(struct jwks_accounts *a)
{
	struct ks_err e = {{0}};
	size_t n = 0;
	int rc;

	if (a->opts.auth_log_days <= 0)
		return;
	rc = ks_auth_log_purge(
		a->store, acct_now(a) - a->opts.auth_log_days * 86400, &n, &e);
	if (rc)
		acct_log(a, "auth log purge failed: %s (%s)", ks_strerror(rc),
			 e.text);
	else if (n)
		acct_log(a,
			 "auth log: %zu entries older than %" PRId64
			 " days purged",
			 n, a->opts.auth_log_days);
}

static void *acct_writer_main(void *arg)
{
	struct jwks_accounts *a = arg;
	struct acct_item *batch = calloc(ACCT_BATCH, sizeof(*batch));
	int64_t next_purge = 0, stop_deadline = 0;
	struct ks_err e;
	size_t n, i;
	int rc;

	pthread_mutex_lock(&a->q_lock);
	while (batch) {
		if (acct_mono_ms() >= next_purge && !a->stopping) {
			pthread_mutex_unlock(&a->q_lock);
			acct_purge(a);
			next_purge = acct_mono_ms() + ACCT_PURGE_EVERY_S * 1000;
			pthread_mutex_lock(&a->q_lock);
		}
		if (!a->count) {
			a->dropping = 0;
			if (a->stopping)
				break;
			pthread_cond_wait(&a->q_cond, &a->q_lock);
			continue;
		}
		if (a->stopping && !stop_deadline)
			stop_deadline = acct_mono_ms() + 3000;
		if (stop_deadline && acct_mono_ms() > stop_deadline) {
			acct_log(a, "auth log: %zu entries not written at stop",
				 a->count);
			break;
		}
		n = a->count < ACCT_BATCH ? a->count : ACCT_BATCH;
		for (i = 0; i < n; i++)
			batch[i] = a->q[(a->head + i) % a->cap];
		pthread_mutex_unlock(&a->q_lock);

		memset(&e, 0, sizeof(e));
		rc = acct_write_batch(a, batch, n, &e);
		if (rc && !a->store_down)
			acct_log(a,
				 "auth log write failed: %s (%s): entries "
				 "wait in memory",
				 ks_strerror(rc), e.text);
		else if (!rc && a->store_down)
			acct_log(a, "auth log written again");
		a->store_down = rc != 0;
		if (rc) {
			const struct timespec pause = {0, 250 * 1000000L};

			nanosleep(&pause, NULL);
		}

		pthread_mutex_lock(&a->q_lock);
		if (!rc) {
			/* Drop what was written (drops may have moved head). */
			while (a->count &&
			       a->q[a->head].seq <= batch[n - 1].seq) {
				a->head = (a->head + 1) % a->cap;
				a->count--;
			}
			a->committed_seq = batch[n - 1].seq;
			atomic_fetch_add(&a->log_written, n);
			pthread_cond_broadcast(&a->done_cond);
		}
	}
	a->committed_seq = a->next_seq;
	pthread_cond_broadcast(&a->done_cond);
	pthread_mutex_unlock(&a->q_lock);
	free(batch);
	return NULL;
}

int jwks_accounts_new(struct jwks_accounts **out, struct ks_store *store,
		      const struct jwks_accounts_options *opts,
		      struct ks_err *err)
{
	struct jwks_accounts *a;
	char random_pw[PW_GENERATED_LEN + 1];
	long cpus;
	size_t i;
	int rc;

	*out = NULL;
	if (!store || !opts || !opts->log_queue)
		return ks_err_set(err, KS_EINVAL, "invalid account options");
	if (opts->auth_rate > RL_LIMIT_MAX ||
	    opts->register_rate > RL_LIMIT_MAX)
		return ks_err_set(err, KS_EINVAL, "a rate limit is at most %d",
				  RL_LIMIT_MAX);
	a = calloc(1, sizeof(*a));
	if (!a)
		return KS_ENOMEM;
	a->store = store;
	a->opts = *opts;
	a->opts.trusted_proxies = NULL;
	for (i = 0; opts->trusted_proxies && opts->trusted_proxies[i]; i++) {
		if (i == JWKS_MAX_TRUSTED_PROXIES ||
		    acct_parse_cidr(opts->trusted_proxies[i], &a->proxies[i])) {
			free(a);
			return ks_err_set(err, KS_EINVAL,
					  "trusted proxy '%.64s' is not a "
					  "CIDR range (or one too many)",
					  opts->trusted_proxies[i]);
		}
		a->n_proxies++;
	}
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (!a->opts.hash_concurrency)
		a->opts.hash_concurrency = cpus > 0 ? (unsigned)cpus : 1;
	a->cap = opts->log_queue;
	a->q = calloc(a->cap, sizeof(*a->q));
	rc = a->q ? 0 : KS_ENOMEM;
	if (!rc)
		rc = rl_new(&a->auth_rl, opts->auth_rate, 1000,
			    ACCT_LIMITER_BYTES);
	if (!rc)
		rc = rl_new(&a->register_rl, opts->register_rate, 60000,
			    ACCT_LIMITER_BYTES);
	/* The hash an unknown user's password is checked against. */
	if (!rc)
		rc = pw_generate(random_pw);
	if (!rc)
		rc = pw_hash(a->dummy_hash, &a->opts.argon2, random_pw,
			     strlen(random_pw));
	if (rc) {
		rl_free(a->auth_rl);
		rl_free(a->register_rl);
		free(a->q);
		free(a);
		return ks_err_set(err, rc, "accounts: %s", ks_strerror(rc));
	}
	sem_init(&a->hash_slots, 0, a->opts.hash_concurrency);
	pthread_mutex_init(&a->q_lock, NULL);
	{
		pthread_condattr_t attr;

		pthread_condattr_init(&attr);
		pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
		pthread_cond_init(&a->done_cond, &attr);
		pthread_condattr_destroy(&attr);
	}
	pthread_cond_init(&a->q_cond, NULL);
	if (pthread_create(&a->writer, NULL, acct_writer_main, a) == 0)
		a->writer_started = 1;
	else
		acct_log(a, "auth log writer not started: %s", strerror(errno));
	*out = a;
	return 0;
}

void jwks_accounts_free(struct jwks_accounts *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->q_lock);
	a->stopping = 1;
	pthread_cond_broadcast(&a->q_cond);
	pthread_mutex_unlock(&a->q_lock);
	if (a->writer_started)
		pthread_join(a->writer, NULL);
	rl_free(a->auth_rl);
	rl_free(a->register_rl);
	sem_destroy(&a->hash_slots);
	pthread_mutex_destroy(&a->q_lock);
	pthread_cond_destroy(&a->q_cond);
	pthread_cond_destroy(&a->done_cond);
	free(a->q);
	free(a);
}

int jwks_accounts_register(struct jwks_accounts *a, const char *username,
			   const char *email,
			   char password_out[PW_GENERATED_LEN + 1],
			   int64_t *id_out, struct ks_err *err)
{
	char hash[PW_HASH_MAX];
	int rc;

	password_out[0] = '\0';
	if (id_out)
		*id_out = 0;
	if (!jwks_accounts_valid_username(username))
		return ks_err_set(err, KS_EINVAL, "invalid username");
	if (email && !jwks_accounts_valid_email(email))
		return ks_err_set(err, KS_EINVAL, "invalid email");
	rc = pw_generate(password_out);
	if (!rc)
		rc = acct_hash(a, hash, password_out, PW_GENERATED_LEN);
	if (!rc)
		rc = ks_user_add(a->store, username, hash, email, acct_now(a),
				 id_out, err);
	explicit_bzero(hash, sizeof(hash));
	if (rc) {
		explicit_bzero(password_out, PW_GENERATED_LEN + 1);
		if (rc == KS_ECRYPTO || rc == KS_ENOMEM)
			ks_err_set(err, rc, "password hashing failed");
	}
	return rc;
}

int jwks_accounts_login(struct jwks_accounts *a, const char *ip,
			const char *username, const char *password, size_t len,
			struct jwks_login *out, struct ks_err *err)
{
	struct acct_item item;
	struct ks_user u = {0};
	uint64_t seq;
	int rc, vrc, stale = 0;

	memset(out, 0, sizeof(*out));
	memset(&item, 0, sizeof(item));
	rc = jwks_accounts_valid_username(username)
		     ? ks_user_get(a->store, username, &u, err)
		     : KS_ENOTFOUND;
	if (rc && rc != KS_ENOTFOUND)
		return rc;
	/* The same work for a user that does not exist. */
	vrc = acct_verify(a, rc ? a->dummy_hash : u.password_hash, password,
			  len, &stale);
	if (!rc && (vrc || u.locked))
		rc = KS_EBADSIG;
	snprintf(item.entry.ip, sizeof(item.entry.ip), "%s",
		 ip && *ip ? ip : "unknown");
	item.entry.when = acct_now(a);
	item.entry.user_id = u.id;
	item.entry.success = rc == 0;
	if (!rc) {
		item.login_id = u.id;
		if (stale && acct_hash(a, item.rehash, password, len))
			item.rehash[0] = '\0';
		out->user_id = u.id;
		snprintf(out->sub, sizeof(out->sub), "%" PRId64, u.id);
		snprintf(out->username, sizeof(out->username), "%s",
			 u.username);
	} else {
		atomic_fetch_add(&a->login_failures, 1);
	}
	ks_user_release(&u);
	seq = acct_enqueue(a, &item);
	explicit_bzero(item.rehash, sizeof(item.rehash));
	acct_wait_written(a, seq, a->opts.log_wait_ms);
	if (rc == KS_EBADSIG)
		ks_err_set(err, rc, "invalid credentials");
	else if (rc == KS_ENOTFOUND)
		ks_err_set(err, rc, "no such user");
	return rc;
}

int jwks_accounts_rate(struct jwks_accounts *a, enum jwks_rate_route route,
		       const char *client, unsigned *retry_after_s)
{
	struct rl_limiter *rl =
		route == JWKS_RATE_REGISTER ? a->register_rl : a->auth_rl;
	int ok = rl_check(rl, client, strlen(client), acct_mono_ms(),
			  retry_after_s);

	if (!ok)
		atomic_fetch_add(&a->rate_limited, 1);
	return ok;
}

void jwks_accounts_stats(const struct jwks_accounts *a,
			 struct jwks_accounts_stats *out)
{
	out->log_dropped = atomic_load(&a->log_dropped);
	out->log_written = atomic_load(&a->log_written);
	out->rate_limited = atomic_load(&a->rate_limited);
	out->login_failures = atomic_load(&a->login_failures);
}
