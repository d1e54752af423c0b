/*
 * Per-client rate limits: a sliding window (a log of the last `limit`
 * request times per client), not a token bucket: `limit` requests spread
 * over one window pass, one more inside that window does not.
 *
 * Memory is fixed at creation: a table of entries in sets of
 * RL_WAYS; a new client takes the entry of its set that was used least
 * recently, so a flood of source addresses evicts old clients instead of
 * growing anything. An evicted client starts afresh, which only ever lets
 * more requests through, never fewer.
 *
 * INTERNAL to server/. Thread safety: rl_check() may be called from any
 * thread; each set has its own lock, held for a few memory operations.
 */
#ifndef JWKS_RATELIMIT_H
#define JWKS_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

struct rl_limiter;

/* Entries per set. */
#define RL_WAYS 8

/* The most requests per window a limiter takes. */
#define RL_LIMIT_MAX 1000

/*
 * A limiter of limit requests per window_ms for each client, using at
 * most about max_bytes of memory (at least RL_WAYS entries). limit 0
 * disables it (rl_check() always allows; *out is still set).
 * Returns 0, KS_EINVAL (limit over RL_LIMIT_MAX, window 0), KS_ENOMEM.
 */
int rl_new(struct rl_limiter **out, unsigned limit, unsigned window_ms,
	   size_t max_bytes);
void rl_free(struct rl_limiter *rl);

/*
 * Count one request of client (any bytes, client_len of them) at now_ms
 * (a monotonic clock) and say whether it may go on: 1 allowed, 0 refused,
 * with *retry_after_s (may be NULL) the whole seconds until it would be
 * allowed. A refused request does not count.
 */
int rl_check(struct rl_limiter *rl, const void *client, size_t client_len,
	     int64_t now_ms, unsigned *retry_after_s);

/* The limiter's table size in bytes, for tests and the log. */
size_t rl_memory(const struct rl_limiter *rl);

#endif /* JWKS_RATELIMIT_H */
