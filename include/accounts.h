/*
 * Accounts: registration, password login, the auth log and rate limits,
 * on a key store's account tables (include/keystore.h).
 *
 * - Registration makes a user with a generated password (a UUIDv4 from
 *   the CSPRNG), shown once and stored only as an Argon2id hash.
 * - A login verifies a password against the stored hash. An unknown user
 *   costs one verification too (against a dummy hash with the current
 *   parameters), so timing does not tell which usernames exist. A hash
 *   made with other parameters is rehashed after a successful login.
 *   At most hash_concurrency hashes run at once (one per core by
 *   default), so memory stays bounded under any load.
 * - Every attempt that reaches credential checking is logged (client
 *   address, time, user id or none, outcome). A background thread writes
 *   the log, and the last_login and rehash updates, in batches; a login
 *   waits at most log_wait_ms for its row to be committed, then goes on.
 *   The queue is bounded: when full, the oldest entry is dropped, counted
 *   and logged (once per burst). Entries older than auth_log_days are
 *   purged in the background.
 * - Rate limits per client address: sliding windows (server/ratelimit.h).
 *
 * Thread safety: every function may be called from any thread once
 * jwks_accounts_new() returned.
 */
#ifndef JWKS_ACCOUNTS_H
#define JWKS_ACCOUNTS_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"
#include "keystore.h"
#include "password.h"
#include "service.h"

struct jwks_accounts;

/* The most --trust-proxy ranges. */
#define JWKS_MAX_TRUSTED_PROXIES 16

/*
 * argon2: the parameters of new hashes (PW_PARAMS_INIT).
 * hash_concurrency: hashes at once (0: the number of online CPUs).
 * login_required: 0 ("open": a request without valid credentials, or
 *       naming an unknown user, still gets an anonymous token), 1: only
 *       valid credentials get a token.
 * auth_rate: POST /auth requests per client per second (0: no limit).
 * register_rate: POST /register requests per client per minute (0: none).
 * trusted_proxies: CIDR ranges ("10.0.0.0/8", "::1/128") whose
 *       X-Forwarded-For is believed, NULL-terminated (NULL: none).
 * auth_log_days: entries older than this are purged (0: never).
 * log_wait_ms: how long a login waits for its log row (50).
 * log_queue: entries the log queue holds (4096).
 * clock, clock_arg: seconds since the epoch (NULL: time(NULL)).
 * log, log_arg: log lines (NULL: stderr).
 */
struct jwks_accounts_options {
	struct pw_params argon2;
	unsigned hash_concurrency;
	int login_required;
	unsigned auth_rate;
	unsigned register_rate;
	const char *const *trusted_proxies;
	int64_t auth_log_days;
	unsigned log_wait_ms;
	size_t log_queue;
	jwks_clock_fn clock;
	void *clock_arg;
	jwks_log_fn log;
	void *log_arg;
};

#define JWKS_ACCOUNTS_OPTIONS_INIT                                        \
	{                                                                 \
		.argon2 = PW_PARAMS_INIT, .hash_concurrency = 0,          \
		.login_required = 0, .auth_rate = 10, .register_rate = 5, \
		.trusted_proxies = NULL, .auth_log_days = 90,             \
		.log_wait_ms = 50, .log_queue = 4096, .clock = NULL,      \
		.clock_arg = NULL, .log = NULL, .log_arg = NULL,          \
	}

/*
 * Accounts on store (borrowed: it must outlive the accounts). Starts the
 * log writer thread. *out is the caller's, freed with
 * jwks_accounts_free(). Returns 0, KS_EINVAL (err says which option),
 * KS_ENOMEM, KS_ECRYPTO.
 */
int jwks_accounts_new(struct jwks_accounts **out, struct ks_store *store,
		      const struct jwks_accounts_options *opts,
		      struct ks_err *err);

/* Write what is queued (up to a few seconds), stop, free. May be NULL. */
void jwks_accounts_free(struct jwks_accounts *acct);

/* Whether text is a CIDR range (or one address) for trusted_proxies. */
int jwks_accounts_valid_cidr(const char *text);

/* Whether only valid credentials get a token: 1 or 0. */
int jwks_accounts_login_required(const struct jwks_accounts *acct);

/*
 * Whether username may be registered: 1 to 64 bytes of UTF-8 without
 * control characters (C0, DEL, C1). Email: at most 254 bytes, no
 * whitespace or control characters, one '@' with text on both sides.
 * Return 1 or 0.
 */
int jwks_accounts_valid_username(const char *username);
int jwks_accounts_valid_email(const char *email);

/*
 * Register username (email may be NULL) with a generated password, written
 * into password_out; *id_out (may be NULL) receives the user's id.
 * Returns 0, KS_EINVAL (username or email not acceptable: err says
 * which), KS_EEXISTS (taken), KS_ECRYPTO, or the store's errors.
 */
int jwks_accounts_register(struct jwks_accounts *acct, const char *username,
			   const char *email,
			   char password_out[PW_GENERATED_LEN + 1],
			   int64_t *id_out, struct ks_err *err);

/* Who logged in: the token's sub (the user id) and preferred_username. */
struct jwks_login {
	int64_t user_id;
	char sub[24];
	char username[65];
};

/*
 * Check username and password (len bytes) for a client at address ip,
 * and log the attempt.
 * Returns 0 (valid: *out filled), KS_ENOTFOUND (no such user),
 * KS_EBADSIG (wrong password, or the user is locked), or the store's
 * errors (KS_EUNAVAIL, KS_EIO, KS_EBUSY) when the user could not be read.
 */
int jwks_accounts_login(struct jwks_accounts *acct, const char *ip,
			const char *username, const char *password, size_t len,
			struct jwks_login *out, struct ks_err *err);

enum jwks_rate_route {
	JWKS_RATE_AUTH,
	JWKS_RATE_REGISTER,
};

/*
 * Count one request of client on route: 1 allowed, 0 over the limit with
 * *retry_after_s the seconds to wait.
 */
int jwks_accounts_rate(struct jwks_accounts *acct, enum jwks_rate_route route,
		       const char *client, unsigned *retry_after_s);

/*
 * The client address of a request: peer (the TCP peer's address as text),
 * or, when peer is in a trusted proxy range, the rightmost address of
 * forwarded (an X-Forwarded-For value, may be NULL) that is not itself a
 * trusted proxy. Written into out (capacity cap). A malformed
 * X-Forwarded-For entry stops the walk at the last trusted hop.
 */
void jwks_accounts_client(const struct jwks_accounts *acct, const char *peer,
			  const char *forwarded, char *out, size_t cap);

/* Counters, for the log and (later) metrics. */
struct jwks_accounts_stats {
	uint64_t log_dropped;
	uint64_t log_written;
	uint64_t rate_limited;
	uint64_t login_failures;
};

void jwks_accounts_stats(const struct jwks_accounts *acct,
			 struct jwks_accounts_stats *out);

/*
 * Wait until every log entry queued so far is written (or timeout_ms
 * passed): for tests and for a clean stop. Returns 1 written, 0 not yet.
 */
int jwks_accounts_flush(struct jwks_accounts *acct, unsigned timeout_ms);

#endif /* JWKS_ACCOUNTS_H */
